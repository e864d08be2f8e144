//! The fleet's shared token store (`[cache] backend = "redis"`), behind each slot's own cache:
//! a cache hit never comes here; a miss or a renewal does, and so does an invalidation.
//!
//! ```text
//!  miss/renewal ──► GET entry ──fresh──► use it (no token request)
//!                      │ absent, due, or the token just refused
//!                      ▼
//!                 SET lock NX PX ──taken──► re-read, fetch, SET entry, release (owner only)
//!                      │ held by another replica
//!                      ▼
//!                 poll the entry (bounded) ──► its token; or the lock expired: take over
//! ```
//! - Names: `prefix{hash}:tok` and `prefix{hash}:lock`, the hash (SHA-256 of the token's
//!   [`TokenKey`]) hash-tagged so an entry and its lock share a cluster slot. Nothing in a
//!   name or a value shows a token, client, scope or subject in clear (`seal.rs`).
//! - Invalidation (a 401): the entry is deleted only if it still holds the refused token
//!   (compare-and-delete), and `prefix invalidate` tells the other replicas to drop their copy.
//! - Any Redis failure, an open breaker (`redis.rs`) or a value no key opens: this replica
//!   fetches alone, as with `memory`, and never writes what it could not read.
//! - `refresh_token` routes: the fleet's current refresh token lives (sealed) at
//!   `prefix{hash}:rt`, presented and replaced only under the lock; the replica's own file
//!   seeds it when empty and still gets each rotated token written back.

mod redis;
mod seal;
mod wire;

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use secrecy::{ExposeSecret, SecretString};

use super::endpoint::Fetched;
use super::{AccessToken, TokenError, TokenKey, TokenSlot};
use crate::config::{Grant, RedisSettings, TokenSettings};
use crate::secret::SecretError;
use crate::sync::lock;
pub use seal::{generate_key, KeyError};

/// How often a waiter looks for the lock holder's result.
const POLL: Duration = Duration::from_millis(25);

/// Why the shared store cannot be set up (start-up, `check`). Never includes a key.
#[derive(Debug, thiserror::Error)]
pub enum SharedError {
    /// A key or password source cannot be read.
    #[error("cache.{key}: {source}")]
    Secret {
        /// The config key.
        key: String,
        /// Why.
        source: SecretError,
    },
    /// An encryption key is not 32 bytes of base64.
    #[error("cache.{key} {source}")]
    Key {
        /// The config key.
        key: String,
        /// Why.
        source: KeyError,
    },
    /// The URL is not one the Redis client takes.
    #[error("cache.url: {0}")]
    Url(String),
    /// `check --fetch`: Redis did not answer.
    #[error("cache.url: Redis did not answer within cache.timeout_ms")]
    Unreachable,
    /// `check --fetch`: what another replica wrote does not open with this key.
    #[error("cache.encryption_key does not open what another replica wrote (a different key? add the old one to previous_encryption_keys)")]
    WrongKey,
}

/// What one slot's entry and lock are called.
#[derive(Debug, Clone)]
pub struct Names {
    hash: String,
    entry: String,
    lock: String,
    /// On a `refresh_token` route: the fleet's current refresh token.
    refresh: Option<String>,
}

/// The shared store: the Redis backend, the keys that seal its values, and the slots that
/// must drop their token when another replica says it was refused.
pub struct SharedStore {
    backend: redis::Backend,
    sealer: seal::Sealer,
    prefix: String,
    lock_ttl: Duration,
    slots: Mutex<HashMap<String, Vec<Weak<TokenSlot>>>>,
    subscribed: AtomicBool,
    /// What it was opened with (a reload with the same settings keeps this store).
    settings: (RedisSettings, Duration),
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore")
            .field("prefix", &self.prefix)
            .finish()
    }
}

/// Feeds a value's `Hash` into SHA-256: a name derived from every field of a [`TokenKey`]
/// (and so from every field added to it later), stable across the replicas of one build.
struct Sha(Sha256);

impl Hasher for Sha {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        0
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 of a token's `Authorization` value: how an entry's token is compared with a
/// refused one, and named in an invalidation message.
pub(super) fn token_hash(token: &AccessToken) -> [u8; 32] {
    Sha256::digest(token.authorization().as_bytes()).into()
}

impl SharedStore {
    /// The store `settings` describe; `roots_pem` are trusted for `rediss://` (else the
    /// system's). Reads the keys and the password now, so `check` and start-up report them.
    pub fn open(
        settings: &RedisSettings,
        tokens: &TokenSettings,
        roots_pem: Option<Vec<u8>>,
    ) -> Result<Arc<SharedStore>, SharedError> {
        let read = |key: &str, source: &crate::secret::SecretSource| {
            source.load().map_err(|source| SharedError::Secret {
                key: key.into(),
                source,
            })
        };
        let current = read("encryption_key", &settings.encryption_key)?;
        let previous = settings
            .previous_encryption_keys
            .iter()
            .map(|s| read("previous_encryption_keys", s))
            .collect::<Result<Vec<_>, _>>()?;
        let sealer = seal::Sealer::new(&current, &previous).map_err(|(i, source)| {
            let key = match i {
                0 => "encryption_key".to_string(),
                n => format!("previous_encryption_keys[{}]", n - 1),
            };
            SharedError::Key { key, source }
        })?;
        let password = match &settings.password {
            Some(source) => Some(read("password", source)?),
            None => None,
        };
        let dialer = wire::client(settings, password.as_ref(), roots_pem)?;
        Ok(Arc::new(SharedStore {
            backend: redis::Backend::new(dialer, settings.timeout),
            sealer,
            prefix: settings.key_prefix.clone(),
            lock_ttl: tokens.request_timeout + tokens.retry_max_elapsed,
            slots: Mutex::new(HashMap::new()),
            subscribed: AtomicBool::new(false),
            settings: (
                settings.clone(),
                tokens.request_timeout + tokens.retry_max_elapsed,
            ),
        }))
    }

    /// Whether this store is the one `settings` and `tokens` describe.
    pub fn serves(&self, settings: &RedisSettings, tokens: &TokenSettings) -> bool {
        self.settings
            == (
                settings.clone(),
                tokens.request_timeout + tokens.retry_max_elapsed,
            )
    }

    /// The names for `key`'s token. On a `refresh_token` route the file's path is left out
    /// of the identity (each replica may have its own copy of the seed file) and the refresh
    /// token gets a name too.
    pub(super) fn names(&self, key: &TokenKey) -> Option<Names> {
        let refreshing = matches!(key.grant, Grant::RefreshToken { .. });
        let mut identity = key.clone();
        if refreshing {
            identity.grant = Grant::RefreshToken {
                file: std::path::PathBuf::new(),
            };
        }
        let mut sha = Sha(Sha256::new());
        sha.write(b"oauth-egress shared token v1\0");
        identity.hash(&mut sha);
        let hash = hex(&sha.0.finalize()[..16]);
        Some(Names {
            entry: format!("{}{{{hash}}}:tok", self.prefix),
            lock: format!("{}{{{hash}}}:lock", self.prefix),
            refresh: refreshing.then(|| format!("{}{{{hash}}}:rt", self.prefix)),
            hash,
        })
    }

    fn channel(&self) -> String {
        format!("{}invalidate", self.prefix)
    }

    /// A token for `names`: the fleet's, or one this replica fetches (under the fleet's lock
    /// when Redis answers, alone when it does not). `background`: a renewal, which waits for
    /// a fresh token rather than taking the one being renewed. `refused`: the hash of a token
    /// the resource server just refused, never taken from the store again.
    pub(super) async fn obtain<F, Fut>(
        self: &Arc<Self>,
        names: &Names,
        background: bool,
        refused: Option<[u8; 32]>,
        fetch: F,
    ) -> Result<AccessToken, TokenError>
    where
        F: FnOnce(Option<SecretString>) -> Fut,
        Fut: std::future::Future<Output = Fetched>,
    {
        // Long enough for a holder that dies just before its lock expires and the one
        // fetch of the replica taking over; beyond it, fetch alone.
        let deadline = Instant::now() + self.lock_ttl * 2 + POLL * 4;
        let owner = hex(&rand::random::<[u8; 16]>());
        let mut waited = false;
        loop {
            let found = match self.read(names, refused).await {
                Ok(found) => found,
                Err(Unshared) => return fetch(None).await.result,
            };
            let found = match found {
                Some(token) if Instant::now() < token.refresh_at => {
                    crate::metrics::shared_cache_lookup(true);
                    return Ok(token);
                }
                other => other,
            };
            match self
                .backend
                .try_lock(&names.lock, &owner, self.lock_ttl)
                .await
            {
                Ok(true) => {
                    if waited {
                        crate::metrics::shared_cache_takeover();
                    }
                    return self.fetch_holding(names, &owner, refused, fetch).await;
                }
                Ok(false) => {}
                Err(_) => return fetch(None).await.result,
            }
            // Another replica is fetching. A cold caller may use the token being renewed.
            if let Some(token) = found.filter(|t| !background && t.is_usable_at(Instant::now())) {
                crate::metrics::shared_cache_lookup(true);
                return Ok(token);
            }
            if !waited {
                crate::metrics::shared_cache_lock_wait();
                waited = true;
            }
            if Instant::now() >= deadline {
                return fetch(None).await.result;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Holding the lock: re-read (the holder before us may have just written), else fetch
    /// (presenting the fleet's refresh token, if the route has one) and share the result;
    /// then release the lock (only ours). Waiters poll.
    async fn fetch_holding<F, Fut>(
        &self,
        names: &Names,
        owner: &str,
        refused: Option<[u8; 32]>,
        fetch: F,
    ) -> Result<AccessToken, TokenError>
    where
        F: FnOnce(Option<SecretString>) -> Fut,
        Fut: std::future::Future<Output = Fetched>,
    {
        let fresh = match self.read(names, refused).await {
            Ok(Some(token)) if Instant::now() < token.refresh_at => Some(token),
            _ => None,
        };
        let result = match fresh {
            Some(token) => {
                crate::metrics::shared_cache_lookup(true);
                Ok(token)
            }
            None => {
                crate::metrics::shared_cache_lookup(false);
                self.fetch_and_share(names, fetch).await
            }
        };
        let _ = self.backend.delete_if(&names.lock, owner.as_bytes()).await;
        result
    }

    async fn fetch_and_share<F, Fut>(
        &self,
        names: &Names,
        fetch: F,
    ) -> Result<AccessToken, TokenError>
    where
        F: FnOnce(Option<SecretString>) -> Fut,
        Fut: std::future::Future<Output = Fetched>,
    {
        let seed = match &names.refresh {
            Some(name) => match self.read_secret(name).await {
                Ok(seed) => seed,
                // Not readable: alone, and the fleet's refresh token is left as it is.
                Err(Unshared) => return fetch(None).await.result,
            },
            None => None,
        };
        let Fetched { result, rotated } = fetch(seed).await;
        if let (Some(name), Some(rotated)) = (&names.refresh, rotated) {
            let plain = rotated.expose_secret().as_bytes();
            if let Ok(sealed) = self.sealer.seal(name, plain) {
                if self.backend.set(name, &sealed).await.is_err() {
                    tracing::error!("the rotated refresh token could not be shared; other replicas may present a spent one");
                }
            }
        }
        if let Ok(token) = &result {
            self.write(names, token).await;
        }
        result
    }

    /// The secret stored (sealed) at `name`, if any.
    async fn read_secret(&self, name: &str) -> Result<Option<SecretString>, Unshared> {
        let Some(sealed) = self.backend.get(name).await.map_err(|_| Unshared)? else {
            return Ok(None);
        };
        let plain = self.sealer.open(name, &sealed).map_err(|_| {
            crate::metrics::shared_cache_unopenable();
            Unshared
        })?;
        let text = std::str::from_utf8(&plain).map_err(|_| Unshared)?;
        Ok(Some(SecretString::from(text.to_string())))
    }

    /// The entry's token, if there is one that may still be sent and is not `refused`.
    /// `Err` when Redis does not answer or the value does not open: fetch alone, write nothing.
    async fn read(
        &self,
        names: &Names,
        refused: Option<[u8; 32]>,
    ) -> Result<Option<AccessToken>, Unshared> {
        let Some(sealed) = self.backend.get(&names.entry).await.map_err(|_| Unshared)? else {
            return Ok(None);
        };
        let Ok(plain) = self.sealer.open(&names.entry, &sealed) else {
            crate::metrics::shared_cache_unopenable();
            tracing::warn!(
                "a shared token does not open with cache.encryption_key; fetching alone"
            );
            return Err(Unshared);
        };
        let Some(token) = wire::decode(&plain) else {
            crate::metrics::shared_cache_unopenable();
            return Err(Unshared);
        };
        let refused = refused.is_some_and(|h| h == token_hash(&token));
        Ok((!refused && token.is_usable_at(Instant::now())).then_some(token))
    }

    async fn write(&self, names: &Names, token: &AccessToken) {
        let ttl = token.usable_until.saturating_duration_since(Instant::now());
        if ttl.is_zero() {
            return;
        }
        let plain = wire::encode(token);
        if let Ok(sealed) = self.sealer.seal(&names.entry, &plain) {
            let _ = self.backend.put(&names.entry, &sealed, ttl).await;
        }
    }

    /// After a 401 here: deletes the shared entry if it still holds the refused token, then
    /// tells the other replicas to drop their copy. Runs on its own (the caller does not wait).
    pub(super) fn invalidated(self: &Arc<Self>, names: &Names, refused: [u8; 32]) {
        let (store, names) = (self.clone(), names.clone());
        tokio::spawn(async move {
            if let Ok(Some(sealed)) = store.backend.get(&names.entry).await {
                let holds_refused = store
                    .sealer
                    .open(&names.entry, &sealed)
                    .ok()
                    .and_then(|plain| wire::decode(&plain))
                    .is_some_and(|t| token_hash(&t) == refused);
                if holds_refused {
                    let _ = store.backend.delete_if(&names.entry, &sealed).await;
                }
            }
            let message = format!("{} {}", names.hash, hex(&refused[..16]));
            let _ = store.backend.publish(&store.channel(), &message).await;
        });
    }

    /// Remembers `slot` (by its names) so an invalidation from another replica reaches it;
    /// starts listening for them on first use.
    pub(super) fn register(self: &Arc<Self>, names: &Names, slot: &Arc<TokenSlot>) {
        {
            let mut slots = lock(&self.slots);
            let list = slots.entry(names.hash.clone()).or_default();
            list.retain(|w| w.strong_count() > 0);
            if !list
                .iter()
                .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(slot)))
            {
                list.push(Arc::downgrade(slot));
            }
        }
        if !self.subscribed.swap(true, Ordering::SeqCst) {
            wire::listen(
                Arc::downgrade(self),
                self.backend.dialer().pubsub_clients(),
                self.channel(),
            );
        }
    }

    /// An invalidation message from a replica: `hash token-hash-prefix`.
    fn on_invalidation(&self, message: &str) {
        let Some((hash, refused)) = message.split_once(' ') else {
            return;
        };
        let slots: Vec<Arc<TokenSlot>> = lock(&self.slots)
            .get(hash)
            .map(|l| l.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        for slot in slots {
            slot.drop_refused(|token| hex(&token_hash(token)[..16]) == refused);
        }
    }

    /// `check --fetch`: Redis answers, and the probe value another replica (or an earlier
    /// check) left opens with this key; then leaves one sealed with it.
    pub async fn probe(&self) -> Result<(), SharedError> {
        let name = format!("{}check", self.prefix);
        self.backend
            .ping()
            .await
            .map_err(|_| SharedError::Unreachable)?;
        if let Some(sealed) = self
            .backend
            .get(&name)
            .await
            .map_err(|_| SharedError::Unreachable)?
        {
            if self.sealer.open(&name, &sealed).is_err() {
                return Err(SharedError::WrongKey);
            }
        }
        let sealed = self
            .sealer
            .seal(&name, b"oauth-egress check")
            .map_err(|_| SharedError::WrongKey)?;
        self.backend
            .put(&name, &sealed, Duration::from_secs(7 * 24 * 3600))
            .await
            .map_err(|_| SharedError::Unreachable)
    }
}

/// Redis did not answer, or held a value this replica cannot open.
struct Unshared;
