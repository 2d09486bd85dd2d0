//! The admin listener: liveness, readiness, Prometheus metrics, the config status, the JWT
//! providers' key state and the rate limits' Redis connection.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use crate::reload::Status;
use crate::runtime::Runtime;

/// Accepts admin connections until the task is dropped.
pub(super) async fn serve(listener: TcpListener, status: Option<Arc<Status>>, runtime: Runtime) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                static FAILING: crate::throttle::Throttle =
                    crate::throttle::Throttle::new(std::time::Duration::from_secs(10));
                if FAILING.allows() {
                    tracing::warn!(%error, "admin accept failed (logged once in 10 s at most)");
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let (status, runtime) = (status.clone(), runtime.clone());
        // A client that never finishes a request head must not hold a connection for ever.
        let header_read_timeout = runtime.load().server.header_read_timeout;
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, super::draining(), status.as_deref(), &runtime);
                async move { Ok::<_, Infallible>(response) }
            });
            let io = TokioIo::new(stream);
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(header_read_timeout);
            if let Err(error) = builder.serve_connection(io, service).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
        });
    }
}

fn respond(
    request: &Request<Incoming>,
    draining: bool,
    status: Option<&Status>,
    runtime: &Runtime,
) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    let (code, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/healthz") => (StatusCode::OK, text, "ok\n".to_string()),
        (&Method::GET | &Method::HEAD, "/readyz") if draining => {
            (StatusCode::SERVICE_UNAVAILABLE, text, "draining\n".to_string())
        }
        (&Method::GET | &Method::HEAD, "/readyz") => (StatusCode::OK, text, "ready\n".to_string()),
        (&Method::GET | &Method::HEAD, "/admin/config") => match status {
            Some(status) => (StatusCode::OK, "application/json", status.to_json()),
            None => (StatusCode::NOT_FOUND, text, "this gateway was started without a config file\n".to_string()),
        },
        (&Method::GET | &Method::HEAD, "/admin/jwt") => (StatusCode::OK, "application/json", jwt_status(runtime)),
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, PROMETHEUS_TEXT, metrics(runtime)),
        (&Method::GET | &Method::HEAD, "/admin/ratelimit") => {
            (StatusCode::OK, "application/json", rate_limit_status(runtime))
        }
        _ => (
            StatusCode::NOT_FOUND,
            text,
            "not found: try /healthz, /readyz, /metrics, /admin/config, /admin/jwt or /admin/ratelimit\n".to_string(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = code;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

/// Every JWT provider of the running config by name: key source, JWKS fetch state, cached tokens.
fn jwt_status(runtime: &Runtime) -> String {
    let snapshot = runtime.load();
    let providers: std::collections::BTreeMap<&str, serde_json::Value> =
        snapshot.jwt_providers.iter().map(|(name, provider)| (name.as_str(), provider.status())).collect();
    serde_json::json!({ "providers": providers }).to_string()
}

/// The Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every series, with the gauges read off the running snapshot.
fn metrics(runtime: &Runtime) -> String {
    let snapshot = runtime.load();
    let readings = crate::metrics::Readings {
        redis_connected: snapshot.redis.as_ref().map(|redis| redis.status()["connected"].as_bool() == Some(true)),
        client_connections: super::connections::open(),
        client_connections_max: super::connections::limit(&snapshot.server),
        upstream_in_flight: snapshot.upstreams.values().map(|u| (&*u.name, u.in_flight())).collect(),
        endpoints_in_rotation: (snapshot.upstreams.values())
            .flat_map(|u| u.endpoints_in_rotation().map(|(endpoint, yes)| (&*u.name, endpoint, yes)))
            .collect(),
        breaker_states: snapshot
            .upstreams
            .values()
            .map(|u| (&*u.name, u.breaker.as_ref().map(|b| b.state())))
            .collect(),
    };
    crate::metrics::global().render(&readings)
}

/// Where rate limits are counted (the Redis connection, if configured) and every limit, by name,
/// with its in-process state.
fn rate_limit_status(runtime: &Runtime) -> String {
    let snapshot = runtime.load();
    let mut limits: Vec<_> = snapshot.rate_limits.iter().collect();
    limits.sort_unstable_by(|a, b| a.0.cmp(b.0));
    serde_json::json!({
        "redis": snapshot.redis.as_ref().map(|redis| redis.status()),
        "limits": limits.into_iter().map(|(_, limit)| limit.status()).collect::<Vec<_>>(),
    })
    .to_string()
}
