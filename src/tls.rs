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

/// The webpki roots plus the certificates in `files` and `extra`.
pub fn root_store(
    files: &[SecretSource],
    extra: &[CertificateDer<'static>],
) -> Result<Arc<RootCertStore>, RootsError> {
    let mut roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
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
