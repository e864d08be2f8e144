//! Secrets: where they come from (`{ env = "NAME" }`, `{ file = "path" }`) and how they are
//! held (zeroized on drop, never printable).
//!
//! A secret is resolved every time it is used, so rotating a client secret on disk or in the
//! environment needs no restart (the token endpoint is called rarely; reading a small file
//! then costs nothing).

use std::path::PathBuf;
use std::sync::Arc;

pub use secrecy::{ExposeSecret, SecretString};

/// Where a secret lives. The source is printable (an env var name, a path); the value is not.
#[derive(Clone)]
pub enum SecretSource {
    /// An environment variable of the proxy process.
    Env(String),
    /// A file, re-read on every use; one trailing newline is ignored.
    File(PathBuf),
    /// A value held in memory (the `demo` command and tests; not expressible in a config file).
    Inline(Arc<SecretString>),
}

impl std::fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "env:{name}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
            Self::Inline(_) => f.write_str("inline:***"),
        }
    }
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
            Self::Inline(_) => f.write_str("an in-memory value"),
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
}

impl SecretSource {
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
            Self::Inline(secret) => secret.expose_secret().to_owned(),
        };
        if value.is_empty() {
            return Err(SecretError::Empty(self.to_string()));
        }
        Ok(SecretString::from(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let inline = SecretSource::Inline(Arc::new(SecretString::from("hunter2")));
        assert!(!format!("{inline:?} {inline}").contains("hunter2"));
    }
}
