//! The route table: which destination gets which credential.
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

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use crate::config::{ClientConfig, RouteSpec};
use crate::token::RouteToken;

/// A host pattern from `host = "..."`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// This host exactly (lowercase, no trailing dot).
    Exact(String),
    /// Any host ending in this suffix; the suffix keeps its leading dot (`.payments.example`).
    Wildcard(String),
}

impl HostPattern {
    /// Parses `api.example`, `*.example`, `127.0.0.1` or `[::1]`.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let host = normalize_host(raw.trim()).into_owned();
        if host.is_empty() {
            return Err("empty host".into());
        }
        if host.contains("://") || host.contains('/') {
            return Err(format!(
                "{raw:?} is not a host name; write the host alone and use `path_prefix` for paths"
            ));
        }
        if host.parse::<std::net::Ipv6Addr>().is_err() && host.contains(':') {
            return Err(format!("{raw:?} contains a port; use `port = N` instead"));
        }
        if let Some(suffix) = host.strip_prefix('*') {
            if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
                return Err(format!(
                    "{raw:?}: a wildcard is `*.` followed by a domain, like `*.api.example`"
                ));
            }
            return Ok(HostPattern::Wildcard(suffix.to_string()));
        }
        if host.contains('*') {
            return Err(format!("{raw:?}: `*` is only allowed as the first label"));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(format!("{raw:?} is not a valid host name"));
        }
        Ok(HostPattern::Exact(host))
    }

    /// Whether a normalized host matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h == host,
            HostPattern::Wildcard(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        }
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Wildcard(s) => write!(f, "*{s}"),
        }
    }
}

/// Lowercases a host, drops a trailing dot and IPv6 brackets; borrows when nothing changes.
pub fn normalize_host(host: &str) -> Cow<'_, str> {
    let trimmed = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    let trimmed = trimmed.strip_suffix('.').unwrap_or(trimmed);
    if trimmed.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(trimmed.to_ascii_lowercase())
    } else {
        Cow::Borrowed(trimmed)
    }
}

/// Whether `path` lies under `prefix`, segment-aware.
pub fn path_under(path: &str, prefix: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

/// A route ready to serve: its spec, its client and the token slot it draws from.
#[derive(Debug)]
pub struct Route {
    /// What the config said.
    pub spec: RouteSpec,
    /// The client registration.
    pub client: Arc<ClientConfig>,
    /// Where this route's token comes from (shared by routes asking for the same token).
    pub token: RouteToken,
}

impl Route {
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

    /// The routes in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns_parse() {
        let cases: &[(&str, Result<HostPattern, ()>)] = &[
            ("API.Example.", Ok(HostPattern::Exact("api.example".into()))),
            (
                "*.pay.example",
                Ok(HostPattern::Wildcard(".pay.example".into())),
            ),
            ("127.0.0.1", Ok(HostPattern::Exact("127.0.0.1".into()))),
            ("[::1]", Ok(HostPattern::Exact("::1".into()))),
            ("*", Err(())),
            ("*.", Err(())),
            ("a.*.example", Err(())),
            ("api.example:443", Err(())),
            ("https://api.example", Err(())),
            ("api.example/v1", Err(())),
            ("", Err(())),
            ("bad host", Err(())),
        ];
        for (raw, want) in cases {
            let got = HostPattern::parse(raw).map_err(|_| ());
            assert_eq!(&got, want, "{raw}");
        }
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let w = HostPattern::parse("*.pay.example").unwrap();
        assert!(w.matches("a.pay.example"));
        assert!(w.matches("a.b.pay.example"));
        assert!(!w.matches("pay.example"));
        assert!(!w.matches("evilpay.example"));
        assert!(!w.matches("a.pay.example.evil"));
    }

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
