//! oauth-egress side by side with a squid CONNECT tunnel and with going direct (issue 17).
//!
//! By hand only (`cargo bench --bench compare`, see `benches/README.md`); never in CI. It
//! needs Debian's `nginx` and `squid-openssl` (or `squid`) and `taskset`, and the release
//! binary (`cargo build --release`): what is measured is `oauth-egress run`, not an
//! in-process proxy.
//!
//! - **upstream**: nginx, one worker, TLS 1.3 only, HTTP/1.1 only (ALPN `http/1.1`), no
//!   access log, keep-alive without a request limit. `/100` is a 100-byte file, `/1m` a
//!   1 MiB file, `/upload` reads and discards a POST body, `/auth` echoes the request's
//!   `Authorization` (the sanity check that the proxy injected a token).
//! - **oauth-egress**: the release binary with one route to nginx whose token comes from the
//!   development authorization server (in this process), so every request is intercepted,
//!   injected and re-encrypted. `RUST_LOG=warn` (no access log, as squid's `access_log none`).
//! - **squid tunnel**: squid with plain `CONNECT` (no `ssl_bump`), `cache deny all`,
//!   `access_log none`. The client sends the same token itself, inside the tunnel.
//! - **direct**: the client straight to nginx with the same token: the limit.
//!
//! nginx, squid and oauth-egress run on one core (`CMP_SERVER_CPU`, default 0), this process
//! (the load generator, one current-thread tokio runtime, hyper's HTTP/1.1 client over
//! tokio-rustls) on the other (`CMP_CLIENT_CPU`, default 1): it re-runs itself under
//! `taskset`. Cells are measured in `CMP_ROUNDS` interleaved rounds (the order of the paths
//! rotates each round) of `CMP_SECS` per cell and path, so drift in the machine's speed falls
//! on every path alike. CPU per request is the proxy's `utime + stime` delta from
//! `/proc/<pid>/stat` over the measured window divided by the requests completed in it;
//! peak RSS is `VmHWM` from `/proc/<pid>/status` after all cells.

use std::net::SocketAddr;
use std::path::{Path as FsPath, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HOST};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use oauth_egress_devserver::auth_server::{AuthServer, DevClient};
use oauth_egress_devserver::pki::TestPki;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Sender = SendRequest<Full<Bytes>>;

const CLIENT_ID: &str = "bench-client";
const CLIENT_SECRET: &str = "bench-secret";
const SCOPE: &str = "bench:read";
/// Set in the re-run child so that it does not re-run itself again.
const PINNED_ENV: &str = "CMP_PINNED";

/// One way from the load generator to nginx.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    Direct,
    Egress,
    Squid,
}

impl Path {
    fn key(self) -> &'static str {
        match self {
            Path::Direct => "direct",
            Path::Egress => "oauth-egress",
            Path::Squid => "squid",
        }
    }
}

const PATHS: [Path; 3] = [Path::Direct, Path::Egress, Path::Squid];

/// One row of the table: what each connection sends, and how many connections.
#[derive(Clone, Copy)]
struct Cell {
    name: &'static str,
    key: &'static str,
    post: bool,
    target: &'static str,
    /// Request body bytes (0: no body).
    body: usize,
    /// Response body bytes, checked on every response.
    answer: usize,
    conns: usize,
    new_conn: bool,
}

const CELLS: [Cell; 4] = [
    Cell {
        name: "GET 100 B, keep-alive, 32 conns",
        key: "get100",
        post: false,
        target: "/100",
        body: 0,
        answer: 100,
        conns: 32,
        new_conn: false,
    },
    Cell {
        name: "POST 64 KiB, keep-alive, 8 conns",
        key: "post64k",
        post: true,
        target: "/upload",
        body: 64 * 1024,
        answer: 3,
        conns: 8,
        new_conn: false,
    },
    Cell {
        name: "GET 1 MiB, keep-alive, 4 conns",
        key: "get1m",
        post: false,
        target: "/1m",
        body: 0,
        answer: 1 << 20,
        conns: 4,
        new_conn: false,
    },
    Cell {
        name: "GET 100 B, new connection per request, 8 conns",
        key: "newconn",
        post: false,
        target: "/100",
        body: 0,
        answer: 100,
        conns: 8,
        new_conn: true,
    },
];

/// What to run, from the `CMP_*` variables (see `benches/README.md`).
struct Settings {
    secs: f64,
    warmup: f64,
    rounds: usize,
    cells: Vec<Cell>,
    server_cpu: String,
    client_cpu: String,
    proxy_bin: PathBuf,
    proxy_log: String,
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn env_num(name: &str, default: f64) -> f64 {
    let v = env_or(name, &default.to_string());
    v.trim()
        .parse::<f64>()
        .ok()
        .filter(|x| x.is_finite() && *x >= 0.0)
        .unwrap_or_else(|| panic!("{name}={v:?} is not a non-negative number"))
}

impl Settings {
    fn from_env() -> Settings {
        let cells = env_or("CMP_CELLS", "get100,post64k,get1m,newconn")
            .split(',')
            .map(|k| {
                CELLS
                    .iter()
                    .copied()
                    .find(|c| c.key == k.trim())
                    .unwrap_or_else(|| {
                        panic!("CMP_CELLS: unknown cell {k:?} (get100, post64k, get1m, newconn)")
                    })
            })
            .collect();
        let default_bin =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/release/oauth-egress");
        Settings {
            secs: env_num("CMP_SECS", 5.0).max(0.2),
            warmup: env_num("CMP_WARMUP", 0.3),
            rounds: (env_num("CMP_ROUNDS", 3.0) as usize).max(1),
            cells,
            server_cpu: env_or("CMP_SERVER_CPU", "0"),
            client_cpu: env_or("CMP_CLIENT_CPU", "1"),
            proxy_bin: std::env::var_os("CMP_PROXY_BIN").map_or(default_bin, PathBuf::from),
            proxy_log: env_or("CMP_PROXY_LOG", "warn"),
        }
    }
}

/// The processes this bench started, killed by PID (and reaped) when dropped.
#[derive(Default)]
struct Children(Vec<(&'static str, Child)>);

impl Drop for Children {
    fn drop(&mut self) {
        for (_, child) in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What the load generator needs to reach nginx on each path.
struct Target {
    nginx: SocketAddr,
    squid: SocketAddr,
    egress: SocketAddr,
    /// `localhost:PORT` of nginx: the `Host` header and the CONNECT authority.
    authority: HeaderValue,
    connect_request: Bytes,
    server_name: ServerName<'static>,
    /// Trusts the CA that signed nginx's certificate (direct and through squid).
    upstream_tls: TlsConnector,
    /// Trusts only oauth-egress's interception CA.
    egress_tls: TlsConnector,
    /// The token oauth-egress injects; sent by the client itself on the other paths.
    bearer: HeaderValue,
    upload: Bytes,
}

/// nginx, squid, oauth-egress and the authorization server, running.
struct World {
    target: Arc<Target>,
    pids: [(Path, u32); 3],
    auth: AuthServer,
    _auth_rt: Runtime,
    _children: Children,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn nginx_conf(dir: &FsPath, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"
worker_processes 1;
daemon off;
master_process off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path {d}/nginx-body;
    proxy_temp_path {d}/nginx-proxy;
    fastcgi_temp_path {d}/nginx-fastcgi;
    uwsgi_temp_path {d}/nginx-uwsgi;
    scgi_temp_path {d}/nginx-scgi;
    open_file_cache max=16;
    server {{
        listen 127.0.0.1:{port} ssl;
        server_name localhost;
        ssl_certificate {d}/nginx.pem;
        ssl_certificate_key {d}/nginx.key;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:bench:1m;
        root {d}/www;
        location = /upload {{
            client_max_body_size 1m;
            client_body_buffer_size 128k;
            return 200 "ok\n";
        }}
        location = /auth {{
            return 200 "$http_authorization";
        }}
    }}
}}
"#
    )
}

fn squid_conf(dir: &FsPath, port: u16) -> String {
    let d = dir.display();
    format!(
        r#"
http_port 127.0.0.1:{port}
http_access allow localhost
http_access deny all
cache deny all
access_log none
cache_log {d}/squid/cache.log
pid_filename {d}/squid/squid.pid
coredump_dir {d}/squid
shutdown_lifetime 1 seconds
"#
    )
}

fn egress_conf(dir: &FsPath, port: u16, nginx_port: u16, token_endpoint: &str) -> String {
    let d = dir.display();
    format!(
        r#"
[proxy]
listen = "127.0.0.1:{port}"
ca_cert = "{d}/egress-ca/ca.pem"
ca_key = "{d}/egress-ca/ca.key"
upstream_roots = ["{d}/roots.pem"]

[clients.bench]
token_endpoint = "{token_endpoint}"
client_id = "{CLIENT_ID}"
auth = "client_secret_basic"
client_secret = {{ file = "client-secret" }}

[[route]]
name = "nginx"
host = "localhost"
port = {nginx_port}
client = "bench"
scopes = ["{SCOPE}"]
"#
    )
}

/// Writes nginx's certificate (signed by a fresh CA), its files, and the trust file holding
/// that CA and the one of the authorization server's certificate. Returns nginx's CA (PEM).
fn write_files(dir: &FsPath, auth_pki: &TestPki) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_pem = ca_params.self_signed(&ca_key).expect("CA cert").pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &issuer)
        .expect("leaf cert");
    let write = |name: &str, content: &[u8]| {
        std::fs::write(dir.join(name), content).unwrap_or_else(|e| panic!("{name}: {e}"));
    };
    write("nginx.pem", leaf.pem().as_bytes());
    write("nginx.key", leaf_key.serialize_pem().as_bytes());
    write(
        "roots.pem",
        format!("{ca_pem}{}", auth_pki.ca_cert_pem()).as_bytes(),
    );
    write("client-secret", CLIENT_SECRET.as_bytes());
    std::fs::create_dir_all(dir.join("www")).expect("www dir");
    write("www/100", &[b'x'; 100]);
    write("www/1m", &vec![b'y'; 1 << 20]);
    // squid drops to its own user (`proxy` on Debian): its log directory must be writable.
    let squid = dir.join("squid");
    std::fs::create_dir_all(&squid).expect("squid dir");
    use std::os::unix::fs::PermissionsExt;
    for p in [dir, squid.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    ca_pem
}

/// A server to start: what, with which arguments and environment, listening where.
struct Launch<'a> {
    name: &'static str,
    program: &'a FsPath,
    args: Vec<&'a str>,
    env: Vec<(&'a str, &'a str)>,
    port: u16,
}

/// Starts `launch` under `taskset -c cpu`, its output to `DIR/NAME.log`.
fn spawn(dir: &FsPath, cpu: &str, launch: &Launch) -> Child {
    let name = launch.name;
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).expect("log file");
    let mut cmd = Command::new("taskset");
    cmd.arg("-c")
        .arg(cpu)
        .arg(launch.program)
        .args(&launch.args);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("OAUTH_EGRESS_") {
            cmd.env_remove(key);
        }
    }
    cmd.envs(launch.env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log file"))
        .stderr(log);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("{name}: cannot start {}: {e}", launch.program.display()))
}

/// Waits (at most 20 s) until `addr` accepts connections; fails with the log if `child` exits.
fn wait_listening(dir: &FsPath, name: &str, child: &mut Child, addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        let log = || std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{name} exited ({status}) before listening on {addr}:\n{}",
                log()
            );
        }
        if Instant::now() > deadline {
            panic!("{name} not listening on {addr} after 20 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
        .map(|d| FsPath::new(d).join(program))
        .find(|p| p.is_file())
}

fn connector(roots_pem: &str) -> TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots.add(cert.expect("CA PEM")).expect("CA cert");
    }
    let mut config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    TlsConnector::from(Arc::new(config))
}

impl World {
    fn start(settings: &Settings, nginx: &FsPath, squid: &FsPath) -> World {
        let dir = tempfile::tempdir().expect("temp dir");
        let d = dir.path();
        let auth_rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("auth")
            .enable_all()
            .build()
            .expect("tokio runtime");
        let pki = TestPki::new("compare bench authorization server CA").expect("test PKI");
        let tls = pki
            .server_config(&["localhost"])
            .expect("server TLS config");
        let auth = auth_rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let clients = vec![DevClient {
                id: CLIENT_ID.into(),
                secret: CLIENT_SECRET.into(),
                allowed_scopes: Some(vec![SCOPE.into()]),
            }];
            AuthServer::start(listener, tls, "localhost", clients)
                .await
                .expect("authorization server")
        });
        let nginx_ca = write_files(d, &pki);
        let ports = [free_port(), free_port(), free_port()];
        let [nginx_port, squid_port, egress_port] = ports;
        let conf = |name: &str, text: String| {
            let path = d.join(name);
            std::fs::write(&path, text).expect("config file");
            path.display().to_string()
        };
        let nginx_conf = conf("nginx.conf", nginx_conf(d, nginx_port));
        let squid_conf = conf("squid.conf", squid_conf(d, squid_port));
        let egress_conf = conf(
            "routes.toml",
            egress_conf(d, egress_port, nginx_port, &auth.token_endpoint()),
        );
        let cpu = settings.server_cpu.as_str();
        let prefix = d.display().to_string();
        let nginx_args = ["-p", &prefix, "-c", &nginx_conf, "-e", "nginx-error.log"];
        let mut children = Children::default();
        let starts = [
            Launch {
                name: "nginx",
                program: nginx,
                args: nginx_args.to_vec(),
                env: vec![],
                port: nginx_port,
            },
            Launch {
                name: "squid",
                program: squid,
                args: vec!["-N", "-f", &squid_conf],
                env: vec![],
                port: squid_port,
            },
            Launch {
                name: "oauth-egress",
                program: &settings.proxy_bin,
                args: vec!["run", "-c", &egress_conf],
                env: vec![("RUST_LOG", settings.proxy_log.as_str())],
                port: egress_port,
            },
        ];
        let mut pids = Vec::new();
        for launch in starts {
            let mut child = spawn(d, cpu, &launch);
            let addr = SocketAddr::from(([127, 0, 0, 1], launch.port));
            wait_listening(d, launch.name, &mut child, addr);
            pids.push(child.id());
            children.0.push((launch.name, child));
        }
        let egress_ca = std::fs::read_to_string(d.join("egress-ca/ca.pem")).expect("proxy CA");
        let authority = format!("localhost:{nginx_port}");
        let target = Target {
            nginx: SocketAddr::from(([127, 0, 0, 1], nginx_port)),
            squid: SocketAddr::from(([127, 0, 0, 1], squid_port)),
            egress: SocketAddr::from(([127, 0, 0, 1], egress_port)),
            connect_request: Bytes::from(format!(
                "CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n"
            )),
            authority: HeaderValue::from_str(&authority).expect("authority"),
            server_name: ServerName::try_from("localhost").expect("server name"),
            upstream_tls: connector(&nginx_ca),
            egress_tls: connector(&egress_ca),
            bearer: HeaderValue::from_static("unset"),
            upload: Bytes::from(vec![b'u'; 64 * 1024]),
        };
        World {
            target: Arc::new(target),
            pids: [
                (Path::Direct, pids[0]),
                (Path::Squid, pids[1]),
                (Path::Egress, pids[2]),
            ],
            auth,
            _auth_rt: auth_rt,
            _children: children,
            _dir: dir,
        }
    }

    fn pid(&self, path: Path) -> u32 {
        self.pids
            .iter()
            .find(|(p, _)| *p == path)
            .map(|(_, pid)| *pid)
            .expect("pid")
    }
}

/// Opens a connection to nginx ready for HTTP/1.1 requests, on `path`.
async fn open(t: &Target, path: Path) -> Result<Sender, BoxError> {
    let addr = match path {
        Path::Direct => t.nginx,
        Path::Squid => t.squid,
        Path::Egress => t.egress,
    };
    let mut tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    if path != Path::Direct {
        tcp.write_all(&t.connect_request).await?;
        read_connect_answer(&mut tcp).await?;
    }
    let tls = if path == Path::Egress {
        &t.egress_tls
    } else {
        &t.upstream_tls
    };
    let stream = tls.connect(t.server_name.clone(), tcp).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads the answer to `CONNECT` (nothing follows it until our ClientHello).
async fn read_connect_answer(tcp: &mut TcpStream) -> Result<(), BoxError> {
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tcp.read(&mut buf).await?;
        if n == 0 || head.len() > 8192 {
            return Err("the proxy closed the connection during CONNECT".into());
        }
        head.extend_from_slice(&buf[..n]);
    }
    if head.starts_with(b"HTTP/1.1 200") || head.starts_with(b"HTTP/1.0 200") {
        Ok(())
    } else {
        Err(format!("CONNECT refused: {}", String::from_utf8_lossy(&head)).into())
    }
}

/// Sends one request of `cell` and reads the whole answer, which must be 200 and
/// `cell.answer` bytes long. Returns the body.
async fn send(sender: &mut Sender, t: &Target, cell: &Cell, path: Path) -> Result<Bytes, BoxError> {
    let method = if cell.post { Method::POST } else { Method::GET };
    let mut req = Request::builder()
        .method(method)
        .uri(cell.target)
        .header(HOST, t.authority.clone());
    if path != Path::Egress {
        req = req.header(AUTHORIZATION, t.bearer.clone());
    }
    let body = if cell.body > 0 {
        req = req.header(CONTENT_TYPE, "application/octet-stream");
        t.upload.slice(..cell.body)
    } else {
        Bytes::new()
    };
    sender.ready().await?;
    let response = sender.send_request(req.body(Full::new(body))?).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    if cell.answer > 0 && body.len() != cell.answer {
        return Err(format!("{} bytes, expected {}", body.len(), cell.answer).into());
    }
    Ok(body)
}

/// What one worker counted inside the measured window.
#[derive(Default)]
struct Count {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
}

async fn worker(t: Arc<Target>, cell: Cell, path: Path, from: Instant, end: Instant) -> Count {
    let mut count = Count::default();
    let mut conn: Option<Sender> = None;
    while Instant::now() < end {
        let result = async {
            let mut sender = match conn.take() {
                Some(sender) => sender,
                None => open(&t, path).await?,
            };
            send(&mut sender, &t, &cell, path).await?;
            if !cell.new_conn {
                conn = Some(sender);
            }
            Ok::<(), BoxError>(())
        }
        .await;
        let done = Instant::now();
        match result {
            Ok(()) if done >= from && done <= end => count.requests += 1,
            Ok(()) => {}
            Err(err) => {
                if done >= from {
                    count.errors += 1;
                    count.first_error.get_or_insert_with(|| err.to_string());
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    count
}

/// `utime + stime` of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name (field 2) is in parentheses and may hold spaces: split after it.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    fields.iter().sum()
}

/// A field of `/proc/<pid>/status` in KiB (`VmHWM:`, `VmRSS:`).
fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn clock_ticks_per_sec() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// One cell on one path in one round.
#[derive(Default, Clone)]
struct Slice {
    requests: u64,
    errors: u64,
    first_error: Option<String>,
    /// CPU ticks of the path's proxy (oauth-egress or squid) and of nginx in the window.
    proxy_ticks: u64,
    nginx_ticks: u64,
}

/// Runs `cell` on `path`: `warmup` seconds (connections opened, not counted), then `secs`.
fn run_slice(rt: &Runtime, world: &World, settings: &Settings, cell: Cell, path: Path) -> Slice {
    let nginx_pid = world.pid(Path::Direct);
    let proxy_pid = (path != Path::Direct).then(|| world.pid(path));
    let slice = rt.block_on(async {
        let from = Instant::now() + Duration::from_secs_f64(settings.warmup);
        let end = from + Duration::from_secs_f64(settings.secs);
        let workers: Vec<_> = (0..cell.conns)
            .map(|_| tokio::spawn(worker(world.target.clone(), cell, path, from, end)))
            .collect();
        tokio::time::sleep_until(from.into()).await;
        let before = (proxy_pid.map_or(0, cpu_ticks), cpu_ticks(nginx_pid));
        tokio::time::sleep_until(end.into()).await;
        let after = (proxy_pid.map_or(0, cpu_ticks), cpu_ticks(nginx_pid));
        let mut slice = Slice {
            proxy_ticks: after.0 - before.0,
            nginx_ticks: after.1 - before.1,
            ..Slice::default()
        };
        for w in workers {
            let count = w.await.expect("worker");
            slice.requests += count.requests;
            slice.errors += count.errors;
            slice.first_error = slice.first_error.or(count.first_error);
        }
        slice
    });
    // Let the closed connections' server sides finish before the next slice.
    std::thread::sleep(Duration::from_millis(100));
    slice
}

/// Through oauth-egress, `/auth` answers the injected `Authorization`; through squid and
/// directly, the 100-byte file answers with that same token sent by the client.
fn sanity(rt: &Runtime, world: &mut World) {
    let auth_cell = Cell {
        target: "/auth",
        answer: 0,
        ..CELLS[0]
    };
    let injected = rt.block_on(async {
        let mut sender = open(&world.target, Path::Egress)
            .await
            .unwrap_or_else(|e| panic!("oauth-egress: cannot connect: {e}"));
        send(&mut sender, &world.target, &auth_cell, Path::Egress)
            .await
            .unwrap_or_else(|e| panic!("oauth-egress: /auth failed: {e}"))
    });
    assert!(
        injected.starts_with(b"Bearer ") && injected.len() > 20,
        "oauth-egress did not inject a bearer token (nginx saw {:?})",
        String::from_utf8_lossy(&injected[..injected.len().min(16)])
    );
    let target = Arc::get_mut(&mut world.target).expect("no request in flight");
    target.bearer = HeaderValue::from_bytes(&injected).expect("token header");
    for path in [Path::Direct, Path::Squid] {
        rt.block_on(async {
            let mut sender = open(&world.target, path)
                .await
                .unwrap_or_else(|e| panic!("{}: cannot connect: {e}", path.key()));
            send(&mut sender, &world.target, &CELLS[0], path)
                .await
                .unwrap_or_else(|e| panic!("{}: first request failed: {e}", path.key()));
        });
    }
    println!(
        "sanity: oauth-egress injected a {}-byte bearer token from the dev authorization server ({} token request); direct and squid send it themselves",
        injected.len() - "Bearer ".len(),
        world.auth.token_requests()
    );
}

/// Re-runs this binary under `taskset -c CPU` (the load generator's core); returns its
/// exit code, or `None` when this already is the pinned run.
fn pin_self(cpu: &str) -> Option<i32> {
    if std::env::var_os(PINNED_ENV).is_some() {
        return None;
    }
    let exe = std::env::current_exe().expect("current exe");
    let status = Command::new("taskset")
        .arg("-c")
        .arg(cpu)
        .arg(exe)
        .env(PINNED_ENV, "1")
        .status()
        .unwrap_or_else(|e| panic!("taskset: {e} (apt-get install util-linux)"));
    Some(status.code().unwrap_or(1))
}

fn version(program: &FsPath, arg: &str) -> String {
    Command::new(program)
        .arg(arg)
        .stdin(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            let mut text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&o.stderr));
            text.lines().next().unwrap_or("?").trim().to_string()
        })
        .unwrap_or_else(|| "?".into())
}

type Results = Vec<(Cell, [Vec<Slice>; 3])>;

fn measure(rt: &Runtime, world: &World, settings: &Settings) -> Results {
    let mut results: Results = settings
        .cells
        .iter()
        .map(|c| (*c, [Vec::new(), Vec::new(), Vec::new()]))
        .collect();
    for round in 0..settings.rounds {
        for (cell, slices) in &mut results {
            for i in 0..PATHS.len() {
                let p = (i + round) % PATHS.len();
                slices[p].push(run_slice(rt, world, settings, *cell, PATHS[p]));
            }
        }
        println!("round {} of {} done", round + 1, settings.rounds);
    }
    results
}

fn sum(slices: &[Slice], f: impl Fn(&Slice) -> u64) -> u64 {
    slices.iter().map(f).sum()
}

/// CPU µs per request of the path's proxy (or nginx) over all rounds.
fn us_per_request(slices: &[Slice], ticks: impl Fn(&Slice) -> u64, hz: f64) -> f64 {
    let requests = sum(slices, |s| s.requests).max(1);
    sum(slices, ticks) as f64 / hz * 1e6 / requests as f64
}

fn print_tables(results: &Results, world: &World, settings: &Settings) {
    let hz = clock_ticks_per_sec();
    let secs = settings.secs * settings.rounds as f64;
    println!();
    println!("| cell | proxy CPU per request: oauth-egress | squid tunnel | throughput × direct: oauth-egress | squid tunnel |");
    println!("|---|---:|---:|---:|---:|");
    for (cell, [direct, egress, squid]) in results {
        let rps = |s: &[Slice]| sum(s, |x| x.requests) as f64 / secs;
        println!(
            "| {} | {:.0} µs | {:.0} µs | {:.2}× | {:.2}× |",
            cell.name,
            us_per_request(egress, |s| s.proxy_ticks, hz),
            us_per_request(squid, |s| s.proxy_ticks, hz),
            rps(egress) / rps(direct),
            rps(squid) / rps(direct),
        );
    }
    let mib = |path| status_kib(world.pid(path), "VmHWM:").map_or(f64::NAN, |k| k as f64 / 1024.0);
    println!(
        "| peak RSS after all cells | {:.0} MiB | {:.0} MiB | | |",
        mib(Path::Egress),
        mib(Path::Squid)
    );
    println!();
    println!("| cell | req/s direct | oauth-egress | squid tunnel | oauth-egress ÷ squid | nginx CPU/req direct | oauth-egress | squid | errors direct/oauth-egress/squid |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---|");
    for (cell, [direct, egress, squid]) in results {
        let rps = |s: &[Slice]| sum(s, |x| x.requests) as f64 / secs;
        let nginx = |s: &[Slice]| us_per_request(s, |x| x.nginx_ticks, hz);
        let errors = |s: &[Slice]| sum(s, |x| x.errors);
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.2}× | {:.0} µs | {:.0} µs | {:.0} µs | {}/{}/{} |",
            cell.name,
            rps(direct),
            rps(egress),
            rps(squid),
            rps(egress) / rps(squid),
            nginx(direct),
            nginx(egress),
            nginx(squid),
            errors(direct),
            errors(egress),
            errors(squid),
        );
    }
    println!();
    for (cell, [direct, egress, squid]) in results {
        let ratios = |s: &[Slice]| {
            s.iter()
                .zip(direct)
                .map(|(a, d)| format!("{:.2}", a.requests as f64 / d.requests.max(1) as f64))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "per round, throughput × direct, {}: oauth-egress {}; squid {}",
            cell.key,
            ratios(egress),
            ratios(squid)
        );
        for (path, slices) in PATHS.iter().zip([direct, egress, squid]) {
            if let Some(err) = slices.iter().find_map(|s| s.first_error.as_deref()) {
                println!("first error, {} {}: {err}", cell.key, path.key());
            }
        }
    }
    println!(
        "token requests to the authorization server during the run: {}",
        world.auth.token_requests()
    );
}

fn main() {
    let settings = Settings::from_env();
    if let Some(code) = pin_self(&settings.client_cpu) {
        std::process::exit(code);
    }
    let (Some(nginx), Some(squid)) = (which("nginx"), which("squid")) else {
        println!("compare: skipped: needs nginx and squid (apt-get install nginx squid-openssl)");
        return;
    };
    if !settings.proxy_bin.is_file() {
        println!(
            "compare: skipped: no {} (run `cargo build --release`, or set CMP_PROXY_BIN)",
            settings.proxy_bin.display()
        );
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "compare: load average {} | nginx, squid, oauth-egress on CPU {}, load generator on CPU {} | {} rounds × {} s per cell and path (+{} s warm-up)",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        settings.server_cpu,
        settings.client_cpu,
        settings.rounds,
        settings.secs,
        settings.warmup
    );
    println!(
        "compare: {} | {} | {}",
        version(&nginx, "-v"),
        version(&squid, "-v"),
        settings.proxy_bin.display()
    );
    let mut world = World::start(&settings, &nginx, &squid);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    sanity(&rt, &mut world);
    let results = measure(&rt, &world, &settings);
    print_tables(&results, &world, &settings);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "compare: load average at the end {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
