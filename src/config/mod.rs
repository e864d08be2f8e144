//! Configuration: figment (the TOML file, then `OAUTH_EGRESS_SECTION__KEY` environment
//! variables over it) → raw serde structs → validate → a typed [`Config`].
//!
//! Every problem found is reported, each naming the key or route it is about; unknown keys
//! are errors. Relative paths are relative to the config file's directory. One file per
//! section: `proxy.rs` (`[proxy]`, `[admin]`), `transparent.rs`, `tokens.rs`, `limits.rs`, `client.rs` (`[clients.NAME]`),
//! `cache.rs` (`[cache]`), `route.rs`, `grant.rs` and `credential.rs` (`[[route]]`), `caller.rs` (`[[caller]]`, `proxy.callers`), `source.rs` (keys naming a secret or a file).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::Deserialize;

mod cache;
mod caller;
mod client;
mod credential;
mod grant;
mod limits;
mod params;
mod proxy;
mod route;
mod source;
mod tokens;
mod transparent;

pub use cache::{cluster_nodes, CacheSettings, RedisSettings, DEFAULT_KEY_PREFIX};
pub use caller::{CallerPolicy, CallerSpec, ProxyAuth, UNIDENTIFIED};
pub(crate) use client::is_loopback;
pub use client::{
    AssertionAudience, BasicEncoding, ClientAuth, ClientConfig, Endpoint, SigningAlg,
};
pub(crate) use credential::header_safe;
pub use credential::{CredentialForm, StaticCredential, TokenPlacement};
pub use grant::{Grant, JwtBearer, SubjectSource, TokenExchange};
pub use limits::LimitSettings;
pub use params::OWNED_PARAMS;
pub use proxy::{AdminSettings, ProxySettings, Unmatched};
pub use route::RouteSpec;
pub use tokens::TokenSettings;
pub use transparent::TransparentSettings;

/// The validated configuration the proxy runs on.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it came from (a path, or "embedded routes.toml"), for messages.
    pub origin: String,
    /// `[proxy]`.
    pub proxy: ProxySettings,
    /// `[admin]`; `None` when absent.
    pub admin: Option<AdminSettings>,
    /// `[transparent]`; `None` when absent.
    pub transparent: Option<TransparentSettings>,
    /// `[tokens]`.
    pub tokens: TokenSettings,
    /// `[limits]`.
    pub limits: LimitSettings,
    /// `[cache]`: this process only, or shared through Redis.
    pub cache: CacheSettings,
    /// `[clients.NAME]`, by name.
    pub clients: BTreeMap<String, Arc<ClientConfig>>,
    /// `[[route]]`, in file order.
    pub routes: Vec<RouteSpec>,
    /// `[[caller]]`, in file order.
    pub callers: Vec<CallerSpec>,
    /// Things that are allowed but deserve a second look (printed by `check` and at start).
    pub warnings: Vec<String>,
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

/// What validation found: problems (the config is refused) and warnings (it runs, but
/// deserves a second look). Each is one sentence naming its key or route.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Findings {
    fn problem(&mut self, sentence: impl Into<String>) {
        self.problems.push(sentence.into());
    }

    fn warn(&mut self, sentence: impl Into<String>) {
        self.warnings.push(sentence.into());
    }
}

// ---------------------------------------------------------------------------------------
// Raw, as written.

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    proxy: proxy::RawProxy,
    admin: Option<proxy::RawAdmin>,
    transparent: Option<transparent::RawTransparent>,
    #[serde(default)]
    tokens: tokens::RawTokens,
    #[serde(default)]
    limits: limits::RawLimits,
    #[serde(default)]
    cache: cache::RawCache,
    #[serde(default)]
    clients: BTreeMap<String, client::RawClient>,
    #[serde(default)]
    route: Vec<route::RawRoute>,
    #[serde(default)]
    caller: Vec<caller::RawCaller>,
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
fn from_figment(figment: Figment, base: &Path, origin: String) -> Result<Config, ConfigError> {
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

fn validate(raw: RawConfig, base: &Path, origin: String) -> Result<Config, ConfigError> {
    let mut found = Findings::default();
    let proxy = raw.proxy.validate(base, &mut found);
    let transparent = raw
        .transparent
        .map(|t| t.validate(proxy.listen, &mut found));
    let tokens = raw.tokens.validate(&mut found);
    let limits = raw.limits.validate(&mut found);
    let cache = raw.cache.validate(base, &mut found);
    let clients = validate_clients(raw.clients, base, &mut found);
    let callers = caller::validate(raw.caller, base, &mut found);
    caller::check_exposure(proxy.callers, proxy.listen, &mut found);
    caller::check_transparent(&callers, transparent.is_some(), &mut found);
    let routes = validate_routes(raw.route, base, &clients, &mut found);
    for route in &routes {
        let subtrees = &proxy.ca_name_constraints;
        if !subtrees.is_empty() && !crate::name_constraints::covers(subtrees, &route.host) {
            found.problem(format!(
                "route {}: host {} is outside proxy.ca_name_constraints [{}]: clients would reject the proxy's certificate for it; add its domain to ca_name_constraints (then generate the CA again) or remove the route",
                route.name,
                route.host,
                subtrees.join(", ")
            ));
        }
        if let Some(listed) = &route.callers {
            caller::check_route_callers(&route.name, listed, &callers, &mut found);
        }
    }
    cache::fleet_warnings(&cache, &clients, &routes, &mut found);
    let admin = raw.admin.map(|a| a.validate(base, &mut found));
    let Findings { problems, warnings } = found;
    if !problems.is_empty() {
        return Err(ConfigError::Invalid { origin, problems });
    }
    Ok(Config {
        origin,
        proxy,
        admin,
        transparent,
        tokens,
        limits,
        cache,
        clients,
        routes,
        callers,
        warnings,
    })
}

/// Every `[clients.NAME]`; the ones with problems are left out (and reported).
fn validate_clients(
    raw: BTreeMap<String, client::RawClient>,
    base: &Path,
    found: &mut Findings,
) -> BTreeMap<String, Arc<ClientConfig>> {
    let mut clients = BTreeMap::new();
    for (name, raw) in raw {
        if let Some(client) = client::validate(name.clone(), raw, base, found) {
            clients.insert(name, Arc::new(client));
        }
    }
    clients
}

/// Every `[[route]]`, in file order; two routes matching exactly the same requests are
/// refused, so matching never has to pick between equals.
fn validate_routes(
    raw: Vec<route::RawRoute>,
    base: &Path,
    clients: &BTreeMap<String, Arc<ClientConfig>>,
    found: &mut Findings,
) -> Vec<RouteSpec> {
    let known: Vec<&str> = clients.keys().map(String::as_str).collect();
    let mut routes: Vec<RouteSpec> = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let client = raw
            .client_name()
            .and_then(|name| clients.get(name))
            .map(|c| c.as_ref());
        let Some(spec) = route::validate(i, raw, base, client, &known, found) else {
            continue;
        };
        if let Some(other) = routes.iter().find(|o| {
            o.host == spec.host && o.port == spec.port && o.path_prefix == spec.path_prefix
        }) {
            found.problem(format!(
                "route #{} ({}) matches exactly the same requests as route {:?}; one would shadow the other",
                i + 1,
                spec.name,
                other.name
            ));
        }
        routes.push(spec);
    }
    routes
}
