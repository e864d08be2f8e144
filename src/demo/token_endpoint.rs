//! The `/token` endpoint of the development authorization server: client
//! authentication (RFC 6749 §2.3.1), the client credentials grant (§4.4), error
//! answers (§5.2) and injected failures.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, PRAGMA, WWW_AUTHENTICATE};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use super::auth_server::{DevClient, Failure, Shared};
use super::{json_response, Claims, HttpResponse};

/// Largest `/token` request body we read; real ones are a few hundred bytes.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// An RFC 6749 §5.2 error response.
fn oauth_error(status: StatusCode, error: &str, description: &str) -> HttpResponse {
    let mut response = json_response(
        status,
        &json!({ "error": error, "error_description": description }),
    );
    response
        .headers_mut()
        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// A refused `/token` request; rendered as an RFC 6749 §5.2 error by
/// [`OAuthError::into_response`].
struct OAuthError {
    status: StatusCode,
    code: &'static str,
    description: String,
    /// Add `WWW-Authenticate: Basic` (the client tried HTTP Basic, §5.2).
    basic_challenge: bool,
}

impl OAuthError {
    fn bad_request(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }

    fn invalid_client(description: &str, via_basic: bool) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: description.to_string(),
            basic_challenge: via_basic,
        }
    }

    fn into_response(self) -> HttpResponse {
        let mut response = oauth_error(self.status, self.code, &self.description);
        if self.basic_challenge {
            response.headers_mut().insert(
                WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"dev\""),
            );
        }
        response
    }
}

fn failure_response(failure: Failure) -> HttpResponse {
    match failure {
        Failure::Html500 => {
            let html = "<html><body><h1>500 Internal Server Error</h1></body></html>\n";
            let mut response = Response::new(Full::new(Bytes::from_static(html.as_bytes())));
            *response.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
            response
        }
        Failure::OAuth {
            status,
            error,
            description,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            oauth_error(status, &error, &description)
        }
        Failure::Garbage200 => {
            let mut response = Response::new(Full::new(Bytes::from_static(b"<<not json>>")));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            response
        }
    }
}

/// Handles `POST /token`: records the request, applies the injected delay and
/// failure, then runs the client credentials grant.
pub(super) async fn token(shared: &Shared, req: Request<Incoming>) -> HttpResponse {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let basic = req.headers().get(AUTHORIZATION).map(parse_basic);
    let uses_basic = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.as_bytes().get(..6))
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case(b"basic "));
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let form: Vec<(String, String)> = match &body {
        Ok(bytes) => form_urlencoded::parse(bytes).into_owned().collect(),
        Err(_) => Vec::new(),
    };

    let (delay, failure) = {
        let mut settings = shared.settings();
        settings.last_form = form
            .iter()
            .map(|(k, v)| match k.as_str() {
                "client_secret" => (k.clone(), "<redacted>".to_string()),
                _ => (k.clone(), v.clone()),
            })
            .collect();
        settings.last_auth_method = if uses_basic {
            Some("client_secret_basic".to_string())
        } else if form.iter().any(|(k, _)| k == "client_secret") {
            Some("client_secret_post".to_string())
        } else {
            None
        };
        let failure = settings.failure.take().map(|(n, failure)| {
            if n > 1 {
                settings.failure = Some((n - 1, failure.clone()));
            }
            failure
        });
        (settings.delay, failure)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some(failure) = failure {
        return failure_response(failure);
    }
    if body.is_err() {
        let why = "request body unreadable or too large";
        return OAuthError::bad_request("invalid_request", why).into_response();
    }
    if !is_form {
        let why = "content type must be application/x-www-form-urlencoded";
        return OAuthError::bad_request("invalid_request", why).into_response();
    }
    match client_credentials(shared, basic, &form) {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    }
}

/// The grant itself (RFC 6749 §4.4.2), with client authentication per §2.3.1.
fn client_credentials(
    shared: &Shared,
    basic: Option<Result<(String, String), &'static str>>,
    form: &[(String, String)],
) -> Result<HttpResponse, OAuthError> {
    let mut names = HashSet::new();
    if let Some((name, _)) = form.iter().find(|(name, _)| !names.insert(name.as_str())) {
        let why = format!("parameter {name} is repeated");
        return Err(OAuthError::bad_request("invalid_request", why));
    }
    let param = |name: &str| {
        form.iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };

    let via_basic = basic.is_some();
    let (id, secret) = match (basic, param("client_id"), param("client_secret")) {
        (Some(_), _, Some(_)) => {
            let why = "client used both HTTP Basic and client_secret";
            return Err(OAuthError::bad_request("invalid_request", why));
        }
        (Some(Err(why)), _, None) => return Err(OAuthError::invalid_client(why, true)),
        (Some(Ok((id, secret))), body_id, None) => {
            if body_id.is_some_and(|body_id| body_id != id) {
                let why = "client_id differs from the HTTP Basic user";
                return Err(OAuthError::bad_request("invalid_request", why));
            }
            (id, secret)
        }
        (None, Some(id), Some(secret)) => (id.to_string(), secret.to_string()),
        (None, Some(_), None) => {
            return Err(OAuthError::invalid_client("client_secret missing", false))
        }
        (None, None, Some(_)) => {
            return Err(OAuthError::bad_request(
                "invalid_request",
                "client_secret without client_id",
            ));
        }
        (None, None, None) => {
            return Err(OAuthError::invalid_client(
                "client authentication required",
                false,
            ));
        }
    };
    let client = shared
        .clients
        .iter()
        .find(|c| c.id == id && constant_time_eq(c.secret.as_bytes(), secret.as_bytes()))
        .ok_or_else(|| OAuthError::invalid_client("unknown client or wrong secret", via_basic))?;

    match param("grant_type") {
        None => {
            return Err(OAuthError::bad_request(
                "invalid_request",
                "grant_type missing",
            ))
        }
        Some("client_credentials") => {}
        Some(other) => {
            let why = format!("grant_type {other} is not supported");
            return Err(OAuthError::bad_request("unsupported_grant_type", why));
        }
    }
    let scope = granted_scope(client, param("scope"))?;
    let resource = param("resource").filter(|r| !r.is_empty());
    if resource.is_some_and(|r| !is_absolute_uri(r)) {
        let why = "resource must be an absolute URI without a fragment";
        return Err(OAuthError::bad_request("invalid_target", why));
    }
    let aud = param("audience")
        .filter(|a| !a.is_empty())
        .or(resource)
        .map(str::to_string);

    let (lifetime, omit_expires_in) = {
        let settings = shared.settings();
        (settings.lifetime_secs, settings.omit_expires_in)
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let claims = Claims {
        iss: shared.issuer.clone(),
        sub: client.id.clone(),
        aud,
        scope: scope.clone(),
        exp: now.saturating_add(lifetime),
        iat: now,
        jti: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        client_id: client.id.clone(),
    };
    let access_token = shared.signing.sign(&claims).map_err(|err| {
        tracing::error!(error = %err, "could not sign an access token");
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: "signing failed".to_string(),
            basic_challenge: false,
        }
    })?;
    shared.tokens_issued.fetch_add(1, Ordering::SeqCst);

    let mut body = json!({ "access_token": access_token, "token_type": "Bearer" });
    if !omit_expires_in {
        body["expires_in"] = json!(lifetime);
    }
    if let Some(scope) = scope {
        body["scope"] = json!(scope);
    }
    let mut response = json_response(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The scope to grant: the requested scopes if all are allowed, else `invalid_scope`;
/// without a request, everything the client is allowed (or none if unrestricted).
fn granted_scope(
    client: &DevClient,
    requested: Option<&str>,
) -> Result<Option<String>, OAuthError> {
    let Some(requested) = requested.filter(|s| !s.is_empty()) else {
        let allowed = client.allowed_scopes.as_ref().filter(|s| !s.is_empty());
        return Ok(allowed.map(|s| s.join(" ")));
    };
    let mut granted: Vec<&str> = Vec::new();
    for scope in requested.split(' ') {
        // scope-token = 1*( %x21 / %x23-5B / %x5D-7E ), RFC 6749 §3.3
        let valid = !scope.is_empty()
            && scope
                .bytes()
                .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
        if !valid {
            return Err(OAuthError::bad_request(
                "invalid_scope",
                "scope is not a list of scope tokens",
            ));
        }
        if let Some(allowed) = &client.allowed_scopes {
            if !allowed.iter().any(|a| a == scope) {
                let why = format!("scope {scope} is not allowed for this client");
                return Err(OAuthError::bad_request("invalid_scope", why));
            }
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(Some(granted.join(" ")))
}

/// Parses `Authorization: Basic ...` where id and secret are each form-urlencoded
/// before base64 (RFC 6749 §2.3.1).
fn parse_basic(value: &HeaderValue) -> Result<(String, String), &'static str> {
    let text = value
        .to_str()
        .map_err(|_| "malformed Authorization header")?;
    let (scheme, credentials) = text
        .split_once(' ')
        .ok_or("malformed Authorization header")?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err("only HTTP Basic client authentication is supported");
    }
    let decoded = STANDARD
        .decode(credentials.trim())
        .map_err(|_| "Basic credentials are not valid base64")?;
    let decoded = String::from_utf8(decoded).map_err(|_| "Basic credentials are not UTF-8")?;
    let (id, secret) = decoded
        .split_once(':')
        .ok_or("Basic credentials lack a ':'")?;
    let id = form_decode(id).ok_or("Basic user is not form-urlencoded")?;
    let secret = form_decode(secret).ok_or("Basic password is not form-urlencoded")?;
    Ok((id, secret))
}

/// Decodes one `application/x-www-form-urlencoded` component (`+` is a space).
fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Whether `text` is an absolute URI (scheme ":" rest) without a fragment.
fn is_absolute_uri(text: &str) -> bool {
    let Some((scheme, rest)) = text.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !rest.is_empty()
        && !text.contains('#')
        && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
