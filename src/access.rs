//! One request's record: its correlation id (`x-request-id`, propagated or created), the
//! access-log line (who called, what, and how it went; never a token, a credential or a query
//! string) and the per-request metrics and status-page counts.
//!
//! The id rule ([`request_id`]): a caller's `x-request-id` of 1–128 visible ASCII characters
//! is kept and sent upstream as it came; a missing or unusable one is replaced by 16 random
//! bytes in hex. W3C `traceparent`/`tracestate` are never touched. The id appears in the
//! `access` line and in every error body and `x-request-id` header the proxy writes, so a
//! caller's failure can be found in the proxy's log.

use std::time::Instant;

use http::{HeaderMap, HeaderValue, Method, Request, Response};
use rand::RngCore;

use crate::body::Body;
use crate::forward::{Outcome, Target};
use crate::proxy::Proxy;
use crate::route::Route;
use crate::token::Lookup;

/// The caller's address, carried on each request as an extension by the listener that read
/// it (absolute-form, intercepted tunnel, transparent), for the access line.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub std::net::SocketAddr);

/// The header.
pub const REQUEST_ID: &str = "x-request-id";

/// The longest caller id kept.
const MAX_ID_LEN: usize = 128;

/// The caller's id if usable, else `None` (a new one is made).
pub fn usable_id(value: &HeaderValue) -> Option<&str> {
    let text = value.to_str().ok()?;
    let ok =
        !text.is_empty() && text.len() <= MAX_ID_LEN && text.bytes().all(|b| b.is_ascii_graphic());
    ok.then_some(text)
}

/// The request's id: its one usable `x-request-id`, or a new one written into `headers` (so
/// the upstream sees the same id).
pub fn request_id(headers: &mut HeaderMap) -> String {
    let mut ids = headers.get_all(REQUEST_ID).iter();
    let kept = match (ids.next(), ids.next()) {
        (Some(one), None) => usable_id(one).map(str::to_owned),
        _ => None,
    };
    if let Some(id) = kept {
        return id;
    }
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(REQUEST_ID, value);
    }
    id
}

/// What the access line names, taken before the request is sent.
pub(crate) struct Access<'a> {
    pub(crate) target: &'a Target,
    /// The caller's name, or `unidentified` (bounded: a metric label too).
    pub(crate) caller: &'a str,
    /// The caller's address, when the listener recorded it.
    peer: Option<std::net::SocketAddr>,
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) request_id: String,
    started: Instant,
}

impl<'a> Access<'a> {
    /// Reads what the log needs from `req` and settles its id.
    pub(crate) fn of<B>(req: &mut Request<B>, target: &'a Target, caller: &'a str) -> Access<'a> {
        Access {
            target,
            caller,
            peer: req.extensions().get::<Peer>().map(|p| p.0),
            method: req.method().clone(),
            path: req.uri().path().to_owned(),
            request_id: request_id(req.headers_mut()),
            started: Instant::now(),
        }
    }

    /// Metrics, the status page's counts and the access-log line of the finished request.
    pub(crate) fn record(
        &self,
        proxy: &Proxy,
        route: Option<&Route>,
        response: &Response<Body>,
        outcome: &Outcome,
    ) {
        let route_label = route.map_or("-", |r| r.spec.name.as_str());
        let elapsed = self.started.elapsed();
        crate::metrics::request(route_label, response.status().as_u16(), elapsed);
        crate::metrics::caller(self.caller, response.status().as_u16());
        if outcome.resent.token {
            crate::metrics::retry(route_label, "401");
            if response.status() == http::StatusCode::UNAUTHORIZED {
                crate::metrics::unauthorized_after_retry(route_label);
            }
        }
        if outcome.resent.nonce {
            crate::metrics::retry(route_label, "dpop_nonce");
        }
        if let Some(lookup) = outcome.lookup {
            crate::metrics::token_lookup(route_label, lookup == Lookup::Hit);
        }
        if let Some(route) = route {
            let activity = &proxy.ops.activity;
            activity.record(&route.spec.name, outcome.resent.token);
        }
        tracing::info!(
            target: "access",
            route = route_label,
            caller = self.caller,
            peer = %self.peer.map_or_else(|| "-".to_string(), |p| p.to_string()),
            host = %self.target.authority,
            method = %self.method,
            path = %self.path,
            status = response.status().as_u16(),
            ms = elapsed.as_secs_f64() * 1000.0,
            token = match outcome.lookup { Some(Lookup::Hit) => "hit", Some(Lookup::Miss) => "miss", None => "-" },
            retried = outcome.resent.token,
            request_id = %self.request_id,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_id_rule() {
        let long = "a".repeat(129);
        let max = "b".repeat(128);
        // (incoming values, kept as is?)
        let cases: [(&[&str], bool); 6] = [
            (&["abc-123"], true),
            (&[max.as_str()], true),
            (&[long.as_str()], false),
            (&["has space"], false),
            (&["one", "two"], false),
            (&[], false),
        ];
        for (values, kept) in cases {
            let mut headers = HeaderMap::new();
            for v in values {
                headers.append(REQUEST_ID, HeaderValue::from_str(v).unwrap());
            }
            headers.insert("traceparent", HeaderValue::from_static("00-abc-def-01"));
            let id = request_id(&mut headers);
            if kept {
                assert_eq!(id, values[0]);
            } else {
                assert_eq!(id.len(), 32, "{values:?}");
                assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
                assert_eq!(headers.get_all(REQUEST_ID).iter().count(), 1);
                assert_eq!(headers[REQUEST_ID], id.as_str());
            }
            assert_eq!(headers["traceparent"], "00-abc-def-01");
        }
    }
}
