//! Prometheus metrics, served as text on the admin listener's `/metrics`.
//!
//! Names follow Prometheus conventions (`_total` counters, `_seconds` histograms). Labels are
//! bounded: route and client names come from the config, status as a class (`2xx`), OAuth
//! error codes from the RFC registries (anything else is `other`). No label ever carries a
//! token, a secret, a path or a query.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The `process_*` series (Prometheus' standard process metrics), collected at each render.
static PROCESS: OnceLock<metrics_process::Collector> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide recorder (once; later calls return the same handle). `None`
/// when another recorder was installed first.
pub fn init() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?;
            let handle = builder.install_recorder().ok()?;
            describe();
            describe_ops();
            PROCESS
                .get_or_init(metrics_process::Collector::default)
                .describe();
            Some(handle)
        })
        .as_ref()
}

/// The metrics in Prometheus text format.
pub fn render() -> String {
    match init() {
        Some(handle) => {
            if let Some(process) = PROCESS.get() {
                process.collect();
            }
            handle.run_upkeep();
            handle.render()
        }
        None => "# metrics recorder unavailable\n".into(),
    }
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(
        "oauth_egress_requests_total",
        "Proxied requests by route and status class"
    );
    describe_histogram!(
        "oauth_egress_request_duration_seconds",
        Unit::Seconds,
        "Time from the request to the upstream's response head, by route"
    );
    describe_counter!(
        "oauth_egress_token_requests_total",
        "Token endpoint requests by client, outcome and OAuth error"
    );
    describe_histogram!(
        "oauth_egress_token_request_duration_seconds",
        Unit::Seconds,
        "Token endpoint latency by client (including retries)"
    );
    describe_counter!(
        "oauth_egress_token_cache_lookups_total",
        "Token lookups by route, hit or miss"
    );
    describe_counter!(
        "oauth_egress_token_refresh_ahead_total",
        "Background renewals started before expiry, by client"
    );
    describe_gauge!(
        "oauth_egress_refresh_token_unsaved",
        "1 while a rotated refresh token could not be saved to its file (kept in memory, save retried; a restart would lose it)"
    );
    describe_counter!(
        "oauth_egress_retries_total",
        "Requests resent, by route and reason (401: fresh token; dpop_nonce: new proof)"
    );
    describe_counter!(
        "oauth_egress_connects_total",
        "CONNECT requests by action: intercept, tunnel, deny"
    );
    describe_counter!(
        "oauth_egress_policy_total",
        "Destinations the destination policy refused (deny) or, in report mode, would refuse (would_deny), by rule"
    );
    describe_counter!(
        "oauth_egress_caller_requests_total",
        "Answers by caller ([[caller]] name, or unidentified) and status class"
    );
    describe_gauge!("oauth_egress_open_connections", "Open caller connections");
    describe_shared();
    describe_counter!(
        "oauth_egress_connections_refused_total",
        "Caller connections closed at accept, by reason: max_connections, per_source"
    );
    describe_counter!(
        "oauth_egress_connections_closed_total",
        "Caller connections closed by a limit, by reason: handshake_timeout, header_timeout, idle_timeout, tunnel_idle_timeout"
    );
    describe_counter!(
        "oauth_egress_replay_budget_refused_total",
        "Request bodies sent without a replay copy because limits.replay_buffer_total_bytes was spent"
    );
    describe_counter!(
        "oauth_egress_config_reloads_total",
        "Configuration reloads by outcome"
    );
}

/// The `[cache] backend = "redis"` families.
fn describe_shared() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "oauth_egress_shared_cache_total",
        "Misses and renewals that asked the shared store: hit (the fleet had the token) or miss (this replica fetched it)"
    );
    describe_counter!(
        "oauth_egress_shared_cache_lock_waits_total",
        "Waits for another replica's token request"
    );
    describe_counter!(
        "oauth_egress_shared_cache_lock_takeovers_total",
        "Fleet locks taken over after the holder's expired"
    );
    describe_counter!(
        "oauth_egress_shared_cache_errors_total",
        "Shared store operations that failed or timed out"
    );
    describe_gauge!(
        "oauth_egress_shared_cache_up",
        "1 while the shared store answers, 0 while this replica works alone"
    );
    describe_counter!(
        "oauth_egress_shared_cache_decrypt_failures_total",
        "Shared values no configured key opens (not used)"
    );
}

/// The series added for operating by looking (issue 15): token expiry, AS nonce resends,
/// build info, the last configuration load.
fn describe_ops() {
    use metrics::{describe_counter, describe_gauge};
    describe_gauge!(
        "oauth_egress_token_expiry_timestamp_seconds",
        "When the route's cached token stops being sent (unix seconds; set at each scrape while one is usable)"
    );
    describe_counter!(
        "oauth_egress_unauthorized_after_retry_total",
        "Requests still answered 401 after the one resend with a fresh token, by route"
    );
    describe_counter!(
        "oauth_egress_token_dpop_nonce_retries_total",
        "Token requests resent with the nonce the authorization server asked for (use_dpop_nonce), by client"
    );
    describe_gauge!(
        "oauth_egress_build_info",
        "Always 1; the version as a label"
    );
    describe_gauge!(
        "oauth_egress_config_last_reload_successful",
        "1 if the last configuration load (start or reload) succeeded, else 0"
    );
    describe_gauge!(
        "oauth_egress_config_last_reload_success_timestamp_seconds",
        "When the configuration was last loaded successfully (unix seconds)"
    );
}

/// Registers every series a scrape should show before the first request: each metric
/// family, at zero, for every route and client named (called at start and after each
/// reload, so new routes and clients show at once; series of removed ones keep their last
/// value, as Prometheus counters should). Histograms start with empty buckets.
pub(crate) fn register<'a>(
    routes: impl IntoIterator<Item = &'a str>,
    clients: impl IntoIterator<Item = &'a str>,
    callers: impl IntoIterator<Item = &'a str>,
    shared: bool,
) {
    if init().is_none() {
        return;
    }
    for route in routes {
        let name = route.to_string();
        for status in ["2xx", "4xx", "5xx"] {
            counter!("oauth_egress_requests_total", "route" => name.clone(), "status" => status)
                .increment(0);
        }
        for result in ["hit", "miss"] {
            counter!("oauth_egress_token_cache_lookups_total", "route" => name.clone(), "result" => result)
                .increment(0);
        }
        counter!("oauth_egress_unauthorized_after_retry_total", "route" => name.clone())
            .increment(0);
        for reason in ["401", "dpop_nonce"] {
            counter!("oauth_egress_retries_total", "route" => name.clone(), "reason" => reason)
                .increment(0);
        }
        let _ = histogram!("oauth_egress_request_duration_seconds", "route" => name);
    }
    for client in clients {
        let client = client.to_string();
        counter!(
            "oauth_egress_token_requests_total",
            "client" => client.clone(),
            "outcome" => "ok",
            "error" => "none"
        )
        .increment(0);
        counter!("oauth_egress_token_dpop_nonce_retries_total", "client" => client.clone())
            .increment(0);
        counter!("oauth_egress_token_refresh_ahead_total", "client" => client.clone()).increment(0);
        let _ =
            histogram!("oauth_egress_token_request_duration_seconds", "client" => client.clone());
    }
    for caller in callers.into_iter().chain(["unidentified"]) {
        for status in ["2xx", "4xx", "5xx"] {
            counter!("oauth_egress_caller_requests_total", "caller" => caller.to_string(), "status" => status)
                .increment(0);
        }
    }
    for action in ["intercept", "tunnel", "deny"] {
        counter!("oauth_egress_connects_total", "action" => action).increment(0);
    }
    for outcome in ["ok", "rejected"] {
        counter!("oauth_egress_config_reloads_total", "outcome" => outcome).increment(0);
    }
    gauge!("oauth_egress_open_connections").increment(0.0);
    if shared {
        counter!("oauth_egress_shared_cache_total", "result" => "hit").increment(0);
        counter!("oauth_egress_shared_cache_total", "result" => "miss").increment(0);
        for name in [
            "oauth_egress_shared_cache_lock_waits_total",
            "oauth_egress_shared_cache_lock_takeovers_total",
            "oauth_egress_shared_cache_errors_total",
            "oauth_egress_shared_cache_decrypt_failures_total",
        ] {
            counter!(name).increment(0);
        }
        gauge!("oauth_egress_shared_cache_up").increment(0.0);
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// An OAuth error code from RFC 6749, 8693, 8707 and 9449, or `other`.
fn oauth_error(code: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "invalid_target",
        "access_denied",
        "server_error",
        "temporarily_unavailable",
        "use_dpop_nonce",
        "invalid_dpop_proof",
    ];
    KNOWN
        .iter()
        .find(|k| **k == code)
        .copied()
        .unwrap_or("other")
}

/// A proxied request finished.
pub(crate) fn request(route: &str, status: u16, elapsed: Duration) {
    counter!("oauth_egress_requests_total", "route" => route.to_string(), "status" => status_class(status))
        .increment(1);
    histogram!("oauth_egress_request_duration_seconds", "route" => route.to_string())
        .record(elapsed.as_secs_f64());
}

/// A token lookup on a route.
pub(crate) fn token_lookup(route: &str, hit: bool) {
    counter!("oauth_egress_token_cache_lookups_total", "route" => route.to_string(), "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

/// A token request finished: `outcome` is `ok` or the failure kind.
pub(crate) fn token_request(
    client: &str,
    outcome: &'static str,
    error: Option<&str>,
    elapsed: Duration,
) {
    counter!(
        "oauth_egress_token_requests_total",
        "client" => client.to_string(),
        "outcome" => outcome,
        "error" => error.map_or("none", oauth_error)
    )
    .increment(1);
    histogram!("oauth_egress_token_request_duration_seconds", "client" => client.to_string())
        .record(elapsed.as_secs_f64());
}

/// A background renewal started.
pub(crate) fn refresh_ahead(client: &str) {
    counter!("oauth_egress_token_refresh_ahead_total", "client" => client.to_string()).increment(1);
}

/// Whether the rotated refresh token of `file` is held in memory only (its save failed).
pub(crate) fn refresh_token_unsaved(file: &str, unsaved: bool) {
    gauge!("oauth_egress_refresh_token_unsaved", "file" => file.to_string()).set(if unsaved {
        1.0
    } else {
        0.0
    });
}

/// A request resent with a fresh token was refused again (401).
pub(crate) fn unauthorized_after_retry(route: &str) {
    counter!("oauth_egress_unauthorized_after_retry_total", "route" => route.to_string())
        .increment(1);
}

/// A request was resent (`reason`: `401` with a fresh token, `dpop_nonce` with a new proof).
pub(crate) fn retry(route: &str, reason: &'static str) {
    counter!("oauth_egress_retries_total", "route" => route.to_string(), "reason" => reason)
        .increment(1);
}

/// A caller's CONNECT, tunnel, request or refusal was answered with `status` (the caller a
/// configured name or `unidentified`: bounded).
pub(crate) fn caller(caller: &str, status: u16) {
    counter!("oauth_egress_caller_requests_total", "caller" => caller.to_string(), "status" => status_class(status))
        .increment(1);
}

/// A CONNECT was answered (`intercept`, `tunnel`, `deny`).
pub(crate) fn connect(action: &'static str) {
    counter!("oauth_egress_connects_total", "action" => action).increment(1);
}

/// A destination refused (`deny`) or let through in report mode (`would_deny`), by rule.
pub(crate) fn policy(action: &'static str, rule: &'static str) {
    counter!("oauth_egress_policy_total", "action" => action, "rule" => rule).increment(1);
}

/// A caller connection opened (+1) or closed (-1).
pub(crate) fn open_connections(delta: f64) {
    gauge!("oauth_egress_open_connections").increment(delta);
}

/// A caller connection was closed at accept (`max_connections`, `per_source`).
pub(crate) fn connection_refused(reason: &'static str) {
    counter!("oauth_egress_connections_refused_total", "reason" => reason).increment(1);
}

/// A caller connection was closed by a timeout (`handshake_timeout`, `header_timeout`,
/// `idle_timeout`, `tunnel_idle_timeout`).
pub(crate) fn connection_closed(reason: &'static str) {
    counter!("oauth_egress_connections_closed_total", "reason" => reason).increment(1);
}

/// A body went without a replay copy: the budget was spent.
pub(crate) fn replay_budget_refused() {
    counter!("oauth_egress_replay_budget_refused_total").increment(1);
}

/// A configuration reload, `ok` or `rejected`: the counter and the last-reload gauges.
pub fn reload(ok: bool) {
    let outcome = if ok { "ok" } else { "rejected" };
    counter!("oauth_egress_config_reloads_total", "outcome" => outcome).increment(1);
    if ok {
        config_loaded();
    } else {
        gauge!("oauth_egress_config_last_reload_successful").set(0.0);
    }
}

/// The configuration was loaded (at start, or by a reload): the last-reload gauges, and
/// `oauth_egress_build_info`.
pub fn config_loaded() {
    gauge!("oauth_egress_config_last_reload_successful").set(1.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    gauge!("oauth_egress_config_last_reload_success_timestamp_seconds").set(now);
    gauge!("oauth_egress_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
}

/// When `route`'s cached token stops being sent (unix seconds).
pub fn token_expiry(route: &str, client: &str, at_unix: f64) {
    gauge!(
        "oauth_egress_token_expiry_timestamp_seconds",
        "route" => route.to_string(),
        "client" => client.to_string()
    )
    .set(at_unix);
}

/// A token request was resent with the authorization server's DPoP nonce.
pub(crate) fn token_dpop_nonce_retry(client: &str) {
    counter!("oauth_egress_token_dpop_nonce_retries_total", "client" => client.to_string())
        .increment(1);
}

/// A miss or renewal asked the shared store: `hit` when the fleet had the token.
pub(crate) fn shared_cache_lookup(hit: bool) {
    counter!("oauth_egress_shared_cache_total", "result" => if hit { "hit" } else { "miss" })
        .increment(1);
}

/// A replica waited for another's token request (the fleet's lock was held).
pub(crate) fn shared_cache_lock_wait() {
    counter!("oauth_egress_shared_cache_lock_waits_total").increment(1);
}

/// A waiter took the lock over after its holder's expired (the holder died or stalled).
pub(crate) fn shared_cache_takeover() {
    counter!("oauth_egress_shared_cache_lock_takeovers_total").increment(1);
}

/// A shared-store operation failed or timed out.
pub(crate) fn shared_cache_error() {
    counter!("oauth_egress_shared_cache_errors_total").increment(1);
}

/// Whether the shared store answers (0 while this replica works alone).
pub(crate) fn shared_cache_up(up: bool) {
    gauge!("oauth_egress_shared_cache_up").set(if up { 1.0 } else { 0.0 });
}

/// A shared value opened with none of the keys (or was malformed): not used.
pub(crate) fn shared_cache_unopenable() {
    counter!("oauth_egress_shared_cache_decrypt_failures_total").increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        // No empty label value: a token request without an OAuth error says `none`.
        assert_ne!(oauth_error(""), "");
        assert_eq!(status_class(204), "2xx");
        assert_eq!(status_class(599), "5xx");
        assert_eq!(oauth_error("invalid_client"), "invalid_client");
        assert_eq!(oauth_error("my-custom-error-with-user-id-42"), "other");
    }
}
