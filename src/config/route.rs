//! `[[route]]`: which destination gets which token; the grant that obtains it is in
//! `grant.rs`.

use std::path::Path;

use serde::Deserialize;

use super::client::ClientConfig;
use super::credential::{token_placement, RawCredential, StaticCredential, TokenPlacement};
use super::grant::{Grant, GrantName, RawGrant, RawSubject, ScopeIn};
use super::params::{check_token_params, OneOrMany};
use super::source::RawSource;
use super::Findings;
use crate::host::HostPattern;

/// One `[[route]]`, validated.
#[derive(Debug, Clone)]
pub struct RouteSpec {
    /// A name for messages: `name` if given, else `host[:port][path_prefix]`.
    pub name: String,
    /// Exact host or `*.suffix`.
    pub host: HostPattern,
    /// Only this port, or any.
    pub port: Option<u16>,
    /// Only paths under this prefix (segment-aware), or all.
    pub path_prefix: Option<String>,
    /// Name of the client in `[clients]`; `None` exactly when the route has a static
    /// `credential` instead of a token.
    pub client: Option<String>,
    /// A static credential injected instead of a token (`credential = { ... }`).
    pub credential: Option<StaticCredential>,
    /// Where the token goes when not `Authorization: Bearer` (`token_header`, `token_scheme`).
    pub token_placement: Option<TokenPlacement>,
    /// How the token is obtained (`client_credentials`, unused, on a `credential` route).
    pub grant: Grant,
    /// Scopes requested, sorted and deduplicated.
    pub scopes: Vec<String>,
    /// `audience` token request parameters (one or more, in order).
    pub audience: Vec<String>,
    /// RFC 8707 `resource` parameters (one or more, each its own `resource=`, §2).
    pub resource: Vec<String>,
    /// Extra token request parameters: the client's `token_params`, the route's over them.
    pub token_params: std::collections::BTreeMap<String, String>,
    /// Send `http://` requests upstream as `https://`.
    pub upgrade_tls: bool,
    /// Allow sending the token over plain http.
    pub allow_plaintext: bool,
    /// Fetch the token at start (and count it for `/readyz`).
    pub prefetch: bool,
    /// Use DPoP (also on when the client says `dpop = true`).
    pub dpop: bool,
    /// On a DPoP route, refuse a token the server issued as `Bearer` (default) instead of
    /// sending it as a bearer token.
    pub dpop_required: bool,
    /// Present the client's certificate on upstream connections (certificate-bound tokens).
    pub mtls_bound: bool,
    /// Check the route's upstream addresses against the destination policy too
    /// (`proxy.allow_cidrs`/`deny_cidrs`, the default deny list), as for unmatched traffic.
    pub guard: bool,
    /// `callers = [...]`: only these `[[caller]]`s get the route's token; `None`: any caller
    /// `proxy.callers` admits.
    pub callers: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    name: Option<String>,
    host: String,
    port: Option<u16>,
    path_prefix: Option<String>,
    client: Option<String>,
    credential: Option<RawCredential>,
    token_header: Option<String>,
    token_scheme: Option<String>,
    grant: Option<GrantName>,
    #[serde(default)]
    scopes: Vec<String>,
    audience: Option<OneOrMany>,
    resource: Option<OneOrMany>,
    #[serde(default)]
    token_params: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    upgrade_tls: bool,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default)]
    prefetch: bool,
    #[serde(default)]
    dpop: bool,
    dpop_required: Option<bool>,
    #[serde(default)]
    mtls_bound: bool,
    #[serde(default)]
    guard: bool,
    callers: Option<Vec<String>>,
    subject_token: Option<RawSubject>,
    subject_token_type: Option<String>,
    actor_token: Option<RawSource>,
    actor_token_type: Option<String>,
    requested_token_type: Option<String>,
    refresh_token: Option<RawSource>,
    assertion_issuer: Option<String>,
    assertion_subject: Option<String>,
    assertion_audience: Option<String>,
    assertion_scope: Option<ScopeIn>,
}

impl RawRoute {
    /// The client the route names.
    pub(super) fn client_name(&self) -> Option<&str> {
        self.client.as_deref()
    }
}

impl RawRoute {
    /// The grant keys, taken out (the rest of the route stays usable).
    fn take_grant(&mut self) -> RawGrant {
        RawGrant {
            name: self.grant.unwrap_or(GrantName::ClientCredentials),
            subject_token: self.subject_token.take(),
            subject_token_type: self.subject_token_type.take(),
            actor_token: self.actor_token.take(),
            actor_token_type: self.actor_token_type.take(),
            requested_token_type: self.requested_token_type.take(),
            refresh_token: self.refresh_token.take(),
            assertion_issuer: self.assertion_issuer.take(),
            assertion_subject: self.assertion_subject.take(),
            assertion_audience: self.assertion_audience.take(),
            assertion_scope: self.assertion_scope.take(),
        }
    }
}

/// One `[[route]]`, checked: `None` when it has a problem that leaves nothing to build
/// (every problem is in `found`, named `route #N (label)`).
pub(super) fn validate(
    index: usize,
    mut r: RawRoute,
    base: &Path,
    client: Option<&ClientConfig>,
    known_clients: &[&str],
    found: &mut Findings,
) -> Option<RouteSpec> {
    let label = label(&r);
    let at = format!("route #{} ({label})", index + 1);
    let host = check_destination(&r, &at, found);
    check_transport(&r, &at, found);
    let audience = OneOrMany::into_vec(r.audience.take());
    let resource = OneOrMany::into_vec(r.resource.take());
    check_token_parameters(&mut r, &resource, &at, found);
    check_token_params(&r.token_params, &at, found);
    let raw_grant = r.take_grant();
    raw_grant.check_misplaced(&at, found);
    let (credential, grant) = match r.credential.take() {
        Some(raw) => {
            let targets = !audience.is_empty() || !resource.is_empty();
            check_static(&r, &raw_grant, targets, &at, found);
            (
                Some(raw.validate(base, &at, found)?),
                Grant::ClientCredentials,
            )
        }
        None => {
            check_client(&r, client, known_clients, &at, found);
            check_requirements(&r, &raw_grant, client, &at, found);
            let name = r.client.as_deref().unwrap_or_default();
            (None, raw_grant.validate(&at, base, client, name, found)?)
        }
    };
    let dpop = r.dpop || client.is_some_and(|c| c.dpop);
    let token_placement = token_placement(
        r.token_header.take(),
        r.token_scheme.take(),
        dpop,
        &at,
        found,
    );
    Some(RouteSpec {
        name: label,
        host: host?,
        port: r.port,
        path_prefix: r.path_prefix.map(|p| {
            if p.len() > 1 {
                p.trim_end_matches('/').to_string()
            } else {
                p
            }
        }),
        client: r.client,
        credential,
        token_placement,
        grant,
        scopes: r.scopes,
        audience,
        resource,
        token_params: client
            .map(|c| c.token_params.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(r.token_params)
            .collect(),
        upgrade_tls: r.upgrade_tls,
        allow_plaintext: r.allow_plaintext,
        prefetch: r.prefetch,
        dpop,
        dpop_required: r.dpop_required.unwrap_or(true),
        mtls_bound: r.mtls_bound,
        guard: r.guard,
        callers: r.callers,
    })
}

/// A route with a static `credential` has no client and none of the keys that shape a
/// token request or its presentation.
fn check_static(r: &RawRoute, grant: &RawGrant, targets: bool, at: &str, found: &mut Findings) {
    let token_keys = [
        ("client", r.client.is_some()),
        ("grant", r.grant.is_some() || grant.has_keys()),
        ("scopes", !r.scopes.is_empty()),
        ("audience/resource", targets),
        ("token_params", !r.token_params.is_empty()),
        ("dpop", r.dpop || r.dpop_required.is_some()),
        ("mtls_bound", r.mtls_bound),
        ("prefetch", r.prefetch),
        ("token_header", r.token_header.is_some()),
        ("token_scheme", r.token_scheme.is_some()),
    ];
    let set: Vec<&str> = token_keys
        .iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| *key)
        .collect();
    if !set.is_empty() {
        found.problem(format!(
            "{at}: a route with a static credential gets no token; remove {} (or remove credential)",
            set.join(", ")
        ));
    }
}

/// `name`, or `host[:port][path_prefix]`.
fn label(r: &RawRoute) -> String {
    r.name.clone().unwrap_or_else(|| {
        format!(
            "{}{}{}",
            r.host,
            r.port.map(|p| format!(":{p}")).unwrap_or_default(),
            r.path_prefix.as_deref().unwrap_or("")
        )
    })
}

/// What the route matches: a host pattern, a port that is one, a path prefix that is one.
fn check_destination(r: &RawRoute, at: &str, found: &mut Findings) -> Option<HostPattern> {
    let host = HostPattern::parse(&r.host)
        .map_err(|why| found.problem(format!("{at}: host: {why}")))
        .ok();
    if let Some(prefix) = &r.path_prefix {
        if !prefix.starts_with('/') {
            found.problem(format!(
                "{at}: path_prefix must start with '/', got {prefix:?}"
            ));
        }
    }
    if r.port == Some(0) {
        found.problem(format!("{at}: port 0 is not a port"));
    }
    host
}

/// The client the route names exists.
fn check_client(
    r: &RawRoute,
    client: Option<&ClientConfig>,
    known_clients: &[&str],
    at: &str,
    found: &mut Findings,
) {
    let Some(name) = &r.client else {
        found.problem(format!(
            "{at}: give client = \"NAME\" (a [clients.NAME] to get a token from) or credential = {{ ... }} (a static credential)"
        ));
        return;
    };
    if client.is_none() {
        found.problem(format!(
            "{at}: client {name:?} is not defined in [clients] (defined: {})",
            if known_clients.is_empty() {
                "none".to_string()
            } else {
                known_clients.join(", ")
            }
        ));
    }
}

/// `upgrade_tls` and `allow_plaintext` exclude each other; plaintext is allowed with a
/// warning, on an exact host and an explicit port only.
fn check_transport(r: &RawRoute, at: &str, found: &mut Findings) {
    if r.guard && r.mtls_bound {
        found.problem(format!(
            "{at}: guard = true is not supported with mtls_bound = true yet; remove one"
        ));
    }
    if r.upgrade_tls && r.allow_plaintext {
        found.problem(format!(
            "{at}: upgrade_tls and allow_plaintext contradict each other; choose one"
        ));
    }
    if r.allow_plaintext && (r.port.is_none() || r.host.trim().starts_with('*')) {
        found.problem(format!(
            "{at}: allow_plaintext = true needs an exact host and an explicit port: a token in clear to any port on a host is a token to any local user who binds one"
        ));
    }
    if r.allow_plaintext {
        found.warn(format!(
            "{at}: allow_plaintext = true sends its token over plain http when a caller uses http://"
        ));
    }
}

/// `resource` is an absolute URI (RFC 8707); scopes are sorted, deduplicated scope tokens.
fn check_token_parameters(r: &mut RawRoute, resources: &[String], at: &str, found: &mut Findings) {
    for resource in resources {
        match reqwest::Url::parse(resource) {
            Ok(u) if u.fragment().is_none() => {}
            _ => found.problem(format!(
                "{at}: resource must be an absolute URI without a fragment (RFC 8707), got {resource:?}"
            )),
        }
    }
    r.scopes.sort();
    r.scopes.dedup();
    if let Some(bad) = r.scopes.iter().find(|s| {
        s.is_empty()
            || s.chars()
                .any(|c| c == ' ' || c == '"' || c == '\\' || c.is_control())
    }) {
        found.problem(format!(
            "{at}: scope {bad:?} is not a valid scope token (RFC 6749 §3.3); give scopes as a list"
        ));
    }
}

/// What the route's options need: `prefetch` a token it can get alone, `mtls_bound` a
/// client certificate.
fn check_requirements(
    r: &RawRoute,
    grant: &RawGrant,
    client: Option<&ClientConfig>,
    at: &str,
    found: &mut Findings,
) {
    if r.prefetch && grant.is_inbound() {
        found.problem(format!(
            "{at}: prefetch cannot work with subject_token = \"inbound\": there is no caller token before a request"
        ));
    }
    if r.mtls_bound && client.is_some_and(|c| c.client_cert.is_none()) {
        found.problem(format!(
            "{at}: mtls_bound = true needs clients.{} to have client_cert and client_key",
            r.client.as_deref().unwrap_or_default()
        ));
    }
}
