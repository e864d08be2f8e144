//! The grants of the development authorization server: client credentials
//! (RFC 6749 §4.4), refresh token (§6, rotated), token exchange (RFC 8693) and
//! JWT bearer (RFC 7523 §2.1). Every grant issues an ES256 `at+jwt` access token.

use std::sync::atomic::Ordering;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hyper::header::{HeaderValue, PRAGMA};
use hyper::StatusCode;
use serde_json::{json, Value};

use crate::assertion::{now_secs, peek, verify, Rules};
use crate::auth_server::Shared;
use crate::client_auth::Authenticated;
use crate::clients::AuthMethod;
use crate::token_endpoint::{Arrival, Form, OAuthError};
use crate::{json_response, lock, Claims, HttpResponse};

/// `grant_type` of RFC 8693 token exchange.
pub(super) const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// `grant_type` of the RFC 7523 §2.1 JWT bearer grant.
pub(super) const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Token type URIs of RFC 8693 §3.
const TT_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
const TT_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
const TT_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// JWT bearer assertions may not be valid for longer than this (seconds).
const MAX_BEARER_ASSERTION_LIFETIME: u64 = 3600;

/// What to put into an access token and its response.
struct Grant {
    /// Key of the [`Shared`] grant counter (the `grant_type`).
    grant: &'static str,
    sub: String,
    client_id: String,
    scope: Option<String>,
    aud: Option<String>,
    act: Option<Value>,
    refresh_token: Option<String>,
    issued_token_type: Option<&'static str>,
}

/// Signs the access token for `grant` and renders the RFC 6749 §5.1 response.
fn issue(shared: &Shared, grant: Grant, arrival: &Arrival<'_>) -> Result<HttpResponse, OAuthError> {
    let (lifetime, omit_expires_in) = {
        let settings = shared.settings();
        (settings.lifetime_secs, settings.omit_expires_in)
    };
    let now = now_secs();
    let claims = Claims {
        iss: shared.issuer.clone(),
        sub: grant.sub,
        aud: grant.aud,
        scope: grant.scope.clone(),
        exp: now.saturating_add(lifetime),
        iat: now,
        jti: URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()),
        client_id: grant.client_id,
        act: grant.act,
        cnf: arrival.binding.cnf.clone(),
    };
    let access_token = shared.signing.sign(&claims).map_err(|err| {
        tracing::error!(error = %err, "could not sign an access token");
        OAuthError::server_error("signing failed")
    })?;
    shared.tokens_issued.fetch_add(1, Ordering::SeqCst);
    *shared
        .settings()
        .grants
        .entry(grant.grant.to_string())
        .or_default() += 1;

    let mut body = json!({
        "access_token": access_token,
        "token_type": arrival.binding.token_type(shared),
    });
    if !omit_expires_in {
        body["expires_in"] = json!(lifetime);
    }
    if let Some(scope) = grant.scope {
        body["scope"] = json!(scope);
    }
    if let Some(refresh_token) = grant.refresh_token {
        body["refresh_token"] = json!(refresh_token);
    }
    if let Some(issued) = grant.issued_token_type {
        body["issued_token_type"] = json!(issued);
    }
    let patch = {
        let mut settings = shared.settings();
        settings.answer_patch.take().map(|(n, fields)| {
            if n > 1 {
                settings.answer_patch = Some((n - 1, fields.clone()));
            }
            fields
        })
    };
    for (name, value) in patch.into_iter().flatten() {
        match (value, body.as_object_mut()) {
            (Value::Null, Some(body)) => {
                body.remove(&name);
            }
            (value, Some(body)) => {
                body.insert(name, value);
            }
            (_, None) => {}
        }
    }
    let mut response = json_response(StatusCode::OK, &body);
    response
        .headers_mut()
        .insert(PRAGMA, HeaderValue::from_static("no-cache"));
    Ok(response)
}

/// The token audience: the `audience` parameter, else the `resource` parameter
/// (which must be an absolute URI without a fragment, RFC 8707).
fn audience(form: &Form) -> Result<Option<String>, OAuthError> {
    let resource = form.non_empty("resource");
    if resource.is_some_and(|r| !is_absolute_uri(r)) {
        let why = "resource must be an absolute URI without a fragment";
        return Err(OAuthError::bad_request("invalid_target", why));
    }
    Ok(form.non_empty("audience").or(resource).map(str::to_string))
}

/// The client credentials grant (RFC 6749 §4.4.2); confidential clients only.
pub(super) fn client_credentials(
    shared: &Shared,
    auth: &Authenticated,
    form: &Form,
    arrival: &Arrival<'_>,
) -> Result<HttpResponse, OAuthError> {
    if auth.method == AuthMethod::None {
        let why = "public clients may not use the client_credentials grant";
        return Err(OAuthError::bad_request("unauthorized_client", why));
    }
    let client = &auth.client;
    let scope = granted_scope(client.allowed_scopes.as_deref(), form.get("scope"))?;
    issue(
        shared,
        Grant {
            grant: "client_credentials",
            sub: client.id.clone(),
            client_id: client.id.clone(),
            scope,
            aud: audience(form)?,
            act: None,
            refresh_token: None,
            issued_token_type: None,
        },
        arrival,
    )
}

/// The refresh token grant (RFC 6749 §6) with rotation and reuse detection.
pub(super) fn refresh(
    shared: &Shared,
    auth: &Authenticated,
    form: &Form,
    arrival: &Arrival<'_>,
) -> Result<HttpResponse, OAuthError> {
    shared.refresh_grants.fetch_add(1, Ordering::SeqCst);
    let Some(token) = form.non_empty("refresh_token") else {
        return Err(OAuthError::invalid_request("refresh_token missing"));
    };
    let client = &auth.client;
    let rotate = shared.settings().rotate_refresh_tokens;
    // One lock for check and rotation, so a token is redeemed at most once; the
    // scope is checked before the token dies.
    let (scope, aud, successor) = {
        let mut store = lock(&shared.refresh);
        let original = store
            .check(token, &client.id)
            .map_err(OAuthError::invalid_grant)?;
        let scope = match (form.non_empty("scope"), original) {
            (Some(requested), Some(original)) => {
                let original: Vec<String> = original.split(' ').map(str::to_string).collect();
                granted_scope(Some(&original), Some(requested))?
            }
            (requested, None) => granted_scope(client.allowed_scopes.as_deref(), requested)?,
            (None, original) => original,
        };
        let aud = audience(form)?;
        let successor = if rotate { store.rotate(token) } else { None };
        (scope, aud, successor)
    };
    issue(
        shared,
        Grant {
            grant: "refresh_token",
            sub: client.id.clone(),
            client_id: client.id.clone(),
            scope,
            aud,
            act: None,
            refresh_token: successor,
            issued_token_type: None,
        },
        arrival,
    )
}

/// Verifies a subject or actor token: one of our own access tokens, or a JWT of a
/// trusted workload issuer (signature, `iss`, `exp`, `nbf`; `aud` is not checked).
fn verify_token(shared: &Shared, token: &str, what: &str) -> Result<Value, OAuthError> {
    let refuse = |why: String| OAuthError::invalid_grant(format!("{what}: {why}"));
    let peeked = peek(token).map_err(refuse)?;
    let iss = peeked.claim("iss").ok_or_else(|| refuse("no iss".into()))?;
    let claims = if iss == shared.issuer {
        let claims = shared
            .signing
            .verifier
            .verify(token, None, None)
            .map_err(refuse)?;
        serde_json::to_value(claims).map_err(|e| refuse(e.to_string()))?
    } else {
        let key = lock(&shared.trusted_issuers).get(iss).cloned();
        let key = key.ok_or_else(|| refuse(format!("issuer {iss} is not trusted")))?;
        let rules = Rules {
            key: &key.key,
            algs: &key.default_algs(),
            issuer: iss,
            subject: None,
            audiences: &[],
            max_lifetime_secs: u64::MAX,
            require_iat: false,
            require_jti: false,
        };
        verify(token, peeked.alg, &rules).map_err(refuse)?
    };
    if !claims["sub"].is_string() {
        return Err(refuse("no sub".into()));
    }
    Ok(claims)
}

/// Checks a `*_token_type` parameter names a JWT-shaped token.
fn check_token_type(name: &str, value: Option<&str>) -> Result<(), OAuthError> {
    match value {
        Some(TT_ACCESS_TOKEN | TT_JWT | TT_ID_TOKEN) => Ok(()),
        Some(other) => Err(OAuthError::invalid_request(format!(
            "{name} {other} is not supported"
        ))),
        None => Err(OAuthError::invalid_request(format!("{name} missing"))),
    }
}

/// RFC 8693 token exchange: `sub` from the subject token, `act.sub` from the actor
/// token (else the client).
pub(super) fn token_exchange(
    shared: &Shared,
    auth: &Authenticated,
    form: &Form,
    arrival: &Arrival<'_>,
) -> Result<HttpResponse, OAuthError> {
    let Some(subject_token) = form.non_empty("subject_token") else {
        return Err(OAuthError::invalid_request("subject_token missing"));
    };
    check_token_type("subject_token_type", form.non_empty("subject_token_type"))?;
    let actor = match (
        form.non_empty("actor_token"),
        form.non_empty("actor_token_type"),
    ) {
        (Some(token), kind) => {
            check_token_type("actor_token_type", kind)?;
            Some(verify_token(shared, token, "actor_token")?)
        }
        (None, Some(_)) => {
            return Err(OAuthError::invalid_request(
                "actor_token_type without actor_token",
            ))
        }
        (None, None) => None,
    };
    let issued_token_type = match form.non_empty("requested_token_type") {
        None | Some(TT_ACCESS_TOKEN) => TT_ACCESS_TOKEN,
        Some(TT_JWT) => TT_JWT,
        Some(other) => {
            let why = format!("requested_token_type {other} is not supported");
            return Err(OAuthError::invalid_request(why));
        }
    };
    let subject = verify_token(shared, subject_token, "subject_token")?;
    let sub = subject["sub"].as_str().unwrap_or_default().to_string();
    shared.settings().last_subject_sub = Some(sub.clone());
    let client = &auth.client;
    let actor_sub = match &actor {
        Some(actor) => actor["sub"].as_str().unwrap_or_default().to_string(),
        None => client.id.clone(),
    };
    let scope = granted_scope(client.allowed_scopes.as_deref(), form.get("scope"))?;
    issue(
        shared,
        Grant {
            grant: GRANT_TOKEN_EXCHANGE,
            sub,
            client_id: client.id.clone(),
            scope,
            aud: audience(form)?,
            act: Some(json!({ "sub": actor_sub })),
            refresh_token: None,
            issued_token_type: Some(issued_token_type),
        },
        arrival,
    )
}

/// The RFC 7523 §2.1 JWT bearer grant; client authentication is optional.
pub(super) fn jwt_bearer(
    shared: &Shared,
    auth: Option<&Authenticated>,
    form: &Form,
    arrival: &Arrival<'_>,
) -> Result<HttpResponse, OAuthError> {
    let Some(assertion) = form.non_empty("assertion") else {
        return Err(OAuthError::invalid_request("assertion missing"));
    };
    let peeked = peek(assertion).map_err(OAuthError::invalid_grant)?;
    let iss = peeked
        .claim("iss")
        .ok_or_else(|| OAuthError::invalid_grant("assertion has no iss"))?;
    let keys = lock(&shared.assertion_keys)
        .get(iss)
        .cloned()
        .unwrap_or_default();
    if keys.is_empty() {
        let why = format!("assertion issuer {iss} is not trusted");
        return Err(OAuthError::invalid_grant(why));
    }
    let audiences = [arrival.endpoint.to_string()];
    let mut outcome = Err(format!("no key registered for {iss} with {:?}", peeked.alg));
    for (key, alg) in keys.iter().filter(|(_, alg)| *alg == peeked.alg) {
        let rules = Rules {
            key: &key.key,
            algs: &[*alg],
            issuer: iss,
            subject: None,
            audiences: &audiences,
            max_lifetime_secs: MAX_BEARER_ASSERTION_LIFETIME,
            require_iat: true,
            require_jti: false,
        };
        outcome = verify(assertion, peeked.alg, &rules);
        if outcome.is_ok() {
            break;
        }
    }
    let claims = outcome.map_err(OAuthError::invalid_grant)?;
    lock(&shared.replay)
        .check_and_remember(&claims)
        .map_err(OAuthError::invalid_grant)?;
    let sub = claims["sub"].as_str().unwrap_or(iss).to_string();
    let requested = form.non_empty("scope").or(claims["scope"].as_str());
    let allowed = auth.and_then(|a| a.client.allowed_scopes.as_deref());
    let scope = granted_scope(allowed, requested)?;
    let client_id = auth.map_or_else(|| iss.to_string(), |a| a.client.id.clone());
    issue(
        shared,
        Grant {
            grant: GRANT_JWT_BEARER,
            sub,
            client_id,
            scope,
            aud: audience(form)?,
            act: None,
            refresh_token: None,
            issued_token_type: None,
        },
        arrival,
    )
}

/// The scope to grant: the requested scopes if all are allowed, else `invalid_scope`;
/// without a request, everything allowed (or none if unrestricted).
fn granted_scope(
    allowed: Option<&[String]>,
    requested: Option<&str>,
) -> Result<Option<String>, OAuthError> {
    let Some(requested) = requested.filter(|s| !s.is_empty()) else {
        let allowed = allowed.filter(|s| !s.is_empty());
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
        if allowed.is_some_and(|allowed| !allowed.iter().any(|a| a == scope)) {
            let why = format!("scope {scope} is not allowed here");
            return Err(OAuthError::bad_request("invalid_scope", why));
        }
        if !granted.contains(&scope) {
            granted.push(scope);
        }
    }
    Ok(Some(granted.join(" ")))
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
