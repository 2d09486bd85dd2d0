//! The admin listener's health endpoints.

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
