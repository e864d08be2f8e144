//! The interception CA: loaded from `ca_cert`/`ca_key` or generated on first start, and the
//! leaf certificates it mints for intercepted hosts.
//!
//! Leaves follow what clients check: their own P-256 key (never the CA's), a SAN for the host
//! (an IP SAN for IP literals), a random serial, `not_before` an hour in the past against
//! clock skew, a short validity, renewed at half-life, cached per host.

use std::io::Write;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lru::LruCache;
use rand::RngCore;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;

use crate::secret::{ExposeSecret, SecretSource};

/// How long a minted leaf is valid.
const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// At most this many hosts' leaves are cached (wildcard routes can name many hosts); past
/// it the least recently used host's leaf is dropped (and minted again if it comes back).
const MAX_CACHED_LEAVES: NonZeroUsize = NonZeroUsize::new(10_000).unwrap();

/// Why the CA could not be loaded, created or used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// Reading or writing a CA file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Parsing the PEM files or signing.
    #[error("{context}: {source}")]
    Cert {
        /// What was being done.
        context: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A CA file or variable could not be read.
    #[error("{source_}: {detail}")]
    Source {
        /// The file or variable.
        source_: String,
        /// Why.
        detail: String,
    },
    /// `proxy.ca_name_constraints` is set, but the existing CA certificate carries other
    /// (or no) name constraints: its key could sign for any host.
    #[error("proxy.ca_name_constraints is [{wanted}] but the CA certificate {cert} carries {carried}; name constraints are fixed when a CA is generated: move {cert} and its key away so a constrained CA is generated on the next start (clients must then trust the new certificate), or make ca_name_constraints match the certificate")]
    Constraints {
        /// The certificate's source.
        cert: String,
        /// The configured subtrees.
        wanted: String,
        /// What the certificate carries, in words.
        carried: String,
    },
    /// The CA key is not a usable private key.
    #[error(transparent)]
    Key(#[from] crate::secret::KeyError),
    /// Building the TLS config.
    #[error("TLS config for {host}: {source}")]
    Tls {
        /// The host.
        host: String,
        /// rustls' error.
        source: rustls::Error,
    },
}

struct Leaf {
    config: Arc<ServerConfig>,
    renew_after: Instant,
}

/// The CA as an operator sees it (never the key).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaInfo {
    /// The certificate's subject (RFC 4514).
    pub subject: Option<String>,
    /// SHA-256 of the DER certificate, colon-separated hex (as `openssl x509 -fingerprint
    /// -sha256` prints it).
    pub sha256_fingerprint: String,
    /// `notAfter`, unix seconds.
    pub not_after_unix: Option<i64>,
    /// Leaf certificates minted and cached.
    pub leaves_cached: usize,
}

/// The proxy's CA and its cache of minted leaves.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    leaves: Mutex<LruCache<String, Leaf>>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("key", &"...")
            .finish()
    }
}

impl CertificateAuthority {
    /// Loads the CA from its two PEM sources (files or environment variables), or, when both
    /// are files and both are absent, generates one and writes them (the key with mode 0600).
    /// Returns whether it was created.
    pub fn load_or_create(
        cert: &SecretSource,
        key: &SecretSource,
    ) -> Result<(CertificateAuthority, bool), CaError> {
        CertificateAuthority::load_or_create_constrained(cert, key, &[])
    }

    /// [`Self::load_or_create`] under `proxy.ca_name_constraints` (`subtrees`, normalized):
    /// a generated CA carries them; an existing one must carry exactly them.
    pub fn load_or_create_constrained(
        cert: &SecretSource,
        key: &SecretSource,
        subtrees: &[String],
    ) -> Result<(CertificateAuthority, bool), CaError> {
        let io = |path: &Path| {
            let path = path.display().to_string();
            move |source| CaError::Io { path, source }
        };
        let (Some(cert_path), Some(key_path), true, true) = (
            cert.path(),
            key.path(),
            cert.is_absent_file(),
            key.is_absent_file(),
        ) else {
            let files = cert.path().is_some() && key.path().is_some();
            let read = |s: &SecretSource| {
                s.load().map_err(|e| CaError::Source {
                    source_: s.to_string(),
                    detail: if files {
                        e.reason()
                    } else {
                        format!(
                            "{}; a CA is generated only into files (ca_cert and ca_key both \
                             absent), never into environment variables",
                            e.reason()
                        )
                    },
                })
            };
            // One final newline, however the source ends, so exported PEM concatenates.
            let cert_pem = format!("{}\n", read(cert)?.expose_secret().trim_end());
            let key_pem = read(key)?;
            let key_pair = parse_key(key_pem.expose_secret(), &format!("CA key ({key})"))?;
            let issuer =
                Issuer::from_ca_cert_pem(&cert_pem, key_pair).map_err(|source| CaError::Cert {
                    context: format!("CA certificate ({cert})"),
                    source,
                })?;
            check_constraints(&cert_pem, &cert.to_string(), subtrees)?;
            return Ok((CertificateAuthority::new(issuer, cert_pem), false));
        };
        let (cert, key) = (cert_path, key_path);
        let ca = CertificateAuthority::generate_constrained(subtrees)?;
        for dir in [cert.parent(), key.parent()].into_iter().flatten() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir).map_err(io(dir))?;
            }
        }
        let key_pem = zeroize::Zeroizing::new(ca.issuer.key().serialize_pem());
        write_file(key, key_pem.as_bytes(), 0o600).map_err(io(key))?;
        write_file(cert, ca.cert_pem.as_bytes(), 0o644).map_err(io(cert))?;
        Ok((ca, true))
    }

    /// A new CA held only in memory.
    pub fn generate() -> Result<CertificateAuthority, CaError> {
        CertificateAuthority::generate_constrained(&[])
    }

    /// A new CA held only in memory that may sign only for `subtrees` (none: any host).
    pub fn generate_constrained(subtrees: &[String]) -> Result<CertificateAuthority, CaError> {
        let err = |source| CaError::Cert {
            context: "generating the CA".into(),
            source,
        };
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "oauth-egress interception CA");
        dn.push(DnType::OrganizationName, "oauth-egress");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        params.serial_number = Some(random_serial());
        if !subtrees.is_empty() {
            params.name_constraints = Some(crate::name_constraints::extension(subtrees));
        }
        let cert = params.self_signed(&key).map_err(err)?;
        let cert_pem = cert.pem();
        Ok(CertificateAuthority::new(
            Issuer::new(params, key),
            cert_pem,
        ))
    }

    fn new(issuer: Issuer<'static, KeyPair>, cert_pem: String) -> CertificateAuthority {
        CertificateAuthority {
            issuer,
            cert_pem,
            leaves: Mutex::new(LruCache::new(MAX_CACHED_LEAVES)),
        }
    }

    /// The CA certificate, PEM, for clients to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER (for `ca export --format der|p12`).
    pub fn cert_der(&self) -> Option<Vec<u8>> {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .ok()
            .map(|der| der.to_vec())
    }

    /// What the status page shows of the CA: subject, SHA-256 fingerprint, not-after and
    /// how many leaves are cached. `None` fields when the certificate cannot be parsed (it
    /// was, at load; this never fails in practice).
    pub fn info(&self) -> CaInfo {
        use sha2::Digest;
        let der = self.cert_der().unwrap_or_default();
        let parsed = x509_parser::parse_x509_certificate(&der).ok();
        let fingerprint = sha2::Sha256::digest(&der)
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        CaInfo {
            subject: parsed.as_ref().map(|(_, c)| c.subject().to_string()),
            sha256_fingerprint: fingerprint,
            not_after_unix: parsed
                .as_ref()
                .map(|(_, c)| c.validity().not_after.timestamp()),
            leaves_cached: crate::sync::lock(&self.leaves).len(),
        }
    }

    /// The TLS server config presenting a leaf for `host` (normalized), minted on first use
    /// and renewed at half its validity.
    pub fn server_config(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let now = Instant::now();
        {
            let mut leaves = crate::sync::lock(&self.leaves);
            if let Some(leaf) = leaves.get(host) {
                if now < leaf.renew_after {
                    return Ok(leaf.config.clone());
                }
            }
        }
        let config = self.mint(host)?;
        crate::sync::lock(&self.leaves).put(
            host.to_string(),
            Leaf {
                config: config.clone(),
                renew_after: now + LEAF_VALIDITY / 2,
            },
        );
        Ok(config)
    }

    /// Mints a leaf certificate for `host`: (chain, key).
    pub fn mint_leaf(
        &self,
        host: &str,
    ) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), CaError> {
        let err = |source| CaError::Cert {
            context: format!("minting a certificate for {host}"),
            source,
        };
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.to_string().try_into().map_err(err)?),
        }];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::seconds(LEAF_VALIDITY.as_secs() as i64);
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(err)?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((cert.der().clone(), key_der))
    }

    fn mint(&self, host: &str) -> Result<Arc<ServerConfig>, CaError> {
        let (cert, key) = self.mint_leaf(host)?;
        let mut config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key)
            .map_err(|source| CaError::Tls {
                host: host.to_string(),
                source,
            })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// An existing CA under `proxy.ca_name_constraints`: it carries exactly `subtrees`.
fn check_constraints(cert_pem: &str, cert: &str, subtrees: &[String]) -> Result<(), CaError> {
    use rustls::pki_types::pem::PemObject;
    if subtrees.is_empty() {
        return Ok(());
    }
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).ok();
    let carried = der.and_then(|der| crate::name_constraints::carried(&der));
    let mut wanted = subtrees.to_vec();
    wanted.sort();
    if carried.as_ref() == Some(&wanted) {
        return Ok(());
    }
    Err(CaError::Constraints {
        cert: cert.to_string(),
        wanted: wanted.join(", "),
        carried: match carried {
            None => "nothing readable".into(),
            Some(c) if c.is_empty() => "no name constraints".into(),
            Some(c) => format!("[{}]", c.join(", ")),
        },
    })
}

/// The CA key, in any form [`crate::secret::private_key_from_pem`] reads (SEC1 with or
/// without `EC PARAMETERS` is cert-manager's and openssl's default).
fn parse_key(pem: &str, from: &str) -> Result<KeyPair, CaError> {
    let der = crate::secret::private_key_from_pem(pem.as_bytes(), from)?;
    KeyPair::try_from(&der).map_err(|source| CaError::Cert {
        context: format!("{from}: not a key rcgen can sign with (P-256, P-384, Ed25519 or RSA)"),
        source,
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // and no leading zero to strip
    SerialNumber::from_slice(&bytes)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

/// A warning when the CA key is a file that group or others may read: whoever reads it can
/// mint certificates every client of this proxy trusts. (A generated key is written 0600.)
pub fn key_permission_warning(key: &SecretSource) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = key.path()?;
    let mode = std::fs::metadata(path).ok()?.permissions().mode();
    (mode & 0o077 != 0).then(|| {
        format!(
            "proxy.ca_key {} is readable by group or others (mode {:o}): whoever reads it can \
             impersonate any host to this proxy's clients; chmod 600 it",
            path.display(),
            mode & 0o777
        )
    })
}

#[cfg(test)]
mod tests;
