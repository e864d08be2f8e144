//! The token request (RFC 6749 §4.4 client credentials, RFC 8707 `resource`, `audience`)
//! and the checks on the answer.
//!
//! Token requests use their own reqwest client: `.no_proxy()` (the environment's
//! `HTTPS_PROXY` may point at this very proxy), no redirects (a redirect could carry the
//! client secret elsewhere), bounded timeouts, and the same trust roots as upstream TLS.

use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::time::Instant;
use zeroize::Zeroize;

use super::{client_auth, AccessToken, TokenError, TokenKey};
use crate::config::{ClientConfig, TokenSettings};

/// Largest token-endpoint answer read; anything bigger is not a token response.
const MAX_RESPONSE_BYTES: usize = 256 * 1024;

/// Sends token requests.
pub struct Fetcher {
    http: reqwest::Client,
    settings: TokenSettings,
}

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

impl Fetcher {
    /// A fetcher trusting the roots in `tls`.
    pub fn new(
        settings: TokenSettings,
        tls: rustls::ClientConfig,
    ) -> Result<Fetcher, reqwest::Error> {
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.request_timeout.min(Duration::from_secs(5)))
            .timeout(settings.request_timeout)
            .user_agent(concat!("oauth-egress/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Fetcher { http, settings })
    }

    /// Requests a token for `key` as `client`. `sent_at` anchors the token's lifetime.
    pub(super) async fn fetch(
        &self,
        client: &ClientConfig,
        key: &TokenKey,
        sent_at: Instant,
    ) -> Result<AccessToken, TokenError> {
        let endpoint = client.token_endpoint.as_str();
        let secret = match &client.client_secret {
            Some(source) => source.load().map_err(|source| TokenError::Secret {
                client: client.name.clone(),
                source,
            })?,
            None => SecretString::from(String::new()),
        };
        let auth = client_auth::apply(client, &secret);

        let body = {
            let mut form = form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", key.grant);
            if !key.scopes.is_empty() {
                form.append_pair("scope", &key.scopes.join(" "));
            }
            if let Some(audience) = &key.audience {
                form.append_pair("audience", audience);
            }
            if let Some(resource) = &key.resource {
                form.append_pair("resource", resource);
            }
            for (name, value) in &auth.form {
                form.append_pair(name, value.expose_secret());
            }
            form.finish()
        };

        let mut request = self
            .http
            .post(client.token_endpoint.clone())
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(header) = auth.authorization {
            request = request.header(AUTHORIZATION, header);
        }

        let transport = |err: reqwest::Error| {
            if err.is_timeout() {
                TokenError::Timeout {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    after_ms: self.settings.request_timeout.as_millis(),
                }
            } else {
                TokenError::Unreachable {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    detail: crate::error::chain(&err),
                }
            }
        };
        let mut response = request.send().await.map_err(transport)?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("no content type")
            .to_string();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(transport)? {
            if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                body.zeroize();
                return Err(TokenError::BadResponse {
                    client: client.name.clone(),
                    endpoint: endpoint.to_string(),
                    detail: format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
                });
            }
            body.extend_from_slice(&chunk);
        }
        let result = self.interpret(client, status, &content_type, &body, sent_at);
        body.zeroize();
        result
    }

    fn interpret(
        &self,
        client: &ClientConfig,
        status: reqwest::StatusCode,
        content_type: &str,
        body: &[u8],
        sent_at: Instant,
    ) -> Result<AccessToken, TokenError> {
        let endpoint = client.token_endpoint.to_string();
        let bad = |detail: String| TokenError::BadResponse {
            client: client.name.clone(),
            endpoint: endpoint.clone(),
            detail,
        };
        if !status.is_success() {
            return Err(match serde_json::from_slice::<ErrorResponse>(body) {
                Ok(e) => TokenError::OAuth {
                    client: client.name.clone(),
                    endpoint: endpoint.clone(),
                    status: status.as_u16(),
                    error: clean(&e.error, 64),
                    description: e.error_description.map(|d| clean(&d, 300)),
                },
                Err(_) => TokenError::BadStatus {
                    client: client.name.clone(),
                    endpoint: endpoint.clone(),
                    status: status.as_u16(),
                    detail: format!("{content_type}, {} bytes", body.len()),
                },
            });
        }
        let parsed: TokenResponse = serde_json::from_slice(body).map_err(|_| {
            bad(format!(
                "HTTP {} with a body that is not a JSON token response ({content_type}, {} bytes)",
                status.as_u16(),
                body.len()
            ))
        })?;
        let value = parsed
            .access_token
            .ok_or_else(|| bad("no access_token in the answer".into()))?;
        match parsed.token_type.as_deref() {
            Some(t) if t.eq_ignore_ascii_case("bearer") => {}
            Some(t) => {
                return Err(bad(format!(
                    "token_type {:?} cannot be sent as a Bearer token",
                    clean(t, 32)
                )))
            }
            None => return Err(bad("no token_type in the answer (RFC 6749 §5.1)".into())),
        }
        let expires_in = match parsed.expires_in {
            None => self.settings.default_expires_in,
            Some(v) => parse_expires_in(&v).ok_or_else(|| {
                bad(format!(
                    "expires_in {v} is not a positive number of seconds"
                ))
            })?,
        };
        let (usable_until, refresh_at) = lifetimes(sent_at, expires_in, &self.settings);
        AccessToken::new(value, usable_until, refresh_at, parsed.scope)
            .map_err(|why| bad(why.to_string()))
    }
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

/// When a token obtained at `sent_at` stops being usable, and when renewal starts:
/// usable for `expires_in` minus the skew (the skew at most half the lifetime), renewed
/// during the last `refresh_ahead` fraction of that.
pub fn lifetimes(sent_at: Instant, expires_in: Duration, s: &TokenSettings) -> (Instant, Instant) {
    let usable = expires_in - s.expiry_skew.min(expires_in / 2);
    let fresh = usable.mul_f64((1.0 - s.refresh_ahead).clamp(0.0, 1.0));
    (sent_at + usable, sent_at + fresh)
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

    #[test]
    fn lifetime_arithmetic() {
        let s = TokenSettings {
            expiry_skew: Duration::from_secs(60),
            refresh_ahead: 0.2,
            ..TokenSettings::default()
        };
        let t0 = Instant::now();
        // (expires_in, usable, renew from)
        let cases = [(3600, 3540.0, 2832.0), (100, 50.0, 40.0), (10, 5.0, 4.0)];
        for (expires_in, usable, renew) in cases {
            let (u, r) = lifetimes(t0, Duration::from_secs(expires_in), &s);
            assert_eq!((u - t0).as_secs_f64(), usable, "usable for {expires_in}");
            assert!(
                ((r - t0).as_secs_f64() - renew).abs() < 1e-6,
                "renew for {expires_in}"
            );
        }
    }
}
