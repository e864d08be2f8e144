//! End-to-end cost of going through the proxy, over real loopback sockets and real TLS.
//!
//! It starts, in this process, the development authorization server and an HTTPS echo API
//! that verifies every token (ES256 JWT, audience, scope), both on one tokio runtime, and
//! the proxy on its own multi-thread runtime, all on `127.0.0.1:0`. A deliberately cheap
//! load generator (hyper 1 `client::conn::http1` over tokio-rustls, on a current-thread
//! runtime) then measures, per concurrency level:
//!
//! - **keep-alive**: N connections each sending sequential `GET`s for `E2E_SECS` after
//!   `E2E_WARMUP` seconds of warm-up (measured in 1 s slices alternating direct and proxy). Through the proxy: one `CONNECT` + TLS to the proxy's
//!   minted leaf per connection, requests inside; the proxy injects the cached token and
//!   forwards over its pooled upstream connection. Directly: TLS to the echo API, with the
//!   same token sent by the client, so the API does the same verification work.
//! - **new connection per request**: each request opens TCP (+ `CONNECT`) + TLS, sends one
//!   `GET` and closes. Through the proxy, the upstream side stays pooled.
//!
//! For each it prints requests/s, p50 and p99 latency (time from sending the request to the
//! last body byte; for new connections, from `connect()` on), errors, and how many TCP
//! connections the echo API accepted during the run (shows the proxy's pooling). Then the
//! ratios proxy/direct, the aims they are checked against, and the idle RSS of the release
//! binary (`oauth-egress run` with a one-route config, measured 1 s after start).
//!
//! All of this shares the machine's cores: the proxy competes with the load generator and
//! the echo API for CPU, exactly as a sidecar does with its host service. No tracing
//! subscriber is installed, so the proxy's per-request access log costs next to nothing.
//!
//! Run: `cargo bench --bench end_to_end`; quick: `E2E_SECS=1 E2E_WARMUP=0.5 E2E_CONC=1,4
//! cargo bench --bench end_to_end`. `E2E_MODES` picks modes (for profiling one) and
//! `E2E_UPSTREAM=h1` makes the echo API HTTP/1.1-only (see `benches/README.md`).
//! `E2E_DPOP=1` makes the route a DPoP route (a proof per request; the echo API verifies it):
//! compare its proxy rows with a run without it. Its direct rows are not comparable (they
//! send the DPoP-bound token as a bearer token, which the API refuses).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, HOST};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::proxy::Proxy;
use oauth_egress_devserver::auth_server::{AuthServer, DevClient};
use oauth_egress_devserver::echo_api::EchoApi;
use oauth_egress_devserver::pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = SendRequest<Empty<Bytes>>;

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
const SCOPE: &str = "echo:read";
const PATH: &str = "/v1/items/42?expand=owner";

/// How long and how hard to run, from `E2E_SECS`, `E2E_WARMUP` and `E2E_CONC`.
struct Settings {
    secs: f64,
    warmup: f64,
    conc: Vec<usize>,
    /// `E2E_MODES`: which modes to run (`keep-alive`, `new-conn`), for profiling one.
    modes: Vec<Mode>,
    /// `E2E_UPSTREAM=h1`: the echo API offers only HTTP/1.1 (default: h2 and HTTP/1.1, so
    /// the proxy's pooled client multiplexes over one HTTP/2 connection).
    upstream_h1: bool,
}

impl Settings {
    fn from_env() -> Settings {
        let num = |name: &str, default: f64| {
            std::env::var(name)
                .ok()
                .map(|v| {
                    v.trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|x| *x >= 0.0)
                        .unwrap_or_else(|| panic!("{name}={v:?} is not a non-negative number"))
                })
                .unwrap_or(default)
        };
        let conc = std::env::var("E2E_CONC")
            .ok()
            .map(|v| {
                v.split(',')
                    .map(|c| {
                        c.trim()
                            .parse::<usize>()
                            .ok()
                            .filter(|n| *n > 0)
                            .unwrap_or_else(|| {
                                panic!(
                                    "E2E_CONC={v:?}: a comma-separated list of positive integers"
                                )
                            })
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![1, 8]);
        let modes = std::env::var("E2E_MODES")
            .ok()
            .map(|v| {
                v.split(',')
                    .map(|m| match m.trim() {
                        "keep-alive" => Mode::KeepAlive,
                        "new-conn" => Mode::NewConnection,
                        other => panic!("E2E_MODES: unknown mode {other:?} (keep-alive, new-conn)"),
                    })
                    .collect()
            })
            .unwrap_or_else(|| vec![Mode::KeepAlive, Mode::NewConnection]);
        Settings {
            secs: num("E2E_SECS", 5.0).max(0.1),
            warmup: num("E2E_WARMUP", 1.0),
            conc,
            modes,
            upstream_h1: match std::env::var("E2E_UPSTREAM").as_deref() {
                Err(_) | Ok("h2") => false,
                Ok("h1") => true,
                Ok(other) => panic!("E2E_UPSTREAM={other:?}: h1 or h2"),
            },
        }
    }
}

/// Whether a request goes through the proxy or straight to the echo API.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Direct,
    Proxy,
}

impl Via {
    fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Proxy => "proxy",
        }
    }
}

/// Whether each connection carries many requests or one.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    KeepAlive,
    NewConnection,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::KeepAlive => "keep-alive",
            Mode::NewConnection => "new-conn",
        }
    }
}

/// What the load generator needs: addresses, TLS configs, the request's fixed parts.
struct Target {
    proxy_addr: SocketAddr,
    api_addr: SocketAddr,
    /// `localhost:PORT` of the echo API: the `Host` header and the CONNECT authority.
    authority: HeaderValue,
    connect_request: Bytes,
    server_name: ServerName<'static>,
    /// Trusts only the proxy's interception CA.
    proxy_tls: TlsConnector,
    /// Trusts only the test PKI that signed the echo API's certificate.
    direct_tls: TlsConnector,
    /// The token the proxy would inject; sent by the client on direct requests.
    bearer: HeaderValue,
}

/// The servers and the proxy, each on its runtime.
struct World {
    upstream_rt: Runtime,
    proxy_rt: Runtime,
    auth: AuthServer,
    api: EchoApi,
    target: Arc<Target>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    proxy_task: Option<tokio::task::JoinHandle<()>>,
    _ca_dir: tempfile::TempDir,
}

fn runtime_multi(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .thread_name(name)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

impl World {
    fn start(settings: &Settings) -> World {
        let upstream_rt = runtime_multi("upstream");
        let proxy_rt = runtime_multi("proxy");
        let pki = TestPki::new("bench upstream CA").expect("test PKI");
        let tls = pki
            .server_config(&["localhost", "127.0.0.1"])
            .expect("server TLS config");
        let (auth, api) = upstream_rt.block_on(async {
            let auth = AuthServer::start(
                TcpListener::bind("127.0.0.1:0").await.expect("bind"),
                tls.clone(),
                "localhost",
                vec![DevClient {
                    id: CLIENT_ID.into(),
                    secret: CLIENT_SECRET.into(),
                    allowed_scopes: Some(vec![SCOPE.into()]),
                }],
            )
            .await
            .expect("auth server");
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let aud = format!(
                "https://localhost:{}",
                listener.local_addr().expect("addr").port()
            );
            let api_tls = if settings.upstream_h1 {
                pki.server_config_http1(&["localhost", "127.0.0.1"])
                    .expect("server TLS config")
            } else {
                tls
            };
            let api = EchoApi::start(
                listener,
                Some(api_tls),
                Some(auth.verifier()),
                Some(aud),
                Some(SCOPE.into()),
            )
            .await
            .expect("echo API");
            (auth, api)
        });
        let port = api.addr.port();
        let toml = format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
unmatched = "tunnel"

[clients.bench]
token_endpoint = "{endpoint}"
client_id = "{CLIENT_ID}"
auth = "client_secret_basic"
client_secret = {{ file = "client-secret" }}

[[route]]
name = "echo"
host = "localhost"
port = {port}
client = "bench"
scopes = ["{SCOPE}"]
audience = "https://localhost:{port}"
dpop = {dpop}
"#,
            endpoint = auth.token_endpoint(),
            dpop = std::env::var("E2E_DPOP").is_ok_and(|v| v == "1"),
        );
        let ca_dir = tempfile::tempdir().expect("temp dir");
        // The client reads its secret from this file (`{ file = "client-secret" }`).
        std::fs::write(ca_dir.path().join("client-secret"), CLIENT_SECRET).expect("secret file");
        let config = oauth_egress::config::from_toml(&toml, ca_dir.path(), "end_to_end bench")
            .unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let ca = Arc::new(CertificateAuthority::generate().expect("CA"));
        let proxy = Proxy::new(config, ca.clone(), &[pki.ca_cert_der()]).expect("proxy");

        // Warm the proxy's token cache, and take the same token for the direct requests.
        let route = proxy
            .routes
            .find("localhost", port, "/")
            .expect("route")
            .clone();
        let (token, _) = proxy_rt
            .block_on(
                route
                    .token()
                    .expect("a token route")
                    .slot(&http::HeaderMap::new())
                    .expect("token slot")
                    .get(),
            )
            .expect("token");
        let bearer = token.authorization();

        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let listener = proxy_rt
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let proxy_addr = listener.local_addr().expect("addr");
        let proxy_task = proxy_rt.spawn(oauth_egress::listener::run(
            oauth_egress::proxy::shared(proxy),
            listener,
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(1),
        ));

        let mut proxy_roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            proxy_roots.add(cert.expect("CA PEM")).expect("CA cert");
        }
        let proxy_tls = rustls::ClientConfig::builder()
            .with_root_certificates(proxy_roots)
            .with_no_client_auth();
        let authority = format!("localhost:{port}");
        let target = Target {
            proxy_addr,
            api_addr: api.addr,
            connect_request: Bytes::from(format!(
                "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
            )),
            authority: HeaderValue::from_str(&authority).expect("authority"),
            server_name: ServerName::try_from("localhost").expect("server name"),
            proxy_tls: TlsConnector::from(Arc::new(proxy_tls)),
            direct_tls: TlsConnector::from(Arc::new(pki.client_config())),
            bearer,
        };
        World {
            upstream_rt,
            proxy_rt,
            auth,
            api,
            target: Arc::new(target),
            stop: Some(stop),
            proxy_task: Some(proxy_task),
            _ca_dir: ca_dir,
        }
    }

    fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.proxy_task.take() {
            let _ = self.proxy_rt.block_on(task);
        }
        drop(self.api);
        drop(self.auth);
        self.proxy_rt.shutdown_timeout(Duration::from_secs(1));
        self.upstream_rt.shutdown_timeout(Duration::from_secs(1));
    }
}

/// How long each step of opening one connection took, in µs: TCP connect, the `CONNECT`
/// exchange (0 direct), the TLS handshake. Kept for every connection any worker opens.
static OPENINGS: std::sync::Mutex<Vec<(Via, [u64; 3])>> = std::sync::Mutex::new(Vec::new());

/// Opens a connection ready for HTTP/1.1 requests to the echo API, directly or through a
/// `CONNECT` tunnel the proxy intercepts.
async fn open(t: &Target, via: Via) -> Result<Sender, BoxError> {
    let started = Instant::now();
    let mut marks = [0u64; 3];
    let mut mark = |i: usize| marks[i] = started.elapsed().as_micros() as u64;
    let addr = match via {
        Via::Direct => t.api_addr,
        Via::Proxy => t.proxy_addr,
    };
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    mark(0);
    let tls = match via {
        Via::Direct => &t.direct_tls,
        Via::Proxy => {
            tcp.write_all(&t.connect_request).await?;
            read_connect_answer(&mut tcp).await?;
            &t.proxy_tls
        }
    };
    mark(1);
    let stream = tls.connect(t.server_name.clone(), tcp).await?;
    mark(2);
    let steps = [marks[0], marks[1] - marks[0], marks[2] - marks[1]];
    if let Ok(mut openings) = OPENINGS.lock() {
        openings.push((via, steps));
    }
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads the proxy's answer to `CONNECT` (nothing follows it until our ClientHello).
async fn read_connect_answer(tcp: &mut TcpStream) -> Result<(), BoxError> {
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Err("proxy closed the connection during CONNECT".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    if head.starts_with(b"HTTP/1.1 200") {
        Ok(())
    } else {
        Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into())
    }
}

/// One `GET` on an open connection, body read to the end; anything but 200 is an error.
async fn get(sender: &mut Sender, t: &Target, via: Via) -> Result<(), BoxError> {
    let mut req = Request::get(PATH).header(HOST, t.authority.clone());
    if via == Via::Direct {
        req = req.header(AUTHORIZATION, t.bearer.clone());
    }
    sender.ready().await?;
    let response = sender.send_request(req.body(Empty::new())?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status == StatusCode::OK {
        Ok(())
    } else {
        Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)).into())
    }
}

/// What one worker measured.
#[derive(Default)]
struct Sample {
    latencies_ns: Vec<u64>,
    errors: usize,
    first_error: Option<String>,
}

impl Sample {
    fn error(&mut self, err: BoxError) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| err.to_string());
    }
}

async fn worker(
    t: Arc<Target>,
    via: Via,
    mode: Mode,
    measure_from: Instant,
    end: Instant,
) -> Sample {
    let mut sample = Sample {
        latencies_ns: Vec::with_capacity(1 << 16),
        ..Sample::default()
    };
    let mut conn: Option<Sender> = None;
    loop {
        let started = Instant::now();
        if started >= end {
            break;
        }
        let result = match mode {
            Mode::KeepAlive => {
                if conn.is_none() {
                    match open(&t, via).await {
                        Ok(sender) => conn = Some(sender),
                        Err(err) => {
                            sample.error(err);
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                let started = Instant::now();
                let sender = conn.as_mut().expect("open");
                let result = get(sender, &t, via).await.map(|()| started);
                if result.is_err() {
                    conn = None;
                }
                result
            }
            Mode::NewConnection => match open(&t, via).await {
                Ok(mut sender) => get(&mut sender, &t, via).await.map(|()| started),
                Err(err) => Err(err),
            },
        };
        let done = Instant::now();
        match result {
            Ok(started) if started >= measure_from && done <= end => {
                sample.latencies_ns.push((done - started).as_nanos() as u64);
            }
            Ok(_) => {}
            Err(err) => {
                if started >= measure_from {
                    sample.error(err);
                }
            }
        }
    }
    sample
}

/// One row of the table.
struct Row {
    mode: Mode,
    via: Via,
    conc: usize,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    errors: usize,
    upstream_conns: usize,
    first_error: Option<String>,
}

fn percentile_us(sorted_ns: &[u64], p: f64) -> f64 {
    if sorted_ns.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted_ns.len() - 1) as f64 * p).round() as usize;
    sorted_ns[idx] as f64 / 1000.0
}

/// Runs `conc` workers on one path for `warm` (not counted) then `measure` seconds.
fn run_slice(
    client_rt: &Runtime,
    world: &World,
    mode: Mode,
    via: Via,
    conc: usize,
    warm: f64,
    measure: f64,
) -> (Vec<Sample>, usize) {
    let conns_before = world.api.connections();
    let samples = client_rt.block_on(async {
        let start = Instant::now();
        let measure_from = start + Duration::from_secs_f64(warm);
        let end = measure_from + Duration::from_secs_f64(measure);
        let workers: Vec<_> = (0..conc)
            .map(|_| tokio::spawn(worker(world.target.clone(), via, mode, measure_from, end)))
            .collect();
        let mut samples = Vec::with_capacity(conc);
        for w in workers {
            samples.push(w.await.expect("worker"));
        }
        samples
    });
    // Let the closed connections' server tasks finish before the next slice.
    std::thread::sleep(Duration::from_millis(50));
    (samples, world.api.connections() - conns_before)
}

/// Measures one mode and concurrency on both paths: a warm-up of each, then `E2E_SECS`
/// per path in 1 s slices alternating direct/proxy (ABBA order), so that drift in the
/// machine's speed during the run falls on both paths alike.
fn run_pair(
    client_rt: &Runtime,
    world: &World,
    settings: &Settings,
    mode: Mode,
    conc: usize,
) -> [Row; 2] {
    const SLICE_WARM: f64 = 0.1;
    let paths = [Via::Direct, Via::Proxy];
    if settings.warmup > 0.0 {
        for via in paths {
            run_slice(client_rt, world, mode, via, conc, settings.warmup, 0.0);
        }
    }
    let rounds = settings.secs.ceil().max(1.0) as usize;
    let slice = settings.secs / rounds as f64;
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    let mut conns = [0usize; 2];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let (s, c) = run_slice(client_rt, world, mode, paths[i], conc, SLICE_WARM, slice);
            samples[i].extend(s);
            conns[i] += c;
        }
    }
    let row = |i: usize, samples: Vec<Sample>| {
        let mut all: Vec<u64> = Vec::new();
        let mut errors = 0;
        let mut first_error = None;
        for s in samples {
            all.extend_from_slice(&s.latencies_ns);
            errors += s.errors;
            first_error = first_error.or(s.first_error);
        }
        all.sort_unstable();
        Row {
            mode,
            via: paths[i],
            conc,
            rps: all.len() as f64 / settings.secs,
            p50_us: percentile_us(&all, 0.50),
            p99_us: percentile_us(&all, 0.99),
            errors,
            upstream_conns: conns[i],
            first_error,
        }
    };
    let [direct, proxy] = samples;
    [row(0, direct), row(1, proxy)]
}

/// Starts `oauth-egress run` on a one-route config, waits 1 s and reads its resident set.
fn idle_rss() -> Result<(u64, u64), String> {
    let built = option_env!("CARGO_BIN_EXE_oauth-egress").map(PathBuf::from);
    let fallback = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/oauth-egress");
    let Some(bin) = built
        .filter(|p| p.exists())
        .or_else(|| fallback.exists().then_some(fallback))
    else {
        return Err("skipped: no release binary (run `cargo build --release`)".into());
    };
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("routes.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[proxy]
listen = "127.0.0.1:0"
ca_cert = "{ca}/ca.pem"
ca_key = "{ca}/ca.key"

[clients.idle]
token_endpoint = "https://localhost:9/token"
client_id = "idle"
auth = "client_secret_basic"
client_secret = {{ env = "E2E_IDLE_CLIENT_SECRET" }}

[[route]]
host = "api.example"
client = "idle"
scopes = ["read"]
"#,
            ca = dir.path().join("ca").display()
        ),
    )
    .map_err(|e| e.to_string())?;
    let log = std::fs::File::create(dir.path().join("stderr.log")).map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("run")
        .arg("-c")
        .arg(&config)
        .env("E2E_IDLE_CLIENT_SECRET", "idle-secret")
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(log);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OAUTH_EGRESS_") {
            cmd.env_remove(key);
        }
    }
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", bin.display()))?;
    std::thread::sleep(Duration::from_secs(1));
    let result = match child.try_wait() {
        Ok(Some(status)) => Err(format!(
            "{} exited early ({status}): {}",
            bin.display(),
            std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default()
        )),
        _ => {
            let status = std::fs::read_to_string(format!("/proc/{}/status", child.id()))
                .map_err(|e| format!("/proc/{}/status: {e}", child.id()));
            status.and_then(|s| {
                let kib = |field: &str| {
                    s.lines()
                        .find_map(|l| l.strip_prefix(field))
                        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                        .ok_or_else(|| format!("no {field} in /proc/<pid>/status"))
                };
                Ok((kib("VmRSS:")?, kib("VmHWM:")?))
            })
        }
    };
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// The share of all CPUs busy over `window`, from `/proc/stat` (Linux; `None` elsewhere).
fn cpu_busy(window: Duration) -> Option<f64> {
    let read = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = cpu.get(3)? + cpu.get(4).unwrap_or(&0);
        Some((cpu.iter().sum(), idle))
    };
    let (total0, idle0) = read()?;
    std::thread::sleep(window);
    let (total1, idle1) = read()?;
    let total = total1.checked_sub(total0).filter(|t| *t > 0)?;
    Some(1.0 - (idle1 - idle0) as f64 / total as f64)
}

fn find(rows: &[Row], mode: Mode, via: Via, conc: usize) -> Option<&Row> {
    rows.iter()
        .find(|r| r.mode == mode && r.via == via && r.conc == conc)
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

/// The median of each step of opening a connection, per path: where the new-connection
/// difference between direct and proxied comes from.
fn print_openings() {
    let Ok(openings) = OPENINGS.lock() else {
        return;
    };
    for (via, name) in [(Via::Direct, "direct"), (Via::Proxy, "proxy")] {
        let median = |step: usize| {
            let mut v: Vec<u64> = openings
                .iter()
                .filter(|(v, _)| *v == via)
                .map(|(_, s)| s[step])
                .collect();
            v.sort_unstable();
            v.get(v.len() / 2).copied()
        };
        if let (Some(tcp), Some(connect), Some(tls)) = (median(0), median(1), median(2)) {
            println!(
                "opening a connection, {name:6} p50 µs: TCP {tcp}, CONNECT {connect}, TLS {tls}"
            );
        }
    }
}

fn main() {
    // `cargo bench` passes `--bench` (and maybe filters); this bench takes none.
    let settings = Settings::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "end_to_end: {cores} cores, warm-up {:.1} s + {:.1} s per run, concurrency {:?}",
        settings.warmup, settings.secs, settings.conc
    );
    if let Some(busy) = cpu_busy(Duration::from_millis(500)) {
        println!(
            "CPU busy before start (other processes): {:.0}%{}",
            busy * 100.0,
            if busy > 0.15 {
                " — the machine is not idle: expect noisy numbers"
            } else {
                ""
            }
        );
    }
    let world = World::start(&settings);
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");

    // Sanity: both paths answer 200 with a verified token; show the upstream protocol.
    let dpop = std::env::var("E2E_DPOP").is_ok_and(|v| v == "1");
    client_rt.block_on(async {
        for via in [Via::Direct, Via::Proxy] {
            if dpop && via == Via::Direct {
                continue; // the direct client cannot present a DPoP-bound token
            }
            let mut sender = open(&world.target, via)
                .await
                .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", via.name()));
            get(&mut sender, &world.target, via)
                .await
                .unwrap_or_else(|e| panic!("{}: first request failed: {e}", via.name()));
        }
    });
    let seen = world.api.seen();
    let versions: Vec<&str> = seen.iter().map(|s| s.version.as_str()).collect();
    println!(
        "sanity: direct and proxied requests verified by the echo API (client→API {}, proxy→API {}); token requests so far: {}",
        versions.first().unwrap_or(&"?"),
        versions.get(1).unwrap_or(&"?"),
        world.auth.token_requests()
    );

    let mut rows = Vec::new();
    for &mode in &settings.modes {
        for &conc in &settings.conc {
            rows.extend(run_pair(&client_rt, &world, &settings, mode, conc));
        }
    }
    let token_requests = world.auth.token_requests();
    drop(client_rt);
    print_openings();
    world.stop();

    println!();
    println!(
        "{:<11} {:<7} {:>4} {:>10} {:>9} {:>9} {:>7} {:>10}",
        "mode", "path", "conc", "req/s", "p50 µs", "p99 µs", "errors", "api conns"
    );
    for r in &rows {
        println!(
            "{:<11} {:<7} {:>4} {:>10.0} {:>9.1} {:>9.1} {:>7} {:>10}",
            r.mode.name(),
            r.via.name(),
            r.conc,
            r.rps,
            r.p50_us,
            r.p99_us,
            r.errors,
            r.upstream_conns
        );
    }
    for r in rows.iter().filter(|r| r.errors > 0) {
        println!(
            "first error ({} {} conc {}): {}",
            r.mode.name(),
            r.via.name(),
            r.conc,
            r.first_error.as_deref().unwrap_or("?")
        );
    }
    println!("token requests during the whole run: {token_requests} (1 = every request used the cached token)");

    println!();
    for mode in [Mode::KeepAlive, Mode::NewConnection] {
        for &conc in &settings.conc {
            if let (Some(d), Some(p)) = (
                find(&rows, mode, Via::Direct, conc),
                find(&rows, mode, Via::Proxy, conc),
            ) {
                println!(
                    "{:<11} conc {:>2}: p50 proxy/direct = {:.2}x (+{:.1} µs), p99 proxy/direct = {:.2}x, throughput proxy/direct = {:.2}",
                    mode.name(),
                    conc,
                    p.p50_us / d.p50_us,
                    p.p50_us - d.p50_us,
                    p.p99_us / d.p99_us,
                    p.rps / d.rps
                );
            }
        }
    }

    println!();
    match idle_rss() {
        Ok((rss, hwm)) => {
            println!(
                "idle RSS of `oauth-egress run` (1 route, 1 s after start): {:.1} MiB (peak {:.1} MiB) — aim < 20 MiB: {}",
                rss as f64 / 1024.0,
                hwm as f64 / 1024.0,
                verdict((rss as f64) < 20.0 * 1024.0)
            );
        }
        Err(why) => println!("idle RSS: {why}"),
    }

    // The aims, on the lowest concurrency for latency and the highest for throughput.
    let lo = settings.conc.iter().copied().min().unwrap_or(1);
    let hi = settings.conc.iter().copied().max().unwrap_or(1);
    if let (Some(d_lo), Some(p_lo), Some(d_hi), Some(p_hi)) = (
        find(&rows, Mode::KeepAlive, Via::Direct, lo),
        find(&rows, Mode::KeepAlive, Via::Proxy, lo),
        find(&rows, Mode::KeepAlive, Via::Direct, hi),
        find(&rows, Mode::KeepAlive, Via::Proxy, hi),
    ) {
        let p50_ratio = p_lo.p50_us / d_lo.p50_us;
        let added = p_lo.p50_us - d_lo.p50_us;
        let tput = p_hi.rps / d_hi.rps;
        println!(
            "aim keep-alive p50 proxy/direct < 2 (conc {lo}): {p50_ratio:.2}x — {}",
            verdict(p50_ratio < 2.0)
        );
        println!(
            "aim keep-alive throughput proxy/direct >= 0.5 (conc {hi}): {tput:.2} — {}",
            verdict(tput >= 0.5)
        );
        println!(
            "aim cached-token path adds < 100 µs at p50 (conc {lo}): +{added:.1} µs — {}",
            verdict(added < 100.0)
        );
        println!(
            "ratio keep-alive p50 proxy/direct = {p50_ratio:.1}x; throughput proxy/direct = {tput:.2}"
        );
    }
}
