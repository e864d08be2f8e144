//! `[tokens]`: how tokens are requested, kept and renewed.

use std::time::Duration;

use serde::Deserialize;

use super::Findings;

/// `[tokens]`: how tokens are requested and kept.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Bound on one token request (connect, send, read the answer).
    pub request_timeout: Duration,
    /// A token is used until `expires_in` minus this skew, capped at a share of its
    /// lifetime (`token::MAX_SKEW_SHARE`; the arithmetic is `token::schedule`).
    pub expiry_skew: Duration,
    /// Lifetime assumed when the server sends no `expires_in`.
    pub default_expires_in: Duration,
    /// The largest fraction (0..=0.5) of a token's lifetime that its background renewal may
    /// start ahead of the usable end: the renewal starts `request_timeout` (plus jitter) ahead,
    /// never more than this (see `token::schedule`).
    pub refresh_ahead: f64,
    /// Retries of a failed token request (network errors, 5xx, 429) stop once this much time
    /// has passed since the first attempt; zero disables retries.
    pub retry_max_elapsed: Duration,
    /// After a 401, a slot's token is invalidated and fetched anew at most once per this long;
    /// other 401s in the window are resent only if a newer token is already there.
    pub invalidate_cooldown: Duration,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            expiry_skew: Duration::from_secs(60),
            default_expires_in: Duration::from_secs(300),
            refresh_ahead: 0.08,
            retry_max_elapsed: Duration::from_secs(5),
            invalidate_cooldown: Duration::from_secs(10),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawTokens {
    request_timeout_ms: u64,
    expiry_skew_secs: u64,
    default_expires_in_secs: u64,
    refresh_ahead_percent: u8,
    retry_max_elapsed_ms: u64,
    invalidate_cooldown_secs: u64,
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            expiry_skew_secs: 60,
            default_expires_in_secs: 300,
            refresh_ahead_percent: 8,
            retry_max_elapsed_ms: 5_000,
            invalidate_cooldown_secs: 10,
        }
    }
}

impl RawTokens {
    /// `[tokens]`, checked: positive timeouts and lifetimes, a renewal share of at most half.
    pub(super) fn validate(self, found: &mut Findings) -> TokenSettings {
        if self.request_timeout_ms == 0 {
            found.problem("tokens.request_timeout_ms must be greater than 0");
        }
        if self.refresh_ahead_percent > 50 {
            found.problem("tokens.refresh_ahead_percent must be at most 50");
        }
        if self.default_expires_in_secs == 0 {
            found.problem("tokens.default_expires_in_secs must be greater than 0");
        }
        TokenSettings {
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            expiry_skew: Duration::from_secs(self.expiry_skew_secs),
            default_expires_in: Duration::from_secs(self.default_expires_in_secs),
            refresh_ahead: f64::from(self.refresh_ahead_percent) / 100.0,
            retry_max_elapsed: Duration::from_millis(self.retry_max_elapsed_ms),
            invalidate_cooldown: Duration::from_secs(self.invalidate_cooldown_secs),
        }
    }
}
