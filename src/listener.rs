//! The accept loop: one task per caller connection, HTTP/1.1 with upgrades (CONNECT), and a
//! graceful shutdown that stops accepting, lets in-flight requests finish within a grace
//! period, then returns.
//!
//! Limits (`[limits]`): past `max_connections` in all or `max_connections_per_source` from
//! one peer address, a new connection is closed at once (as squid and envoy do), and the
//! ones open keep working. The CONNECT line and each request head must arrive within
//! `header_timeout_secs`; on HTTP/1.1 that also bounds the wait for the next request on a
//! kept-alive connection (hyper times both alike). Limits are read when a connection is
//! accepted: a reload applies to new connections.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};

use tokio::net::{TcpListener, TcpStream};

use crate::config::LimitSettings;
use crate::proxy::SharedProxy;

/// Caller connections open now, in all and per peer address.
#[derive(Debug, Default)]
pub struct Occupancy {
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// One admitted connection's place; given back on drop.
#[derive(Debug)]
pub struct Place {
    occupancy: Arc<Occupancy>,
    peer: IpAddr,
}

impl Occupancy {
    /// A place for a connection from `peer`, or the limit (a metric label) it would pass.
    pub fn admit(
        self: &Arc<Self>,
        peer: IpAddr,
        limits: &LimitSettings,
    ) -> Result<Place, &'static str> {
        let mut open = crate::sync::lock(&self.open);
        let (total, by_source) = &mut *open;
        if *total >= limits.max_connections {
            return Err("max_connections");
        }
        let from_peer = by_source.entry(peer).or_insert(0);
        if *from_peer >= limits.max_connections_per_source {
            return Err("per_source");
        }
        *from_peer += 1;
        *total += 1;
        crate::metrics::open_connections(1.0);
        Ok(Place {
            occupancy: self.clone(),
            peer,
        })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        crate::metrics::open_connections(-1.0);
        let mut open = crate::sync::lock(&self.occupancy.open);
        let (total, by_source) = &mut *open;
        *total -= 1;
        if let Some(n) = by_source.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&self.peer);
            }
        }
    }
}

/// A caller's socket holding its [`Place`]: the place is given back when the socket closes,
/// after any CONNECT tunnel or interception over it has ended too.
pub struct Placed {
    stream: TcpStream,
    _place: Place,
}

impl Placed {
    /// The socket underneath (for socket options such as the original destination).
    pub fn tcp(&self) -> &TcpStream {
        &self.stream
    }
}

impl tokio::io::AsyncRead for Placed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Placed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Counts and logs a connection that ended on the header read timeout.
pub(crate) fn ended(err: &hyper::Error, peer: SocketAddr) {
    if crate::idle::header_timed_out(err) {
        crate::metrics::connection_closed("header_timeout");
        tracing::debug!(%peer, "connection closed: header_timeout_secs passed");
    } else {
        tracing::debug!(%peer, error = %err, "client connection ended");
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
    serve_each(proxy, listener, "proxy", shutdown, grace, forward_proxy).await
}

/// One admitted caller connection and what serves it: every listener (the forward proxy's,
/// the transparent ones) hands the connection, its peer address and its drain to one of
/// these, so whatever is decided per connection (limits now; caller identity by source
/// address) is decided in one place, [`serve_each`].
pub struct Connection {
    /// The proxy in force when the connection was accepted.
    pub proxy: SharedProxy,
    /// The caller's socket, holding its place under `[limits]`.
    pub stream: Placed,
    /// The caller's address.
    pub peer: SocketAddr,
    /// Held until the connection (and any tunnel over it) ends.
    pub drain: crate::drain::Drain,
    /// `[limits]` as read when the connection was accepted.
    pub limits: LimitSettings,
}

/// The accept loop shared by every listener: admits each connection under `[limits]`,
/// serves it with `serve` on its own task until `shutdown` resolves, then drains for at most
/// `grace`.
pub async fn serve_each<F, Fut>(
    proxy: SharedProxy,
    listener: TcpListener,
    name: &'static str,
    shutdown: impl Future<Output = ()>,
    grace: Duration,
    serve: F,
) where
    F: Fn(Connection) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (drain, ending) = crate::drain::new();
    let mut shutdown = pin!(shutdown);
    let mut backoff = AcceptBackoff::default();
    let occupancy = Arc::new(Occupancy::default());
    loop {
        let (stream, peer) = tokio::select! {
            accepted = accept(&listener, &mut backoff, name) => accepted,
            () = &mut shutdown => break,
        };
        let limits = proxy.load().config.limits.clone();
        let place = match occupancy.admit(peer.ip(), &limits) {
            Ok(place) => place,
            Err(reason) => {
                crate::metrics::connection_refused(reason);
                tracing::debug!(%peer, reason, listener = name, "connection refused: limits");
                drop(stream);
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let stream = Placed {
            stream,
            _place: place,
        };
        tokio::spawn(serve(Connection {
            proxy: proxy.clone(),
            stream,
            peer,
            drain: drain.clone(),
            limits,
        }));
    }
    drop(listener);
    tracing::info!(listener = name, "shutting down: draining connections");
    drop(drain);
    if !ending.drain(grace).await {
        tracing::warn!(
            grace_secs = grace.as_secs(),
            listener = name,
            "grace period over; closing remaining connections"
        );
    }
}

/// The forward proxy's connection: HTTP/1.1, `CONNECT` and absolute-form requests.
async fn forward_proxy(conn: Connection) {
    let Connection {
        proxy,
        stream,
        peer,
        drain,
        limits,
    } = conn;
    let service_drain = drain.clone();
    let service = service_fn(move |req| {
        let proxy = proxy.clone();
        let drain = service_drain.clone();
        async move { Ok::<_, Infallible>(crate::connect::handle(proxy, req, peer, drain).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    if let Err(err) = drain.serve(conn).await {
        ended(&err, peer);
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
