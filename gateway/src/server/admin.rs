//! The admin listener: liveness and readiness now; metrics and config status as their issues land.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Accepts admin connections until the task is dropped.
pub(super) async fn serve(listener: TcpListener, draining: Arc<AtomicBool>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "admin accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let draining = draining.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, draining.load(Ordering::Relaxed));
                async move { Ok::<_, Infallible>(response) }
            });
            let io = TokioIo::new(stream);
            if let Err(error) = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, draining: bool) -> Response<Full<Bytes>> {
    let (status, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, "ok\n"),
        (&Method::GET | &Method::HEAD, "/readyz") if draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
        (&Method::GET | &Method::HEAD, "/readyz") => (StatusCode::OK, "ready\n"),
        _ => (StatusCode::NOT_FOUND, "not found: try /healthz or /readyz\n"),
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
