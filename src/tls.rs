//! Trust roots and TLS client configs shared by upstream connections and token requests.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;

use crate::secret::{ExposeSecret, SecretSource};

/// A trust anchor file (or variable) that could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {detail}")]
pub struct RootsError {
    /// The file or variable.
    pub path: String,
    /// What went wrong.
    pub detail: String,
}

/// Reads every certificate in a PEM file or variable.
pub fn load_certs(source: &SecretSource) -> Result<Vec<CertificateDer<'static>>, RootsError> {
    let err = |detail: String| RootsError {
        path: source.to_string(),
        detail,
    };
    let pem = source.load().map_err(|e| err(e.reason()))?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.expose_secret().as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| err(e.to_string()))?;
    if certs.is_empty() {
        return Err(err("no PEM certificate found".into()));
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
            roots.add(cert).map_err(|e| RootsError {
                path: file.to_string(),
                detail: format!("not a usable CA certificate: {e}"),
            })?;
        }
    }
    for cert in extra {
        roots.add(cert.clone()).map_err(|e| RootsError {
            path: "(in memory)".into(),
            detail: e.to_string(),
        })?;
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
        return Err(RootsError {
            path: "(system store)".into(),
            detail: format!(
                "proxy.system_roots = true, but no usable certificate was found{}",
                found
                    .errors
                    .first()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ),
        });
    }
    tracing::debug!(added, "trusting the system store");
    Ok(())
}

/// A TLS client config verifying servers against `roots` (no ALPN set).
pub fn client_config(roots: Arc<RootCertStore>) -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth()
}

/// A TLS client config verifying servers against `roots` and presenting the client's
/// certificate (`client_cert`, `client_key`).
pub fn client_config_with_identity(
    roots: Arc<RootCertStore>,
    cert: &SecretSource,
    key: &SecretSource,
) -> Result<rustls::ClientConfig, String> {
    let chain = load_certs(cert).map_err(|e| format!("client_cert ({cert}): {e}"))?;
    let pem = key.load().map_err(|e| format!("client_key: {e}"))?;
    let key = crate::secret::private_key_from_pem(
        pem.expose_secret().as_bytes(),
        &format!("client_key ({key})"),
    )
    .map_err(|e| e.to_string())?;
    rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("client_cert/client_key: {e}"))
}
