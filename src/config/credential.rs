//! `credential = { ... }` on a `[[route]]`: a static credential (an API key, a Basic
//! password) injected instead of an OAuth token; and `token_header`/`token_scheme`, where
//! an OAuth route puts its token.

use http::HeaderName;
use serde::Deserialize;

use super::source::RawSecret;
use super::Findings;
use crate::secret::SecretSource;

/// A static credential a route injects, validated: the header it goes in and how its value
/// is made. The value is read from its source when used (re-read when its file changes,
/// `sender::credential`), never held here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StaticCredential {
    /// The header it goes in (`Authorization` for `basic`); the caller's own is replaced.
    pub header: HeaderName,
    /// How the header value is made.
    pub form: CredentialForm,
}

/// How a static credential's header value is made from its secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CredentialForm {
    /// `prefix` followed by the secret, e.g. `Bearer ` + an API token, or the bare key.
    Value {
        /// Written before the secret (no space is added).
        prefix: String,
        /// The secret.
        value: SecretSource,
    },
    /// `Basic base64(user:password)` (RFC 7617).
    Basic {
        /// The user name (not a secret).
        user: String,
        /// The password.
        password: SecretSource,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCredential {
    header: Option<String>,
    prefix: Option<String>,
    value: Option<RawSecret>,
    basic: Option<RawBasic>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBasic {
    user: String,
    password: RawSecret,
}

/// Headers a credential may not go in: the proxy or the transport owns them.
const OWNED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-authorization",
    "proxy-connection",
    "dpop",
];

/// A header name a credential or a token may go in: a valid field name the proxy and the
/// transport do not own. `key` names the setting in the problem.
pub(super) fn credential_header(
    name: &str,
    key: &str,
    at: &str,
    found: &mut Findings,
) -> Option<HeaderName> {
    match HeaderName::try_from(name) {
        Ok(h) if OWNED_HEADERS.contains(&h.as_str()) => {
            found.problem(format!(
                "{at}: {key} = {name:?} is a header the proxy or the transport owns; name the header the API reads the credential from"
            ));
            None
        }
        Ok(h) => Some(h),
        Err(_) => {
            found.problem(format!(
                "{at}: {key} = {name:?} is not a valid header name (RFC 9110 §5.1)"
            ));
            None
        }
    }
}

/// Whether `text` can go in a header value: visible ASCII, spaces and tabs (RFC 9110 §5.5).
pub(crate) fn header_safe(text: &[u8]) -> bool {
    text.iter()
        .all(|&b| b == b'\t' || (b' '..=b'~').contains(&b))
}

impl RawCredential {
    /// The credential, checked: one of `value` (with `header`, optional `prefix`) or `basic`.
    pub(super) fn validate(
        self,
        base: &std::path::Path,
        at: &str,
        found: &mut Findings,
    ) -> Option<StaticCredential> {
        let at = format!("{at}: credential");
        if let Some(prefix) = &self.prefix {
            if !header_safe(prefix.as_bytes()) {
                found.problem(format!(
                    "{at}.prefix holds bytes that cannot go in a header value (controls or non-ASCII)"
                ));
            }
        }
        match (self.value, self.basic) {
            (Some(value), None) => {
                let Some(header) = self.header else {
                    found.problem(format!(
                        "{at} needs `header`, the header the API reads the value from (e.g. header = \"X-Api-Key\")"
                    ));
                    return None;
                };
                Some(StaticCredential {
                    header: credential_header(&header, "header", &at, found)?,
                    form: CredentialForm::Value {
                        prefix: self.prefix.unwrap_or_default(),
                        value: value.into_source(base),
                    },
                })
            }
            (None, Some(basic)) => {
                if self.header.is_some() || self.prefix.is_some() {
                    found.problem(format!(
                        "{at}: basic goes in Authorization as \"Basic ...\"; remove header and prefix"
                    ));
                }
                if basic.user.contains(':') || !header_safe(basic.user.as_bytes()) {
                    found.problem(format!(
                        "{at}.basic.user may not contain ':' or control characters (RFC 7617 §2)"
                    ));
                }
                Some(StaticCredential {
                    header: http::header::AUTHORIZATION,
                    form: CredentialForm::Basic {
                        user: basic.user,
                        password: basic.password.into_source(base),
                    },
                })
            }
            (Some(_), Some(_)) => {
                found.problem(format!("{at}: give either value or basic, not both"));
                None
            }
            (None, None) => {
                found.problem(format!(
                    "{at} needs value = {{ env | file }} (with header) or basic = {{ user, password }}"
                ));
                None
            }
        }
    }
}

/// Where an OAuth route's token goes: `Authorization: Bearer` by default, or another header
/// and scheme (`token_header`, `token_scheme`; `""` for a bare token).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenPlacement {
    /// The header.
    pub header: HeaderName,
    /// The scheme written before the token and a space; empty: the bare token.
    pub scheme: String,
}

/// `token_header`/`token_scheme`, checked: `None` when neither is set (the token goes as
/// `Authorization: Bearer` or `DPoP`). A DPoP route keeps `Authorization: DPoP` (RFC 9449
/// §7.1), so it may not move its token.
pub(super) fn token_placement(
    header: Option<String>,
    scheme: Option<String>,
    dpop: bool,
    at: &str,
    found: &mut Findings,
) -> Option<TokenPlacement> {
    if header.is_none() && scheme.is_none() {
        return None;
    }
    if dpop {
        found.problem(format!(
            "{at}: token_header and token_scheme cannot be used with DPoP: a DPoP token goes in Authorization as \"DPoP\" (RFC 9449 §7.1)"
        ));
        return None;
    }
    let scheme = scheme.unwrap_or_else(|| "Bearer".into());
    if !scheme
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        found.problem(format!(
            "{at}: token_scheme = {scheme:?} is not an auth-scheme token (RFC 9110 §11.1); use \"\" for a bare token"
        ));
    }
    let header = header.unwrap_or_else(|| "authorization".into());
    Some(TokenPlacement {
        header: credential_header(&header, "token_header", at, found)?,
        scheme,
    })
}

#[cfg(test)]
mod tests;
