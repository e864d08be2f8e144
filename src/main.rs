//! The `oauth-egress` command: `run`, `check`, `ca export`, `env`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use oauth_egress::config::{self, Config};
use oauth_egress::intercept::ca::CertificateAuthority;

/// sysexits' EX_USAGE: the configuration is wrong.
const EX_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "oauth-egress",
    version,
    about = "An egress forward proxy that injects OAuth tokens"
)]
struct Cli {
    /// Log format: human-readable text, or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "OAUTH_EGRESS_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ConfigArg {
    /// The route table.
    #[arg(
        short,
        long,
        env = "OAUTH_EGRESS_CONFIG",
        default_value = "routes.toml"
    )]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the proxy.
    Run(ConfigArg),
    /// Validate the configuration and print the route table.
    Check(CheckArgs),
    /// The interception CA.
    Ca {
        #[command(subcommand)]
        command: CaCommand,
    },
    /// Print the shell exports that point a service at this proxy: proxy URL, CA path and the
    /// common CA-bundle variables (`eval "$(oauth-egress env)"`).
    Env(EnvArgs),
    /// Run the proxy on the shipped routes.toml with a development authorization server and
    /// an echo API, and show a curl command that goes through it.
    Demo {
        /// Use this file instead of the routes.toml compiled into the binary.
        #[arg(short, long)]
        config: Option<PathBuf>,
        /// Make one request through the proxy, print it, and exit (a self-check).
        #[arg(long)]
        once: bool,
    },
}

#[derive(clap::Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Also get a token for every route from its authorization server, so wrong credentials,
    /// scopes or audiences show now rather than on the first request. Skips refresh_token
    /// routes (a refresh would rotate the token a running proxy holds) and routes that
    /// exchange the caller's own token.
    #[arg(long)]
    fetch: bool,
}

#[derive(clap::Args)]
struct EnvArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The proxy URL clients use (default: from `proxy.listen`, `0.0.0.0` read as loopback).
    /// Set it when services reach the proxy by another name, e.g. a Kubernetes Service.
    #[arg(long)]
    proxy_url: Option<String>,
    /// Where to write the bundle of system roots plus the proxy's CA
    /// (default: `ca-bundle.pem` beside `proxy.ca_cert`).
    #[arg(long)]
    bundle: Option<PathBuf>,
    /// The system CA bundle to start from (default: the first of the usual places that exists).
    #[arg(long)]
    system_roots: Option<PathBuf>,
    /// `sh` prints `export NAME='value'`; `dotenv` prints `NAME=value` (Docker `--env-file`).
    #[arg(long, value_enum, default_value = "sh")]
    format: oauth_egress::client_env::Format,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (PEM), creating the CA if absent, for clients to trust.
    Export(ConfigArg),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    oauth_egress::metrics::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("oauth-egress: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(arg) => run(&arg.config).await,
            Command::Check(args) => check(&args.config.config, args.fetch).await,
            Command::Ca {
                command: CaCommand::Export(arg),
            } => ca_export(&arg.config),
            Command::Env(args) => env(&args),
            Command::Demo { config, once } => demo(config, once).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("oauth-egress: {message}");
            ExitCode::from(EX_USAGE)
        }
        Err(Failure::Other(err)) => {
            eprintln!("oauth-egress: {err:#}");
            ExitCode::FAILURE
        }
    }
}

/// A configuration problem (exit 64) or anything else (exit 1).
enum Failure {
    Config(String),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(err: anyhow::Error) -> Self {
        Failure::Other(err)
    }
}

fn load(path: &std::path::Path) -> Result<Config, Failure> {
    config::load(path).map_err(|e| Failure::Config(e.to_string()))
}

fn load_ca(config: &Config) -> Result<Arc<CertificateAuthority>, Failure> {
    let (ca, created) =
        CertificateAuthority::load_or_create(&config.proxy.ca_cert, &config.proxy.ca_key)
            .map_err(|e| Failure::Config(format!("interception CA: {e}")))?;
    if created {
        tracing::info!(cert = %config.proxy.ca_cert, "generated a new interception CA; clients must trust this certificate");
    }
    Ok(Arc::new(ca))
}

async fn run(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let ca = load_ca(&config)?;
    // Before serving: a SIGHUP or SIGTERM that arrives once "listening" is logged must
    // reload or stop cleanly, not kill the process (their default action).
    let mut reloads = reload_triggers(path.to_owned());
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let running = start(config, ca, &[]).await?;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(why) = reloads.recv() => {
                tracing::info!(trigger = why, config = %path.display(), "reloading configuration");
                let result = match config::load(path) {
                    Ok(config) => running.reload(config).await,
                    Err(err) => {
                        oauth_egress::metrics::reload("rejected");
                        Err(err.to_string())
                    }
                };
                if let Err(err) = result {
                    let err = err.replace(":\n  - ", ": ").replace("\n  - ", "; ");
                    tracing::error!(error = %err, "configuration rejected; the previous one keeps serving");
                }
            }
        }
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// SIGHUP, and a change of the config file (its modification time or size, polled every
/// two seconds: no platform watcher to configure, and editors' rename-on-save is seen too).
fn reload_triggers(path: PathBuf) -> tokio::sync::mpsc::Receiver<&'static str> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered here, not in the task, so the handler is in place when this returns.
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send("SIGHUP").await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP; reload by changing the file")
            }
        }
    }
    tokio::spawn(async move {
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = stamp(&path);
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let now = stamp(&path);
            if now != last {
                last = now;
                if tx.send("file changed").await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn start(
    config: Config,
    ca: Arc<CertificateAuthority>,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<oauth_egress::server::Running, Failure> {
    let origin = config.origin.clone();
    oauth_egress::server::start(config, ca, extra_roots)
        .await
        .map_err(|err| match err {
            oauth_egress::server::ServeError::Preflight(problems) => {
                Failure::Config(format!("{origin}: {problems}"))
            }
            other => Failure::Other(other.into()),
        })
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future
/// is first polled, so a signal that arrives while the proxy starts stops it cleanly instead
/// of killing it (the default action).
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = recv(term) => {}
                () = recv(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn check(path: &std::path::Path, fetch: bool) -> Result<(), Failure> {
    use oauth_egress::preflight::{preflight, Basis, Problem};
    let config = load(path)?;
    let mut problems = Vec::new();
    let (cert, key) = (&config.proxy.ca_cert, &config.proxy.ca_key);
    let ca_state = if !(cert.is_absent_file() && key.is_absent_file()) {
        match CertificateAuthority::load_or_create(cert, key) {
            Ok(_) => format!("{cert} (loaded)"),
            Err(err) => {
                problems.push(Problem::new("proxy.ca_cert", err));
                String::new()
            }
        }
    } else {
        format!("{cert} (absent: generated on first start)")
    };
    let mut fetched = Vec::new();
    match CertificateAuthority::generate() {
        Ok(scratch_ca) => {
            let basis = Basis::Start {
                ca: Arc::new(scratch_ca),
                extra_roots: &[],
            };
            match preflight(config.clone(), basis).await {
                Ok(checked) => {
                    problems.extend(checked.unreachable);
                    if fetch && problems.is_empty() {
                        let results = fetch_tokens(&checked.proxy).await;
                        problems.extend(results.iter().filter_map(|r| r.problem()));
                        fetched = results;
                    }
                }
                Err(found) => problems.extend(found.0),
            }
        }
        Err(err) => problems.push(Problem::new("proxy", err)),
    }
    let print_tokens = |fetched: &[Fetched]| {
        if !fetched.is_empty() {
            println!("tokens:");
            for result in fetched {
                println!("  {result}");
            }
        }
    };
    if !problems.is_empty() {
        // Every route's result, not only the failures, then the problems.
        print_tokens(&fetched);
        return Err(Failure::Config(format!(
            "{}: {}",
            config.origin,
            oauth_egress::preflight::Problems(problems)
        )));
    }
    println!("{}: OK", config.origin);
    println!(
        "proxy  {} (unmatched hosts: {:?}), CA {ca_state}",
        config.proxy.listen, config.proxy.unmatched
    );
    println!("routes ({}):", config.routes.len());
    for route in &config.routes {
        let client = &config.clients[&route.client];
        let port = route
            .port
            .map(|p| format!(":{p}"))
            .unwrap_or_else(|| ":*".into());
        let path = route.path_prefix.as_deref().unwrap_or("/");
        let mut extra = String::new();
        if !route.scopes.is_empty() {
            extra.push_str(&format!(" scopes={}", route.scopes.join(",")));
        }
        if let Some(a) = &route.audience {
            extra.push_str(&format!(" audience={a}"));
        }
        if let Some(r) = &route.resource {
            extra.push_str(&format!(" resource={r}"));
        }
        if route.upgrade_tls {
            extra.push_str(" upgrade_tls");
        }
        if route.allow_plaintext {
            extra.push_str(" allow_plaintext");
        }
        println!(
            "  {:<20} {}{port}{path} -> client {} ({}, {} at {}){extra}",
            route.name,
            route.host,
            client.name,
            route.grant.name(),
            client.auth,
            client.endpoint_label()
        );
    }
    print_tokens(&fetched);
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    Ok(())
}

/// One route's line in `check --fetch`'s table.
struct Fetched {
    route: String,
    outcome: FetchOutcome,
}

enum FetchOutcome {
    Ok(String),
    Skipped(&'static str),
    Failed(String),
}

impl Fetched {
    /// The failure as a problem, naming the route.
    fn problem(&self) -> Option<oauth_egress::preflight::Problem> {
        match &self.outcome {
            FetchOutcome::Failed(why) => Some(oauth_egress::preflight::Problem::new(
                format!("route {}", self.route),
                why,
            )),
            _ => None,
        }
    }
}

impl std::fmt::Display for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = &self.route;
        match &self.outcome {
            FetchOutcome::Ok(what) => write!(f, "{name:<20} OK: {what}"),
            FetchOutcome::Skipped(why) => write!(f, "{name:<20} skipped: {why}"),
            FetchOutcome::Failed(why) => write!(f, "{name:<20} FAILED: {why}"),
        }
    }
}

/// `check --fetch`: one token per route (routes sharing a token share the request), and a
/// result for every route: ok, skipped and why, or failed and why (naming the OAuth error,
/// never a token).
async fn fetch_tokens(proxy: &oauth_egress::proxy::Proxy) -> Vec<Fetched> {
    use oauth_egress::config::Grant;
    let mut results = Vec::new();
    for route in proxy.routes.routes() {
        let skip = match &route.spec.grant {
            Grant::RefreshToken { .. } => {
                Some("a refresh would rotate the token a running proxy holds")
            }
            grant if grant.exchanges_callers_token() => Some("exchanges each caller's own token"),
            _ => None,
        };
        let outcome = match skip {
            Some(why) => FetchOutcome::Skipped(why),
            None => fetch_one(route).await,
        };
        results.push(Fetched {
            route: route.spec.name.clone(),
            outcome,
        });
    }
    results
}

async fn fetch_one(route: &oauth_egress::route::Route) -> FetchOutcome {
    let slot = match route.token.slot(&http::HeaderMap::new()) {
        Ok(slot) => slot,
        Err(err) => return FetchOutcome::Failed(err.to_string()),
    };
    let started = std::time::Instant::now();
    match slot.get().await {
        Ok((token, _)) => {
            let lifetime = token
                .usable_until
                .saturating_duration_since(tokio::time::Instant::now())
                .as_secs();
            let scope = token
                .granted_scope
                .as_deref()
                .map(|s| format!(", scope \"{s}\""))
                .unwrap_or_default();
            FetchOutcome::Ok(format!(
                "{} token, usable for {lifetime} s{scope} ({} ms)",
                token.scheme.name(),
                started.elapsed().as_millis()
            ))
        }
        Err(err) => FetchOutcome::Failed(err.to_string()),
    }
}

fn ca_export(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    let ca = load_ca(&config)?;
    print!("{}", ca.cert_pem());
    Ok(())
}

fn env(args: &EnvArgs) -> Result<(), Failure> {
    use oauth_egress::client_env::{self, ClientEnv};
    let config = load(&args.config.config)?;
    let ca = load_ca(&config)?;
    // Clients are given a path: a CA certificate held in a variable has none.
    let Some(ca_path) = config.proxy.ca_cert.path() else {
        return Err(Failure::Config(format!(
            "{}: proxy.ca_cert is {}; `env` gives clients a file: write it with `oauth-egress ca export > ca.pem` and point them there",
            config.origin, config.proxy.ca_cert
        )));
    };
    let ca_cert = absolute(ca_path);
    let system = args
        .system_roots
        .clone()
        .or_else(client_env::find_system_bundle);
    let bundle = match system {
        Some(system) => {
            let out = absolute(
                &args
                    .bundle
                    .clone()
                    .unwrap_or_else(|| ca_path.with_file_name("ca-bundle.pem")),
            );
            client_env::write_bundle(&system, ca.cert_pem(), &out)
                .map_err(|err| Failure::Other(err.into()))?;
            Some(out)
        }
        None => None,
    };
    let env = ClientEnv {
        proxy_url: args
            .proxy_url
            .clone()
            .unwrap_or_else(|| client_env::proxy_url(config.proxy.listen)),
        ca_cert,
        bundle,
    };
    print!("{}", env.render(args.format));
    Ok(())
}

/// `path` made absolute against the working directory, so printed paths work from anywhere.
fn absolute(path: &std::path::Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

#[cfg(feature = "demo")]
mod demo;

#[cfg(feature = "demo")]
async fn demo(path: Option<PathBuf>, once: bool) -> Result<(), Failure> {
    let config = match path {
        Some(path) => load(&path)?,
        None => demo::example().map_err(|e| Failure::Config(e.to_string()))?,
    };
    demo::run(config, once, shutdown_signal())
        .await
        .map_err(|err| match err {
            demo::DemoError::Config(m) => Failure::Config(m),
            other => Failure::Other(other.into()),
        })
}

#[cfg(not(feature = "demo"))]
async fn demo(_path: Option<PathBuf>, _once: bool) -> Result<(), Failure> {
    Err(Failure::Other(anyhow::anyhow!(
        "this oauth-egress was built without the demo (cargo feature `demo`); \
         build it with default features to run `oauth-egress demo`"
    )))
}
