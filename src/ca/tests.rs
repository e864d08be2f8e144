use super::*;

fn file(path: &Path) -> SecretSource {
    SecretSource::File(path.to_path_buf())
}

#[test]
fn a_ca_in_environment_variables_loads_and_is_never_generated() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let (made, _) = CertificateAuthority::load_or_create(&file(&cert), &file(&key)).unwrap();
    let (cert_var, key_var) = (
        "OAUTH_EGRESS_TEST_CA_ENV_CERT",
        "OAUTH_EGRESS_TEST_CA_ENV_KEY",
    );
    std::env::set_var(cert_var, std::fs::read_to_string(&cert).unwrap());
    std::env::set_var(key_var, std::fs::read_to_string(&key).unwrap());
    let env = |name: &str| SecretSource::Env(name.to_string());
    let (ca, created) =
        CertificateAuthority::load_or_create(&env(cert_var), &env(key_var)).unwrap();
    assert!(!created);
    assert_eq!(ca.cert_pem(), made.cert_pem());
    // A key variable that is not set is not generated into: the error says so, and
    // nothing is written beside the certificate file.
    let unset = "OAUTH_EGRESS_TEST_CA_ENV_UNSET_KEY";
    let absent_cert = dir.path().join("new/ca.pem");
    let err = CertificateAuthority::load_or_create(&file(&absent_cert), &env(unset))
        .unwrap_err()
        .to_string();
    assert!(err.contains("never into environment variables"), "{err}");
    assert!(!absent_cert.exists());
    let err = CertificateAuthority::load_or_create(&env(cert_var), &env(unset))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(unset) && err.contains("never into environment variables"),
        "{err}"
    );
}

#[test]
fn created_ca_reloads_and_key_is_private() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca/ca.pem"), dir.path().join("ca/ca.key"));
    let (first, created) = CertificateAuthority::load_or_create(&file(&cert), &file(&key)).unwrap();
    assert!(created);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let (second, created) =
        CertificateAuthority::load_or_create(&file(&cert), &file(&key)).unwrap();
    assert!(!created);
    assert_eq!(first.cert_pem(), second.cert_pem());
    assert!(!format!("{second:?}").contains("PRIVATE"));
}

#[test]
fn ca_keys_in_every_pem_form_load() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("ca.pem"), dir.path().join("ca.key"));
    let ec = crate::secret::test_keys::ec_forms();
    let rsa = crate::secret::test_keys::rsa_forms();
    let ec_pair = KeyPair::from_pem(&ec[0].1).unwrap();
    let rsa_pair = KeyPair::from_pem_and_sign_algo(&rsa[0].1, &rcgen::PKCS_RSA_SHA256).unwrap();
    let ca_pem = |pair: &KeyPair| {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.self_signed(pair).unwrap().pem()
    };
    let cases = ec
        .iter()
        .map(|(form, pem)| (form, pem, ca_pem(&ec_pair)))
        .chain(rsa.iter().map(|(form, pem)| (form, pem, ca_pem(&rsa_pair))));
    for (form, key_pem, cert_pem) in cases {
        std::fs::write(&cert, cert_pem).unwrap();
        std::fs::write(&key, key_pem).unwrap();
        let (ca, created) = CertificateAuthority::load_or_create(&file(&cert), &file(&key))
            .unwrap_or_else(|e| panic!("{form}: {e}"));
        assert!(!created);
        assert!(ca.server_config("api.example").is_ok(), "{form}");
    }
    // The certificate given as the key: named, and said so.
    std::fs::write(&key, std::fs::read(&cert).unwrap()).unwrap();
    let err = CertificateAuthority::load_or_create(&file(&cert), &file(&key))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(&key.display().to_string()) && err.contains("holds a certificate"),
        "{err}"
    );
}

#[test]
fn leaves_have_their_own_keys_and_are_cached() {
    let ca = CertificateAuthority::generate().unwrap();
    let (_, k1) = ca.mint_leaf("api.example").unwrap();
    let (_, k2) = ca.mint_leaf("api.example").unwrap();
    assert_ne!(k1.secret_der(), k2.secret_der());
    assert_ne!(k1.secret_der(), ca.issuer.key().serialized_der());
    let a = ca.server_config("api.example").unwrap();
    let b = ca.server_config("api.example").unwrap();
    assert!(Arc::ptr_eq(&a, &b));
    assert!(ca.server_config("127.0.0.1").is_ok());
}

#[test]
fn a_full_leaf_cache_drops_the_least_recently_used_host_only() {
    let ca = CertificateAuthority::generate().unwrap();
    *ca.leaves.lock().unwrap() = LruCache::new(NonZeroUsize::new(2).unwrap());
    let a = ca.server_config("a.example").unwrap();
    ca.server_config("b.example").unwrap();
    assert!(Arc::ptr_eq(&a, &ca.server_config("a.example").unwrap()));
    ca.server_config("c.example").unwrap();
    // b was the least recently used: it went, a (used since) stayed.
    assert!(Arc::ptr_eq(&a, &ca.server_config("a.example").unwrap()));
    assert!(!ca.leaves.lock().unwrap().contains("b.example"));
    assert!(ca.leaves.lock().unwrap().contains("c.example"));
}
