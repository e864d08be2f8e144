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

use crate::route::HostPattern;
use crate::secret::SecretSource;

/// The example configuration shipped in the repository; `demo` runs on it.
pub const EXAMPLE: &str = include_str!("../routes.toml");

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
    /// A token is used until `expires_in` minus this skew (capped at half its lifetime).
    pub expiry_skew: Duration,
    /// Lifetime assumed when the server sends no `expires_in`.
    pub default_expires_in: Duration,
    /// Renew in the background during this last fraction (0..1) of a token's usable life.
    pub refresh_ahead: f64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(10),
            expiry_skew: Duration::from_secs(60),
            default_expires_in: Duration::from_secs(300),
            refresh_ahead: 0.2,
        }
    }
}

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the form-urlencoded id and secret (RFC 6749 §2.3.1).
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the request body.
    ClientSecretPost,
}

impl fmt::Display for ClientAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ClientSecretBasic => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
        })
    }
}

/// One OAuth client registration, `[clients.NAME]`.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The table name, used in messages.
    pub name: String,
    /// Token endpoint URL (https, or http on a loopback host).
    pub token_endpoint: reqwest::Url,
    /// `client_id`.
    pub client_id: String,
    /// Authentication method.
    pub auth: ClientAuth,
    /// Where the client secret lives.
    pub client_secret: Option<SecretSource>,
}

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

    /// Reads every client secret once and reports those that cannot be read (`check` and
    /// `run` refuse to start with any; secrets are read again on every use).
    pub fn secret_problems(&self) -> Vec<String> {
        self.clients
            .values()
            .filter_map(|c| {
                let source = c.client_secret.as_ref()?;
                source
                    .load()
                    .err()
                    .map(|err| format!("clients.{}.client_secret: {err}", c.name))
            })
            .collect()
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
    clients: BTreeMap<String, RawClient>,
    #[serde(default)]
    route: Vec<RawRoute>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawProxy {
    listen: SocketAddr,
    unmatched: Unmatched,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    upstream_roots: Vec<PathBuf>,
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
}

impl Default for RawTokens {
    fn default() -> Self {
        Self {
            request_timeout_ms: 10_000,
            expiry_skew_secs: 60,
            default_expires_in_secs: 300,
            refresh_ahead_percent: 20,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClient {
    token_endpoint: String,
    client_id: String,
    auth: ClientAuth,
    client_secret: Option<RawSecret>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    host: String,
    port: Option<u16>,
    path_prefix: Option<String>,
    client: String,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<String>,
    resource: Option<String>,
    #[serde(default)]
    upgrade_tls: bool,
    #[serde(default)]
    allow_plaintext: bool,
}

/// `{ env = "NAME" }` or `{ file = "path" }`. Deserialized by hand so that a literal secret
/// written by mistake is refused without its value appearing in the error message.
enum RawSecret {
    Env(String),
    File(PathBuf),
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
    if t.refresh_ahead_percent >= 100 {
        problems.push("tokens.refresh_ahead_percent must be below 100".into());
    }
    if t.default_expires_in_secs == 0 {
        problems.push("tokens.default_expires_in_secs must be greater than 0".into());
    }
    let tokens = TokenSettings {
        request_timeout: Duration::from_millis(t.request_timeout_ms),
        expiry_skew: Duration::from_secs(t.expiry_skew_secs),
        default_expires_in: Duration::from_secs(t.default_expires_in_secs),
        refresh_ahead: f64::from(t.refresh_ahead_percent) / 100.0,
    };

    let mut clients = BTreeMap::new();
    for (name, c) in raw.clients {
        let at = format!("clients.{name}");
        let token_endpoint = match reqwest::Url::parse(&c.token_endpoint) {
            Ok(url) => {
                let loopback = url.host_str().is_some_and(|h| {
                    h.eq_ignore_ascii_case("localhost")
                        || h.trim_matches(['[', ']'])
                            .parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| ip.is_loopback())
                });
                match url.scheme() {
                    "https" => {}
                    "http" if loopback => warnings.push(format!(
                        "{at}.token_endpoint uses plain http (allowed only because the host is loopback)"
                    )),
                    _ => problems.push(format!(
                        "{at}.token_endpoint must be an https URL (plain http only on loopback), got {}",
                        c.token_endpoint
                    )),
                }
                Some(url)
            }
            Err(err) => {
                problems.push(format!(
                    "{at}.token_endpoint is not a URL ({err}): {}",
                    c.token_endpoint
                ));
                None
            }
        };
        if c.client_id.is_empty() {
            problems.push(format!("{at}.client_id is empty"));
        }
        let client_secret = c.client_secret.map(|s| match s {
            RawSecret::Env(n) => SecretSource::Env(n),
            RawSecret::File(f) => SecretSource::File(resolve(base, f)),
        });
        if client_secret.is_none() {
            problems.push(format!(
                "{at}.client_secret is required for auth = \"{}\"",
                c.auth
            ));
        }
        if let Some(token_endpoint) = token_endpoint {
            clients.insert(
                name.clone(),
                Arc::new(ClientConfig {
                    name,
                    token_endpoint,
                    client_id: c.client_id,
                    auth: c.auth,
                    client_secret,
                }),
            );
        }
    }

    let mut routes: Vec<RouteSpec> = Vec::new();
    for (i, r) in raw.route.into_iter().enumerate() {
        let label = r.name.clone().unwrap_or_else(|| {
            format!(
                "{}{}{}",
                r.host,
                r.port.map(|p| format!(":{p}")).unwrap_or_default(),
                r.path_prefix.as_deref().unwrap_or("")
            )
        });
        let at = format!("route #{} ({label})", i + 1);
        let host = match HostPattern::parse(&r.host) {
            Ok(h) => Some(h),
            Err(why) => {
                problems.push(format!("{at}: host: {why}"));
                None
            }
        };
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
        if !clients.contains_key(&r.client) {
            let known: Vec<&str> = clients.keys().map(String::as_str).collect();
            problems.push(format!(
                "{at}: client {:?} is not defined in [clients] (defined: {})",
                r.client,
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
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
        let Some(host) = host else { continue };
        let spec = RouteSpec {
            name: label,
            host,
            port: r.port,
            path_prefix: r.path_prefix.map(|p| {
                if p.len() > 1 {
                    p.trim_end_matches('/').to_string()
                } else {
                    p
                }
            }),
            client: r.client,
            scopes,
            audience: r.audience,
            resource: r.resource,
            upgrade_tls: r.upgrade_tls,
            allow_plaintext: r.allow_plaintext,
        };
        if let Some(other) = routes.iter().find(|o| {
            o.host == spec.host && o.port == spec.port && o.path_prefix == spec.path_prefix
        }) {
            problems.push(format!(
                "{at} matches exactly the same requests as route {:?}; one would shadow the other",
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
