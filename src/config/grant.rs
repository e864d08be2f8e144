//! The grant of a `[[route]]`: which OAuth flow obtains its token, and the keys each flow
//! takes (refused on routes of another grant).

use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::client::ClientConfig;
use super::source::RawSource;
use super::Findings;
use crate::secret::SecretSource;

/// The grant a route's token comes from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Grant {
    /// RFC 6749 §4.4.
    ClientCredentials,
    /// RFC 8693 token exchange.
    TokenExchange(TokenExchange),
    /// RFC 6749 §6 with a stored refresh token, rotated in place.
    RefreshToken {
        /// The file holding the current refresh token.
        file: PathBuf,
    },
    /// RFC 7523 §2.1: a JWT signed with the client's key is the grant.
    JwtBearer(JwtBearer),
}

impl Grant {
    /// The `grant` config name.
    pub fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::TokenExchange(_) => "token_exchange",
            Grant::RefreshToken { .. } => "refresh_token",
            Grant::JwtBearer(_) => "jwt_bearer",
        }
    }

    /// Whether the grant exchanges each caller's own token (`subject_token = "inbound"`).
    pub fn exchanges_callers_token(&self) -> bool {
        matches!(self, Grant::TokenExchange(e) if e.subject == SubjectSource::Inbound)
    }
}

/// Token exchange parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TokenExchange {
    /// Whose token is exchanged.
    pub subject: SubjectSource,
    /// `subject_token_type` (a URN).
    pub subject_token_type: String,
    /// `actor_token` and `actor_token_type`.
    pub actor: Option<(SecretSource, String)>,
    /// `requested_token_type` (a URN).
    pub requested_token_type: Option<String>,
}

/// The subject token of a token exchange.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SubjectSource {
    /// The caller's own `Authorization: Bearer` token (on-behalf-of).
    Inbound,
    /// A workload token in a file (re-read when it changes) or an environment variable.
    Workload(SecretSource),
}

/// JWT-bearer grant parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JwtBearer {
    /// `iss` (default: the client_id).
    pub issuer: Option<String>,
    /// `sub` (default: none).
    pub subject: Option<String>,
    /// `aud` (default: the token endpoint).
    pub audience: Option<String>,
    /// Put the scopes in a `scope` claim (Google style) instead of the `scope` parameter.
    pub scope_in_claim: bool,
}

impl PartialEq for SecretSource {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (SecretSource::Env(a), SecretSource::Env(b)) => a == b,
            (SecretSource::File(a), SecretSource::File(b)) => a == b,
            (SecretSource::Exec(a), SecretSource::Exec(b)) => {
                a.argv == b.argv && a.cache == b.cache
            }
            _ => false,
        }
    }
}

impl Eq for SecretSource {}

/// Consistent with `eq`: the source's name or path (never its content).
impl std::hash::Hash for SecretSource {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        match self {
            SecretSource::Env(name) => name.hash(state),
            SecretSource::File(path) => path.hash(state),
            SecretSource::Exec(exec) => (&exec.argv, exec.cache).hash(state),
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(super) enum GrantName {
    ClientCredentials,
    TokenExchange,
    RefreshToken,
    JwtBearer,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(super) enum ScopeIn {
    #[default]
    Param,
    Claim,
}

/// `"inbound"`, or a file (`"path"`, `{ file = ... }`) or `{ env = ... }`.
pub(super) enum RawSubject {
    Inbound,
    Secret(RawSource),
}

impl<'de> Deserialize<'de> for RawSubject {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SubjectVisitor;
        impl<'de> Visitor<'de> for SubjectVisitor {
            type Value = RawSubject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"inbound\", a path, { file = \"path\" } or { env = \"NAME\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSubject, E> {
                if v == "inbound" {
                    Ok(RawSubject::Inbound)
                } else {
                    RawSource::deserialize(de::value::StrDeserializer::new(v))
                        .map(RawSubject::Secret)
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<RawSubject, A::Error> {
                RawSource::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(RawSubject::Secret)
            }
        }
        deserializer.deserialize_any(SubjectVisitor)
    }
}

/// RFC 8693 §3 token type identifiers, by short name or URN.
fn token_type(at: &str, key: &str, raw: &str, found: &mut Findings) -> String {
    const PREFIX: &str = "urn:ietf:params:oauth:token-type:";
    match raw {
        "access_token" | "refresh_token" | "id_token" | "saml1" | "saml2" | "jwt" => {
            format!("{PREFIX}{raw}")
        }
        urn if urn.starts_with("urn:") => urn.to_string(),
        other => {
            found.problem(format!(
                "{at}: {key} {other:?} is not a token type: use access_token, jwt, id_token, refresh_token, saml1, saml2 or a full URN"
            ));
            other.to_string()
        }
    }
}

/// The grant keys of a `[[route]]`, as written (taken out of the route's raw table).
pub(super) struct RawGrant {
    pub(super) name: GrantName,
    pub(super) subject_token: Option<RawSubject>,
    pub(super) subject_token_type: Option<String>,
    pub(super) actor_token: Option<RawSource>,
    pub(super) actor_token_type: Option<String>,
    pub(super) requested_token_type: Option<String>,
    pub(super) refresh_token: Option<RawSource>,
    pub(super) assertion_issuer: Option<String>,
    pub(super) assertion_subject: Option<String>,
    pub(super) assertion_audience: Option<String>,
    pub(super) assertion_scope: Option<ScopeIn>,
}

impl RawGrant {
    /// Whether the subject token is the caller's own (`subject_token = "inbound"`).
    /// Whether any key of a grant other than the default is set.
    pub(super) fn has_keys(&self) -> bool {
        self.subject_token.is_some()
            || self.subject_token_type.is_some()
            || self.actor_token.is_some()
            || self.actor_token_type.is_some()
            || self.requested_token_type.is_some()
            || self.refresh_token.is_some()
            || self.assertion_issuer.is_some()
            || self.assertion_subject.is_some()
            || self.assertion_audience.is_some()
            || self.assertion_scope.is_some()
    }

    pub(super) fn is_inbound(&self) -> bool {
        matches!(self.subject_token, Some(RawSubject::Inbound))
    }

    /// Keys of another grant than this route's are refused, naming the grant they belong to.
    pub(super) fn check_misplaced(&self, at: &str, found: &mut Findings) {
        let mut misplaced = |present: bool, key: &str, belongs: &str| {
            if present {
                found.problem(format!("{at}: {key} only applies to grant = \"{belongs}\""));
            }
        };
        if self.name != GrantName::TokenExchange {
            let belongs = "token_exchange";
            misplaced(self.subject_token.is_some(), "subject_token", belongs);
            misplaced(
                self.subject_token_type.is_some(),
                "subject_token_type",
                belongs,
            );
            misplaced(self.actor_token.is_some(), "actor_token", belongs);
            misplaced(self.actor_token_type.is_some(), "actor_token_type", belongs);
            misplaced(
                self.requested_token_type.is_some(),
                "requested_token_type",
                belongs,
            );
        }
        if self.name != GrantName::RefreshToken {
            misplaced(
                self.refresh_token.is_some(),
                "refresh_token",
                "refresh_token",
            );
        }
        if self.name != GrantName::JwtBearer {
            let belongs = "jwt_bearer";
            misplaced(self.assertion_issuer.is_some(), "assertion_issuer", belongs);
            misplaced(
                self.assertion_subject.is_some(),
                "assertion_subject",
                belongs,
            );
            misplaced(
                self.assertion_audience.is_some(),
                "assertion_audience",
                belongs,
            );
            misplaced(self.assertion_scope.is_some(), "assertion_scope", belongs);
        }
    }

    /// The grant, its keys checked; `None` when the route cannot work without what is
    /// missing (a refresh token file).
    pub(super) fn validate(
        self,
        at: &str,
        base: &Path,
        client: Option<&ClientConfig>,
        client_name: &str,
        found: &mut Findings,
    ) -> Option<Grant> {
        Some(match self.name {
            GrantName::ClientCredentials => Grant::ClientCredentials,
            GrantName::TokenExchange => Grant::TokenExchange(self.token_exchange(at, base, found)),
            GrantName::RefreshToken => self.refresh_token(at, base, found)?,
            GrantName::JwtBearer => {
                if client.is_some_and(|c| c.private_key.is_none()) {
                    found.problem(format!(
                        "{at}: grant = \"jwt_bearer\" signs with the client's private_key; clients.{client_name} has none"
                    ));
                }
                Grant::JwtBearer(JwtBearer {
                    issuer: self.assertion_issuer,
                    subject: self.assertion_subject,
                    audience: self.assertion_audience,
                    scope_in_claim: self.assertion_scope == Some(ScopeIn::Claim),
                })
            }
        })
    }

    fn token_exchange(self, at: &str, base: &Path, found: &mut Findings) -> TokenExchange {
        let subject = match self.subject_token {
            Some(RawSubject::Inbound) => SubjectSource::Inbound,
            Some(RawSubject::Secret(s)) => SubjectSource::Workload(s.into_source(base)),
            None => {
                found.problem(format!(
                    "{at}: grant = \"token_exchange\" needs subject_token = \"inbound\" or a {{ file }} / {{ env }}"
                ));
                SubjectSource::Inbound
            }
        };
        let default_type = match subject {
            SubjectSource::Inbound => "access_token",
            SubjectSource::Workload(_) => "jwt",
        };
        let subject_token_type = token_type(
            at,
            "subject_token_type",
            self.subject_token_type.as_deref().unwrap_or(default_type),
            found,
        );
        let actor = match (self.actor_token, self.actor_token_type) {
            (Some(token), kind) => Some((
                token.into_source(base),
                token_type(
                    at,
                    "actor_token_type",
                    kind.as_deref().unwrap_or("jwt"),
                    found,
                ),
            )),
            (None, Some(_)) => {
                found.problem(format!("{at}: actor_token_type without actor_token"));
                None
            }
            (None, None) => None,
        };
        let requested_token_type = self
            .requested_token_type
            .map(|t| token_type(at, "requested_token_type", &t, found));
        TokenExchange {
            subject,
            subject_token_type,
            actor,
            requested_token_type,
        }
    }

    fn refresh_token(self, at: &str, base: &Path, found: &mut Findings) -> Option<Grant> {
        let Some(source) = self.refresh_token else {
            found.problem(format!(
                "{at}: grant = \"refresh_token\" needs refresh_token = {{ file = \"path\" }}"
            ));
            return None;
        };
        let file = source.into_path(
            base,
            &format!("{at}: refresh_token"),
            "rotated refresh tokens are written back to the file",
            found,
        )?;
        Some(Grant::RefreshToken { file })
    }
}
