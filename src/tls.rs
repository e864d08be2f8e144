//! Trust roots and TLS client configs shared by upstream connections and token requests.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::secret::{ExposeSecret, KeyError, SecretError, SecretSource};

/// A trust anchor file (or variable) that could not be used; names it, never its content.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The file or variable could not be read.
    #[error("{from}: {}", .source.reason())]
    Read {
        /// The file or variable.
        from: String,
        /// Why.
        source: SecretError,
    },
    /// The PEM is malformed.
    #[error("{from}: {source}")]
    Pem {
        /// The file or variable.
        from: String,
        /// The PEM parser's reason.
        source: rustls::pki_types::pem::Error,
    },
    /// The PEM holds no certificate.
    #[error("{from}: no PEM certificate found")]
    Empty {
        /// The file or variable.
        from: String,
    },
    /// A certificate webpki cannot use as a trust anchor.
    #[error("{from}: not a usable CA certificate: {source}")]
    Unusable {
        /// The file or variable.
        from: String,
        /// webpki's reason.
        source: rustls::Error,
    },
    /// A certificate handed over in memory (the demo's and tests' CA) is not usable.
    #[error("(in memory): {0}")]
    InMemory(#[source] rustls::Error),
    /// `proxy.system_roots = true`, and the system store yields nothing usable.
    #[error(
        "(system store): proxy.system_roots = true, but no usable certificate was found{}",
        .first_error.as_ref().map(|e| format!(" ({e})")).unwrap_or_default()
    )]
    NoSystemRoots {
        /// The first error reading the store, if any.
        first_error: Option<String>,
    },
}

/// A client certificate and key (`client_cert`, `client_key`) that cannot be presented.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    /// The certificate chain could not be read.
    #[error("client_cert ({cert}): {source}")]
    Cert {
        /// Where the chain lives.
        cert: String,
        /// Why.
        source: RootsError,
    },
    /// The key could not be read.
    #[error("client_key: {0}")]
    KeyRead(#[source] SecretError),
    /// The key is not a private key the loader takes.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// rustls refused the pair (e.g. the key is not the certificate's).
    #[error("client_cert/client_key: {0}")]
    Pair(#[source] rustls::Error),
}

/// Reads every certificate in a PEM file or variable.
fn load_certs(source: &SecretSource) -> Result<Vec<CertificateDer<'static>>, RootsError> {
    let from = || source.to_string();
    let pem = source.load().map_err(|source| RootsError::Read {
        from: from(),
        source,
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.expose_secret().as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|source| RootsError::Pem {
            from: from(),
            source,
        })?;
    if certs.is_empty() {
        return Err(RootsError::Empty { from: from() });
    }
    Ok(certs)
}

/// The webpki roots plus the certificates in `files` and `extra`, and with `system` the
/// operating system's store too (`proxy.system_roots`: corporate CAs are installed there).
pub fn root_store(
    files: &[SecretSource],
    extra: &[CertificateDer<'static>],
    system: bool,
) -> Result<Arc<RootCertStore>, RootsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if system {
        add_system_roots(&mut roots)?;
    }
    for file in files {
        for cert in load_certs(file)? {
            roots.add(cert).map_err(|source| RootsError::Unusable {
                from: file.to_string(),
                source,
            })?;
        }
    }
    for cert in extra {
        roots.add(cert.clone()).map_err(RootsError::InMemory)?;
    }
    Ok(Arc::new(roots))
}

/// Adds the OS store (rustls-native-certs: the platform's store, or the files named by
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` when set). Certificates the store holds but webpki cannot
/// use are skipped with a warning; a store that yields nothing at all is an error, since
/// `system_roots = true` was asked for.
fn add_system_roots(roots: &mut RootCertStore) -> Result<(), RootsError> {
    let found = rustls_native_certs::load_native_certs();
    for err in &found.errors {
        tracing::warn!(error = %err, "proxy.system_roots: part of the system store could not be read");
    }
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    if ignored > 0 {
        tracing::warn!(
            ignored,
            "proxy.system_roots: some system certificates are not usable CA certificates"
        );
    }
    if added == 0 {
        return Err(RootsError::NoSystemRoots {
            first_error: found.errors.first().map(|e| e.to_string()),
        });
    }
    tracing::debug!(added, "trusting the system store");
    Ok(())
}

/// A TLS client config verifying servers against `roots` (no ALPN set).
pub(crate) fn client_config(roots: Arc<RootCertStore>) -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS client config verifying servers against `roots` and presenting the client's
/// certificate (`client_cert`, `client_key`).
pub(crate) fn client_config_with_identity(
    roots: Arc<RootCertStore>,
    cert: &SecretSource,
    key: &SecretSource,
) -> Result<rustls::ClientConfig, IdentityError> {
    let chain = load_certs(cert).map_err(|source| IdentityError::Cert {
        cert: cert.to_string(),
        source,
    })?;
    let pem = key.load().map_err(IdentityError::KeyRead)?;
    let key = crate::secret::private_key_from_pem(
        pem.expose_secret().as_bytes(),
        &format!("client_key ({key})"),
    )?;
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(IdentityError::Pair)
}
