//! Client authentication at the token endpoint: `client_secret_basic`,
//! `client_secret_post` (RFC 6749 §2.3.1), `client_secret_jwt` and
//! `private_key_jwt` (RFC 7523 §2.2, OIDC Core §9), `tls_client_auth`
//! (RFC 8705 §2.1.2) and public clients (`none`).

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hyper::header::HeaderValue;
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::assertion::{peek, verify, Peeked, Rules};
use crate::auth_server::Shared;
use crate::clients::{AssertionAudience, AuthMethod, ClientRegistration};
use crate::mtls::cert_has_dns_san;
use crate::token_endpoint::{Arrival, Form, OAuthError};
use crate::{lock, PeerCertificates};

/// The `client_assertion_type` of JWT client assertions (RFC 7523 §2.2).
pub(super) const ASSERTION_TYPE_JWT: &str =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// Client assertions may not be valid for longer than this (seconds).
const MAX_CLIENT_ASSERTION_LIFETIME: u64 = 600;

/// An authenticated client and how it proved its identity.
pub(super) struct Authenticated {
    /// Its registration.
    pub(super) client: ClientRegistration,
    /// The method it used.
    pub(super) method: AuthMethod,
}

/// Which method a request attempts, judged from what it carries (for the records;
/// nothing is verified). `None` when it carries no client identification at all.
pub(super) fn detect_method(
    has_basic: bool,
    form: &Form,
    assertion: Option<&Peeked>,
    peer: &PeerCertificates,
) -> Option<AuthMethod> {
    if has_basic {
        Some(AuthMethod::ClientSecretBasic)
    } else if form.get("client_secret").is_some() {
        Some(AuthMethod::ClientSecretPost)
    } else if form.get("client_assertion").is_some() {
        match assertion.map(|a| a.alg) {
            Some(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => {
                Some(AuthMethod::ClientSecretJwt)
            }
            _ => Some(AuthMethod::PrivateKeyJwt),
        }
    } else if form.get("client_id").is_some() {
        match peer.0.is_empty() {
            true => Some(AuthMethod::None),
            false => Some(AuthMethod::TlsClientAuth),
        }
    } else {
        None
    }
}

fn find_client(shared: &Shared, id: &str) -> Option<ClientRegistration> {
    lock(&shared.clients).iter().find(|c| c.id == id).cloned()
}

fn not_registered(method: AuthMethod, via_basic: bool) -> OAuthError {
    let why = format!("client is not registered for {}", method.as_str());
    OAuthError::invalid_client(why, via_basic)
}

/// Authenticates the client of a token request. `Ok(None)` means the request
/// carries no client identification at all (the caller decides if that is fine).
pub(super) fn authenticate(
    shared: &Shared,
    basic: Option<Result<(String, String), &'static str>>,
    form: &Form,
    arrival: &Arrival<'_>,
) -> Result<Option<Authenticated>, OAuthError> {
    let has_secret = form.get("client_secret").is_some();
    let has_assertion =
        form.get("client_assertion").is_some() || form.get("client_assertion_type").is_some();
    let presented =
        usize::from(basic.is_some()) + usize::from(has_secret) + usize::from(has_assertion);
    if presented > 1 {
        let why =
            "client used more than one authentication method (e.g. HTTP Basic and client_secret)";
        return Err(OAuthError::invalid_request(why));
    }
    let body_id = form.get("client_id");
    if let Some(basic) = basic {
        let (id, secret) = basic.map_err(|why| OAuthError::invalid_client(why, true))?;
        if body_id.is_some_and(|body_id| body_id != id) {
            let why = "client_id differs from the HTTP Basic user";
            return Err(OAuthError::invalid_request(why));
        }
        return check_secret(shared, &id, &secret, AuthMethod::ClientSecretBasic).map(Some);
    }
    if let Some(secret) = form.get("client_secret") {
        let Some(id) = body_id else {
            return Err(OAuthError::invalid_request(
                "client_secret without client_id",
            ));
        };
        return check_secret(shared, id, secret, AuthMethod::ClientSecretPost).map(Some);
    }
    if has_assertion {
        return check_assertion(shared, form, arrival).map(Some);
    }
    let Some(id) = body_id else {
        return Ok(None);
    };
    let client = find_client(shared, id)
        .ok_or_else(|| OAuthError::invalid_client("unknown client", false))?;
    let cert = arrival.peer.0.first();
    if client.auth.allows(AuthMethod::TlsClientAuth) {
        if let Some(cert) = cert {
            let Some(san) = client.auth.tls_client_auth_san_dns.as_deref() else {
                return Err(OAuthError::invalid_client(
                    "no tls_client_auth_san_dns registered",
                    false,
                ));
            };
            if !cert_has_dns_san(cert, san) {
                let why =
                    format!("client certificate does not match tls_client_auth_san_dns {san}");
                return Err(OAuthError::invalid_client(why, false));
            }
            let method = AuthMethod::TlsClientAuth;
            return Ok(Some(Authenticated { client, method }));
        }
    }
    if client.auth.allows(AuthMethod::None) {
        let method = AuthMethod::None;
        return Ok(Some(Authenticated { client, method }));
    }
    if client.auth.allows(AuthMethod::TlsClientAuth) {
        let why = "tls_client_auth needs a client certificate: use the mTLS endpoint alias";
        return Err(OAuthError::invalid_client(why, false));
    }
    let why = "client credentials missing: the client is not registered as public (none)";
    Err(OAuthError::invalid_client(why, false))
}

/// `client_secret_basic` / `client_secret_post`.
fn check_secret(
    shared: &Shared,
    id: &str,
    secret: &str,
    method: AuthMethod,
) -> Result<Authenticated, OAuthError> {
    let via_basic = method == AuthMethod::ClientSecretBasic;
    let refused = || OAuthError::invalid_client("unknown client or wrong secret", via_basic);
    let client = find_client(shared, id).ok_or_else(refused)?;
    if !client.auth.allows(method) {
        return Err(not_registered(method, via_basic));
    }
    let registered = client.auth.secret.as_deref().ok_or_else(refused)?;
    if !constant_time_eq(registered.as_bytes(), secret.as_bytes()) {
        return Err(refused());
    }
    Ok(Authenticated { client, method })
}

/// `client_secret_jwt` / `private_key_jwt`.
fn check_assertion(
    shared: &Shared,
    form: &Form,
    arrival: &Arrival<'_>,
) -> Result<Authenticated, OAuthError> {
    if form.get("client_assertion_type") != Some(ASSERTION_TYPE_JWT) {
        let why = format!("client_assertion_type must be {ASSERTION_TYPE_JWT}");
        return Err(OAuthError::invalid_request(why));
    }
    let Some(jwt) = form.non_empty("client_assertion") else {
        return Err(OAuthError::invalid_request("client_assertion missing"));
    };
    let refuse = |why: String| OAuthError::invalid_client(why, false);
    let peeked = peek(jwt).map_err(refuse)?;
    let method = match peeked.alg {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => AuthMethod::ClientSecretJwt,
        _ => AuthMethod::PrivateKeyJwt,
    };
    let id = form
        .get("client_id")
        .or_else(|| peeked.claim("sub"))
        .or_else(|| peeked.claim("iss"))
        .ok_or_else(|| refuse("assertion names no client (sub)".to_string()))?;
    let client = find_client(shared, id).ok_or_else(|| refuse("unknown client".to_string()))?;
    if !client.auth.allows(method) {
        return Err(not_registered(method, false));
    }
    let secret_key;
    let (key, algs): (&DecodingKey, Vec<Algorithm>) = match method {
        AuthMethod::ClientSecretJwt => {
            let secret = client
                .auth
                .secret
                .as_deref()
                .ok_or_else(|| refuse("no secret registered".into()))?;
            secret_key = DecodingKey::from_secret(secret.as_bytes());
            (&secret_key, client.auth.signing_algs.clone())
        }
        _ => {
            let public = client
                .auth
                .public_key
                .as_ref()
                .ok_or_else(|| refuse("no public key registered".into()))?;
            let algs = client
                .auth
                .signing_algs
                .iter()
                .copied()
                .filter(|a| public.supports(*a))
                .collect();
            (&public.key, algs)
        }
    };
    let audiences: Vec<String> = match client.auth.assertion_audience {
        AssertionAudience::TokenEndpoint => vec![arrival.endpoint.to_string()],
        AssertionAudience::Issuer => vec![shared.issuer.clone()],
        AssertionAudience::Either => vec![arrival.endpoint.to_string(), shared.issuer.clone()],
    };
    let rules = Rules {
        key,
        algs: &algs,
        issuer: &client.id,
        subject: Some(&client.id),
        audiences: &audiences,
        max_lifetime_secs: MAX_CLIENT_ASSERTION_LIFETIME,
        require_iat: false,
        require_jti: true,
    };
    let claims = verify(jwt, peeked.alg, &rules).map_err(refuse)?;
    lock(&shared.replay)
        .check_and_remember(&claims)
        .map_err(refuse)?;
    Ok(Authenticated { client, method })
}

/// Parses `Authorization: Basic ...` where id and secret are each form-urlencoded
/// before base64 (RFC 6749 §2.3.1), or taken as they are with `raw` (Glewlwyd's way).
pub(super) fn parse_basic(
    value: &HeaderValue,
    raw: bool,
) -> Result<(String, String), &'static str> {
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
    if raw {
        return Ok((id.to_string(), secret.to_string()));
    }
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

/// Compares secrets without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
