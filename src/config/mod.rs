//! Configuration: figment (the TOML file, then `OAUTH_EGRESS_SECTION__KEY` environment
//! variables over it) → raw serde structs → [`validate`] → a typed [`Config`].
//!
//! Every problem found is reported, each naming the key or route it is about; unknown keys
//! are errors. Relative paths are relative to the config file's directory.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

use crate::secret::SecretSource;

mod client;
mod route;

pub use client::{is_loopback, AssertionAudience, ClientAuth, ClientConfig, Endpoint, SigningAlg};
pub use route::{Grant, JwtBearer, RouteSpec, SubjectSource, TokenExchange};

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or "embedded routes.toml"), for messages.
    pub origin: String,
    /// `[proxy]`.
    pub proxy: ProxySettings,
    /// `[admin]`; `None` when absent.
    pub admin: Option<AdminSettings>,
    /// `[tokens]`.
    pub tokens: TokenSettings,
    /// `[clients.NAME]`, by name.
    pub clients: BTreeMap<String, Arc<ClientConfig>>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteSpec>,
    /// Things that are allowed but deserve a second look (printed by `check` and at start).
    pub warnings: Vec<String>,
}

/// What to do with a CONNECT to a host that has no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unmatched {
    /// Splice the bytes untouched: no interception, no token.
    Tunnel,
    /// Answer 403.
    Deny,
}

/// `[proxy]`: the listener and how traffic is handled.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    /// Where the proxy listens.
    pub listen: SocketAddr,
    /// Policy for hosts without a route.
    pub unmatched: Unmatched,
    /// The interception CA certificate (PEM, a file or a variable).
    pub ca_cert: SecretSource,
    /// The interception CA key (PEM; a file is created with mode 0600 when both are absent).
    pub ca_key: SecretSource,
    /// Extra CA certificates (PEM files or variables) trusted for upstream TLS and token
    /// endpoints, besides webpki roots.
    pub upstream_roots: Vec<SecretSource>,
    /// Also trust the operating system's store (for corporate CAs installed there).
    pub system_roots: bool,
    /// Bytes of request body kept so the one 401 retry can replay it.
    pub retry_body_limit: usize,
    /// Upstream TCP connect timeout (also used for CONNECT tunnels).
    pub connect_timeout: Duration,
    /// How long an idle pooled upstream connection is kept.
    pub pool_idle_timeout: Duration,
    /// On SIGTERM/SIGINT, how long in-flight requests get to finish.
    pub shutdown_grace: Duration,
}

/// `[admin]`: health endpoints.
#[derive(Debug, Clone)]
pub struct AdminSettings {
    /// Where `/healthz` and `/readyz` are served.
    pub listen: SocketAddr,
}

/// `[tokens]`: how tokens are requested and kept.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// Bound on one token request (connect, send, read the answer).
    pub request_timeout: Duration,
    /// A token is used until `expires_in` minus this skew, capped at
    /// [`crate::token::MAX_SKEW_SHARE`] of its lifetime (see [`crate::token::schedule`]).
    pub expiry_skew: Duration,
    /// Lifetime assumed when the server sends no `expires_in`.
    pub default_expires_in: Duration,
    /// The largest fraction (0..=0.5) of a token's lifetime that its background renewal may
    /// start ahead of the usable end: the renewal starts `request_timeout` (plus jitter) ahead,
    /// never more than this (see [`crate::token::schedule`]).
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

/// A configuration that could not be loaded: every problem, one per line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file does not exist or cannot be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The path tried.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML or environment did not match the schema (syntax, types, unknown keys).
    #[error("{origin}: {message}")]
    Parse {
        /// The config origin.
        origin: String,
        /// figment's message, which names the key and where it came from.
        message: String,
    },
    /// The values parse but do not make a working proxy.
    #[error("{origin}: {} problem(s):\n  - {}", problems.len(), problems.join("\n  - "))]
    Invalid {
        /// The config origin.
        origin: String,
        /// One sentence per problem.
        problems: Vec<String>,
    },
}

// ---------------------------------------------------------------------------------------
// Raw, as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: RawProxy,
    admin: Option<RawAdmin>,
    #[serde(default)]
    tokens: RawTokens,
    #[serde(default)]
    clients: BTreeMap<String, client::RawClient>,
    #[serde(default)]
    route: Vec<route::RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    listen: SocketAddr,
    unmatched: Unmatched,
    ca_cert: RawSource,
    ca_key: RawSource,
    upstream_roots: Vec<RawSource>,
    system_roots: bool,
    retry_body_limit: u64,
    connect_timeout_ms: u64,
    pool_idle_timeout_secs: u64,
    shutdown_grace_secs: u64,
}

impl Default for RawProxy {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3128)),
            unmatched: Unmatched::Tunnel,
            ca_cert: RawSource::File("ca/ca.pem".into()),
            ca_key: RawSource::File("ca/ca.key".into()),
            upstream_roots: Vec::new(),
            system_roots: false,
            retry_body_limit: 1 << 20,
            connect_timeout_ms: 5_000,
            pool_idle_timeout_secs: 90,
            shutdown_grace_secs: 30,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: SocketAddr,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTokens {
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

/// `{ env = "NAME" }` or `{ file = "path" }`. Deserialized by hand so that a literal secret
/// written by mistake is refused without its value appearing in the error message.
pub(crate) enum RawSecret {
    Env(String),
    File(PathBuf),
}

impl RawSecret {
    fn into_source(self, base: &Path) -> SecretSource {
        match self {
            RawSecret::Env(name) => SecretSource::Env(name),
            RawSecret::File(path) => SecretSource::File(resolve(base, path)),
        }
    }
}

impl<'de> Deserialize<'de> for RawSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SecretVisitor;
        const LITERAL: &str =
            "a secret must be a table { env = \"NAME\" } or { file = \"path\" }; \
                               literal values are refused so secrets stay out of config files";
        impl<'de> Visitor<'de> for SecretVisitor {
            type Value = RawSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("{ env = \"NAME\" } or { file = \"path\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<RawSecret, E> {
                Err(E::custom(LITERAL))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSecret, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value = match key.as_str() {
                        "env" => RawSecret::Env(map.next_value()?),
                        "file" => RawSecret::File(map.next_value::<String>()?.into()),
                        other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                    };
                    if found.replace(value).is_some() {
                        return Err(de::Error::custom(
                            "a secret has exactly one of `env` or `file`",
                        ));
                    }
                }
                found.ok_or_else(|| de::Error::custom("a secret needs `env` or `file`"))
            }
        }
        deserializer.deserialize_any(SecretVisitor)
    }
}

/// A key that names a file: `"path"` or `{ file = "path" }`, and, where the key allows it,
/// `{ env = "NAME" }` (the variable holds the content, e.g. PEM from a Kubernetes Secret).
/// Deserialized by hand so that PEM text or a token written in place of a path is refused
/// without its value appearing in the error message.
#[derive(Debug)]
pub(crate) enum RawSource {
    /// A path, either form.
    File(PathBuf),
    /// An environment variable holding the content.
    Env(String),
}

impl RawSource {
    /// The source, relative paths resolved against `base`.
    pub(crate) fn into_source(self, base: &Path) -> SecretSource {
        match self {
            RawSource::Env(name) => SecretSource::Env(name),
            RawSource::File(path) => SecretSource::File(resolve(base, path)),
        }
    }

    /// The path, for keys that must be a file; `why` says why `{ env }` cannot do.
    pub(crate) fn into_path(
        self,
        base: &Path,
        at: &str,
        why: &str,
        problems: &mut Vec<String>,
    ) -> Option<PathBuf> {
        match self {
            RawSource::File(path) => Some(resolve(base, path)),
            RawSource::Env(name) => {
                problems.push(format!(
                    "{at} = {{ env = \"{name}\" }} cannot be used: {why}; give a path (\"path\" or {{ file = \"path\" }})"
                ));
                None
            }
        }
    }
}

/// Whether a string written where a path belongs is rather the content: PEM, or something
/// shaped like a token (a JWT, or 32+ random-looking token characters with no `/` or `.`).
fn looks_like_content(s: &str) -> bool {
    if s.contains('\n') || s.contains("-----BEGIN") {
        return true;
    }
    let token_chars = s
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '='));
    let jwt = s.split('.').count() == 3 && s.split('.').all(|p| p.len() >= 8);
    // Random-looking: hex, or digits with both cases (a file name is rarely either).
    let random = s.chars().all(|c| c.is_ascii_hexdigit())
        || (s.chars().any(|c| c.is_ascii_digit())
            && s.chars().any(|c| c.is_ascii_uppercase())
            && s.chars().any(|c| c.is_ascii_lowercase()));
    token_chars && s.len() >= 32 && (jwt || (!s.contains('.') && random))
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SourceVisitor;
        const CONTENT: &str = "this looks like a key, certificate or token, not a path: \
             content stays out of config files; put it in a file (\"path\" or { file = \"path\" }) \
             or an environment variable ({ env = \"NAME\" }); a file name of this shape can be \
             written as ./NAME";
        impl<'de> Visitor<'de> for SourceVisitor {
            type Value = RawSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a path: \"path\", { file = \"path\" } or { env = \"NAME\" }")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawSource, E> {
                if v.is_empty() {
                    return Err(E::custom("the path is empty"));
                }
                if looks_like_content(v) {
                    return Err(E::custom(CONTENT));
                }
                Ok(RawSource::File(v.into()))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSource, A::Error> {
                let mut found = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value = match key.as_str() {
                        "env" => RawSource::Env(map.next_value()?),
                        "file" => RawSource::File(map.next_value::<String>()?.into()),
                        other => return Err(de::Error::unknown_field(other, &["env", "file"])),
                    };
                    if found.replace(value).is_some() {
                        return Err(de::Error::custom("give exactly one of `env` or `file`"));
                    }
                }
                found.ok_or_else(|| de::Error::custom("give `file = \"path\"` or `env = \"NAME\"`"))
            }
        }
        deserializer.deserialize_any(SourceVisitor)
    }
}

// ---------------------------------------------------------------------------------------
// Loading.

/// Loads and validates the config file at `path`, with environment overrides.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    if let Err(source) = std::fs::metadata(path) {
        return Err(ConfigError::Read {
            path: path.to_owned(),
            source,
        });
    }
    let base = path.parent().unwrap_or(Path::new(".")).to_owned();
    let figment = Figment::from(Toml::file_exact(path));
    from_figment(figment, &base, path.display().to_string())
}

/// Loads and validates TOML text, with environment overrides; relative paths are relative
/// to `base`.
pub fn from_toml(text: &str, base: &Path, origin: &str) -> Result<Config, ConfigError> {
    from_figment(Figment::from(Toml::string(text)), base, origin.into())
}

/// Validates a figment; `OAUTH_EGRESS_SECTION__KEY` variables are merged over it.
pub fn from_figment(figment: Figment, base: &Path, origin: String) -> Result<Config, ConfigError> {
    let env = Env::prefixed("OAUTH_EGRESS_")
        .filter(|key| key.as_str().contains("__"))
        .split("__");
    let raw: RawConfig = figment
        .merge(env)
        .extract()
        .map_err(|err| ConfigError::Parse {
            origin: origin.clone(),
            message: err
                .into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("; "),
        })?;
    validate(raw, base, origin)
}

fn resolve(base: &Path, path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        path
    } else {
        base.join(path)
    }
}

fn validate(raw: RawConfig, base: &Path, origin: String) -> Result<Config, ConfigError> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();

    let p = raw.proxy;
    if p.connect_timeout_ms == 0 {
        problems.push("proxy.connect_timeout_ms must be greater than 0".into());
    }
    let proxy = ProxySettings {
        listen: p.listen,
        unmatched: p.unmatched,
        ca_cert: p.ca_cert.into_source(base),
        ca_key: p.ca_key.into_source(base),
        upstream_roots: p
            .upstream_roots
            .into_iter()
            .map(|r| r.into_source(base))
            .collect(),
        system_roots: p.system_roots,
        retry_body_limit: usize::try_from(p.retry_body_limit).unwrap_or(usize::MAX),
        connect_timeout: Duration::from_millis(p.connect_timeout_ms),
        pool_idle_timeout: Duration::from_secs(p.pool_idle_timeout_secs),
        shutdown_grace: Duration::from_secs(p.shutdown_grace_secs),
    };
    for root in &proxy.upstream_roots {
        if let Err(err) = root.load() {
            problems.push(format!("proxy.upstream_roots: {err}"));
        }
    }
    if let (Some(cert), Some(key)) = (proxy.ca_cert.path(), proxy.ca_key.path()) {
        if cert.exists() != key.exists() {
            problems.push(format!(
                "proxy.ca_cert ({}) and proxy.ca_key ({}) must both exist, or both be absent so \
                 a new CA is generated",
                cert.display(),
                key.display()
            ));
        }
    }

    let t = raw.tokens;
    if t.request_timeout_ms == 0 {
        problems.push("tokens.request_timeout_ms must be greater than 0".into());
    }
    if t.refresh_ahead_percent > 50 {
        problems.push("tokens.refresh_ahead_percent must be at most 50".into());
    }
    if t.default_expires_in_secs == 0 {
        problems.push("tokens.default_expires_in_secs must be greater than 0".into());
    }
    let tokens = TokenSettings {
        request_timeout: Duration::from_millis(t.request_timeout_ms),
        expiry_skew: Duration::from_secs(t.expiry_skew_secs),
        default_expires_in: Duration::from_secs(t.default_expires_in_secs),
        refresh_ahead: f64::from(t.refresh_ahead_percent) / 100.0,
        retry_max_elapsed: Duration::from_millis(t.retry_max_elapsed_ms),
        invalidate_cooldown: Duration::from_secs(t.invalidate_cooldown_secs),
    };

    let mut clients = BTreeMap::new();
    for (name, raw) in raw.clients {
        if let Some(client) =
            client::validate(name.clone(), raw, base, &mut problems, &mut warnings)
        {
            clients.insert(name, Arc::new(client));
        }
    }

    let known: Vec<&str> = clients.keys().map(String::as_str).collect();
    let mut routes: Vec<RouteSpec> = Vec::new();
    for (i, raw) in raw.route.into_iter().enumerate() {
        let client = clients.get(raw.client_name()).map(|c| c.as_ref());
        let Some(spec) =
            route::validate(i, raw, base, client, &known, &mut problems, &mut warnings)
        else {
            continue;
        };
        if let Some(other) = routes.iter().find(|o| {
            o.host == spec.host && o.port == spec.port && o.path_prefix == spec.path_prefix
        }) {
            problems.push(format!(
                "route #{} ({}) matches exactly the same requests as route {:?}; one would shadow the other",
                i + 1,
                spec.name,
                other.name
            ));
        }
        routes.push(spec);
    }

    if problems.is_empty() {
        Ok(Config {
            origin,
            proxy,
            admin: raw.admin.map(|a| AdminSettings { listen: a.listen }),
            tokens,
            clients,
            routes,
            warnings,
        })
    } else {
        Err(ConfigError::Invalid { origin, problems })
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;

    /// One key that names a file: the TOML it goes in (`{v}` is the value) and how to read
    /// the parsed source back (`file:PATH` or `env:NAME`).
    struct Key {
        name: &'static str,
        toml: &'static str,
        parsed: fn(&Config) -> String,
        /// Whether `{ env }` is refused, and the word the refusal must contain.
        env_refused: Option<&'static str>,
    }

    fn client(config: &Config) -> &ClientConfig {
        &config.clients["c"]
    }

    fn shown(source: &Option<SecretSource>) -> String {
        format!("{:?}", source.as_ref().expect("parsed"))
    }

    const CLIENT: &str = "[clients.c]\ntoken_endpoint = \"https://idp.example/token\"\n\
        client_id = \"c\"\nauth = \"private_key_jwt\"\n";
    const ROUTE: &str = "[[route]]\nhost = \"api.example\"\nclient = \"c\"\n";

    fn keys() -> Vec<Key> {
        vec![
            Key {
                name: "proxy.ca_cert",
                toml: "[proxy]\nca_cert = {v}\nca_key = \"absent.key\"\n",
                parsed: |c| format!("{:?}", c.proxy.ca_cert),
                env_refused: None,
            },
            Key {
                name: "proxy.ca_key",
                toml: "[proxy]\nca_key = {v}\nca_cert = \"absent.pem\"\n",
                parsed: |c| format!("{:?}", c.proxy.ca_key),
                env_refused: None,
            },
            Key {
                name: "proxy.upstream_roots",
                toml: "[proxy]\nupstream_roots = [{v}]\n",
                parsed: |c| format!("{:?}", c.proxy.upstream_roots[0]),
                env_refused: None,
            },
            Key {
                name: "client_cert",
                toml: "private_key = \"k.pem\"\nclient_cert = {v}\nclient_key = \"c.key\"\n",
                parsed: |c| shown(&client(c).client_cert),
                env_refused: None,
            },
            Key {
                name: "client_key",
                toml: "private_key = \"k.pem\"\nclient_key = {v}\nclient_cert = \"c.pem\"\n",
                parsed: |c| shown(&client(c).client_key),
                env_refused: None,
            },
            Key {
                name: "private_key",
                toml: "private_key = {v}\n",
                parsed: |c| shown(&client(c).private_key),
                env_refused: None,
            },
            Key {
                name: "assertion_cert",
                toml: "private_key = \"k.pem\"\nassertion_cert = {v}\n",
                parsed: |c| shown(&client(c).assertion_cert),
                env_refused: None,
            },
            Key {
                name: "dpop_key",
                toml: "private_key = \"k.pem\"\ndpop_key = {v}\n",
                parsed: |c| shown(&client(c).dpop_key),
                env_refused: None,
            },
            Key {
                name: "refresh_token",
                toml: "private_key = \"k.pem\"\nROUTE\ngrant = \"refresh_token\"\nrefresh_token = {v}\n",
                parsed: |c| match &c.routes[0].grant {
                    Grant::RefreshToken { file } => format!("file:{}", file.display()),
                    other => panic!("{other:?}"),
                },
                env_refused: Some("written back"),
            },
            Key {
                name: "subject_token",
                toml: "private_key = \"k.pem\"\nROUTE\ngrant = \"token_exchange\"\nsubject_token = {v}\n",
                parsed: |c| match &c.routes[0].grant {
                    Grant::TokenExchange(TokenExchange {
                        subject: SubjectSource::Workload(s),
                        ..
                    }) => format!("{s:?}"),
                    other => panic!("{other:?}"),
                },
                env_refused: None,
            },
            Key {
                name: "actor_token",
                toml: "private_key = \"k.pem\"\nROUTE\ngrant = \"token_exchange\"\n\
                       subject_token = \"inbound\"\nactor_token = {v}\n",
                parsed: |c| match &c.routes[0].grant {
                    Grant::TokenExchange(TokenExchange {
                        actor: Some((s, _)),
                        ..
                    }) => format!("{s:?}"),
                    other => panic!("{other:?}"),
                },
                env_refused: None,
            },
        ]
    }

    /// The whole config for `key` with value `v`: a client, a route, the key where it goes.
    fn config_text(key: &Key, v: &str) -> String {
        let body = key.toml.replace("{v}", v).replace("ROUTE\n", ROUTE);
        if key.name.starts_with("proxy.") {
            format!("{body}{CLIENT}private_key = \"k.pem\"\n")
        } else {
            format!("{CLIENT}{body}")
        }
    }

    #[test]
    fn every_file_key_takes_a_path_a_file_table_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        // upstream_roots are read while validating: give them a real certificate.
        let cert = crate::secret::test_keys::certificate();
        std::fs::write(base.join("roots.pem"), &cert).unwrap();
        let var = "OAUTH_EGRESS_TEST_CONFIG_SOURCE_PEM";
        std::env::set_var(var, &cert);
        for key in keys() {
            // Only upstream_roots must exist; the CA files must not (both absent is valid).
            let file = match key.name {
                "proxy.upstream_roots" => "roots.pem",
                _ => "material.pem",
            };
            let path = base.join(file);
            let forms = [
                ("string", format!("\"{file}\"")),
                ("file table", format!("{{ file = \"{file}\" }}")),
                ("absolute", format!("\"{}\"", path.display())),
                ("env table", format!("{{ env = \"{var}\" }}")),
            ];
            for (form, value) in &forms {
                let text = config_text(&key, value);
                let result = from_toml(&text, base, "case");
                let label = format!("{} as {form}", key.name);
                match (form.starts_with("env"), key.env_refused) {
                    (true, Some(word)) => {
                        let err = result.expect_err(&label).to_string();
                        assert!(
                            err.contains(key.name.trim_start_matches("proxy.")),
                            "{label}: {err}"
                        );
                        assert!(err.contains(word), "{label}: {err}");
                    }
                    (true, None) => {
                        let config = result.unwrap_or_else(|e| panic!("{label}: {e}\n{text}"));
                        assert_eq!((key.parsed)(&config), format!("env:{var}"), "{label}");
                    }
                    (false, _) => {
                        let config = result.unwrap_or_else(|e| panic!("{label}: {e}\n{text}"));
                        assert_eq!(
                            (key.parsed)(&config),
                            format!("file:{}", path.display()),
                            "{label}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn content_written_where_a_path_belongs_is_refused_unechoed() {
        let dir = tempfile::tempdir().unwrap();
        let pem = "-----BEGIN PRIVATE KEY-----\\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49\\n-----END PRIVATE KEY-----";
        let jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ3b3JrbG9hZCJ9.c2lnbmF0dXJlLWJ5dGVz";
        let opaque = "gho_16C7e42F292c6912E7710c838347Ae178B4a";
        for key in keys() {
            for secret in [pem, jwt, opaque] {
                let text = config_text(&key, &format!("\"{secret}\""));
                let err = from_toml(&text, dir.path(), "case")
                    .expect_err(key.name)
                    .to_string();
                assert!(err.contains("not a path"), "{}: {err}", key.name);
                for part in ["MIGHAgEA", "eyJzdWIi", "16C7e42F"] {
                    assert!(!err.contains(part), "{}: {err}", key.name);
                }
            }
        }
        // Path-shaped names stay paths.
        for fine in [
            "tokens/actor.jwt",
            "sa-token",
            "./a-very-long-file-name-without-any-dot",
            "billing-service-account-token-file",
        ] {
            assert!(!looks_like_content(fine), "{fine}");
        }
    }
}
