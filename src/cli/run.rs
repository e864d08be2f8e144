//! `run`: serve until SIGTERM/SIGINT, reloading on SIGHUP or a change of the config file.

use std::path::PathBuf;
use std::sync::Arc;

use oauth_egress::config::{self, Config};
use oauth_egress::intercept::ca::CertificateAuthority;

use super::{load, load_ca, Failure};

pub(crate) async fn run(path: &std::path::Path) -> Result<(), Failure> {
    let config = load(path)?;
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    let ca = load_ca(&config)?;
    // Before serving: a SIGHUP or SIGTERM that arrives once "listening" is logged must
    // reload or stop cleanly, not kill the process (their default action).
    let mut reloads = reload_triggers(path.to_owned());
    let mut shutdown = std::pin::pin!(shutdown_signal());
    let running = start(config, ca, &[]).await?;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(why) = reloads.recv() => {
                tracing::info!(trigger = why, config = %path.display(), "reloading configuration");
                let result = match config::load(path) {
                    Ok(config) => running.reload(config).await,
                    Err(err) => {
                        let err = err.to_string();
                        running.reloaded(Err(&err));
                        Err(err)
                    }
                };
                if let Err(err) = result {
                    let err = err.replace(":\n  - ", ": ").replace("\n  - ", "; ");
                    tracing::error!(error = %err, "configuration rejected; the previous one keeps serving");
                }
            }
        }
    }
    tracing::info!("shutting down");
    running.stop().await;
    Ok(())
}

/// SIGHUP, and a change of the config file (its modification time or size, polled every
/// two seconds: no platform watcher to configure, and editors' rename-on-save is seen too).
fn reload_triggers(path: PathBuf) -> tokio::sync::mpsc::Receiver<&'static str> {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        // Registered here, not in the task, so the handler is in place when this returns.
        match signal(SignalKind::hangup()) {
            Ok(mut hup) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        if tx.send("SIGHUP").await.is_err() {
                            return;
                        }
                    }
                });
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGHUP; reload by changing the file")
            }
        }
    }
    tokio::spawn(async move {
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut last = stamp(&path);
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(2)).await;
            let now = stamp(&path);
            if now != last {
                last = now;
                if tx.send("file changed").await.is_err() {
                    return;
                }
            }
        }
    });
    rx
}

async fn start(
    config: Config,
    ca: Arc<CertificateAuthority>,
    extra_roots: &[rustls::pki_types::CertificateDer<'static>],
) -> Result<oauth_egress::server::Running, Failure> {
    let origin = config.origin.clone();
    oauth_egress::server::start(config, ca, extra_roots)
        .await
        .map_err(|err| match err {
            oauth_egress::server::ServeError::Preflight(problems) => {
                Failure::Config(format!("{origin}: {problems}"))
            }
            other => Failure::Other(other.into()),
        })
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future
/// is first polled, so a signal that arrives while the proxy starts stops it cleanly instead
/// of killing it (the default action).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = recv(term) => {}
                () = recv(int) => {}
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
