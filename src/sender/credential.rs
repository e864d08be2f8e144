//! Static credentials (`credential = { ... }` on a route) as header values: read from their
//! source, checked, built once per version of the secret, always sensitive.
//!
//! A file secret is re-read when its modification time or length changes (a rotated
//! Kubernetes Secret, a renewed key): one `stat` per request, no restart. An environment
//! variable cannot change under a running process, so it is read once.

use std::sync::Mutex;
use std::time::SystemTime;

use base64::Engine;
use http::{HeaderName, HeaderValue};
use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::config::{header_safe, CredentialForm, StaticCredential};
use crate::error::{Class, Classify};
use crate::secret::{SecretError, SecretSource};
use crate::sync::lock;

/// Why a route's static credential cannot be sent. Names the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The secret could not be read.
    #[error("credential: {0}")]
    Unreadable(#[from] SecretError),
    /// The secret holds bytes a header value cannot carry.
    #[error(
        "credential from {0} holds bytes that cannot go in a header value (control characters, \
         a line break inside, or non-ASCII); fix the secret"
    )]
    NotHeaderSafe(String),
}

impl Classify for CredentialError {
    fn class(&self) -> Class {
        Class::Configuration
    }
    fn details(&self) -> Option<&str> {
        Some("static credential")
    }
}

/// The version of a secret a cached value was built from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stamp {
    /// An environment variable: read once.
    Env,
    /// A file as `stat` saw it.
    File(Option<SystemTime>, u64),
}

/// A route's static credential, ready to inject: the header and its current value.
pub struct StaticHeader {
    spec: StaticCredential,
    cached: Mutex<Option<(Stamp, HeaderValue)>>,
}

impl std::fmt::Debug for StaticHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StaticHeader")
            .field("header", &self.spec.header)
            .field("value", &"***")
            .finish()
    }
}

impl StaticHeader {
    /// The credential of `spec`, read on first use.
    pub fn new(spec: StaticCredential) -> StaticHeader {
        StaticHeader {
            spec,
            cached: Mutex::new(None),
        }
    }

    /// The header the credential goes in.
    pub fn name(&self) -> &HeaderName {
        &self.spec.header
    }

    fn source(&self) -> &SecretSource {
        match &self.spec.form {
            CredentialForm::Value { value, .. } => value,
            CredentialForm::Basic { password, .. } => password,
        }
    }

    /// The current value (sensitive), rebuilt when the secret's file changed.
    pub fn value(&self) -> Result<HeaderValue, CredentialError> {
        let stamp = match self.source() {
            // The command's own cache (`cache_secs`) decides when it runs again.
            SecretSource::Exec(_) => return render(&self.spec),
            SecretSource::Env(_) => Stamp::Env,
            SecretSource::File(path) => {
                let meta = std::fs::metadata(path).map_err(|source| SecretError::File {
                    path: path.clone(),
                    source,
                })?;
                Stamp::File(meta.modified().ok(), meta.len())
            }
        };
        if let Some((seen, value)) = &*lock(&self.cached) {
            if *seen == stamp {
                return Ok(value.clone());
            }
        }
        let value = render(&self.spec)?;
        *lock(&self.cached) = Some((stamp, value.clone()));
        Ok(value)
    }
}

/// The header value of `spec` from its secret now: checked, sensitive, in a buffer wiped
/// when the last clone goes.
pub fn render(spec: &StaticCredential) -> Result<HeaderValue, CredentialError> {
    let mut bytes = Zeroizing::new(Vec::new());
    let source = match &spec.form {
        CredentialForm::Value { prefix, value } => {
            let secret = value.load()?;
            bytes.extend_from_slice(prefix.as_bytes());
            bytes.extend_from_slice(secret.expose_secret().as_bytes());
            value
        }
        CredentialForm::Basic { user, password } => {
            let secret = password.load()?;
            let mut pair = Zeroizing::new(format!("{user}:"));
            pair.push_str(secret.expose_secret());
            let mut encoded = Zeroizing::new(String::new());
            base64::engine::general_purpose::STANDARD.encode_string(pair.as_bytes(), &mut encoded);
            bytes.extend_from_slice(b"Basic ");
            bytes.extend_from_slice(encoded.as_bytes());
            password
        }
    };
    let unsafe_bytes = || CredentialError::NotHeaderSafe(source.to_string());
    if !header_safe(&bytes) {
        return Err(unsafe_bytes());
    }
    let mut value = HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(bytes))
        .map_err(|_| unsafe_bytes())?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests;
