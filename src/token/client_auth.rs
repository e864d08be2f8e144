//! Client authentication at the token endpoint: RFC 6749 §2.3.1 (secret in Basic or body),
//! RFC 7523 (JWT assertions signed with the secret or a private key), RFC 8705 (mutual TLS:
//! the certificate is on the connection, `client_id` in the body), and public clients.

use base64::Engine;
use http::HeaderValue;
use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::assertion::{client_assertion, SigningError, SigningKey};
use crate::config::{AssertionAudience, BasicEncoding, ClientAuth, ClientConfig};
use crate::secret::{SecretError, SecretSource};

/// Why a token request could not be built: a credential is missing, unreadable or unusable.
/// Names the key or file, never its content.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CredentialError {
    /// A setting the client's `auth` or grant needs is not configured.
    #[error("no {0} configured")]
    Missing(&'static str),
    /// A secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// The private key cannot sign.
    #[error("private_key ({location}): {why}")]
    Key {
        /// Where the key lives.
        location: SecretSource,
        /// Why it cannot be used.
        #[source]
        why: SigningError,
    },
    /// The assertion certificate cannot be read.
    #[error("assertion_cert ({location}): {reason}")]
    CertificateUnreadable {
        /// Where the certificate lives.
        location: SecretSource,
        /// Why it cannot be read (as the secret source words it).
        reason: String,
    },
    /// The assertion certificate does not fit the key.
    #[error("assertion_cert ({location}): {why}")]
    Certificate {
        /// Where the certificate lives.
        location: SecretSource,
        /// Why.
        #[source]
        why: SigningError,
    },
    /// The workload's assertion has expired (or expires within [`ASSERTION_MARGIN_SECS`]).
    #[error("client_assertion ({location}) expired {ago} s ago (exp {exp}); the platform should have rotated it: check the projected token's expirationSeconds and that the file is the one it writes")]
    AssertionExpired {
        /// Where it lives.
        location: SecretSource,
        /// Its `exp`.
        exp: u64,
        /// How long ago (0: within the margin).
        ago: u64,
    },
    /// The workload's assertion is not a JWT with an `exp`.
    #[error("client_assertion ({0}) is not a JWT with an exp claim")]
    AssertionNotJwt(SecretSource),
    /// The client id or secret has bytes a header cannot carry.
    #[error("client id or secret cannot go in a header")]
    NotHeaderSafe,
    /// An assertion could not be signed.
    #[error(transparent)]
    Signing(SigningError),
    /// The `actor_token` could not be read.
    #[error("actor_token: {0}")]
    Actor(SecretError),
    /// The DPoP proof could not be made.
    #[error(transparent)]
    Proof(#[from] crate::sender::dpop::DpopError),
    /// The DPoP proof cannot go in a header.
    #[error(transparent)]
    ProofHeader(#[from] http::header::InvalidHeaderValue),
}

/// What client authentication adds to a token request.
pub(super) struct Applied {
    /// Extra form fields.
    pub form: Vec<(&'static str, Zeroizing<String>)>,
    /// An `Authorization` header (sensitive), for `client_secret_basic`.
    pub authorization: Option<HeaderValue>,
}

const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

fn secret(client: &ClientConfig) -> Result<SecretString, CredentialError> {
    let source = client
        .client_secret
        .as_ref()
        .ok_or(CredentialError::Missing("client_secret"))?;
    Ok(source.load()?)
}

/// The signing key of a client's `private_key`.
pub(super) fn private_key(client: &ClientConfig) -> Result<SigningKey, CredentialError> {
    let source = client
        .private_key
        .as_ref()
        .ok_or(CredentialError::Missing("private_key"))?;
    let pem = source.load()?;
    let key =
        SigningKey::from_pem(&pem, client.signing_alg, client.key_id.clone()).map_err(|why| {
            CredentialError::Key {
                location: source.clone(),
                why,
            }
        })?;
    let Some(cert) = &client.assertion_cert else {
        return Ok(key);
    };
    // Read on every use, like the key, so a rotated pair is picked up together.
    let pem = cert
        .load()
        .map_err(|e| CredentialError::CertificateUnreadable {
            location: cert.clone(),
            reason: e.reason(),
        })?;
    key.with_certificate(pem.expose_secret())
        .map_err(|why| CredentialError::Certificate {
            location: cert.clone(),
            why,
        })
}

/// Authenticates `client` for a request to `endpoint`; assertions are minted fresh each call.
pub(super) fn apply(client: &ClientConfig, endpoint: &str) -> Result<Applied, CredentialError> {
    let id = || Zeroizing::new(client.client_id.clone());
    let audience = match (client.assertion_audience, client.issuer()) {
        (AssertionAudience::Issuer, Some(issuer)) => {
            issuer.as_str().trim_end_matches('/').to_string()
        }
        _ => endpoint.to_string(),
    };
    let assertion = |key: &SigningKey| -> Result<Applied, CredentialError> {
        let jwt = client_assertion(&client.client_id, &audience, key)
            .map_err(CredentialError::Signing)?;
        Ok(Applied {
            form: vec![
                ("client_id", id()),
                (
                    "client_assertion_type",
                    Zeroizing::new(ASSERTION_TYPE.into()),
                ),
                ("client_assertion", Zeroizing::new(jwt)),
            ],
            authorization: None,
        })
    };
    match client.auth {
        ClientAuth::ClientSecretBasic => {
            let secret = secret(client)?;
            // RFC 6749 §2.3.1: both parts are form-urlencoded before base64, unless the
            // server is known not to decode them (`basic_encoding = "raw"`).
            let encode = |text: &str| match client.basic_encoding {
                BasicEncoding::Form => form_urlencoded::byte_serialize(text.as_bytes()).collect(),
                BasicEncoding::Raw => text.to_string(),
            };
            let user: String = encode(&client.client_id);
            let pass = Zeroizing::new(encode(secret.expose_secret()));
            let pair = Zeroizing::new(format!("{user}:{}", pass.as_str()));
            let value = Zeroizing::new(format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())
            ));
            let mut header =
                HeaderValue::from_str(&value).map_err(|_| CredentialError::NotHeaderSafe)?;
            header.set_sensitive(true);
            Ok(Applied {
                form: Vec::new(),
                authorization: Some(header),
            })
        }
        ClientAuth::ClientSecretPost => Ok(Applied {
            form: vec![
                ("client_id", id()),
                (
                    "client_secret",
                    Zeroizing::new(secret(client)?.expose_secret().to_string()),
                ),
            ],
            authorization: None,
        }),
        ClientAuth::ClientSecretJwt => assertion(&SigningKey::hmac(&secret(client)?)),
        ClientAuth::PrivateKeyJwt => assertion(&private_key(client)?),
        ClientAuth::ClientAssertion => Ok(Applied {
            form: vec![
                ("client_id", id()),
                (
                    "client_assertion_type",
                    Zeroizing::new(ASSERTION_TYPE.into()),
                ),
                ("client_assertion", workload_assertion(client)?),
            ],
            authorization: None,
        }),
        ClientAuth::TlsClientAuth | ClientAuth::None => Ok(Applied {
            form: vec![("client_id", id())],
            authorization: None,
        }),
    }
}

/// Whether form-encoding changes `client`'s Basic credentials: its id or secret has a
/// character `application/x-www-form-urlencoded` escapes. A server that does not decode
/// them (RFC 6749 §2.3.1 says it must) then refuses the client, and `basic_encoding =
/// "raw"` is the fix. Reads the secret; `false` when it cannot be read.
pub(super) fn basic_encoding_matters(client: &ClientConfig) -> bool {
    let changes =
        |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>() != text;
    client.auth == ClientAuth::ClientSecretBasic
        && client.basic_encoding == BasicEncoding::Form
        && (changes(&client.client_id) || secret(client).is_ok_and(|s| changes(s.expose_secret())))
}

/// An assertion this close to its `exp` is treated as expired: it could lapse in flight.
pub(super) const ASSERTION_MARGIN_SECS: u64 = 5;

/// The workload's JWT from `client_assertion`, read now; refused before any request when it
/// has expired (a clear error naming the file, not a round trip to a refusal).
fn workload_assertion(client: &ClientConfig) -> Result<Zeroizing<String>, CredentialError> {
    let source = client
        .client_assertion
        .as_ref()
        .ok_or(CredentialError::Missing("client_assertion"))?;
    let jwt = source.load()?;
    let jwt = jwt.expose_secret().trim();
    let exp = super::assertion::unverified_exp(jwt)
        .ok_or_else(|| CredentialError::AssertionNotJwt(source.clone()))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if exp <= now + ASSERTION_MARGIN_SECS {
        return Err(CredentialError::AssertionExpired {
            location: source.clone(),
            exp,
            ago: now.saturating_sub(exp),
        });
    }
    Ok(Zeroizing::new(jwt.to_string()))
}
