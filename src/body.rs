//! Body types: one boxed body for everything the proxy sends, and the capped copy that lets
//! the one 401 retry replay a request body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

/// Boxed error of any body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a proxied body: whatever the underlying body reported. A concrete type (not a
/// bare boxed trait object) keeps hyper's `Into<BoxError>` bounds simple for the compiler.
#[derive(Debug)]
pub struct BodyError(BoxError);

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// The body type the proxy sends in both directions.
pub type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, BodyError>;

/// An empty body.
pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body holding these bytes.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// Boxes any body whose errors convert to [`BoxError`].
pub fn boxed<B>(body: B) -> Body
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(|e| BodyError(e.into())).boxed_unsync()
}

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

/// The bounds the forwarder uses.
pub const REPLAY_READ: ReadBounds = ReadBounds {
    total: Duration::from_secs(10),
    idle: Duration::from_secs(2),
};

/// A request body on its way upstream, and whether it can be sent a second time.
pub enum Outgoing {
    /// Buffered (no body, or a known length within the limit): replayable.
    Buffered(Bytes),
    /// Streamed while a copy is kept up to the limit: replayable once it has ended within it.
    Teed(Arc<Mutex<TeeCopy>>),
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

impl Outgoing {
    /// Whether a second attempt may still be possible (no copy kept, or a copy that passed
    /// the limit, means never).
    pub fn may_replay(&self) -> bool {
        match self {
            Outgoing::Buffered(_) => true,
            Outgoing::Teed(copy) => !lock(copy).overflowed,
            Outgoing::Streamed => false,
        }
    }

    /// The body for a second attempt. A streamed body the upstream answered before reading
    /// to its end is read to its end now (up to the limit, within `bounds`), and the first
    /// attempt's body stops there: it is being abandoned.
    pub async fn replay(&self, bounds: ReadBounds) -> Result<Body, NoReplay> {
        match self {
            Outgoing::Buffered(bytes) => Ok(full(bytes.clone())),
            Outgoing::Teed(copy) => {
                let source = {
                    let mut st = lock(copy);
                    st.detached = true;
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
            Outgoing::Streamed => Err(NoReplay::TooLarge),
        }
    }
}

/// Reads what is left of `source` into the copy, stopping at its end or the limit; false if
/// no frame came for `idle`.
async fn read_rest(mut source: Body, copy: &Mutex<TeeCopy>, idle: Duration) -> bool {
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

fn lock(copy: &Mutex<TeeCopy>) -> std::sync::MutexGuard<'_, TeeCopy> {
    copy.lock().unwrap_or_else(|e| e.into_inner())
}

/// Prepares a request body for a route whose 401 may be retried.
///
/// - no body, or a `Content-Length` within `limit`: read fully (a bounded, known size);
/// - a `Content-Length` above `limit`: streamed untouched, its 401 returned as is;
/// - unknown length (chunked, HTTP/2 data): streamed as it comes (so bidirectional streams
///   keep working) while a copy is kept until it passes `limit`.
pub async fn prepare<B>(
    body: B,
    content_length: Option<u64>,
    limit: usize,
) -> Result<(Body, Outgoing), BoxError>
where
    B: HttpBody<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    if body.is_end_stream() {
        return Ok((empty(), Outgoing::Buffered(Bytes::new())));
    }
    match content_length {
        Some(n) if n <= limit as u64 => {
            let bytes = http_body_util::Limited::new(body, limit)
                .collect()
                .await?
                .to_bytes();
            Ok((full(bytes.clone()), Outgoing::Buffered(bytes)))
        }
        Some(_) => Ok((boxed(body), Outgoing::Streamed)),
        None => {
            let copy = Arc::new(Mutex::new(TeeCopy {
                limit,
                source: Some(boxed(body)),
                ..TeeCopy::default()
            }));
            let tee = Tee { copy: copy.clone() };
            Ok((tee.boxed_unsync(), Outgoing::Teed(copy)))
        }
    }
}

/// The caller's body of unknown length and the copy kept of it. The body lives here, not in
/// the [`Tee`], so that a replay can finish reading it after the upstream stopped.
#[derive(Default)]
pub struct TeeCopy {
    source: Option<Body>,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
    complete: bool,
    /// A replay took over: the first attempt's body ends with an error.
    detached: bool,
}

impl TeeCopy {
    /// Records one polled frame; `ended` is the source's `is_end_stream()` after it.
    fn record(&mut self, frame: Option<&Result<Frame<Bytes>, BodyError>>, ended: bool) {
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !self.overflowed {
                        if self.len + data.len() > self.limit {
                            self.overflowed = true;
                            self.chunks = Vec::new();
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
    copy: Arc<Mutex<TeeCopy>>,
}

/// The first attempt's body was taken over by the replay.
#[derive(Debug, thiserror::Error)]
#[error("request body taken over by the retry")]
struct Detached;

impl HttpBody for Tee {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut st = lock(&self.copy);
        if st.detached {
            return Poll::Ready(Some(Err(BodyError(Box::new(Detached)))));
        }
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

/// Passes a request body through without the trailer fields that carry credentials
/// (`authorization`, `dpop`, `proxy-*`): on a route the proxy owns the credential, and a
/// trailer is as good as a header to many servers. Other trailers pass.
pub struct StripCredentialTrailers<B> {
    inner: B,
}

impl<B> StripCredentialTrailers<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        StripCredentialTrailers { inner }
    }
}

/// Whether a trailer field names a credential the proxy owns on a route.
fn is_credential_field(name: &http::HeaderName) -> bool {
    let name = name.as_str();
    name == "authorization" || name == "dpop" || name.starts_with("proxy-")
}

impl<B> HttpBody for StripCredentialTrailers<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        let Poll::Ready(Some(Ok(frame))) = polled else {
            return polled;
        };
        let frame = match frame.into_trailers() {
            Ok(mut trailers) => {
                let names: Vec<http::HeaderName> = trailers
                    .keys()
                    .filter(|name| is_credential_field(name))
                    .cloned()
                    .collect();
                for name in names {
                    trailers.remove(name);
                }
                Frame::trailers(trailers)
            }
            Err(frame) => frame,
        };
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::StreamBody;

    fn chunked(parts: &[&'static str]) -> impl HttpBody<Data = Bytes, Error = BoxError> + Unpin {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = parts
            .iter()
            .map(|p| Ok(Frame::data(Bytes::from_static(p.as_bytes()))))
            .collect();
        StreamBody::new(futures_util::stream::iter(frames))
    }

    const WAIT: ReadBounds = ReadBounds {
        total: Duration::from_secs(5),
        idle: Duration::from_secs(5),
    };

    async fn text(body: Result<Body, NoReplay>) -> Bytes {
        body.unwrap().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn known_small_body_is_buffered_and_replayable() {
        let (body, out) = prepare(Full::new(Bytes::from("hello")), Some(5), 10)
            .await
            .unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        assert_eq!(text(out.replay(WAIT).await).await, "hello");
    }

    #[tokio::test]
    async fn known_large_body_streams_without_replay() {
        let (_, out) = prepare(Full::new(Bytes::from("hello world")), Some(11), 10)
            .await
            .unwrap();
        assert!(!out.may_replay());
        assert_eq!(out.replay(WAIT).await.err(), Some(NoReplay::TooLarge));
    }

    #[tokio::test]
    async fn chunked_body_replays_when_within_limit() {
        let (body, out) = prepare(chunked(&["ab", "cd"]), None, 10).await.unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
        assert_eq!(text(out.replay(WAIT).await).await, "abcd");

        let (body, out) = prepare(chunked(&["abcdef", "ghijkl"]), None, 10)
            .await
            .unwrap();
        assert!(out.may_replay(), "not over the limit yet");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghijkl");
        assert!(!out.may_replay());
        assert_eq!(out.replay(WAIT).await.err(), Some(NoReplay::TooLarge));
    }

    #[tokio::test]
    async fn a_body_the_upstream_stopped_reading_is_read_to_its_end_for_the_replay() {
        let (mut body, out) = prepare(chunked(&["ab", "cd", "ef"]), None, 10)
            .await
            .unwrap();
        // The upstream answered after one chunk.
        let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(first, "ab");
        assert_eq!(text(out.replay(WAIT).await).await, "abcdef");
        assert!(
            body.frame().await.unwrap().is_err(),
            "the abandoned attempt's body stops with an error"
        );
    }

    #[tokio::test]
    async fn a_body_read_up_to_its_end_of_stream_mark_is_complete() {
        // HTTP/2: the last DATA frame carries END_STREAM; hyper never polls for `None`.
        let (mut body, out) = prepare(Full::new(Bytes::from("abcd")), None, 10)
            .await
            .unwrap();
        assert_eq!(
            body.frame().await.unwrap().unwrap().into_data().unwrap(),
            "abcd"
        );
        assert!(body.is_end_stream());
        assert_eq!(text(out.replay(WAIT).await).await, "abcd");
    }

    #[tokio::test]
    async fn a_caller_that_never_finishes_its_body_gets_no_replay() {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![Ok(Frame::data(Bytes::from("ab")))];
        let endless = futures_util::StreamExt::chain(
            futures_util::stream::iter(frames),
            futures_util::stream::pending(),
        );
        let (_body, out) = prepare(StreamBody::new(endless), None, 10).await.unwrap();
        let started = std::time::Instant::now();
        let total = ReadBounds {
            total: Duration::from_millis(100),
            idle: Duration::from_secs(5),
        };
        assert_eq!(out.replay(total).await.err(), Some(NoReplay::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_caller_that_pauses_longer_than_the_idle_bound_gets_no_replay() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        let (_body, out) = prepare(StreamBody::new(Box::pin(stream)), None, 100)
            .await
            .unwrap();
        tx.send(Ok(Frame::data(Bytes::from("ab")))).await.unwrap();
        let bounds = ReadBounds {
            total: Duration::from_secs(10),
            idle: Duration::from_millis(100),
        };
        let started = std::time::Instant::now();
        assert_eq!(out.replay(bounds).await.err(), Some(NoReplay::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(tx);
    }
}
