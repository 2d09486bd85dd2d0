//! How every service holds its clients (`service::run_with`): a request head that never ends is
//! cut off, so such clients cannot pile up until the file descriptors run out.

use std::time::Duration;

use axum::routing::get;
use axum::Router;
use backends::service::{self, Limits};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::bind;

/// Far above the timeout under test: only bounds the wait, measures nothing.
const BOUND: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_request_head_that_never_ends_is_cut_off() {
    let (listener, addr) = bind().await;
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let limits = Limits { header_read_timeout: Duration::from_millis(300), ..Limits::default() };
    tokio::spawn(service::run_with(listener, app, std::future::pending(), limits));

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut rest = Vec::new();
    let read = tokio::time::timeout(BOUND, slow.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the half-sent head still held its connection after {BOUND:?}");

    // A client that finishes its head is served as before.
    let mut quick = TcpStream::connect(addr).await.unwrap();
    quick.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(BOUND, quick.read_to_string(&mut answer)).await.unwrap().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("ok"), "{answer}");
}
