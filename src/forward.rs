//! One request, from the proxy to the destination and back, as named steps:
//!
//! ```text
//! prepare (TRACE refused on a route, one authority, no hop-by-hop)
//!   │ no route ──────────────────────────────────────────► upstream ──► to_caller
//!   ▼ route
//! token (cache) ──► replay::prepare (body, capped copy) ──► sender::inject ──► upstream
//!   ──► retry::classify ──No──► to_caller
//!         │Nonce / Token, admitted by the request's retry::Budget (each kind once),
//!         │body replayable, and for Token a retry::newer_token (once per cooldown)
//!         ▼
//!       rest of the body (≤ limit) ──► sender::inject (fresh proof) ──► resend ──► classify
//! ```
//! The destination is fixed by the [`Target`] (the CONNECT authority or the absolute-form
//! URI); nothing in the request can send it, or its token, elsewhere.

use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderMap, Method, Request, Response, Uri, Version};
use hyper::body::Incoming;

use hyper::upgrade::OnUpgrade;

use crate::access::Access;
use crate::body::{self, Body};
use crate::caller::Identity;
use crate::error::{self, ProxyError};
use crate::proxy::Proxy;
use crate::replay::{self, ReadBounds, ReplayBody};
use crate::retry::{classify, newer_token, Budget, Retry};
use crate::route::{Route, RouteCredential};
use crate::sender::credential::StaticHeader;
use crate::sender::dpop::DpopError;
use crate::sender::{inject, Proof};
use crate::token::{AccessToken, Lookup, TokenSlot};
use crate::upstream::{self, is_upgrade, strip_hop_by_hop, HttpsClient};

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
        let host = crate::host::normalize_host(host).into_owned();
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

/// What happened to a request, for the access log and metrics.
#[derive(Default)]
pub(crate) struct Outcome {
    pub(crate) lookup: Option<Lookup>,
    /// The resends made: after a DPoP nonce challenge (same token), after a 401 (a newer one).
    pub(crate) resent: Budget,
}

/// Forwards `req` to `target`, injecting `route`'s token when there is one. Always answers:
/// failures become the proxy's own error responses (naming the request's `x-request-id`).
/// `caller` is who sent it: a route's `callers` list is checked before any token is fetched.
pub async fn forward(
    proxy: &Proxy,
    mut req: Request<Incoming>,
    target: &Target,
    route: Option<Arc<Route>>,
    caller: &Identity,
) -> Response<Body> {
    let access = Access::of(&mut req, target, caller.label());
    let (result, outcome) = send(proxy, req, target, route.as_deref(), caller).await;
    let response = match result {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(host = %target.authority, method = %access.method, request_id = %access.request_id, error = %err, "request failed");
            error::response_for(&err, &access.request_id)
        }
    };
    access.record(proxy, route.as_deref(), &response, &outcome);
    response
}

/// A request with its authority bound and its hop-by-hop headers gone, and the client that
/// sends it.
struct Prepared<'a> {
    parts: http::request::Parts,
    body: Incoming,
    client: &'a HttpsClient,
    /// The caller's side of an `Upgrade`, spliced to the upstream's on `101`.
    upgrade: Option<OnUpgrade>,
}

/// Sends the request, on its route when there is one; with what it took.
async fn send(
    proxy: &Proxy,
    req: Request<Incoming>,
    target: &Target,
    route: Option<&Route>,
    caller: &Identity,
) -> (Result<Response<Body>, ProxyError>, Outcome) {
    let Prepared {
        parts,
        body,
        client,
        upgrade,
    } = match prepare(proxy, req, target, route, caller) {
        Ok(prepared) => prepared,
        Err(err) => return (Err(err), Outcome::default()),
    };
    let mut exchange = Exchange {
        proxy,
        target,
        client,
        outcome: Outcome::default(),
    };
    let sent = match route {
        None => {
            exchange
                .send(Request::from_parts(parts, body::boxed(body)))
                .await
        }
        Some(route) => exchange.on_route(route, parts, body).await,
    };
    (
        sent.map(|r| upstream::to_caller(r, upgrade)),
        exchange.outcome,
    )
}

/// The rules for every request: the route's `callers`, `TRACE` refused on a route, one
/// authority (the target's), no hop-by-hop headers (`Proxy-Authorization` among them),
/// HTTP/1.1 semantics upstream, the route's client identity.
fn prepare<'a>(
    proxy: &'a Proxy,
    mut req: Request<Incoming>,
    target: &Target,
    route: Option<&Route>,
    caller: &Identity,
) -> Result<Prepared<'a>, ProxyError> {
    if let Some(route) = route {
        let (name, listed) = (&route.spec.name, route.spec.callers.as_deref());
        proxy.callers.on_route(name, listed, caller)?;
        let split = proxy.routes.splits_by_path(&target.host, target.port);
        route.refuse(split, req.method(), req.uri().path())?;
    }
    let upgrade = is_upgrade(req.headers());
    let downstream_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    bind_authority(&mut parts, target)?;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    parts.version = Version::HTTP_11;
    let identity = route
        .filter(|r| r.spec.mtls_bound)
        .and_then(|r| r.client())
        .map(|c| c.name.as_str());
    // A host no route covers, or a route with `guard = true`, goes through the destination
    // policy's connector.
    let guarded = match route {
        Some(route) => route.spec.guard,
        None => !proxy.routes.intercepts(&target.host, target.port),
    };
    Ok(Prepared {
        parts,
        body,
        client: proxy.upstream.client(upgrade, identity, guarded),
        upgrade: downstream_upgrade,
    })
}

/// One request on its way upstream, and what it has cost so far.
struct Exchange<'a> {
    proxy: &'a Proxy,
    target: &'a Target,
    client: &'a HttpsClient,
    outcome: Outcome,
}

/// The credentials a routed request carries: the slot its token comes from, the token last
/// sent, and what its DPoP proofs are bound to (DPoP routes only).
struct Credentials<'a> {
    slot: Arc<TokenSlot>,
    token: Arc<AccessToken>,
    proof: Option<Proof<'a>>,
}

/// Everything a resend repeats but the credentials; kept only when the body can be replayed.
struct ResendHead {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    placement: Option<crate::config::TokenPlacement>,
}

impl ResendHead {
    /// The resend: this head, `body`, and fresh credentials.
    fn request(&self, body: Body, creds: &Credentials<'_>) -> Result<Request<Body>, DpopError> {
        let mut headers = self.headers.clone();
        inject(
            &mut headers,
            &self.method,
            Some(&*creds.token),
            self.placement.as_ref(),
            creds.proof.as_ref(),
        )?;
        let mut resend = Request::new(body);
        *resend.method_mut() = self.method.clone();
        *resend.uri_mut() = self.uri.clone();
        *resend.headers_mut() = headers;
        Ok(resend)
    }
}

impl<'a> Exchange<'a> {
    async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, ProxyError> {
        self.client.request(req).await.map_err(|e| {
            let timeout = self.proxy.config.proxy.connect_timeout;
            upstream::failure(&e, &self.target.authority, timeout)
        })
    }

    /// A request on `route`: the route's credentials replace the caller's, the body is kept
    /// for a resend when it can be, and the response may be answered with one (see
    /// [`Exchange::resend_as_needed`]).
    async fn on_route(
        &mut self,
        route: &Route,
        mut parts: http::request::Parts,
        incoming: Incoming,
    ) -> Result<Response<Incoming>, ProxyError> {
        let token = match &route.credential {
            RouteCredential::Token { token, .. } => token,
            RouteCredential::Static(fixed) => {
                return self.fixed(route, fixed, parts, incoming).await
            }
        };
        let placed = route.spec.token_placement.as_ref();
        // Nor in trailers, where a caller-chosen `Authorization` would reach the upstream too.
        let incoming =
            body::StripCredentialTrailers::new(incoming).also(placed.map(|p| p.header.clone()));
        // The proxy owns the credential on a route: the caller's own is never forwarded (a
        // token-exchange route reads it first, as the subject).
        let slot = token
            .slot(&parts.headers)
            .map_err(|source| ProxyError::Subject {
                route: route.spec.name.clone(),
                source: Arc::new(source),
            })?;
        strip_callers_credential(&mut parts.headers, placed.map(|p| &p.header));
        let (token, lookup) = slot.get().await.map_err(|e| route.token_error(e))?;
        self.outcome.lookup = Some(lookup);
        let (limit, limits) = (
            self.proxy.config.proxy.retry_body_limit,
            &self.proxy.config.limits,
        );
        let paid = (self.proxy.replay_budget).reservation(limits.replay_buffer_total_bytes);
        let length = content_length(&parts.headers);
        let (body, replay) = replay::prepare(incoming, length, limit, paid, limits.body_timeout)
            .await
            .map_err(|e| ProxyError::BadRequest(format!("reading the request body: {e}")))?;
        let nonces = self.proxy.tokens.fetcher().nonces();
        let proof = (slot.request().dpop.clone()).map(|key| Proof::to(key, &parts.uri, nonces));
        let creds = Credentials { slot, token, proof };
        let head = replay.may_replay().then(|| ResendHead {
            method: parts.method.clone(),
            uri: parts.uri.clone(),
            headers: parts.headers.clone(),
            placement: placed.cloned(),
        });
        inject(
            &mut parts.headers,
            &parts.method,
            Some(&*creds.token),
            placed,
            creds.proof.as_ref(),
        )
        .map_err(|e| self.proof_error(e))?;
        let response = self.send(Request::from_parts(parts, body)).await?;
        self.resend_as_needed(route, response, creds, head, &replay)
            .await
    }

    /// Answers a response with a resend while [`classify`] asks for one and the [`Budget`]
    /// admits it: a DPoP nonce challenge with the same token and a new proof, a refused token
    /// with a newer one ([`newer_token`]). Each needs the body replayable.
    async fn resend_as_needed(
        &mut self,
        route: &Route,
        mut response: Response<Incoming>,
        mut creds: Credentials<'_>,
        head: Option<ResendHead>,
        replay: &ReplayBody,
    ) -> Result<Response<Incoming>, ProxyError> {
        let name = &route.spec.name;
        loop {
            if let Some(proof) = &creds.proof {
                proof.remember_nonce(response.headers());
            }
            let wanted = classify(response.status(), response.headers(), creds.token.scheme);
            let kind = self.outcome.resent.admit(wanted);
            if kind == Retry::No {
                return Ok(response);
            }
            let Some(head) = head.as_ref().filter(|_| replay.may_replay()) else {
                tracing::debug!(route = %name, "401 not retried: body not replayable");
                return Ok(response);
            };
            // The body first: a resend it cannot make must not cost a token request.
            let bounds = ReadBounds::within(self.proxy.config.limits.body_timeout);
            let body = match replay.replay(bounds).await {
                Ok(body) => body,
                Err(why) => {
                    tracing::debug!(route = %name, ?why, "401 not retried: body not replayable");
                    return Ok(response);
                }
            };
            if kind == Retry::Token {
                let cooldown = self.proxy.config.tokens.invalidate_cooldown;
                let newer = newer_token(&creds.slot, &creds.token, cooldown)
                    .await
                    .map_err(|e| route.token_error(e))?;
                let Some(newer) = newer else {
                    tracing::debug!(
                        route = %name,
                        "401 not retried: this token was refused again within tokens.invalidate_cooldown_secs"
                    );
                    return Ok(response);
                };
                creds.token = newer;
            }
            drop(response);
            self.outcome.resent.spend(kind);
            let resend = head
                .request(body, &creds)
                .map_err(|e| self.proof_error(e))?;
            response = self.send(resend).await?;
        }
    }

    /// A request on a route with a static credential: the credential's current value
    /// replaces the caller's; no resend (a refused static credential is the operator's to
    /// fix, and a resend would send the same one).
    async fn fixed(
        &self,
        route: &Route,
        fixed: &StaticHeader,
        mut parts: http::request::Parts,
        incoming: Incoming,
    ) -> Result<Response<Incoming>, ProxyError> {
        let value = fixed.value().map_err(|source| ProxyError::Token {
            route: route.spec.name.clone(),
            source: Arc::new(source),
        })?;
        strip_callers_credential(&mut parts.headers, Some(fixed.name()));
        parts.headers.insert(fixed.name().clone(), value);
        let body = body::StripCredentialTrailers::new(incoming).also(Some(fixed.name().clone()));
        self.send(Request::from_parts(parts, body::boxed(body)))
            .await
    }

    /// A DPoP proof that could not be signed, as the upstream request's failure.
    fn proof_error(&self, err: DpopError) -> ProxyError {
        ProxyError::Upstream {
            authority: self.target.authority.to_string(),
            detail: err.to_string(),
        }
    }
}

/// Removes every credential the caller sent on a route, whichever one the route injects:
/// `Authorization`, a `DPoP` proof (on a DPoP route `inject` sets the proxy's, on others
/// none goes), and the header the route puts its own credential in (`also`).
fn strip_callers_credential(headers: &mut HeaderMap, also: Option<&http::HeaderName>) {
    headers.remove(header::AUTHORIZATION);
    headers.remove(crate::sender::DPOP);
    if let Some(name) = also {
        headers.remove(name);
    }
}

/// The request's `Content-Length`, when it has a valid one.
fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
}
