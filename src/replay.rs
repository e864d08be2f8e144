//! The replayable request body: [`prepare`] sends a route's request body upstream while
//! keeping what a resend needs (all of it when small and of known length, a copy capped at
//! `retry_body_limit` when its length is unknown), and [`ReplayBody::replay`] gives the body
//! for the second attempt or says why there is none ([`NoReplay`]).
//!
//! Every copy is paid for from one [`ReplayBudget`] (`limits.replay_buffer_total_bytes`): a
//! known length reserves its size before it is read, a teed body reserves as chunks arrive
//! and stops copying when refused. A body the budget cannot pay for streams without a copy
//! (its 401 is returned as is); the bytes go back when the request finishes.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

use crate::body::{boxed, empty, full, Body, BodyError, BoxError};

/// How long a replay waits for the rest of a caller's body after a 401 that arrived before
/// the upstream had read it (APIs often answer from the headers alone).
#[derive(Debug, Clone, Copy)]
pub struct ReadBounds {
    /// At most this long in all.
    pub total: Duration,
    /// At most this long without a new frame: a caller that stopped sending (a bidirectional
    /// stream waiting for the answer) gets the 401 soon.
    pub idle: Duration,
}

impl ReadBounds {
    /// The forwarder's bounds: `total` is `limits.body_timeout_secs`; a pause longer than
    /// 2 s (or than `total`) ends the wait sooner.
    pub fn within(total: Duration) -> ReadBounds {
        ReadBounds {
            total,
            idle: total.min(Duration::from_secs(2)),
        }
    }
}

/// The bytes all replay copies hold together, shared by every request (and kept across
/// reloads, so requests in flight give their bytes back to the same count).
#[derive(Debug, Default)]
pub struct ReplayBudget {
    in_use: AtomicUsize,
}

impl ReplayBudget {
    /// Bytes currently held by replay copies.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire)
    }

    /// An empty reservation against this budget, which may grow up to `total` bytes in all.
    pub fn reservation(self: &Arc<Self>, total: usize) -> Reservation {
        Reservation {
            budget: self.clone(),
            total,
            held: 0,
        }
    }
}

/// Bytes one request's replay copy holds from the [`ReplayBudget`]; given back on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<ReplayBudget>,
    total: usize,
    held: usize,
}

impl Reservation {
    /// Takes `n` more bytes if the budget has them.
    fn grow(&mut self, n: usize) -> bool {
        let total = self.total;
        let taken = self
            .budget
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(n).filter(|&after| after <= total)
            })
            .is_ok();
        if taken {
            self.held += n;
        } else {
            crate::metrics::replay_budget_refused();
        }
        taken
    }

    /// Gives back everything held (the copy was dropped).
    fn release(&mut self) {
        self.budget.in_use.fetch_sub(self.held, Ordering::AcqRel);
        self.held = 0;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

/// A request body on its way upstream, and whether it can be sent a second time (the
/// handle the forwarder keeps while the first attempt's body streams).
pub enum ReplayBody {
    /// Buffered (no body, or a known length within the limit and the budget): replayable.
    Buffered(
        Bytes,
        #[allow(dead_code, reason = "held for its Drop")] Reservation,
    ),
    /// Streamed while a copy is kept up to the limit: replayable once it has ended within it.
    Teed(Arc<Mutex<CappedCopy>>),
    /// Streamed with no copy: not replayable.
    Streamed,
}

/// Why a body cannot be sent a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoReplay {
    /// Longer than `retry_body_limit` (or it carried trailers, or failed).
    TooLarge,
    /// The caller had not finished sending it within the [`ReadBounds`].
    TimedOut,
}

impl ReplayBody {
    /// Whether a second attempt may still be possible (no copy kept, or a copy that passed
    /// the limit, means never).
    pub fn may_replay(&self) -> bool {
        match self {
            ReplayBody::Buffered(..) => true,
            ReplayBody::Teed(copy) => !lock(copy).overflowed,
            ReplayBody::Streamed => false,
        }
    }

    /// The body for a second attempt. A streamed body the upstream answered before reading
    /// to its end is read to its end now (up to the limit, within `bounds`); the first
    /// attempt's body, already answered, ends cleanly where it was, whether the replay then
    /// succeeds or not, so the response it got (returned as is when there is no replay) is
    /// never cut by a request-body error.
    pub async fn replay(&self, bounds: ReadBounds) -> Result<Body, NoReplay> {
        match self {
            ReplayBody::Buffered(bytes, _) => Ok(full(bytes.clone())),
            ReplayBody::Teed(copy) => {
                let source = {
                    let mut st = lock(copy);
                    if st.complete || st.overflowed {
                        None
                    } else {
                        st.source.take()
                    }
                };
                if let Some(source) = source {
                    let read = read_rest(source, copy, bounds.idle);
                    if !matches!(tokio::time::timeout(bounds.total, read).await, Ok(true)) {
                        return Err(NoReplay::TimedOut);
                    }
                }
                let st = lock(copy);
                if st.complete && !st.overflowed {
                    let mut all = BytesMut::with_capacity(st.len);
                    for chunk in &st.chunks {
                        all.extend_from_slice(chunk);
                    }
                    Ok(full(all.freeze()))
                } else {
                    Err(NoReplay::TooLarge)
                }
            }
            ReplayBody::Streamed => Err(NoReplay::TooLarge),
        }
    }
}

/// Reads what is left of `source` into the copy, stopping at its end or the limit; false if
/// no frame came for `idle`.
async fn read_rest(mut source: Body, copy: &Mutex<CappedCopy>, idle: Duration) -> bool {
    loop {
        if source.is_end_stream() {
            lock(copy).complete = true;
            return true;
        }
        let Ok(frame) = tokio::time::timeout(idle, source.frame()).await else {
            return false;
        };
        let mut st = lock(copy);
        st.record(frame.as_ref(), source.is_end_stream());
        if st.complete || st.overflowed {
            return true;
        }
    }
}

fn lock(copy: &Mutex<CappedCopy>) -> std::sync::MutexGuard<'_, CappedCopy> {
    crate::sync::lock(copy)
}

/// Prepares a request body for a route whose 401 may be retried.
///
/// - no body, or a `Content-Length` within `limit` that `reservation` can pay for: read
///   fully (a bounded, known size) within `read`, else an error;
/// - a `Content-Length` above `limit` or beyond the budget: streamed untouched, its 401
///   returned as is;
/// - unknown length (chunked, HTTP/2 data): streamed as it comes (so bidirectional streams
///   keep working) while a copy is kept until it passes `limit` or the budget.
pub async fn prepare<B>(
    body: B,
    content_length: Option<u64>,
    limit: usize,
    mut reservation: Reservation,
    read: Duration,
) -> Result<(Body, ReplayBody), BoxError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok((empty(), ReplayBody::Buffered(Bytes::new(), reservation)));
    }
    match content_length {
        Some(n) if n <= limit as u64 && reservation.grow(n as usize) => {
            let collect = http_body_util::Limited::new(body, limit).collect();
            let collected = tokio::time::timeout(read, collect)
                .await
                .map_err(|_| BodyTimedOut(read.as_secs()))??;
            let trailers = collected.trailers().cloned();
            let bytes = collected.to_bytes();
            match trailers {
                None => Ok((
                    full(bytes.clone()),
                    ReplayBody::Buffered(bytes, reservation),
                )),
                // HTTP/2 allows trailers after a body of known length: they go on, and such
                // a body is not replayed (as a teed body with trailers is not).
                Some(trailers) => {
                    let frames: [Result<Frame<Bytes>, BoxError>; 2] =
                        [Ok(Frame::data(bytes)), Ok(Frame::trailers(trailers))];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok((boxed(body), ReplayBody::Streamed))
                }
            }
        }
        Some(_) => Ok((boxed(body), ReplayBody::Streamed)),
        None => {
            let copy = Arc::new(Mutex::new(CappedCopy {
                limit,
                source: Some(boxed(body)),
                reservation: Some(reservation),
                ..CappedCopy::default()
            }));
            let tee = Tee { copy: copy.clone() };
            Ok((tee.boxed_unsync(), ReplayBody::Teed(copy)))
        }
    }
}

/// The caller did not send its whole (known-length) body within `limits.body_timeout_secs`.
#[derive(Debug, thiserror::Error)]
#[error("the caller did not send the body within limits.body_timeout_secs ({0} s)")]
pub struct BodyTimedOut(pub u64);

/// The caller's body of unknown length and the copy kept of it. The body lives here, not in
/// the [`Tee`], so that a replay can finish reading it after the upstream stopped.
#[derive(Default)]
pub struct CappedCopy {
    source: Option<Body>,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
    complete: bool,
    /// The copy's bytes, paid from the budget (`None` only in unit tests' defaults).
    reservation: Option<Reservation>,
}

impl CappedCopy {
    /// Records one polled frame; `ended` is the source's `is_end_stream()` after it.
    fn record(&mut self, frame: Option<&Result<Frame<Bytes>, BodyError>>, ended: bool) {
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !self.overflowed {
                        let paid = self.reservation.as_mut().is_none_or(|r| r.grow(data.len()));
                        if self.len + data.len() > self.limit || !paid {
                            self.overflowed = true;
                            self.chunks = Vec::new();
                            if let Some(r) = self.reservation.as_mut() {
                                r.release();
                            }
                        } else {
                            self.len += data.len();
                            self.chunks.push(data.clone());
                        }
                    }
                    // HTTP/2 marks the last DATA frame: the body may never be polled to `None`.
                    if ended {
                        self.complete = true;
                    }
                } else {
                    // Trailers cannot be replayed from a plain copy.
                    self.overflowed = true;
                }
            }
            None => self.complete = true,
            Some(Err(_)) => self.overflowed = true,
        }
    }
}

/// The first attempt's body: passes the caller's body through, keeping a copy of its data up
/// to a limit.
struct Tee {
    copy: Arc<Mutex<CappedCopy>>,
}

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut st = lock(&self.copy);
        // Taken by a replay: the upstream has answered; end here.
        let Some(source) = st.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(&mut *source).poll_frame(cx);
        if let Poll::Ready(frame) = &polled {
            let ended = source.is_end_stream();
            st.record(frame.as_ref(), ended);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        let st = lock(&self.copy);
        st.complete || st.source.as_ref().is_none_or(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        lock(&self.copy)
            .source
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |s| s.size_hint())
    }
}

#[cfg(test)]
mod tests;
