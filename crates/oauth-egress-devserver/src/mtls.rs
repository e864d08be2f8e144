//! The mTLS endpoint alias of the development authorization server (RFC 8705
//! §5): a TLS listener that requires a client certificate chaining to a given CA,
//! and the `tls_client_auth_san_dns` check of the presented certificate.

use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};

use crate::BoxError;

/// A server config that presents `chain`/`key` and REQUIRES a client certificate
/// issued by `client_ca` (with the clientAuth extended key usage); ALPN offers h2
/// and http/1.1.
pub(super) fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: CertificateDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, BoxError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(client_ca)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
            .build()?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Whether `cert` carries `dns` as a DNS subject alternative name (matched the way
/// a server name is, so wildcards in the certificate apply; the subject CN is ignored).
pub(super) fn cert_has_dns_san(cert: &CertificateDer<'_>, dns: &str) -> bool {
    let Ok(name) = ServerName::try_from(dns) else {
        return false;
    };
    if !matches!(name, ServerName::DnsName(_)) {
        return false;
    }
    ParsedCertificate::try_from(cert)
        .is_ok_and(|parsed| rustls::client::verify_server_name(&parsed, &name).is_ok())
}
