//! The `/token` endpoint of the development authorization server: request
//! parsing, records, injected failures, error answers (RFC 6749 §5.2) and the
//! dispatch to client authentication and the grants.

use std::collections::HashSet;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{
    HeaderValue, AUTHORIZATION, CONTENT_TYPE, PRAGMA, RETRY_AFTER, WWW_AUTHENTICATE,
};
use hyper::{Request, Response, StatusCode};
use serde_json::json;

use crate::assertion::peek;
use crate::auth_server::{Failure, Shared};
use crate::client_auth::{authenticate, detect_method, parse_basic};
use crate::dpop_state::{bind, Binding, DPOP};
use crate::grants::{self, GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE};
use crate::{json_response, DropConnection, HttpResponse, PeerCertificates};

/// Largest `/token` request body we read; real ones are a few hundred bytes.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Form fields whose values never show up in [`Shared`] records.
const SECRET_FIELDS: [&str; 6] = [
    "client_secret",
    "client_assertion",
    "refresh_token",
    "subject_token",
    "actor_token",
    "assertion",
];

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
pub(super) struct OAuthError {
    pub(super) status: StatusCode,
    pub(super) code: &'static str,
    pub(super) description: String,
    /// Add `WWW-Authenticate: Basic` (the client tried HTTP Basic, §5.2).
    pub(super) basic_challenge: bool,
}

impl OAuthError {
    /// A `400` error with `code`.
    pub(super) fn bad_request(code: &'static str, description: impl Into<String>) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            code,
            description: description.into(),
            basic_challenge: false,
        }
    }

    /// `400 invalid_request`.
    pub(super) fn invalid_request(description: impl Into<String>) -> Self {
        Self::bad_request("invalid_request", description)
    }

    /// `400 invalid_grant`.
    pub(super) fn invalid_grant(description: impl Into<String>) -> Self {
        Self::bad_request("invalid_grant", description)
    }

    /// `401 invalid_client`, with a Basic challenge if the client tried Basic.
    pub(super) fn invalid_client(description: impl Into<String>, via_basic: bool) -> Self {
        OAuthError {
            status: StatusCode::UNAUTHORIZED,
            code: "invalid_client",
            description: description.into(),
            basic_challenge: via_basic,
        }
    }

    /// `500 server_error`.
    pub(super) fn server_error(description: &str) -> Self {
        OAuthError {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            code: "server_error",
            description: description.to_string(),
            basic_challenge: false,
        }
    }

    pub(super) fn into_response(self) -> HttpResponse {
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

/// The decoded form body of a token request.
pub(super) struct Form(pub(super) Vec<(String, String)>);

impl Form {
    /// The value of parameter `name` (the first one; repeats are refused earlier).
    pub(super) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Like [`Form::get`], treating an empty value as absent.
    pub(super) fn non_empty(&self, name: &str) -> Option<&str> {
        self.get(name).filter(|v| !v.is_empty())
    }
}

/// Where a request arrived: the token endpoint URL of that listener and the
/// client certificates of its TLS connection.
pub(super) struct Arrival<'a> {
    /// `{issuer}/token` or the mTLS alias.
    pub(super) endpoint: &'a str,
    /// The peer's certificate chain (only ever non-empty on the mTLS alias).
    pub(super) peer: &'a PeerCertificates,
    /// How the issued token is bound (DPoP key, client certificate).
    pub(super) binding: &'a Binding,
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
        Failure::Unavailable503 { retry_after_secs } => {
            let mut response = oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "the server is overloaded",
            );
            if let Some(secs) = retry_after_secs {
                response
                    .headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
            }
            response
        }
        Failure::CloseConnection => {
            let mut response = Response::new(Full::new(Bytes::new()));
            response.extensions_mut().insert(DropConnection);
            response
        }
    }
}

/// Handles `POST /token` arriving at `endpoint`: records the request, applies the
/// injected delay and failure, then authenticates the client and runs the grant.
pub(super) async fn token(shared: &Shared, req: Request<Incoming>, endpoint: &str) -> HttpResponse {
    shared.token_requests.fetch_add(1, Ordering::SeqCst);
    let peer = req
        .extensions()
        .get::<PeerCertificates>()
        .cloned()
        .unwrap_or_default();
    let is_form = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| {
            v.trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    let raw = shared.settings().basic_raw;
    let basic = req
        .headers()
        .get(AUTHORIZATION)
        .map(|v| parse_basic(v, raw));
    let dpop_values: Vec<HeaderValue> = req.headers().get_all(DPOP).iter().cloned().collect();
    let proof = shared.dpop.observe(&dpop_values);
    let body = Limited::new(req.into_body(), MAX_FORM_BYTES)
        .collect()
        .await
        .map(|collected| collected.to_bytes());
    let form = Form(match &body {
        Ok(bytes) => form_urlencoded::parse(bytes).into_owned().collect(),
        Err(_) => Vec::new(),
    });

    let assertion = form.get("client_assertion").and_then(|a| peek(a).ok());
    let (delay, failure) = {
        let mut settings = shared.settings();
        settings.last_form = form
            .0
            .iter()
            .map(|(k, v)| match SECRET_FIELDS.contains(&k.as_str()) {
                true => (k.clone(), "<redacted>".to_string()),
                false => (k.clone(), v.clone()),
            })
            .collect();
        settings.last_auth_method =
            detect_method(basic.is_some(), &form, assertion.as_ref(), &peer)
                .map(|m| m.as_str().to_string());
        if let Some(assertion) = assertion {
            settings.last_assertion = Some(assertion.record);
        }
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
        return OAuthError::invalid_request(why).into_response();
    }
    if !is_form {
        let why = "content type must be application/x-www-form-urlencoded";
        return OAuthError::invalid_request(why).into_response();
    }
    let binding = match bind(shared, proof, endpoint, &peer) {
        Ok(binding) => binding,
        Err(response) => return *response,
    };
    let arrival = Arrival {
        endpoint,
        peer: &peer,
        binding: &binding,
    };
    let mut response = match dispatch(shared, basic, &form, &arrival) {
        Ok(response) => response,
        Err(refusal) => refusal.into_response(),
    };
    shared.dpop.add_nonce(&mut response);
    response
}

/// Authenticates the client (RFC 6749 §2.3) and runs the requested grant.
fn dispatch(
    shared: &Shared,
    basic: Option<Result<(String, String), &'static str>>,
    form: &Form,
    arrival: &Arrival<'_>,
) -> Result<HttpResponse, OAuthError> {
    // RFC 6749 §3.2: no parameter twice, except `resource` (RFC 8707 §2: one per resource).
    let mut names = HashSet::new();
    if let Some((name, _)) = form
        .0
        .iter()
        .find(|(name, _)| name != "resource" && !names.insert(name.as_str()))
    {
        return Err(OAuthError::invalid_request(format!(
            "parameter {name} is repeated"
        )));
    }
    let client = authenticate(shared, basic, form, arrival)?;
    let grant_type = form.get("grant_type");
    if grant_type == Some(GRANT_JWT_BEARER) {
        // RFC 7523 §2.1: client authentication is optional for this grant.
        return grants::jwt_bearer(shared, client.as_ref(), form, arrival);
    }
    let Some(client) = client else {
        return Err(OAuthError::invalid_client(
            "client authentication required",
            false,
        ));
    };
    match grant_type {
        None => Err(OAuthError::invalid_request("grant_type missing")),
        Some("client_credentials") => grants::client_credentials(shared, &client, form, arrival),
        Some("refresh_token") => grants::refresh(shared, &client, form, arrival),
        Some(GRANT_TOKEN_EXCHANGE) => grants::token_exchange(shared, &client, form, arrival),
        Some(other) => Err(OAuthError::bad_request(
            "unsupported_grant_type",
            format!("grant_type {other} is not supported"),
        )),
    }
}
