//! `{ exec = ["vault", "kv", "get", "-field=secret", "kv/billing"], cache_secs = 300 }`: a
//! secret printed by a command, the pattern of git credential helpers and kubectl exec
//! plugins (Vault, cloud secret managers, 1Password).
//!
//! The command runs without a shell (`argv[0]` is looked up on `PATH`), with no stdin, for at
//! most [`EXEC_TIMEOUT`] (then it is killed). Its stdout, up to [`MAX_OUTPUT`] bytes, minus one
//! trailing newline, is the secret; its stderr is logged with the secret blanked out; a
//! failure names the program and why, never the output. The value is kept `cache_secs`
//! (0: the command runs on every use). A run blocks the calling thread, so a command is best
//! given a `cache_secs` that covers many token requests.

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use zeroize::Zeroizing;

use super::SecretError;
use crate::sync::lock;

/// How long a secret command may run before it is killed.
pub const EXEC_TIMEOUT: Duration = Duration::from_secs(10);
/// The most stdout (and stderr) read from a secret command.
pub const MAX_OUTPUT: u64 = 64 * 1024;

/// A secret command and its cached value.
pub struct Exec {
    /// The program and its arguments (not secret: they name where the secret is).
    pub argv: Vec<String>,
    /// How long a value is reused.
    pub cache: Duration,
    timeout: Duration,
    cached: Mutex<Option<(Instant, SecretString)>>,
}

impl Exec {
    /// `argv` run at most every `cache`.
    pub fn new(argv: Vec<String>, cache: Duration) -> Exec {
        Exec {
            argv,
            cache,
            timeout: EXEC_TIMEOUT,
            cached: Mutex::new(None),
        }
    }

    /// The same command with another time bound (tests).
    pub fn with_timeout(mut self, timeout: Duration) -> Exec {
        self.timeout = timeout;
        self
    }

    /// The program's name, for messages.
    pub fn program(&self) -> &str {
        self.argv.first().map_or("", String::as_str)
    }

    /// The cached value while it is fresh, else the command's output now.
    pub fn load(&self) -> Result<SecretString, SecretError> {
        if let Some((at, value)) = &*lock(&self.cached) {
            if at.elapsed() < self.cache {
                return Ok(value.clone());
            }
        }
        let fail = |reason: String| SecretError::Exec {
            program: self.program().to_string(),
            reason,
        };
        let value = run(&self.argv, self.timeout).map_err(fail)?;
        if value.expose_secret().is_empty() {
            return Err(SecretError::Empty(format!(
                "the output of {}",
                self.program()
            )));
        }
        if !self.cache.is_zero() {
            *lock(&self.cached) = Some((Instant::now(), value.clone()));
        }
        Ok(value)
    }
}

/// Reads at most [`MAX_OUTPUT`] bytes of a pipe, in a thread (so a full pipe never stalls
/// the child).
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<Zeroizing<Vec<u8>>> {
    std::thread::spawn(move || {
        let mut out = Zeroizing::new(Vec::new());
        if let Some(pipe) = pipe {
            let _ = pipe.take(MAX_OUTPUT).read_to_end(&mut out);
        }
        out
    })
}

/// Runs `argv` (no shell) for at most `timeout`; its stdout minus one trailing newline.
fn run(argv: &[String], timeout: Duration) -> Result<SecretString, String> {
    let (program, args) = argv.split_first().ok_or("the command is empty")?;
    let spawn = || {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    };
    // A helper being rewritten (or just written, its descriptor inherited by a sibling's
    // fork) is briefly busy: a few short retries, bounded.
    let mut child = spawn();
    for _ in 0..5 {
        match &child {
            Err(e) if e.kind() == std::io::ErrorKind::ExecutableFileBusy => {
                std::thread::sleep(Duration::from_millis(20));
                child = spawn();
            }
            _ => break,
        }
    }
    let mut child = child.map_err(|e| format!("cannot start: {e}"))?;
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "did not finish within {} s and was killed",
                    timeout.as_secs_f64()
                ));
            }
            Err(e) => return Err(format!("cannot wait for it: {e}")),
        }
    };
    let out = stdout.join().unwrap_or_default();
    let err = stderr.join().unwrap_or_default();
    log_stderr(program, &err, &out);
    if !status.success() {
        return Err(format!("exited with {status} (its stderr is in the log)"));
    }
    let mut text = String::from_utf8(out.to_vec()).map_err(|_| "its output is not UTF-8")?;
    let trimmed = text
        .strip_suffix("\r\n")
        .or_else(|| text.strip_suffix('\n'))
        .map(str::len);
    if let Some(len) = trimmed {
        text.truncate(len);
    }
    Ok(SecretString::from(text))
}

/// Logs what the command wrote to stderr, with its stdout (the secret) blanked out.
fn log_stderr(program: &str, stderr: &[u8], stdout: &[u8]) {
    let text = String::from_utf8_lossy(stderr);
    let text = text.trim();
    if text.is_empty() {
        return;
    }
    let secret = String::from_utf8_lossy(stdout);
    let secret = secret.trim();
    let shown = if secret.is_empty() {
        text.to_string()
    } else {
        text.replace(secret, "***")
    };
    tracing::warn!(program, stderr = %shown, "secret command wrote to stderr");
}

#[cfg(test)]
mod tests;
