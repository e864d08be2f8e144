//! What an operator may see of a token slot: its state, when its token stops being sent, and
//! how the last token request went. Never the token, a secret or an assertion: only times,
//! durations, the OAuth error code and description the server sent, and the error's message
//! (which names the client and endpoint, never a secret).

use std::time::{Duration, SystemTime};

use super::TokenError;

/// A token slot's state, for the status page (`TokenState::of` is the rule).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenState {
    /// A usable token is cached and nothing is under way.
    Valid,
    /// A token request is under way (a first fetch, or a renewal ahead of expiry).
    Renewing,
    /// The last token request failed and none is under way (a cached token may still be
    /// served until its usable end).
    Failing,
    /// No usable token and no failure since the last success: never fetched, or expired
    /// unused.
    Cold,
}

impl TokenState {
    /// The rule: a fetch under way wins, then a failed last fetch, then a usable token.
    pub fn of(usable: bool, inflight: bool, last_failed: bool) -> TokenState {
        match (inflight, last_failed, usable) {
            (true, _, _) => TokenState::Renewing,
            (false, true, _) => TokenState::Failing,
            (false, false, true) => TokenState::Valid,
            (false, false, false) => TokenState::Cold,
        }
    }

    /// How bad it is, for picking the worst of several (per-subject routes).
    pub fn severity(self) -> u8 {
        match self {
            TokenState::Valid => 0,
            TokenState::Cold => 1,
            TokenState::Renewing => 2,
            TokenState::Failing => 3,
        }
    }
}

/// The last token request's result.
#[derive(Debug, Clone)]
pub struct FetchRecord {
    /// When it finished (wall clock).
    pub at: SystemTime,
    /// How long it took, retries included.
    pub latency: Duration,
    /// Whether a token came back.
    pub ok: bool,
}

/// The last failed token request, kept after later successes so an operator sees what broke.
#[derive(Debug, Clone)]
pub struct FailureRecord {
    /// When it finished (wall clock).
    pub at: SystemTime,
    /// The failure's short name (`oauth_error`, `timeout`, `unreachable`...).
    pub kind: &'static str,
    /// The OAuth `error` code, when the server sent one.
    pub oauth_error: Option<String>,
    /// Its `error_description`, cleaned and shortened by the token client.
    pub description: Option<String>,
    /// The error's message (names the client and endpoint, never a secret).
    pub message: String,
}

impl FailureRecord {
    pub(super) fn of(err: &TokenError, at: SystemTime) -> FailureRecord {
        let description = match err.what() {
            super::TokenErrorKind::OAuth { description, .. } => description.clone(),
            _ => None,
        };
        FailureRecord {
            at,
            kind: err.kind(),
            oauth_error: err.oauth_error().map(str::to_owned),
            description,
            message: err.to_string(),
        }
    }
}

/// A slot as the status page shows it.
#[derive(Debug, Clone)]
pub struct SlotView {
    /// Its state.
    pub state: TokenState,
    /// How long the cached token may still be sent, when one is usable.
    pub expires_in: Option<Duration>,
    /// The last token request, if any.
    pub last_fetch: Option<FetchRecord>,
    /// The last failure, if any.
    pub last_error: Option<FailureRecord>,
}

#[cfg(test)]
mod tests {
    use super::TokenState::{self, *};

    #[test]
    fn state_rule() {
        // (usable, inflight, last_failed) → state
        let cases = [
            ((true, false, false), Valid),
            ((true, true, false), Renewing),
            ((false, true, false), Renewing),
            ((false, true, true), Renewing),
            ((true, false, true), Failing),
            ((false, false, true), Failing),
            ((false, false, false), Cold),
        ];
        for ((usable, inflight, failed), want) in cases {
            assert_eq!(
                TokenState::of(usable, inflight, failed),
                want,
                "{usable} {inflight} {failed}"
            );
        }
    }
}
