//! A small HTTP/1.1 client on hyper's connection API: one fresh connection per request, so tests
//! control exactly what is sent (the `host` header is added only when the request has none).

use std::io;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::Stream;
use http::header::{HeaderMap, HOST};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpStream;

use crate::TIMEOUT;

/// A request body: empty, whole, or streamed (sent chunked when no `content-length` is set).
pub type Body = UnsyncBoxBody<Bytes, io::Error>;

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

pub fn stream<S>(chunks: S) -> Body
where
    S: Stream<Item = io::Result<Bytes>> + Send + 'static,
{
    use futures_util::StreamExt;
    StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data))).boxed_unsync()
}

/// `Request::builder()` with method and path (origin-form target) set.
pub fn request(method: &str, path: &str) -> http::request::Builder {
    Request::builder().method(method).uri(path)
}

/// A whole response.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The first value of header `name`, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The body as text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with status and body when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("response {} is not JSON ({e}): {}", self.status, self.text()))
    }

    /// The echo's report of the request it received; panics with the response if it is not one.
    pub fn echoed(&self) -> Echoed {
        let json = self.json();
        let text = |key: &str| {
            json[key]
                .as_str()
                .unwrap_or_else(|| panic!("not an echo body (no `{key}`), status {}: {json}", self.status))
                .to_owned()
        };
        let number = |key: &str| json[key].as_u64().unwrap_or_else(|| panic!("not an echo body (no `{key}`): {json}"));
        let headers = json["headers"]
            .as_array()
            .unwrap_or_else(|| panic!("not an echo body (no `headers`): {json}"))
            .iter()
            .map(|pair| {
                (pair[0].as_str().unwrap_or_default().to_owned(), pair[1].as_str().unwrap_or_default().to_owned())
            })
            .collect();
        Echoed {
            backend: text("backend"),
            method: text("method"),
            path: text("path"),
            headers,
            body_bytes: number("body_bytes"),
            body_sum: number("body_sum"),
        }
    }

    /// Asserts a gateway error response: `status`, JSON content type, `error` code, a request id in
    /// the body equal to the `x-request-id` header. Returns the body.
    pub fn assert_error(&self, status: u16, code: &str) -> Value {
        assert_eq!(self.status.as_u16(), status, "status; body: {}", self.text());
        let content_type = self.header("content-type").unwrap_or_default();
        assert!(content_type.starts_with("application/json"), "content-type {content_type:?}; body: {}", self.text());
        let json = self.json();
        assert_eq!(json["error"], code, "error code in {json}");
        assert!(json["message"].is_string(), "no message in {json}");
        let id = json["request_id"].as_str().unwrap_or_else(|| panic!("no request_id in {json}"));
        assert!(!id.is_empty(), "empty request_id in {json}");
        assert_eq!(self.header("x-request-id"), Some(id), "x-request-id header vs body");
        json
    }
}

/// The echo's JSON report of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Echoed {
    pub backend: String,
    pub method: String,
    pub path: String,
    /// Every header as received, in order, repeats kept; names lowercase.
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
    pub body_sum: u64,
}

impl Echoed {
    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (lowercase), in order.
    pub fn header_all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// Sends `request` on a new connection and returns the response with its body still streaming.
pub async fn open(addr: SocketAddr, mut request: Request<Body>) -> anyhow::Result<Response<Incoming>> {
    if !request.headers().contains_key(HOST) {
        request.headers_mut().insert(HOST, HeaderValue::from_str(&addr.to_string())?);
    }
    let stream = TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender.send_request(request).await?)
}

/// Sends `request` and reads the whole response, within [`TIMEOUT`].
pub async fn try_send(addr: SocketAddr, request: Request<Body>) -> anyhow::Result<Reply> {
    let exchange = async {
        let response = open(addr, request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Reply { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| anyhow::anyhow!("no response within {TIMEOUT:?}"))?
}

/// Like [`try_send`], panicking on any error.
pub async fn send(addr: SocketAddr, request: Request<Body>) -> Reply {
    let target = format!("{} {}", request.method(), request.uri());
    try_send(addr, request).await.unwrap_or_else(|e| panic!("{target} to {addr}: {e:#}"))
}

/// `GET path` with no extra headers.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, request("GET", path).body(empty()).unwrap_or_else(|e| panic!("bad request: {e}"))).await
}

/// `GET path` with the given headers (a `host` among them replaces the default).
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut builder = request("GET", path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(addr, builder.body(empty()).unwrap_or_else(|e| panic!("bad request: {e}"))).await
}

/// One keep-alive HTTP/1.1 connection: every request goes over the same socket, one at a time. A test
/// that must stay on one gateway worker (each has its own upstream pools) sends everything on one.
pub struct Connection {
    /// The `Host` of requests that name none.
    host: String,
    sender: hyper::client::conn::http1::SendRequest<Body>,
}

impl Connection {
    /// Connects to `addr`, within [`TIMEOUT`].
    pub async fn open(addr: SocketAddr) -> anyhow::Result<Connection> {
        let connecting = async { Connection::over(TcpStream::connect(addr).await?, &addr.to_string()).await };
        tokio::time::timeout(TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("connecting to {addr}: no answer within {TIMEOUT:?}"))?
    }

    /// Starts HTTP/1.1 on an open stream (plain TCP, or TLS already handshaken); `host` is the
    /// `Host` header of requests that have none.
    pub async fn over<I>(stream: I, host: &str) -> anyhow::Result<Connection>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(Connection { host: host.to_owned(), sender })
    }

    /// Like [`Connection::open`], panicking on any error.
    pub async fn connect(addr: SocketAddr) -> Connection {
        Connection::open(addr).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e:#}"))
    }

    /// Sends `request` on this connection and reads the whole response, within [`TIMEOUT`]. An error
    /// means the connection is unusable (closed or reset): open a new one.
    pub async fn try_send(&mut self, mut request: Request<Body>) -> anyhow::Result<Reply> {
        if !request.headers().contains_key(HOST) {
            request.headers_mut().insert(HOST, HeaderValue::from_str(&self.host)?);
        }
        let exchange = async {
            self.sender.ready().await?;
            let response = self.sender.send_request(request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| anyhow::anyhow!("no response within {TIMEOUT:?}"))?
    }

    /// `GET path` on this connection, panicking on any error (the connection closing included).
    pub async fn get(&mut self, path: &str) -> Reply {
        let request = request("GET", path).body(empty()).unwrap_or_else(|e| panic!("bad request: {e}"));
        let result = self.try_send(request).await;
        result.unwrap_or_else(|e| panic!("GET {path} on the connection to {}: {e:#}", self.host))
    }
}
