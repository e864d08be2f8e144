//! One request, from the proxy to the destination and back:
//!
//! ```text
//! route? ──no──► strip hop-by-hop ──► upstream ──► response
//!   │yes
//!   ▼
//! token (cache) ──► replace Authorization ──► upstream ──► 401? ──no──► response
//!                                                           │yes, token refused (RFC 6750),
//!                                                           │body replayable, first time
//!                                                           ▼
//!          invalidate that token (once per cooldown) ──► newer token? ──no──► response
//!                                                           │yes
//!                                                           ▼
//!                                 rest of the body (≤ limit) ──► resend once ──► response
//! ```
//! The destination is fixed by the [`Target`] (the CONNECT authority or the absolute-form
//! URI); nothing in the request can send it, or its token, elsewhere.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::config::Grant;
use crate::error::{self, ProxyError};
use crate::proxy::Proxy;
use crate::route::Route;
use crate::token::{AccessToken, Lookup, TokenError, TokenScheme};
use crate::upstream::{is_upgrade, strip_hop_by_hop};

/// Where a request is sent: decided before the request is read, never by it.
#[derive(Debug, Clone)]
pub struct Target {
    /// `https` or `http`.
    pub scheme: Scheme,
    /// Normalized host (lowercase, no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// `host[:port]` as sent upstream (port omitted when it is the scheme's default).
    pub authority: Authority,
}

impl Target {
    /// A target from its parts.
    pub fn new(scheme: Scheme, host: &str, port: u16) -> Result<Target, ProxyError> {
        let host = crate::route::normalize_host(host).into_owned();
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let bracketed = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.clone()
        };
        let text = if port == default_port {
            bracketed
        } else {
            format!("{bracketed}:{port}")
        };
        let authority = Authority::try_from(text.as_str())
            .map_err(|_| ProxyError::BadRequest(format!("invalid host {text:?}")))?;
        Ok(Target {
            scheme,
            host,
            port,
            authority,
        })
    }

    fn uri(&self, path: Option<&PathAndQuery>) -> Result<Uri, ProxyError> {
        Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query(
                path.cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/")),
            )
            .build()
            .map_err(|e| ProxyError::BadRequest(e.to_string()))
    }
}

/// The request's one `Host` header, if any: more than one is a 400 (RFC 9112 §3.2), since
/// a proxy and an upstream could each believe a different one.
pub fn single_host(headers: &HeaderMap) -> Result<Option<&HeaderValue>, ProxyError> {
    let mut hosts = headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::BadRequest(
            "more than one Host header; send exactly one".into(),
        ));
    }
    Ok(first)
}

/// The one authority rule, for every request (intercepted or absolute-form): the URI becomes
/// the target's and no caller `Host` goes upstream; the upstream client writes `Host`
/// (HTTP/1.1) or `:authority` (HTTP/2) from the URI, so the upstream sees exactly one
/// authority, the target's.
fn bind_authority(parts: &mut http::request::Parts, target: &Target) -> Result<(), ProxyError> {
    single_host(&parts.headers)?;
    parts.headers.remove(header::HOST);
    parts.uri = target.uri(parts.uri.path_and_query())?;
    Ok(())
}

/// What the `Allow` of a refused `TRACE` lists (other methods than these pass too).
const ROUTE_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Refused on a route before any token is fetched: `TRACE` echoes the request it received
/// (RFC 9110 §9.3.8), so its answer would show the caller the token the proxy injected.
fn refuse_on_route(route: &Route, method: &Method) -> Result<(), ProxyError> {
    if method == Method::TRACE {
        return Err(ProxyError::MethodNotAllowed {
            route: route.spec.name.clone(),
            method: method.to_string(),
            allowed: ROUTE_ALLOW,
        });
    }
    Ok(())
}

/// What happened to a request, for the access log.
struct Outcome {
    lookup: Option<Lookup>,
    /// Resent after a 401 with a fresh token.
    retried: bool,
    /// Resent after a DPoP nonce challenge with the same token.
    nonce_resent: bool,
}

/// Forwards `req` to `target`, injecting `route`'s token when there is one. Always answers:
/// failures become the proxy's own error responses.
pub async fn forward(
    proxy: &Proxy,
    req: Request<Incoming>,
    target: &Target,
    route: Option<Arc<Route>>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let mut outcome = Outcome {
        lookup: None,
        retried: false,
        nonce_resent: false,
    };
    let result = send(proxy, req, target, route.as_deref(), &mut outcome).await;
    let response = match result {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(host = %target.authority, %method, error = %err, "request failed");
            error::response(&err)
        }
    };
    let route_label = route.as_ref().map_or("-", |r| r.spec.name.as_str());
    crate::metrics::request(route_label, response.status().as_u16(), started.elapsed());
    if outcome.retried {
        crate::metrics::retry(route_label, "401");
    }
    if outcome.nonce_resent {
        crate::metrics::retry(route_label, "dpop_nonce");
    }
    if let Some(lookup) = outcome.lookup {
        crate::metrics::token_lookup(route_label, lookup == Lookup::Hit);
    }
    tracing::info!(
        target: "access",
        route = route_label,
        host = %target.authority,
        %method,
        path = %path,
        status = response.status().as_u16(),
        ms = started.elapsed().as_secs_f64() * 1000.0,
        token = match outcome.lookup { Some(Lookup::Hit) => "hit", Some(Lookup::Miss) => "miss", None => "-" },
        retried = outcome.retried,
    );
    response
}

async fn send(
    proxy: &Proxy,
    mut req: Request<Incoming>,
    target: &Target,
    route: Option<&Route>,
    outcome: &mut Outcome,
) -> Result<Response<Body>, ProxyError> {
    if let Some(route) = route {
        refuse_on_route(route, req.method())?;
    }
    let upgrade = is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, incoming) = req.into_parts();
    bind_authority(&mut parts, target)?;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.version = Version::HTTP_11;
    let identity = route
        .filter(|r| r.spec.mtls_bound)
        .map(|r| r.client.name.as_str());
    let client = proxy.upstream.client(upgrade, identity);

    let Some(route) = route else {
        let body = body::boxed(incoming);
        let response = client
            .request(Request::from_parts(parts, body))
            .await
            .map_err(|e| upstream_error(proxy, target, &e))?;
        return Ok(finish(response, downstream_upgrade));
    };
    // Nor in trailers, where a caller-chosen `Authorization` would reach the upstream too.
    let incoming = body::StripCredentialTrailers::new(incoming);

    // The proxy owns the credential on a route: the caller's own is never forwarded (a
    // token-exchange route reads it first, as the subject).
    let slot = route
        .token
        .slot(&parts.headers)
        .map_err(|source| ProxyError::Subject {
            route: route.spec.name.clone(),
            source: Arc::new(source),
        })?;
    parts.headers.remove(header::AUTHORIZATION);
    let token_error = |source: Arc<TokenError>| {
        let callers = refuses_callers_token(&route.spec.grant, &source);
        let route = route.spec.name.clone();
        if callers {
            ProxyError::CallerTokenRefused { route, source }
        } else {
            ProxyError::Token { route, source }
        }
    };
    let (mut token, lookup) = slot.get().await.map_err(token_error)?;
    outcome.lookup = Some(lookup);

    let content_length = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let (body, replay) = body::prepare(
        incoming,
        content_length,
        proxy.config.proxy.retry_body_limit,
    )
    .await
    .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?;
    // DPoP routes only: the proof key, the proof's htu and the origin nonces are kept under.
    let dpop = slot.request().dpop.as_ref().map(|key| {
        (
            key.clone(),
            crate::sender::dpop::htu(&parts.uri),
            crate::sender::dpop::origin(&parts.uri),
        )
    });
    let nonces = proxy.tokens.fetcher().nonces();
    // Everything but the credentials, kept for a resend when the body can be replayed.
    let head = replay.may_replay().then(|| {
        (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        )
    });
    let credentials = |headers: &mut http::HeaderMap,
                       method: &http::Method,
                       token: &AccessToken| {
        headers.insert(header::AUTHORIZATION, token.authorization());
        if let (Some((key, htu, origin)), TokenScheme::Dpop) = (&dpop, token.scheme) {
            let nonce = nonces.get(origin);
            let proof = key
                .proof(method.as_str(), htu, token.ath.as_deref(), nonce.as_deref())
                .map_err(|e| ProxyError::Upstream {
                    authority: target.authority.to_string(),
                    detail: e.to_string(),
                })?;
            let mut value = HeaderValue::from_str(&proof).map_err(|e| ProxyError::Upstream {
                authority: target.authority.to_string(),
                detail: e.to_string(),
            })?;
            value.set_sensitive(true);
            headers.insert("dpop", value);
        }
        Ok::<_, ProxyError>(())
    };

    credentials(&mut parts.headers, &parts.method, &token)?;
    let mut response = client
        .request(Request::from_parts(parts, body))
        .await
        .map_err(|e| upstream_error(proxy, target, &e))?;

    // At most one resend of each kind: a DPoP nonce challenge (same token, new proof), then a
    // 401 (a newer token: fetched after invalidating this one at most once per cooldown, or
    // one already cached).
    let (mut nonce_retried, mut token_retried) = (false, false);
    loop {
        if let (Some((_, _, origin)), Some(nonce)) = (&dpop, response.headers().get("dpop-nonce")) {
            nonces.remember(origin, nonce);
        }
        let decision = match retry_decision(response.status(), response.headers(), token.scheme) {
            Retry::Nonce if !nonce_retried => {
                nonce_retried = true;
                Retry::Nonce
            }
            Retry::Token | Retry::Nonce if !token_retried => {
                token_retried = true;
                Retry::Token
            }
            _ => Retry::No,
        };
        if decision == Retry::No {
            return Ok(finish(response, downstream_upgrade));
        }
        let (Some((method, uri, headers)), true) = (&head, replay.may_replay()) else {
            tracing::debug!(route = %route.spec.name, "401 not retried: body not replayable");
            return Ok(finish(response, downstream_upgrade));
        };
        if decision == Retry::Token {
            slot.invalidate(&token, proxy.config.tokens.invalidate_cooldown);
            let (newer, _) = slot.get().await.map_err(token_error)?;
            if Arc::ptr_eq(&newer, &token) {
                tracing::debug!(
                    route = %route.spec.name,
                    "401 not retried: this token was refused again within tokens.invalidate_cooldown_secs"
                );
                return Ok(finish(response, downstream_upgrade));
            }
            token = newer;
        }
        let body = match replay.replay(body::REPLAY_READ).await {
            Ok(body) => body,
            Err(why) => {
                tracing::debug!(route = %route.spec.name, ?why, "401 not retried: body not replayable");
                return Ok(finish(response, downstream_upgrade));
            }
        };
        drop(response);
        if decision == Retry::Token {
            outcome.retried = true;
        } else {
            outcome.nonce_resent = true;
        }
        let mut headers = headers.clone();
        credentials(&mut headers, method, &token)?;
        let mut resend = Request::new(body);
        *resend.method_mut() = method.clone();
        *resend.uri_mut() = uri.clone();
        *resend.headers_mut() = headers;
        response = client
            .request(resend)
            .await
            .map_err(|e| upstream_error(proxy, target, &e))?;
    }
}

/// Whether `err` is the authorization server refusing the caller's own token on an
/// on-behalf-of route: RFC 8693 §2.2.2 prescribes `invalid_request` for an invalid or
/// unacceptable subject token, and servers also answer `invalid_grant` or `invalid_token`.
/// Refusals that name the client, scope or target stay the operator's (502).
fn refuses_callers_token(grant: &Grant, err: &TokenError) -> bool {
    grant.exchanges_callers_token()
        && matches!(
            err.oauth_error(),
            Some("invalid_request" | "invalid_grant" | "invalid_token")
        )
}

/// What a response asks of the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Nothing: return it.
    No,
    /// A DPoP nonce challenge: resend with a proof carrying the nonce, same token.
    Nonce,
    /// The token was refused: resend with a newer one (see `TokenSlot::invalidate`).
    Token,
}

/// Classifies a response to a request carrying a token of `scheme`. A 401 means the token was
/// refused unless its challenge for that scheme names an RFC 6750 §3.1 error other than
/// `invalid_token` (`invalid_request`, `insufficient_scope`, ...): then a new token would not
/// help, and none is fetched.
fn retry_decision(status: StatusCode, headers: &http::HeaderMap, scheme: TokenScheme) -> Retry {
    if status != StatusCode::UNAUTHORIZED {
        return Retry::No;
    }
    if scheme == TokenScheme::Dpop && crate::sender::dpop::is_nonce_challenge(headers) {
        return Retry::Nonce;
    }
    let mut errors = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(challenges)
        .filter(|(name, _)| name.eq_ignore_ascii_case(scheme.name()))
        .filter_map(|(_, error)| error)
        .peekable();
    if errors.peek().is_none() || errors.any(|e| e == "invalid_token") {
        Retry::Token
    } else {
        Retry::No
    }
}

/// The challenges of one `WWW-Authenticate` value (RFC 9110 §11.6.1): each scheme name and
/// its `error` parameter, if any. Lenient: a value it cannot follow yields what it read so far.
fn challenges(value: &str) -> Vec<(&str, Option<String>)> {
    let mut out: Vec<(&str, Option<String>)> = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return out;
        }
        // A token: a scheme name, or a parameter name when followed by `=`.
        let end = rest.find([' ', '\t', ',', '=']).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        let after_ws = after.trim_start_matches([' ', '\t']);
        let is_param = after_ws.starts_with('=') && !after_ws.starts_with("==");
        if !is_param || out.is_empty() {
            if word.is_empty() {
                return out;
            }
            out.push((word, None));
            rest = after;
            // token68 (e.g. `Basic abc==`): skip to the next comma.
            let t = rest.trim_start_matches([' ', '\t']);
            if !t.is_empty() && !t.starts_with(',') && !token_then_equals(t) {
                rest = t.find(',').map_or("", |i| &t[i..]);
            }
            continue;
        }
        let value_text = after_ws[1..].trim_start_matches([' ', '\t']);
        let (param, next) = if let Some(quoted) = value_text.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => text.push(c),
                }
            }
            (text, &quoted[end.min(quoted.len())..])
        } else {
            let end = value_text
                .find([',', ' ', '\t'])
                .unwrap_or(value_text.len());
            (value_text[..end].to_string(), &value_text[end..])
        };
        if word.eq_ignore_ascii_case("error") {
            if let Some(last) = out.last_mut() {
                last.1.get_or_insert(param);
            }
        }
        rest = next;
    }
}

/// Whether `s` starts with `token =` (an auth-param rather than a token68).
fn token_then_equals(s: &str) -> bool {
    let end = s.find([' ', '\t', ',', '=']).unwrap_or(s.len());
    end > 0 && {
        let after = s[end..].trim_start_matches([' ', '\t']);
        after.starts_with('=') && !after.starts_with("==")
    }
}

/// Prepares the upstream response for the caller; on `101 Switching Protocols`, splices the
/// two upgraded connections.
fn finish(
    mut response: Response<Incoming>,
    downstream: Option<hyper::upgrade::OnUpgrade>,
) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(downstream) = downstream {
            let upstream = hyper::upgrade::on(&mut response);
            tokio::spawn(async move {
                match tokio::try_join!(downstream, upstream) {
                    Ok((down, up)) => {
                        let mut down = hyper_util::rt::TokioIo::new(down);
                        let mut up = hyper_util::rt::TokioIo::new(up);
                        if let Err(err) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
                            tracing::debug!(error = %err, "upgraded connection ended");
                        }
                    }
                    Err(err) => tracing::debug!(error = %err, "upgrade failed"),
                }
            });
        }
        let (parts, _) = response.into_parts();
        return Response::from_parts(parts, body::empty());
    }
    let (mut parts, incoming) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers, false);
    Response::from_parts(parts, body::boxed(incoming))
}

fn upstream_error(
    proxy: &Proxy,
    target: &Target,
    err: &hyper_util::client::legacy::Error,
) -> ProxyError {
    let detail = error::chain(err);
    if err.is_connect() && error::is_timeout(err) {
        ProxyError::ConnectTimeout {
            authority: target.authority.to_string(),
            after_ms: proxy.config.proxy.connect_timeout.as_millis(),
        }
    } else {
        ProxyError::Upstream {
            authority: target.authority.to_string(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_401s_are_worth_a_new_token() {
        use Retry::{No, Nonce, Token};
        use TokenScheme::{Bearer, Dpop};
        let cases: &[(u16, &[&str], TokenScheme, Retry)] = &[
            (200, &[], Bearer, No),
            (403, &[r#"Bearer error="invalid_token""#], Bearer, No),
            (401, &[], Bearer, Token),
            (401, &["Bearer"], Bearer, Token),
            (401, &[r#"Bearer realm="api""#], Bearer, Token),
            (401, &[r#"Bearer error="invalid_token""#], Bearer, Token),
            (
                401,
                &[r#"Bearer realm="api", error="invalid_token", error_description="expired""#],
                Bearer,
                Token,
            ),
            (401, &["bearer error=invalid_token"], Bearer, Token),
            (
                401,
                &[r#"Bearer error="insufficient_scope", scope="a b""#],
                Bearer,
                No,
            ),
            (401, &[r#"Bearer error="invalid_request""#], Bearer, No),
            (401, &["Bearer\terror=\"invalid_request\""], Bearer, No),
            (
                401,
                &[r#"Bearer error="a", error="invalid_token""#],
                Bearer,
                No,
            ),
            (
                401,
                &[r#"Bearer error_description="x, y", error="invalid_request""#],
                Bearer,
                No,
            ),
            // Another scheme's error is about another credential.
            (
                401,
                &[r#"Basic realm="x", Bearer error="insufficient_scope""#],
                Bearer,
                No,
            ),
            (
                401,
                &[r#"Basic abc==, Bearer error="invalid_token""#],
                Bearer,
                Token,
            ),
            (401, &[r#"DPoP error="invalid_request""#], Bearer, Token),
            (
                401,
                &["Basic realm=\"x\"", r#"Bearer error="invalid_token""#],
                Bearer,
                Token,
            ),
            (401, &[r#"DPoP error="use_dpop_nonce""#], Dpop, Nonce),
            (
                401,
                &[r#"DPoP error="invalid_token", algs="ES256""#],
                Dpop,
                Token,
            ),
            (401, &[r#"DPoP error="invalid_dpop_proof""#], Dpop, No),
            (
                401,
                &[r#"Bearer error="invalid_request", DPoP error="invalid_token""#],
                Dpop,
                Token,
            ),
            (
                401,
                &[r#"Bearer error="invalid_request", DPoP algs="ES256""#],
                Dpop,
                Token,
            ),
            (
                401,
                &[r#"DPoP error="a \"quoted\" value", error_description="ok""#],
                Dpop,
                No,
            ),
        ];
        // Whatever the header says, the parser ends and does not panic.
        for junk in [
            "",
            "=",
            "==",
            ",,,",
            "\"",
            "Bearer =",
            "Bearer error",
            "Bearer error=",
            "Bearer error=\"unterminated",
            "Bearer error=\"a\\",
            "= Bearer error=x",
            "Bearer a==, b=\"c\", error=,",
            "Bearer\terror=\"invalid_request\"",
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(junk).unwrap(),
            );
            let _ = retry_decision(StatusCode::UNAUTHORIZED, &headers, Bearer);
        }
        for (status, challenges, scheme, want) in cases {
            let mut headers = http::HeaderMap::new();
            for c in *challenges {
                headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_str(c).unwrap());
            }
            let status = StatusCode::from_u16(*status).unwrap();
            assert_eq!(
                retry_decision(status, &headers, *scheme),
                *want,
                "{status} {challenges:?} {scheme:?}"
            );
        }
    }
}
