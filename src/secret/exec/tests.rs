use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// An executable script in `dir` (run directly, not through a shell of ours).
fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn exec(argv: &[&str], cache_secs: u64) -> Exec {
    Exec::new(
        argv.iter().map(|a| a.to_string()).collect(),
        Duration::from_secs(cache_secs),
    )
}

#[test]
fn a_real_script_prints_the_secret_once_per_cache_period() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let vault = script(
        dir.path(),
        "vault",
        &format!("echo run >> {}\necho \"kv-secret-$1\"", runs.display()),
    );
    let vault = vault.to_str().unwrap();
    let cached = exec(&[vault, "billing"], 300);
    for _ in 0..3 {
        assert_eq!(cached.load().unwrap().expose_secret(), "kv-secret-billing");
    }
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
    let uncached = exec(&[vault, "other"], 0);
    uncached.load().unwrap();
    uncached.load().unwrap();
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 3);
}

#[test]
fn arguments_reach_the_program_as_they_are_no_shell() {
    let value = exec(&["echo", "$HOME; echo pwned"], 0).load().unwrap();
    assert_eq!(value.expose_secret(), "$HOME; echo pwned");
}

#[test]
fn a_failing_command_is_named_without_its_output() {
    let dir = tempfile::tempdir().unwrap();
    let bad = script(
        dir.path(),
        "helper",
        "echo leaked-stdout-value\necho 'permission denied' >&2\nexit 3",
    );
    let err = exec(&[bad.to_str().unwrap()], 0)
        .load()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("helper") && err.contains("exited with"),
        "{err}"
    );
    assert!(!err.contains("leaked-stdout-value"), "{err}");
    let err = exec(&["/nonexistent/secret-helper"], 0)
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot start"), "{err}");
    let empty = script(dir.path(), "empty", "true");
    let err = exec(&[empty.to_str().unwrap()], 0).load().unwrap_err();
    assert!(matches!(err, SecretError::Empty(_)), "{err}");
}

#[test]
fn a_command_past_its_time_bound_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let slow = script(
        dir.path(),
        "slow",
        &format!("echo $$ > {}\nexec sleep 30", pid_file.display()),
    );
    let err = exec(&[slow.to_str().unwrap()], 0)
        .with_timeout(Duration::from_secs(1))
        .load()
        .unwrap_err()
        .to_string();
    assert!(err.contains("killed"), "{err}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc = PathBuf::from(format!("/proc/{}", pid.trim()));
    assert!(!proc.exists(), "the command still runs (pid {pid})");
}
