//! Discovery documents of the development authorization server: RFC 8414
//! `/.well-known/oauth-authorization-server` and OIDC Discovery
//! `/.well-known/openid-configuration`, with knobs to break them on purpose.

use std::sync::atomic::Ordering;

use hyper::StatusCode;
use serde_json::json;

use crate::auth_server::{Shared, JWKS_PATH, TOKEN_PATH};
use crate::clients::AuthMethod;
use crate::grants::{GRANT_JWT_BEARER, GRANT_TOKEN_EXCHANGE};
use crate::{json_response, lock, text_response, HttpResponse};

/// RFC 8414 metadata path.
pub(super) const OAUTH_METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// OpenID Connect Discovery 1.0 path.
pub(super) const OIDC_METADATA_PATH: &str = "/.well-known/openid-configuration";

/// Which discovery documents the server answers (set with
/// [`crate::AuthServer::set_discovery`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DiscoveryMode {
    /// Both documents (the default).
    #[default]
    Both,
    /// Only RFC 8414; `openid-configuration` answers 404.
    OAuthOnly,
    /// Neither; both paths answer 404.
    None,
}

/// Answers `GET` on one of the two metadata paths.
pub(super) fn metadata(shared: &Shared, path: &str) -> HttpResponse {
    shared.discovery_requests.fetch_add(1, Ordering::SeqCst);
    let (mode, issuer, methods) = {
        let settings = shared.settings();
        (
            settings.discovery,
            settings.advertised_issuer.clone(),
            settings.advertised_auth_methods.clone(),
        )
    };
    let served = match mode {
        DiscoveryMode::Both => true,
        DiscoveryMode::OAuthOnly => path == OAUTH_METADATA_PATH,
        DiscoveryMode::None => false,
    };
    if !served {
        return text_response(StatusCode::NOT_FOUND, "not found\n");
    }
    let methods = methods.unwrap_or_else(|| {
        AuthMethod::ALL
            .iter()
            .map(|m| m.as_str().to_string())
            .collect()
    });
    let mut document = json!({
        "issuer": issuer.unwrap_or_else(|| shared.issuer.clone()),
        "token_endpoint": format!("{}{TOKEN_PATH}", shared.issuer),
        "jwks_uri": format!("{}{JWKS_PATH}", shared.issuer),
        "grant_types_supported": [
            "client_credentials",
            "refresh_token",
            GRANT_TOKEN_EXCHANGE,
            GRANT_JWT_BEARER,
        ],
        "token_endpoint_auth_methods_supported": methods,
        "token_endpoint_auth_signing_alg_values_supported": ["HS256", "RS256", "PS256", "ES256"],
        "response_types_supported": ["token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "tls_client_certificate_bound_access_tokens": false,
        "dpop_signing_alg_values_supported": ["ES256", "RS256", "PS256"],
    });
    if let Some(alias) = lock(&shared.mtls_endpoint).clone() {
        document["mtls_endpoint_aliases"] = json!({ "token_endpoint": alias });
        // Tokens requested on the alias with a client certificate are bound to it.
        let bound = shared.dpop.bind_certificates.load(Ordering::SeqCst);
        document["tls_client_certificate_bound_access_tokens"] = json!(bound);
    }
    json_response(StatusCode::OK, &document)
}
