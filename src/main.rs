//! The `oauth-egress` command: `run`, `check`, `ca export|bundle`, `cache keygen`, `env`,
//! `iptables`, `status`, `healthcheck`, `demo`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cli;

use cli::check::{check, CheckArgs};
use cli::env::{env, EnvArgs};
use cli::iptables::{iptables, IptablesArgs};
use cli::run::run;
use cli::status::{healthcheck, status, AdminArgs};
use cli::{ConfigArg, Failure};

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
    /// The shared token cache (`[cache] backend = "redis"`).
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Print the admin listener's status (routes, tokens, CA, last reload) as a table.
    Status(AdminArgs),
    /// Exit 0 when the admin listener's `/readyz` answers 200, else 1 with the reason (for
    /// container `HEALTHCHECK`s and exec probes).
    Healthcheck(AdminArgs),
    /// Print the shell exports that point a service at this proxy: proxy URL, CA path and the
    /// common CA-bundle variables (`eval "$(oauth-egress env)"`).
    Env(EnvArgs),
    /// Print (or apply) the iptables rules, IPv4 and IPv6, that redirect outbound TCP to the
    /// `[transparent]` listeners, skipping the proxy's uid, and the commands that remove them.
    Iptables(IptablesArgs),
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

#[derive(Subcommand)]
enum CacheCommand {
    /// Print a new `cache.encryption_key`: 32 random bytes, standard base64.
    Keygen,
}

#[derive(Subcommand)]
enum CaCommand {
    /// Print the CA certificate (creating the CA if absent) for clients to trust: PEM, DER,
    /// or a PKCS#12 truststore for Java (`--format p12`, `--password`, default `changeit`).
    Export(cli::ca::ExportArgs),
    /// Write the system roots plus the CA as one PEM bundle (what `env` writes) and print
    /// its path.
    Bundle(cli::ca::BundleArgs),
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
                command: CaCommand::Export(args),
            } => cli::ca::export(&args),
            Command::Ca {
                command: CaCommand::Bundle(args),
            } => cli::ca::bundle(&args),
            Command::Cache {
                command: CacheCommand::Keygen,
            } => cache_keygen(),
            Command::Env(args) => env(&args),
            Command::Iptables(args) => iptables(&args),
            Command::Status(args) => status(&args).await,
            Command::Healthcheck(args) => healthcheck(&args).await,
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

#[cfg(feature = "demo")]
mod demo;

#[cfg(feature = "demo")]
async fn demo(path: Option<PathBuf>, once: bool) -> Result<(), Failure> {
    let config = match path {
        Some(path) => cli::load(&path)?,
        None => demo::example().map_err(|e| Failure::Config(e.to_string()))?,
    };
    demo::run(config, once, cli::run::shutdown_signal())
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

/// `oauth-egress cache keygen`: a new encryption key on stdout (nothing else, so it can be
/// redirected into a secret file).
fn cache_keygen() -> Result<(), Failure> {
    let key = oauth_egress::token::shared::generate_key()
        .map_err(|_| Failure::Other(anyhow::anyhow!("the system random generator failed")))?;
    println!("{key}");
    Ok(())
}
