//! Transparent mode end to end, in a network namespace this test creates (`ip netns`,
//! loopback only, removed on drop): the real binary runs as uid 1337, the rules come from
//! `oauth-egress iptables --apply` (Debian's iptables, nft backend), the authorization server
//! and the upstreams listen inside the namespace on loopback addresses the rules redirect
//! (10.203.0.2 and .3), and the clients (curl without `-x`, Python `requests` without proxy
//! variables) run as root, whose traffic is redirected.
//!
//! Skips with a loud message only when not root or when netns/iptables are unavailable.
#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use oauth_egress_devserver::{AuthServer, DevClient, EchoApi, TestPki};

const BIN: &str = env!("CARGO_BIN_EXE_oauth-egress");
const PROXY_UID: &str = "1337";
const API: &str = "10.203.0.2";
const OTHER: &str = "10.203.0.3";
const API6: &str = "fd00:203::2";

/// A network namespace, deleted (with its `/etc/netns` files) on drop.
struct Netns {
    name: String,
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Netns {
    fn create() -> Result<Netns, String> {
        let name = format!("oe-transparent-{}", std::process::id());
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = Netns { name };
        ns.run(&["ip", "link", "set", "lo", "up"])?;
        for addr in [API, OTHER] {
            ns.run(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"])?;
        }
        ns.run(&[
            "ip",
            "-6",
            "addr",
            "add",
            &format!("{API6}/128"),
            "dev",
            "lo",
            "nodad",
        ])?;
        // `ip netns exec` mounts this over /etc/hosts for everything run in the namespace.
        let etc = format!("/etc/netns/{}", ns.name);
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        let hosts = format!(
            "127.0.0.1 localhost\n{API} api.transparent.test\n{OTHER} other.transparent.test\n"
        );
        std::fs::write(format!("{etc}/hosts"), hosts).map_err(|e| e.to_string())?;
        Ok(ns)
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        for var in [
            "HTTPS_PROXY",
            "https_proxy",
            "HTTP_PROXY",
            "http_proxy",
            "ALL_PROXY",
        ] {
            cmd.env_remove(var);
        }
        cmd
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        run(self.command(args[0]).args(&args[1..]))
    }

    /// A listener inside the namespace: bound by a thread that entered it (a socket stays
    /// in the namespace it was made in).
    fn bind(&self, addr: &str) -> tokio::net::TcpListener {
        let path = format!("/run/netns/{}", self.name);
        let addr = addr.to_string();
        let listener = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap();
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            std::net::TcpListener::bind(&addr).unwrap()
        })
        .join()
        .unwrap();
        listener.set_nonblocking(true).unwrap();
        tokio::net::TcpListener::from_std(listener).unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run(Command::new("ip").args(["netns", "del", &self.name]));
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// The proxy process, killed (by its pid) on drop.
struct Proxy(std::process::Child);

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Why this machine cannot run the suite, if it cannot.
fn unavailable() -> Option<String> {
    match run(Command::new("id").arg("-u")) {
        Ok(uid) if uid.trim() == "0" => {}
        _ => return Some("not running as root".into()),
    }
    for tool in ["ip", "iptables", "ip6tables", "setpriv", "curl", "python3"] {
        if run(Command::new("sh").args(["-c", &format!("command -v {tool}")])).is_err() {
            return Some(format!("{tool} is not installed (.ci/run installs it)"));
        }
    }
    None
}

struct Servers {
    pki: TestPki,
    auth: AuthServer,
    api: EchoApi,
    other: EchoApi,
    other_plain: EchoApi,
}

async fn servers(ns: &Netns) -> Servers {
    let pki = TestPki::new("transparent upstream CA").unwrap();
    let auth = AuthServer::start(
        ns.bind("127.0.0.1:0"),
        pki.server_config(&["localhost"]).unwrap(),
        "localhost",
        vec![DevClient {
            id: "t-client".into(),
            secret: "t-secret".into(),
            allowed_scopes: None,
        }],
    )
    .await
    .unwrap();
    let tls = |name: &str| Some(pki.server_config(&[name]).unwrap());
    let api = EchoApi::start(
        ns.bind(&format!("{API}:443")),
        tls("api.transparent.test"),
        Some(auth.verifier()),
        None,
        None,
    )
    .await
    .unwrap();
    let other = EchoApi::start(
        ns.bind(&format!("{OTHER}:443")),
        tls("other.transparent.test"),
        None,
        None,
        None,
    )
    .await
    .unwrap();
    let other_plain = EchoApi::start(ns.bind(&format!("{OTHER}:80")), None, None, None, None)
        .await
        .unwrap();
    Servers {
        pki,
        auth,
        api,
        other,
        other_plain,
    }
}

/// The proxy in `ns`, as uid 1337, on a config in `dir`; returns once it listens.
fn start_proxy(ns: &Netns, dir: &std::path::Path, servers: &Servers) -> Proxy {
    let config = format!(
        "[proxy]\nlisten = \"127.0.0.1:3128\"\nallow_cidrs = [\"10.203.0.0/24\", \"fd00:203::/64\"]\n\
         upstream_roots = [\"upstream-ca.pem\"]\ncallers = \"known\"\n\
         [[caller]]\nname = \"pod\"\nsources = [\"127.0.0.0/8\", \"10.203.0.0/24\", \"::1/128\", \"fd00:203::/64\"]\n\
         [[caller]]\nname = \"elsewhere\"\nsources = [\"192.0.2.0/24\"]\n\
         [transparent]\nlisten = \"[::]:15001\"\nhttp_listen = \"[::]:15080\"\n\
         [clients.t]\ntoken_endpoint = \"{}\"\nclient_id = \"t-client\"\n\
         auth = \"client_secret_basic\"\nclient_secret = {{ file = \"secret\" }}\n\
         [[route]]\nhost = \"api.transparent.test\"\nclient = \"t\"\nupgrade_tls = true\n\
         [[route]]\nhost = \"locked.transparent.test\"\nclient = \"t\"\ncallers = [\"elsewhere\"]\n",
        servers.auth.token_endpoint()
    );
    std::fs::write(dir.join("routes.toml"), config).unwrap();
    std::fs::write(dir.join("secret"), "t-secret").unwrap();
    std::fs::write(dir.join("upstream-ca.pem"), servers.pki.ca_cert_pem()).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let mut child = ns
        .command("setpriv")
        .args([
            "--reuid",
            PROXY_UID,
            "--regid",
            PROXY_UID,
            "--clear-groups",
            BIN,
        ])
        .args(["run", "-c", "routes.toml"])
        .current_dir(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let proxy = Proxy(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("proxy: {line}");
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("oauth-egress listening") => return proxy,
            Ok(_) => {}
            Err(_) => break,
        }
    }
    panic!("the proxy did not start listening in the namespace");
}

/// curl in the namespace (no `-x`): the status code, or `000` when the connection failed.
async fn curl(ns: &Netns, args: &[&str]) -> String {
    let mut cmd = tokio::process::Command::from(ns.command("curl"));
    cmd.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "10",
    ])
    .args(args)
    .stdin(Stdio::null());
    let out = cmd.output().await.unwrap();
    eprintln!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_with_no_proxy_settings_get_tokens_through_iptables_redirects() {
    if let Some(why) = unavailable() {
        eprintln!("\n!!!!!!!!\nSKIPPED tests/transparent.rs: {why}; transparent mode was NOT tested\n!!!!!!!!\n");
        return;
    }
    let ns = match Netns::create() {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("\n!!!!!!!!\nSKIPPED tests/transparent.rs: cannot create a network namespace ({why}); transparent mode was NOT tested\n!!!!!!!!\n");
            return;
        }
    };
    let rules = ns
        .command(BIN)
        .args(["iptables", "--uid", PROXY_UID, "--apply"])
        .output()
        .unwrap();
    if !rules.status.success() {
        eprintln!("\n!!!!!!!!\nSKIPPED tests/transparent.rs: iptables rules cannot be applied in a namespace ({}); transparent mode was NOT tested\n!!!!!!!!\n", String::from_utf8_lossy(&rules.stderr));
        return;
    }
    let servers = servers(&ns).await;
    let dir = tempfile::tempdir().unwrap();
    let _proxy = start_proxy(&ns, dir.path(), &servers);
    let proxy_ca = dir.path().join("ca/ca.pem");
    let proxy_ca = proxy_ca.to_str().unwrap();
    let upstream_ca = dir.path().join("upstream-ca.pem");
    let upstream_ca = upstream_ca.to_str().unwrap();

    // curl with no proxy at all: intercepted by SNI, the token injected.
    let status = curl(
        &ns,
        &["--cacert", proxy_ca, "https://api.transparent.test/curl"],
    )
    .await;
    assert_eq!(status, "200");
    let seen = servers.api.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0]
            .authorization
            .as_deref()
            .unwrap_or("")
            .starts_with("Bearer "),
        "{seen:?}"
    );
    assert!(seen[0].jti.is_some(), "a valid token: {seen:?}");

    // Python requests, no proxy variables, trusting the proxy CA.
    let script = format!(
        "import requests; r = requests.get('https://api.transparent.test/python', verify='{proxy_ca}', timeout=10); print(r.status_code)"
    );
    let out = ns
        .command("python3")
        .args(["-c", &script])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        servers.api.seen().last().map(|s| s.path.clone()).as_deref(),
        Some("/python")
    );

    // IPv6 (ip6tables, IP6T_SO_ORIGINAL_DST): nothing listens on the API's IPv6 address,
    // so a 200 under the proxy's CA means the connection was redirected and intercepted
    // (and sent upstream to the route's host, as a CONNECT would be).
    let resolve6 = format!("api.transparent.test:443:[{API6}]");
    let status = curl(
        &ns,
        &[
            "--cacert",
            proxy_ca,
            "--resolve",
            &resolve6,
            "https://api.transparent.test/v6",
        ],
    )
    .await;
    assert_eq!(status, "200");
    let last = servers.api.seen().last().cloned().unwrap();
    assert_eq!(last.path, "/v6");
    assert!(last.jti.is_some(), "{last:?}");

    // Plain http on port 80: routed by Host, upgraded to TLS (upgrade_tls), token injected.
    let status = curl(&ns, &["http://api.transparent.test/plain"]).await;
    assert_eq!(status, "200");
    let last = servers.api.seen().last().cloned().unwrap();
    assert_eq!(last.path, "/plain");
    assert!(last.jti.is_some(), "{last:?}");

    // The proxy's own upstream connections were not redirected back to it: each request
    // reached the resource server exactly once, and the token endpoint was asked once.
    assert_eq!(servers.api.requests(), 4);
    assert_eq!(servers.auth.token_requests(), 1);

    // An unrouted host is spliced to its original address untouched: the client sees the
    // upstream's own certificate (the test CA, not the proxy's) and no token is added.
    let status = curl(
        &ns,
        &[
            "--cacert",
            upstream_ca,
            "https://other.transparent.test/spliced",
        ],
    )
    .await;
    assert_eq!(status, "200");
    let seen = servers.other.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].authorization, None);
    // The splice goes to the original destination address, never to what the SNI resolves
    // to: an SNI for the unrouted name sent to the API's address lands on the API (which
    // wants a token and gets none), not on the unrouted host.
    let resolve = format!("other.transparent.test:443:{API}");
    let status = curl(
        &ns,
        &[
            "-k",
            "--resolve",
            &resolve,
            "https://other.transparent.test/resolved",
        ],
    )
    .await;
    assert_eq!(status, "401");
    let last = servers.api.seen().last().cloned().unwrap();
    assert_eq!(
        (last.path.as_str(), last.authorization),
        ("/resolved", None)
    );
    assert_eq!(servers.other.requests(), 1);
    let status = curl(&ns, &["http://other.transparent.test/plain-unrouted"]).await;
    assert_eq!(status, "200");
    let seen = servers.other_plain.seen();
    assert_eq!(
        (seen.len(), seen[0].authorization.clone()),
        (1, None),
        "{seen:?}"
    );
    assert_eq!(seen[0].hosts, ["other.transparent.test"]);

    // A routed SNI with a Host for another name: 421, never sent, no token spent.
    let status = curl(
        &ns,
        &[
            "--cacert",
            proxy_ca,
            "-H",
            "Host: other.transparent.test",
            "https://api.transparent.test/misdirected",
        ],
    )
    .await;
    assert_eq!(status, "421");
    // Plain http: the first request's Host routes the connection, and a later request on
    // it naming another host gets 421 (the connection is bound to the first).
    let status = curl(
        &ns,
        &[
            "http://api.transparent.test/first",
            "--next",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
            "Host: other.transparent.test",
            "http://api.transparent.test/misdirected",
        ],
    )
    .await;
    assert_eq!(status, "200421");
    let last = servers.api.seen().last().map(|s| s.path.clone());
    assert_eq!(last.as_deref(), Some("/first"));
    assert_eq!(servers.api.requests(), 6);
    assert_eq!(servers.other.requests(), 1);

    // Callers are known by source address alone: the pod's connections are admitted under
    // `callers = "known"` (every request above), and a route for another caller refuses it
    // with 403 before any token, however the connection reached the proxy.
    let resolve = format!("locked.transparent.test:443:{OTHER}");
    let status = curl(
        &ns,
        &[
            "--cacert",
            proxy_ca,
            "--resolve",
            &resolve,
            "https://locked.transparent.test/locked",
        ],
    )
    .await;
    assert_eq!(status, "403");
    assert_eq!(servers.other.requests(), 1);
    assert_eq!(servers.auth.token_requests(), 1);

    // A connection straight to the transparent listener (no original destination of its
    // own) is refused, not served as a loop.
    let status = curl(&ns, &["-k", "https://127.0.0.1:15001/direct"]).await;
    assert_eq!(status, "000");
    assert_eq!(servers.api.requests() + servers.other.requests(), 7);
}
