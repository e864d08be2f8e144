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

/// Why `url` cannot name the shared Redis, if it cannot. Never echoes a password written
/// in the URL.
fn url_problem(url: &str) -> Option<String> {
    if url.is_empty() {
        return Some(
            "cache.url is required with cache.backend = \"redis\" (e.g. \"rediss://redis.egress.svc:6379/0\")".into(),
        );
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Some("cache.url must start with redis:// or rediss://".into());
    };
    match scheme {
        "redis" | "rediss" => {}
        "redis+cluster" | "rediss+cluster" => {
            return Some(
                "cache.url: Redis Cluster (redis+cluster://) is not supported by this build yet; point it at one Redis (or a proxy in front of the cluster)".into(),
            )
        }
        _ => return Some(format!("cache.url must start with redis:// or rediss://, not {scheme}://")),
    }
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.contains('@') {
        return Some(
            "cache.url must not carry credentials; use cache.username and cache.password = { env = \"...\" }".into(),
        );
    }
    if authority.is_empty() {
        return Some("cache.url needs a host, e.g. redis://127.0.0.1:6379".into());
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
            ("redis+cluster://a,b,c", Some("Cluster")),
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
}
