//! Client authentication at the token endpoint (RFC 6749 §2.3.1).

use base64::Engine;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};

use crate::config::{ClientAuth, ClientConfig};

/// What client authentication adds to a token request: form fields and/or a header.
pub(super) struct Applied {
    /// Extra form fields (`client_id`, and `client_secret` for `client_secret_post`).
    pub form: Vec<(&'static str, SecretString)>,
    /// An `Authorization` header (sensitive), for `client_secret_basic`.
    pub authorization: Option<HeaderValue>,
}

/// Applies the client's method with `secret`.
pub(super) fn apply(client: &ClientConfig, secret: &SecretString) -> Applied {
    match client.auth {
        ClientAuth::ClientSecretBasic => {
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64.
            let id: String = form_urlencoded::byte_serialize(client.client_id.as_bytes()).collect();
            let pw = zeroize::Zeroizing::new(
                form_urlencoded::byte_serialize(secret.expose_secret().as_bytes())
                    .collect::<String>(),
            );
            let pair = zeroize::Zeroizing::new(format!("{id}:{}", pw.as_str()));
            let encoded = zeroize::Zeroizing::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ));
            let mut header = HeaderValue::from_str(&encoded).ok();
            if let Some(h) = header.as_mut() {
                h.set_sensitive(true);
            }
            Applied {
                form: Vec::new(),
                authorization: header,
            }
        }
        ClientAuth::ClientSecretPost => Applied {
            form: vec![
                ("client_id", SecretString::from(client.client_id.clone())),
                ("client_secret", secret.clone()),
            ],
            authorization: None,
        },
    }
}
