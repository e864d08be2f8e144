//! Issue 12, "limits that hold": every wait a caller controls is bounded, connections are
//! capped in all and per source, and replay copies share one memory budget. Real loopback
//! sockets, small timeouts (1 s), bounded loops.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::{connect_tunnel, Harness, Setup};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Every timeout at 1 s; the other limits as given in `extra`.
fn short_timeouts(extra: &str) -> Setup {
    Setup {
        limits: format!(
            "handshake_timeout_secs = 1\nheader_timeout_secs = 1\nbody_timeout_secs = 1\n\
             idle_timeout_secs = 1\ntunnel_idle_timeout_secs = 1\n{extra}"
        ),
        ..Setup::default()
    }
}

/// Waits (at most 5 s) for the peer to close `stream`; how long that took, or `None`.
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(stream: &mut S) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .ok()
        .map(|()| started.elapsed())
}

/// Another caller is served while a slow one hangs.
async fn others_are_served(h: &Harness) {
    let answer = h
        .client()
        .get(format!("{}/x", h.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200);
}

/// TLS inside a CONNECT tunnel to the routed API, trusting the proxy's CA.
async fn intercepted(h: &Harness) -> tokio_rustls::client::TlsStream<TcpStream> {
    let (stream, head) =
        connect_tunnel(h.proxy_addr, &format!("localhost:{}", h.api.addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut config = support::client_tls(h.ca.cert_pem());
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    connector.connect(name, stream).await.unwrap()
}

fn assert_closed_in_time(took: Option<Duration>, what: &str) {
    let took = took.unwrap_or_else(|| panic!("{what}: still open after 5 s"));
    assert!(
        took < Duration::from_secs(4),
        "{what}: closed after {took:?}"
    );
}

#[tokio::test]
async fn a_connect_line_never_finished_is_closed_after_header_timeout() {
    oauth_egress::metrics::init();
    let h = Harness::start(short_timeouts("")).await;
    let mut slow = TcpStream::connect(h.proxy_addr).await.unwrap();
    slow.write_all(b"CONNECT localhost:1 HTTP/1.1\r\nHost: loc")
        .await
        .unwrap();
    let closed = tokio::spawn(async move { closed_within(&mut slow).await });
    others_are_served(&h).await;
    assert_closed_in_time(closed.await.unwrap(), "half a CONNECT head");
    let metrics = oauth_egress::metrics::render();
    assert!(
        metrics.contains("oauth_egress_connections_closed_total{reason=\"header_timeout\"}"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_tunnel_without_a_client_hello_is_closed_after_handshake_timeout() {
    let h = Harness::start(short_timeouts("")).await;
    let authority = format!("localhost:{}", h.api.addr.port());
    let (mut silent, head) = connect_tunnel(h.proxy_addr, &authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let closed = tokio::spawn(async move { closed_within(&mut silent).await });
    others_are_served(&h).await;
    assert_closed_in_time(closed.await.unwrap(), "no ClientHello");
}

#[tokio::test]
async fn a_request_head_never_finished_in_a_tunnel_is_closed_after_header_timeout() {
    let h = Harness::start(short_timeouts("")).await;
    let mut tls = intercepted(&h).await;
    tls.write_all(b"GET /x HTTP/1.1\r\nHost: localh")
        .await
        .unwrap();
    tls.flush().await.unwrap();
    let closed = tokio::spawn(async move { closed_within(&mut tls).await });
    others_are_served(&h).await;
    assert_closed_in_time(closed.await.unwrap(), "half a request head");
}

/// The upstream answers 401 from the headers; the caller trickles its chunked body (a chunk
/// every 300 ms, under the 2 s pause bound) and never ends it. After `body_timeout_secs` the
/// proxy stops waiting for the replay copy and returns the 401 as is.
#[tokio::test]
async fn a_body_never_finished_for_the_replay_gets_its_401_after_body_timeout() {
    let h = Harness::start(short_timeouts("")).await;
    h.api.set_refuse_before_body(true);
    h.api.set_reject_all(true);
    let mut tls = intercepted(&h).await;
    tls.write_all(
        b"POST /x HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab\r\n",
    )
    .await
    .unwrap();
    let started = Instant::now();
    let (mut read, mut write) = tokio::io::split(tls);
    let trickle = tokio::spawn(async move {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if write.write_all(b"1\r\nx\r\n").await.is_err() || write.flush().await.is_err() {
                return;
            }
        }
    });
    let head = tokio::time::timeout(Duration::from_secs(8), support::read_head(&mut read))
        .await
        .expect("no answer within 8 s");
    let took = started.elapsed();
    trickle.abort();
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(took < Duration::from_secs(4), "the 401 came after {took:?}");
    others_are_served_unrejected(&h).await;
}

/// A `Content-Length` body within `retry_body_limit` is read before it is sent on (for the
/// replay copy); a caller that stops halfway gets 400 after `body_timeout_secs`.
#[tokio::test]
async fn a_known_length_body_never_finished_gets_400_after_body_timeout() {
    let h = Harness::start(short_timeouts("")).await;
    let mut tls = intercepted(&h).await;
    tls.write_all(b"POST /x HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n0123456789")
        .await
        .unwrap();
    let started = Instant::now();
    let head = tokio::time::timeout(Duration::from_secs(6), support::read_head(&mut tls))
        .await
        .expect("no answer within 6 s");
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    others_are_served(&h).await;
}

async fn others_are_served_unrejected(h: &Harness) {
    h.api.set_reject_all(false);
    h.api.set_refuse_before_body(false);
    others_are_served(h).await;
}

#[tokio::test]
async fn an_idle_blind_tunnel_is_closed_after_tunnel_idle_timeout() {
    let h = Harness::start(short_timeouts("")).await;
    let authority = format!("127.0.0.1:{}", h.open_api.addr.port());
    let (mut tunnel, head) = connect_tunnel(h.proxy_addr, &authority).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let closed = tokio::spawn(async move { closed_within(&mut tunnel).await });
    others_are_served(&h).await;
    assert_closed_in_time(closed.await.unwrap(), "idle tunnel");
}

/// Opens `n` connections from `source`, each then asked for `GET /` (the proxy answers 400
/// itself: not absolute-form). Returns how many were answered and how many closed unanswered.
async fn open_and_ask(h: &Harness, source: [u8; 4], n: usize) -> (usize, usize, Vec<TcpStream>) {
    let mut streams = Vec::new();
    for _ in 0..n {
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind((source, 0).into()).unwrap();
        streams.push(socket.connect(h.proxy_addr).await.unwrap());
    }
    let asks = streams.into_iter().map(|mut s| async move {
        let _ = s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let mut buf = [0u8; 12];
        let got = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
        let answered = matches!(got, Ok(Ok(n)) if n > 0 && buf.starts_with(b"HTTP/1.1 400"));
        (answered, s)
    });
    let results = futures_util::future::join_all(asks).await;
    let answered = results.iter().filter(|(a, _)| *a).count();
    let streams = results.into_iter().map(|(_, s)| s).collect();
    (answered, n - answered, streams)
}

#[tokio::test]
async fn past_max_connections_new_connections_are_closed_and_the_first_are_served() {
    oauth_egress::metrics::init();
    let h = Harness::start(Setup {
        limits: "max_connections = 200".into(),
        ..Setup::default()
    })
    .await;
    let started = Instant::now();
    let (answered, refused, held) = open_and_ask(&h, [127, 0, 0, 1], 300).await;
    println!(
        "300 connections, max 200: {answered} answered, {refused} refused in {:?}",
        started.elapsed()
    );
    assert_eq!(answered, 200);
    assert_eq!(refused, 100);
    let metrics = oauth_egress::metrics::render();
    assert!(
        metrics.contains("oauth_egress_connections_refused_total{reason=\"max_connections\"} 100"),
        "{metrics}"
    );
    drop(held);
    // Places come back when connections close.
    tokio::time::sleep(Duration::from_millis(300)).await;
    others_are_served(&h).await;
}

#[tokio::test]
async fn past_the_per_source_limit_that_source_is_refused_and_others_are_not() {
    let h = Harness::start(Setup {
        limits: "max_connections_per_source = 5".into(),
        ..Setup::default()
    })
    .await;
    let (answered, refused, _held) = open_and_ask(&h, [127, 0, 0, 1], 8).await;
    assert_eq!((answered, refused), (5, 3));
    let (answered, refused, _other) = open_and_ask(&h, [127, 0, 0, 2], 3).await;
    assert_eq!(
        (answered, refused),
        (3, 0),
        "another source has its own count"
    );
}

#[tokio::test]
async fn several_hundred_connections_from_one_source_work_with_defaults() {
    let h = Harness::start(Setup::default()).await;
    let (answered, refused, _held) = open_and_ask(&h, [127, 0, 0, 1], 300).await;
    assert_eq!((answered, refused), (300, 0));
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// 64 concurrent 1 MiB uploads that each get a 401, with an 8 MiB replay budget: the ones
/// the budget cannot pay for stream without a copy and get their 401 as is (one upstream
/// request instead of two), and memory stays bounded.
#[tokio::test]
async fn uploads_beyond_the_replay_budget_stream_without_a_copy() {
    let h = Harness::start(Setup {
        limits: format!("replay_buffer_total_bytes = {}", 8 << 20),
        retry_body_limit: 2 << 20,
        tokens: "invalidate_cooldown_secs = 0".into(),
        ..Setup::default()
    })
    .await;
    h.api.refuse_path("/up", "invalid_token");
    let client = h.client();
    let before = rss_kib();
    let body = bytes::Bytes::from(vec![b'x'; 1 << 20]);
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let uploads = (0..64).map(|_| {
        let (client, body, url) = (client.clone(), body.clone(), format!("{}/up", h.api_url()));
        async move { client.post(url).body(body).send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(uploads).await;
    sampler.abort();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let upstream = h.api.requests();
    println!(
        "RSS before {} MiB, peak during {} MiB; upstream requests {upstream} for 64 uploads",
        before / 1024,
        peak / 1024
    );
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(upstream >= 64, "{upstream}");
    assert!(
        upstream < 128,
        "every upload was replayed: no budget ({upstream} upstream requests)"
    );
    assert!(peak < 300 * 1024, "RSS peak {} MiB", peak / 1024);
}

/// An HTTP/2 connection inside an intercepted tunnel, driven in the background.
async fn intercepted_h2(
    h: &Harness,
) -> (
    h2::client::SendRequest<bytes::Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
    u32,
) {
    let (stream, head) =
        connect_tunnel(h.proxy_addr, &format!("localhost:{}", h.api.addr.port())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut config = support::client_tls(h.ca.cert_pem());
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, stream).await.unwrap();
    let (mut send, mut conn) = h2::client::handshake(tls).await.unwrap();
    // The server's SETTINGS arrive with the first exchange.
    let request = http::Request::get(format!("https://localhost:{}/x", h.api.addr.port()))
        .body(())
        .unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    let mut response = std::pin::pin!(response);
    let status = tokio::time::timeout(Duration::from_secs(5), async {
        tokio::select! {
            answer = &mut response => answer.unwrap().status(),
            ended = &mut conn => panic!("connection ended first: {ended:?}"),
        }
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    let streams = conn.max_concurrent_send_streams() as u32;
    (send, tokio::spawn(conn), streams)
}

#[tokio::test]
async fn h2_max_concurrent_streams_is_what_the_proxy_advertises() {
    let h = Harness::start(Setup {
        limits: "h2_max_concurrent_streams = 7".into(),
        ..Setup::default()
    })
    .await;
    let (_send, _conn, streams) = intercepted_h2(&h).await;
    assert_eq!(streams, 7, "the advertised SETTINGS_MAX_CONCURRENT_STREAMS");
}

#[tokio::test]
async fn an_idle_h2_connection_is_closed_after_idle_timeout() {
    let h = Harness::start(short_timeouts("")).await;
    let (_send, conn, _) = intercepted_h2(&h).await;
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
    others_are_served(&h).await;
}

/// A burst of streams opened and reset at once (the "rapid reset" attack, bounded to 500)
/// does not stop the proxy serving others; hyper's h2 reset limits answer the abuser.
#[tokio::test]
async fn a_rapid_reset_burst_does_not_stop_others_being_served() {
    let h = Harness::start(Setup::default()).await;
    let (mut send, conn, _) = intercepted_h2(&h).await;
    let port = h.api.addr.port();
    let mut sent = 0;
    for _ in 0..500 {
        let Ok(ready) = send.ready().await else { break };
        send = ready;
        let request = http::Request::get(format!("https://localhost:{port}/x"))
            .body(())
            .unwrap();
        let Ok((_response, mut stream)) = send.send_request(request, false) else {
            break;
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
    }
    let outcome = tokio::time::timeout(Duration::from_secs(2), conn).await;
    println!("rapid reset: {sent} streams reset; abusive connection: {outcome:?}");
    let ended = outcome
        .expect("the abusive connection stayed open")
        .unwrap();
    let err = ended.expect_err("the abusive connection ended without an error");
    assert_eq!(err.reason(), Some(h2::Reason::ENHANCE_YOUR_CALM), "{err}");
    others_are_served(&h).await;
}
