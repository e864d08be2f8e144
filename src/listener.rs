//! The accept loop: one task per caller connection, HTTP/1.1 with upgrades (CONNECT), and a
//! graceful shutdown that stops accepting, lets in-flight requests finish within a grace
//! period, then returns.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use crate::proxy::SharedProxy;

/// Held by every connection and tunnel: tells it when to wind down, and lets shutdown wait
/// until all of them have.
#[derive(Clone)]
pub struct Drain {
    signal: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Drain {
    /// Resolves once shutdown has begun.
    pub async fn signaled(&mut self) {
        let _ = self.signal.wait_for(|stop| *stop).await;
    }

    /// Drives a hyper connection; on shutdown, asks it to finish its in-flight requests and
    /// close.
    pub async fn serve<C>(mut self, conn: C) -> C::Output
    where
        C: Future + GracefulConnection,
    {
        let mut conn = pin!(conn);
        tokio::select! {
            out = conn.as_mut() => out,
            _ = self.signaled() => {
                conn.as_mut().begin_shutdown();
                conn.await
            }
        }
    }
}

/// A hyper connection that can be asked to close after its in-flight requests.
pub trait GracefulConnection {
    /// Starts a graceful close.
    fn begin_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S> GracefulConnection for http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::ResBody: hyper::body::Body + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    fn begin_shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, E> GracefulConnection
    for hyper_util::server::conn::auto::UpgradeableConnection<'_, I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn begin_shutdown(self: std::pin::Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// How long to wait after a failed `accept`: doubling from 5 ms to at most 1 s while
/// failures repeat, back to the start after a success. Failures are mostly EMFILE/ENFILE
/// (out of file descriptors), which retrying at once would turn into a busy loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    const FIRST: Duration = Duration::from_millis(5);
    const MAX: Duration = Duration::from_secs(1);

    /// The wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        wait
    }

    /// A connection was accepted: the next failure waits the shortest time again.
    pub fn succeeded(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> Self {
        AcceptBackoff { next: Self::FIRST }
    }
}

/// The next connection on `listener`, waiting per `backoff` after each failure (logged as
/// a warning naming the `listener`) instead of spinning. Shared by the proxy and admin
/// listeners.
pub async fn accept(
    listener: &TcpListener,
    backoff: &mut AcceptBackoff,
    name: &'static str,
) -> (TcpStream, SocketAddr) {
    loop {
        match listener.accept().await {
            Ok(accepted) => {
                backoff.succeeded();
                return accepted;
            }
            Err(err) => {
                let wait = backoff.failed();
                tracing::warn!(listener = name, error = %err, wait_ms = wait.as_millis() as u64, "accept failed");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Serves the proxy on `listener` until `shutdown` resolves, then drains connections for at
/// most `grace`.
pub async fn run(
    proxy: SharedProxy,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
) {
    let (signal_tx, signal_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let drain = Drain {
        signal: signal_rx,
        _alive: alive_tx,
    };
    let mut shutdown = pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, &mut backoff, "proxy") => accepted,
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        let conn_drain = drain.clone();
        crate::metrics::open_connections(1.0);
        tokio::spawn(async move {
            let service_drain = conn_drain.clone();
            let service = service_fn(move |req| {
                let proxy = proxy.clone();
                let drain = service_drain.clone();
                async move { Ok::<_, Infallible>(crate::connect::handle(proxy, req, drain).await) }
            });
            let conn = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(err) = conn_drain.serve(conn).await {
                tracing::debug!(%peer, error = %err, "client connection ended");
            }
            crate::metrics::open_connections(-1.0);
        });
    }
    drop(listener);
    tracing::info!("shutting down: draining connections");
    let _ = signal_tx.send(true);
    drop(drain);
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            "grace period over; closing remaining connections"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_backoff_doubles_to_a_cap_and_resets_after_a_success() {
        let mut backoff = AcceptBackoff::default();
        let waits: Vec<u128> = (0..10).map(|_| backoff.failed().as_millis()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        backoff.succeeded();
        assert_eq!(backoff.failed(), Duration::from_millis(5));
    }
}
