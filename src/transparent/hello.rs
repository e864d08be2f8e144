//! Reading just enough of a redirected connection to decide where it goes (the TLS
//! ClientHello's SNI, or the first HTTP request head's `Host`), and [`Prefixed`], which
//! replays those bytes to whatever serves the connection next: the interception handshake,
//! hyper, or the splice to the original destination.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// At most this much is read before deciding (a ClientHello or a request head is far
/// smaller; past it the connection is treated as neither).
pub const PEEK_LIMIT: usize = 64 * 1024;

/// What the first bytes of a connection on the TLS listener are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A TLS ClientHello, with its SNI host name if it carries one.
    Tls {
        /// The server name, as sent.
        sni: Option<String>,
    },
    /// Not TLS, or a ClientHello rustls cannot read.
    NotTls,
}

/// Reads from `stream` until its ClientHello is complete; returns every byte read (to be
/// replayed) and what it says. An error is a connection that closed or failed first.
pub async fn client_hello<S: AsyncRead + Unpin>(stream: &mut S) -> io::Result<(Vec<u8>, Hello)> {
    let mut acceptor = rustls::server::Acceptor::default();
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = read_more(stream, &mut chunk, "ClientHello").await?;
        seen.extend_from_slice(&chunk[..n]);
        let mut fresh = &chunk[..n];
        while !fresh.is_empty() {
            if !matches!(acceptor.read_tls(&mut fresh), Ok(read) if read > 0) {
                return Ok((seen, Hello::NotTls));
            }
            match acceptor.accept() {
                Ok(Some(accepted)) => {
                    let sni = accepted.client_hello().server_name().map(str::to_owned);
                    return Ok((seen, Hello::Tls { sni }));
                }
                Ok(None) => {}
                Err(_) => return Ok((seen, Hello::NotTls)),
            }
        }
        if seen.len() > PEEK_LIMIT {
            return Ok((seen, Hello::NotTls));
        }
    }
}

/// Reads from `stream` until its first HTTP/1 request head is complete; returns every byte
/// read and that head's `Host` value (`None`: no `Host`, several, or not HTTP).
pub async fn request_host<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> io::Result<(Vec<u8>, Option<String>)> {
    let mut seen = Vec::new();
    let mut chunk = vec![0u8; 8192];
    loop {
        let n = read_more(stream, &mut chunk, "request head").await?;
        seen.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 100];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&seen) {
            Ok(httparse::Status::Complete(_)) => {
                let mut hosts = req
                    .headers
                    .iter()
                    .filter(|h| h.name.eq_ignore_ascii_case("host"));
                let host = match (hosts.next(), hosts.next()) {
                    (Some(h), None) => std::str::from_utf8(h.value).ok().map(str::to_owned),
                    _ => None,
                };
                return Ok((seen, host));
            }
            Ok(httparse::Status::Partial) if seen.len() <= PEEK_LIMIT => {}
            _ => return Ok((seen, None)),
        }
    }
}

async fn read_more<S: AsyncRead + Unpin>(
    stream: &mut S,
    chunk: &mut [u8],
    what: &str,
) -> io::Result<usize> {
    match stream.read(chunk).await? {
        0 => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("closed before its {what} was complete"),
        )),
        n => Ok(n),
    }
}

/// A stream whose first bytes, already read to decide where it goes, are read again.
pub struct Prefixed<S> {
    head: Bytes,
    stream: S,
}

impl<S> Prefixed<S> {
    /// `stream`, with `head` read before it.
    pub fn new(head: Vec<u8>, stream: S) -> Self {
        Prefixed {
            head: Bytes::from(head),
            stream,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.is_empty() {
            return Pin::new(&mut self.stream).poll_read(cx, buf);
        }
        let n = self.head.len().min(buf.remaining());
        buf.put_slice(&self.head[..n]);
        self.head.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
