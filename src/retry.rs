//! The retry rules of a routed request, as data: [`classify`] says what a response asks for,
//! a [`Budget`] admits each kind of resend at most once per request, and [`newer_token`]
//! decides whether a refused token has a successor worth resending with.
//!
//! ```text
//! response ──classify──► No ───────────────────────────────► return it
//!    │                   Nonce (DPoP use_dpop_nonce) ─budget─► same token, new proof
//!    │                   Token (401, token refused) ──budget─► newer_token? ─► resend
//! ```
//!
//! The budget counts kinds separately: a request sees at most one nonce resend and one
//! fresh-token resend, in either order, so at most three attempts. A second nonce challenge
//! after a nonce resend is returned to the caller: the server refused the nonce it just
//! issued, which a new token would not fix, and treating it as a refused token would throw a
//! good token away (and cost a token request) for nothing.

use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{HeaderMap, StatusCode};

use crate::token::{AccessToken, TokenError, TokenScheme, TokenSlot};

/// What a response asks of the forwarder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Nothing: return it.
    No,
    /// A DPoP nonce challenge: resend with a proof carrying the nonce, same token.
    Nonce,
    /// The token was refused: resend with a newer one (see `TokenSlot::invalidate`).
    Token,
}

/// Classifies a response to a request carrying a token of `scheme`. A 401 means the token was
/// refused unless its challenge for that scheme names an RFC 6750 §3.1 error other than
/// `invalid_token` (`invalid_request`, `insufficient_scope`, ...): then a new token would not
/// help, and none is fetched.
pub fn classify(status: StatusCode, headers: &HeaderMap, scheme: TokenScheme) -> Retry {
    if status != StatusCode::UNAUTHORIZED {
        return Retry::No;
    }
    let errors: Vec<String> = headers
        .get_all(header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(challenges)
        .filter(|(name, _)| name.eq_ignore_ascii_case(scheme.name()))
        .filter_map(|(_, error)| error)
        .collect();
    // RFC 9449 §9: the DPoP challenge's own `error`, wherever it stands among the challenges
    // (not a substring of some description).
    if scheme == TokenScheme::Dpop && errors.iter().any(|e| e == "use_dpop_nonce") {
        Retry::Nonce
    } else if errors.is_empty() || errors.iter().any(|e| e == "invalid_token") {
        Retry::Token
    } else {
        Retry::No
    }
}

/// The challenges of one `WWW-Authenticate` value (RFC 9110 §11.6.1): each scheme name and
/// its `error` parameter, if any. Lenient: a value it cannot follow yields what it read so far.
fn challenges(value: &str) -> Vec<(&str, Option<String>)> {
    let mut out: Vec<(&str, Option<String>)> = Vec::new();
    let mut rest = value;
    loop {
        rest = rest.trim_start_matches([' ', '\t', ',']);
        if rest.is_empty() {
            return out;
        }
        // A token: a scheme name, or a parameter name when followed by `=`.
        let end = rest.find([' ', '\t', ',', '=']).unwrap_or(rest.len());
        let (word, after) = rest.split_at(end);
        let after_ws = after.trim_start_matches([' ', '\t']);
        let is_param = after_ws.starts_with('=') && !after_ws.starts_with("==");
        if !is_param || out.is_empty() {
            if word.is_empty() {
                return out;
            }
            out.push((word, None));
            rest = after;
            // token68 (e.g. `Basic abc==`): skip to the next comma.
            let t = rest.trim_start_matches([' ', '\t']);
            if !t.is_empty() && !t.starts_with(',') && !token_then_equals(t) {
                rest = t.find(',').map_or("", |i| &t[i..]);
            }
            continue;
        }
        let value_text = after_ws[1..].trim_start_matches([' ', '\t']);
        let (param, next) = if let Some(quoted) = value_text.strip_prefix('"') {
            let mut text = String::new();
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            text.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => text.push(c),
                }
            }
            (text, &quoted[end.min(quoted.len())..])
        } else {
            let end = value_text
                .find([',', ' ', '\t'])
                .unwrap_or(value_text.len());
            (value_text[..end].to_string(), &value_text[end..])
        };
        if word.eq_ignore_ascii_case("error") {
            if let Some(last) = out.last_mut() {
                last.1.get_or_insert(param);
            }
        }
        rest = next;
    }
}

/// Whether `s` starts with `token =` (an auth-param rather than a token68).
fn token_then_equals(s: &str) -> bool {
    let end = s.find([' ', '\t', ',', '=']).unwrap_or(s.len());
    end > 0 && {
        let after = s[end..].trim_start_matches([' ', '\t']);
        after.starts_with('=') && !after.starts_with("==")
    }
}

/// The resends one request has made: each kind at most once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Budget {
    /// A DPoP nonce resend was made.
    pub nonce: bool,
    /// A fresh-token resend was made.
    pub token: bool,
}

impl Budget {
    /// What the forwarder may do about `wanted`: itself when that kind is still unspent,
    /// else [`Retry::No`]. A kind never turns into the other.
    pub fn admit(&self, wanted: Retry) -> Retry {
        match wanted {
            Retry::Nonce if !self.nonce => Retry::Nonce,
            Retry::Token if !self.token => Retry::Token,
            _ => Retry::No,
        }
    }

    /// Records a resend of `kind`.
    pub fn spend(&mut self, kind: Retry) {
        match kind {
            Retry::Nonce => self.nonce = true,
            Retry::Token => self.token = true,
            Retry::No => {}
        }
    }
}

/// The 401 cooldown step: forgets `refused` (at most once per `cooldown` per slot, see
/// [`TokenSlot::invalidate`]) and returns the slot's token if it is a different one, fetched
/// now or cached already. `None`: this token was refused again within the cooldown, so
/// resending would send it again.
pub async fn newer_token(
    slot: &Arc<TokenSlot>,
    refused: &Arc<AccessToken>,
    cooldown: Duration,
) -> Result<Option<Arc<AccessToken>>, Arc<TokenError>> {
    slot.invalidate(refused, cooldown);
    let (current, _) = slot.get().await?;
    Ok((!Arc::ptr_eq(&current, refused)).then_some(current))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn which_401s_are_worth_a_new_token() {
        use Retry::{No, Nonce, Token};
        use TokenScheme::{Bearer, Dpop};
        let cases: &[(u16, &[&str], TokenScheme, Retry)] = &[
            (200, &[], Bearer, No),
            (403, &[r#"Bearer error="invalid_token""#], Bearer, No),
            (401, &[], Bearer, Token),
            (401, &["Bearer"], Bearer, Token),
            // A nonce challenge is the DPoP challenge's `error`, wherever it stands.
            (401, &[r#"DPoP error="use_dpop_nonce""#], Dpop, Nonce),
            (
                401,
                &[r#"Bearer realm="api", DPoP error="use_dpop_nonce""#],
                Dpop,
                Nonce,
            ),
            (
                401,
                &[r#"DPoP error="invalid_token", error_description="not use_dpop_nonce""#],
                Dpop,
                Token,
            ),
            (401, &[r#"Bearer realm="api""#], Bearer, Token),
            (401, &[r#"Bearer error="invalid_token""#], Bearer, Token),
            (
                401,
                &[r#"Bearer realm="api", error="invalid_token", error_description="expired""#],
                Bearer,
                Token,
            ),
            (401, &["bearer error=invalid_token"], Bearer, Token),
            (
                401,
                &[r#"Bearer error="insufficient_scope", scope="a b""#],
                Bearer,
                No,
            ),
            (401, &[r#"Bearer error="invalid_request""#], Bearer, No),
            (401, &["Bearer\terror=\"invalid_request\""], Bearer, No),
            (
                401,
                &[r#"Bearer error="a", error="invalid_token""#],
                Bearer,
                No,
            ),
            (
                401,
                &[r#"Bearer error_description="x, y", error="invalid_request""#],
                Bearer,
                No,
            ),
            // Another scheme's error is about another credential.
            (
                401,
                &[r#"Basic realm="x", Bearer error="insufficient_scope""#],
                Bearer,
                No,
            ),
            (
                401,
                &[r#"Basic abc==, Bearer error="invalid_token""#],
                Bearer,
                Token,
            ),
            (401, &[r#"DPoP error="invalid_request""#], Bearer, Token),
            (
                401,
                &["Basic realm=\"x\"", r#"Bearer error="invalid_token""#],
                Bearer,
                Token,
            ),
            (401, &[r#"DPoP error="use_dpop_nonce""#], Dpop, Nonce),
            (
                401,
                &[r#"DPoP error="invalid_token", algs="ES256""#],
                Dpop,
                Token,
            ),
            (401, &[r#"DPoP error="invalid_dpop_proof""#], Dpop, No),
            (
                401,
                &[r#"Bearer error="invalid_request", DPoP error="invalid_token""#],
                Dpop,
                Token,
            ),
            (
                401,
                &[r#"Bearer error="invalid_request", DPoP algs="ES256""#],
                Dpop,
                Token,
            ),
            (
                401,
                &[r#"DPoP error="a \"quoted\" value", error_description="ok""#],
                Dpop,
                No,
            ),
        ];
        // Whatever the header says, the parser ends and does not panic.
        for junk in [
            "",
            "=",
            "==",
            ",,,",
            "\"",
            "Bearer =",
            "Bearer error",
            "Bearer error=",
            "Bearer error=\"unterminated",
            "Bearer error=\"a\\",
            "= Bearer error=x",
            "Bearer a==, b=\"c\", error=,",
            "Bearer\terror=\"invalid_request\"",
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_str(junk).unwrap(),
            );
            let _ = classify(StatusCode::UNAUTHORIZED, &headers, Bearer);
        }
        for (status, challenges, scheme, want) in cases {
            let mut headers = http::HeaderMap::new();
            for c in *challenges {
                headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_str(c).unwrap());
            }
            let status = StatusCode::from_u16(*status).unwrap();
            assert_eq!(
                classify(status, &headers, *scheme),
                *want,
                "{status} {challenges:?} {scheme:?}"
            );
        }
    }

    #[test]
    fn each_kind_of_resend_is_admitted_once_and_never_turns_into_the_other() {
        use Retry::{No, Nonce, Token};
        // The responses a request meets in order, and what the forwarder does about each.
        let cases: &[(&[Retry], &[Retry])] = &[
            (&[No], &[No]),
            (&[Token, No], &[Token, No]),
            (&[Token, Token], &[Token, No]),
            (&[Nonce, No], &[Nonce, No]),
            (&[Nonce, Token, No], &[Nonce, Token, No]),
            (&[Nonce, Token, Token], &[Nonce, Token, No]),
            (&[Nonce, Token, Nonce], &[Nonce, Token, No]),
            (&[Token, Nonce, No], &[Token, Nonce, No]),
            (&[Token, Nonce, Token], &[Token, Nonce, No]),
            (&[Token, Nonce, Nonce], &[Token, Nonce, No]),
            // A second nonce challenge is the caller's answer, not a reason for a new token.
            (&[Nonce, Nonce], &[Nonce, No]),
        ];
        for (met, want) in cases {
            let mut budget = Budget::default();
            let mut done = Vec::new();
            for wanted in *met {
                let admitted = budget.admit(*wanted);
                done.push(admitted);
                if admitted == No {
                    break;
                }
                budget.spend(admitted);
            }
            assert_eq!(&done, want, "{met:?}");
            assert!(done.len() <= 3, "at most three attempts: {met:?}");
        }
    }
}
