//! Sealing what goes into the shared store: AES-256-GCM (ring), a fresh random nonce per
//! value, the Redis key name as associated data (a value copied under another name does not
//! open), and key rotation: values are sealed with `encryption_key` and opened with it or any
//! of `previous_encryption_keys`.
//!
//! A sealed value is `version (1) | key id (4) | nonce (12) | ciphertext | tag (16)`. The key
//! id is the first bytes of the key's SHA-256: it says which key to try first, and reveals
//! nothing of the key.

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::ExposeSecret;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const VERSION: u8 = 1;
const ID_LEN: usize = 4;
const HEADER: usize = 1 + ID_LEN + NONCE_LEN;

/// Why an encryption key cannot be used. Never includes the key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not standard base64.
    #[error("is not standard base64 (make one with `oauth-egress cache keygen`)")]
    NotBase64,
    /// Not 32 bytes once decoded.
    #[error("decodes to {0} bytes; it must be 32 random bytes (make one with `oauth-egress cache keygen`)")]
    Length(usize),
}

/// A value that no configured key opens (a wrong or rotated-out key, or tampering).
#[derive(Debug, thiserror::Error)]
#[error("a shared cache value does not open with cache.encryption_key or cache.previous_encryption_keys")]
pub struct Unopenable;

struct Key {
    id: [u8; ID_LEN],
    aead: LessSafeKey,
}

/// The keys that seal (the first) and open (all) shared values.
pub struct Sealer {
    keys: Vec<Key>,
    rng: SystemRandom,
}

/// A new key as `cache keygen` prints it: 32 random bytes, standard base64.
pub fn generate_key() -> Result<String, ring::error::Unspecified> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    SystemRandom::new().fill(bytes.as_mut())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes.as_ref()))
}

fn parse_key(text: &str) -> Result<Key, KeyError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?,
    );
    if bytes.len() != 32 {
        return Err(KeyError::Length(bytes.len()));
    }
    let digest = Sha256::digest(bytes.as_slice());
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&digest[..ID_LEN]);
    let unbound = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| KeyError::Length(32))?;
    Ok(Key {
        id,
        aead: LessSafeKey::new(unbound),
    })
}

impl Sealer {
    /// From the current key and the previous ones, as their sources hold them (base64; a
    /// trailing newline is fine). Errors say which one: 0 is the current key, `n` the n-th
    /// previous key.
    pub fn new(
        current: &secrecy::SecretString,
        previous: &[secrecy::SecretString],
    ) -> Result<Sealer, (usize, KeyError)> {
        let mut keys = vec![parse_key(current.expose_secret()).map_err(|e| (0, e))?];
        for (i, key) in previous.iter().enumerate() {
            keys.push(parse_key(key.expose_secret()).map_err(|e| (i + 1, e))?);
        }
        Ok(Sealer {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// `plain` sealed with the current key, bound to `name`.
    pub fn seal(&self, name: &str, plain: &[u8]) -> Result<Vec<u8>, Unopenable> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).map_err(|_| Unopenable)?;
        let mut out = Vec::with_capacity(HEADER + plain.len() + AES_256_GCM.tag_len());
        out.push(VERSION);
        out.extend_from_slice(&key.id);
        out.extend_from_slice(&nonce);
        let mut body = Zeroizing::new(plain.to_vec());
        let tag = key
            .aead
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                body.as_mut_slice(),
            )
            .map_err(|_| Unopenable)?;
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plaintext of `sealed`, if it was sealed for `name` by one of the keys.
    pub fn open(&self, name: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, Unopenable> {
        if sealed.len() < HEADER + AES_256_GCM.tag_len() || sealed[0] != VERSION {
            return Err(Unopenable);
        }
        let id = &sealed[1..1 + ID_LEN];
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&sealed[1 + ID_LEN..HEADER]);
        // The key the id names first, then the others (an id can collide).
        let order = self
            .keys
            .iter()
            .filter(|k| k.id == id)
            .chain(self.keys.iter().filter(|k| k.id != id));
        for key in order {
            let mut body = Zeroizing::new(sealed[HEADER..].to_vec());
            let opened = key.aead.open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(name.as_bytes()),
                body.as_mut_slice(),
            );
            if let Ok(plain) = opened {
                return Ok(Zeroizing::new(plain.to_vec()));
            }
        }
        Err(Unopenable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn sealer(current: &str, previous: &[&str]) -> Sealer {
        let previous: Vec<SecretString> = previous.iter().map(|k| (*k).into()).collect();
        Sealer::new(&current.into(), &previous).unwrap()
    }

    #[test]
    fn seals_and_opens_bound_to_the_name() {
        let key = generate_key().unwrap();
        let s = sealer(&format!("{key}\n"), &[]);
        let sealed = s.seal("p:{ab}:tok", b"the token").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"the token"));
        assert_eq!(
            s.open("p:{ab}:tok", &sealed).unwrap().as_slice(),
            b"the token"
        );
        assert!(
            s.open("p:{cd}:tok", &sealed).is_err(),
            "moved to another name"
        );
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(s.open("p:{ab}:tok", &flipped).is_err(), "tampered");
        assert_ne!(
            sealed,
            s.seal("p:{ab}:tok", b"the token").unwrap(),
            "nonce reused"
        );
    }

    #[test]
    fn rotation_opens_old_values_and_seals_with_the_new_key() {
        let (old, new) = (generate_key().unwrap(), generate_key().unwrap());
        let before = sealer(&old, &[]);
        let sealed = before.seal("n", b"v").unwrap();
        let after = sealer(&new, &[&old]);
        assert_eq!(after.open("n", &sealed).unwrap().as_slice(), b"v");
        let resealed = after.seal("n", b"v").unwrap();
        assert!(before.open("n", &resealed).is_err());
        assert!(
            sealer(&new, &[]).open("n", &sealed).is_err(),
            "wrong key opens"
        );
    }

    #[test]
    fn bad_keys_are_named_without_their_value() {
        let cases = [
            ("not base64!!", KeyError::NotBase64),
            ("c2hvcnQ=", KeyError::Length(5)),
        ];
        for (text, want) in cases {
            assert_eq!(parse_key(text).err(), Some(want), "{text}");
            let message = parse_key(text)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!message.contains(text), "{message}");
        }
        let good = generate_key().unwrap();
        let err = Sealer::new(&good.as_str().into(), &["c2hvcnQ=".into()]).err();
        assert_eq!(err.map(|e| e.0), Some(1));
    }
}
