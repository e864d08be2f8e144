//! `check`: validate the configuration, run the start-up checks, print the route table;
//! with `--fetch`, get one token per route too.

use std::sync::Arc;

use oauth_egress::config::{ClientConfig, Config, RouteSpec};
use oauth_egress::intercept::ca::CertificateAuthority;
use oauth_egress::preflight::{preflight, Basis, Problem, Problems};

use super::{load, ConfigArg, Failure};

#[derive(clap::Args)]
pub(crate) struct CheckArgs {
    #[command(flatten)]
    pub(crate) config: ConfigArg,
    /// Also get a token for every route from its authorization server, so wrong credentials,
    /// scopes or audiences show now rather than on the first request. Skips refresh_token
    /// routes (a refresh would rotate the token a running proxy holds) and routes that
    /// exchange the caller's own token.
    #[arg(long)]
    pub(crate) fetch: bool,
}

/// Validates `path`, runs every start-up check on a scratch CA (the real one is only read),
/// and prints the route table, or every problem (exit 64).
pub(crate) async fn check(path: &std::path::Path, fetch: bool) -> Result<(), Failure> {
    let config = load(path)?;
    let mut problems = Vec::new();
    let ca_state = ca_state(&config, &mut problems);
    let fetched = preflight_and_fetch(&config, fetch, &mut problems).await;
    if !problems.is_empty() {
        // Every route's result, not only the failures, then the problems.
        print_tokens(&fetched);
        return Err(Failure::Config(format!(
            "{}: {}",
            config.origin,
            Problems(problems)
        )));
    }
    println!("{}: OK", config.origin);
    println!(
        "proxy  {} (unmatched hosts: {}), CA {ca_state}",
        config.proxy.listen, config.proxy.unmatched
    );
    println!("policy {}", config.proxy.policy_summary());
    println!("callers {}", callers_line(&config));
    if let Some(t) = &config.transparent {
        println!("{}", transparent_line(t));
    }
    println!("routes ({}):", config.routes.len());
    for route in &config.routes {
        let client = route.client.as_ref().and_then(|c| config.clients.get(c));
        println!("  {}", route_line(route, client.map(|c| c.as_ref())));
    }
    print_tokens(&fetched);
    for warning in &config.warnings {
        println!("warning: {warning}");
    }
    if let Some(warning) = oauth_egress::ca::key_permission_warning(&config.proxy.ca_key) {
        println!("warning: {warning}");
    }
    Ok(())
}

/// `[transparent]` as `check` reports it: where redirected connections arrive, and that a
/// redirected connection carries no proxy handshake, so no `Proxy-Authorization`: callers
/// there can only be told apart by their source address.
fn transparent_line(t: &oauth_egress::config::TransparentSettings) -> String {
    let http = t
        .http_listen
        .map_or("no plain-http listener".to_string(), |a| {
            format!("plain http {a} (by Host)")
        });
    format!(
        "transparent {} (TLS, by SNI), {http}; a redirected connection sends no \
         Proxy-Authorization: callers there are recognised by source address only",
        t.listen
    )
}

/// The interception CA as `check` reports it: loaded (a broken one is a problem), or absent
/// and generated on first start.
fn ca_state(config: &Config, problems: &mut Vec<Problem>) -> String {
    let (cert, key) = (&config.proxy.ca_cert, &config.proxy.ca_key);
    if cert.is_absent_file() && key.is_absent_file() {
        return format!("{cert} (absent: generated on first start)");
    }
    let subtrees = &config.proxy.ca_name_constraints;
    match CertificateAuthority::load_or_create_constrained(cert, key, subtrees) {
        Ok(_) => format!("{cert} (loaded)"),
        Err(err) => {
            problems.push(Problem::new("proxy.ca_cert", err));
            String::new()
        }
    }
}

/// The start-up checks on a scratch CA; with `fetch` and no problem so far, one token per
/// route (the results, whatever they are, for the table).
async fn preflight_and_fetch(
    config: &Config,
    fetch: bool,
    problems: &mut Vec<Problem>,
) -> Vec<Fetched> {
    let scratch_ca = match CertificateAuthority::generate() {
        Ok(ca) => ca,
        Err(err) => {
            problems.push(Problem::new("proxy", err));
            return Vec::new();
        }
    };
    let basis = Basis::Start {
        ca: Arc::new(scratch_ca),
        extra_roots: &[],
    };
    match preflight(config.clone(), basis).await {
        Ok(checked) => {
            problems.extend(checked.unreachable);
            if fetch && problems.is_empty() {
                if let Some(store) = checked.proxy.tokens.fetcher().shared() {
                    if let Err(err) = store.probe().await {
                        problems.push(Problem::new("cache", err));
                        return Vec::new();
                    }
                    println!("cache: Redis answers; the encryption key opens what is there");
                }
                let results = fetch_tokens(&checked.proxy).await;
                problems.extend(results.iter().filter_map(|r| r.problem()));
                return results;
            }
        }
        Err(found) => problems.extend(found.0),
    }
    Vec::new()
}

fn print_tokens(fetched: &[Fetched]) {
    if !fetched.is_empty() {
        println!("tokens:");
        for result in fetched {
            println!("  {result}");
        }
    }
}

/// `proxy.callers` and every `[[caller]]` with the ways it is recognised (never a secret).
fn callers_line(config: &Config) -> String {
    use oauth_egress::config::CallerPolicy;
    let policy = match config.proxy.callers {
        CallerPolicy::Any => "any (every caller that reaches proxy.listen is served)",
        CallerPolicy::Known => "known (only [[caller]]s; others get 407 or 403)",
    };
    let each: Vec<String> = config.callers.iter().map(|c| c.describe()).collect();
    match each.is_empty() {
        true => policy.to_string(),
        false => format!("{policy}: {}", each.join(", ")),
    }
}

/// One route of the table: what it matches, its client and grant, and its options.
fn route_line(route: &RouteSpec, client: Option<&ClientConfig>) -> String {
    let port = route
        .port
        .map(|p| format!(":{p}"))
        .unwrap_or_else(|| ":*".into());
    let path = route.path_prefix.as_deref().unwrap_or("/");
    let mut extra = String::new();
    if !route.scopes.is_empty() {
        extra.push_str(&format!(" scopes={}", route.scopes.join(",")));
    }
    if !route.audience.is_empty() {
        extra.push_str(&format!(" audience={}", route.audience.join(",")));
    }
    if !route.resource.is_empty() {
        extra.push_str(&format!(" resource={}", route.resource.join(",")));
    }
    if !route.token_params.is_empty() {
        let names: Vec<&str> = route.token_params.keys().map(String::as_str).collect();
        extra.push_str(&format!(" token_params={}", names.join(",")));
    }
    if route.upgrade_tls {
        extra.push_str(" upgrade_tls");
    }
    if route.allow_plaintext {
        extra.push_str(" allow_plaintext");
    }
    if let Some(callers) = &route.callers {
        extra.push_str(&format!(" callers={}", callers.join(",")));
    }
    if let Some(h) = &route.token_placement {
        extra.push_str(&format!(
            " token_header={} token_scheme={:?}",
            h.header, h.scheme
        ));
    }
    let Some(client) = client else {
        let what = route.credential.as_ref().map_or_else(
            || "-".to_string(),
            |c| format!("static credential in {}", c.header),
        );
        return format!(
            "{:<20} {}{port}{path} -> {what}{extra}",
            route.name, route.host
        );
    };
    format!(
        "{:<20} {}{port}{path} -> client {} ({}, {} at {}){extra}",
        route.name,
        route.host,
        client.name,
        route.grant.name(),
        client.auth,
        client.endpoint_label()
    )
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
    fn problem(&self) -> Option<Problem> {
        match &self.outcome {
            FetchOutcome::Failed(why) => Some(Problem::new(format!("route {}", self.route), why)),
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
    let Some(token) = route.token() else {
        return FetchOutcome::Skipped("a static credential, no token");
    };
    let slot = match token.slot(&http::HeaderMap::new()) {
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
