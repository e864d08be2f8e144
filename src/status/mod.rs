//! What the admin listener's `/` (HTML) and `/status` (JSON) show: per route, its token's
//! state and last token request, and its traffic over the last five minutes; the CA; the
//! config file and its last reload; the version.
//!
//! - `mod.rs`: [`Ops`] (what is kept across reloads for the page) and [`Status`], the
//!   snapshot, whose JSON is the documented, stable schema (`schema = 1`; fields are only
//!   ever added).
//! - `activity.rs`: the per-minute ring of requests and 401 retries per route.
//! - `html.rs`: the page, server-rendered, every value HTML-escaped, no script, no external
//!   asset.
//!
//! Never in a snapshot: a token, a secret, an assertion or a caller's credential. Token
//! slots expose times and error records only ([`crate::token::view`]).

pub mod activity;
pub mod html;
#[cfg(test)]
mod tests;

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::ca::CaInfo;
use crate::proxy::Proxy;
use crate::route::Route;
use crate::token::view::{SlotView, TokenState};
use crate::token::RouteToken;
pub use activity::{Activity, Window};

/// The version compiled in.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The schema version of [`Status`]'s JSON.
pub const SCHEMA: u32 = 1;

/// What the status page keeps across reloads: the traffic ring and the reload history.
#[derive(Debug)]
pub struct Ops {
    /// Requests and 401 retries per route, last five minutes.
    pub activity: Activity,
    started: SystemTime,
    reload: Mutex<Option<ReloadStatus>>,
}

impl Default for Ops {
    fn default() -> Self {
        Ops {
            activity: Activity::default(),
            started: SystemTime::now(),
            reload: Mutex::default(),
        }
    }
}

impl Ops {
    /// A reload finished: `Ok`, or refused with why (a config error: names keys and files,
    /// never secret values).
    pub fn reloaded(&self, result: Result<(), &str>) {
        *crate::sync::lock(&self.reload) = Some(ReloadStatus {
            at_unix: unix(SystemTime::now()),
            ok: result.is_ok(),
            error: result.err().map(str::to_owned),
        });
    }
}

/// The last reload.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadStatus {
    /// When it finished (unix seconds).
    pub at_unix: u64,
    /// Whether the new configuration is in force.
    pub ok: bool,
    /// Why it was refused.
    pub error: Option<String>,
}

/// The whole page, as data. Its JSON is `/status`.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// [`SCHEMA`].
    pub schema: u32,
    /// The proxy's version.
    pub version: &'static str,
    /// When this snapshot was taken (unix seconds).
    pub generated_at_unix: u64,
    /// When the process started serving (unix seconds).
    pub started_at_unix: u64,
    /// What `/readyz` answers.
    pub ready: bool,
    /// The configuration.
    pub config: ConfigStatus,
    /// The interception CA.
    pub ca: CaInfo,
    /// Every route, in config order.
    pub routes: Vec<RouteStatus>,
}

/// The configuration in force.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigStatus {
    /// Where it came from (the file).
    pub file: String,
    /// The last reload, if there was one.
    pub last_reload: Option<ReloadStatus>,
}

/// One route.
#[derive(Debug, Clone, Serialize)]
pub struct RouteStatus {
    /// Its name.
    pub name: String,
    /// Host pattern.
    pub host: String,
    /// Port, or `None` for any.
    pub port: Option<u16>,
    /// Path prefix (`/` for all).
    pub path: String,
    /// Client name.
    pub client: String,
    /// Grant name (`client_credentials`...).
    pub grant: &'static str,
    /// How the token is bound: `bearer`, `dpop`, `mtls` or `dpop+mtls`.
    pub sender: &'static str,
    /// The token.
    pub token: TokenStatus,
    /// Traffic over the last five minutes.
    pub last_5m: Window,
}

/// A route's token, as far as an operator may see it.
#[derive(Debug, Clone, Serialize)]
pub struct TokenStatus {
    /// `fixed` (one token) or `per_subject` (token exchange: one per subject token).
    pub kind: &'static str,
    /// For `per_subject`: how many subjects hold a token slot (the fields below are then the
    /// worst of them).
    pub subjects: Option<usize>,
    /// `valid`, `renewing`, `failing` or `cold`.
    pub state: TokenState,
    /// Seconds the cached token may still be sent.
    pub expires_in_seconds: Option<u64>,
    /// The last token request.
    pub last_fetch: Option<FetchStatus>,
    /// The last failed token request (kept after later successes).
    pub last_error: Option<ErrorStatus>,
}

/// The last token request.
#[derive(Debug, Clone, Serialize)]
pub struct FetchStatus {
    /// When it finished (unix seconds).
    pub at_unix: u64,
    /// How long it took (milliseconds, retries included).
    pub latency_ms: u64,
    /// Whether it returned a token.
    pub ok: bool,
}

/// The last failed token request.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorStatus {
    /// When it finished (unix seconds).
    pub at_unix: u64,
    /// The kind (`oauth_error`, `timeout`, `unreachable`, `bad_status`...).
    pub kind: &'static str,
    /// The OAuth `error` code.
    pub oauth_error: Option<String>,
    /// The server's `error_description`.
    pub description: Option<String>,
    /// The proxy's message (names the client and endpoint).
    pub message: String,
}

fn unix(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The snapshot of `proxy` now.
pub fn snapshot(proxy: &Proxy) -> Status {
    let ops = &proxy.ops;
    Status {
        schema: SCHEMA,
        version: VERSION,
        generated_at_unix: unix(SystemTime::now()),
        started_at_unix: unix(ops.started),
        ready: proxy.is_ready(),
        config: ConfigStatus {
            file: proxy.config.origin.clone(),
            last_reload: crate::sync::lock(&ops.reload).clone(),
        },
        ca: proxy.ca.info(),
        routes: proxy
            .routes
            .routes()
            .iter()
            .map(|r| route_status(r, &ops.activity))
            .collect(),
    }
}

fn route_status(route: &Route, activity: &Activity) -> RouteStatus {
    let spec = &route.spec;
    RouteStatus {
        name: spec.name.clone(),
        host: spec.host.to_string(),
        port: spec.port,
        path: spec.path_prefix.clone().unwrap_or_else(|| "/".into()),
        client: spec.client.clone().unwrap_or_else(|| "-".into()),
        grant: match route.token() {
            Some(_) => spec.grant.name(),
            None => "static_credential",
        },
        sender: match (spec.dpop, spec.mtls_bound) {
            (false, false) => "bearer",
            (true, false) => "dpop",
            (false, true) => "mtls",
            (true, true) => "dpop+mtls",
        },
        token: route.token().map_or_else(static_status, token_status),
        last_5m: activity.window(&spec.name),
    }
}

/// The token's status: one slot's view, or the worst of a token-exchange route's subjects.
pub fn token_status(token: &RouteToken) -> TokenStatus {
    let (kind, subjects, view) = match token {
        RouteToken::Fixed(slot) => ("fixed", None, Some(slot.view())),
        RouteToken::PerSubject(slots) => {
            let (count, worst) = slots.summary();
            ("per_subject", Some(count), worst)
        }
    };
    let view = view.unwrap_or(SlotView {
        state: TokenState::Cold,
        expires_in: None,
        last_fetch: None,
        last_error: None,
    });
    TokenStatus {
        kind,
        subjects,
        state: view.state,
        expires_in_seconds: view.expires_in.map(|d| d.as_secs()),
        last_fetch: view.last_fetch.map(|f| FetchStatus {
            at_unix: unix(f.at),
            latency_ms: u64::try_from(f.latency.as_millis()).unwrap_or(u64::MAX),
            ok: f.ok,
        }),
        last_error: view.last_error.map(|e| ErrorStatus {
            at_unix: unix(e.at),
            kind: e.kind,
            oauth_error: e.oauth_error,
            description: e.description,
            message: e.message,
        }),
    }
}

/// A route with a static `credential`: nothing is fetched, so it is always `valid` (an
/// unreadable secret is refused at start and answered 502 on its route afterwards).
fn static_status() -> TokenStatus {
    TokenStatus {
        kind: "static",
        subjects: None,
        state: TokenState::Valid,
        expires_in_seconds: None,
        last_fetch: None,
        last_error: None,
    }
}

/// When a route's cached token stops being sent, as unix seconds (the expiry gauge), if one
/// is usable.
pub fn expiry_unix(token: &RouteToken) -> Option<f64> {
    let RouteToken::Fixed(slot) = token else {
        return None;
    };
    let left: Duration = slot.view().expires_in?;
    let at = SystemTime::now() + left;
    at.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs_f64())
}
