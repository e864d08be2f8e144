//! Secrets: where they come from (`{ env = "NAME" }`, `{ file = "path" }`, `{ exec = [...] }`
//! in `exec.rs`) and how they are held (zeroized on drop, never printable).
//!
//! A secret is resolved every time it is used, so rotating a client secret on disk or in the
//! environment needs no restart (the token endpoint is called rarely; reading a small file
//! then costs nothing).

use std::path::PathBuf;
use std::sync::Arc;

pub mod exec;

pub use secrecy::{ExposeSecret, SecretString};

/// Where a secret lives. The source is printable (an env var name, a path); the value is not.
#[derive(Clone)]
pub enum SecretSource {
    /// An environment variable of the proxy process.
    Env(String),
    /// A file, re-read on every use; one trailing newline is ignored.
    File(PathBuf),
    /// A command's output (`exec.rs`), cached `cache_secs`.
    Exec(Arc<exec::Exec>),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Exec(exec) => write!(f, "exec:{}", exec.program()),
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Exec(exec) => write!(f, "command {}", exec.program()),
        }
    }
}

/// Why a secret could not be read. Names the source, never the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The environment variable is not set (or not unicode).
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    /// The file could not be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The secret is empty.
    #[error("{0} is empty")]
    Empty(String),
    /// A secret command failed (never its output).
    #[error("secret command {program}: {reason}")]
    Exec {
        /// `argv[0]`.
        program: String,
        /// Why.
        reason: String,
    },
}

impl SecretError {
    /// Why, without naming the source (for messages that name it already).
    pub fn reason(&self) -> String {
        match self {
            Self::EnvMissing(_) => "not set".into(),
            Self::File { source, .. } => source.to_string(),
            Self::Empty(_) => "empty".into(),
            Self::Exec { reason, .. } => reason.clone(),
        }
    }
}

impl SecretSource {
    /// The path, when the source is a file.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::File(path) => Some(path),
            Self::Env(_) | Self::Exec(_) => None,
        }
    }

    /// Whether this names a file that does not exist (a CA or DPoP key is generated there).
    pub fn is_absent_file(&self) -> bool {
        self.path().is_some_and(|p| !p.exists())
    }

    /// Reads the current value.
    pub fn load(&self) -> Result<SecretString, SecretError> {
        let value = match self {
            Self::Env(name) => {
                std::env::var(name).map_err(|_| SecretError::EnvMissing(name.clone()))?
            }
            Self::File(path) => {
                let mut text =
                    std::fs::read_to_string(path).map_err(|source| SecretError::File {
                        path: path.clone(),
                        source,
                    })?;
                let trimmed = text.trim_end_matches(['\r', '\n']).len();
                text.truncate(trimmed);
                text
            }
            Self::Exec(exec) => return exec.load(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(SecretString::from(value))
    }
}

/// Why a private key could not be read from PEM. Names where the key came from, never the key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The PEM holds certificates but no private key (a certificate given as the key).
    #[error("{0} holds a certificate, not a private key")]
    Certificate(String),
    /// No private key section at all.
    #[error(
        "{0}: no PEM private key found (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1 \
         `RSA PRIVATE KEY`; encrypted keys are not supported)"
    )]
    Missing(String),
    /// The PEM framing or base64 is broken.
    #[error("{0}: unreadable PEM ({1})")]
    Pem(String, &'static str),
    /// A key was found but is not one this use can take.
    #[error("{0}: {1}")]
    Unusable(String, String),
}

/// Reads the first private key in `pem`, the one key loader behind `private_key`,
/// `client_key`, `ca_key` and `dpop_key`. Other sections (certificates, `EC PARAMETERS` as
/// written by `openssl ecparam -genkey`) are skipped. P-256 SEC1 and RSA PKCS#1 keys are
/// returned re-encoded as PKCS#8, the form ring and rcgen take; other SEC1 curves are
/// returned as SEC1 (rustls takes them). `from` names the key's source in errors.
pub fn private_key_from_pem(
    pem: &[u8],
    from: &str,
) -> Result<rustls::pki_types::PrivateKeyDer<'static>, KeyError> {
    use rustls::pki_types::pem::{Error, PemObject, SectionKind};
    use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut saw_certificate = false;
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(pem) {
        let (kind, der) = section.map_err(|e| {
            KeyError::Pem(
                from.to_string(),
                match e {
                    Error::MissingSectionEnd { .. } => "a BEGIN line without its END line",
                    Error::IllegalSectionStart { .. } => "a malformed BEGIN line",
                    Error::Base64Decode(_) => "invalid base64",
                    _ => "malformed",
                },
            )
        })?;
        match kind {
            SectionKind::PrivateKey => return Ok(PrivateKeyDer::Pkcs8(der.into())),
            SectionKind::RsaPrivateKey => {
                let der = zeroize::Zeroizing::new(der);
                return Ok(PrivateKeyDer::Pkcs8(rsa_pkcs1_to_pkcs8(&der).into()));
            }
            SectionKind::EcPrivateKey => {
                use p256::pkcs8::EncodePrivateKey;
                return Ok(match p256::SecretKey::from_sec1_der(&der) {
                    Ok(key) => {
                        let pkcs8 = key.to_pkcs8_der().map_err(|e| {
                            KeyError::Unusable(from.to_string(), format!("re-encoding: {e}"))
                        })?;
                        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec()))
                    }
                    Err(_) => PrivateKeyDer::Sec1(der.into()),
                });
            }
            SectionKind::Certificate => saw_certificate = true,
            _ => {}
        }
    }
    Err(if saw_certificate {
        KeyError::Certificate(from.to_string())
    } else {
        KeyError::Missing(from.to_string())
    })
}

/// Wraps a PKCS#1 `RSAPrivateKey` in a PKCS#8 `PrivateKeyInfo` (RFC 5208): version 0,
/// `rsaEncryption` with NULL parameters, the PKCS#1 DER as the octet string.
fn rsa_pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8], out: &mut Vec<u8>) {
        out.push(tag);
        let len = body.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes: Vec<u8> = len
                .to_be_bytes()
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect();
            out.push(0x80 | bytes.len() as u8);
            out.extend_from_slice(&bytes);
        }
        out.extend_from_slice(body);
    }
    // INTEGER 0, then SEQUENCE { OID 1.2.840.113549.1.1.1, NULL }.
    let mut body = vec![0x02, 0x01, 0x00];
    body.extend_from_slice(&[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
    ]);
    tlv(0x04, pkcs1, &mut body);
    let mut out = Vec::with_capacity(body.len() + 4);
    tlv(0x30, &body, &mut out);
    out
}

/// Private keys in every PEM form the loader takes, generated at test time.
#[cfg(test)]
pub(crate) mod test_keys {
    use p256::pkcs8::DecodePrivateKey;

    /// What `openssl ecparam -name prime256v1 -genkey` writes before the key.
    const EC_PARAMETERS: &str =
        "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n";

    /// A P-256 key as (PKCS#8, SEC1, SEC1 after an `EC PARAMETERS` block).
    pub fn ec_forms() -> [(&'static str, String); 3] {
        let pkcs8 = rcgen::KeyPair::generate().unwrap().serialize_pem();
        let sec1 = p256::SecretKey::from_pkcs8_pem(&pkcs8)
            .unwrap()
            .to_sec1_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
            .to_string();
        let with_params = format!("{EC_PARAMETERS}{sec1}");
        [
            ("pkcs8", pkcs8),
            ("sec1", sec1),
            ("sec1+params", with_params),
        ]
    }

    /// A 2048-bit RSA key as (PKCS#8, PKCS#1).
    pub fn rsa_forms() -> [(&'static str, String); 2] {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        use rsa::pkcs8::EncodePrivateKey;
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
        let lf = rsa::pkcs8::LineEnding::LF;
        [
            ("rsa-pkcs8", key.to_pkcs8_pem(lf).unwrap().to_string()),
            ("rsa-pkcs1", key.to_pkcs1_pem(lf).unwrap().to_string()),
        ]
    }

    /// The SPKI public key PEM of a P-256 key in any of the forms above.
    pub fn ec_public_pem(pem: &str) -> String {
        use p256::pkcs8::EncodePublicKey;
        let der = super::private_key_from_pem(pem.as_bytes(), "k").unwrap();
        let rustls::pki_types::PrivateKeyDer::Pkcs8(der) = der else {
            panic!("not PKCS#8")
        };
        p256::SecretKey::from_pkcs8_der(der.secret_pkcs8_der())
            .unwrap()
            .public_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap()
    }

    /// A self-signed certificate, PEM.
    pub fn certificate() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        rcgen::CertificateParams::new(vec!["c".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::PrivateKeyDer;

    #[test]
    fn every_private_key_form_loads_as_pkcs8() {
        let ec = test_keys::ec_forms();
        let reference = match private_key_from_pem(ec[0].1.as_bytes(), "k").unwrap() {
            PrivateKeyDer::Pkcs8(der) => der.secret_pkcs8_der().to_vec(),
            other => panic!("{other:?}"),
        };
        for (form, pem) in ec.iter().chain(test_keys::rsa_forms().iter()) {
            let key = private_key_from_pem(pem.as_bytes(), "k");
            let Ok(PrivateKeyDer::Pkcs8(der)) = key else {
                panic!("{form}: {key:?}");
            };
            if form.starts_with("sec1") {
                // The same P-256 key, re-encoded.
                let ring_key = |d: &[u8]| {
                    use ring::signature::KeyPair;
                    ring::signature::EcdsaKeyPair::from_pkcs8(
                        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                        d,
                        &ring::rand::SystemRandom::new(),
                    )
                    .unwrap()
                    .public_key()
                    .as_ref()
                    .to_vec()
                };
                assert_eq!(
                    ring_key(der.secret_pkcs8_der()),
                    ring_key(&reference),
                    "{form}"
                );
            }
            if form.starts_with("rsa") {
                assert!(
                    ring::signature::RsaKeyPair::from_pkcs8(der.secret_pkcs8_der()).is_ok(),
                    "{form}"
                );
            }
        }
    }

    #[test]
    fn a_certificate_or_garbage_is_refused_naming_the_source() {
        let from = "clients.billing.private_key (file /etc/keys/billing.pem)";
        let err = private_key_from_pem(test_keys::certificate().as_bytes(), from)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(from) && err.contains("holds a certificate, not a private key"),
            "{err}"
        );
        for garbage in ["hunter2-not-a-key", ""] {
            let err = private_key_from_pem(garbage.as_bytes(), from)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(from) && err.contains("no PEM private key"),
                "{err}"
            );
            assert!(garbage.is_empty() || !err.contains(garbage), "{err}");
        }
        // A broken key body: the error names the source and never echoes the body.
        let broken = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0!!!\n-----END PRIVATE KEY-----\n";
        let err = private_key_from_pem(broken.as_bytes(), from)
            .unwrap_err()
            .to_string();
        assert!(err.contains(from) && !err.contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn openssl_ecparam_genkey_output_loads() {
        // The real tool's output, when it is installed (the generated forms above cover it
        // otherwise).
        let Ok(out) = std::process::Command::new("openssl")
            .args(["ecparam", "-name", "prime256v1", "-genkey"])
            .output()
        else {
            return;
        };
        let pem = String::from_utf8(out.stdout).unwrap();
        assert!(pem.contains("EC PARAMETERS"), "{pem:.40}");
        assert!(matches!(
            private_key_from_pem(pem.as_bytes(), "k"),
            Ok(PrivateKeyDer::Pkcs8(_))
        ));
    }

    #[test]
    fn file_secret_is_reread_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "first\n").unwrap();
        let source = SecretSource::File(path.clone());
        assert_eq!(source.load().unwrap().expose_secret(), "first");
        std::fs::write(&path, "second").unwrap();
        assert_eq!(source.load().unwrap().expose_secret(), "second");
    }

    #[test]
    fn errors_name_the_source_not_the_value() {
        let source = SecretSource::Env("OAUTH_EGRESS_TEST_SURELY_UNSET".into());
        let err = source.load().unwrap_err().to_string();
        assert!(err.contains("OAUTH_EGRESS_TEST_SURELY_UNSET"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "hunter2").unwrap();
        let file = SecretSource::File(path);
        let loaded = file.load().unwrap();
        assert!(!format!("{file:?} {file} {loaded:?}").contains("hunter2"));
    }
}
