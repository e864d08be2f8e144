//! The request path's named steps seen from outside: the per-request resend budget against
//! an upstream that keeps asking for a new DPoP nonce, and a connect timeout recognised by
//! its cause, not by its text.

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::{Harness, Setup, SCOPE};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// A plain-HTTP upstream that answers every request with a DPoP nonce challenge carrying a
/// nonce it has never issued before; counts the requests.
async fn nonce_every_time() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service = service_fn(move |_req| {
                    let n = seen.fetch_add(1, Ordering::SeqCst);
                    async move {
                        let response = Response::builder()
                            .status(StatusCode::UNAUTHORIZED)
                            .header("www-authenticate", r#"DPoP error="use_dpop_nonce""#)
                            .header("dpop-nonce", format!("nonce-{n}"))
                            .body(Full::new(Bytes::from_static(b"nonce please")))
                            .unwrap();
                        Ok::<_, Infallible>(response)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_second_nonce_challenge_is_answered_to_the_caller_not_with_a_new_token() {
    let (upstream, requests) = nonce_every_time().await;
    let h = Harness::start(Setup {
        route_extra: format!(
            "scopes = [\"{SCOPE}\"]\n\n[[route]]\nname = \"nonces\"\nhost = \"127.0.0.1\"\n\
             port = {}\nclient = \"test\"\nscopes = [\"{SCOPE}\"]\ndpop = true\n\
             allow_plaintext = true\n",
            upstream.port()
        ),
        ..Setup::default()
    })
    .await;
    let res = h
        .client()
        .get(format!("http://127.0.0.1:{}/x", upstream.port()))
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        401,
        "the second challenge goes back to the caller"
    );
    assert_eq!(
        requests.load(Ordering::SeqCst),
        2,
        "one nonce resend, then no fresh-token resend"
    );
    assert_eq!(
        h.auth.token_requests(),
        1,
        "a nonce challenge is not a reason to throw the token away"
    );
    h.stop().await;
}

/// A loopback listener that never accepts, with its backlog filled so that one more connect
/// hangs (Linux drops the SYN of a full accept queue), and the connections that fill it.
async fn unanswered_listener() -> (SocketAddr, TcpSocketHold) {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut held = Vec::new();
    for _ in 0..64 {
        match tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => held.push(stream),
            _ => return (addr, TcpSocketHold(listener, held)),
        }
    }
    panic!("the backlog of {addr} never filled");
}

/// Keeps the listener and the connections filling its backlog open.
struct TcpSocketHold(
    #[allow(dead_code)] TcpListener,
    #[allow(dead_code)] Vec<TcpStream>,
);

#[tokio::test]
async fn a_connect_timeout_is_a_504_connection_timeout() {
    let h = Harness::start(Setup::default()).await;
    let (addr, _hold) = unanswered_listener().await;
    let started = Instant::now();
    let res = h
        .client()
        .get(format!("http://{addr}/"))
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .unwrap();
    let status = res.status();
    let proxy_status = res
        .headers()
        .get("proxy-status")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    assert_eq!(status, 504, "{proxy_status}");
    assert!(
        proxy_status.contains("connection_timeout"),
        "{proxy_status}"
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    h.stop().await;
}
