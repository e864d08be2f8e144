//! Micro-benchmarks of the pieces every intercepted request goes through, in the order
//! `intercept/mod.rs` → `forward.rs` runs them:
//!
//! | bench id | what runs | why it matters |
//! |---|---|---|
//! | `route_match/exact` | `RouteTable::find` for an exact host with a path prefix | once per request |
//! | `route_match/wildcard` | `find` for a host only a `*.` route covers | once per request |
//! | `route_match/miss` | `find` for a host no route covers (hash miss + full wildcard scan) | worst case |
//! | `token_cache_hit` | `TokenSlot::get().await` on a warm slot | once per request |
//! | `inject_header` | clone a realistic header map, `strip_hop_by_hop`, drop the caller's `Authorization`, insert `AccessToken::authorization()` | once per request |
//! | `forward_retry_copy` | the `(method, uri, headers)` copy `forward.rs` keeps so a 401 can be retried | once per replayable request |
//! | `leaf_cert/mint` | `CertificateAuthority::server_config` for a host never seen | once per new host |
//! | `leaf_cert/cached` | `server_config` for a host already minted | once per intercepted connection |
//! | `assertion/{es256,rs256,ps256}` | `client_assertion` with a parsed key (ring; RSA 2048) | once per `private_key_jwt` token request |
//!
//! The route table has 50 routes (40 exact, 10 wildcard) built through
//! `config::from_toml` + `Proxy::new` with an in-memory CA, like `oauth-egress run` builds it.
//! The warm token is a real ES256 JWT from an in-process development authorization server
//! ([`AuthServer`]), fetched once before measuring.
//!
//! Async code runs on a current-thread tokio runtime. criterion's `async_tokio` feature is
//! not enabled in `Cargo.toml`, so `token_cache_hit` uses `iter_custom` with one
//! `Runtime::block_on` around each batch of iterations: that is what criterion's `to_async`
//! does, so the number is the cost of `get().await` itself, not of entering the runtime.
//!
//! Run: `cargo bench --bench hot_path` (CI: add `-- --quick`).

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Uri};
use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::proxy::Proxy;
use oauth_egress::secret::SecretString;
use oauth_egress::token::Lookup;
use oauth_egress_devserver::auth_server::{AuthServer, DevClient};
use oauth_egress_devserver::pki::TestPki;
use tokio::net::TcpListener;
use tokio::runtime::Runtime;

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
const SCOPE: &str = "echo:read";
/// The host:port of the route whose token is warmed (nothing listens there; only the token
/// endpoint is contacted).
const TOKEN_HOST: &str = "localhost";
const TOKEN_PORT: u16 = 8443;

/// Everything the benches share; the auth server and runtime live as long as it does.
struct Fixture {
    rt: Runtime,
    _auth: AuthServer,
    proxy: Arc<Proxy>,
    /// Holds the client secret file.
    _dir: tempfile::TempDir,
}

/// A 50-route table: 40 exact routes over 31 hosts (some with ports and path prefixes, one
/// of them the route whose token is warmed) and 10 wildcard routes of two suffix lengths.
fn routes_toml(token_endpoint: &str) -> String {
    let mut toml = format!(
        r#"
[proxy]
listen = "127.0.0.1:0"

[clients.bench]
token_endpoint = "{token_endpoint}"
client_id = "{CLIENT_ID}"
auth = "client_secret_basic"
client_secret = {{ file = "client-secret" }}

[[route]]
name = "warm"
host = "{TOKEN_HOST}"
port = {TOKEN_PORT}
client = "bench"
scopes = ["{SCOPE}"]
audience = "https://{TOKEN_HOST}:{TOKEN_PORT}"
"#
    );
    // 30 hosts; five of them also have a `/v1` route and four a port-specific one: 40 exact
    // routes with the warm one.
    for i in 0..30 {
        let route = |extra: &str| {
            format!("\n[[route]]\nhost = \"svc{i:02}.api.example\"\n{extra}client = \"bench\"\nscopes = [\"{SCOPE}\"]\n")
        };
        toml.push_str(&route(""));
        if i % 3 == 0 && i < 15 {
            toml.push_str(&route("path_prefix = \"/v1\"\n"));
        }
        if i % 3 == 1 && i < 12 {
            toml.push_str(&route("port = 8443\n"));
        }
    }
    for i in 0..10 {
        let suffix = if i % 2 == 0 {
            format!("tenant{i}.corp.example")
        } else {
            format!("eu.tenant{i}.corp.example")
        };
        toml.push_str(&format!(
            "\n[[route]]\nhost = \"*.{suffix}\"\nclient = \"bench\"\nscopes = [\"{SCOPE}\"]\n"
        ));
    }
    toml
}

fn fixture() -> Fixture {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let pki = TestPki::new("bench upstream CA").expect("test PKI");
    let tls = pki
        .server_config(&["localhost", "127.0.0.1"])
        .expect("server TLS config");
    let auth = rt.block_on(async {
        AuthServer::start(
            TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind auth server"),
            tls,
            "localhost",
            vec![DevClient {
                id: CLIENT_ID.into(),
                secret: CLIENT_SECRET.into(),
                allowed_scopes: Some(vec![SCOPE.into()]),
            }],
        )
        .await
        .expect("auth server")
    });
    let toml = routes_toml(&auth.token_endpoint());
    // The CA files are never read or written (the CA is generated in memory); the directory
    // keeps config validation from seeing stray files and holds the client secret.
    let ca_dir = tempfile::tempdir().expect("temp dir");
    // The client reads its secret from this file (`{ file = "client-secret" }`).
    std::fs::write(ca_dir.path().join("client-secret"), CLIENT_SECRET).expect("secret file");
    let config = oauth_egress::config::from_toml(&toml, ca_dir.path(), "hot_path bench config")
        .unwrap_or_else(|e| panic!("{e}\n{toml}"));
    assert_eq!(config.routes.len(), 50, "the table should hold 50 routes");
    let ca = Arc::new(CertificateAuthority::generate().expect("CA"));
    let proxy = Proxy::new(config, ca, &[pki.ca_cert_der()]).expect("proxy");
    Fixture {
        rt,
        _auth: auth,
        proxy,
        _dir: ca_dir,
    }
}

fn route_match(c: &mut Criterion, fx: &Fixture) {
    let routes = &fx.proxy.routes;
    let cases = [
        (
            "exact",
            "svc12.api.example",
            443,
            "/v1/items/42",
            Some("svc12.api.example/v1"),
        ),
        (
            "wildcard",
            "app.eu.tenant5.corp.example",
            443,
            "/reports/2024",
            Some("*.eu.tenant5.corp.example"),
        ),
        ("miss", "unknown.example.org", 443, "/v1/items/42", None),
    ];
    let mut group = c.benchmark_group("route_match");
    for (id, host, port, path, want) in cases {
        let got = routes.find(host, port, path).map(|r| r.spec.name.clone());
        assert_eq!(got.as_deref(), want, "route_match/{id}");
        group.bench_function(id, |b| {
            b.iter(|| {
                routes
                    .find(black_box(host), black_box(port), black_box(path))
                    .is_some()
            })
        });
    }
    group.finish();
}

fn token_cache_hit(c: &mut Criterion, fx: &Fixture) {
    let route = fx
        .proxy
        .routes
        .find(TOKEN_HOST, TOKEN_PORT, "/")
        .expect("warm route")
        .clone();
    let (_, first) = fx
        .rt
        .block_on(
            route
                .token()
                .expect("a token route")
                .slot(&http::HeaderMap::new())
                .expect("token slot")
                .get(),
        )
        .expect("token from the auth server");
    assert_eq!(first, Lookup::Miss);
    let (_, second) = fx
        .rt
        .block_on(
            route
                .token()
                .expect("a token route")
                .slot(&http::HeaderMap::new())
                .expect("token slot")
                .get(),
        )
        .expect("cached token");
    assert_eq!(second, Lookup::Hit);
    c.bench_function("token_cache_hit", |b| {
        b.iter_custom(|iters| {
            fx.rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let got = route
                        .token()
                        .expect("a token route")
                        .slot(&http::HeaderMap::new())
                        .expect("token slot")
                        .get()
                        .await;
                    debug_assert!(matches!(got, Ok((_, Lookup::Hit))));
                    black_box(got.is_ok());
                }
                start.elapsed()
            })
        })
    });
}

/// The headers of a typical request from a legacy service, including the caller's own
/// `Authorization` (which the proxy replaces) and hop-by-hop headers (which it strips).
fn realistic_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut add = |name: &'static str, value: &'static str| {
        h.append(name, HeaderValue::from_static(value));
    };
    add("host", "svc15.api.example");
    add("user-agent", "legacy-billing/4.2.1 (java 17; okhttp 4.12)");
    add("accept", "application/json");
    add("accept-encoding", "gzip, deflate, br");
    add("accept-language", "en-US,en;q=0.9");
    add("content-type", "application/json; charset=utf-8");
    add("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e");
    add(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    );
    add("cookie", "session=abc123; theme=dark");
    add("authorization", "Basic bGVnYWN5OnBhc3N3b3Jk");
    add("connection", "keep-alive");
    add("keep-alive", "timeout=5");
    h
}

fn inject_header(c: &mut Criterion, fx: &Fixture) {
    let route = fx
        .proxy
        .routes
        .find(TOKEN_HOST, TOKEN_PORT, "/")
        .expect("warm route")
        .clone();
    let (token, _) = fx
        .rt
        .block_on(
            route
                .token()
                .expect("a token route")
                .slot(&http::HeaderMap::new())
                .expect("token slot")
                .get(),
        )
        .expect("token");
    let headers = realistic_headers();
    c.bench_function("inject_header", |b| {
        b.iter(|| {
            let mut h = headers.clone();
            oauth_egress::upstream::strip_hop_by_hop(&mut h, false);
            h.remove(header::AUTHORIZATION);
            h.insert(header::AUTHORIZATION, token.authorization());
            black_box(h)
        })
    });
    // forward.rs keeps this copy for every request whose body is replayable (all GETs).
    let mut stripped = headers.clone();
    oauth_egress::upstream::strip_hop_by_hop(&mut stripped, false);
    let method = Method::GET;
    let uri: Uri = "https://svc15.api.example/v1/items/42?expand=owner"
        .parse()
        .expect("uri");
    c.bench_function("forward_retry_copy", |b| {
        b.iter(|| black_box((method.clone(), uri.clone(), stripped.clone())))
    });
}

fn leaf_cert(c: &mut Criterion, fx: &Fixture) {
    let ca = &fx.proxy.ca;
    let mut group = c.benchmark_group("leaf_cert");
    let next = AtomicU64::new(0);
    group.sample_size(30);
    group.bench_function("mint", |b| {
        b.iter_batched(
            || format!("h{}.mint.example", next.fetch_add(1, Ordering::Relaxed)),
            |host| ca.server_config(&host).expect("mint"),
            BatchSize::SmallInput,
        )
    });
    group.sample_size(100);
    ca.server_config("svc15.api.example").expect("mint");
    group.bench_function("cached", |b| {
        b.iter(|| {
            ca.server_config(black_box("svc15.api.example"))
                .expect("cached")
        })
    });
    group.finish();
}

fn benches(c: &mut Criterion) {
    let fx = fixture();
    route_match(c, &fx);
    token_cache_hit(c, &fx);
    inject_header(c, &fx);
    leaf_cert(c, &fx);
    assertion(c);
    dpop_proof(c);
}

/// The cost of a DPoP proof (RFC 9449), paid on every request of a DPoP route: claims, JSON,
/// base64url and an ES256 signature with ring.
fn dpop_proof(c: &mut Criterion) {
    use oauth_egress::sender::dpop::{ath, htu, DpopKey};
    let key = DpopKey::generate().expect("DPoP key");
    let uri: Uri = "https://api.payments.example/v1/orders/42?expand=items"
        .parse()
        .expect("uri");
    let token_hash = ath("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJiaWxsaW5nIn0.c2lnbmF0dXJl");
    c.bench_function("dpop_proof", |b| {
        b.iter(|| {
            black_box(
                key.proof(
                    "POST",
                    &htu(&uri),
                    Some(&token_hash),
                    Some("server-nonce-1"),
                )
                .expect("proof"),
            )
        })
    });
}

/// The cost of a client assertion (`private_key_jwt`), paid once per token request: building
/// the claims and signing them (ring: ES256, RS256 and PS256 with a 2048-bit key), with the
/// key already parsed.
fn assertion(c: &mut Criterion) {
    use oauth_egress::token::assertion::{client_assertion, SigningKey};
    use rsa::pkcs1::EncodeRsaPrivateKey;
    let ec = SecretString::from(rcgen::KeyPair::generate().expect("EC key").serialize_pem());
    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).expect("RSA key");
    let rsa_pem = SecretString::from(
        rsa_key
            .to_pkcs1_pem(rsa::pkcs8::LineEnding::LF)
            .expect("PEM")
            .to_string(),
    );
    let mut group = c.benchmark_group("assertion");
    for (name, pem, alg) in [
        ("es256", ec, None),
        ("rs256", rsa_pem.clone(), None),
        (
            "ps256",
            rsa_pem,
            Some(oauth_egress::config::SigningAlg::PS256),
        ),
    ] {
        let key = SigningKey::from_pem(&pem, alg, Some("kid-1".into())).expect("signing key");
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(
                    client_assertion("client-id", "https://idp.example/oauth/token", &key)
                        .expect("assertion"),
                )
            })
        });
    }
    group.finish();
}

fn config() -> Criterion {
    // 8 benches × (1 s warm-up + 3 s measurement) keeps a full run near 35-45 s.
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args()
}

criterion_group! {
    name = hot_path;
    config = config();
    targets = benches
}
criterion_main!(hot_path);
