//! The grant half of a token request: `grant_type` and its parameters.

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::assertion::bearer_assertion;
use super::client_auth::CredentialError;
use super::TokenRequest;
use crate::config::Grant;

/// RFC 8693 §2.1.
const TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 7523 §2.1.
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// The grant's form fields. `refresh_token` is the stored token for the refresh grant.
pub(super) fn form(
    request: &TokenRequest,
    endpoint: &str,
    refresh_token: Option<&SecretString>,
) -> Result<Vec<(&'static str, Zeroizing<String>)>, CredentialError> {
    let text = |s: &str| Zeroizing::new(s.to_string());
    let mut form = Vec::new();
    let scope = (!request.scopes.is_empty()).then(|| request.scopes.join(" "));
    let mut scope_as_param = true;
    match &request.grant {
        Grant::ClientCredentials => form.push(("grant_type", text("client_credentials"))),
        Grant::TokenExchange(x) => {
            form.push(("grant_type", text(TOKEN_EXCHANGE)));
            let subject = request
                .subject
                .as_ref()
                .ok_or(CredentialError::Missing("subject token"))?;
            form.push(("subject_token", text(subject.expose_secret())));
            form.push(("subject_token_type", text(&x.subject_token_type)));
            if let Some((source, kind)) = &x.actor {
                let actor = source.load().map_err(CredentialError::Actor)?;
                form.push(("actor_token", text(actor.expose_secret().trim())));
                form.push(("actor_token_type", text(kind)));
            }
            if let Some(kind) = &x.requested_token_type {
                form.push(("requested_token_type", text(kind)));
            }
        }
        Grant::RefreshToken { .. } => {
            form.push(("grant_type", text("refresh_token")));
            let token = refresh_token.ok_or(CredentialError::Missing("refresh token"))?;
            form.push(("refresh_token", text(token.expose_secret())));
        }
        Grant::JwtBearer(j) => {
            form.push(("grant_type", text(JWT_BEARER)));
            let key = super::client_auth::private_key(&request.client)?;
            let issuer = j.issuer.as_deref().unwrap_or(&request.client.client_id);
            let audience = j.audience.as_deref().unwrap_or(endpoint);
            let claim_scope = if j.scope_in_claim {
                scope.as_deref()
            } else {
                None
            };
            scope_as_param = !j.scope_in_claim;
            let jwt = bearer_assertion(issuer, j.subject.as_deref(), audience, claim_scope, &key)
                .map_err(CredentialError::Signing)?;
            form.push(("assertion", Zeroizing::new(jwt)));
        }
    }
    if let (Some(scope), true) = (scope, scope_as_param) {
        form.push(("scope", Zeroizing::new(scope)));
    }
    for audience in &request.audience {
        form.push(("audience", text(audience)));
    }
    // RFC 8707 §2: one `resource` parameter per resource.
    for resource in &request.resource {
        form.push(("resource", text(resource)));
    }
    Ok(form)
}
