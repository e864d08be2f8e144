//! The route table: which destination gets which credential (a token or a static one).
//!
//! Matching is most-specific-first, in this order of precedence:
//! 1. host: an exact host beats any wildcard; a longer wildcard suffix beats a shorter one
//!    (`*.eu.api.example` beats `*.api.example`). `*.example` matches any name ending in
//!    `.example` (one or more labels), never `example` itself;
//! 2. port: a route with a `port` beats one without (which matches every port);
//! 3. path: a longer `path_prefix` beats a shorter one, which beats none. Prefixes match whole
//!    segments: `/v1` matches `/v1` and `/v1/x`, not `/v10`.
//!
//! Two routes with the same host pattern, port and prefix are refused by config validation,
//! so the order is total and no match is ever arbitrary.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::{ClientConfig, Grant, RouteSpec};
use http::Method;

use crate::error::ProxyError;
use crate::host::{normalize_host, HostPattern};
use crate::sender::credential::StaticHeader;
use crate::token::{RouteToken, TokenError};

/// Whether `path` lies under `prefix`, segment-aware.
fn path_under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

/// A route ready to serve: its spec and the credential it injects.
#[derive(Debug)]
pub struct Route {
    /// What the config said.
    pub spec: RouteSpec,
    /// What the route injects.
    pub credential: RouteCredential,
}

/// What a route injects: an OAuth token, or a static credential.
#[derive(Debug)]
pub enum RouteCredential {
    /// A token of `client`, from its slot (shared by routes asking for the same token).
    Token {
        /// The client registration.
        client: Arc<ClientConfig>,
        /// Where this route's token comes from.
        token: RouteToken,
    },
    /// A static credential (`credential = { ... }`).
    Static(StaticHeader),
}

impl Route {
    /// Refused on a route before any token is fetched: `TRACE` echoes the request it received
    /// (RFC 9110 §9.3.8), so its answer would show the caller the token the proxy injected; on a
    /// route with a `path_prefix`, a path the upstream could read as one outside it (`path.rs`).
    pub fn refuse(
        &self,
        split_by_path: bool,
        method: &Method,
        path: &str,
    ) -> Result<(), ProxyError> {
        if self.spec.path_prefix.is_some() || split_by_path {
            if let Err(why) = crate::path::check(path) {
                return Err(ProxyError::PathRefused {
                    route: self.spec.name.clone(),
                    prefix: self.spec.path_prefix.clone().unwrap_or_else(|| "/".into()),
                    why,
                });
            }
        }
        if method == Method::TRACE {
            return Err(ProxyError::MethodNotAllowed {
                route: self.spec.name.clone(),
                method: method.to_string(),
                allowed: ROUTE_ALLOW,
            });
        }
        Ok(())
    }

    /// The client, on a token route.
    pub fn client(&self) -> Option<&Arc<ClientConfig>> {
        match &self.credential {
            RouteCredential::Token { client, .. } => Some(client),
            RouteCredential::Static(_) => None,
        }
    }

    /// Where the token comes from, on a token route.
    pub fn token(&self) -> Option<&RouteToken> {
        match &self.credential {
            RouteCredential::Token { token, .. } => Some(token),
            RouteCredential::Static(_) => None,
        }
    }

    /// A token failure on this route: the caller's (its own token refused, on a
    /// token-exchange route) or the operator's.
    pub fn token_error(&self, source: Arc<TokenError>) -> ProxyError {
        let callers = refuses_callers_token(&self.spec.grant, &source);
        let route = self.spec.name.clone();
        if callers {
            ProxyError::CallerTokenRefused { route, source }
        } else {
            ProxyError::Token { route, source }
        }
    }

    fn matches(&self, port: u16, path: &str) -> bool {
        self.spec.port.is_none_or(|p| p == port)
            && self
                .spec
                .path_prefix
                .as_deref()
                .is_none_or(|prefix| path_under(path, prefix))
    }

    fn rank(&self) -> (bool, usize) {
        (
            self.spec.port.is_some(),
            self.spec.path_prefix.as_ref().map_or(0, |p| p.len() + 1),
        )
    }
}

/// What the `Allow` of a refused `TRACE` lists (other methods than these pass too).
const ROUTE_ALLOW: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

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

/// All routes, indexed for matching.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Vec<Arc<Route>>>,
    wildcard: Vec<Arc<Route>>,
    all: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Indexes routes (order does not matter: precedence is by specificity).
    pub fn new(routes: Vec<Arc<Route>>) -> RouteTable {
        let mut table = RouteTable::default();
        for route in &routes {
            match &route.spec.host {
                HostPattern::Exact(h) => table
                    .exact
                    .entry(h.clone())
                    .or_default()
                    .push(route.clone()),
                HostPattern::Wildcard(_) => table.wildcard.push(route.clone()),
            }
        }
        for bucket in table.exact.values_mut() {
            bucket.sort_by_key(|r| std::cmp::Reverse(r.rank()));
        }
        table.wildcard.sort_by_key(|r| {
            let suffix_len = match &r.spec.host {
                HostPattern::Wildcard(s) => s.len(),
                HostPattern::Exact(_) => 0,
            };
            std::cmp::Reverse((suffix_len, r.rank()))
        });
        table.all = routes;
        table
    }

    /// The most specific route for a request to `host:port` with this path.
    pub fn find(&self, host: &str, port: u16, path: &str) -> Option<&Arc<Route>> {
        let host = normalize_host(host);
        if let Some(bucket) = self.exact.get(host.as_ref()) {
            if let Some(route) = bucket.iter().find(|r| r.matches(port, path)) {
                return Some(route);
            }
        }
        self.wildcard
            .iter()
            .find(|r| r.spec.host.matches(&host) && r.matches(port, path))
    }

    /// Whether any route (with any path) covers `host:port`: CONNECTs to it are intercepted,
    /// and `unmatched` never applies to it (`connect::admit`).
    pub fn intercepts(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        let port_ok = |r: &&Arc<Route>| r.spec.port.is_none_or(|p| p == port);
        self.exact
            .get(host.as_ref())
            .is_some_and(|b| b.iter().any(|r| port_ok(&r)))
            || self
                .wildcard
                .iter()
                .any(|r| r.spec.host.matches(&host) && port_ok(&r))
    }

    /// Whether some route for `host:port` has a `path_prefix`: then every route of that
    /// host is path-sensitive (a path one of them refuses must not slip to another by
    /// missing the prefix, e.g. `/v1/x/../admin` landing on the host's catch-all route).
    pub fn splits_by_path(&self, host: &str, port: u16) -> bool {
        let host = normalize_host(host);
        let prefixed =
            |r: &&Arc<Route>| r.spec.path_prefix.is_some() && r.spec.port.is_none_or(|p| p == port);
        self.exact
            .get(host.as_ref())
            .is_some_and(|b| b.iter().any(|r| prefixed(&r)))
            || self
                .wildcard
                .iter()
                .any(|r| r.spec.host.matches(&host) && prefixed(&r))
    }

    /// The routes in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_prefix_is_segment_aware() {
        let cases = [
            ("/v1", "/v1", true),
            ("/v1/x", "/v1", true),
            ("/v10", "/v1", false),
            ("/v", "/v1", false),
            ("/anything", "/", true),
        ];
        for (path, prefix, want) in cases {
            assert_eq!(path_under(path, prefix), want, "{path} under {prefix}");
        }
    }
}
