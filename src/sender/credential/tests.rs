use super::*;
use crate::config::{CredentialForm, StaticCredential};

fn in_file(path: &std::path::Path, header: &str, prefix: &str) -> StaticHeader {
    StaticHeader::new(StaticCredential {
        header: HeaderName::try_from(header).unwrap(),
        form: CredentialForm::Value {
            prefix: prefix.into(),
            value: SecretSource::File(path.into()),
        },
    })
}

#[test]
fn a_file_credential_is_sensitive_and_reread_when_it_changes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    std::fs::write(&path, "first-key\n").unwrap();
    let header = in_file(&path, "authorization", "Bearer ");
    let value = header.value().unwrap();
    assert_eq!(value.to_str().unwrap(), "Bearer first-key");
    assert!(value.is_sensitive());
    // A different length, so the change is seen even on a coarse-mtime file system.
    std::fs::write(&path, "second-key-longer").unwrap();
    assert_eq!(
        header.value().unwrap().to_str().unwrap(),
        "Bearer second-key-longer"
    );
    assert!(!format!("{header:?}").contains("second"));
}

#[test]
fn bytes_a_header_cannot_carry_are_refused_naming_the_file_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("key");
    for bad in ["line\nbreak-secret", "nul\0-secret", "caf\u{e9}-secret"] {
        std::fs::write(&path, bad).unwrap();
        let err = in_file(&path, "x-api-key", "")
            .value()
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot go in a header value"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(!err.contains("-secret"), "{err}");
    }
    std::fs::remove_file(&path).unwrap();
    let err = in_file(&path, "x-api-key", "")
        .value()
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read secret file"), "{err}");
}

#[test]
fn basic_is_base64_of_user_colon_password() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("pw");
    // RFC 7617 §2's example pair, with a non-ASCII password (UTF-8, encoded).
    std::fs::write(&path, "open sesame").unwrap();
    let spec = StaticCredential {
        header: http::header::AUTHORIZATION,
        form: CredentialForm::Basic {
            user: "Aladdin".into(),
            password: SecretSource::File(path.clone()),
        },
    };
    let value = render(&spec).unwrap();
    assert_eq!(
        value.to_str().unwrap(),
        "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
    );
    assert!(value.is_sensitive());
    std::fs::write(&path, "p\u{e4}ss").unwrap();
    assert!(render(&spec).is_ok());
}
