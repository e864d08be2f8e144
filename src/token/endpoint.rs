//! The token request: its form (grant and client authentication), its DPoP proof, the
//! exchange over the [`Fetcher`]'s client, and the retries; `answer.rs` judges the answer.
//!
//! Retries: network errors, 5xx and 429 are retried with exponential backoff and jitter,
//! honouring `Retry-After`, until `tokens.retry_max_elapsed_ms` has passed since the first
//! attempt. A refresh-token request is retried only when the server cannot have acted on it
//! (the connection was never made, or it answered 503/429): after a timeout or a 500 the
//! server may already have rotated the token, and resending the old one would look like
//! token theft to a server that revokes on reuse.

use std::time::{Duration, SystemTime};

use http::HeaderValue;
use rand::Rng;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use tokio::time::Instant;

use super::answer::{Answer, At};
use super::client_auth::CredentialError;
use super::error::{TokenErrorKind, Unusable};
use super::{client_auth, grant, AccessToken, Fetcher, TokenError, TokenRequest};
use crate::config::Grant;
use crate::sender::dpop::{self, DpopKey};

/// Largest token-endpoint answer read; anything bigger is not a token response.
pub(super) const MAX_RESPONSE_BYTES: usize = 256 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A failed attempt: whether the request can have reached the server.
enum Failed {
    /// No connection was made: safe to resend anything.
    NotSent(TokenError),
    /// Sent, but no complete answer: the server may have acted on it.
    Unknown(TokenError),
    /// An answer that no retry will make usable (too large).
    Final(TokenError),
}

/// An attempt that did not give a final answer: its error, and whether to try again.
struct Setback {
    error: TokenError,
    retryable: bool,
    retry_after: Option<Duration>,
}

/// Exponential backoff with jitter, bounded by a deadline.
struct Backoff {
    deadline: Instant,
    next: Duration,
    attempts: u32,
}

impl Backoff {
    fn new(max_elapsed: Duration) -> Backoff {
        Backoff {
            deadline: Instant::now() + max_elapsed,
            next: FIRST_BACKOFF,
            attempts: 0,
        }
    }

    /// How long to wait before the next attempt (`Retry-After` when the server said), or
    /// `None` when the next attempt would start past the deadline.
    fn wait(&mut self, retry_after: Option<Duration>) -> Option<Duration> {
        let wait = retry_after.unwrap_or_else(|| jitter(self.next));
        // A `Retry-After` of u64::MAX seconds must not overflow the clock: past the deadline.
        if Instant::now()
            .checked_add(wait)
            .is_none_or(|t| t > self.deadline)
        {
            return None;
        }
        self.next = (self.next * 2).min(MAX_BACKOFF);
        Some(wait)
    }
}

/// What a token request left: the access token (or why not), and the refresh token the
/// server rotated to, if it did, even when the access token was then refused (the old refresh
/// token is spent either way; the shared store must keep the new one).
pub(super) struct Fetched {
    /// The access token.
    pub(super) result: Result<AccessToken, TokenError>,
    /// The new refresh token.
    pub(super) rotated: Option<SecretString>,
}

impl Fetcher {
    /// Requests a token. `sent_at` anchors the token's lifetime. `seed`: on a
    /// `refresh_token` grant, the refresh token to present instead of the file's (the fleet's
    /// current one, from the shared store).
    pub(super) async fn fetch(
        &self,
        request: &TokenRequest,
        sent_at: Instant,
        seed: Option<SecretString>,
    ) -> Fetched {
        let started = Instant::now();
        let mut rotated = None;
        let result = self.fetch_inner(request, sent_at, seed, &mut rotated).await;
        let (outcome, error) = match &result {
            Ok(_) => ("ok", None),
            Err(e) => (e.kind(), e.oauth_error()),
        };
        crate::metrics::token_request(&request.client.name, outcome, error, started.elapsed());
        Fetched { result, rotated }
    }

    async fn fetch_inner(
        &self,
        request: &TokenRequest,
        sent_at: Instant,
        seed: Option<SecretString>,
        rotated: &mut Option<SecretString>,
    ) -> Result<AccessToken, TokenError> {
        let client = &request.client;
        let endpoint = self.endpoint(client).await?;
        let at = At {
            client: &client.name,
            endpoint: &endpoint,
        };
        // One refresh per refresh-token file at a time in the whole process,
        // read → request → write back.
        let refresh_file = match &request.grant {
            Grant::RefreshToken { file } => Some((file.as_path(), self.refresh.file(file))),
            _ => None,
        };
        let mut held = match &refresh_file {
            Some((path, file)) => Some(file.lock(path).await),
            None => None,
        };
        let stored = match (held.as_mut(), seed) {
            (Some(_), Some(seed)) => Some(seed),
            (Some(held), None) => Some(held.current().map_err(|detail| {
                TokenError::new(&client.name, TokenErrorKind::Refresh).because(detail)
            })?),
            (None, _) => None,
        };
        let answer = self.exchange(request, &at, stored.as_ref()).await?;
        // Whatever else the answer holds, a rotated refresh token is the only valid one now:
        // keep it before judging the access token (the old one is spent).
        if let (Some(held), Some(new_refresh)) = (held.as_mut(), answer.rotated_refresh_token()) {
            *rotated = Some(SecretString::from(new_refresh.expose_secret().to_string()));
            if held.rotated(&client.name, new_refresh).is_none() {
                tracing::info!(client = %client.name, "refresh token rotated and saved");
            }
        }
        answer.interpret(&at, request, sent_at, &self.settings)
    }

    /// Attempts until an answer that is not worth another attempt, or the retry budget is
    /// spent.
    async fn exchange(
        &self,
        request: &TokenRequest,
        at: &At<'_>,
        refresh_token: Option<&SecretString>,
    ) -> Result<Answer, TokenError> {
        let client = &request.client;
        let is_refresh = refresh_token.is_some();
        let mut backoff = Backoff::new(self.settings.retry_max_elapsed);
        let mut nonce_retried = false;
        loop {
            backoff.attempts += 1;
            let setback = match self.attempt(request, at, refresh_token).await {
                Ok(answer)
                    if request.dpop.is_some() && !nonce_retried && answer.is_nonce_challenge() =>
                {
                    // RFC 9449 §8: resend once with the nonce the server just gave.
                    nonce_retried = true;
                    crate::metrics::token_dpop_nonce_retry(&client.name);
                    continue;
                }
                Ok(answer) if answer.is_transient() => Setback {
                    retryable: !is_refresh || answer.was_not_acted_on(),
                    retry_after: answer.retry_after,
                    error: answer.refusal(at),
                },
                Ok(answer) => return Ok(answer),
                Err(Failed::NotSent(error)) => {
                    self.forget_discovery(client);
                    Setback {
                        error,
                        retryable: true,
                        retry_after: None,
                    }
                }
                Err(Failed::Unknown(error)) => Setback {
                    error,
                    retryable: !is_refresh,
                    retry_after: None,
                },
                Err(Failed::Final(error)) => Setback {
                    error,
                    retryable: false,
                    retry_after: None,
                },
            };
            let attempts = backoff.attempts;
            let Some(wait) = setback
                .retryable
                .then(|| backoff.wait(setback.retry_after))
                .flatten()
            else {
                if attempts > 1 {
                    tracing::warn!(client = %client.name, attempts, "token request failed; giving up");
                }
                return Err(setback.error);
            };
            tracing::info!(client = %client.name, attempt = attempts, wait_ms = wait.as_millis() as u64, error = %setback.error, "token request failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// One request and its whole answer.
    async fn attempt(
        &self,
        request: &TokenRequest,
        at: &At<'_>,
        refresh_token: Option<&SecretString>,
    ) -> Result<Answer, Failed> {
        let client = &request.client;
        let config_error = |cause: CredentialError| {
            Failed::NotSent(TokenError::new(at.client, TokenErrorKind::Config).because(cause))
        };
        let (body, authorization) =
            form(request, at.endpoint, refresh_token).map_err(config_error)?;
        let mut builder = self
            .http_for(client)
            .post(at.endpoint)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(ACCEPT, "application/json")
            .body(body);
        if let Some(header) = authorization {
            builder = builder.header(AUTHORIZATION, header);
        }
        let origin = at
            .endpoint
            .parse::<http::Uri>()
            .map(|u| dpop::origin(&u))
            .unwrap_or_default();
        if let Some(key) = &request.dpop {
            let proof = self
                .proof(key, at.endpoint, &origin)
                .map_err(config_error)?;
            builder = builder.header("dpop", proof);
        }
        let response = builder.send().await.map_err(|e| self.transport(at, e))?;
        if let Some(nonce) = response.headers().get("dpop-nonce") {
            self.nonces.remember(&origin, nonce);
        }
        self.read(at, response).await
    }

    /// The DPoP proof for a token request to `endpoint`, with the origin's latest nonce.
    fn proof(
        &self,
        key: &DpopKey,
        endpoint: &str,
        origin: &str,
    ) -> Result<HeaderValue, CredentialError> {
        let htu = endpoint
            .parse::<http::Uri>()
            .map(|u| dpop::htu(&u))
            .unwrap_or_default();
        let proof = key.proof("POST", &htu, None, self.nonces.get(origin).as_deref())?;
        let mut value = HeaderValue::from_str(&proof)?;
        value.set_sensitive(true);
        Ok(value)
    }

    /// A transport error: a timeout or an unreachable endpoint, and whether the request can
    /// have reached the server.
    fn transport(&self, at: &At<'_>, err: reqwest::Error) -> Failed {
        let connect = err.is_connect();
        let error = if err.is_timeout() {
            at.error(TokenErrorKind::Timeout {
                after_ms: self.settings.request_timeout.as_millis(),
            })
        } else {
            at.error(TokenErrorKind::Unreachable).because(err)
        };
        if connect {
            Failed::NotSent(error)
        } else {
            Failed::Unknown(error)
        }
    }

    /// The whole answer, up to [`MAX_RESPONSE_BYTES`].
    async fn read(&self, at: &At<'_>, mut response: reqwest::Response) -> Result<Answer, Failed> {
        let status = response.status();
        let header = |name| {
            response
                .headers()
                .get(name)
                .and_then(|v: &HeaderValue| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header(CONTENT_TYPE).unwrap_or_else(|| "no content type".into());
        let retry_after = header(RETRY_AFTER).and_then(|v| parse_retry_after(&v));
        let mut answer = Answer {
            status,
            content_type,
            retry_after,
            body: Vec::new(),
        };
        while let Some(chunk) = response.chunk().await.map_err(|e| self.transport(at, e))? {
            if answer.body.len() + chunk.len() > MAX_RESPONSE_BYTES {
                let why = Unusable::TooLarge {
                    status: status.as_u16(),
                };
                return Err(Failed::Final(at.error(TokenErrorKind::BadResponse(why))));
            }
            answer.body.extend_from_slice(&chunk);
        }
        Ok(answer)
    }
}

/// The request body (grant and client authentication, form-urlencoded) and the
/// `Authorization` header of `client_secret_basic`.
fn form(
    request: &TokenRequest,
    endpoint: &str,
    refresh_token: Option<&SecretString>,
) -> Result<(String, Option<HeaderValue>), CredentialError> {
    let auth = client_auth::apply(&request.client, endpoint)?;
    let mut fields = grant::form(request, endpoint, refresh_token)?;
    fields.extend(auth.form);
    let mut form = form_urlencoded::Serializer::new(String::new());
    for (name, value) in &fields {
        form.append_pair(name, value);
    }
    // `token_params` last; config validation refused every name written above.
    for (name, value) in &request.params {
        form.append_pair(name, value);
    }
    Ok((form.finish(), auth.authorization))
}

/// Full jitter between half and all of `backoff`.
fn jitter(backoff: Duration) -> Duration {
    let half = backoff / 2;
    half + Duration::from_millis(rand::rng().random_range(0..=half.as_millis() as u64))
}

/// `Retry-After` as delta-seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_retry_after_beyond_the_clock_ends_the_retries_instead_of_panicking() {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let huge = parse_retry_after("18446744073709551615");
        assert_eq!(huge, Some(Duration::from_secs(u64::MAX)));
        assert_eq!(backoff.wait(huge), None);
        assert!(backoff.wait(Some(Duration::from_millis(1))).is_some());
    }

    use super::*;

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
        let parsed = parse_retry_after(&later).unwrap();
        assert!(parsed > Duration::from_secs(25) && parsed <= Duration::from_secs(30));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn jitter_stays_within_half_and_whole() {
        for _ in 0..100 {
            let j = jitter(Duration::from_millis(400));
            assert!(j >= Duration::from_millis(200) && j <= Duration::from_millis(400));
        }
    }
}
