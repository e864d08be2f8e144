//! By hand, never in CI (every test here is `#[ignore]`): what `[cache] backend = "redis"`
//! costs and saves, on separate `oauth-egress run` replicas (the debug binary), one
//! development authorization server and echo API in this process, and a real `redis-server`.
//! Numbers printed, nothing timed is asserted. Run one at a time on a quiet machine:
//!
//! ```sh
//! cargo test --test fleet_bench -- --ignored --nocapture --test-threads 1
//! ```
//!
//! - `hit_cost`: keep-alive GETs through a `memory` replica and a `redis` replica, in
//!   alternating 1 s slices: requests/s, p50, p99 (a hit never touches Redis, so they match).
//! - `cold_miss`: the first request on each of 40 routes (40 tokens), `memory` vs `redis`:
//!   the p50 Redis adds to a miss (GET, `SET NX`, `SET`, release, around the token request).
//! - `token_requests_per_lifetime`: steady traffic over 4 lifetimes of a 3 s token on 1, 3
//!   and 10 replicas sharing one Redis, and on 3 replicas without it.

use std::time::{Duration, Instant};

mod fleet_support;
use fleet_support::{Redis, Replica, Servers};

const SECRET: &str = "bench-secret-0123456789";

/// The dev authorization server and echo API the replicas use (client `bench-client`).
async fn servers() -> Servers {
    fleet_support::servers("bench", SECRET).await
}

/// A replica's config: `routes` routes `/r0`.. (each its own scope, so its own token), and
/// the shared cache at `redis` if given (else `memory`).
fn config(s: &Servers, routes: usize, redis: Option<&str>, tokens: &str) -> String {
    let cache = match redis {
        Some(url) => format!(
            "[cache]\nbackend = \"redis\"\nurl = \"{url}\"\nencryption_key = {{ file = \"cache.key\" }}\ntimeout_ms = 1000\n"
        ),
        None => String::new(),
    };
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{{PORT}}\"\nupstream_roots = [\"upstream-ca.pem\"]\n\
         [admin]\nlisten = \"127.0.0.1:{{ADMIN}}\"\n[tokens]\n{tokens}\n{cache}\
         [clients.bench]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"bench-client\"\n\
         auth = \"client_secret_basic\"\nclient_secret = {{ file = \"secret\" }}\n",
        endpoint = s.auth.token_endpoint(),
    );
    for i in 0..routes {
        text.push_str(&format!(
            "[[route]]\nname = \"r{i}\"\nhost = \"localhost\"\nport = {}\npath_prefix = \"/r{i}/\"\n\
             client = \"bench\"\nscopes = [\"scope-{i}\"]\n",
            s.api.addr.port()
        ));
    }
    text
}

fn replica(s: &Servers, name: &str, config: &str) -> Replica {
    let files: [(&str, &[u8]); 3] = [
        ("upstream-ca.pem", s.pki.ca_cert_pem().as_bytes()),
        ("secret", SECRET.as_bytes()),
        ("cache.key", s.key.as_bytes()),
    ];
    Replica::start(name, &s.dir.path().join(name), config, &files)
}

/// One GET of `path` through `replica`: its latency, or `None` if it was not a 200.
async fn get(s: &Servers, replica: &Replica, path: &str) -> Option<Duration> {
    let url = format!("https://localhost:{}{path}", s.api.addr.port());
    let start = Instant::now();
    let res = replica.client.get(url).send().await.ok()?;
    let ok = res.status() == 200;
    res.bytes().await.ok()?;
    ok.then(|| start.elapsed())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a by-hand benchmark: cargo test --test fleet_bench -- --ignored --nocapture"]
async fn hit_cost() {
    let s = servers().await;
    let redis = Redis::start(&[]);
    let memory = replica(&s, "memory", &config(&s, 1, None, ""));
    let shared = replica(&s, "redis", &config(&s, 1, Some(&redis.url()), ""));
    let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    let mut errors = [0usize; 2];
    for (i, r) in [&memory, &shared].iter().enumerate() {
        for _ in 0..50 {
            get(&s, r, "/r0/warm")
                .await
                .unwrap_or_else(|| panic!("{i}"));
        }
    }
    for _slice in 0..6 {
        for (i, r) in [&memory, &shared].iter().enumerate() {
            let end = Instant::now() + Duration::from_secs(1);
            while Instant::now() < end {
                match get(&s, r, "/r0/hit").await {
                    Some(d) => lat[i].push(d),
                    None => errors[i] += 1,
                }
            }
        }
    }
    println!("cache hit, keep-alive, 1 connection, 6 x 1 s slices per backend:");
    for (i, name) in ["memory", "redis"].iter().enumerate() {
        lat[i].sort();
        println!(
            "  {name:6}: {:.0} req/s, p50 {:.3} ms, p99 {:.3} ms, {} errors",
            lat[i].len() as f64 / 6.0,
            ms(percentile(&lat[i], 0.5)),
            ms(percentile(&lat[i], 0.99)),
            errors[i]
        );
    }
    let looked_up = shared
        .metric("oauth_egress_shared_cache_total", "result=\"hit\"")
        .await
        + shared
            .metric("oauth_egress_shared_cache_total", "result=\"miss\"")
            .await;
    println!("  Redis look-ups on the redis replica over the whole run: {looked_up} (the first miss only)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a by-hand benchmark: cargo test --test fleet_bench -- --ignored --nocapture"]
async fn cold_miss() {
    const ROUTES: usize = 40;
    let s = servers().await;
    let redis = Redis::start(&[]);
    let memory = replica(&s, "memory", &config(&s, ROUTES, None, ""));
    let shared = replica(&s, "redis", &config(&s, ROUTES, Some(&redis.url()), ""));
    // Warm the connections (a route of its own, not measured).
    for r in [&memory, &shared] {
        get(&s, r, "/r0/warm").await.unwrap();
        get(&s, r, "/r0/warm").await.unwrap();
    }
    let mut lat: [Vec<Duration>; 2] = [Vec::new(), Vec::new()];
    for route in 1..ROUTES {
        for (i, r) in [&memory, &shared].iter().enumerate() {
            let d = get(&s, r, &format!("/r{route}/cold")).await.unwrap();
            lat[i].push(d);
        }
    }
    println!(
        "cold miss (first request on a route), {} routes:",
        ROUTES - 1
    );
    for (i, name) in ["memory", "redis"].iter().enumerate() {
        lat[i].sort();
        println!(
            "  {name:6}: p50 {:.3} ms, p90 {:.3} ms",
            ms(percentile(&lat[i], 0.5)),
            ms(percentile(&lat[i], 0.9))
        );
    }
    let added = ms(percentile(&lat[1], 0.5)) - ms(percentile(&lat[0], 0.5));
    println!("  redis adds {added:.3} ms to the p50 of a miss");
    println!("  token requests: {}", s.auth.token_requests());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a by-hand benchmark: cargo test --test fleet_bench -- --ignored --nocapture"]
async fn token_requests_per_lifetime() {
    let tokens = "request_timeout_ms = 1000\nexpiry_skew_secs = 0\nrefresh_ahead_percent = 10";
    for (n, shared) in [(1, true), (3, true), (10, true), (3, false)] {
        let s = servers().await;
        s.auth.set_token_lifetime(3);
        let redis = Redis::start(&[]);
        let url = redis.url();
        let cfg = config(&s, 1, shared.then_some(url.as_str()), tokens);
        let fleet: Vec<Replica> = (0..n)
            .map(|i| replica(&s, &format!("r{i}"), &cfg))
            .collect();
        let before = s.auth.token_requests();
        let end = Instant::now() + Duration::from_secs(12);
        let mut failed = 0;
        let mut sent = 0;
        while Instant::now() < end {
            let round = fleet.iter().map(|r| get(&s, r, "/r0/steady"));
            for d in futures_util::future::join_all(round).await {
                sent += 1;
                failed += usize::from(d.is_none());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let asked = s.auth.token_requests() - before;
        println!(
            "{n:2} replicas, {}: {asked} token requests over 4 lifetimes of a 3 s token ({:.1} per lifetime), {sent} requests, {failed} failed",
            if shared { "redis " } else { "memory" },
            asked as f64 / 4.0
        );
    }
}
