//! `status` (the admin listener's `/status` as a terminal table) and `healthcheck` (exit 0
//! when `/readyz` answers 200: for a container `HEALTHCHECK` and exec probes). Both find the
//! admin listener from `--admin ADDR` or the config's `[admin] listen`, and send
//! `OAUTH_EGRESS_ADMIN_TOKEN` (or the config's `admin.token`) when there is one.

use std::net::SocketAddr;
use std::time::Duration;

use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use oauth_egress::secret::{ExposeSecret, SecretString};
use oauth_egress::status::html::{format_secs, format_unix};
use serde_json::Value;

use super::{load, ConfigArg, Failure};

/// Where the admin listener is and how to reach it.
#[derive(clap::Args)]
pub(crate) struct AdminArgs {
    /// The admin listener (`host:port`); default: the config's `[admin] listen`.
    #[arg(long)]
    pub(crate) admin: Option<SocketAddr>,
    #[command(flatten)]
    pub(crate) config: ConfigArg,
}

/// How long a call to the admin listener may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(5);

/// The address and bearer token to use.
fn target(args: &AdminArgs) -> Result<(SocketAddr, Option<SecretString>), Failure> {
    let env_token = std::env::var("OAUTH_EGRESS_ADMIN_TOKEN")
        .ok()
        .filter(|t| !t.is_empty())
        .map(SecretString::from);
    if let Some(addr) = args.admin {
        return Ok((addr, env_token));
    }
    let config = load(&args.config.config)?;
    let Some(admin) = &config.admin else {
        return Err(Failure::Config(format!(
            "{}: no [admin] section, so no admin listener to ask; pass --admin HOST:PORT",
            config.origin
        )));
    };
    let mut addr = admin.listen;
    if addr.ip().is_unspecified() {
        // Bound to every address: ask over loopback.
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    let token = match (env_token, &admin.token) {
        (Some(token), _) => Some(token),
        (None, Some(source)) => Some(
            source
                .load()
                .map_err(|e| Failure::Config(format!("{}: admin.token: {e}", config.origin)))?,
        ),
        (None, None) => None,
    };
    Ok((addr, token))
}

/// `GET path` on the admin listener: status and body, or a one-line reason.
async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&SecretString>,
) -> Result<(u16, String), String> {
    let call = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("cannot connect to the admin listener at {addr}: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|e| format!("admin listener at {addr}: {e}"))?;
        tokio::spawn(conn);
        let mut req = http::Request::get(path).header(http::header::HOST, addr.to_string());
        if let Some(token) = token {
            let mut value =
                http::HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(
                    |_| "OAUTH_EGRESS_ADMIN_TOKEN is not a valid header value".to_string(),
                )?;
            value.set_sensitive(true);
            req = req.header(http::header::AUTHORIZATION, value);
        }
        let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("admin listener at {addr}: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("admin listener at {addr}: {e}"))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(TIMEOUT, call)
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the admin listener at {addr} did not answer within {}s",
                TIMEOUT.as_secs()
            ))
        })
}

/// `healthcheck`: 0 when `/readyz` answers 200, else 1 with the reason on one line.
pub(crate) async fn healthcheck(args: &AdminArgs) -> Result<(), Failure> {
    let (addr, token) = target(args)?;
    match get(addr, "/readyz", token.as_ref()).await {
        Ok((200, _)) => Ok(()),
        Ok((status, body)) => Err(Failure::Other(anyhow::anyhow!(
            "{addr}/readyz answered {status}: {}",
            body.trim()
        ))),
        Err(why) => Err(Failure::Other(anyhow::anyhow!(why))),
    }
}

/// `status`: `/status` as a table.
pub(crate) async fn status(args: &AdminArgs) -> Result<(), Failure> {
    let (addr, token) = target(args)?;
    let (code, body) = get(addr, "/status", token.as_ref())
        .await
        .map_err(|why| Failure::Other(anyhow::anyhow!(why)))?;
    if code != 200 {
        return Err(Failure::Other(anyhow::anyhow!(
            "{addr}/status answered {code}: {}",
            body.trim()
        )));
    }
    let status: Value = serde_json::from_str(&body)
        .map_err(|e| Failure::Other(anyhow::anyhow!("{addr}/status is not JSON: {e}")))?;
    print!("{}", table(&status));
    Ok(())
}

fn when(v: &Value) -> String {
    v.as_u64().map_or_else(|| "-".into(), format_unix)
}

/// The status JSON as a terminal table (also used by the tests through the binary).
fn table(s: &Value) -> String {
    let mut out = format!(
        "oauth-egress {} · {} · config {} · last reload {}\n",
        s["version"].as_str().unwrap_or("?"),
        if s["ready"].as_bool() == Some(true) {
            "ready"
        } else {
            "NOT READY"
        },
        s["config"]["file"].as_str().unwrap_or("?"),
        match &s["config"]["last_reload"] {
            Value::Null => "none".to_string(),
            r if r["ok"].as_bool() == Some(true) => format!("{} ok", when(&r["at_unix"])),
            r => format!(
                "{} refused: {}",
                when(&r["at_unix"]),
                r["error"].as_str().unwrap_or("?")
            ),
        }
    );
    let ca = &s["ca"];
    out.push_str(&format!(
        "CA {} · SHA-256 {} · not after {} · {} leaves cached\n\n",
        ca["subject"].as_str().unwrap_or("?"),
        ca["sha256_fingerprint"].as_str().unwrap_or("?"),
        when(&ca["not_after_unix"]),
        ca["leaves_cached"]
    ));
    out.push_str(&format!(
        "{:<20} {:<9} {:>9} {:<24} {:>8} {:>7} {:>7}  {}\n",
        "ROUTE", "TOKEN", "EXPIRES", "LAST FETCH", "LATENCY", "REQ/5m", "401/5m", "LAST ERROR"
    ));
    for r in s["routes"].as_array().into_iter().flatten() {
        let t = &r["token"];
        let fetch = &t["last_fetch"];
        let error = match &t["last_error"] {
            Value::Null => "-".to_string(),
            e => format!(
                "{}{} ({})",
                e["oauth_error"]
                    .as_str()
                    .or(e["kind"].as_str())
                    .unwrap_or("?"),
                e["description"]
                    .as_str()
                    .map(|d| format!(": {d}"))
                    .unwrap_or_default(),
                when(&e["at_unix"])
            ),
        };
        out.push_str(&format!(
            "{:<20} {:<9} {:>9} {:<24} {:>8} {:>7} {:>7}  {}\n",
            r["name"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("?"),
            t["expires_in_seconds"]
                .as_u64()
                .map_or_else(|| "-".into(), format_secs),
            when(&fetch["at_unix"]),
            fetch["latency_ms"]
                .as_u64()
                .map_or_else(|| "-".into(), |ms| format!("{ms} ms")),
            r["last_5m"]["requests"],
            r["last_5m"]["retries_401"],
            error
        ));
    }
    out
}
