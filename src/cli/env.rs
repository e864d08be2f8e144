//! `env`: the shell exports that point an unchanged service at this proxy.

use std::path::PathBuf;

use super::{load, load_ca, ConfigArg, Failure};

#[derive(clap::Args)]
pub(crate) struct EnvArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
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

pub(crate) fn env(args: &EnvArgs) -> Result<(), Failure> {
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
