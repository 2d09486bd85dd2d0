//! The admin listener: its health endpoints, and clients that stall on it.

use e2e::{client, one_route_config, Backend, Gateway};

#[tokio::test]
async fn admin_healthz_returns_200_ok() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let reply = client::get(gateway.admin_addr(), "/healthz").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text().trim(), "ok");
}

#[tokio::test]
async fn admin_readyz_returns_200_when_serving() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    assert_eq!(client::get(gateway.admin_addr(), "/readyz").await.status, 200);
}

#[tokio::test]
async fn admin_connection_that_never_finishes_its_head_is_closed() {
    use tokio::io::AsyncWriteExt;
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "header_read_timeout: 300ms", ""));
    let mut stalled = e2e::raw::connect(gateway.admin_addr()).await;
    stalled.write_all(b"GET /metrics HTTP/1.1\r\nhost: admin\r\n").await.unwrap();
    // read_until_close panics if the connection is still open after its bounded wait.
    e2e::raw::read_until_close(&mut stalled).await;
    assert_eq!(client::get(gateway.admin_addr(), "/healthz").await.status, 200, "the listener serves on");
}
