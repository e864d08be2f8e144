//! Body types: one boxed body for everything the proxy sends, and the filter that keeps
//! credential trailers off a route. The replayable request body is in `replay.rs`.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Empty, Full};

/// Boxed error of any body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a proxied body: whatever the underlying body reported. A concrete type (not a
/// bare boxed trait object) keeps hyper's `Into<BoxError>` bounds simple for the compiler.
#[derive(Debug)]
pub struct BodyError(pub(crate) BoxError);

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

/// Passes a request body through without the trailer fields that carry credentials
/// (`authorization`, `dpop`, `proxy-*`, and the header the route puts its credential in):
/// on a route the proxy owns the credential, and a trailer is as good as a header to many
/// servers. Other trailers pass.
pub struct StripCredentialTrailers<B> {
    inner: B,
    also: Option<http::HeaderName>,
}

impl<B> StripCredentialTrailers<B> {
    /// Wraps `inner`.
    pub fn new(inner: B) -> Self {
        StripCredentialTrailers { inner, also: None }
    }

    /// Strips `name` too: the header a route puts its credential in (`token_header`,
    /// `credential.header`).
    pub fn also(mut self, name: Option<http::HeaderName>) -> Self {
        self.also = name;
        self
    }

    /// Whether a trailer field names a credential the proxy owns on a route.
    fn is_credential_field(&self, name: &http::HeaderName) -> bool {
        let text = name.as_str();
        text == "authorization"
            || text == "dpop"
            || text.starts_with("proxy-")
            || self.also.as_ref() == Some(name)
    }
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
                    .filter(|name| self.is_credential_field(name))
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
