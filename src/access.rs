//! The `access` log line and the request metrics of one forwarded request: what a person
//! reads to see who called what, and what Prometheus counts. Never a token, a credential or
//! a query string (the path is logged without its query).

use std::time::Instant;

use http::uri::Authority;
use http::Method;

use crate::retry::Budget;
use crate::token::Lookup;

/// One request, as the access line names it.
pub(crate) struct Line<'a> {
    /// The route's name, or `-`.
    pub route: &'a str,
    /// The caller's name, or `unidentified` (bounded: a metric label too).
    pub caller: &'a str,
    /// Where it went.
    pub authority: &'a Authority,
    /// The method.
    pub method: &'a Method,
    /// The path, without query.
    pub path: &'a str,
    /// When the request arrived.
    pub started: Instant,
}

impl Line<'_> {
    /// Counts the request and writes its `access` line: answered `status`, with the token
    /// lookup made (if any) and the resends spent.
    pub(crate) fn record(&self, status: u16, lookup: Option<Lookup>, resent: Budget) {
        let route = self.route;
        crate::metrics::request(route, status, self.started.elapsed());
        crate::metrics::caller(self.caller, status);
        if resent.token {
            crate::metrics::retry(route, "401");
        }
        if resent.nonce {
            crate::metrics::retry(route, "dpop_nonce");
        }
        if let Some(lookup) = lookup {
            crate::metrics::token_lookup(route, lookup == Lookup::Hit);
        }
        tracing::info!(
            target: "access",
            route,
            caller = self.caller,
            host = %self.authority,
            method = %self.method,
            path = %self.path,
            status,
            ms = self.started.elapsed().as_secs_f64() * 1000.0,
            token = match lookup { Some(Lookup::Hit) => "hit", Some(Lookup::Miss) => "miss", None => "-" },
            retried = resent.token,
        );
    }
}
