//! Stored refresh tokens: read from their file, and rotated in place atomically (a new file
//! with a random name created exclusively, mode 0600, fsync, rename, fsync of the directory),
//! so a crash never loses the only valid credential.
//!
//! - One lock per file for the whole process, kept across reloads ([`RefreshStore::global`]):
//!   two refreshes of the same refresh token never run at once, even from routes that ask for
//!   different tokens or belong to different generations of the configuration.
//! - A rotated token that cannot be saved (full disk, read-only mount) is kept in memory and
//!   used for the next refresh, its save retried in the background until it succeeds, with an
//!   error log and the `oauth_egress_refresh_token_unsaved` gauge at 1 meanwhile.
//! - A token file that is a symbolic link is refused: whoever planted it chose where the
//!   token is read from and where its successor would go.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// Per-file locks and rotated tokens not yet saved.
#[derive(Default)]
pub struct RefreshStore {
    files: Mutex<HashMap<PathBuf, Arc<StoredFile>>>,
}

/// One refresh-token file: its lock, which guards the rotated token not yet saved.
#[derive(Default)]
pub struct StoredFile {
    unsaved: tokio::sync::Mutex<Option<SecretString>>,
    retrying: AtomicBool,
}

/// The first save retry waits this long; the pause doubles up to [`MAX_SAVE_PAUSE`].
const FIRST_SAVE_PAUSE: Duration = Duration::from_secs(1);
const MAX_SAVE_PAUSE: Duration = Duration::from_secs(60);

static GLOBAL: LazyLock<RefreshStore> = LazyLock::new(RefreshStore::default);

impl RefreshStore {
    /// The process-wide store: every configuration generation shares its locks.
    pub fn global() -> &'static RefreshStore {
        &GLOBAL
    }

    /// The state of the file at `path`; hold [`StoredFile::lock`] across read, request and
    /// write back.
    /// Keyed by the file's canonical location, so two spellings of one file (`a/../b/rt`,
    /// a linked directory) share one lock.
    pub fn file(&self, path: &Path) -> Arc<StoredFile> {
        crate::sync::lock(&self.files)
            .entry(canonical(path))
            .or_default()
            .clone()
    }
}

/// A held file lock: the refresh token to send, and where the rotated one goes.
pub struct Held<'a> {
    path: &'a Path,
    file: &'a Arc<StoredFile>,
    unsaved: tokio::sync::MutexGuard<'a, Option<SecretString>>,
}

impl StoredFile {
    /// Waits for this file's lock.
    pub async fn lock<'a>(self: &'a Arc<Self>, path: &'a Path) -> Held<'a> {
        Held {
            path,
            file: self,
            unsaved: self.unsaved.lock().await,
        }
    }
}

impl Held<'_> {
    /// The refresh token to send: the rotated one not saved yet (trying its save once more
    /// first), else the one in the file.
    pub fn current(&mut self) -> Result<SecretString, StoredTokenError> {
        if let Some(token) = self.unsaved.as_ref() {
            let token = SecretString::from(token.expose_secret().to_string());
            if write_atomic(self.path, &token).is_ok() {
                saved_late(self.path);
                *self.unsaved = None;
            }
            return Ok(token);
        }
        read(self.path)
    }

    /// Keeps `token`, the refresh token the server just issued: saved to the file, or, if
    /// that fails, held in memory (used by the next refresh) while a background task keeps
    /// trying to save it. Returns the save error, for the log.
    pub fn rotated(&mut self, client: &str, token: SecretString) -> Option<std::io::Error> {
        match write_atomic(self.path, &token) {
            Ok(()) => {
                if self.unsaved.take().is_some() {
                    saved_late(self.path);
                }
                None
            }
            Err(err) => {
                tracing::error!(
                    client,
                    file = %self.path.display(),
                    error = %err,
                    "the rotated refresh token could not be saved; keeping it in memory and retrying (a restart now would lose it)"
                );
                crate::metrics::refresh_token_unsaved(&self.path.display().to_string(), true);
                *self.unsaved = Some(token);
                self.retry_in_background(client);
                Some(err)
            }
        }
    }

    fn retry_in_background(&self, client: &str) {
        if self.file.retrying.swap(true, Ordering::SeqCst) {
            return;
        }
        let (file, path, client) = (self.file.clone(), self.path.to_owned(), client.to_string());
        tokio::spawn(async move {
            let mut pause = FIRST_SAVE_PAUSE;
            loop {
                tokio::time::sleep(pause).await;
                let mut unsaved = file.unsaved.lock().await;
                let Some(token) = unsaved.as_ref() else {
                    // Cleared under the lock: a rotation that fails to save after this
                    // (it must take the lock first) starts a new task.
                    file.retrying.store(false, Ordering::SeqCst);
                    break;
                };
                match write_atomic(&path, token) {
                    Ok(()) => {
                        *unsaved = None;
                        saved_late(&path);
                        file.retrying.store(false, Ordering::SeqCst);
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(client, file = %path.display(), error = %err, "the rotated refresh token still cannot be saved");
                    }
                }
                pause = (pause * 2).min(MAX_SAVE_PAUSE);
            }
        });
    }
}

/// `path` with its directory resolved (the file itself may be replaced by renames, and is
/// never a link: see [`read`]); as written when the directory cannot be resolved.
fn canonical(path: &Path) -> std::path::PathBuf {
    let name = path.file_name();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    match (
        dir.map_or_else(|| std::fs::canonicalize("."), std::fs::canonicalize),
        name,
    ) {
        (Ok(dir), Some(name)) => dir.join(name),
        _ => path.to_owned(),
    }
}

fn saved_late(path: &Path) {
    tracing::info!(file = %path.display(), "the rotated refresh token is saved now");
    crate::metrics::refresh_token_unsaved(&path.display().to_string(), false);
}

/// Why the stored refresh token cannot be used. Names the file, never its content.
#[derive(Debug, thiserror::Error)]
pub enum StoredTokenError {
    /// The file cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file holds no token.
    #[error("{} is empty", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is a symbolic link (a planted link could send the rotated token elsewhere).
    #[error("{} is a symbolic link; refusing it (point refresh_token.file at the file itself)", path.display())]
    Symlink {
        /// The file.
        path: PathBuf,
    },
}

/// The refresh token currently in `path` (never through a symbolic link).
pub fn read(path: &Path) -> Result<SecretString, StoredTokenError> {
    refuse_symlink(path)?;
    let text = zeroize::Zeroizing::new(std::fs::read_to_string(path).map_err(|source| {
        StoredTokenError::Unreadable {
            path: path.to_owned(),
            source,
        }
    })?);
    let token = text.trim();
    if token.is_empty() {
        return Err(StoredTokenError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(SecretString::from(token.to_string()))
}

fn refuse_symlink(path: &Path) -> Result<(), StoredTokenError> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_symlink() => Err(StoredTokenError::Symlink {
            path: path.to_owned(),
        }),
        _ => Ok(()),
    }
}

fn directory(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Replaces the token in `path` so that, whatever happens, the file holds either the old or
/// the new token, complete. The new content goes to a file with a random name created
/// exclusively (no planted file or link is ever opened), mode 0600, synced, then renamed.
pub fn write_atomic(path: &Path, token: &SecretString) -> std::io::Result<()> {
    refuse_symlink(path).map_err(std::io::Error::other)?;
    let dir = directory(path);
    // `NamedTempFile` opens with O_CREAT|O_EXCL (and mode 0600 on Unix), under a random
    // name, and removes the file if anything below fails.
    let mut temp = tempfile::Builder::new()
        .prefix(".refresh-token.")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    temp.write_all(token.expose_secret().as_bytes())?;
    temp.write_all(b"\n")?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}

/// Problems that would make a refresh-token route lose its token: the file is a symbolic
/// link, or its directory is not writable (a read-only mount: the server would rotate the
/// token and its successor could not be saved). `route` names the route in the message.
pub fn file_problems(path: &Path) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(why) = refuse_symlink(path) {
        problems.push(format!("refresh_token: {why}"));
        return problems;
    }
    let dir = directory(path);
    if let Err(err) = tempfile::Builder::new()
        .prefix(".refresh-token.check.")
        .tempfile_in(dir)
    {
        problems.push(format!(
            "refresh_token file {}: its directory {} is not writable ({err}); \
             the server rotates refresh tokens and the new one could not be saved. Put the \
             file in a writable directory (a volume, not a read-only Secret or ConfigMap mount)",
            path.display(),
            dir.display()
        ));
    }
    problems
}

#[cfg(test)]
mod tests {

    #[test]
    fn two_spellings_of_one_file_share_one_lock() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let plain = dir.path().join("state/rt");
        let detour = dir.path().join("a/../state/rt");
        let store = RefreshStore::default();
        assert!(Arc::ptr_eq(&store.file(&plain), &store.file(&detour)));
        assert!(!Arc::ptr_eq(
            &store.file(&plain),
            &store.file(&dir.path().join("state/other"))
        ));
    }

    use super::*;

    #[test]
    fn rotation_replaces_the_file_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh");
        std::fs::write(&path, "old-token\n").unwrap();
        assert_eq!(read(&path).unwrap().expose_secret(), "old-token");
        write_atomic(&path, &SecretString::from("new-token")).unwrap();
        assert_eq!(read(&path).unwrap().expose_secret(), "new-token");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    /// A link planted where the old code put its temp file (a predictable name, opened
    /// without O_EXCL) must not receive the new token.
    #[cfg(unix)]
    #[test]
    fn a_planted_symlink_never_receives_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let stolen = elsewhere.path().join("stolen");
        let path = dir.path().join("refresh");
        std::fs::write(&path, "old-token\n").unwrap();
        let predictable = dir
            .path()
            .join(format!(".refresh.{}.tmp", std::process::id()));
        std::os::unix::fs::symlink(&stolen, &predictable).unwrap();
        write_atomic(&path, &SecretString::from("new-token")).unwrap();
        assert_eq!(read(&path).unwrap().expose_secret(), "new-token");
        assert!(
            std::fs::read_to_string(&stolen)
                .unwrap_or_default()
                .is_empty(),
            "the token went through the planted link"
        );
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_that_is_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::write(&real, "token\n").unwrap();
        let link = dir.path().join("refresh");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = read(&link).unwrap_err().to_string();
        assert!(err.contains("symbolic link"), "{err}");
        assert!(write_atomic(&link, &SecretString::from("new")).is_err());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "token\n");
        let problems = file_problems(&link);
        assert!(problems[0].contains("symbolic link"), "{problems:?}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_read_only_directory_is_a_problem() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refresh");
        std::fs::write(&path, "token\n").unwrap();
        assert!(file_problems(&path).is_empty());
        // Nobody, root included, creates files in /proc: a read-only directory.
        let problems = file_problems(Path::new("/proc/refresh-token"));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("not writable"), "{problems:?}");
    }
}
