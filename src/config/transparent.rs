//! `[transparent]`: listeners for connections redirected by iptables (`REDIRECT`), whose
//! original destination the proxy reads from the socket (Linux).

use std::net::SocketAddr;

use serde::Deserialize;

use super::Findings;

/// `[transparent]`: where redirected connections arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransparentSettings {
    /// TLS traffic (`REDIRECT` of port 443 and the like): the SNI decides.
    pub listen: SocketAddr,
    /// Plain HTTP traffic (`REDIRECT` of port 80), routed by `Host`; `None` when absent.
    pub http_listen: Option<SocketAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransparent {
    listen: SocketAddr,
    http_listen: Option<SocketAddr>,
}

impl RawTransparent {
    /// `[transparent]`, checked: two different listeners, neither the forward proxy's.
    pub(super) fn validate(
        self,
        proxy_listen: SocketAddr,
        found: &mut Findings,
    ) -> TransparentSettings {
        if self.listen == proxy_listen || self.http_listen == Some(proxy_listen) {
            found.problem(format!(
                "transparent.listen / transparent.http_listen must differ from proxy.listen ({proxy_listen}): \
                 a redirected connection carries no CONNECT line"
            ));
        }
        if self.http_listen == Some(self.listen) {
            found.problem(format!(
                "transparent.http_listen must differ from transparent.listen ({}): one port serves TLS, the other plain HTTP",
                self.listen
            ));
        }
        if !cfg!(target_os = "linux") {
            found.problem("transparent: the original destination can only be read on Linux");
        }
        TransparentSettings {
            listen: self.listen,
            http_listen: self.http_listen,
        }
    }
}
