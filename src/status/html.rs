//! The status page: one server-rendered HTML document, inline CSS, no script, no external
//! asset (it works from a loopback port with no network and under any CSP). Every value
//! from the config or an authorization server passes through [`escape`].

use std::fmt::Write;

use super::{RouteStatus, Status};
use crate::token::view::TokenState;

/// `text` with `& < > " '` replaced by entities: safe in element content and quoted
/// attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_unix(secs: u64) -> String {
    let Ok(at) = time::OffsetDateTime::from_unix_timestamp(i64::try_from(secs).unwrap_or(0)) else {
        return secs.to_string();
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Seconds as `1h 02m`, `4m 05s` or `12s`.
pub fn format_secs(secs: u64) -> String {
    match secs {
        s if s >= 3600 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        s if s >= 60 => format!("{}m {:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

fn state_word(state: TokenState) -> &'static str {
    match state {
        TokenState::Valid => "valid",
        TokenState::Renewing => "renewing",
        TokenState::Failing => "failing",
        TokenState::Cold => "cold",
    }
}

const STYLE: &str = "body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}\
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border:1px solid #ccc;padding:4px 8px;\
text-align:left;vertical-align:top}th{background:#f3f3f3}code{font-size:13px}\
.valid{color:#176f2c;font-weight:600}.renewing{color:#8a6d00;font-weight:600}\
.failing{color:#b00020;font-weight:600}.cold{color:#666;font-weight:600}\
.err{color:#b00020}dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px}\
dt{font-weight:600}dd{margin:0}";

/// The page for `status`.
pub fn render(status: &Status) -> String {
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>oauth-egress status</title><style>{STYLE}</style></head><body>\
         <h1>oauth-egress {}</h1><p>{} · generated {} · started {}</p>",
        escape(status.version),
        if status.ready {
            "<span class=\"valid\">ready</span>"
        } else {
            "<span class=\"failing\">not ready</span>"
        },
        format_unix(status.generated_at_unix),
        format_unix(status.started_at_unix),
    );
    routes_table(&mut page, &status.routes);
    about(&mut page, status);
    page.push_str(
        "<p><a href=\"/status\">JSON</a> · <a href=\"/metrics\">metrics</a></p></body></html>\n",
    );
    page
}

fn routes_table(page: &mut String, routes: &[RouteStatus]) {
    page.push_str(
        "<h2>Routes</h2><table><thead><tr><th>route</th><th>matches</th><th>client</th>\
         <th>grant</th><th>sender</th><th>token</th><th>expires in</th><th>last fetch</th>\
         <th>last error</th><th>requests (5 min)</th><th>401 retries (5 min)</th></tr></thead><tbody>",
    );
    for r in routes {
        let port = r.port.map_or_else(|| "*".into(), |p| p.to_string());
        let token = &r.token;
        let state = state_word(token.state);
        let subjects = token
            .subjects
            .map(|n| format!(" ({n} subjects)"))
            .unwrap_or_default();
        let expires = token
            .expires_in_seconds
            .map_or_else(|| "—".into(), format_secs);
        let fetch = token.last_fetch.as_ref().map_or_else(
            || "—".into(),
            |f| {
                format!(
                    "{} · {} ms{}",
                    format_unix(f.at_unix),
                    f.latency_ms,
                    if f.ok { "" } else { " · failed" }
                )
            },
        );
        let error = token.last_error.as_ref().map_or_else(
            || "—".into(),
            |e| {
                let code = e.oauth_error.as_deref().unwrap_or(e.kind);
                let description = e
                    .description
                    .as_deref()
                    .map(|d| format!(": {}", escape(d)))
                    .unwrap_or_default();
                format!(
                    "<span class=\"err\"><code>{}</code>{description}</span><br><small>{} · {}</small>",
                    escape(code),
                    format_unix(e.at_unix),
                    escape(&e.message)
                )
            },
        );
        let _ = write!(
            page,
            "<tr><td>{}</td><td><code>{}:{}{}</code></td><td>{}</td><td>{}</td><td>{}</td>\
             <td><span class=\"{state}\">{state}</span>{subjects}</td><td>{expires}</td>\
             <td>{fetch}</td><td>{error}</td><td>{}</td><td>{}</td></tr>",
            escape(&r.name),
            escape(&r.host),
            port,
            escape(&r.path),
            escape(&r.client),
            r.grant,
            r.sender,
            r.last_5m.requests,
            r.last_5m.retries_401,
        );
    }
    page.push_str("</tbody></table>");
}

fn about(page: &mut String, status: &Status) {
    let ca = &status.ca;
    let reload = status.config.last_reload.as_ref().map_or_else(
        || "none since start".into(),
        |r| match &r.error {
            None => format!("{} · ok", format_unix(r.at_unix)),
            Some(e) => format!(
                "{} · <span class=\"err\">refused: {}</span>",
                format_unix(r.at_unix),
                escape(e)
            ),
        },
    );
    let _ = write!(
        page,
        "<h2>Interception CA</h2><dl><dt>subject</dt><dd>{}</dd><dt>SHA-256</dt>\
         <dd><code>{}</code></dd><dt>not after</dt><dd>{}</dd><dt>leaves cached</dt><dd>{}</dd></dl>\
         <h2>Configuration</h2><dl><dt>file</dt><dd><code>{}</code></dd><dt>last reload</dt>\
         <dd>{reload}</dd></dl>",
        escape(ca.subject.as_deref().unwrap_or("?")),
        escape(&ca.sha256_fingerprint),
        ca.not_after_unix
            .and_then(|t| u64::try_from(t).ok())
            .map_or_else(|| "?".into(), format_unix),
        ca.leaves_cached,
        escape(&status.config.file),
    );
}
