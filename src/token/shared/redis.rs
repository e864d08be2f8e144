//! The Redis connection behind the shared store: every operation bounded by `timeout_ms`,
//! and a circuit breaker so an unreachable or slow Redis costs callers nothing.
//!
//! ```text
//!  up ──(2 failures in a row)──► open for 250 ms, doubling to 4 s ──(one probe answers)──► up
//! ```
//! While open, every operation fails at once ([`Down`]) and the replica works as with
//! `backend = "memory"`. A probe is let through after each pause, so a Redis that answers
//! again is rejoined within 5 s. The connection is made lazily (a Redis down at start does
//! not stop `run`), and dropped after a failure so the next probe dials afresh.
//!
//! The store is one Redis or a Redis Cluster ([`Dialer`]); the operations are the same on
//! both, because every key an operation (or its Lua script) touches shares one hash tag, so
//! one slot.

use std::sync::Mutex;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncCommands, Client, Cmd, Pipeline, RedisFuture, Script, Value};
use tokio::time::Instant;

use crate::sync::lock;

/// Failures in a row that open the breaker.
const TRIP_AFTER: u32 = 2;
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause: a Redis back up is asked again within this (plus one timeout).
const MAX_PAUSE: Duration = Duration::from_secs(4);

/// The shared store did not answer (down, slow, refused, or the breaker is open).
#[derive(Debug, thiserror::Error)]
#[error("the shared cache did not answer in time or refused the operation")]
pub struct Down;

/// The breaker rule: [`TRIP_AFTER`] failures in a row open it for a pause that starts at
/// [`FIRST_PAUSE`] and doubles with each failed probe up to [`MAX_PAUSE`]; one success closes
/// it. Pure, so its timetable is tested in a case table.
#[derive(Debug)]
struct Breaker {
    failures: u32,
    pause: Duration,
    open_until: Option<Instant>,
}

impl Breaker {
    fn new() -> Breaker {
        Breaker {
            failures: 0,
            pause: FIRST_PAUSE,
            open_until: None,
        }
    }

    /// Whether an operation may be tried at `now`.
    fn allows(&self, now: Instant) -> bool {
        self.open_until.is_none_or(|t| now >= t)
    }

    /// An operation failed at `now`: the pause it opened, if it did.
    fn failed(&mut self, now: Instant) -> Option<Duration> {
        self.failures += 1;
        if self.failures < TRIP_AFTER {
            return None;
        }
        let pause = self.pause;
        self.open_until = Some(now + pause);
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        Some(pause)
    }

    /// An operation succeeded: whether the breaker had failures to forget.
    fn succeeded(&mut self) -> bool {
        let was_failing = self.failures > 0;
        *self = Breaker::new();
        was_failing
    }
}

/// Where the shared store lives: one Redis (`redis://`), or a Redis Cluster
/// (`redis+cluster://`) and a plain client per listed node for pub/sub (a `PUBLISH` reaches
/// every node of a cluster, so one node's subscription hears every replica).
pub enum Dialer {
    /// One Redis (boxed, like the cluster: both are large).
    One(Box<Client>),
    /// A Redis Cluster.
    Cluster {
        /// Routes each command to the node serving its key's slot (boxed: it is large).
        cluster: Box<ClusterClient>,
        /// One client per node listed in the URL.
        nodes: Vec<Client>,
    },
}

impl Dialer {
    /// The clients an invalidation listener may subscribe with, tried in turn.
    pub fn pubsub_clients(&self) -> Vec<Client> {
        match self {
            Dialer::One(client) => vec![Client::clone(client)],
            Dialer::Cluster { nodes, .. } => nodes.clone(),
        }
    }
}

/// A connection to one Redis or to a cluster; commands run the same on either.
#[derive(Clone)]
pub enum Conn {
    /// One Redis, reconnecting on its own.
    One(ConnectionManager),
    /// A cluster, following its slot map.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::One(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::One(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::One(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// One Redis (or cluster), its connection, and the breaker in front of it.
pub struct Backend {
    dialer: Dialer,
    timeout: Duration,
    conn: tokio::sync::Mutex<Option<Conn>>,
    breaker: Mutex<Breaker>,
}

/// Deletes KEYS[1] only if its owner is ARGV[1] (a lock) or its value is ARGV[1] (an entry).
const DELETE_IF_EQUAL: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"#;

impl Backend {
    /// A backend for `dialer`, each operation bounded by `timeout`.
    pub fn new(dialer: Dialer, timeout: Duration) -> Backend {
        Backend {
            dialer,
            timeout,
            conn: tokio::sync::Mutex::new(None),
            breaker: Mutex::new(Breaker::new()),
        }
    }

    /// Where the store lives (for the pub/sub connection).
    pub fn dialer(&self) -> &Dialer {
        &self.dialer
    }

    /// Whether operations are attempted now (the breaker is closed or a probe is due).
    pub fn available(&self) -> bool {
        lock(&self.breaker).allows(Instant::now())
    }

    fn succeeded(&self) {
        if lock(&self.breaker).succeeded() {
            tracing::info!("the shared cache answers again; sharing tokens");
        }
        crate::metrics::shared_cache_up(true);
    }

    fn failed(&self, what: &str) {
        crate::metrics::shared_cache_error();
        crate::metrics::shared_cache_up(false);
        if let Some(pause) = lock(&self.breaker).failed(Instant::now()) {
            let pause_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX);
            tracing::warn!(
                operation = what,
                pause_ms,
                "the shared cache does not answer; working alone for a while"
            );
        }
    }

    /// A connection: the cached one, or a new one (one task dials, the others wait for it).
    async fn connection(&self) -> redis::RedisResult<Conn> {
        let mut slot = self.conn.lock().await;
        if let Some(conn) = slot.as_ref() {
            return Ok(conn.clone());
        }
        let conn = match &self.dialer {
            Dialer::One(client) => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                Conn::One(client.get_connection_manager_with_config(config).await?)
            }
            Dialer::Cluster { cluster, .. } => Conn::Cluster(cluster.get_async_connection().await?),
        };
        *slot = Some(conn.clone());
        Ok(conn)
    }

    /// Runs `op` behind the breaker; dialling (if needed) and `op` together are bounded by
    /// the timeout.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, Down>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.available() {
            return Err(Down);
        }
        let attempt = async {
            let conn = self.connection().await?;
            op(conn).await
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(Ok(value)) => {
                self.succeeded();
                Ok(value)
            }
            Ok(Err(err)) => {
                tracing::debug!(operation = what, error = %err, "shared cache operation failed");
                self.drop_connection();
                self.failed(what);
                Err(Down)
            }
            Err(_) => {
                tracing::debug!(operation = what, "shared cache operation timed out");
                self.drop_connection();
                self.failed(what);
                Err(Down)
            }
        }
    }

    fn drop_connection(&self) {
        if let Ok(mut slot) = self.conn.try_lock() {
            *slot = None;
        }
    }

    /// The value at `key`.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, Down> {
        self.run("GET", |mut c| async move { c.get(key).await })
            .await
    }

    /// Sets `key` to `value`, expiring after `ttl`.
    pub async fn put(&self, key: &str, value: &[u8], ttl: Duration) -> Result<(), Down> {
        let ms = ttl.as_millis().max(1) as u64;
        self.run(
            "SET",
            |mut c| async move { c.pset_ex(key, value, ms).await },
        )
        .await
    }

    /// Sets `key` to `value`, without expiry.
    pub async fn set(&self, key: &str, value: &[u8]) -> Result<(), Down> {
        self.run("SET", |mut c| async move { c.set(key, value).await })
            .await
    }

    /// Takes the lock `key` for `owner` if nobody holds it (`SET NX PX`).
    pub async fn try_lock(&self, key: &str, owner: &str, ttl: Duration) -> Result<bool, Down> {
        let ms = ttl.as_millis().max(1) as u64;
        self.run("SET NX", |mut c| async move {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(owner)
                .arg("NX")
                .arg("PX")
                .arg(ms)
                .query_async(&mut c)
                .await?;
            Ok(set.is_some())
        })
        .await
    }

    /// Deletes `key` only if it still holds `expected` (a lock's owner, an entry's bytes).
    pub async fn delete_if(&self, key: &str, expected: &[u8]) -> Result<bool, Down> {
        self.run("EVALSHA", |mut c| async move {
            let deleted: i64 = Script::new(DELETE_IF_EQUAL)
                .key(key)
                .arg(expected)
                .invoke_async(&mut c)
                .await?;
            Ok(deleted == 1)
        })
        .await
    }

    /// Publishes `message` on `channel`.
    pub async fn publish(&self, channel: &str, message: &str) -> Result<(), Down> {
        self.run("PUBLISH", |mut c| async move {
            let _receivers: i64 = c.publish(channel, message).await?;
            Ok(())
        })
        .await
    }

    /// `PING`, for `check --fetch`.
    pub async fn ping(&self) -> Result<(), Down> {
        self.run("PING", |mut c| async move {
            redis::cmd("PING")
                .query_async::<String>(&mut c)
                .await
                .map(drop)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_breaker_opens_after_two_failures_and_never_pauses_past_four_seconds() {
        let now = Instant::now();
        let mut b = Breaker::new();
        let ms = Duration::from_millis;
        // (failures so far, the pause the next failure opens)
        let cases = [
            (0, None),
            (1, Some(ms(250))),
            (2, Some(ms(500))),
            (3, Some(ms(1000))),
            (4, Some(ms(2000))),
            (5, Some(ms(4000))),
            (6, Some(ms(4000))),
            (7, Some(ms(4000))),
        ];
        for (before, want) in cases {
            assert_eq!(b.failures, before);
            assert_eq!(b.failed(now), want, "failure #{}", before + 1);
        }
        assert!(!b.allows(now) && !b.allows(now + ms(3999)));
        assert!(
            b.allows(now + ms(4000)),
            "a probe within 4 s: rejoined within 5 s"
        );
        assert!(b.succeeded());
        assert!(b.allows(now) && b.failures == 0);
        assert_eq!(
            b.failed(now),
            None,
            "closed again: one failure does not open it"
        );
    }
}
