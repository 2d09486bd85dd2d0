//! The echo backend: reports what it received, so end-to-end tests can see what the gateway forwarded.
//!
//! Routes (any method unless noted):
//! - `/bytes/{n}`: streams `n` bytes, byte `i` being `i % 251`, in 64 KiB chunks, with `content-length`.
//! - `/slow/{ms}`: waits `ms` milliseconds (at most 10 minutes), then answers like the echo.
//! - `/drip/{n}/{ms}`: sends the head at once (`content-length: n`), then the body one byte `x`
//!   every `ms` milliseconds (`n` at most 1,000; `ms` at most 10 minutes).
//! - `/status/{code}`: answers `code` (200..=599) with the echo body (none for 204, 205 and 304).
//! - `/ws` (GET): WebSocket echo; text and binary messages are sent back unchanged.
//! - `/huge-headers`: the echo with a 128 KiB `x-huge` response header; `/huge-headers/{kib}`
//!   with one of `kib` KiB (at most 1,024).
//! - `/stats`: `{"connections_accepted": N, "requests": M}`; `requests` counts every request but `/stats`.
//! - anything else: 200 with the echo body, a JSON report of the request as received.
//!
//! Every response carries `x-backend: <name>`. Request bodies are consumed frame by frame, never
//! buffered whole, so a 50 MiB upload costs one frame of memory.

use std::convert::Infallible;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Request, State};
use axum::http::header::CONTENT_LENGTH;
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use http_body_util::BodyExt;
use serde_json::json;
use tokio::net::TcpListener;

/// Size of each chunk `/bytes/{n}` sends.
const CHUNK: usize = 64 * 1024;
/// The `/bytes` pattern repeats every this many bytes (a prime, so chunk boundaries do not line up).
const PATTERN_PERIOD: usize = 251;
/// Size of the `x-huge` header `/huge-headers` sends.
const HUGE_HEADER: usize = 128 * 1024;
/// Longest wait `/slow/{ms}` and `/drip/{n}/{ms}` accept.
const MAX_SLOW_MS: u64 = 600_000;
/// Most bytes `/drip/{n}/{ms}` sends.
const MAX_DRIP_BYTES: u64 = 1000;

/// Counters reported by `GET /stats`, shared by the listener (connections) and the router (requests).
#[derive(Debug, Default)]
pub struct Stats {
    connections_accepted: AtomicU64,
    requests: AtomicU64,
}

impl Stats {
    /// Records one accepted TCP connection.
    pub fn connection_accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct Echo {
    name: Arc<str>,
    backend_header: Option<HeaderValue>,
    stats: Arc<Stats>,
}

/// Byte `i` of every `/bytes` body.
pub fn pattern_byte(i: u64) -> u8 {
    // The remainder is below 251, so the cast never truncates.
    (i % PATTERN_PERIOD as u64) as u8
}

/// The echo router. `name` is reported in bodies and in `x-backend` (left out if `name` is not a valid
/// header value; the binary rejects such names up front).
pub fn app(name: &str, stats: Arc<Stats>) -> Router {
    let echo = Echo { name: Arc::from(name), backend_header: HeaderValue::from_str(name).ok(), stats };
    Router::new()
        .route("/bytes/{n}", any(bytes))
        .route("/slow/{ms}", any(slow))
        .route("/drip/{n}/{ms}", any(drip))
        .route("/status/{code}", any(status))
        .route("/ws", any(websocket))
        .route("/huge-headers", any(huge_headers))
        .route("/huge-headers/{kib}", any(sized_huge_headers))
        .route("/stats", any(stats_report))
        .fallback(echo_ok)
        .layer(middleware::from_fn_with_state(echo.clone(), count_and_tag))
        .with_state(echo)
}

/// Serves the echo on `listener` until the process ends, counting accepted connections.
pub async fn serve(listener: TcpListener, name: &str) -> io::Result<()> {
    let stats = Arc::new(Stats::default());
    let counter = Arc::clone(&stats);
    let listener = listener.tap_io(move |tcp| {
        counter.connection_accepted();
        // Small responses should not wait for Nagle; failing to set it only costs latency.
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app(name, stats)).await
}

async fn count_and_tag(State(echo): State<Echo>, req: Request, next: Next) -> Response {
    if req.uri().path() != "/stats" {
        echo.stats.requests.fetch_add(1, Ordering::Relaxed);
    }
    let mut response = next.run(req).await;
    if let Some(value) = &echo.backend_header {
        response.headers_mut().insert("x-backend", value.clone());
    }
    response
}

async fn echo_ok(State(echo): State<Echo>, req: Request) -> Response {
    report(&echo, req, StatusCode::OK).await
}

/// Consumes the request body and answers `status` with a JSON report of the request.
async fn report(echo: &Echo, req: Request, status: StatusCode) -> Response {
    let (parts, body) = req.into_parts();
    let (body_bytes, body_sum) = match consume(body).await {
        Ok(counts) => counts,
        Err(err) => return error(StatusCode::BAD_REQUEST, &format!("reading the request body failed: {err}")),
    };
    if matches!(status.as_u16(), 204 | 205 | 304) {
        // RFC 9110 §15.3.5, §15.3.6, §15.4.5: these responses carry no content.
        return status.into_response();
    }
    let headers: Vec<[String; 2]> = parts
        .headers
        .iter()
        .map(|(name, value)| [name.as_str().to_owned(), String::from_utf8_lossy(value.as_bytes()).into_owned()])
        .collect();
    let path = parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
    let body = json!({
        "backend": &*echo.name,
        "method": parts.method.as_str(),
        "path": path,
        "version": format!("{:?}", parts.version),
        "headers": headers,
        "body_bytes": body_bytes,
        "body_sum": body_sum,
    });
    (status, Json(body)).into_response()
}

/// Reads `body` to its end frame by frame; returns its length and the wrapping sum of its bytes.
async fn consume(mut body: Body) -> Result<(u64, u64), axum::Error> {
    let (mut len, mut sum) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            len += data.len() as u64;
            sum = data.iter().fold(sum, |acc, &b| acc.wrapping_add(u64::from(b)));
        }
    }
    Ok((len, sum))
}

async fn bytes(Path(n): Path<String>) -> Response {
    let Ok(n) = n.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "/bytes/{n} needs a non-negative integer");
    };
    let chunks = futures_util::stream::unfold(0u64, move |offset| async move {
        let remaining = n.checked_sub(offset).filter(|r| *r > 0)?;
        let len = usize::try_from(remaining).map_or(CHUNK, |r| r.min(CHUNK));
        // Start the repeating pattern where byte `offset` falls in it; slicing `Bytes` copies nothing.
        let start = usize::from(pattern_byte(offset));
        let chunk = pattern().slice(start..start + len);
        Some((Ok::<_, Infallible>(chunk), offset + len as u64))
    });
    ([(CONTENT_LENGTH, n)], Body::from_stream(chunks)).into_response()
}

/// `CHUNK + PATTERN_PERIOD` pattern bytes: any chunk is a slice of it.
fn pattern() -> &'static Bytes {
    static PATTERN: OnceLock<Bytes> = OnceLock::new();
    PATTERN.get_or_init(|| (0..(CHUNK + PATTERN_PERIOD) as u64).map(pattern_byte).collect::<Vec<u8>>().into())
}

async fn slow(State(echo): State<Echo>, Path(ms): Path<String>, req: Request) -> Response {
    let Some(ms) = ms.parse::<u64>().ok().filter(|ms| *ms <= MAX_SLOW_MS) else {
        return error(StatusCode::BAD_REQUEST, "/slow/{ms} needs an integer of milliseconds up to 600000");
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    report(&echo, req, StatusCode::OK).await
}

async fn drip(Path((n, ms)): Path<(String, String)>) -> Response {
    let n = n.parse::<u64>().ok().filter(|n| *n <= MAX_DRIP_BYTES);
    let ms = ms.parse::<u64>().ok().filter(|ms| *ms <= MAX_SLOW_MS);
    let (Some(n), Some(ms)) = (n, ms) else {
        return error(StatusCode::BAD_REQUEST, "/drip/{n}/{ms} needs up to 1000 bytes and up to 600000 milliseconds");
    };
    let bytes = futures_util::stream::unfold(0u64, move |sent| async move {
        if sent == n {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Some((Ok::<_, Infallible>(Bytes::from_static(b"x")), sent + 1))
    });
    ([(CONTENT_LENGTH, n)], Body::from_stream(bytes)).into_response()
}

async fn status(State(echo): State<Echo>, Path(code): Path<String>, req: Request) -> Response {
    let code = code.parse::<u16>().ok().filter(|c| (200..=599).contains(c));
    match code.map(StatusCode::from_u16) {
        Some(Ok(code)) => report(&echo, req, code).await,
        _ => error(StatusCode::BAD_REQUEST, "/status/{code} needs a status code from 200 to 599"),
    }
}

async fn websocket(upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>) -> Response {
    match upgrade {
        Ok(upgrade) => upgrade.on_upgrade(echo_socket),
        Err(rejection) => rejection.into_response(),
    }
}

async fn echo_socket(mut socket: WebSocket) {
    while let Some(Ok(message)) = socket.recv().await {
        match message {
            Message::Text(_) | Message::Binary(_) => {
                if socket.send(message).await.is_err() {
                    return;
                }
            }
            Message::Close(_) => return,
            // Pings are answered by the WebSocket layer itself.
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
}

async fn huge_headers(State(echo): State<Echo>, req: Request) -> Response {
    static HUGE: OnceLock<HeaderValue> = OnceLock::new();
    let huge =
        HUGE.get_or_init(|| HeaderValue::from_bytes(&[b'h'; HUGE_HEADER]).unwrap_or(HeaderValue::from_static("h")));
    let mut response = report(&echo, req, StatusCode::OK).await;
    response.headers_mut().insert("x-huge", huge.clone());
    response
}

async fn sized_huge_headers(State(echo): State<Echo>, Path(kib): Path<String>, req: Request) -> Response {
    let Some(kib) = kib.parse::<usize>().ok().filter(|&kib| kib <= 1024) else {
        return error(StatusCode::BAD_REQUEST, "/huge-headers/{kib} needs an integer of at most 1024");
    };
    let mut response = report(&echo, req, StatusCode::OK).await;
    if let Ok(huge) = HeaderValue::from_bytes(&vec![b'h'; kib * 1024]) {
        response.headers_mut().insert("x-huge", huge);
    }
    response
}

async fn stats_report(State(echo): State<Echo>) -> Response {
    Json(json!({
        "connections_accepted": echo.stats.connections_accepted.load(Ordering::Relaxed),
        "requests": echo.stats.requests.load(Ordering::Relaxed),
    }))
    .into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

#[cfg(test)]
mod tests {
    //! Over a real socket bound to port 0, with a deliberately tiny HTTP/1.1 client (backends has no
    //! HTTP client dependency): every request is sent with `connection: close` and read to EOF.

    use super::*;
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    struct Reply {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Reply {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).unwrap()
        }
    }

    async fn start(name: &str) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let name = name.to_owned();
        tokio::spawn(async move { serve(listener, &name).await });
        addr
    }

    /// Sends `raw` (a complete request, which must ask for `connection: close`) and reads the reply to EOF.
    async fn exchange(addr: std::net::SocketAddr, raw: &[u8]) -> Reply {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.unwrap();
        parse(&bytes)
    }

    fn parse(bytes: &[u8]) -> Reply {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n").expect("no end of head");
        let head = std::str::from_utf8(&bytes[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| l.split_once(':').unwrap())
            .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let mut body = bytes[end + 4..].to_vec();
        if headers.iter().any(|(n, v)| n == "transfer-encoding" && v == "chunked") {
            body = dechunk(&body);
        }
        Reply { status, headers, body }
    }

    fn dechunk(mut raw: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let eol = raw.windows(2).position(|w| w == b"\r\n").unwrap();
            let size = usize::from_str_radix(std::str::from_utf8(&raw[..eol]).unwrap(), 16).unwrap();
            if size == 0 {
                return out;
            }
            out.extend_from_slice(&raw[eol + 2..eol + 2 + size]);
            raw = &raw[eol + 2 + size + 2..];
        }
    }

    fn get(path: &str) -> Vec<u8> {
        format!("GET {path} HTTP/1.1\r\nhost: echo.test\r\nconnection: close\r\n\r\n").into_bytes()
    }

    #[test]
    fn pattern_byte_wraps_at_251() {
        assert_eq!([pattern_byte(0), pattern_byte(250), pattern_byte(251), pattern_byte(65_536)], [0, 250, 0, 25]);
    }

    #[tokio::test]
    async fn echo_post_with_body_reports_request_as_received() {
        let addr = start("alpha").await;
        let raw = b"POST /some/path?q=1&r=%20 HTTP/1.1\r\nhost: echo.test\r\nx-rep: 1\r\nx-rep: 2\r\n\
                    content-length: 5\r\nconnection: close\r\n\r\nhello";
        let reply = exchange(addr, raw).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-backend"), Some("alpha"));
        let json = reply.json();
        assert_eq!(json["backend"], "alpha");
        assert_eq!(json["method"], "POST");
        assert_eq!(json["path"], "/some/path?q=1&r=%20");
        assert_eq!(json["version"], "HTTP/1.1");
        assert_eq!(json["body_bytes"], 5);
        assert_eq!(json["body_sum"], b"hello".iter().map(|&b| u64::from(b)).sum::<u64>());
        let headers: Vec<(String, String)> = serde_json::from_value(json["headers"].clone()).unwrap();
        let expected =
            [("host", "echo.test"), ("x-rep", "1"), ("x-rep", "2"), ("content-length", "5"), ("connection", "close")];
        assert_eq!(headers, expected.map(|(n, v)| (n.to_owned(), v.to_owned())));
    }

    #[tokio::test]
    async fn echo_chunked_body_counts_every_byte() {
        let addr = start("alpha").await;
        let raw = b"PUT /up HTTP/1.1\r\nhost: echo.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                    3\r\nabc\r\n2\r\n\xff\xff\r\n0\r\n\r\n";
        let json = exchange(addr, raw).await.json();
        assert_eq!(json["body_bytes"], 5);
        assert_eq!(json["body_sum"], 97 + 98 + 99 + 255 + 255);
    }

    #[tokio::test]
    async fn echo_malformed_chunked_body_gets_error_and_server_survives() {
        let addr = start("alpha").await;
        let raw =
            b"POST / HTTP/1.1\r\nhost: echo.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\nzz\r\n";
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(raw).await.unwrap();
        let mut bytes = Vec::new();
        // The server may answer 400 or just close; either way it must not answer 200 nor die.
        let _ = stream.read_to_end(&mut bytes).await;
        assert!(!bytes.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&bytes));
        assert_eq!(exchange(addr, &get("/after")).await.status, 200);
    }

    #[tokio::test]
    async fn bytes_n_streams_pattern_with_content_length() {
        let addr = start("alpha").await;
        let n = 3 * CHUNK + 1234;
        let reply = exchange(addr, &get(&format!("/bytes/{n}"))).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("content-length"), Some(n.to_string().as_str()));
        assert_eq!(reply.header("transfer-encoding"), None);
        assert_eq!(reply.body.len(), n);
        let wrong = reply.body.iter().enumerate().position(|(i, &b)| b != pattern_byte(i as u64));
        assert_eq!(wrong, None, "first wrong byte");
    }

    #[tokio::test]
    async fn bytes_zero_returns_empty_body() {
        let reply = exchange(start("alpha").await, &get("/bytes/0")).await;
        assert_eq!((reply.status, reply.header("content-length"), reply.body.len()), (200, Some("0"), 0));
    }

    #[tokio::test]
    async fn bytes_not_a_number_returns_400() {
        let addr = start("alpha").await;
        for path in ["/bytes/x", "/bytes/-1", "/bytes/99999999999999999999999"] {
            assert_eq!(exchange(addr, &get(path)).await.status, 400, "{path}");
        }
    }

    #[tokio::test]
    async fn drip_sends_n_bytes_with_content_length() {
        let addr = start("alpha").await;
        let reply = exchange(addr, &get("/drip/3/1")).await;
        assert_eq!(
            (reply.status, reply.header("content-length"), reply.body.as_slice()),
            (200, Some("3"), &b"xxx"[..])
        );
        for path in ["/drip/1001/1", "/drip/1/600001", "/drip/x/1", "/drip/1/-1"] {
            assert_eq!(exchange(addr, &get(path)).await.status, 400, "{path}");
        }
    }

    #[tokio::test]
    async fn status_code_returns_that_status_with_echo_body() {
        let addr = start("alpha").await;
        let reply = exchange(addr, &get("/status/503")).await;
        assert_eq!(reply.status, 503);
        assert_eq!(reply.json()["path"], "/status/503");
        let reply = exchange(addr, &get("/status/204")).await;
        assert_eq!((reply.status, reply.body.len()), (204, 0));
    }

    #[tokio::test]
    async fn status_out_of_range_returns_400() {
        let addr = start("alpha").await;
        for path in ["/status/101", "/status/600", "/status/abc", "/status/70000"] {
            assert_eq!(exchange(addr, &get(path)).await.status, 400, "{path}");
        }
    }

    #[tokio::test]
    async fn slow_short_wait_then_echoes() {
        let reply = exchange(start("alpha").await, &get("/slow/10?x=1")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.json()["path"], "/slow/10?x=1");
    }

    #[tokio::test]
    async fn slow_too_long_returns_400() {
        assert_eq!(exchange(start("alpha").await, &get("/slow/600001")).await.status, 400);
    }

    #[tokio::test]
    async fn huge_headers_sends_128_kib_header() {
        let reply = exchange(start("alpha").await, &get("/huge-headers")).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("x-huge").map(str::len), Some(HUGE_HEADER));
    }

    #[tokio::test]
    async fn ws_without_upgrade_is_rejected() {
        let reply = exchange(start("alpha").await, &get("/ws")).await;
        assert!((400..500).contains(&reply.status), "status {}", reply.status);
    }

    #[tokio::test]
    async fn stats_counts_connections_and_requests_but_not_itself() {
        let addr = start("alpha").await;
        exchange(addr, &get("/a")).await;
        exchange(addr, &get("/bytes/10")).await;
        // Two requests on one keep-alive connection count as one connection.
        let two = b"GET /b HTTP/1.1\r\nhost: echo.test\r\n\r\nGET /c HTTP/1.1\r\nhost: echo.test\r\nconnection: close\r\n\r\n";
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(two).await.unwrap();
        stream.read_to_end(&mut Vec::new()).await.unwrap();
        let json = exchange(addr, &get("/stats")).await.json();
        assert_eq!(json, json!({"connections_accepted": 4, "requests": 4}));
    }
}
