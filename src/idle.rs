//! Idle bounds a caller cannot stretch: a spliced tunnel with no bytes either way, and a
//! served connection with no request in flight, end after a set time.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

/// When something last happened, as milliseconds since a start instant.
struct Clock {
    start: Instant,
    last_ms: AtomicU64,
}

impl Clock {
    fn new() -> Arc<Clock> {
        Arc::new(Clock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Release);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }
}

/// A stream whose reads mark the clock.
struct Watched<'a, T> {
    inner: &'a mut T,
    clock: &'a Clock,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut *self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.clock.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Waits until `clock` shows nothing for `idle` and `quiet()` holds; while it does not,
/// waits for `woken` (the last request ended) or another `idle`, not a busy loop.
async fn idle_for(clock: &Clock, idle: Duration, quiet: impl Fn() -> bool, woken: &Notify) {
    loop {
        let due = clock.last() + idle;
        if Instant::now() < due {
            tokio::time::sleep_until(due).await;
        } else if quiet() {
            return;
        } else {
            tokio::select! {
                () = woken.notified() => {}
                () = tokio::time::sleep(idle) => {}
            }
        }
    }
}

/// Whether a served connection ended on hyper's header read timeout (anywhere in the
/// chain of `err`'s sources).
pub fn header_timed_out(err: &(dyn std::error::Error + 'static)) -> bool {
    std::iter::successors(Some(err), |e| e.source()).any(|e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
    })
}

/// How a splice ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Spliced {
    /// One side closed (or failed).
    Closed,
    /// No byte either way for the idle bound.
    Idle,
}

/// Copies bytes both ways between `a` and `b` until one closes, or until no byte has moved
/// either way for `idle`.
pub async fn splice<A, B>(a: &mut A, b: &mut B, idle: Duration) -> Spliced
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (clock, never) = (Clock::new(), Notify::new());
    let mut a = Watched {
        inner: a,
        clock: &clock,
    };
    let mut b = Watched {
        inner: b,
        clock: &clock,
    };
    tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut a, &mut b) => Spliced::Closed,
        () = idle_for(&clock, idle, || true, &never) => Spliced::Idle,
    }
}

/// Requests in flight on one served connection, and when the last one ended.
#[derive(Clone)]
pub struct InFlight {
    clock: Arc<Clock>,
    open: Arc<AtomicUsize>,
    ended: Arc<Notify>,
}

impl InFlight {
    /// A connection with nothing in flight yet.
    pub fn new() -> InFlight {
        InFlight {
            clock: Clock::new(),
            open: Arc::default(),
            ended: Arc::default(),
        }
    }

    /// Marks a request in flight until the guard drops.
    pub fn begin(&self) -> Request {
        self.open.fetch_add(1, Ordering::AcqRel);
        Request(self.clone())
    }

    /// Resolves once no request has been in flight for `idle`.
    pub async fn idle_for(&self, idle: Duration) {
        let quiet = || self.open.load(Ordering::Acquire) == 0;
        idle_for(&self.clock, idle, quiet, &self.ended).await;
    }
}

impl Default for InFlight {
    fn default() -> Self {
        InFlight::new()
    }
}

/// One request in flight ([`InFlight::begin`]).
pub struct Request(InFlight);

impl Drop for Request {
    fn drop(&mut self) {
        self.0.clock.touch();
        if self.0.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.ended.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_idle_only_with_nothing_in_flight() {
        let flight = InFlight::new();
        let busy = flight.begin();
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            flight.idle_for(Duration::from_secs(1)),
        );
        assert!(waited.await.is_err(), "a request in flight is not idle");
        drop(busy);
        let started = Instant::now();
        flight.idle_for(Duration::from_secs(1)).await;
        assert!(started.elapsed() >= Duration::from_secs(1));
    }
}
