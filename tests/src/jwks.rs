//! An in-process JWKS endpoint for JWT tests: a hyper HTTP/1.1 server on a real loopback socket,
//! running in the test's tokio runtime, serving `GET /.well-known/jwks.json`.
//!
//! Tests rotate the key set ([`JwksServer::set_keys`]), count fetches ([`JwksServer::fetches`]),
//! slow the answers down ([`JwksServer::set_delay`]) to see what the gateway does while a fetch is
//! in flight, and take the endpoint down and back up on the SAME port ([`JwksServer::go_down`],
//! [`JwksServer::come_back`]) to see what the gateway does while its key source is unreachable.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backends::token::{jwks, SigningKey};
use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

use crate::TIMEOUT;

/// The path the server answers on; everything else is a 404 (not counted as a fetch).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// A JWKS endpoint on `127.0.0.1:PORT`. Stops (closing its port and every open connection) on drop.
pub struct JwksServer {
    addr: SocketAddr,
    state: Arc<State>,
    serving: Mutex<Option<JoinHandle<()>>>,
}

struct State {
    document: Mutex<Bytes>,
    fetches: AtomicU64,
    /// How long each fetch waits before being answered.
    delay: Mutex<Duration>,
    /// The `Cache-Control` answers carry, if any.
    cache_control: Mutex<Option<&'static str>>,
}

impl JwksServer {
    /// Starts serving a JWKS with `keys` on a free port. Must be called inside a tokio runtime.
    pub fn start(keys: &[&SigningKey]) -> JwksServer {
        JwksServer::start_with(&jwks(keys))
    }

    /// Starts serving `document` (any JSON, e.g. a hand-made or broken key set) on a free port.
    pub fn start_with(document: &Value) -> JwksServer {
        let server = JwksServer::down(document);
        server.come_back();
        server
    }

    /// A server that is down from the start: its port is reserved (bound, then closed) so a config
    /// can name it, but nothing listens until [`JwksServer::come_back`].
    pub fn down(document: &Value) -> JwksServer {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding port 0: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        drop(listener);
        let state = State {
            document: Mutex::new(Bytes::from(document.to_string())),
            fetches: AtomicU64::new(0),
            delay: Mutex::new(Duration::ZERO),
            cache_control: Mutex::new(None),
        };
        JwksServer { addr, state: Arc::new(state), serving: Mutex::new(None) }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/.well-known/jwks.json`, for `jwks_url`.
    pub fn url(&self) -> String {
        format!("http://{}{JWKS_PATH}", self.addr)
    }

    /// Serves `keys` from the next fetch on (a key rotation).
    pub fn set_keys(&self, keys: &[&SigningKey]) {
        self.set_document(&jwks(keys));
    }

    /// Serves `document` from the next fetch on.
    pub fn set_document(&self, document: &Value) {
        *lock(&self.state.document) = Bytes::from(document.to_string());
    }

    /// Answers each fetch arriving from now on only after `delay` (counted on arrival; the
    /// document served is the one current when the answer goes out). `Duration::ZERO` (the
    /// default) answers at once.
    pub fn set_delay(&self, delay: Duration) {
        *lock(&self.state.delay) = delay;
    }

    /// Answers from now on with this `Cache-Control` (none by default).
    pub fn set_cache_control(&self, value: &'static str) {
        *lock(&self.state.cache_control) = Some(value);
    }

    /// How many `GET /.well-known/jwks.json` requests arrived so far (across restarts), whether
    /// answered yet or still delayed ([`JwksServer::set_delay`]).
    pub fn fetches(&self) -> u64 {
        self.state.fetches.load(Ordering::SeqCst)
    }

    /// True while the port is being served.
    pub fn is_up(&self) -> bool {
        lock(&self.serving).is_some()
    }

    /// Takes the endpoint down: stops listening and drops every open connection (keep-alive ones
    /// included), so new connections are refused. Returns once the port is closed.
    pub async fn go_down(&self) {
        let serving = lock(&self.serving).take();
        if let Some(task) = serving {
            task.abort();
            // Resolves once the task (with its listener and connection set) has been dropped.
            let _ = task.await;
        }
    }

    /// Serves again on the same port (a no-op while up). Retries binding for up to [`TIMEOUT`]:
    /// the port is ours, but the kernel may take a moment to release it.
    pub fn come_back(&self) {
        let mut serving = lock(&self.serving);
        if serving.is_some() {
            return;
        }
        let deadline = Instant::now() + TIMEOUT;
        // std sets SO_REUSEADDR on Unix, so connections in TIME_WAIT do not block the rebind.
        let listener = loop {
            match std::net::TcpListener::bind(self.addr) {
                Ok(listener) => break listener,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("the JWKS server could not bind {} again within {TIMEOUT:?}: {e}", self.addr),
            }
        };
        listener.set_nonblocking(true).unwrap_or_else(|e| panic!("set_nonblocking on {}: {e}", self.addr));
        let listener = TcpListener::from_std(listener).unwrap_or_else(|e| panic!("registering {}: {e}", self.addr));
        *serving = Some(tokio::spawn(serve(listener, Arc::clone(&self.state))));
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.serving).take() {
            task.abort();
        }
    }
}

/// Accepts connections until aborted; aborting drops the [`JoinSet`], which aborts every connection.
async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        while connections.try_join_next().is_some() {}
        let state = Arc::clone(&state);
        connections.spawn(async move {
            let service = service_fn(move |request| answer(request, Arc::clone(&state)));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
        });
    }
}

async fn answer(request: Request<Incoming>, state: Arc<State>) -> Result<Response<Full<Bytes>>, Infallible> {
    let response = if request.method() == Method::GET && request.uri().path() == JWKS_PATH {
        state.fetches.fetch_add(1, Ordering::SeqCst);
        let delay = *lock(&state.delay);
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let document = lock(&state.document).clone();
        let mut response = Response::builder().header(header::CONTENT_TYPE, "application/json");
        if let Some(cache_control) = *lock(&state.cache_control) {
            response = response.header(header::CACHE_CONTROL, cache_control);
        }
        response.body(Full::new(document))
    } else {
        Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::from_static(b"not found\n")))
    };
    Ok(response.unwrap_or_else(|e| panic!("building a JWKS response: {e}")))
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use backends::token::{Algorithm, SigningKey};

    use super::*;
    use crate::client;

    #[tokio::test]
    async fn jwks_server_serves_rotates_counts_and_restarts_on_the_same_port() {
        let (a, b) = (SigningKey::generate(Algorithm::ES256, "a"), SigningKey::generate(Algorithm::EdDSA, "b"));
        let server = JwksServer::start(&[&a]);
        let reply = client::get(server.addr(), JWKS_PATH).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-type"), Some("application/json"));
        assert_eq!(reply.json(), jwks(&[&a]));
        assert_eq!(client::get(server.addr(), "/other").await.status, 404);
        assert_eq!(server.fetches(), 1, "only JWKS fetches count");

        server.set_keys(&[&a, &b]);
        assert_eq!(client::get(server.addr(), JWKS_PATH).await.json()["keys"][1]["kid"], "b");

        // A keep-alive connection opened while up must not keep answering once down.
        let mut kept = client::Connection::connect(server.addr()).await;
        assert_eq!(kept.get(JWKS_PATH).await.status, 200);
        server.go_down().await;
        assert!(!server.is_up());
        assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err(), "the port still accepts");
        let request = client::request("GET", JWKS_PATH).body(client::empty()).unwrap();
        assert!(kept.try_send(request).await.is_err(), "an open connection still answers while down");

        server.come_back();
        assert_eq!(client::get(server.addr(), JWKS_PATH).await.status, 200);
        assert_eq!(server.fetches(), 4);
    }

    #[tokio::test]
    async fn jwks_server_delay_holds_answers_back_but_counts_fetches_on_arrival() {
        let server = JwksServer::start(&[&SigningKey::generate(Algorithm::ES256, "a")]);
        // Far longer than the test runs: this fetch is never answered, yet it counts.
        server.set_delay(TIMEOUT * 10);
        let held = tokio::spawn(client::get(server.addr(), JWKS_PATH));
        crate::eventually("the held-back fetch counted", || async { server.fetches() == 1 }).await;
        assert!(!held.is_finished(), "a fetch was answered before its delay");
        held.abort();

        // The delay is read on arrival: fetches arriving after it is lifted are answered at once.
        server.set_delay(Duration::ZERO);
        assert_eq!(client::get(server.addr(), JWKS_PATH).await.status, 200);
        assert_eq!(server.fetches(), 2);
    }

    #[tokio::test]
    async fn jwks_server_down_from_the_start_comes_up_on_its_reserved_port() {
        let server = JwksServer::down(&serde_json::json!({"keys": []}));
        assert!(tokio::net::TcpStream::connect(server.addr()).await.is_err());
        server.come_back();
        assert_eq!(client::get(server.addr(), JWKS_PATH).await.json(), serde_json::json!({"keys": []}));
        assert_eq!(server.url(), format!("http://{}/.well-known/jwks.json", server.addr()));
    }
}
