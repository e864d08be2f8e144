//! `ca export --format pem|der|p12 [--password P]` and `ca bundle`, each checked by the tool
//! that consumes it: `openssl` for PEM and DER, the JDK's `keytool` for the PKCS#12
//! truststore (both installed by `.ci/run`).

use std::path::Path;
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_oauth-egress");
const EXAMPLE: &str = include_str!("../routes.toml");

fn run(dir: &Path, program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_remove("OAUTH_EGRESS_CONFIG")
        .env("RUST_LOG", "warn")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn ok(out: &Output, what: &str) -> String {
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{what}: {text}");
    text
}

/// A directory with the example config and its CA, and the CA's SHA-256 fingerprint as
/// openssl prints it.
fn setup() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("routes.toml"), EXAMPLE).unwrap();
    let pem = run(dir.path(), BIN, &["ca", "export"]);
    ok(&pem, "ca export");
    std::fs::write(dir.path().join("ca.pem"), &pem.stdout).unwrap();
    let fp = run(
        dir.path(),
        "openssl",
        &["x509", "-in", "ca.pem", "-noout", "-fingerprint", "-sha256"],
    );
    let fp = ok(&fp, "openssl x509 (pem)");
    let fp = fp.trim().rsplit('=').next().unwrap().to_string();
    (dir, fp)
}

#[test]
fn der_export_is_the_same_certificate_for_openssl() {
    let (dir, fp) = setup();
    let der = run(dir.path(), BIN, &["ca", "export", "--format", "der"]);
    ok(&der, "ca export --format der");
    assert_eq!(
        der.stdout.first(),
        Some(&0x30),
        "DER starts with a SEQUENCE"
    );
    std::fs::write(dir.path().join("ca.der"), &der.stdout).unwrap();
    let out = run(
        dir.path(),
        "openssl",
        &[
            "x509",
            "-inform",
            "DER",
            "-in",
            "ca.der",
            "-noout",
            "-fingerprint",
            "-sha256",
        ],
    );
    assert!(ok(&out, "openssl x509 (der)").contains(&fp));
}

#[test]
fn p12_export_is_a_java_truststore_with_the_ca_trusted() {
    let (dir, fp) = setup();
    for (args, password) in [
        (&["ca", "export", "--format", "p12"][..], "changeit"),
        (
            &["ca", "export", "--format", "p12", "--password", "s3cret-pw"][..],
            "s3cret-pw",
        ),
    ] {
        let p12 = run(dir.path(), BIN, args);
        ok(&p12, "ca export --format p12");
        std::fs::write(dir.path().join("ca.p12"), &p12.stdout).unwrap();
        let out = run(
            dir.path(),
            "keytool",
            &[
                "-list",
                "-v",
                "-keystore",
                "ca.p12",
                "-storetype",
                "PKCS12",
                "-storepass",
                password,
            ],
        );
        let listing = ok(&out, "keytool -list");
        assert!(listing.contains("trustedCertEntry"), "{listing}");
        assert!(listing.contains("oauth-egress-ca"), "{listing}");
        assert!(listing.contains(&fp), "fingerprint {fp} not in:\n{listing}");
        // The wrong password is refused (the MAC is checked).
        let out = run(
            dir.path(),
            "keytool",
            &[
                "-list",
                "-keystore",
                "ca.p12",
                "-storetype",
                "PKCS12",
                "-storepass",
                "wrong-pw",
            ],
        );
        assert!(!out.status.success());
        // And openssl reads it too.
        let out = run(
            dir.path(),
            "openssl",
            &[
                "pkcs12",
                "-in",
                "ca.p12",
                "-nokeys",
                "-passin",
                &format!("pass:{password}"),
            ],
        );
        assert!(ok(&out, "openssl pkcs12").contains("BEGIN CERTIFICATE"));
    }
}

#[test]
fn bundle_is_the_system_roots_plus_the_ca() {
    let (dir, _) = setup();
    std::fs::write(
        dir.path().join("system.pem"),
        std::fs::read(dir.path().join("ca.pem")).unwrap(),
    )
    .unwrap();
    // A stand-in system bundle: any PEM file (here: a second copy of a certificate).
    let out = run(
        dir.path(),
        BIN,
        &[
            "ca",
            "bundle",
            "--system-roots",
            "system.pem",
            "--out",
            "bundle.pem",
        ],
    );
    let printed = ok(&out, "ca bundle");
    assert!(printed.contains("bundle.pem"), "{printed}");
    let bundle = std::fs::read_to_string(dir.path().join("bundle.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2, "{bundle}");
    // The CA is in it, as openssl sees it: verify the CA against the bundle.
    let out = run(
        dir.path(),
        "openssl",
        &["verify", "-CAfile", "bundle.pem", "ca.pem"],
    );
    assert!(ok(&out, "openssl verify").contains("OK"));
    // Without a system bundle to start from: a one-line reason.
    let out = run(
        dir.path(),
        BIN,
        &[
            "ca",
            "bundle",
            "--system-roots",
            "missing.pem",
            "--out",
            "b2.pem",
        ],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.pem"));
}
