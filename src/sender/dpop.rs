//! DPoP (RFC 9449): the proxy's proof-of-possession key and the proofs it signs.
//!
//! Proofs are signed per request, so signing must be cheap: ring's P-256 (fixed-width `r||s`
//! signatures, as JWS ES256 wants) rather than a pure-Rust ECDSA. The public JWK is rendered
//! once, in the RFC 7638 member order, so it doubles as the thumbprint input.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::Serialize;

use crate::secret::{ExposeSecret, SecretSource};

/// Why a DPoP key could not be loaded or a proof signed.
#[derive(Debug, thiserror::Error)]
pub enum DpopError {
    /// Reading or writing the key file.
    #[error("DPoP key {path}: {detail}")]
    Key {
        /// The file.
        path: String,
        /// What went wrong.
        detail: String,
    },
    /// ring refused to generate or sign.
    #[error("DPoP: {0}")]
    Crypto(String),
}

/// An ES256 key that signs DPoP proofs.
pub struct DpopKey {
    pair: EcdsaKeyPair,
    rng: SystemRandom,
    /// The public key as a JWK, members in RFC 7638 order: `{"crv","kty","x","y"}`.
    jwk: serde_json::Value,
    thumbprint: String,
}

impl std::fmt::Debug for DpopKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DpopKey")
            .field("thumbprint", &self.thumbprint)
            .finish_non_exhaustive()
    }
}

impl DpopKey {
    /// A new key, held in memory only.
    pub fn generate() -> Result<DpopKey, DpopError> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| DpopError::Crypto(e.to_string()))?;
        DpopKey::from_pkcs8(pkcs8.as_ref()).map_err(DpopError::Crypto)
    }

    /// The key in `source` (P-256, any PEM form the key loader reads). A file that does not
    /// exist is created with a new key (mode 0600), so tokens bound to it survive restarts; an
    /// environment variable must be set (nothing can be written into it).
    pub fn load_or_create(source: &SecretSource) -> Result<DpopKey, DpopError> {
        let err = |detail: String| DpopError::Key {
            path: source.to_string(),
            detail,
        };
        let path = match source.path() {
            Some(path) if !path.exists() => path,
            _ => {
                let pem = source.load().map_err(|e| match source {
                    SecretSource::Env(_) => err(format!(
                        "{}; a key in a variable is not created: set it, or name a file",
                        e.reason()
                    )),
                    _ => err(e.reason()),
                })?;
                let der = pkcs8_der(pem.expose_secret()).map_err(err)?;
                return DpopKey::from_pkcs8(&der).map_err(err);
            }
        };
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| DpopError::Crypto(e.to_string()))?;
        let pem = zeroize::Zeroizing::new(format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD
                .encode(pkcs8.as_ref())
                .as_bytes()
                .chunks(64)
                .map(|l| String::from_utf8_lossy(l).into_owned())
                .collect::<Vec<_>>()
                .join("\n")
        ));
        write_private(path, pem.as_bytes()).map_err(|e| err(e.to_string()))?;
        DpopKey::from_pkcs8(pkcs8.as_ref()).map_err(err)
    }

    fn from_pkcs8(der: &[u8]) -> Result<DpopKey, String> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
            .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let jwk = crate::jose::p256_jwk(pair.public_key().as_ref()).map_err(|e| e.to_string())?;
        let thumbprint = crate::jose::thumbprint(&jwk);
        Ok(DpopKey {
            pair,
            rng,
            jwk,
            thumbprint,
        })
    }

    /// The RFC 7638 JWK SHA-256 thumbprint (`cnf.jkt` of tokens bound to this key).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// The public key as a JWK.
    pub fn jwk(&self) -> &serde_json::Value {
        &self.jwk
    }

    /// A fresh proof for `htm` `htu` (normalize it with [`htu`]); with `ath` for resource
    /// requests (see [`ath`]) and the server's `nonce` when one is known.
    pub fn proof(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<String, DpopError> {
        #[derive(Serialize)]
        struct Header<'a> {
            typ: &'static str,
            alg: &'static str,
            jwk: &'a serde_json::Value,
        }
        #[derive(Serialize)]
        struct Claims<'a> {
            jti: String,
            htm: &'a str,
            htu: &'a str,
            iat: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            ath: Option<&'a str>,
            #[serde(skip_serializing_if = "Option::is_none")]
            nonce: Option<&'a str>,
        }
        let header = serde_json::to_vec(&Header {
            typ: "dpop+jwt",
            alg: "ES256",
            jwk: &self.jwk,
        })
        .map_err(|e| DpopError::Crypto(e.to_string()))?;
        let claims = serde_json::to_vec(&Claims {
            jti: crate::jose::new_jti(),
            htm,
            htu,
            iat: crate::jose::unix_now(),
            ath,
            nonce,
        })
        .map_err(|e| DpopError::Crypto(e.to_string()))?;
        let mut jws = String::with_capacity(512);
        URL_SAFE_NO_PAD.encode_string(&header, &mut jws);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(&claims, &mut jws);
        let signature = self
            .pair
            .sign(&self.rng, jws.as_bytes())
            .map_err(|e| DpopError::Crypto(e.to_string()))?;
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
        Ok(jws)
    }
}

/// At most this many origins' nonces are kept; past it the least recently used origin's
/// nonce is dropped (its next request costs one `use_dpop_nonce` challenge).
const MAX_NONCE_ORIGINS: std::num::NonZeroUsize = std::num::NonZeroUsize::new(10_000).unwrap();

/// Nonces by origin, least recently used first out.
type Nonces = lru::LruCache<String, std::sync::Arc<str>>;

/// The latest `DPoP-Nonce` each server sent, by origin, so steady traffic carries the right
/// nonce without a challenge round trip per request.
#[derive(Debug)]
pub struct NonceStore {
    /// Shared values: a proof reads one per request without copying it.
    nonces: std::sync::Mutex<Nonces>,
}

impl Default for NonceStore {
    fn default() -> NonceStore {
        NonceStore::with_capacity(MAX_NONCE_ORIGINS)
    }
}

impl NonceStore {
    fn with_capacity(cap: std::num::NonZeroUsize) -> NonceStore {
        NonceStore {
            nonces: std::sync::Mutex::new(lru::LruCache::new(cap)),
        }
    }

    /// The nonce last seen from `origin` (see [`origin`]).
    pub fn get(&self, origin: &str) -> Option<std::sync::Arc<str>> {
        self.lock().get(origin).cloned()
    }

    /// Remembers a nonce from a response of `origin`; ignores values that cannot be nonces.
    pub fn remember(&self, origin: &str, nonce: &http::HeaderValue) {
        let Ok(nonce) = nonce.to_str() else { return };
        // RFC 9449 §8.1: 1*NQCHAR; bounded so a server cannot make us store megabytes.
        if nonce.is_empty() || nonce.len() > 512 || nonce.contains(['"', '\\']) {
            return;
        }
        let mut map = self.lock();
        // Servers repeat their nonce on every response: nothing to store then.
        if map.get(origin).is_some_and(|known| &**known == nonce) {
            return;
        }
        map.put(origin.to_string(), nonce.into());
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Nonces> {
        crate::sync::lock(&self.nonces)
    }
}

/// `scheme://host[:port]` of a URI, the key nonces are remembered under.
pub fn origin(uri: &http::Uri) -> String {
    let mut full = htu(uri);
    full.truncate(origin_len(&full));
    full
}

/// The length of the origin (`scheme://host[:port]`) at the start of an `htu`.
pub fn origin_len(htu: &str) -> usize {
    let after_scheme = htu.find("://").map_or(0, |i| i + 3);
    htu[after_scheme..]
        .find('/')
        .map_or(htu.len(), |i| after_scheme + i)
}

/// `ath`: base64url SHA-256 of the access token (RFC 9449 §4.2).
pub fn ath(access_token: &str) -> String {
    crate::jose::sha256_b64url(access_token)
}

/// `htu`: the target URI without query and fragment, with scheme and host lowercased and the
/// scheme's default port dropped (RFC 9449 §4.3 with RFC 3986 §6.2.2–6.2.3 normalisation).
pub fn htu(uri: &http::Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("https").to_ascii_lowercase();
    let host = uri.host().unwrap_or("").to_ascii_lowercase();
    let default = if scheme == "https" { 443 } else { 80 };
    let port = uri
        .port_u16()
        .filter(|p| *p != default)
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    let path = match uri.path() {
        "" => "/",
        p => p,
    };
    format!("{scheme}://{host}{port}{path}")
}

fn pkcs8_der(pem: &str) -> Result<Vec<u8>, String> {
    use rustls::pki_types::PrivateKeyDer;
    match crate::secret::private_key_from_pem(pem.as_bytes(), "the file") {
        Ok(PrivateKeyDer::Pkcs8(der)) => Ok(der.secret_pkcs8_der().to_vec()),
        Ok(_) => Err("not a P-256 key".into()),
        Err(e) => Err(e.to_string()),
    }
}

fn write_private(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents)?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Verifier;
    use sha2::{Digest, Sha256};

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn htu_normalisation() {
        let cases = [
            ("https://API.Example/a/b?q=1#f", "https://api.example/a/b"),
            ("https://api.example:443/x", "https://api.example/x"),
            ("https://api.example:8443/x", "https://api.example:8443/x"),
            ("http://api.example:80/", "http://api.example/"),
            ("https://api.example", "https://api.example/"),
        ];
        for (raw, want) in cases {
            assert_eq!(htu(&raw.parse().unwrap()), want, "{raw}");
        }
    }

    #[test]
    fn proofs_verify_with_an_independent_implementation() {
        let key = DpopKey::generate().unwrap();
        let proof = key
            .proof(
                "GET",
                "https://api.example/x",
                Some(&ath("tok")),
                Some("n-1"),
            )
            .unwrap();
        let parts: Vec<&str> = proof.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header = decode(parts[0]);
        assert_eq!(header["typ"], "dpop+jwt");
        assert_eq!(header["alg"], "ES256");
        let claims = decode(parts[1]);
        assert_eq!(claims["htm"], "GET");
        assert_eq!(claims["htu"], "https://api.example/x");
        assert_eq!(claims["ath"], ath("tok"));
        assert_eq!(claims["nonce"], "n-1");
        // Verify with p256 from the JWK alone.
        let jwk = &header["jwk"];
        let mut point = vec![4u8];
        point.extend(URL_SAFE_NO_PAD.decode(jwk["x"].as_str().unwrap()).unwrap());
        point.extend(URL_SAFE_NO_PAD.decode(jwk["y"].as_str().unwrap()).unwrap());
        let verifying = p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).unwrap();
        let sig =
            p256::ecdsa::Signature::from_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap()).unwrap();
        let signed = format!("{}.{}", parts[0], parts[1]);
        verifying.verify(signed.as_bytes(), &sig).unwrap();
        // Two proofs never share a jti.
        let again = key
            .proof("GET", "https://api.example/x", None, None)
            .unwrap();
        assert_ne!(
            decode(again.split('.').nth(1).unwrap())["jti"],
            claims["jti"]
        );
    }

    #[test]
    fn origins() {
        let uri: http::Uri = "https://API.example:443/a/b?q".parse().unwrap();
        assert_eq!(origin(&uri), "https://api.example");
        let store = NonceStore::default();
        store.remember("https://api.example", &"n1".parse().unwrap());
        assert_eq!(store.get("https://api.example").as_deref(), Some("n1"));
        store.remember("https://api.example", &"bad\"nonce".parse().unwrap());
        assert_eq!(store.get("https://api.example").as_deref(), Some("n1"));
    }

    #[test]
    fn a_full_nonce_store_drops_the_least_recently_used_origin_only() {
        let store = NonceStore::with_capacity(std::num::NonZeroUsize::new(2).unwrap());
        let nonce = |n: &str| http::HeaderValue::from_str(n).unwrap();
        store.remember("https://a.example", &nonce("na"));
        store.remember("https://b.example", &nonce("nb"));
        assert_eq!(store.get("https://a.example").as_deref(), Some("na"));
        store.remember("https://c.example", &nonce("nc"));
        assert_eq!(
            store.get("https://a.example").as_deref(),
            Some("na"),
            "used, kept"
        );
        assert_eq!(
            store.get("https://b.example"),
            None,
            "least recently used, dropped"
        );
        assert_eq!(store.get("https://c.example").as_deref(), Some("nc"));
    }

    #[test]
    fn thumbprint_follows_rfc7638() {
        let key = DpopKey::generate().unwrap();
        let jwk = key.jwk();
        let canonical = format!(
            r#"{{"crv":"P-256","kty":"EC","x":"{}","y":"{}"}}"#,
            jwk["x"].as_str().unwrap(),
            jwk["y"].as_str().unwrap()
        );
        assert_eq!(
            key.thumbprint(),
            URL_SAFE_NO_PAD.encode(Sha256::digest(canonical.as_bytes()))
        );
    }

    #[test]
    fn a_dpop_key_in_a_variable_must_be_set_and_is_never_created() {
        let [(_, pem), ..] = crate::secret::test_keys::ec_forms();
        let var = "OAUTH_EGRESS_TEST_DPOP_KEY_ENV";
        std::env::set_var(var, &pem);
        let from_env = DpopKey::load_or_create(&SecretSource::Env(var.into())).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpop.key");
        std::fs::write(&path, &pem).unwrap();
        let from_file = DpopKey::load_or_create(&SecretSource::File(path)).unwrap();
        assert_eq!(from_env.thumbprint(), from_file.thumbprint());
        let unset = "OAUTH_EGRESS_TEST_DPOP_KEY_ENV_UNSET";
        let err = DpopKey::load_or_create(&SecretSource::Env(unset.into()))
            .unwrap_err()
            .to_string();
        assert!(err.contains(unset) && err.contains("not created"), "{err}");
    }

    #[test]
    fn dpop_keys_in_every_ec_pem_form_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpop.key");
        let mut thumbprints = Vec::new();
        for (form, pem) in crate::secret::test_keys::ec_forms() {
            std::fs::write(&path, pem).unwrap();
            let key = DpopKey::load_or_create(&SecretSource::File(path.clone()))
                .unwrap_or_else(|e| panic!("{form}: {e}"));
            thumbprints.push(key.thumbprint().to_string());
        }
        thumbprints.dedup();
        assert_eq!(thumbprints.len(), 1, "one key in three forms");
        std::fs::write(&path, crate::secret::test_keys::certificate()).unwrap();
        let err = DpopKey::load_or_create(&SecretSource::File(path.clone()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&path.display().to_string()) && err.contains("holds a certificate"),
            "{err}"
        );
    }

    #[test]
    fn a_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dpop.key");
        let first = DpopKey::load_or_create(&SecretSource::File(path.clone())).unwrap();
        let second = DpopKey::load_or_create(&SecretSource::File(path.clone())).unwrap();
        assert_eq!(first.thumbprint(), second.thumbprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
    }
}
