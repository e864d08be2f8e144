//! `oauth-egress iptables`: prints (or applies) the nat rules that send outbound TCP to the
//! transparent listeners, and the commands that remove them.

use oauth_egress::transparent::rules::{Command, Redirect};

use super::Failure;

/// `oauth-egress iptables`.
#[derive(clap::Args)]
pub(crate) struct IptablesArgs {
    /// The uid the proxy runs as: its own connections are never redirected (no loop).
    #[arg(long)]
    uid: u32,
    /// Destination ports to redirect.
    #[arg(long, value_delimiter = ',', default_value = "443,80")]
    ports: Vec<u16>,
    /// Those of --ports that carry plain HTTP (sent to --http-to-port).
    #[arg(long, value_delimiter = ',', default_value = "80")]
    http_ports: Vec<u16>,
    /// The port of `transparent.listen`.
    #[arg(long, default_value_t = 15001)]
    to_port: u16,
    /// The port of `transparent.http_listen` (0: none).
    #[arg(long, default_value_t = 15080)]
    http_to_port: u16,
    /// Run the commands (as root, or with CAP_NET_ADMIN) instead of printing them.
    #[arg(long, conflicts_with = "print")]
    apply: bool,
    /// Print the commands (the default).
    #[arg(long)]
    print: bool,
    /// Remove the rules instead (with --apply: run the removal).
    #[arg(long)]
    remove: bool,
}

pub(crate) fn iptables(args: &IptablesArgs) -> Result<(), Failure> {
    let redirect = Redirect {
        uid: args.uid,
        ports: args.ports.clone(),
        http_ports: args.http_ports.clone(),
        tls_to: args.to_port,
        http_to: (args.http_to_port != 0).then_some(args.http_to_port),
    };
    let install = redirect
        .install()
        .map_err(|e| Failure::Config(format!("iptables: {e}")))?;
    let remove = Redirect::remove();
    match (args.apply, args.remove) {
        (false, false) => {
            println!("# install (IPv4, then IPv6)");
            install.iter().for_each(|c| println!("{c}"));
            println!("# remove");
            remove.iter().for_each(|c| println!("{c}"));
            Ok(())
        }
        (false, true) => {
            remove.iter().for_each(|c| println!("{c}"));
            Ok(())
        }
        (true, removing) => {
            // Start from a clean chain: a rule set left by an earlier run is replaced.
            remove.iter().for_each(|c| {
                let _ = run(c);
            });
            if !removing {
                for command in &install {
                    run(command).map_err(Failure::Other)?;
                }
            }
            Ok(())
        }
    }
}

fn run(command: &Command) -> anyhow::Result<()> {
    let out = std::process::Command::new(command.program)
        .args(&command.args)
        .output()
        .map_err(|e| anyhow::anyhow!("{command}: cannot run {}: {e}", command.program))?;
    if !out.status.success() {
        anyhow::bail!(
            "{command}: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        );
    }
    Ok(())
}
