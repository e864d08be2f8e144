use super::*;
use http_body_util::Full;
use http_body_util::StreamBody;

#[tokio::test]
async fn trailers_after_a_body_of_known_length_go_on() {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-checksum", "abc".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
        Ok(Frame::data(Bytes::from("hello"))),
        Ok(Frame::trailers(trailers)),
    ];
    let (body, out) = prepare(
        StreamBody::new(futures_util::stream::iter(frames)),
        Some(5),
        10,
        unlimited(),
        SECS,
    )
    .await
    .unwrap();
    let collected = body.collect().await.unwrap();
    assert_eq!(
        collected.trailers().and_then(|t| t.get("x-checksum")),
        Some(&http::HeaderValue::from_static("abc"))
    );
    assert_eq!(collected.to_bytes(), "hello");
    assert!(!out.may_replay(), "a body with trailers is not replayed");
}

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

const SECS: Duration = Duration::from_secs(5);

fn unlimited() -> Reservation {
    Arc::new(ReplayBudget::default()).reservation(usize::MAX)
}

#[tokio::test]
async fn copies_beyond_the_budget_are_not_kept_and_bytes_come_back() {
    let budget = Arc::new(ReplayBudget::default());
    let (_, first) = prepare(
        Full::new(Bytes::from("hello")),
        Some(5),
        10,
        budget.reservation(8),
        SECS,
    )
    .await
    .unwrap();
    assert!(first.may_replay());
    assert_eq!(budget.in_use(), 5);
    let (_, second) = prepare(
        Full::new(Bytes::from("hello")),
        Some(5),
        10,
        budget.reservation(8),
        SECS,
    )
    .await
    .unwrap();
    assert!(!second.may_replay(), "beyond the budget: streamed");
    let (body, teed) = prepare(
        chunked(&["ab", "cd"]),
        None,
        10,
        budget.reservation(8),
        SECS,
    )
    .await
    .unwrap();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
    assert!(!teed.may_replay(), "the teed copy stopped when refused");
    assert_eq!(budget.in_use(), 5, "a refused copy gives back what it held");
    drop((first, teed));
    assert_eq!(budget.in_use(), 0);
}

async fn text(body: Result<Body, NoReplay>) -> Bytes {
    body.unwrap().collect().await.unwrap().to_bytes()
}

#[tokio::test]
async fn known_small_body_is_buffered_and_replayable() {
    let (body, out) = prepare(
        Full::new(Bytes::from("hello")),
        Some(5),
        10,
        unlimited(),
        SECS,
    )
    .await
    .unwrap();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "hello");
    assert_eq!(text(out.replay(WAIT).await).await, "hello");
}

#[tokio::test]
async fn known_large_body_streams_without_replay() {
    let (_, out) = prepare(
        Full::new(Bytes::from("hello world")),
        Some(11),
        10,
        unlimited(),
        SECS,
    )
    .await
    .unwrap();
    assert!(!out.may_replay());
    assert_eq!(out.replay(WAIT).await.err(), Some(NoReplay::TooLarge));
}

#[tokio::test]
async fn chunked_body_replays_when_within_limit() {
    let (body, out) = prepare(chunked(&["ab", "cd"]), None, 10, unlimited(), SECS)
        .await
        .unwrap();
    assert_eq!(body.collect().await.unwrap().to_bytes(), "abcd");
    assert_eq!(text(out.replay(WAIT).await).await, "abcd");

    let (body, out) = prepare(chunked(&["abcdef", "ghijkl"]), None, 10, unlimited(), SECS)
        .await
        .unwrap();
    assert!(out.may_replay(), "not over the limit yet");
    assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdefghijkl");
    assert!(!out.may_replay());
    assert_eq!(out.replay(WAIT).await.err(), Some(NoReplay::TooLarge));
}

#[tokio::test]
async fn a_body_the_upstream_stopped_reading_is_read_to_its_end_for_the_replay() {
    let (mut body, out) = prepare(chunked(&["ab", "cd", "ef"]), None, 10, unlimited(), SECS)
        .await
        .unwrap();
    // The upstream answered after one chunk.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "ab");
    assert_eq!(text(out.replay(WAIT).await).await, "abcdef");
    assert!(
        body.frame().await.is_none(),
        "the answered attempt's body ends where it was"
    );
}

#[tokio::test]
async fn a_body_read_up_to_its_end_of_stream_mark_is_complete() {
    // HTTP/2: the last DATA frame carries END_STREAM; hyper never polls for `None`.
    let (mut body, out) = prepare(Full::new(Bytes::from("abcd")), None, 10, unlimited(), SECS)
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
    let (_body, out) = prepare(StreamBody::new(endless), None, 10, unlimited(), SECS)
        .await
        .unwrap();
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
    let (mut body, out) = prepare(
        StreamBody::new(Box::pin(stream)),
        None,
        100,
        unlimited(),
        SECS,
    )
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
    // No replay: the response goes back as is, so the first attempt's body must end
    // cleanly (an error would make hyper tear down the connection and cut that response).
    let end = tokio::time::timeout(Duration::from_secs(2), body.frame())
        .await
        .expect("the first attempt's body ends");
    assert!(end.is_none(), "ended with {:?}", end.map(|f| f.is_ok()));
    drop(tx);
}
