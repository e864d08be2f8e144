//! `[cache]`: where tokens are kept: in this process only (`memory`, the default), or also
//! in a Redis shared by every replica (`redis`), so a fleet asks the authorization server
//! once per token lifetime instead of once per replica.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use super::source::RawSecret;
use super::Findings;
use crate::secret::SecretSource;

/// `[cache]`, validated.
#[derive(Debug, Clone, Default)]
pub enum CacheSettings {
    /// Each process keeps its own tokens.
    #[default]
    Memory,
    /// Tokens are shared through Redis, behind each process's own cache.
    Redis(RedisSettings),
}

/// `[cache] backend = "redis"`: how to reach the shared store and seal what goes in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisSettings {
    /// `redis://` or `rediss://` (TLS, verified like upstreams).
    pub url: String,
    /// Redis ACL user.
    pub username: Option<String>,
    /// Redis password (a secret source).
    pub password: Option<SecretSource>,
    /// Every key written starts with this.
    pub key_prefix: String,
    /// 32 random bytes, standard base64: seals every value written.
    pub encryption_key: SecretSource,
    /// Keys that still open values written before a rotation (never used to seal).
    pub previous_encryption_keys: Vec<SecretSource>,
    /// Bound on each Redis operation; beyond it the replica works alone.
    pub timeout: Duration,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCache {
    backend: Option<String>,
    url: Option<String>,
    username: Option<String>,
    password: Option<RawSecret>,
    key_prefix: Option<String>,
    encryption_key: Option<RawSecret>,
    #[serde(default)]
    previous_encryption_keys: Vec<RawSecret>,
    timeout_ms: Option<u64>,
}

/// The default `key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "oauth-egress:";
const DEFAULT_TIMEOUT_MS: u64 = 100;
/// The largest `timeout_ms`: a slow Redis must never cost a caller more than this.
const MAX_TIMEOUT_MS: u64 = 5_000;

impl RawCache {
    /// `[cache]`, checked: a known backend; with `redis`, a `redis://`/`rediss://` URL, an
    /// `encryption_key`, a printable prefix and a timeout in 1..=5000 ms.
    pub(super) fn validate(self, base: &Path, found: &mut Findings) -> CacheSettings {
        match self.backend.as_deref().unwrap_or("memory") {
            "memory" => {
                if self.url.is_some() || self.encryption_key.is_some() {
                    found.warn("cache.url and cache.encryption_key are ignored with cache.backend = \"memory\"");
                }
                CacheSettings::Memory
            }
            "redis" => self.validate_redis(base, found),
            other => {
                found.problem(format!(
                    "cache.backend must be \"memory\" or \"redis\", not {other:?}"
                ));
                CacheSettings::Memory
            }
        }
    }

    fn validate_redis(self, base: &Path, found: &mut Findings) -> CacheSettings {
        let url = self.url.unwrap_or_default();
        if let Some(problem) = url_problem(&url) {
            found.problem(problem);
        }
        let key_prefix = self.key_prefix.unwrap_or_else(|| DEFAULT_KEY_PREFIX.into());
        if key_prefix.is_empty() || !key_prefix.bytes().all(|b| b.is_ascii_graphic()) {
            found.problem(
                "cache.key_prefix must be non-empty printable ASCII without spaces, e.g. \"oauth-egress:\"",
            );
        }
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 || timeout_ms > MAX_TIMEOUT_MS {
            found.problem(format!(
                "cache.timeout_ms must be between 1 and {MAX_TIMEOUT_MS}, not {timeout_ms}"
            ));
        }
        let Some(encryption_key) = self.encryption_key else {
            found.problem(
                "cache.encryption_key is required with cache.backend = \"redis\" \
                 (e.g. { file = \"/run/secrets/cache.key\" }; `oauth-egress cache keygen` makes one)",
            );
            return CacheSettings::Memory;
        };
        CacheSettings::Redis(RedisSettings {
            url,
            username: self.username.filter(|u| !u.is_empty()),
            password: self.password.map(|p| p.into_source(base)),
            key_prefix,
            encryption_key: encryption_key.into_source(base),
            previous_encryption_keys: self
                .previous_encryption_keys
                .into_iter()
                .map(|k| k.into_source(base))
                .collect(),
            timeout: Duration::from_millis(timeout_ms),
        })
    }
}

/// What a shared cache cannot share: DPoP tokens bound to a key generated per process (each
/// replica's own key, so each its own token).
pub(super) fn fleet_warnings(
    cache: &CacheSettings,
    clients: &std::collections::BTreeMap<String, std::sync::Arc<super::ClientConfig>>,
    routes: &[super::RouteSpec],
    found: &mut Findings,
) {
    if !matches!(cache, CacheSettings::Redis(_)) {
        return;
    }
    for route in routes {
        let Some(client) = &route.client else {
            continue;
        };
        let generated = clients.get(client).is_some_and(|c| c.dpop_key.is_none());
        if route.dpop && generated {
            found.warn(format!(
                "route {}: cache.backend = \"redis\" with a DPoP key generated per process: each replica gets its own token (set clients.{client}.dpop_key to a file the replicas share)",
                route.name
            ));
        }
    }
}

/// The node URLs a Redis Cluster `url` names (`redis+cluster://a:6379,b:6379` gives
/// `redis://a:6379` and `redis://b:6379`; `rediss+cluster://` gives `rediss://` nodes), or
/// `None` when `url` names one Redis. The cluster client learns the other nodes from these.
pub fn cluster_nodes(url: &str) -> Option<Vec<String>> {
    let (scheme, rest) = url.split_once("://")?;
    let node_scheme = match scheme {
        "redis+cluster" => "redis",
        "rediss+cluster" => "rediss",
        _ => return None,
    };
    let authority = rest.split('/').next().unwrap_or_default();
    Some(
        authority
            .split(',')
            .map(|node| format!("{node_scheme}://{}", node.trim()))
            .collect(),
    )
}

/// Why `url` cannot name the shared Redis (or Redis Cluster), if it cannot. Never echoes a
/// password written in the URL.
fn url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some(
            "cache.url is required with cache.backend = \"redis\" (e.g. \"rediss://redis.egress.svc:6379/0\")".into(),
        );
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some(
            "cache.url must start with redis://, rediss://, redis+cluster:// or rediss+cluster://"
                .into(),
        );
    };
    let cluster = match scheme {
        "redis" | "rediss" => false,
        "redis+cluster" | "rediss+cluster" => true,
        _ => return Some(format!("cache.url must start with redis://, rediss://, redis+cluster:// or rediss+cluster://, not {scheme}://")),
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    if authority.contains('@') {
        return Some(
            "cache.url must not carry credentials; use cache.username and cache.password = { env = \"...\" }".into(),
        );
    }
    if authority.is_empty() {
        return Some("cache.url needs a host, e.g. redis://127.0.0.1:6379".into());
    }
    if !cluster {
        return None;
    }
    if authority.split(',').any(|node| node.trim().is_empty()) {
        return Some(format!(
            "cache.url: an empty node in {scheme}://{authority}; list them as host:port,host:port"
        ));
    }
    if !matches!(path, "" | "0") {
        return Some(format!(
            "cache.url: Redis Cluster has only database 0, not /{path}; drop the /{path}"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_cases() {
        let cases = [
            ("redis://127.0.0.1:6379", None),
            ("rediss://redis.egress.svc:6379/0", None),
            ("", Some("required")),
            ("127.0.0.1:6379", Some("must start with")),
            ("http://x", Some("not http://")),
            (
                "redis://user:hunter2@host",
                Some("must not carry credentials"),
            ),
            ("redis:///0", Some("needs a host")),
            ("redis+cluster://a:7000,b:7001,c:7002", None),
            ("rediss+cluster://a:7000/0", None),
            ("redis+cluster://a:7000,,c:7002", Some("an empty node")),
            ("redis+cluster://a:7000/2", Some("only database 0")),
            (
                "redis+cluster://u:hunter2@a:7000,b:7001",
                Some("must not carry credentials"),
            ),
            ("redis+cluster://", Some("needs a host")),
            ("valkey://x", Some("not valkey://")),
        ];
        for (url, want) in cases {
            let got = url_problem(url);
            match want {
                None => assert_eq!(got, None, "{url}"),
                Some(part) => {
                    let got = got.unwrap_or_default();
                    assert!(got.contains(part), "{url}: {got}");
                    assert!(!got.contains("hunter2"), "{got}");
                }
            }
        }
    }

    #[test]
    fn cluster_urls_name_their_nodes() {
        let cases: [(&str, Option<&[&str]>); 4] = [
            ("redis://a:6379", None),
            (
                "redis+cluster://a:7000, b:7001,c:7002",
                Some(&["redis://a:7000", "redis://b:7001", "redis://c:7002"]),
            ),
            ("rediss+cluster://a:7000/0", Some(&["rediss://a:7000"])),
            ("rediss://a:7000", None),
        ];
        for (url, want) in cases {
            let got = cluster_nodes(url);
            let want = want.map(|w| w.iter().map(|s| s.to_string()).collect::<Vec<_>>());
            assert_eq!(got, want, "{url}");
        }
    }
}
