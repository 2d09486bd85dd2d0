//! Raw TCP helpers for traffic a well-behaved client would not send.

use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TIMEOUT;

/// A parsed HTTP/1.1 response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawReply {
    pub status: u16,
    /// Names lowercase, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

pub async fn connect(addr: SocketAddr) -> TcpStream {
    match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => panic!("connecting to {addr}: {e}"),
        Err(_) => panic!("connecting to {addr}: no answer within {TIMEOUT:?}"),
    }
}

/// Reads until the peer closes (or resets) the connection; panics if it stays open past [`TIMEOUT`].
/// A reset after some bytes is treated as the end: the bytes that arrived are returned.
pub async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let reading = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    if tokio::time::timeout(TIMEOUT, reading).await.is_err() {
        panic!("the peer did not close the connection within {TIMEOUT:?}");
    }
    bytes
}

/// Writes `request` (write errors ignored: the peer may answer and close early), then reads until
/// the peer closes. Returns everything received.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut stream = connect(addr).await;
    let _ = stream.write_all(request).await;
    read_until_close(&mut stream).await
}

/// An upstream that answers the first read of every connection with `response` and hangs up:
/// for answers no real backend gives on purpose (a body cut short, an unasked-for `101`).
pub async fn scripted_upstream(response: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("binding: {e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    tokio::spawn(async move {
        while let Ok((mut connection, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = connection.read(&mut [0u8; 16 * 1024]).await;
                let _ = connection.write_all(response).await;
            });
        }
    });
    addr
}

/// Reads one response (head plus `content-length` or chunked body) from a connection that may stay
/// open afterwards. If the peer closes or resets first, parses whatever arrived (a reset right after
/// an early answer must not lose it). Panics if no response head arrived, or after [`TIMEOUT`].
pub async fn read_response<R: AsyncRead + Unpin>(reader: &mut R) -> RawReply {
    let mut bytes = Vec::new();
    let reading = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(reply) = parse_complete(&bytes) {
                return Some(reply);
            }
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return parse(&bytes),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    };
    match tokio::time::timeout(TIMEOUT, reading).await {
        Ok(Some(reply)) => reply,
        Ok(None) => panic!("connection closed without a response; got {:?}", String::from_utf8_lossy(&bytes)),
        Err(_) => panic!("no complete response within {TIMEOUT:?}; got {:?}", String::from_utf8_lossy(&bytes)),
    }
}

/// Parses a response read until close; the body is whatever follows the head (dechunked if chunked).
pub fn parse(bytes: &[u8]) -> Option<RawReply> {
    let (status, headers, body_start) = parse_head(bytes)?;
    let rest = &bytes[body_start..];
    let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body =
        if chunked { dechunk(rest).map(|(body, _)| body).unwrap_or_else(|| rest.to_vec()) } else { rest.to_vec() };
    Some(RawReply { status, headers, body })
}

/// A complete response at the start of `bytes`, if one has fully arrived.
fn parse_complete(bytes: &[u8]) -> Option<RawReply> {
    let (status, headers, body_start) = parse_head(bytes)?;
    let rest = &bytes[body_start..];
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        dechunk(rest)?.0
    } else {
        let length: usize = header("content-length").map_or(Some(0), |v| v.parse().ok())?;
        rest.get(..length)?.to_vec()
    };
    Some(RawReply { status, headers, body })
}

/// Status, headers, and where the body starts.
type Head = (u16, Vec<(String, String)>, usize);

fn parse_head(bytes: &[u8]) -> Option<Head> {
    let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Some((status, headers, end + 4))
}

/// Decodes a chunked body; returns it and the bytes consumed, or `None` if incomplete.
fn dechunk(mut raw: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = raw.len();
    let mut body = Vec::new();
    loop {
        let eol = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&raw[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[eol + 2..];
        if size == 0 {
            // Trailer lines, if any, up to the empty line that ends the message.
            loop {
                let eol = raw.windows(2).position(|w| w == b"\r\n")?;
                raw = &raw[eol + 2..];
                if eol == 0 {
                    return Some((body, total - raw.len()));
                }
            }
        }
        body.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}

/// Starts `POST path` over HTTP/2 (prior knowledge) on a new connection and sends `first` as the
/// start of its body, leaving the stream open: the caller sends more, ends it or resets it (with
/// any reason, `NO_ERROR` included, which hyper's client never sends).
pub async fn h2_upload(
    addr: SocketAddr,
    path: &str,
    content_length: Option<u64>,
    first: &'static [u8],
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    h2_upload_with(http::Method::POST, addr, path, content_length, first).await
}

/// [`h2_upload`] with another method.
pub async fn h2_upload_with(
    method: http::Method,
    addr: SocketAddr,
    path: &str,
    content_length: Option<u64>,
    first: &'static [u8],
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let (client, connection) = h2::client::handshake(connect(addr).await)
        .await
        .unwrap_or_else(|e| panic!("HTTP/2 handshake with {addr}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.unwrap_or_else(|e| panic!("HTTP/2 connection to {addr}: {e}"));
    let mut request = http::Request::builder().method(method).uri(format!("http://{addr}{path}"));
    if let Some(length) = content_length {
        request = request.header(http::header::CONTENT_LENGTH, length);
    }
    let request = request.body(()).unwrap_or_else(|e| panic!("bad request: {e}"));
    let (response, mut body) = client.send_request(request, false).unwrap_or_else(|e| panic!("sending {path}: {e}"));
    body.send_data(bytes::Bytes::from_static(first), false).unwrap_or_else(|e| panic!("sending the body: {e}"));
    (response, body)
}
