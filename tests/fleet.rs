//! `[cache] backend = "redis"`: separate `oauth-egress run` replicas, one development
//! authorization server and echo API (in this process), and a real `redis-server` each test
//! starts on a free loopback port. The fleet asks for one token where each replica would ask
//! for its own, shares a revocation, survives a killed lock holder and a Redis outage, and
//! leaves nothing usable in Redis.

use std::time::Duration;

mod fleet_support;
use fleet_support::{Cluster, Redis, Replica, Servers};

const SECRET: &str = "fleet-secret-0123456789";

/// The dev authorization server and echo API the replicas use (client `fleet-client`).
async fn servers() -> Servers {
    fleet_support::servers("fleet", SECRET).await
}

/// A replica's config: routes `/a` to `/d` (each its own scope, so its own token), the
/// shared cache at `url` with `cache` lines added.
fn config(s: &Servers, url: &str, tokens: &str, cache: &str) -> String {
    let mut text = format!(
        "[proxy]\nlisten = \"127.0.0.1:{{PORT}}\"\nupstream_roots = [\"upstream-ca.pem\"]\n\
         [admin]\nlisten = \"127.0.0.1:{{ADMIN}}\"\n[tokens]\n{tokens}\n\
         [cache]\nbackend = \"redis\"\nurl = \"{url}\"\nencryption_key = {{ file = \"cache.key\" }}\n{cache}\n\
         [clients.fleet]\ntoken_endpoint = \"{endpoint}\"\nclient_id = \"fleet-client\"\n\
         auth = \"client_secret_basic\"\nclient_secret = {{ file = \"secret\" }}\n",
        endpoint = s.auth.token_endpoint(),
    );
    for route in ["a", "b", "c", "d"] {
        text.push_str(&format!(
            "[[route]]\nname = \"{route}\"\nhost = \"localhost\"\nport = {}\npath_prefix = \"/{route}\"\n\
             client = \"fleet\"\nscopes = [\"scope-{route}\"]\n",
            s.api.addr.port()
        ));
    }
    text
}

fn replica(s: &Servers, name: &str, config: &str, key: &str) -> Replica {
    let files: [(&str, &[u8]); 3] = [
        ("upstream-ca.pem", s.pki.ca_cert_pem().as_bytes()),
        ("secret", SECRET.as_bytes()),
        ("cache.key", key.as_bytes()),
    ];
    Replica::start(name, &s.dir.path().join(name), config, &files)
}

/// `n` concurrent GETs of `path` spread round-robin over `replicas`: their statuses.
async fn burst(s: &Servers, replicas: &[&Replica], path: &str, n: usize) -> Vec<u16> {
    let port = s.api.addr.port();
    let requests = (0..n).map(|i| {
        let client = replicas[i % replicas.len()].client.clone();
        let url = format!("https://localhost:{port}{path}");
        async move {
            match client.get(url).send().await {
                Ok(res) => res.status().as_u16(),
                Err(_) => 0,
            }
        }
    });
    futures_util::future::join_all(requests).await
}

fn all_ok(statuses: &[u16]) -> bool {
    statuses.iter().all(|s| *s == 200)
}

/// The `jti` of the token `replica` sends on `path`.
async fn jti(s: &Servers, replica: &Replica, path: &str) -> String {
    let url = format!("https://localhost:{}{path}", s.api.addr.port());
    let res = replica.client.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    body["jti"].as_str().unwrap().to_string()
}

fn three(s: &Servers, config: &str) -> Vec<Replica> {
    ["r1", "r2", "r3"]
        .iter()
        .map(|name| replica(s, name, config, &s.key))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_replicas_ask_once_share_a_revocation_and_leave_nothing_in_clear() {
    let s = servers().await;
    s.auth.set_token_lifetime(120);
    let redis = Redis::start(&[]);
    let cfg = config(
        &s,
        &redis.url(),
        "request_timeout_ms = 5000",
        "timeout_ms = 1000",
    );
    let fleet = three(&s, &cfg);
    let refs: Vec<&Replica> = fleet.iter().collect();

    let statuses = burst(&s, &refs, "/a/cold", 300).await;
    assert!(all_ok(&statuses), "{statuses:?}");
    assert_eq!(
        s.auth.token_requests(),
        1,
        "300 cold requests over 3 replicas"
    );

    // A revoked token under traffic on every replica: one new token for the fleet.
    let old = jti(&s, &fleet[0], "/a/jti").await;
    s.api.revoke(&old);
    // The replica that meets the 401 tells the others: they drop their copy before they
    // ever send it (no 401, no resend on them).
    assert_eq!(burst(&s, &[&fleet[0]], "/a/first", 1).await, vec![200]);
    assert_eq!(s.auth.token_requests(), 2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(all_ok(&burst(&s, &refs[1..], "/a/told", 10).await));
    for r in &fleet[1..] {
        let resent = r
            .metric("oauth_egress_retries_total", "reason=\"401\"")
            .await;
        assert_eq!(resent, 0.0, "{} sent the revoked token", r.name);
    }
    for _ in 0..3 {
        let statuses = burst(&s, &refs, "/a/after", 30).await;
        assert!(all_ok(&statuses), "{statuses:?}");
    }
    assert_eq!(
        s.auth.token_requests(),
        2,
        "one new token after the revocation"
    );
    for r in &fleet {
        assert_ne!(jti(&s, r, "/a/new").await, old, "{} still sends it", r.name);
    }

    // Nothing Redis holds shows a token, the client, its secret or a scope.
    let dump = redis.dump(None);
    assert!(
        dump.iter().any(|(k, _)| k.ends_with(b":tok")),
        "no entry written"
    );
    for (k, v) in &dump {
        for needle in [
            &b"eyJ"[..],
            b"fleet",
            SECRET.as_bytes(),
            b"scope-",
            old.as_bytes(),
        ] {
            let shown = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
            assert!(
                !shown(k) && !shown(v),
                "{:?} shows {:?}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(needle)
            );
        }
        assert!(k.starts_with(b"oauth-egress:"), "{k:?}");
    }

    // A replica with another key cannot open the fleet's token: it fetches alone, and does
    // not overwrite what the others use.
    let stranger = replica(
        &s,
        "stranger",
        &cfg,
        &oauth_egress::token::shared::generate_key().unwrap(),
    );
    let before = s.auth.token_requests();
    assert_eq!(
        burst(&s, &[&stranger], "/a/stranger", 5).await,
        vec![200; 5]
    );
    assert_eq!(s.auth.token_requests(), before + 1, "fetched alone");
    assert!(
        stranger
            .metric("oauth_egress_shared_cache_decrypt_failures_total", "")
            .await
            >= 1.0
    );
    assert_eq!(burst(&s, &[&fleet[1]], "/a/still", 5).await, vec![200; 5]);
    assert_eq!(
        s.auth.token_requests(),
        before + 1,
        "the fleet's entry is intact"
    );
}

/// Waits (bounded) until `cond` holds; false if it never did.
async fn eventually(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn steady_traffic_over_four_lifetimes_renews_once_per_lifetime_for_the_fleet() {
    let s = servers().await;
    s.auth.set_token_lifetime(3);
    let redis = Redis::start(&[]);
    let tokens = "request_timeout_ms = 1000\nexpiry_skew_secs = 0\nrefresh_ahead_percent = 10";
    let fleet = three(&s, &config(&s, &redis.url(), tokens, "timeout_ms = 1000"));
    let refs: Vec<&Replica> = fleet.iter().collect();
    let end = tokio::time::Instant::now() + Duration::from_secs(12);
    let mut failed = 0;
    while tokio::time::Instant::now() < end {
        failed += burst(&s, &refs, "/b/steady", 6)
            .await
            .iter()
            .filter(|s| **s != 200)
            .count();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let asked = s.auth.token_requests();
    println!("{asked} token requests over 4 lifetimes for 3 replicas");
    assert_eq!(failed, 0);
    // 12 s of 3 s tokens: 4 lifetimes, about one request each for the whole fleet (one
    // replica alone makes the same), where 3 independent replicas make 12 or more.
    assert!(
        (4..=6).contains(&asked),
        "{asked} token requests over 4 lifetimes"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lock_holder_killed_mid_request_is_taken_over() {
    let s = servers().await;
    let redis = Redis::start(&[]);
    // A token request takes 1.5 s; the fleet's lock expires after 2.5 s.
    s.auth.set_delay(Duration::from_millis(1500));
    let tokens = "request_timeout_ms = 2500\nretry_max_elapsed_ms = 0";
    let mut fleet = three(&s, &config(&s, &redis.url(), tokens, "timeout_ms = 1000"));
    let holder = fleet[0].client.clone();
    let url = format!("https://localhost:{}/a/held", s.api.addr.port());
    let first = tokio::spawn(async move { holder.get(url).send().await.map(|r| r.status()) });
    assert!(eventually(Duration::from_secs(10), || s.auth.token_requests() == 1).await);
    let locks = redis.dump(None);
    assert!(
        locks.iter().any(|(k, _)| k.ends_with(b":lock")),
        "the holder took no lock"
    );
    fleet[0].kill();
    assert!(first.await.unwrap().is_err(), "the killed replica answered");

    let rest: Vec<&Replica> = fleet[1..].iter().collect();
    let statuses = burst(&s, &rest, "/a/after-kill", 20).await;
    assert!(all_ok(&statuses), "{statuses:?}");
    assert_eq!(
        s.auth.token_requests(),
        2,
        "one takeover for the two survivors"
    );
    let takeovers = fleet[1]
        .metric("oauth_egress_shared_cache_lock_takeovers_total", "")
        .await
        + fleet[2]
            .metric("oauth_egress_shared_cache_lock_takeovers_total", "")
            .await;
    assert_eq!(takeovers, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_outage_costs_no_request_and_sharing_resumes() {
    let s = servers().await;
    let mut redis = Redis::start(&[]);
    let tokens = "request_timeout_ms = 5000";
    let fleet = three(&s, &config(&s, &redis.url(), tokens, "timeout_ms = 100"));
    let refs: Vec<&Replica> = fleet.iter().collect();
    assert!(all_ok(&burst(&s, &refs, "/a/warm", 30).await));
    assert_eq!(s.auth.token_requests(), 1);

    // Frozen (SIGSTOP): every Redis operation hangs until timeout_ms. Cached tokens are
    // served; a cold key is fetched by each replica on its own; nobody waits for Redis
    // (a request stuck on it would hit the client's 20 s timeout and count as failed).
    redis.signal("STOP");
    for _ in 0..3 {
        let statuses = burst(&s, &refs, "/a/frozen", 30).await;
        assert!(
            all_ok(&statuses),
            "cached tokens while Redis hangs: {statuses:?}"
        );
    }
    let statuses = burst(&s, &refs, "/b/frozen-cold", 30).await;
    assert!(
        all_ok(&statuses),
        "cold key while Redis hangs: {statuses:?}"
    );
    assert_eq!(s.auth.token_requests(), 1 + 3);

    // Down (SIGKILL): the same, with refused connections.
    redis.stop();
    for _ in 0..3 {
        let statuses = burst(&s, &refs, "/a/outage", 30).await;
        assert!(
            all_ok(&statuses),
            "cached tokens while Redis is down: {statuses:?}"
        );
    }
    let statuses = burst(&s, &refs, "/c/outage-cold", 30).await;
    assert!(
        all_ok(&statuses),
        "cold key while Redis is down: {statuses:?}"
    );
    assert_eq!(s.auth.token_requests(), 1 + 3 + 3);
    for r in &fleet {
        assert_eq!(
            r.metric("oauth_egress_shared_cache_up", "").await,
            0.0,
            "{}",
            r.name
        );
    }

    redis.restart();
    // Rejoined within 5 s of Redis answering: the next cold key is fetched once.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let statuses = burst(&s, &refs, "/d/back", 30).await;
    assert!(all_ok(&statuses), "{statuses:?}");
    assert_eq!(s.auth.token_requests(), 1 + 3 + 3 + 1, "sharing resumed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_acl_user_limited_to_the_prefix_shares_and_a_wrong_password_works_alone() {
    let s = servers().await;
    // The default user is off; `egress` may touch only keys under the prefix and publish.
    let redis = Redis::start(&[
        "--user",
        "default",
        "off",
        "--user",
        "egress",
        "on",
        ">egress-pw-0123",
        "~fleet:*",
        "&fleet:*",
        "+@all",
    ]);
    std::fs::write(s.dir.path().join("pw-ok"), "egress-pw-0123").unwrap();
    std::fs::write(s.dir.path().join("pw-bad"), "wrong-pw-9876").unwrap();
    let cache = |pw: &str| {
        format!(
            "timeout_ms = 1000\nkey_prefix = \"fleet:\"\nusername = \"egress\"\npassword = {{ file = \"{}\" }}",
            s.dir.path().join(pw).display()
        )
    };
    let ok = config(&s, &redis.url(), "", &cache("pw-ok"));
    let (r1, r2) = (
        replica(&s, "acl1", &ok, &s.key),
        replica(&s, "acl2", &ok, &s.key),
    );
    assert!(all_ok(&burst(&s, &[&r1, &r2], "/a/acl", 40).await));
    assert_eq!(s.auth.token_requests(), 1);
    let dump = redis.dump(Some(("egress", "egress-pw-0123")));
    assert!(!dump.is_empty() && dump.iter().all(|(k, _)| k.starts_with(b"fleet:{")));

    let bad = replica(
        &s,
        "acl-bad",
        &config(&s, &redis.url(), "", &cache("pw-bad")),
        &s.key,
    );
    assert!(all_ok(&burst(&s, &[&bad], "/a/acl", 10).await));
    assert_eq!(
        s.auth.token_requests(),
        2,
        "refused by Redis: fetched alone"
    );
    let logs = bad_logs(bad);
    assert!(!logs.contains("wrong-pw-9876"), "the password is logged");
}

fn bad_logs(mut replica: Replica) -> String {
    replica.kill();
    replica.drain_logs().join("\n")
}

fn oauth_egress(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String) {
    let out = std::process::Command::new(fleet_support::BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("OAUTH_EGRESS_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

#[test]
fn cache_keygen_prints_a_fresh_32_byte_key() {
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let (code, first) = oauth_egress(dir.path(), &["cache", "keygen"]);
    assert_eq!(code, Some(0), "{first}");
    let (_, second) = oauth_egress(dir.path(), &["cache", "keygen"]);
    let key = base64::engine::general_purpose::STANDARD
        .decode(first.trim())
        .unwrap();
    assert_eq!(key.len(), 32);
    assert_ne!(first, second);
}

/// `check` on bad `[cache]` settings: exit 64, each problem named by its key, no secret
/// echoed; a generated DPoP key with `redis` is a warning.
#[test]
fn check_names_every_cache_problem_without_echoing_secrets() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("short.key"), "c2hvcnQta2V5LXZhbHVl\n").unwrap();
    let base = "[clients.c]\ntoken_endpoint = \"https://idp.example/token\"\nclient_id = \"c\"\n\
                auth = \"client_secret_basic\"\nclient_secret = { env = \"FLEET_CHECK_SECRET\" }\n\
                dpop = true\n[[route]]\nname = \"api\"\nhost = \"api.example\"\nclient = \"c\"\ndpop = true\n";
    let cases = [
        ("backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"", "cache.encryption_key is required"),
        ("backend = \"redis\"\nurl = \"redis://u:hunter2-pw@h:6379\"\nencryption_key = { file = \"short.key\" }", "must not carry credentials"),
        ("backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nencryption_key = { file = \"short.key\" }", "cache.encryption_key decodes to 15 bytes"),
        ("backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nencryption_key = { file = \"short.key\" }\ntimeout_ms = 0", "cache.timeout_ms must be between 1 and 5000"),
        ("backend = \"memcached\"", "cache.backend must be \"memory\" or \"redis\""),
        ("backend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nencryption_key = \"literal\"", "literal values are refused"),
        ("backend = \"redis\"\nurl = \"redis+cluster://127.0.0.1:1,,127.0.0.1:2\"\nencryption_key = { file = \"short.key\" }", "an empty node in redis+cluster://"),
        ("backend = \"redis\"\nurl = \"rediss+cluster://127.0.0.1:1/3\"\nencryption_key = { file = \"short.key\" }", "Redis Cluster has only database 0"),
    ];
    for (cache, want) in cases {
        let text = format!("[cache]\n{cache}\n{base}");
        std::fs::write(dir.path().join("r.toml"), text).unwrap();
        let out = std::process::Command::new(fleet_support::BIN)
            .args(["check", "-c", "r.toml"])
            .current_dir(dir.path())
            .env("FLEET_CHECK_SECRET", "s")
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(64), "{cache}: {all}");
        assert!(all.contains(want), "{cache}: {all}");
        for secret in ["hunter2-pw", "c2hvcnQta2V5", "\"literal\""] {
            assert!(!all.contains(secret), "{secret} echoed: {all}");
        }
    }
    let good = oauth_egress::token::shared::generate_key().unwrap();
    std::fs::write(dir.path().join("good.key"), good).unwrap();
    let text = format!("[cache]\nbackend = \"redis\"\nurl = \"redis://127.0.0.1:1\"\nencryption_key = {{ file = \"good.key\" }}\n{base}");
    std::fs::write(dir.path().join("r.toml"), text).unwrap();
    let out = std::process::Command::new(fleet_support::BIN)
        .args(["check", "-c", "r.toml"])
        .current_dir(dir.path())
        .env("FLEET_CHECK_SECRET", "s")
        .output()
        .unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0), "{all}");
    assert!(all.contains("DPoP key generated per process"), "{all}");
}

/// `check --fetch`: Redis answers, and a key that cannot open what another replica wrote
/// is refused (exit 64) before any replica would fall back on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_fetch_proves_redis_answers_and_the_key_opens_the_fleets_values() {
    let s = servers().await;
    let redis = Redis::start(&[]);
    let cfg = config(&s, &redis.url(), "", "timeout_ms = 1000");
    let dir = s.dir.path().to_owned();
    let run = move |key: String| {
        let (dir, cfg) = (dir.clone(), cfg.clone());
        tokio::task::spawn_blocking(move || {
            let text = cfg.replace("{PORT}", "0").replace("{ADMIN}", "0");
            std::fs::write(dir.join("routes.toml"), text).unwrap();
            std::fs::write(dir.join("cache.key"), key).unwrap();
            std::fs::write(dir.join("secret"), SECRET).unwrap();
            oauth_egress(&dir, &["check", "--fetch", "-c", "routes.toml"])
        })
    };
    std::fs::write(s.dir.path().join("upstream-ca.pem"), s.pki.ca_cert_pem()).unwrap();
    let (code, all) = run(s.key.clone()).await.unwrap();
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("cache: Redis answers"), "{all}");
    let other = oauth_egress::token::shared::generate_key().unwrap();
    let (code, all) = run(other).await.unwrap();
    assert_eq!(code, Some(64), "{all}");
    assert!(
        all.contains("does not open what another replica wrote"),
        "{all}"
    );
    drop(redis);
    let (code, all) = run(s.key.clone()).await.unwrap();
    assert_eq!(code, Some(64), "{all}");
    assert!(all.contains("Redis did not answer"), "{all}");
}

/// A `refresh_token` route on 3 replicas, each with its own copy of the seed file, with the
/// development server's rotation and reuse detection on: 10 rotations spread over the
/// replicas, each presented once (a reuse would revoke the family and fail the requests).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_token_route_rotates_once_per_fleet_without_reuse() {
    let s = servers().await;
    s.auth.set_rotate_refresh_tokens(true);
    let redis = Redis::start(&[]);
    let seed = s.auth.issue_refresh_token("fleet-client", None);
    let mut cfg = config(
        &s,
        &redis.url(),
        "invalidate_cooldown_secs = 0",
        "timeout_ms = 1000",
    );
    cfg.push_str(&format!(
        "[[route]]\nname = \"r\"\nhost = \"localhost\"\nport = {}\npath_prefix = \"/r\"\nclient = \"fleet\"\n\
         grant = \"refresh_token\"\nrefresh_token = {{ file = \"rt\" }}\n",
        s.api.addr.port()
    ));
    let fleet: Vec<Replica> = ["f1", "f2", "f3"]
        .iter()
        .map(|name| {
            let files: [(&str, &[u8]); 4] = [
                ("upstream-ca.pem", s.pki.ca_cert_pem().as_bytes()),
                ("secret", SECRET.as_bytes()),
                ("cache.key", s.key.as_bytes()),
                ("rt", seed.as_bytes()),
            ];
            Replica::start(name, &s.dir.path().join(name), &cfg, &files)
        })
        .collect();
    let refs: Vec<&Replica> = fleet.iter().collect();
    assert!(all_ok(&burst(&s, &refs, "/r/cold", 30).await));
    assert_eq!(s.auth.refresh_grants(), 1);
    for i in 0..10 {
        // Revoke the fleet's access token; the next replica to meet the 401 rotates.
        let jti = jti(&s, &fleet[i % 3], "/r/jti").await;
        s.api.revoke(&jti);
        let statuses = burst(&s, &refs, "/r/after", 9).await;
        assert!(all_ok(&statuses), "rotation {}: {statuses:?}", i + 1);
    }
    assert_eq!(s.auth.refresh_grants(), 11, "one rotation per revocation");
    let dump = redis.dump(None);
    let rt = dump
        .iter()
        .find(|(k, _)| k.ends_with(b":rt"))
        .expect("no shared refresh token");
    assert!(!rt
        .1
        .windows(seed.len().min(12))
        .any(|w| w == &seed.as_bytes()[..seed.len().min(12)]));
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
        lines.join("\n")
    )
}

/// `rediss://`: Redis's certificate is verified against `proxy.upstream_roots` (a test CA);
/// two replicas share one token over TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_to_redis_is_verified_and_shares() {
    let s = servers().await;
    let (chain, key) = s.pki.leaf(&["127.0.0.1"]).unwrap();
    let tls_dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path, ca_path) = (
        tls_dir.path().join("redis.crt"),
        tls_dir.path().join("redis.key"),
        tls_dir.path().join("ca.crt"),
    );
    std::fs::write(&cert_path, pem("CERTIFICATE", &chain[0])).unwrap();
    std::fs::write(&key_path, pem("PRIVATE KEY", key.secret_der())).unwrap();
    std::fs::write(&ca_path, s.pki.ca_cert_pem()).unwrap();
    let (c, k, a) = (
        cert_path.display().to_string(),
        key_path.display().to_string(),
        ca_path.display().to_string(),
    );
    let redis = Redis::start(&[
        "--port",
        "0",
        "--tls-port",
        "{PORT}",
        "--tls-cert-file",
        &c,
        "--tls-key-file",
        &k,
        "--tls-ca-cert-file",
        &a,
        "--tls-auth-clients",
        "no",
    ]);
    let url = format!("rediss://127.0.0.1:{}", redis.port);
    let cfg = config(&s, &url, "", "timeout_ms = 1000");
    let (r1, r2) = (
        replica(&s, "tls1", &cfg, &s.key),
        replica(&s, "tls2", &cfg, &s.key),
    );
    assert!(all_ok(&burst(&s, &[&r1, &r2], "/a/tls", 40).await));
    assert_eq!(s.auth.token_requests(), 1, "shared over TLS");
    assert!(
        r1.metric("oauth_egress_shared_cache_errors_total", "")
            .await
            == 0.0
    );
}

/// `url = "redis+cluster://..."`: a real 3-primary Redis Cluster on loopback (made with
/// `redis-cli --cluster create`), 3 replicas. A cold burst on four routes (four hash tags,
/// spread over the nodes' slots) asks once per route; a revocation costs the fleet one new
/// token and reaches the other replicas over the cluster's pub/sub, also after a node drops
/// their subscriptions (they move to another node); `check --fetch` answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_redis_cluster_shares_tokens_and_revocations_like_one_redis() {
    if !fleet_support::have_redis_cli() {
        eprintln!("SKIPPED a_redis_cluster_shares_tokens_and_revocations_like_one_redis: no redis-cli (apt-get install redis-tools)");
        return;
    }
    let s = servers().await;
    s.auth.set_token_lifetime(120);
    let cluster = tokio::task::spawn_blocking(Cluster::start).await.unwrap();
    let cfg = config(
        &s,
        &cluster.url(),
        "request_timeout_ms = 5000",
        "timeout_ms = 1000",
    );
    let fleet = three(&s, &cfg);
    let refs: Vec<&Replica> = fleet.iter().collect();

    for (i, route) in ["a", "b", "c", "d"].iter().enumerate() {
        let statuses = burst(&s, &refs, &format!("/{route}/cold"), 90).await;
        assert!(all_ok(&statuses), "/{route}: {statuses:?}");
        assert_eq!(
            s.auth.token_requests(),
            i + 1,
            "90 cold requests on /{route}"
        );
    }
    let dumps = cluster.dumps();
    let entries: Vec<usize> = dumps
        .iter()
        .map(|d| d.iter().filter(|(k, _)| k.ends_with(b":tok")).count())
        .collect();
    println!("entries per cluster node: {entries:?}");
    assert_eq!(entries.iter().sum::<usize>(), 4, "{entries:?}");
    for (k, v) in dumps.iter().flatten() {
        for needle in [&b"eyJ"[..], b"fleet", SECRET.as_bytes(), b"scope-"] {
            let shown = |b: &[u8]| b.windows(needle.len()).any(|w| w == needle);
            assert!(!shown(k) && !shown(v), "{:?}", String::from_utf8_lossy(k));
        }
    }

    let old = jti(&s, &fleet[0], "/a/jti").await;
    s.api.revoke(&old);
    assert_eq!(burst(&s, &[&fleet[0]], "/a/first", 1).await, vec![200]);
    assert_eq!(s.auth.token_requests(), 5);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(all_ok(&burst(&s, &refs[1..], "/a/told", 10).await));
    for r in &fleet[1..] {
        let resent = r
            .metric("oauth_egress_retries_total", "reason=\"401\"")
            .await;
        assert_eq!(resent, 0.0, "{} sent the revoked token", r.name);
    }
    let statuses = burst(&s, &refs, "/a/after", 60).await;
    assert!(all_ok(&statuses), "{statuses:?}");
    assert_eq!(
        s.auth.token_requests(),
        5,
        "one new token after the revocation"
    );

    // A dropped subscription moves to another node and still hears the fleet.
    let channel = "oauth-egress:invalidate";
    let subs = cluster.subscribers(channel);
    println!("subscribers per cluster node: {subs:?}");
    assert_eq!(subs.iter().sum::<i64>(), 3, "{subs:?}");
    let busiest = (0..3).max_by_key(|i| subs[*i]).unwrap();
    cluster.kick_subscribers(busiest);
    let moved = eventually(Duration::from_secs(10), || {
        let now = cluster.subscribers(channel);
        now.iter().sum::<i64>() == 3 && now[busiest] == 0
    })
    .await;
    assert!(moved, "{:?}", cluster.subscribers(channel));
    // (Route b: a slot forgets a refused token at most once per invalidate_cooldown_secs.)
    let old = jti(&s, &fleet[0], "/b/jti").await;
    s.api.revoke(&old);
    assert_eq!(burst(&s, &[&fleet[0]], "/b/again", 1).await, vec![200]);
    assert_eq!(s.auth.token_requests(), 6);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(all_ok(&burst(&s, &refs[1..], "/b/told-again", 10).await));
    for r in &fleet[1..] {
        let resent = r
            .metric("oauth_egress_retries_total", "reason=\"401\"")
            .await;
        assert_eq!(resent, 0.0, "{} sent the second revoked token", r.name);
    }

    let dir = s.dir.path().join("r1");
    let (code, all) = tokio::task::spawn_blocking(move || {
        oauth_egress(&dir, &["check", "--fetch", "-c", "routes.toml"])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{all}");
    assert!(all.contains("cache: Redis answers"), "{all}");
}

/// `rediss+cluster://`: a 3-primary cluster serving TLS only (`--tls-cluster yes`), its
/// certificate verified against `proxy.upstream_roots` (a test CA) on every node the client
/// learns from the cluster; two replicas share one token.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tls_to_a_redis_cluster_is_verified_and_shares() {
    if !fleet_support::have_redis_cli() {
        eprintln!("SKIPPED tls_to_a_redis_cluster_is_verified_and_shares: no redis-cli (apt-get install redis-tools)");
        return;
    }
    let s = servers().await;
    let (chain, key) = s.pki.leaf(&["127.0.0.1"]).unwrap();
    let tls_dir = tempfile::tempdir().unwrap();
    let (bus_chain, bus_key) = s.pki.client_leaf(&["redis-node"]).unwrap();
    let paths =
        ["redis.crt", "redis.key", "bus.crt", "bus.key", "ca.crt"].map(|f| tls_dir.path().join(f));
    std::fs::write(&paths[0], pem("CERTIFICATE", &chain[0])).unwrap();
    std::fs::write(&paths[1], pem("PRIVATE KEY", key.secret_der())).unwrap();
    std::fs::write(&paths[2], pem("CERTIFICATE", &bus_chain[0])).unwrap();
    std::fs::write(&paths[3], pem("PRIVATE KEY", bus_key.secret_der())).unwrap();
    std::fs::write(&paths[4], s.pki.ca_cert_pem()).unwrap();
    let [c, k, bc, bk, a] = paths.map(|p| p.display().to_string());
    let cluster = tokio::task::spawn_blocking(move || Cluster::start_tls(&c, &k, &bc, &bk, &a))
        .await
        .unwrap();
    let cfg = config(&s, &cluster.tls_url(), "", "timeout_ms = 1000");
    let (r1, r2) = (
        replica(&s, "ctls1", &cfg, &s.key),
        replica(&s, "ctls2", &cfg, &s.key),
    );
    for route in ["a", "b", "c"] {
        let path = format!("/{route}/tls");
        assert!(all_ok(&burst(&s, &[&r1, &r2], &path, 40).await), "{path}");
    }
    assert_eq!(s.auth.token_requests(), 3, "shared over TLS, one per route");
    for r in [&r1, &r2] {
        let errors = r.metric("oauth_egress_shared_cache_errors_total", "").await;
        assert_eq!(errors, 0.0, "{}", r.name);
    }
}
