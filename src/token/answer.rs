//! The token endpoint's answer, judged: an OAuth error, or a token whose type fits the route
//! and whose lifetime is known (never longer than its own `exp` or its subject token's).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use zeroize::Zeroize;

use super::error::{TokenErrorKind, Unusable};
use super::schedule::lifetimes;
use super::{AccessToken, TokenError, TokenRequest};
use crate::config::TokenSettings;

#[derive(Deserialize)]
struct TokenResponse {
    access_token: Option<SecretString>,
    token_type: Option<String>,
    expires_in: Option<serde_json::Value>,
    scope: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    error_description: Option<String>,
}

/// One answer from the token endpoint. The body is zeroized on drop.
pub(super) struct Answer {
    pub status: StatusCode,
    pub content_type: String,
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

impl Drop for Answer {
    fn drop(&mut self) {
        self.body.zeroize();
    }
}

/// Where the answer came from, for its errors.
pub(super) struct At<'a> {
    pub client: &'a str,
    pub endpoint: &'a str,
}

impl At<'_> {
    pub fn error(&self, kind: TokenErrorKind) -> TokenError {
        TokenError::new(self.client, kind).at(self.endpoint)
    }

    fn unusable(&self, why: Unusable) -> TokenError {
        self.error(TokenErrorKind::BadResponse(why))
    }
}

impl Answer {
    /// `400` with `error = "use_dpop_nonce"` (RFC 9449 §8).
    pub fn is_nonce_challenge(&self) -> bool {
        self.status == StatusCode::BAD_REQUEST
            && serde_json::from_slice::<ErrorResponse>(&self.body)
                .is_ok_and(|e| e.error == "use_dpop_nonce")
    }

    /// A 5xx or 429: worth another attempt.
    pub fn is_transient(&self) -> bool {
        self.status.is_server_error() || self.status == StatusCode::TOO_MANY_REQUESTS
    }

    /// A 503 or 429: the server says it did not act on the request.
    pub fn was_not_acted_on(&self) -> bool {
        self.status == StatusCode::SERVICE_UNAVAILABLE
            || self.status == StatusCode::TOO_MANY_REQUESTS
    }

    /// The `refresh_token` of a success answer, whatever else it holds (or lacks).
    pub fn rotated_refresh_token(&self) -> Option<SecretString> {
        #[derive(Deserialize)]
        struct Rotated {
            refresh_token: Option<SecretString>,
        }
        if !self.status.is_success() {
            return None;
        }
        serde_json::from_slice::<Rotated>(&self.body)
            .ok()?
            .refresh_token
            .filter(|t| !t.expose_secret().trim().is_empty())
    }

    /// The token this answer carries for `request`, or why there is none.
    pub fn interpret(
        &self,
        at: &At<'_>,
        request: &TokenRequest,
        sent_at: Instant,
        settings: &TokenSettings,
    ) -> Result<AccessToken, TokenError> {
        if !self.status.is_success() {
            return Err(basic_hint(self.refusal(at), request));
        }
        let parsed: TokenResponse = serde_json::from_slice(&self.body).map_err(|err| {
            at.unusable(Unusable::NotJson {
                status: self.status.as_u16(),
                content_type: self.content_type.clone(),
                bytes: self.body.len(),
            })
            .because(err)
        })?;
        let value = parsed
            .access_token
            .ok_or_else(|| at.unusable(Unusable::NoAccessToken))?;
        let as_dpop =
            token_type(parsed.token_type.as_deref(), request).map_err(|why| at.unusable(why))?;
        let expires_in = match parsed.expires_in {
            None => settings.default_expires_in,
            Some(v) => parse_expires_in(&v)
                .ok_or_else(|| at.unusable(Unusable::BadExpiresIn(v.to_string())))?,
        };
        let lifetime = lifetime(&value, expires_in, request.subject_exp);
        if lifetime.is_zero() {
            return Err(at.unusable(Unusable::Expired));
        }
        let (usable_until, refresh_at) = lifetimes(sent_at, lifetime, settings);
        let token = AccessToken::new(value, usable_until, refresh_at, parsed.scope, as_dpop)
            .map_err(|why| at.unusable(why))?;
        Ok(token)
    }

    /// The error an error status stands for: an OAuth error, or a status without one.
    pub fn refusal(&self, at: &At<'_>) -> TokenError {
        let status = self.status.as_u16();
        at.error(match serde_json::from_slice::<ErrorResponse>(&self.body) {
            Ok(e) => TokenErrorKind::OAuth {
                status,
                error: clean(&e.error, 64),
                description: e.error_description.map(|d| clean(&d, 300)),
            },
            Err(_) => TokenErrorKind::BadStatus {
                status,
                content_type: self.content_type.clone(),
                bytes: self.body.len(),
            },
        })
    }
}

/// What to say when a server refuses `client_secret_basic` credentials that form-encoding
/// changed: the likely cause is a server that does not form-decode them.
pub(super) const BASIC_ENCODING_HINT: &str = "the client id or secret has characters that \
    client_secret_basic form-encodes (RFC 6749 §2.3.1) and some servers (Glewlwyd among them) \
    do not decode; if this server is one, set basic_encoding = \"raw\" on the client";

/// `error`, with [`BASIC_ENCODING_HINT`] when it refuses the client (`invalid_client` or
/// 401) and form-encoding changed its Basic credentials.
fn basic_hint(error: TokenError, request: &TokenRequest) -> TokenError {
    let refused_client = error.oauth_error() == Some("invalid_client");
    if refused_client && super::client_auth::basic_encoding_matters(&request.client) {
        error.hinted(BASIC_ENCODING_HINT)
    } else {
        error
    }
}

/// Whether the answer's `token_type` makes a DPoP token (`true`), a Bearer token (`false`),
/// or nothing this route can send.
fn token_type(token_type: Option<&str>, request: &TokenRequest) -> Result<bool, Unusable> {
    let dpop = request.dpop.is_some();
    match token_type {
        Some(t) if t.eq_ignore_ascii_case("dpop") && dpop => Ok(true),
        Some(t) if t.eq_ignore_ascii_case("dpop") => Err(Unusable::DpopOnBearerRoute),
        Some(t) if t.eq_ignore_ascii_case("bearer") && dpop && request.dpop_required => {
            Err(Unusable::BearerOnDpopRoute)
        }
        Some(t) if t.eq_ignore_ascii_case("bearer") => Ok(false),
        Some(t) if t.eq_ignore_ascii_case("n_a") => Err(Unusable::NotAnAccessToken),
        Some(t) => Err(Unusable::UnknownType(clean(t, 32))),
        None => Err(Unusable::NoTokenType),
    }
}

/// Never outlive the token's own `exp` (a JWT) nor the subject token it was exchanged for:
/// both shorten the lifetime, so the skew and renewal apply to what is left. `exp` counts
/// whole seconds (servers round their clock down), so an own `exp` less than a second short
/// of `expires_in` is that rounding, not a shorter life.
fn lifetime(value: &SecretString, expires_in: Duration, subject_exp: Option<u64>) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let left = |exp: u64| Duration::from_secs(exp).saturating_sub(now);
    let own = super::assertion::unverified_exp(value.expose_secret())
        .map(left)
        .filter(|left| *left + Duration::from_secs(1) < expires_in);
    [own, subject_exp.map(left)]
        .into_iter()
        .flatten()
        .fold(expires_in, Duration::min)
}

/// `expires_in` as a JSON number or a numeric string (some servers send `"3600"`).
fn parse_expires_in(v: &serde_json::Value) -> Option<Duration> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs >= 1.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

/// Strips control characters and shortens text that came from a server.
fn clean(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_in_forms() {
        let cases = [
            (serde_json::json!(3600), Some(3600.0)),
            (serde_json::json!("3600"), Some(3600.0)),
            (serde_json::json!(1.5), Some(1.5)),
            (serde_json::json!(0), None),
            (serde_json::json!(-5), None),
            (serde_json::json!("soon"), None),
            (serde_json::json!(null), None),
        ];
        for (v, want) in cases {
            assert_eq!(parse_expires_in(&v).map(|d| d.as_secs_f64()), want, "{v}");
        }
    }
}
