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

/// The example configuration shipped in the repository; `demo` runs on it.
pub const EXAMPLE: &str = include_str!("../../routes.toml");

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
    /// The interception CA certificate (PEM).
    pub ca_cert: PathBuf,
    /// The interception CA key (PEM, created with mode 0600).
    pub ca_key: PathBuf,
    /// Extra CA files trusted for upstream TLS and token endpoints, besides webpki roots.
    pub upstream_roots: Vec<PathBuf>,
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

impl Config {
    /// Replaces a client's secret source (the demo and tests hand secrets over in memory).
    /// Returns false when there is no such client.
    pub fn set_client_secret(&mut self, client: &str, source: SecretSource) -> bool {
        match self.clients.get_mut(client) {
            Some(c) => {
                Arc::make_mut(c).client_secret = Some(source);
                true
            }
            None => false,
        }
    }
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
    ca_cert: PathBuf,
    ca_key: PathBuf,
    upstream_roots: Vec<PathBuf>,
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
            ca_cert: "ca/ca.pem".into(),
            ca_key: "ca/ca.key".into(),
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

/// Loads and validates the shipped example (`routes.toml` compiled into the binary), with
/// environment overrides. Relative paths are relative to the working directory.
pub fn load_example() -> Result<Config, ConfigError> {
    from_toml(EXAMPLE, Path::new("."), "embedded routes.toml")
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
        ca_cert: resolve(base, p.ca_cert),
        ca_key: resolve(base, p.ca_key),
        upstream_roots: p
            .upstream_roots
            .into_iter()
            .map(|r| resolve(base, r))
            .collect(),
        system_roots: p.system_roots,
        retry_body_limit: usize::try_from(p.retry_body_limit).unwrap_or(usize::MAX),
        connect_timeout: Duration::from_millis(p.connect_timeout_ms),
        pool_idle_timeout: Duration::from_secs(p.pool_idle_timeout_secs),
        shutdown_grace: Duration::from_secs(p.shutdown_grace_secs),
    };
    for root in &proxy.upstream_roots {
        if let Err(err) = std::fs::metadata(root) {
            problems.push(format!(
                "proxy.upstream_roots: cannot read {}: {err}",
                root.display()
            ));
        }
    }
    match (proxy.ca_cert.exists(), proxy.ca_key.exists()) {
        (true, false) | (false, true) => problems.push(format!(
            "proxy.ca_cert ({}) and proxy.ca_key ({}) must both exist, or both be absent so \
             a new CA is generated",
            proxy.ca_cert.display(),
            proxy.ca_key.display()
        )),
        _ => {}
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
