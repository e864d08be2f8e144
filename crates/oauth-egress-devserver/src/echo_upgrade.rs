//! Protocol upgrades at the echo API: `101 Switching Protocols`, then raw bytes
//! are echoed back until EOF or until the [`crate::EchoApi`] is dropped.

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;
use tokio::sync::watch;

use crate::HttpResponse;

/// The `Upgrade` value of an HTTP/1.1 request with `Connection: upgrade`.
pub(super) fn upgrade_protocol(req: &Request<Incoming>) -> Option<HeaderValue> {
    if req.version() != Version::HTTP_11 {
        return None;
    }
    let wants_upgrade = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
    wants_upgrade
        .then(|| req.headers().get(UPGRADE).cloned())
        .flatten()
}

/// Answers 101 and echoes raw bytes on the upgraded connection until EOF.
pub(super) fn switch_protocols(
    mut shutdown: watch::Receiver<()>,
    protocol: HeaderValue,
    on_upgrade: OnUpgrade,
) -> HttpResponse {
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown.changed() => {}
            () = echo_upgraded(on_upgrade) => {}
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(UPGRADE, protocol);
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    response
}

async fn echo_upgraded(on_upgrade: OnUpgrade) {
    match on_upgrade.await {
        Ok(upgraded) => {
            let (mut reader, mut writer) = tokio::io::split(TokioIo::new(upgraded));
            if let Err(err) = tokio::io::copy(&mut reader, &mut writer).await {
                tracing::debug!(error = %err, "echo API: upgraded echo ended with an error");
            }
            let _ = writer.shutdown().await;
        }
        Err(err) => tracing::debug!(error = %err, "echo API: upgrade failed"),
    }
}
