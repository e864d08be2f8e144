//! Body types: one boxed body for everything the proxy sends, and the capped copy that lets
//! the one 401 retry replay a request body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

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

/// A request body on its way upstream, and whether it can be sent a second time.
pub enum Outgoing {
    /// Buffered (no body, or a known length within the limit): replayable.
    Buffered(Bytes),
    /// Streamed while a copy is kept up to the limit: replayable if it ended within it.
    Teed(Arc<Mutex<TeeCopy>>),
    /// Streamed with no copy: not replayable.
    Streamed,
}

impl Outgoing {
    /// The body for a second attempt, if the first one's body can be replayed.
    pub fn replay(&self) -> Option<Body> {
        match self {
            Outgoing::Buffered(bytes) => Some(full(bytes.clone())),
            Outgoing::Teed(copy) => {
                let copy = copy.lock().unwrap_or_else(|e| e.into_inner());
                if copy.complete && !copy.overflowed {
                    let mut all = BytesMut::with_capacity(copy.len);
                    for chunk in &copy.chunks {
                        all.extend_from_slice(chunk);
                    }
                    Some(full(all.freeze()))
                } else {
                    None
                }
            }
            Outgoing::Streamed => None,
        }
    }
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
                ..TeeCopy::default()
            }));
            let tee = Tee {
                inner: body,
                copy: copy.clone(),
            };
            Ok((boxed(tee), Outgoing::Teed(copy)))
        }
    }
}

/// The copy a [`Tee`] keeps.
#[derive(Default)]
pub struct TeeCopy {
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    overflowed: bool,
    complete: bool,
}

/// Passes a body through, keeping a copy of its data up to a limit.
struct Tee<B> {
    inner: B,
    copy: Arc<Mutex<TeeCopy>>,
}

impl<B> HttpBody for Tee<B>
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
        let mut copy = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !copy.overflowed {
                        if copy.len + data.len() > copy.limit {
                            copy.overflowed = true;
                            copy.chunks = Vec::new();
                        } else {
                            copy.len += data.len();
                            copy.chunks.push(data.clone());
                        }
                    }
                } else {
                    // Trailers cannot be replayed from a plain copy.
                    copy.overflowed = true;
                }
            }
            Poll::Ready(None) => copy.complete = true,
            Poll::Ready(Some(Err(_))) => copy.overflowed = true,
            Poll::Pending => {}
        }
        drop(copy);
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
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

    #[tokio::test]
    async fn known_small_body_is_buffered_and_replayable() {
        let (body, out) = prepare(Full::new(Bytes::from("hello")), Some(5), 10)
            .await
            .unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
        let again = out.replay().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(again, "hello");
    }

    #[tokio::test]
    async fn known_large_body_streams_without_replay() {
        let (_, out) = prepare(Full::new(Bytes::from("hello world")), Some(11), 10)
            .await
            .unwrap();
        assert!(out.replay().is_none());
    }

    #[tokio::test]
    async fn chunked_body_replays_only_once_complete_and_within_limit() {
        let (body, out) = prepare(chunked(&["ab", "cd"]), None, 10).await.unwrap();
        assert!(out.replay().is_none(), "not complete yet");
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
        let again = out.replay().unwrap().collect().await.unwrap().to_bytes();
        assert_eq!(again, "abcd");

        let (body, out) = prepare(chunked(&["abcdef", "ghijkl"]), None, 10)
            .await
            .unwrap();
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghijkl");
        assert!(out.replay().is_none(), "over the limit");
    }
}
