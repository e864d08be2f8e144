//! The request paths a route with a `path_prefix` accepts.
//!
//! A prefix is a promise about which token goes where: `/v1` gets the `/v1` token, and
//! nothing else does. The proxy matches the path as it received it; the upstream may read it
//! differently: it may decode `%2F` into a separator, treat `\` as `/`, or resolve `..`
//! (RFC 3986 §5.2.4), and then `/v1/../admin` is `/admin` with the `/v1` token on it. So on a
//! route with a prefix, a path with any of these is refused (400) before a token is fetched,
//! as Envoy's `REJECT_REQUEST` does for escaped slashes. Refusing, rather than normalising
//! and re-routing, is deliberate: a normaliser that disagrees with the upstream's is how
//! prefix rules get bypassed, and legacy clients rarely send such paths.
//!
//! A leaf: it imports nothing from the crate.

use std::fmt;

/// Why a path is refused on a route with a `path_prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathProblem {
    /// `%2F` or `%2f`: a slash the upstream may decode into a separator.
    EncodedSlash,
    /// `\`, `%5C` or `%5c`: a separator to some servers.
    Backslash,
    /// A `.` or `..` segment, or one spelled with `%2E`: the upstream may resolve it.
    DotSegment,
    /// `//`: an empty segment, which some servers merge away.
    EmptySegment,
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::EncodedSlash => "an encoded slash (%2F)",
            PathProblem::Backslash => "a backslash (\\ or %5C)",
            PathProblem::DotSegment => "a dot-segment (. or .., also as %2E)",
            PathProblem::EmptySegment => "an empty segment (//)",
        })
    }
}

/// Checks a request path (without the query) for what an upstream could read as another
/// path than the one the route matched. A trailing `/` is fine; `*` (OPTIONS) has no segments.
pub fn check(path: &str) -> Result<(), PathProblem> {
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") {
        return Err(PathProblem::EncodedSlash);
    }
    if lower.contains('\\') || lower.contains("%5c") {
        return Err(PathProblem::Backslash);
    }
    let Some(rest) = lower.strip_prefix('/') else {
        return Ok(());
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let last = segments.len() - 1;
    for (i, segment) in segments.into_iter().enumerate() {
        if segment.is_empty() && i != last {
            return Err(PathProblem::EmptySegment);
        }
        let decoded = segment.replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err(PathProblem::DotSegment);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_an_upstream_could_read_otherwise_are_named() {
        use PathProblem::*;
        let cases: &[(&str, Result<(), PathProblem>)] = &[
            ("/", Ok(())),
            ("/v1", Ok(())),
            ("/v1/", Ok(())),
            ("/v1/ok", Ok(())),
            ("/v1/a%20b", Ok(())),
            ("/v1/file.txt", Ok(())),
            ("/v1/...", Ok(())),
            ("/v1/.well-known", Ok(())),
            ("/v1/a%2e", Ok(())),
            ("*", Ok(())),
            ("/v1/../admin", Err(DotSegment)),
            ("/v1/./x", Err(DotSegment)),
            ("/v1/..", Err(DotSegment)),
            ("/v1/.", Err(DotSegment)),
            ("/v1/%2e%2e/admin", Err(DotSegment)),
            ("/v1/%2E%2E/admin", Err(DotSegment)),
            ("/v1/.%2e/admin", Err(DotSegment)),
            ("/v1/%2e/admin", Err(DotSegment)),
            ("/v1//../admin", Err(EmptySegment)),
            ("/v1//x", Err(EmptySegment)),
            ("//v1", Err(EmptySegment)),
            ("/v1/%2Fadmin", Err(EncodedSlash)),
            ("/v1/%2fadmin", Err(EncodedSlash)),
            ("/v1/a%5cb", Err(Backslash)),
            ("/v1/a%5Cb", Err(Backslash)),
            ("/v1/a\\b", Err(Backslash)),
        ];
        for (path, want) in cases {
            assert_eq!(check(path), *want, "{path}");
        }
    }
}
