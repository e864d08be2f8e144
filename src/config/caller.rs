//! `[[caller]]` and `proxy.callers`: who may use the proxy. A caller has a name and one or
//! more ways to be recognised (any one suffices): the connection's peer address
//! (`sources`), or a credential in `Proxy-Authorization` (`proxy_auth`, Basic or Bearer).
//! The credentials themselves are secret sources (`{ env }` / `{ file }`), never literals.

use std::collections::BTreeSet;
use std::path::Path;

use ipnet::IpNet;
use serde::Deserialize;

use super::source::RawSecret;
use super::Findings;
use crate::secret::SecretSource;

/// `proxy.callers`: whether traffic that matches no `[[caller]]` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CallerPolicy {
    /// Anyone who can reach the port (the drop-in default).
    #[default]
    Any,
    /// Only recognised callers: 407 with a challenge when `proxy_auth` callers exist, else 403.
    Known,
}

/// How a caller proves who it is in `Proxy-Authorization`.
#[derive(Debug, Clone)]
pub enum ProxyAuth {
    /// `Basic base64(user:password)`.
    Basic {
        /// The user name (not secret: it names the caller in messages).
        user: String,
        /// The password.
        password: SecretSource,
    },
    /// `Bearer <token>`, a static token.
    Bearer(SecretSource),
}

impl ProxyAuth {
    /// The secret behind the credential.
    pub fn secret(&self) -> &SecretSource {
        match self {
            ProxyAuth::Basic { password, .. } => password,
            ProxyAuth::Bearer(token) => token,
        }
    }

    /// For `check`: the scheme and where the secret is, never the secret.
    pub fn describe(&self) -> String {
        match self {
            ProxyAuth::Basic { user, password } => format!("basic user {user} ({password})"),
            ProxyAuth::Bearer(token) => format!("bearer ({token})"),
        }
    }
}

/// One `[[caller]]`, validated.
#[derive(Debug, Clone)]
pub struct CallerSpec {
    /// The name routes' `callers` lists, logs and metrics use.
    pub name: String,
    /// Peer addresses that identify it.
    pub sources: Vec<IpNet>,
    /// A credential that identifies it.
    pub proxy_auth: Option<ProxyAuth>,
}

impl CallerSpec {
    /// For `check`: `name (sources [...]; basic user u (file ...))`.
    pub fn describe(&self) -> String {
        let mut ways = Vec::new();
        if !self.sources.is_empty() {
            let nets: Vec<String> = self.sources.iter().map(ToString::to_string).collect();
            ways.push(format!("sources [{}]", nets.join(", ")));
        }
        if let Some(auth) = &self.proxy_auth {
            ways.push(auth.describe());
        }
        format!("{} ({})", self.name, ways.join("; "))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCaller {
    name: String,
    #[serde(default)]
    sources: Vec<String>,
    proxy_auth: Option<RawProxyAuth>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum RawProxyAuth {
    Basic { user: String, password: RawSecret },
    Bearer(RawSecret),
}

/// The metric label of traffic no caller matched; no caller may take this name.
pub const UNIDENTIFIED: &str = "unidentified";

/// Every `[[caller]]`, in file order: names unique and label-safe, each with a way to be
/// recognised, CIDRs that parse.
pub(super) fn validate(raw: Vec<RawCaller>, base: &Path, found: &mut Findings) -> Vec<CallerSpec> {
    let mut names = BTreeSet::new();
    let mut callers = Vec::new();
    for (i, raw) in raw.into_iter().enumerate() {
        let at = format!("caller #{} ({})", i + 1, raw.name);
        let name_ok = !raw.name.is_empty()
            && raw.name.len() <= 64
            && raw
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok || raw.name == UNIDENTIFIED {
            found.problem(format!(
                "{at}: name must be 1-64 letters, digits, '-', '_' or '.', and not \"{UNIDENTIFIED}\" (the label of traffic no caller matches)"
            ));
        }
        if !names.insert(raw.name.clone()) {
            found.problem(format!("{at}: another [[caller]] has this name"));
        }
        if raw.sources.is_empty() && raw.proxy_auth.is_none() {
            found.problem(format!(
                "{at}: give sources = [\"10.1.2.0/24\"] and/or proxy_auth = {{ basic = {{ user, password }} }} or {{ bearer = {{ file }} }}, or nothing can identify it"
            ));
        }
        let sources = super::proxy::cidrs(&raw.sources, &format!("{at}: sources"), found);
        let proxy_auth = raw.proxy_auth.map(|auth| match auth {
            RawProxyAuth::Basic { user, password } => {
                if user.is_empty() || user.contains(':') {
                    found.problem(format!(
                        "{at}: proxy_auth.basic.user must be non-empty and without ':'"
                    ));
                }
                ProxyAuth::Basic {
                    user,
                    password: password.into_source(base),
                }
            }
            RawProxyAuth::Bearer(token) => ProxyAuth::Bearer(token.into_source(base)),
        });
        callers.push(CallerSpec {
            name: raw.name,
            sources,
            proxy_auth,
        });
    }
    callers
}

/// A route's `callers = [...]`: every name is a `[[caller]]`.
pub(super) fn check_route_callers(
    route: &str,
    listed: &[String],
    callers: &[CallerSpec],
    found: &mut Findings,
) {
    for name in listed {
        if !callers.iter().any(|c| &c.name == name) {
            let known: Vec<&str> = callers.iter().map(|c| c.name.as_str()).collect();
            found.problem(format!(
                "route {route}: callers names {name:?}, which is not a [[caller]] (defined: {})",
                if known.is_empty() {
                    "none".into()
                } else {
                    known.join(", ")
                }
            ));
        }
    }
}

/// `proxy.callers = "any"` on a listener other hosts can reach: anyone there gets every
/// route's token.
pub(super) fn check_exposure(
    policy: CallerPolicy,
    listen: std::net::SocketAddr,
    found: &mut Findings,
) {
    if policy == CallerPolicy::Any && !listen.ip().is_loopback() {
        found.warn(format!(
            "proxy.callers = \"any\" with proxy.listen = {listen} (not loopback): anyone who can reach the port gets every route's token; set proxy.callers = \"known\" and add [[caller]] entries"
        ));
    }
}

/// A transparent listener carries no proxy handshake, so a caller known only by `proxy_auth`
/// can never be recognised there: say so, naming the caller.
pub(super) fn check_transparent(callers: &[CallerSpec], transparent: bool, found: &mut Findings) {
    if !transparent {
        return;
    }
    for caller in callers {
        if caller.proxy_auth.is_some() && caller.sources.is_empty() {
            found.warn(format!(
                "caller {}: known only by proxy_auth, which connections on the [transparent] listeners never send (there is no proxy handshake); add its sources to recognise it there",
                caller.name
            ));
        }
    }
}
