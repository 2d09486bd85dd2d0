//! WebSocket (HTTP/1.1 upgrade) passes through the gateway; no other upgrade does.

use std::net::SocketAddr;
use std::time::Duration;

use e2e::{client, one_route_config, Backend, Gateway, TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Connects to `ws://addr/ws`, sends a text and two binary messages and checks each comes back unchanged.
async fn roundtrip(addr: SocketAddr) {
    let exchange = async {
        let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap_or_else(|e| panic!("upgrade via {addr}: {e}"));
        assert_eq!(response.status(), 101);
        let large: Vec<u8> = (0..200_000u32).map(|i| (i % 256) as u8).collect();
        for message in [Message::text("hello, gateway"), Message::binary(vec![0u8, 1, 2, 255]), Message::binary(large)]
        {
            socket.send(message.clone()).await.unwrap();
            let echoed = loop {
                match socket.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(echoed)) => break echoed,
                    other => panic!("expected the echo of a {}-byte message, got {other:?}", message.len()),
                }
            };
            assert_eq!(echoed, message);
        }
        socket.close(None).await.unwrap();
    };
    tokio::time::timeout(TIMEOUT, exchange).await.expect("WebSocket exchange did not finish in time");
}

#[tokio::test]
async fn websocket_echo_direct_roundtrips_text_and_binary() {
    let echo = Backend::spawn("echo");
    roundtrip(echo.addr).await;
}

#[tokio::test]
async fn websocket_echo_through_gateway_roundtrips_text_and_binary() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    roundtrip(gateway.addr()).await;
}

#[tokio::test]
async fn websocket_outlives_the_http_timeouts_while_messages_flow() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "header_read_timeout: 1s\nidle_timeout: 2s", ""));
    let session = async {
        let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr()))
            .await
            .unwrap_or_else(|e| panic!("upgrade via the gateway: {e}"));
        // 4 s in all: past both timeouts, with a message every 0.5 s.
        for i in 0..8 {
            let message = Message::text(format!("message {i}"));
            socket.send(message.clone()).await.unwrap_or_else(|e| panic!("sending message {i}: {e}"));
            match socket.next().await {
                Some(Ok(echoed)) => assert_eq!(echoed, message),
                other => panic!("message {i}: expected its echo, got {other:?}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        socket.close(None).await.unwrap_or_else(|e| panic!("closing: {e}"));
    };
    tokio::time::timeout(TIMEOUT, session).await.expect("WebSocket session did not finish in time");
}

#[tokio::test]
async fn websocket_silent_for_idle_timeout_is_closed() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "header_read_timeout: 60s\nidle_timeout: 1s", ""));
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr()))
        .await
        .unwrap_or_else(|e| panic!("upgrade via the gateway: {e}"));
    socket.send(Message::text("hello")).await.unwrap_or_else(|e| panic!("sending: {e}"));
    assert_eq!(socket.next().await.and_then(Result::ok), Some(Message::text("hello")));
    // Then nothing either way: the gateway closes the tunnel.
    let ended = tokio::time::timeout(TIMEOUT, socket.next())
        .await
        .unwrap_or_else(|_| panic!("the silent tunnel was still open after {TIMEOUT:?}"));
    assert!(!matches!(ended, Some(Ok(Message::Text(_) | Message::Binary(_)))), "expected the end, got {ended:?}");
}

#[tokio::test]
async fn h2c_upgrade_goes_on_as_a_plain_request() {
    // Tunnelled, an h2c upgrade would carry every later request past routing, auth and limits.
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    let headers =
        [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA")];
    let reply = client::get_with(gateway.addr(), "/", &headers).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let echoed = reply.echoed();
    for name in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(echoed.header(name), None, "{name} reached the upstream");
    }
}
