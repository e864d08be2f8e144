//! A throwaway certificate authority for the demo and test servers.
//!
//! It exists so the servers can speak real TLS on loopback without touching any
//! system trust store: clients trust exactly this CA and nothing else. It is never
//! the proxy's own CA.

use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use time::OffsetDateTime;

use crate::BoxError;

/// How long generated certificates stay valid (long enough for any demo session).
const VALIDITY: Duration = Duration::from_secs(30 * 24 * 60 * 60);
/// Back-dating of `notBefore`, so small clock differences never matter.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// A throwaway certificate authority for test and demo servers (never the proxy's own CA).
///
/// Each instance has a fresh P-256 key that lives only in memory.
pub struct TestPki {
    issuer: Issuer<'static, KeyPair>,
    ca_pem: String,
    ca_der: CertificateDer<'static>,
}

impl std::fmt::Debug for TestPki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestPki").finish_non_exhaustive()
    }
}

impl TestPki {
    /// Creates a new self-signed CA whose subject common name is `common_name`.
    pub fn new(common_name: &str) -> Result<TestPki, rcgen::Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(TestPki {
            ca_pem: cert.pem(),
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate in PEM form (to hand to clients, e.g. the proxy's upstream trust).
    pub fn ca_cert_pem(&self) -> &str {
        &self.ca_pem
    }

    /// The CA certificate in DER form (to add to a rustls `RootCertStore`).
    pub fn ca_cert_der(&self) -> CertificateDer<'static> {
        self.ca_der.clone()
    }

    /// Issues a server leaf for `names` with its own fresh P-256 key.
    ///
    /// Names that parse as IP literals become IP SANs, everything else DNS SANs.
    /// The returned chain holds just the leaf; clients are expected to trust the CA.
    pub fn leaf(
        &self,
        names: &[&str],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Issues a client leaf (extended key usage clientAuth) with DNS SANs
    /// `dns_names` and its own fresh P-256 key, e.g. for `tls_client_auth`. The
    /// subject CN is the first name. The chain holds just the leaf.
    pub fn client_leaf(
        &self,
        dns_names: &[&str],
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
        self.issue(dns_names, ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), rcgen::Error> {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((vec![cert.der().clone()], key_der))
    }

    /// Server TLS config presenting a fresh leaf for `names`; ALPN offers h2 and http/1.1.
    pub fn server_config(&self, names: &[&str]) -> Result<Arc<rustls::ServerConfig>, BoxError> {
        self.server_config_with_alpn(names, vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    /// Like [`TestPki::server_config`] but ALPN offers http/1.1 only (for HTTP/1-only upstreams).
    pub fn server_config_http1(
        &self,
        names: &[&str],
    ) -> Result<Arc<rustls::ServerConfig>, BoxError> {
        self.server_config_with_alpn(names, vec![b"http/1.1".to_vec()])
    }

    /// Like [`TestPki::server_config`], but also REQUESTS (without requiring) a
    /// client certificate issued by `client_ca` (for certificate-bound tokens at
    /// [`crate::EchoApi`]). Clients without a certificate still connect; one that
    /// does not chain to `client_ca` fails the handshake.
    pub fn server_config_client_auth(
        &self,
        names: &[&str],
        client_ca: CertificateDer<'static>,
    ) -> Result<Arc<rustls::ServerConfig>, BoxError> {
        let (chain, key) = self.leaf(names)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(client_ca)?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .allow_unauthenticated()
                .build()?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    fn server_config_with_alpn(
        &self,
        names: &[&str],
        alpn: Vec<Vec<u8>>,
    ) -> Result<Arc<rustls::ServerConfig>, BoxError> {
        let (chain, key) = self.leaf(names)?;
        let mut config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        config.alpn_protocols = alpn;
        Ok(Arc::new(config))
    }

    /// A rustls client config that trusts only this CA (for reqwest's
    /// `use_preconfigured_tls` in tests). It sets no ALPN, so clients speak
    /// HTTP/1.1 unless the caller adds `h2` to `alpn_protocols`.
    pub fn client_config(&self) -> rustls::ClientConfig {
        let mut roots = rustls::RootCertStore::empty();
        // Our own freshly generated certificate always parses; nothing to report.
        let (_added, _ignored) = roots.add_parsable_certificates([self.ca_der.clone()]);
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth()
    }

    /// Like [`TestPki::client_config`], presenting `chain`/`key` as the client
    /// certificate (for mTLS endpoints).
    pub fn client_config_with_cert(
        &self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<rustls::ClientConfig, BoxError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca_der.clone())?;
        Ok(rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?)
    }
}

/// Sets a validity window from slightly in the past to [`VALIDITY`] ahead.
fn set_validity(params: &mut CertificateParams) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + VALIDITY;
}
