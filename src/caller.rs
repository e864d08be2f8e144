//! Who is calling: the `[[caller]]` a connection or request is, from its peer address and
//! its `Proxy-Authorization`, and the two rules that use it (`proxy.callers = "known"`, a
//! route's `callers = [...]`).
//!
//! Identification ([`Callers::identify`]): a `Proxy-Authorization` that is presented must
//! match a caller's credential (a wrong one identifies nobody, whatever the address); without
//! one, the first caller (file order) whose `sources` contain the peer address. A CONNECT is
//! identified once for its whole tunnel; an absolute-form request on its own. The
//! transparent listener, which has only an address, calls [`Callers::by_source`].
//!
//! Credentials are compared in constant time: the presented value and each expected one are
//! hashed (SHA-256, with the scheme as a prefix) and the digests compared with `subtle`,
//! against every caller without stopping at a match, so neither the content nor the caller
//! that matched shows in the timing. Credential files are re-read when their modification
//! time or size changes (rotation needs no restart); variables are read once.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use base64::Engine;
use http::{header, HeaderMap, HeaderValue};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{CallerPolicy, CallerSpec, ProxyAuth, UNIDENTIFIED};
use crate::destination::Mode;
use crate::error::ProxyError;
use crate::secret::{ExposeSecret, SecretSource};

/// Who a connection or request is: a configured caller's name, or nobody known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A `[[caller]]`, by name.
    Known(Arc<str>),
    /// No caller matched; why, for the refusal's message.
    Unidentified(Unmatched),
}

/// Why no caller matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unmatched {
    /// No `Proxy-Authorization`, and the address is in no caller's `sources`.
    NoMatch,
    /// A `Proxy-Authorization` that matches no caller's credential.
    WrongCredentials,
}

impl Unmatched {
    /// What the caller can do about it.
    pub fn advice(self) -> &'static str {
        match self {
            Unmatched::NoMatch => "send Proxy-Authorization as a caller's proxy_auth, or add this address to a caller's sources",
            Unmatched::WrongCredentials => "the Proxy-Authorization sent matches no caller's proxy_auth (check the user, password or token)",
        }
    }
}

impl Identity {
    /// The log field and metric label: the caller's name, or `unidentified` (bounded).
    pub fn label(&self) -> &str {
        match self {
            Identity::Known(name) => name,
            Identity::Unidentified(_) => UNIDENTIFIED,
        }
    }
}

/// A credential's SHA-256, cached with the file state it was read at.
#[derive(Default)]
struct Cached {
    loaded: bool,
    stamp: Option<(SystemTime, u64)>,
    digest: Option<[u8; 32]>,
}

/// One caller's credential: where it lives, what it is, and its last digest.
struct Credential {
    caller: Arc<str>,
    auth: ProxyAuth,
    cached: Mutex<Cached>,
}

impl Credential {
    /// The expected digest, read again when the file changed; `None` when unreadable (logged).
    fn digest(&self) -> Option<[u8; 32]> {
        let source = self.auth.secret();
        let stamp = source.path().and_then(|p| {
            let meta = std::fs::metadata(p).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        });
        let mut cached = crate::sync::lock(&self.cached);
        // Read once (an unreadable one is logged once), then again when the file changes.
        let fresh = cached.loaded && (source.path().is_none() || cached.stamp == stamp);
        if !fresh {
            cached.digest = self.load(source);
            cached.stamp = stamp;
            cached.loaded = true;
        }
        cached.digest
    }

    fn load(&self, source: &SecretSource) -> Option<[u8; 32]> {
        match source.load() {
            Ok(secret) => Some(match &self.auth {
                ProxyAuth::Basic { user, .. } => {
                    let pair =
                        zeroize::Zeroizing::new(format!("{user}:{}", secret.expose_secret()));
                    hash(Scheme::Basic, pair.as_bytes())
                }
                ProxyAuth::Bearer(_) => hash(Scheme::Bearer, secret.expose_secret().as_bytes()),
            }),
            Err(err) => {
                tracing::warn!(caller = %self.caller, error = %err, "caller credential unreadable: it identifies nobody until fixed");
                None
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Scheme {
    Basic,
    Bearer,
}

fn hash(scheme: Scheme, value: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(match scheme {
        Scheme::Basic => b"basic\0".as_slice(),
        Scheme::Bearer => b"bearer\0".as_slice(),
    });
    hasher.update(value);
    hasher.finalize().into()
}

/// The presented credential's digest: `Basic base64(user:password)` or `Bearer token`
/// (scheme case-insensitive); `None` for anything else.
fn presented(value: &HeaderValue) -> Option<[u8; 32]> {
    let text = value.to_str().ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(rest)
                .ok()?,
        );
        Some(hash(Scheme::Basic, &decoded))
    } else if scheme.eq_ignore_ascii_case("bearer") {
        Some(hash(Scheme::Bearer, rest.as_bytes()))
    } else {
        None
    }
}

/// The callers of a configuration, ready to identify traffic.
pub struct Callers {
    policy: CallerPolicy,
    mode: Mode,
    specs: Vec<CallerSpec>,
    credentials: Vec<Credential>,
}

impl Callers {
    /// The table for `specs` under `proxy.callers` and `proxy.policy_mode`.
    pub fn new(specs: &[CallerSpec], policy: CallerPolicy, mode: Mode) -> Callers {
        let credentials = specs
            .iter()
            .filter_map(|spec| {
                Some(Credential {
                    caller: spec.name.as_str().into(),
                    auth: spec.proxy_auth.clone()?,
                    cached: Mutex::default(),
                })
            })
            .collect();
        Callers {
            policy,
            mode,
            specs: specs.to_vec(),
            credentials,
        }
    }

    /// The caller whose `sources` contain `peer` (first in file order), for a listener that
    /// has nothing but the address (transparent mode) and for requests without credentials.
    pub fn by_source(&self, peer: IpAddr) -> Identity {
        let peer = peer.to_canonical();
        self.specs
            .iter()
            .find(|spec| spec.sources.iter().any(|net| net.contains(&peer)))
            .map_or(Identity::Unidentified(Unmatched::NoMatch), |spec| {
                Identity::Known(spec.name.as_str().into())
            })
    }

    /// Who `peer` sending `headers` is (see the module doc for the order).
    pub fn identify(&self, peer: IpAddr, headers: &HeaderMap) -> Identity {
        let Some(value) = headers.get(header::PROXY_AUTHORIZATION) else {
            return self.by_source(peer);
        };
        let Some(given) = presented(value) else {
            return Identity::Unidentified(Unmatched::WrongCredentials);
        };
        let mut matched = None;
        for credential in &self.credentials {
            let Some(expected) = credential.digest() else {
                continue;
            };
            if bool::from(expected.ct_eq(&given)) && matched.is_none() {
                matched = Some(credential.caller.clone());
            }
        }
        matched.map_or(
            Identity::Unidentified(Unmatched::WrongCredentials),
            Identity::Known,
        )
    }

    /// `proxy.callers`: `identity` may use the proxy, or the refusal (407 with challenges when
    /// a caller has `proxy_auth`, else 403). In report mode the refusal is logged as
    /// `policy=would_deny`, counted, and `identity` let through.
    pub fn admit(&self, identity: &Identity, peer: IpAddr) -> Result<(), ProxyError> {
        let Identity::Unidentified(why) = identity else {
            return Ok(());
        };
        if self.policy == CallerPolicy::Any {
            return Ok(());
        }
        let err = ProxyError::CallerUnknown {
            peer: peer.to_canonical(),
            why: *why,
            challenges: self.challenges(),
        };
        self.judge("unknown_caller", err)
    }

    /// A route's `callers = [...]`: `identity` is listed, or a 403 naming the route and the
    /// caller (under the mode, as [`Callers::admit`]).
    pub fn on_route(
        &self,
        route: &str,
        listed: Option<&[String]>,
        identity: &Identity,
    ) -> Result<(), ProxyError> {
        let Some(listed) = listed else {
            return Ok(());
        };
        if let Identity::Known(name) = identity {
            if listed.iter().any(|l| l.as_str() == &**name) {
                return Ok(());
            }
        }
        let err = ProxyError::CallerNotAllowed {
            route: route.to_string(),
            caller: identity.label().to_string(),
            listed: listed.join(", "),
        };
        self.judge("route_callers", err)
    }

    fn judge(&self, rule: &'static str, err: ProxyError) -> Result<(), ProxyError> {
        match self.mode {
            Mode::Report => {
                tracing::warn!(policy = "would_deny", rule, "{err}");
                crate::metrics::policy("would_deny", rule);
                Ok(())
            }
            Mode::Enforce => {
                crate::metrics::policy("deny", rule);
                Err(err)
            }
        }
    }

    /// The `Proxy-Authenticate` challenges the configured credentials ask for.
    fn challenges(&self) -> Challenges {
        let has = |basic: bool| {
            self.credentials
                .iter()
                .any(|c| matches!(c.auth, ProxyAuth::Basic { .. }) == basic)
        };
        Challenges {
            basic: has(true),
            bearer: has(false),
        }
    }

    /// The names, for zero-valued metric series.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.specs.iter().map(|s| s.name.as_str())
    }
}

/// Which `Proxy-Authenticate` challenges a 407 carries; none makes it a 403.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Challenges {
    /// `Basic realm="oauth-egress"`.
    pub basic: bool,
    /// `Bearer realm="oauth-egress"`.
    pub bearer: bool,
}

#[cfg(test)]
mod tests;
