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

use crate::proxy::SharedProxy;

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
    let (drain, ending) = crate::drain::new();
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
    drop(drain);
    if !ending.drain(grace).await {
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
