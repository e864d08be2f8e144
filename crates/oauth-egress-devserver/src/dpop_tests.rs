//! Unit tests of the DPoP proof verifier and the thumbprints.

use super::*;
use serde_json::json;

#[test]
fn rfc7638_example_thumbprint() {
    let jwk = json!({
        "kty": "RSA",
        "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
        "e": "AQAB",
        "alg": "RS256",
        "kid": "2011-04-29"
    });
    assert_eq!(
        jwk_thumbprint(&jwk).unwrap(),
        "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
    );
}

#[test]
fn thumbprint_ignores_member_order_and_extras() {
    let a = json!({"kty": "EC", "crv": "P-256", "x": "a", "y": "b", "kid": "k"});
    let b = json!({"y": "b", "x": "a", "crv": "P-256", "kty": "EC"});
    assert_eq!(jwk_thumbprint(&a).unwrap(), jwk_thumbprint(&b).unwrap());
    assert!(jwk_thumbprint(&json!({"kty": "EC", "crv": "P-256"})).is_err());
}

#[test]
fn htu_normalisation() {
    let n = |u| normalize_htu(u).unwrap();
    assert_eq!(
        n("HTTPS://Example.COM:443/a/B?q=1#f"),
        "https://example.com/a/B"
    );
    assert_eq!(n("https://example.com:8443"), "https://example.com:8443/");
    assert_eq!(n("http://[::1]:80/x"), "http://[::1]/x");
    assert_eq!(n("http://[::1]:8080/x"), "http://[::1]:8080/x");
    assert!(normalize_htu("ftp://x/").is_err());
    assert!(normalize_htu("/relative").is_err());
}

#[test]
fn replay_cache_refuses_second_use() {
    let cache = ReplayCache::new();
    assert!(cache.check_and_remember("a", now_secs() + 60));
    assert!(!cache.check_and_remember("a", now_secs() + 60));
    assert_eq!(cache.len(), 1);
}

/// A proof for `htm`/`htu` signed with `alg` by `key`, whose public JWK is `jwk`.
fn proof(alg: Algorithm, key: &jsonwebtoken::EncodingKey, jwk: &Value, claims: &Value) -> String {
    let header = json!({ "typ": DPOP_TYP, "alg": format!("{alg:?}"), "jwk": jwk });
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let signature = jsonwebtoken::crypto::sign(input.as_bytes(), key, alg).unwrap();
    format!("{input}.{signature}")
}

#[test]
fn rsa_and_ec_proofs_verify() {
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};
    use rsa::traits::PublicKeyParts;

    let rsa_key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap();
    let pem = rsa_key.to_pkcs8_pem(LineEnding::LF).unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    let jwk = json!({
        "kty": "RSA",
        "n": URL_SAFE_NO_PAD.encode(rsa_key.n().to_bytes_be()),
        "e": URL_SAFE_NO_PAD.encode(rsa_key.e().to_bytes_be()),
    });
    let htu = "https://api.example/v1";
    let claims = |jti: &str| json!({ "jti": jti, "htm": "GET", "htu": htu, "iat": now_secs(), "ath": access_token_hash("tok") });
    let replay = ReplayCache::new();
    for (alg, jti) in [(Algorithm::RS256, "r1"), (Algorithm::PS256, "p1")] {
        let proof = proof(alg, &encoding, &jwk, &claims(jti));
        let info = verify_proof(&proof, "GET", htu, Some("tok"), None, &replay).unwrap();
        assert_eq!(info.jkt, jwk_thumbprint(&jwk).unwrap());
        let again = verify_proof(&proof, "GET", htu, Some("tok"), None, &replay);
        assert!(matches!(again, Err(ProofError::Invalid(why)) if why.contains("jti reused")));
    }

    let ec = rcgen::KeyPair::generate().unwrap();
    let encoding = jsonwebtoken::EncodingKey::from_ec_pem(ec.serialize_pem().as_bytes()).unwrap();
    let point = ec.public_key_raw();
    let jwk = json!({
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(&point[1..33]),
        "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
    });
    let good = proof(Algorithm::ES256, &encoding, &jwk, &claims("e1"));
    let nonce = verify_proof(&good, "GET", htu, Some("tok"), Some("n"), &replay);
    assert_eq!(nonce, Err(ProofError::UseNonce));
    assert!(verify_proof(&good, "GET", htu, Some("other"), None, &replay).is_err());
    assert!(verify_proof(&good, "POST", htu, Some("tok"), None, &replay).is_err());
    assert!(verify_proof(
        &good,
        "GET",
        "https://api.example/v2",
        Some("tok"),
        None,
        &replay
    )
    .is_err());
    verify_proof(
        &good,
        "GET",
        "HTTPS://API.EXAMPLE:443/v1?q",
        Some("tok"),
        None,
        &replay,
    )
    .unwrap();
    // An RSA-typed algorithm with an EC key is refused.
    let mixed = proof(Algorithm::ES256, &encoding, &jwk, &claims("e2")).replacen(
        &URL_SAFE_NO_PAD.encode(json!({ "typ": DPOP_TYP, "alg": "ES256", "jwk": jwk }).to_string()),
        &URL_SAFE_NO_PAD.encode(json!({ "typ": DPOP_TYP, "alg": "RS256", "jwk": jwk }).to_string()),
        1,
    );
    assert!(verify_proof(&mixed, "GET", htu, None, None, &replay).is_err());
}
