//! `[limits]`: how long the proxy waits on a caller, how many connections it holds, and how
//! much memory replay copies may take. Every wait a caller controls has a bound here.

use std::time::Duration;

use serde::Deserialize;

use super::Findings;

/// `[limits]`, validated. Connection limits and timeouts apply to connections accepted
/// after a reload; the replay budget's size applies to requests after it.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// TLS with the caller inside an intercepted tunnel, ClientHello included.
    pub handshake_timeout: Duration,
    /// The CONNECT line and each request head (on HTTP/1.1 also the wait for the next
    /// request on a kept-alive connection: hyper times both the same way).
    pub header_timeout: Duration,
    /// Reading the rest of a request body for the replay copy after an early 401.
    pub body_timeout: Duration,
    /// An HTTP/2 caller connection with no open stream for this long is closed.
    pub idle_timeout: Duration,
    /// A blind CONNECT tunnel with no bytes either way for this long is closed.
    pub tunnel_idle_timeout: Duration,
    /// Caller connections open at once; beyond it new ones are closed at accept.
    pub max_connections: usize,
    /// Caller connections open at once from one peer IP address.
    pub max_connections_per_source: usize,
    /// Bytes all replay copies together may hold; beyond it bodies stream without one.
    pub replay_buffer_total_bytes: usize,
    /// Concurrent streams per intercepted HTTP/2 connection.
    pub h2_max_concurrent_streams: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(super) struct RawLimits {
    handshake_timeout_secs: u64,
    header_timeout_secs: u64,
    body_timeout_secs: u64,
    idle_timeout_secs: u64,
    tunnel_idle_timeout_secs: u64,
    max_connections: u64,
    max_connections_per_source: u64,
    replay_buffer_total_bytes: u64,
    h2_max_concurrent_streams: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        Self {
            handshake_timeout_secs: 10,
            header_timeout_secs: 10,
            body_timeout_secs: 10,
            idle_timeout_secs: 90,
            tunnel_idle_timeout_secs: 300,
            max_connections: 4096,
            max_connections_per_source: 1024,
            replay_buffer_total_bytes: 64 << 20,
            h2_max_concurrent_streams: 100,
        }
    }
}

/// One key's allowed range, checked with its name in the message.
fn bounded(found: &mut Findings, key: &str, value: u64, max: u64) -> u64 {
    if value == 0 || value > max {
        found.problem(format!(
            "limits.{key} must be between 1 and {max} (got {value})"
        ));
    }
    value.clamp(1, max)
}

impl RawLimits {
    /// `[limits]`, checked: every key positive and within a sane bound.
    pub(super) fn validate(self, found: &mut Findings) -> LimitSettings {
        const DAY: u64 = 86_400;
        let mut secs = |key: &str, value: u64| Duration::from_secs(bounded(found, key, value, DAY));
        let handshake_timeout = secs("handshake_timeout_secs", self.handshake_timeout_secs);
        let header_timeout = secs("header_timeout_secs", self.header_timeout_secs);
        let body_timeout = secs("body_timeout_secs", self.body_timeout_secs);
        let idle_timeout = secs("idle_timeout_secs", self.idle_timeout_secs);
        let tunnel_idle_timeout = secs("tunnel_idle_timeout_secs", self.tunnel_idle_timeout_secs);
        let count = |found: &mut Findings, key: &str, value: u64, max: u64| {
            usize::try_from(bounded(found, key, value, max)).unwrap_or(usize::MAX)
        };
        let max_connections = count(found, "max_connections", self.max_connections, 1 << 20);
        let max_connections_per_source = count(
            found,
            "max_connections_per_source",
            self.max_connections_per_source,
            1 << 20,
        );
        let replay_buffer_total_bytes = count(
            found,
            "replay_buffer_total_bytes",
            self.replay_buffer_total_bytes,
            1 << 40,
        );
        let streams = bounded(
            found,
            "h2_max_concurrent_streams",
            self.h2_max_concurrent_streams,
            10_000,
        );
        LimitSettings {
            handshake_timeout,
            header_timeout,
            body_timeout,
            idle_timeout,
            tunnel_idle_timeout,
            max_connections,
            max_connections_per_source,
            replay_buffer_total_bytes,
            h2_max_concurrent_streams: u32::try_from(streams).unwrap_or(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_and_huge_values_are_refused_by_key() {
        let raw = RawLimits {
            header_timeout_secs: 0,
            max_connections: 0,
            h2_max_concurrent_streams: 1 << 40,
            ..RawLimits::default()
        };
        let mut found = Findings::default();
        let limits = raw.validate(&mut found);
        let all = found.problems.join("\n");
        assert!(all.contains("limits.header_timeout_secs"), "{all}");
        assert!(all.contains("limits.max_connections must"), "{all}");
        assert!(all.contains("limits.h2_max_concurrent_streams"), "{all}");
        assert_eq!(found.problems.len(), 3, "{all}");
        assert_eq!(limits.body_timeout, Duration::from_secs(10));
    }
}
