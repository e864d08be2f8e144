//! Refresh tokens of the development authorization server: opaque random
//! strings, rotated on use, with reuse detection that revokes the whole family
//! (OAuth 2.1 §4.3.1, RFC 9700 §4.14.2).

use std::collections::HashMap;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Live,
    Used,
    Revoked,
}

struct Record {
    client_id: String,
    scope: Option<String>,
    family: u64,
    state: State,
}

/// Every refresh token the server issued, by value.
#[derive(Default)]
pub(super) struct RefreshStore {
    tokens: HashMap<String, Record>,
    next_family: u64,
}

fn random_token() -> String {
    URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

impl RefreshStore {
    /// Issues the first token of a new family.
    pub(super) fn issue(&mut self, client_id: &str, scope: Option<String>) -> String {
        self.next_family += 1;
        let family = self.next_family;
        self.insert(client_id, scope, family)
    }

    fn insert(&mut self, client_id: &str, scope: Option<String>, family: u64) -> String {
        let token = random_token();
        let record = Record {
            client_id: client_id.to_string(),
            scope,
            family,
            state: State::Live,
        };
        self.tokens.insert(token.clone(), record);
        token
    }

    /// Checks that `token` is live and belongs to `client_id`, returning the scope
    /// it was issued with. Presenting a dead (used) token revokes its whole family.
    pub(super) fn check(
        &mut self,
        token: &str,
        client_id: &str,
    ) -> Result<Option<String>, &'static str> {
        let Some(record) = self.tokens.get(token) else {
            return Err("refresh token unknown");
        };
        if record.client_id != client_id {
            return Err("refresh token was issued to another client");
        }
        match record.state {
            State::Live => Ok(record.scope.clone()),
            State::Revoked => Err("refresh token revoked"),
            State::Used => {
                let family = record.family;
                for record in self.tokens.values_mut() {
                    if record.family == family {
                        record.state = State::Revoked;
                    }
                }
                Err("refresh token reused: the whole token family is revoked")
            }
        }
    }

    /// Kills `token` (after a successful [`RefreshStore::check`]) and returns its
    /// successor in the same family.
    pub(super) fn rotate(&mut self, token: &str) -> Option<String> {
        let record = self.tokens.get_mut(token)?;
        record.state = State::Used;
        let (client_id, scope, family) = (
            record.client_id.clone(),
            record.scope.clone(),
            record.family,
        );
        Some(self.insert(&client_id, scope, family))
    }
}
