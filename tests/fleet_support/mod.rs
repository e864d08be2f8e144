//! For `fleet.rs`: a real `redis-server` on a free loopback port, and `oauth-egress run`
//! replicas (separate processes) sharing it. Every child is killed by its PID when its guard
//! drops; every wait is bounded.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_oauth-egress");

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` of our own (no persistence), killed by PID on drop.
pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    args: Vec<String>,
    pub dir: tempfile::TempDir,
}

impl Redis {
    /// Starts one on a free port with `args` appended (e.g. ACL users; `{PORT}` is replaced
    /// by the port); retries on a port taken between choosing and binding.
    pub fn start(args: &[&str]) -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = Redis {
            child: None,
            port: 0,
            args: args.iter().map(|a| a.to_string()).collect(),
            dir,
        };
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start (is it installed? apt-get install redis-server)");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .args(["--dir", &self.dir.path().display().to_string()])
            .args(
                self.args
                    .iter()
                    .map(|a| a.replace("{PORT}", &self.port.to_string())),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    self.child = None;
                    return false;
                }
            }
            if self.answers() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Whether something answers the Redis protocol on the port (any reply, even NOAUTH).
    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        if self.args.iter().any(|a| a == "--tls-port") {
            return true;
        }
        let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 1];
        s.write_all(b"PING\r\n").is_ok() && s.read(&mut buf).is_ok_and(|n| n > 0)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL, by PID) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A frozen process dies of SIGKILL too; thaw it anyway so nothing lingers.
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `signal` (`STOP`: frozen, every operation hangs; `CONT`: thawed) by PID.
    pub fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().map(|c| c.id()).unwrap();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Starts it again on the same port (empty: no persistence).
    pub fn restart(&mut self) {
        assert!(
            self.spawn(),
            "redis-server did not restart on {}",
            self.port
        );
    }

    /// A plain connection as `user`/`password` (default user when `None`).
    pub fn connection(&self, auth: Option<(&str, &str)>) -> redis::Connection {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_connection().unwrap();
        if let Some((user, password)) = auth {
            redis::cmd("AUTH")
                .arg(user)
                .arg(password)
                .query::<()>(&mut conn)
                .unwrap();
        }
        conn
    }

    /// Every key and its value (strings only: the proxy writes nothing else).
    pub fn dump(&self, auth: Option<(&str, &str)>) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut conn = self.connection(auth);
        let keys: Vec<Vec<u8>> = redis::cmd("KEYS").arg("*").query(&mut conn).unwrap();
        keys.into_iter()
            .map(|k| {
                let v: Option<Vec<u8>> = redis::cmd("GET").arg(&k).query(&mut conn).unwrap();
                (k, v.unwrap_or_default())
            })
            .collect()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One `oauth-egress run` process, its directory and a client going through it.
pub struct Replica {
    child: Child,
    pub name: String,
    pub port: u16,
    pub admin: u16,
    pub dir: PathBuf,
    pub client: reqwest::Client,
    logs: mpsc::Receiver<String>,
}

impl Replica {
    /// Starts `oauth-egress run` in `dir` (created) on `config` (with `{PORT}` and `{ADMIN}`
    /// filled in), files in `files` written first; waits (bounded) until it listens.
    pub fn start(name: &str, dir: &Path, config: &str, files: &[(&str, &[u8])]) -> Replica {
        std::fs::create_dir_all(dir).unwrap();
        for (file, content) in files {
            std::fs::write(dir.join(file), content).unwrap();
        }
        let (port, admin) = (free_port(), free_port());
        let text = config
            .replace("{PORT}", &port.to_string())
            .replace("{ADMIN}", &admin.to_string());
        std::fs::write(dir.join("routes.toml"), text).unwrap();
        let mut child = Command::new(BIN)
            .args(["run", "-c", "routes.toml"])
            .current_dir(dir)
            .env_remove("OAUTH_EGRESS_CONFIG")
            .env("RUST_LOG", "info,oauth_egress=debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut replica = Replica {
            child,
            name: name.into(),
            port,
            admin,
            dir: dir.to_owned(),
            client: reqwest::Client::new(),
            logs,
        };
        replica.wait_for("oauth-egress listening");
        replica.client = replica.make_client();
        replica
    }

    fn make_client(&self) -> reqwest::Client {
        use rustls::pki_types::pem::PemObject;
        let pem = std::fs::read(self.dir.join("ca/ca.pem")).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap())
            .unwrap();
        let tls = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .proxy(reqwest::Proxy::all(format!("http://127.0.0.1:{}", self.port)).unwrap())
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
    }

    /// Waits (at most 60 s: a loaded 2-core CI machine starts many replicas at once) for a
    /// log line containing `needle`; panics with the lines seen.
    pub fn wait_for(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut seen = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.logs.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push(line),
                Err(_) => break,
            }
        }
        panic!(
            "{}: no log line containing {needle:?}:\n{}",
            self.name,
            seen.join("\n")
        );
    }

    /// Every log line so far.
    pub fn drain_logs(&mut self) -> Vec<String> {
        self.logs.try_iter().collect()
    }

    /// SIGKILL, by PID.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The value of metric `name` (first sample whose labels include `labels`), 0 if absent.
    pub async fn metric(&self, name: &str, labels: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        let text = reqwest::Client::builder()
            .no_proxy()
            .build()
            .unwrap()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find_map(|line| {
                let rest = line.strip_prefix(name)?;
                if !(rest.starts_with('{') || rest.starts_with(' ')) || !rest.contains(labels) {
                    return None;
                }
                line.rsplit(' ').next()?.parse().ok()
            })
            .unwrap_or(0.0)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether `redis-cli` (Debian's redis-tools, a dependency of redis-server) runs here.
pub fn have_redis_cli() -> bool {
    Command::new("redis-cli")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A Redis Cluster of three primaries (no replicas) on free loopback ports, made with
/// `redis-cli --cluster create`; each node killed by PID on drop.
pub struct Cluster {
    pub nodes: Vec<Redis>,
}

impl Cluster {
    /// Starts three `--cluster-enabled` nodes (bus ports chosen free too: port + 10000 may not
    /// exist), joins them, and waits (bounded) until every node reports `cluster_state:ok`.
    pub fn start() -> Cluster {
        Cluster::start_with(&[], &[])
    }

    /// Like [`Cluster::start`], over TLS only (`--tls-cluster yes`, the bus too): `cert`,
    /// `key` and `ca` are PEM files; clients are not asked for certificates, but the nodes
    /// always are on the bus (`client_cert`, `client_key`: a clientAuth certificate).
    pub fn start_tls(
        cert: &str,
        key: &str,
        client_cert: &str,
        client_key: &str,
        ca: &str,
    ) -> Cluster {
        let server = [
            "--port",
            "0",
            "--tls-port",
            "{PORT}",
            "--tls-cluster",
            "yes",
            "--tls-cert-file",
            cert,
            "--tls-key-file",
            key,
            "--tls-client-cert-file",
            client_cert,
            "--tls-client-key-file",
            client_key,
            "--tls-ca-cert-file",
            ca,
            "--tls-auth-clients",
            "no",
        ];
        Cluster::start_with(&server, &["--tls", "--cacert", ca])
    }

    fn start_with(server: &[&str], cli: &[&str]) -> Cluster {
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let bus = free_port().to_string();
                let mut args = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                    "--cluster-node-timeout",
                    "2000",
                ];
                args.extend_from_slice(server);
                Redis::start(&args)
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        // Bounded: `--cluster create` waits forever for nodes that cannot meet on the bus.
        let out = Command::new("timeout")
            .args(["30", "redis-cli"])
            .args(cli)
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli");
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster { nodes };
        let deadline = Instant::now() + Duration::from_secs(15);
        while !cluster.ok(cli) {
            assert!(Instant::now() < deadline, "the cluster never reported ok");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Whether every node says `cluster_state:ok` (asked with `redis-cli`, TLS or not).
    fn ok(&self, cli: &[&str]) -> bool {
        self.nodes.iter().all(|n| {
            Command::new("redis-cli")
                .args(cli)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &n.port.to_string(),
                    "cluster",
                    "info",
                ])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("cluster_state:ok"))
        })
    }

    /// `redis+cluster://` naming every node.
    pub fn url(&self) -> String {
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", nodes.join(","))
    }

    /// `rediss+cluster://` naming every node.
    pub fn tls_url(&self) -> String {
        self.url().replacen("redis+", "rediss+", 1)
    }

    /// How many subscribers `channel` has on each node (a node counts only its own).
    pub fn subscribers(&self, channel: &str) -> Vec<i64> {
        self.nodes
            .iter()
            .map(|n| {
                let mut conn = n.connection(None);
                let reply: (String, i64) = redis::cmd("PUBSUB")
                    .arg("NUMSUB")
                    .arg(channel)
                    .query(&mut conn)
                    .unwrap();
                reply.1
            })
            .collect()
    }

    /// Closes every pub/sub connection to node `i` (`CLIENT KILL TYPE pubsub`).
    pub fn kick_subscribers(&self, i: usize) {
        let mut conn = self.nodes[i].connection(None);
        redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("pubsub")
            .query::<i64>(&mut conn)
            .unwrap();
    }

    /// Every key and value, node by node (each node holds its own slots' keys).
    pub fn dumps(&self) -> Vec<Vec<(Vec<u8>, Vec<u8>)>> {
        self.nodes.iter().map(|n| n.dump(None)).collect()
    }
}

/// The servers a fleet test's replicas talk to, in the test's process.
pub struct Servers {
    pub pki: oauth_egress_devserver::TestPki,
    pub auth: oauth_egress_devserver::AuthServer,
    pub api: oauth_egress_devserver::EchoApi,
    pub dir: tempfile::TempDir,
    /// A fresh `cache.encryption_key`.
    pub key: String,
}

/// A development authorization server (one client, `{name}-client` with `secret`) and an
/// echo API verifying its tokens, both on `127.0.0.1:0` over TLS from a fresh test CA.
pub async fn servers(name: &str, secret: &str) -> Servers {
    use oauth_egress_devserver::{AuthServer, DevClient, EchoApi, TestPki};
    use tokio::net::TcpListener;
    let pki = TestPki::new(&format!("{name} upstream CA")).unwrap();
    let tls = pki.server_config(&["localhost"]).unwrap();
    let client = DevClient {
        id: format!("{name}-client"),
        secret: secret.into(),
        allowed_scopes: None,
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let auth = AuthServer::start(listener, tls.clone(), "localhost", vec![client])
        .await
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let api = EchoApi::start(listener, Some(tls), Some(auth.verifier()), None, None)
        .await
        .unwrap();
    Servers {
        pki,
        auth,
        api,
        dir: tempfile::tempdir().unwrap(),
        key: oauth_egress::token::shared::generate_key().unwrap(),
    }
}
