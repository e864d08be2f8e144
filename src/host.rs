//! Host names as routes name them and requests carry them: the `host = "..."` pattern of a
//! route and the one normalisation (lowercase, no trailing dot, no IPv6 brackets) applied to
//! both sides before they are compared.
//!
//! A leaf: config validation parses patterns here, the route table and the request path
//! normalise with it, and it imports nothing from the crate.

use std::borrow::Cow;
use std::fmt;

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
    pub fn parse(raw: &str) -> Result<HostPattern, HostError> {
        let host = normalize_host(raw.trim()).into_owned();
        let bad = |kind| HostError {
            raw: raw.to_string(),
            kind,
        };
        if host.is_empty() {
            return Err(bad(HostErrorKind::Empty));
        }
        if host.contains("://") || host.contains('/') {
            return Err(bad(HostErrorKind::NotAHost));
        }
        if host.parse::<std::net::Ipv6Addr>().is_err() && host.contains(':') {
            return Err(bad(HostErrorKind::Port));
        }
        if let Some(suffix) = host.strip_prefix('*') {
            if !suffix.starts_with('.') || suffix.len() < 2 || suffix.contains('*') {
                return Err(bad(HostErrorKind::Wildcard));
            }
            return Ok(HostPattern::Wildcard(suffix.to_string()));
        }
        if host.contains('*') {
            return Err(bad(HostErrorKind::StarInside));
        }
        if !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'))
        {
            return Err(bad(HostErrorKind::Invalid));
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
pub(crate) fn normalize_host(host: &str) -> Cow<'_, str> {
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

/// A `host = "..."` value that is not a host pattern; says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct HostError {
    raw: String,
    kind: HostErrorKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostErrorKind {
    Empty,
    NotAHost,
    Port,
    Wildcard,
    StarInside,
    Invalid,
}

impl HostError {
    fn message(&self) -> String {
        let raw = &self.raw;
        match self.kind {
            HostErrorKind::Empty => "empty host".into(),
            HostErrorKind::NotAHost => format!(
                "{raw:?} is not a host name; write the host alone and use `path_prefix` for paths"
            ),
            HostErrorKind::Port => format!("{raw:?} contains a port; use `port = N` instead"),
            HostErrorKind::Wildcard => {
                format!("{raw:?}: a wildcard is `*.` followed by a domain, like `*.api.example`")
            }
            HostErrorKind::StarInside => {
                format!("{raw:?}: `*` is only allowed as the first label")
            }
            HostErrorKind::Invalid => format!("{raw:?} is not a valid host name"),
        }
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
}
