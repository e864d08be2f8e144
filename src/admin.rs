//! The admin listener: `/healthz` (the process answers), `/readyz` (config loaded and CA
//! ready, which they are once this listener runs, and every `prefetch` route holds a token),
//! `/metrics` (Prometheus text), `/` (the status page, HTML) and `/status` (the same, JSON).
//!
//! With `admin.token` set, `/` and `/status` (and `/metrics` with `protect_metrics = true`)
//! need `Authorization: Bearer <token>`, compared in constant time; the health endpoints
//! never do (probes carry no credentials).

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;

use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::{full, Body};
use crate::config::AdminSettings;
use crate::proxy::{Proxy, SharedProxy};
use crate::secret::ExposeSecret;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn run(listener: TcpListener, proxy: SharedProxy, shutdown: impl Future<Output = ()>) {
    crate::metrics::init();
    let mut shutdown = pin!(shutdown);
    let mut backoff = crate::listener::AcceptBackoff::default();
    loop {
        let (stream, _) = tokio::select! {
            accepted = crate::listener::accept(&listener, &mut backoff, "admin") => accepted,
            () = &mut shutdown => return,
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let proxy = proxy.load_full();
                async move { Ok::<_, Infallible>(answer(&req, &proxy)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// What a path needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// Health: always open.
    Open,
    /// `/metrics`: open unless `protect_metrics`.
    Metrics,
    /// `/` and `/status`: the token, when one is set.
    Protected,
}

/// The access rule of one request: `None` lets it through, else the refusal.
fn refused(access: Access, admin: Option<&AdminSettings>, headers: &HeaderMap) -> Option<String> {
    let admin = admin?;
    let source = admin.token.as_ref()?;
    let needed = match access {
        Access::Open => false,
        Access::Metrics => admin.protect_metrics,
        Access::Protected => true,
    };
    if !needed {
        return None;
    }
    let expected = match source.load() {
        Ok(token) => token,
        // The operator's problem: say where, never what.
        Err(err) => return Some(format!("admin.token cannot be read ({err}); refusing\n")),
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if bearer_matches(presented, expected.expose_secret()) {
        None
    } else {
        Some(
            "unauthorized: send Authorization: Bearer <admin.token> (oauth-egress status reads OAUTH_EGRESS_ADMIN_TOKEN)\n"
                .into(),
        )
    }
}

/// Whether `presented` is `expected`, in time independent of where they differ (both are
/// hashed first, so the length leaks nothing either).
pub fn bearer_matches(presented: &str, expected: &str) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let a: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
    let b: [u8; 32] = Sha256::digest(expected.as_bytes()).into();
    !presented.is_empty() && bool::from(a.ct_eq(&b))
}

fn answer(req: &Request<Incoming>, proxy: &Proxy) -> Response<Body> {
    let path = req.uri().path();
    let access = match path {
        "/healthz" | "/readyz" => Access::Open,
        "/metrics" => Access::Metrics,
        _ => Access::Protected,
    };
    if req.method() != Method::GET {
        return text(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET is served here\n".into(),
        );
    }
    if let Some(why) = refused(access, proxy.config.admin.as_ref(), req.headers()) {
        let mut response = text(StatusCode::UNAUTHORIZED, why);
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"oauth-egress admin\""),
        );
        return response;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok\n".into()),
        "/readyz" if proxy.is_ready() => text(StatusCode::OK, "ready\n".into()),
        "/readyz" => text(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a prefetch route has no token yet\n".into(),
        ),
        "/metrics" => {
            for route in proxy.routes.routes() {
                let (Some(token), Some(client)) = (route.token(), &route.spec.client) else {
                    continue;
                };
                if let Some(at) = crate::status::expiry_unix(token) {
                    crate::metrics::token_expiry(&route.spec.name, client, at);
                }
            }
            text(StatusCode::OK, crate::metrics::render())
        }
        "/status" => {
            let json = serde_json::to_string_pretty(&crate::status::snapshot(proxy))
                .unwrap_or_else(|_| "{}".into());
            typed(StatusCode::OK, json + "\n", "application/json")
        }
        "/" => typed(
            StatusCode::OK,
            crate::status::html::render(&crate::status::snapshot(proxy)),
            "text/html; charset=utf-8",
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /, /status, /healthz, /readyz or /metrics\n".into(),
        ),
    }
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    typed(status, body, "text/plain; charset=utf-8")
}

fn typed(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut response = Response::new(full(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::bearer_matches;

    #[test]
    fn bearer_rule() {
        let cases = [
            ("s3cret", "s3cret", true),
            ("s3cret", "s3cre", false),
            ("s3cre", "s3cret", false),
            ("", "s3cret", false),
            ("S3cret", "s3cret", false),
        ];
        for (presented, expected, ok) in cases {
            assert_eq!(bearer_matches(presented, expected), ok, "{presented}");
        }
    }
}
