//! The admin listener: `/healthz` (the process answers), `/readyz` (config loaded and CA
//! ready, which they are once this listener runs, and every `prefetch` route holds a token),
//! and `/metrics` (Prometheus text).

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::body::{full, Body};
use crate::proxy::SharedProxy;

/// Serves the admin endpoints until `shutdown` resolves.
pub async fn run(listener: TcpListener, proxy: SharedProxy, shutdown: impl Future<Output = ()>) {
    crate::metrics::init();
    let mut shutdown = pin!(shutdown);
    let mut backoff = crate::listener::AcceptBackoff::default();
    loop {
        let (stream, _) = tokio::select! {
            accepted = crate::listener::accept(&listener, &mut backoff, "admin") => accepted,
            () = &mut shutdown => return,
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let ready = proxy.load().is_ready();
                async move { Ok::<_, Infallible>(answer(&req, ready)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer(req: &Request<Incoming>, ready: bool) -> Response<Body> {
    let (status, text) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz") => (StatusCode::OK, "ok\n".to_string()),
        (&Method::GET, "/readyz") if ready => (StatusCode::OK, "ready\n".to_string()),
        (&Method::GET, "/readyz") => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: a prefetch route has no token yet\n".to_string(),
        ),
        (&Method::GET, "/metrics") => (StatusCode::OK, crate::metrics::render()),
        _ => (
            StatusCode::NOT_FOUND,
            "not found: try /healthz, /readyz or /metrics\n".to_string(),
        ),
    };
    let mut response = Response::new(full(text));
    *response.status_mut() = status;
    response
}
