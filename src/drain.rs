//! Graceful shutdown shared by every connection and tunnel: a [`Drain`] is held by each, tells
//! it when to wind down, and lets the listener wait until all of them have. Its own module so
//! that the listener, `CONNECT` handling and interception all use it downward.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use hyper::server::conn::http1;
use tokio::sync::{mpsc, watch};

/// A new drain: the [`Drain`] handed to connections and the [`Shutdown`] that ends them.
pub fn new() -> (Drain, Shutdown) {
    let (signal_tx, signal_rx) = watch::channel(false);
    let (alive_tx, alive_rx) = mpsc::channel::<()>(1);
    let drain = Drain {
        signal: signal_rx,
        _alive: alive_tx,
    };
    let shutdown = Shutdown {
        signal: signal_tx,
        alive: alive_rx,
    };
    (drain, shutdown)
}

/// The listener's side of a drain.
pub struct Shutdown {
    signal: watch::Sender<bool>,
    alive: mpsc::Receiver<()>,
}

impl Shutdown {
    /// Signals every [`Drain`] and waits until all are dropped, for at most `grace`; false
    /// when the grace period ran out first.
    pub async fn drain(mut self, grace: Duration) -> bool {
        let _ = self.signal.send(true);
        tokio::time::timeout(grace, self.alive.recv()).await.is_ok()
    }
}

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
    pub async fn serve<C>(self, conn: C) -> C::Output
    where
        C: Future + GracefulConnection,
    {
        self.serve_until(conn, std::future::pending()).await
    }

    /// As [`Drain::serve`], and also shuts `conn` down gracefully when `end` resolves
    /// first (an idle bound).
    pub async fn serve_until<C>(mut self, conn: C, end: impl Future<Output = ()>) -> C::Output
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
            () = end => {
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
