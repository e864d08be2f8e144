//! Token renewal and refresh tokens, against the development authorization server over
//! real loopback TLS: how often a steady caller makes the proxy ask for a token (paused
//! tokio clock, real `TokenSlot`, real token endpoint), and refresh tokens surviving a
//! server that rotates them and revokes the whole family when a spent one comes back.

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use oauth_egress::config::Config;
use oauth_egress::token::{Fetcher, Lookup, TokenCache, TokenSlot};
use oauth_egress_devserver::auth_server::{AuthServer, DevClient};
use oauth_egress_devserver::pki::TestPki;
use tokio::net::TcpListener;
use tokio::time::Instant;

const CLIENT_ID: &str = "refresh-client";
const SECRET: &str = "refresh-s3cret";

struct Env {
    pki: TestPki,
    auth: AuthServer,
    dir: tempfile::TempDir,
}

impl Env {
    async fn start() -> Env {
        let pki = TestPki::new("refresh test CA").unwrap();
        let tls = pki.server_config(&["localhost", "127.0.0.1"]).unwrap();
        let auth = AuthServer::start(
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
            tls,
            "localhost",
            vec![DevClient {
                id: CLIENT_ID.into(),
                secret: SECRET.into(),
                allowed_scopes: None,
            }],
        )
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        // `config` points the client at this file.
        std::fs::write(dir.path().join("client-secret"), SECRET).unwrap();
        Env { pki, auth, dir }
    }

    /// A config with `[tokens]` lines `tokens` and the `[[route]]` tables `routes`.
    fn config(&self, tokens: &str, routes: &str) -> Config {
        let toml = format!(
            r#"
[proxy]
listen = "127.0.0.1:0"

[tokens]
{tokens}

[clients.c]
token_endpoint = "{endpoint}"
client_id = "{CLIENT_ID}"
auth = "client_secret_basic"
client_secret = {{ file = "client-secret" }}

{routes}
"#,
            endpoint = self.auth.token_endpoint(),
        );
        oauth_egress::config::from_toml(&toml, self.dir.path(), "test")
            .unwrap_or_else(|e| panic!("{e}\n{toml}"))
    }

    /// The token cache a proxy on `config` would build (`previous`: the one it replaces).
    fn cache(&self, config: &Config) -> TokenCache {
        let roots = oauth_egress::tls::root_store(&[], &[self.pki.ca_cert_der()], false).unwrap();
        let fetcher = Fetcher::new(config.tokens.clone(), roots, &config.clients).unwrap();
        TokenCache::new(Arc::new(fetcher))
    }

    /// The slot of route `name`.
    fn slot(
        &self,
        cache: &TokenCache,
        config: &Config,
        name: &str,
        previous: Option<&TokenCache>,
    ) -> Arc<TokenSlot> {
        let spec = config.routes.iter().find(|r| r.name == name).unwrap();
        let client = config.clients[spec.client.as_deref().unwrap()].clone();
        cache
            .route_token(&client, spec, previous)
            .slot(&HeaderMap::new())
            .unwrap()
    }

    fn refresh_file(&self, name: &str) -> std::path::PathBuf {
        let path = self.dir.path().join(name);
        let token = self.auth.issue_refresh_token(CLIENT_ID, None);
        std::fs::write(&path, format!("{token}\n")).unwrap();
        path
    }
}

fn cc_route(name: &str, scope: &str) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nhost = \"{name}.example\"\nclient = \"c\"\nscopes = [\"{scope}\"]\n"
    )
}

fn refresh_route(name: &str, scope: &str, file: &std::path::Path) -> String {
    format!(
        "[[route]]\nname = \"{name}\"\nhost = \"{name}.example\"\nclient = \"c\"\nscopes = [\"{scope}\"]\ngrant = \"refresh_token\"\nrefresh_token = {{ file = \"{}\" }}\n",
        file.display()
    )
}

/// One row of the renewal table.
struct Row {
    lifetime: u64,
    fetches: usize,
    per_lifetime: f64,
    waits: usize,
    max_wait: Duration,
    late: usize,
}

/// A caller asking for the token every second (200 times per lifetime for short ones) for
/// `lifetimes` lifetimes, the token endpoint answering after `delay`. Every token handed out
/// must still be usable; a fetch that outlasts the token's life counts as `late`.
async fn steady_caller(env: &Env, lifetime: u64, delay: Duration, lifetimes: u32) -> Row {
    env.auth.set_token_lifetime(lifetime);
    env.auth.set_delay(delay);
    let config = env.config("", &cc_route("steady", &format!("steady:{lifetime}")));
    let cache = env.cache(&config);
    let slot = env.slot(&cache, &config, "steady", None);
    let before = env.auth.token_requests();
    let period = (Duration::from_secs(lifetime) / 200).min(Duration::from_secs(1));
    let started = Instant::now();
    let end = started + Duration::from_secs(lifetime) * lifetimes;
    let (mut waits, mut max_wait, mut late) = (0, Duration::ZERO, 0);
    let mut first = true;
    while Instant::now() < end {
        let asked = Instant::now();
        let (token, lookup) = match slot.get().await {
            Ok(got) => got,
            Err(err) => {
                assert!(err.kind() == "late", "{err}");
                late += 1;
                continue;
            }
        };
        let now = Instant::now();
        assert!(
            token.is_usable_at(now),
            "a {lifetime} s token past its usable end"
        );
        if lookup == Lookup::Miss && !std::mem::take(&mut first) {
            waits += 1;
            max_wait = max_wait.max(now - asked);
        }
        tokio::time::sleep(period).await;
    }
    // Let a renewal under way finish, so it is counted.
    tokio::time::sleep(delay + Duration::from_millis(10)).await;
    let fetches = env.auth.token_requests() - before;
    Row {
        lifetime,
        fetches,
        // The first fetch is the cold start; renewals per lifetime of traffic.
        per_lifetime: (fetches - 1) as f64 / f64::from(lifetimes),
        waits,
        max_wait,
        late,
    }
}

/// Lifetimes (seconds) and how many of each the caller runs through.
const LIFETIMES: [(u64, u32); 6] = [
    (10, 20),
    (15, 20),
    (60, 20),
    (300, 20),
    (3600, 5),
    (86400, 2),
];

fn print_table(title: &str, rows: &[Row]) {
    println!("\n{title}");
    println!("| lifetime | token requests | renewals per lifetime | callers that waited | longest wait | late tokens refused |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} s | {} | {:.3} | {} | {:.1} s | {} |",
            r.lifetime,
            r.fetches,
            r.per_lifetime,
            r.waits,
            r.max_wait.as_secs_f64(),
            r.late
        );
    }
}

/// Issue 10 item 7: at most 1.15 token requests per lifetime for any lifetime, with default
/// `[tokens]` settings; steady traffic never waits on a fast token endpoint.
#[tokio::test(start_paused = true)]
async fn a_steady_caller_renews_about_once_per_lifetime() {
    let env = Env::start().await;
    let mut rows = Vec::new();
    for (lifetime, n) in LIFETIMES {
        rows.push(steady_caller(&env, lifetime, Duration::from_millis(50), n).await);
    }
    print_table(
        "steady caller (one request a second, or 200 per lifetime), token endpoint answering in 50 ms (defaults: expiry_skew_secs = 60, refresh_ahead_percent = 8, request_timeout_ms = 10000)",
        &rows,
    );
    for r in &rows {
        assert!(
            r.per_lifetime <= 1.15,
            "{} s: {:.3} token requests per lifetime",
            r.lifetime,
            r.per_lifetime
        );
        assert_eq!(
            r.waits, 0,
            "{} s: a caller waited for a renewal",
            r.lifetime
        );
        assert_eq!(r.late, 0, "{} s", r.lifetime);
    }
}

/// Issue 10 item 7: with a token endpoint as slow as the request timeout allows, a renewal
/// still finishes before the token's usable end wherever the lifetime leaves room for the
/// timeout (≥ 167 s with the defaults); shorter tokens make callers wait, never use an
/// expired token.
#[tokio::test(start_paused = true)]
async fn a_slow_token_endpoint_renews_before_the_usable_end() {
    let env = Env::start().await;
    let mut rows = Vec::new();
    for (lifetime, n) in LIFETIMES {
        rows.push(steady_caller(&env, lifetime, Duration::from_millis(9_900), n).await);
    }
    print_table(
        "steady caller, token endpoint answering in 9.9 s (request_timeout_ms = 10000)",
        &rows,
    );
    for r in rows.iter().filter(|r| r.lifetime >= 167) {
        assert_eq!(
            r.waits, 0,
            "{} s: a caller waited for a renewal",
            r.lifetime
        );
        assert!(
            r.per_lifetime <= 1.15,
            "{} s: {:.3}",
            r.lifetime,
            r.per_lifetime
        );
        assert_eq!(r.late, 0, "{} s", r.lifetime);
    }
}

/// Issue 18, path 1: a 2xx answer that is refused (`expires_in: 0`, an unknown `token_type`,
/// an access token that cannot go in a header, none at all) still carried the rotated
/// refresh token, and the old one is spent: the new one must be saved, or the next refresh
/// is a reuse and the server revokes the family.
#[tokio::test]
async fn a_rotated_refresh_token_is_saved_even_when_the_answer_is_refused() {
    let env = Env::start().await;
    let cases = [
        serde_json::json!({ "expires_in": 0 }),
        serde_json::json!({ "token_type": "mac" }),
        serde_json::json!({ "access_token": "not token68" }),
        serde_json::json!({ "access_token": null }),
    ];
    for (i, patch) in cases.iter().enumerate() {
        let file = env.refresh_file(&format!("refused-{i}"));
        let config = env.config("", &refresh_route("r", "s", &file));
        let cache = env.cache(&config);
        let slot = env.slot(&cache, &config, "r", None);
        env.auth.patch_next_answers(1, patch.clone());
        let err = slot.get().await.unwrap_err();
        assert_eq!(err.kind(), "bad_response", "{patch}: {err}");
        slot.get()
            .await
            .unwrap_or_else(|e| panic!("after {patch}, the next refresh failed: {e}"));
    }
}

/// Issue 18, path 2: a rotated token that cannot be written (here: its directory vanished,
/// as a full disk or a read-only mount would refuse it) is kept in memory and used; the
/// save is retried and succeeds once the directory is back.
#[tokio::test]
async fn a_rotated_refresh_token_that_cannot_be_saved_is_used_and_saved_later() {
    let env = Env::start().await;
    let dir = env.dir.path().join("volume");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("refresh");
    let first = env.auth.issue_refresh_token(CLIENT_ID, None);
    std::fs::write(&file, format!("{first}\n")).unwrap();
    env.auth.set_token_lifetime(2);
    let config = env.config("", &refresh_route("r", "s", &file));
    let cache = env.cache(&config);
    let slot = env.slot(&cache, &config, "r", None);

    env.auth.set_delay(Duration::from_millis(400));
    let fetch = tokio::spawn({
        let slot = slot.clone();
        async move { slot.get().await.map(|_| ()) }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::remove_dir_all(&dir).unwrap();
    fetch.await.unwrap().unwrap_or_else(|e| {
        panic!("the access token was dropped with the unsaved refresh token: {e}")
    });
    env.auth.set_delay(Duration::ZERO);

    // The token expires; the next refresh uses the rotated token held in memory.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    slot.get()
        .await
        .unwrap_or_else(|e| panic!("the in-memory refresh token was not used: {e}"));

    // The directory is back: the save is retried in the background.
    std::fs::create_dir(&dir).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !file.exists() {
        assert!(std::time::Instant::now() < deadline, "never saved");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A restarted proxy (a new cache and fetcher) redeems the saved token.
    let cache = env.cache(&config);
    let slot = env.slot(&cache, &config, "r", None);
    slot.get()
        .await
        .unwrap_or_else(|e| panic!("the saved refresh token is not the live one: {e}"));
}

/// Issue 18, path 3: after a reload, a route carried over and a changed route share one
/// refresh file; their refreshes must still take turns (one lock per file for the process),
/// or the second sends the token the first just spent and the family is revoked.
#[tokio::test]
async fn routes_sharing_a_refresh_file_take_turns_across_a_reload() {
    let env = Env::start().await;
    let file = env.refresh_file("shared");
    env.auth.set_token_lifetime(1);
    let routes = |b_scope: &str| {
        format!(
            "{}\n{}",
            refresh_route("a", "scope-a", &file),
            refresh_route("b", b_scope, &file)
        )
    };
    let old_config = env.config("", &routes("scope-b"));
    let old = env.cache(&old_config);
    env.slot(&old, &old_config, "a", None).get().await.unwrap();
    env.slot(&old, &old_config, "b", None);

    let new_config = env.config("", &routes("scope-b2"));
    let new = env.cache(&new_config);
    let a = env.slot(&new, &new_config, "a", Some(&old));
    let b = env.slot(&new, &new_config, "b", Some(&old));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.auth.set_delay(Duration::from_millis(300));
    let (ra, rb) = tokio::join!(a.get(), b.get());
    env.auth.set_delay(Duration::ZERO);
    ra.unwrap_or_else(|e| panic!("route a: {e}"));
    rb.unwrap_or_else(|e| panic!("route b: {e}"));
    // The family is alive: a fresh start redeems the file's token.
    let cache = env.cache(&new_config);
    env.slot(&cache, &new_config, "a", None)
        .get()
        .await
        .unwrap_or_else(|e| panic!("family revoked: {e}"));
}

/// Issue 18: a slot carried over a reload runs with the new configuration's fetcher (here:
/// its `[tokens]` request timeout), keeping only its cached token.
#[tokio::test]
async fn a_reload_applies_new_token_settings_to_unchanged_routes() {
    let env = Env::start().await;
    env.auth.set_token_lifetime(1);
    let route = cc_route("r", "reload-settings");
    let old_config = env.config("request_timeout_ms = 10000", &route);
    let old = env.cache(&old_config);
    let (token, _) = env.slot(&old, &old_config, "r", None).get().await.unwrap();

    let new_config = env.config("request_timeout_ms = 200\nretry_max_elapsed_ms = 0", &route);
    let new = env.cache(&new_config);
    let slot = env.slot(&new, &new_config, "r", Some(&old));
    let (carried, lookup) = slot.get().await.unwrap();
    assert!(
        Arc::ptr_eq(&token, &carried) && lookup == Lookup::Hit,
        "token carried over"
    );

    tokio::time::sleep(Duration::from_millis(1100)).await;
    env.auth.set_delay(Duration::from_millis(1500));
    let started = Instant::now();
    let err = slot.get().await.unwrap_err();
    env.auth.set_delay(Duration::ZERO);
    assert!(err.is_timeout(), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(1000),
        "old timeout used"
    );
}

/// Issue 18: `dpop_required` is part of the token's identity: a route that refuses Bearer
/// tokens never shares a slot with one that accepts them.
#[tokio::test]
async fn dpop_required_is_part_of_the_token_key() {
    let env = Env::start().await;
    let routes = format!(
        "{}dpop = true\ndpop_required = true\n\n{}dpop = true\ndpop_required = false\n",
        cc_route("strict", "same"),
        cc_route("lenient", "same")
    );
    let config = env.config("", &routes);
    let cache = env.cache(&config);
    let strict = env.slot(&cache, &config, "strict", None);
    let lenient = env.slot(&cache, &config, "lenient", None);
    assert!(!Arc::ptr_eq(&strict, &lenient), "one slot for both");
}

/// Issue 18: a generated DPoP key (no `dpop_key` file) survives a reload, and so does the
/// token bound to it.
#[tokio::test]
async fn a_generated_dpop_key_and_its_token_survive_a_reload() {
    let env = Env::start().await;
    let route = format!("{}dpop = true\n", cc_route("d", "dpop-reload"));
    let old_config = env.config("", &route);
    let old = env.cache(&old_config);
    let before = env.slot(&old, &old_config, "d", None);
    let (token, _) = before.get().await.unwrap();

    let new_config = env.config("", &route);
    let new = env.cache(&new_config);
    let after = env.slot(&new, &new_config, "d", Some(&old));
    assert_eq!(after.key().dpop, before.key().dpop, "the DPoP key changed");
    let (carried, lookup) = after.get().await.unwrap();
    assert!(Arc::ptr_eq(&token, &carried) && lookup == Lookup::Hit);
}

/// Issue 18: an answer over the size limit is final (not retried: it would be as large next
/// time) and the error says which status it had.
#[tokio::test]
async fn an_oversized_answer_is_final_and_names_its_status() {
    let env = Env::start().await;
    let config = env.config("", &cc_route("big", "oversized"));
    let cache = env.cache(&config);
    let slot = env.slot(&cache, &config, "big", None);
    env.auth
        .patch_next_answers(5, serde_json::json!({ "padding": "x".repeat(300 * 1024) }));
    let before = env.auth.token_requests();
    let err = slot.get().await.unwrap_err();
    env.auth.patch_next_answers(0, serde_json::json!({}));
    assert!(err.to_string().contains("HTTP 200"), "{err}");
    assert_eq!(env.auth.token_requests() - before, 1, "retried: {err}");
}

/// Issue 18: a JWT access token's own `exp` wins over a longer `expires_in`.
#[tokio::test]
async fn a_jwt_access_tokens_own_exp_is_respected() {
    let env = Env::start().await;
    env.auth.set_token_lifetime(30);
    env.auth
        .patch_next_answers(1, serde_json::json!({ "expires_in": 3600 }));
    let config = env.config("", &cc_route("jwt", "own-exp"));
    let cache = env.cache(&config);
    let (token, _) = env.slot(&cache, &config, "jwt", None).get().await.unwrap();
    let left = token.usable_until - Instant::now();
    assert!(
        left <= Duration::from_secs(30),
        "used for {left:?} past its exp"
    );
}

/// Issue 18: an exchanged token is used no longer than the subject token's `exp` minus the
/// skew (here 4 % of what is left of the subject's life).
#[tokio::test]
async fn an_exchanged_token_stops_a_skew_before_its_subject_expires() {
    let env = Env::start().await;
    let workload = oauth_egress_devserver::WorkloadIssuer::new("https://kubernetes.test").unwrap();
    env.auth
        .trust_issuer(workload.iss(), workload.public_key().unwrap());
    let subject = workload
        .mint("system:serviceaccount:x", "idp", Duration::from_secs(20))
        .unwrap();
    let subject_file = env.dir.path().join("sa-token");
    std::fs::write(&subject_file, &subject).unwrap();
    let exp = oauth_egress::token::assertion::unverified_exp(&subject).unwrap();
    let route = format!(
        "{}grant = \"token_exchange\"\nsubject_token = {{ file = \"{}\" }}\n",
        cc_route("x", "exchange"),
        subject_file.display()
    );
    let config = env.config("", &route);
    let cache = env.cache(&config);
    let (token, _) = env.slot(&cache, &config, "x", None).get().await.unwrap();
    let left = token.usable_until - Instant::now();
    let subject_left = Duration::from_secs(exp)
        - std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
    assert!(
        left + Duration::from_millis(500) <= subject_left,
        "used for {left:?}, the subject expires in {subject_left:?}"
    );
}

/// Issue 10 item 11: a refresh-token file in a directory the proxy cannot write (a read-only
/// mount) is reported at start, naming the route, before the server rotates the token.
#[cfg(target_os = "linux")]
#[tokio::test]
async fn a_refresh_file_on_a_read_only_directory_is_reported_with_its_route() {
    let env = Env::start().await;
    let writable = env.refresh_file("ok");
    let routes = format!(
        "{}\n{}",
        refresh_route("fine", "a", &writable),
        // Nobody, root included, may create files in /proc.
        refresh_route("crm", "b", std::path::Path::new("/proc/crm.refresh"))
    );
    let config = env.config("", &routes);
    let problems = oauth_egress::token::refresh_problems(&config);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].0 == "crm" && problems[0].1.contains("not writable"),
        "{problems:?}"
    );
}
