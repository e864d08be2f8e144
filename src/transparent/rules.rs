//! The iptables rules behind `oauth-egress iptables`: outbound TCP to the chosen ports is
//! `REDIRECT`ed (nat table, `OUTPUT`) to the transparent listeners, IPv4 and IPv6, except
//! traffic from the proxy's own uid (so its upstream connections cannot loop back to it) and
//! to loopback. Everything sits in one chain, [`CHAIN`], so removal is three commands.

use std::fmt;

/// The nat chain the rules live in.
pub const CHAIN: &str = "OAUTH_EGRESS";

/// What to redirect, where, and whom to leave alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    /// The uid the proxy runs as: its connections are never redirected.
    pub uid: u32,
    /// Destination ports to redirect.
    pub ports: Vec<u16>,
    /// Those of `ports` that carry plain HTTP: sent to `http_to`, the rest to `tls_to`.
    pub http_ports: Vec<u16>,
    /// The port of `transparent.listen`.
    pub tls_to: u16,
    /// The port of `transparent.http_listen`, if there is one.
    pub http_to: Option<u16>,
}

/// Why no rules can be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    /// A plain-http port with no plain-http listener to send it to.
    #[error("--ports {0}: port {0} carries plain HTTP (--http-ports) but no --http-to-port is set (transparent.http_listen); set it, or leave the port out")]
    NoHttpListener(u16),
    /// Nothing to redirect.
    #[error("--ports: name at least one port to redirect")]
    NoPorts,
    /// uid 0 would exempt every root process, and the proxy should not run as root.
    #[error("--uid 0: every root process would bypass the proxy; run the proxy as its own uid (e.g. 1337)")]
    RootUid,
}

/// One command: `iptables` or `ip6tables` and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// `iptables` or `ip6tables`.
    pub program: &'static str,
    /// Its arguments.
    pub args: Vec<String>,
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.program, self.args.join(" "))
    }
}

/// Both families and their loopback ranges.
const FAMILIES: [(&str, &str); 2] = [("iptables", "127.0.0.0/8"), ("ip6tables", "::1/128")];

impl Redirect {
    /// The commands that install the rules, IPv4 then IPv6.
    pub fn install(&self) -> Result<Vec<Command>, RulesError> {
        if self.uid == 0 {
            return Err(RulesError::RootUid);
        }
        if self.ports.is_empty() {
            return Err(RulesError::NoPorts);
        }
        let mut targets = Vec::new();
        for &port in &self.ports {
            let to = match (self.http_ports.contains(&port), self.http_to) {
                (true, Some(to)) => to,
                (true, None) => return Err(RulesError::NoHttpListener(port)),
                (false, _) => self.tls_to,
            };
            targets.push((port, to));
        }
        let mut out = Vec::new();
        for (program, loopback) in FAMILIES {
            let mut add = |args: &str| out.push(command(program, args));
            add(&format!("-t nat -N {CHAIN}"));
            add(&format!(
                "-t nat -A {CHAIN} -m owner --uid-owner {} -j RETURN",
                self.uid
            ));
            add(&format!("-t nat -A {CHAIN} -d {loopback} -j RETURN"));
            for (port, to) in &targets {
                add(&format!(
                    "-t nat -A {CHAIN} -p tcp --dport {port} -j REDIRECT --to-ports {to}"
                ));
            }
            add(&format!("-t nat -A OUTPUT -p tcp -j {CHAIN}"));
        }
        Ok(out)
    }

    /// The commands that remove what [`Redirect::install`] added, IPv4 then IPv6.
    pub fn remove() -> Vec<Command> {
        FAMILIES
            .iter()
            .flat_map(|(program, _)| {
                [
                    format!("-t nat -D OUTPUT -p tcp -j {CHAIN}"),
                    format!("-t nat -F {CHAIN}"),
                    format!("-t nat -X {CHAIN}"),
                ]
                .map(|args| command(program, &args))
            })
            .collect()
    }
}

fn command(program: &'static str, args: &str) -> Command {
    Command {
        program,
        args: args.split(' ').map(str::to_owned).collect(),
    }
}
