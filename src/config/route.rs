//! `[[route]]`: which destination gets which token, and which grant obtains it.

use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use super::client::ClientConfig;
use super::RawSource;
use crate::route::HostPattern;
use crate::secret::SecretSource;

/// One `[[route]]`, validated.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// A name for messages: `name` if given, else `host[:port][path_prefix]`.
    pub name: String,
    /// Exact host or `*.suffix`.
    pub host: HostPattern,
    /// Only this port, or any.
    pub port: Option<u16>,
    /// Only paths under this prefix (segment-aware), or all.
    pub path_prefix: Option<String>,
    /// Name of the client in `[clients]`.
    pub client: String,
    /// How the token is obtained.
    pub grant: Grant,
    /// Scopes requested, sorted and deduplicated.
    pub scopes: Vec<String>,
    /// `audience` token request parameter.
    pub audience: Option<String>,
    /// RFC 8707 `resource` parameter.
    pub resource: Option<String>,
    /// Send `http://` requests upstream as `https://`.
    pub upgrade_tls: bool,
    /// Allow sending the token over plain http.
    pub allow_plaintext: bool,
    /// Fetch the token at start (and count it for `/readyz`).
    pub prefetch: bool,
    /// Use DPoP (also on when the client says `dpop = true`).
    pub dpop: bool,
    /// On a DPoP route, refuse a token the server issued as `Bearer` (default) instead of
    /// sending it as a bearer token.
    pub dpop_required: bool,
    /// Present the client's certificate on upstream connections (certificate-bound tokens).
    pub mtls_bound: bool,
}

/// The grant a route's token comes from.
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
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
#[derive(Debug, Clone, PartialEq)]
pub enum SubjectSource {
    /// The caller's own `Authorization: Bearer` token (on-behalf-of).
    Inbound,
    /// A workload token in a file (re-read when it changes) or an environment variable.
    Workload(SecretSource),
}

/// JWT-bearer grant parameters.
#[derive(Debug, Clone, PartialEq)]
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
            _ => false,
        }
    }
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum GrantName {
    ClientCredentials,
    TokenExchange,
    RefreshToken,
    JwtBearer,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
enum ScopeIn {
    #[default]
    Param,
    Claim,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    name: Option<String>,
    host: String,
    port: Option<u16>,
    path_prefix: Option<String>,
    client: String,
    grant: Option<GrantName>,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    upgrade_tls: bool,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    prefetch: bool,
    #[serde(default)]
    dpop: bool,
    dpop_required: Option<bool>,
    #[serde(default)]
    mtls_bound: bool,
    subject_token: Option<RawSubject>,
    subject_token_type: Option<String>,
    actor_token: Option<RawSource>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
    refresh_token: Option<RawSource>,
    assertion_issuer: Option<String>,
    assertion_subject: Option<String>,
    assertion_audience: Option<String>,
    assertion_scope: Option<ScopeIn>,
}

impl RawRoute {
    /// The client the route names.
    pub(super) fn client_name(&self) -> &str {
        &self.client
    }
}

/// `"inbound"`, or a file (`"path"`, `{ file = ... }`) or `{ env = ... }`.
enum RawSubject {
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
fn token_type(at: &str, key: &str, raw: &str, problems: &mut Vec<String>) -> String {
    const PREFIX: &str = "urn:ietf:params:oauth:token-type:";
    match raw {
        "access_token" | "refresh_token" | "id_token" | "saml1" | "saml2" | "jwt" => {
            format!("{PREFIX}{raw}")
        }
        urn if urn.starts_with("urn:") => urn.to_string(),
        other => {
            problems.push(format!(
                "{at}: {key} {other:?} is not a token type: use access_token, jwt, id_token, refresh_token, saml1, saml2 or a full URN"
            ));
            other.to_string()
        }
    }
}

pub(super) fn validate(
    index: usize,
    r: RawRoute,
    base: &Path,
    client: Option<&ClientConfig>,
    known_clients: &[&str],
    problems: &mut Vec<String>,
    warnings: &mut Vec<String>,
) -> Option<RouteSpec> {
    let label = r.name.clone().unwrap_or_else(|| {
        format!(
            "{}{}{}",
            r.host,
            r.port.map(|p| format!(":{p}")).unwrap_or_default(),
            r.path_prefix.as_deref().unwrap_or("")
        )
    });
    let at = format!("route #{} ({label})", index + 1);
    let host = HostPattern::parse(&r.host)
        .map_err(|why| problems.push(format!("{at}: host: {why}")))
        .ok();
    if let Some(prefix) = &r.path_prefix {
        if !prefix.starts_with('/') {
            problems.push(format!(
                "{at}: path_prefix must start with '/', got {prefix:?}"
            ));
        }
    }
    if r.port == Some(0) {
        problems.push(format!("{at}: port 0 is not a port"));
    }
    if client.is_none() {
        problems.push(format!(
            "{at}: client {:?} is not defined in [clients] (defined: {})",
            r.client,
            if known_clients.is_empty() {
                "none".to_string()
            } else {
                known_clients.join(", ")
            }
        ));
    }
    if r.upgrade_tls && r.allow_plaintext {
        problems.push(format!(
            "{at}: upgrade_tls and allow_plaintext contradict each other; choose one"
        ));
    }
    if r.allow_plaintext {
        warnings.push(format!(
            "{at}: allow_plaintext = true sends its token over plain http when a caller uses http://"
        ));
    }
    if let Some(resource) = &r.resource {
        match reqwest::Url::parse(resource) {
            Ok(u) if u.fragment().is_none() => {}
            _ => problems.push(format!(
                "{at}: resource must be an absolute URI without a fragment (RFC 8707), got {resource:?}"
            )),
        }
    }
    let mut scopes = r.scopes;
    scopes.sort();
    scopes.dedup();
    if let Some(bad) = scopes.iter().find(|s| {
        s.is_empty()
            || s.chars()
                .any(|c| c == ' ' || c == '"' || c == '\\' || c.is_control())
    }) {
        problems.push(format!(
            "{at}: scope {bad:?} is not a valid scope token (RFC 6749 §3.3); give scopes as a list"
        ));
    }

    let grant_name = r.grant.unwrap_or(GrantName::ClientCredentials);
    let mut misplaced = |present: bool, key: &str, belongs: &str| {
        if present {
            problems.push(format!("{at}: {key} only applies to grant = \"{belongs}\""));
        }
    };
    if grant_name != GrantName::TokenExchange {
        misplaced(r.subject_token.is_some(), "subject_token", "token_exchange");
        misplaced(
            r.subject_token_type.is_some(),
            "subject_token_type",
            "token_exchange",
        );
        misplaced(r.actor_token.is_some(), "actor_token", "token_exchange");
        misplaced(
            r.actor_token_type.is_some(),
            "actor_token_type",
            "token_exchange",
        );
        misplaced(
            r.requested_token_type.is_some(),
            "requested_token_type",
            "token_exchange",
        );
    }
    if grant_name != GrantName::RefreshToken {
        misplaced(r.refresh_token.is_some(), "refresh_token", "refresh_token");
    }
    if grant_name != GrantName::JwtBearer {
        misplaced(
            r.assertion_issuer.is_some(),
            "assertion_issuer",
            "jwt_bearer",
        );
        misplaced(
            r.assertion_subject.is_some(),
            "assertion_subject",
            "jwt_bearer",
        );
        misplaced(
            r.assertion_audience.is_some(),
            "assertion_audience",
            "jwt_bearer",
        );
        misplaced(r.assertion_scope.is_some(), "assertion_scope", "jwt_bearer");
    }
    if r.prefetch && matches!(r.subject_token, Some(RawSubject::Inbound)) {
        problems.push(format!(
            "{at}: prefetch cannot work with subject_token = \"inbound\": there is no caller token before a request"
        ));
    }
    if r.mtls_bound && client.is_some_and(|c| c.client_cert.is_none()) {
        problems.push(format!(
            "{at}: mtls_bound = true needs clients.{} to have client_cert and client_key",
            r.client
        ));
    }
    let grant = match grant_name {
        GrantName::ClientCredentials => Grant::ClientCredentials,
        GrantName::TokenExchange => {
            let subject = match r.subject_token {
                Some(RawSubject::Inbound) => SubjectSource::Inbound,
                Some(RawSubject::Secret(s)) => SubjectSource::Workload(s.into_source(base)),
                None => {
                    problems.push(format!(
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
                &at,
                "subject_token_type",
                r.subject_token_type.as_deref().unwrap_or(default_type),
                problems,
            );
            let actor = match (r.actor_token, r.actor_token_type) {
                (Some(token), kind) => Some((
                    token.into_source(base),
                    token_type(
                        &at,
                        "actor_token_type",
                        kind.as_deref().unwrap_or("jwt"),
                        problems,
                    ),
                )),
                (None, Some(_)) => {
                    problems.push(format!("{at}: actor_token_type without actor_token"));
                    None
                }
                (None, None) => None,
            };
            let requested_token_type = r
                .requested_token_type
                .map(|t| token_type(&at, "requested_token_type", &t, problems));
            Grant::TokenExchange(TokenExchange {
                subject,
                subject_token_type,
                actor,
                requested_token_type,
            })
        }
        GrantName::RefreshToken => match r.refresh_token {
            Some(source) => Grant::RefreshToken {
                file: source.into_path(
                    base,
                    &format!("{at}: refresh_token"),
                    "rotated refresh tokens are written back to the file",
                    problems,
                )?,
            },
            None => {
                problems.push(format!(
                    "{at}: grant = \"refresh_token\" needs refresh_token = {{ file = \"path\" }}"
                ));
                return None;
            }
        },
        GrantName::JwtBearer => {
            if client.is_some_and(|c| c.private_key.is_none()) {
                problems.push(format!(
                    "{at}: grant = \"jwt_bearer\" signs with the client's private_key; clients.{} has none",
                    r.client
                ));
            }
            Grant::JwtBearer(JwtBearer {
                issuer: r.assertion_issuer,
                subject: r.assertion_subject,
                audience: r.assertion_audience,
                scope_in_claim: r.assertion_scope == Some(ScopeIn::Claim),
            })
        }
    };
    Some(RouteSpec {
        name: label,
        host: host?,
        port: r.port,
        path_prefix: r.path_prefix.map(|p| {
            if p.len() > 1 {
                p.trim_end_matches('/').to_string()
            } else {
                p
            }
        }),
        client: r.client,
        grant,
        scopes,
        audience: r.audience,
        resource: r.resource,
        upgrade_tls: r.upgrade_tls,
        allow_plaintext: r.allow_plaintext,
        prefetch: r.prefetch,
        dpop: r.dpop || client.is_some_and(|c| c.dpop),
        dpop_required: r.dpop_required.unwrap_or(true),
        mtls_bound: r.mtls_bound,
    })
}
