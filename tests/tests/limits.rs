//! Size and time limits on the client side: 413, 431, 408, idle keep-alive connections, clients
//! that stop reading; and request heads the gateway refuses (400, 501).

use std::time::Duration;

use e2e::client::{self, Reply};
use e2e::raw::{self, RawReply};
use e2e::{one_route_config, Backend, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Checks a gateway error read over raw TCP the way `Reply::assert_error` does over hyper.
fn assert_raw_error(reply: &RawReply, status: u16, code: &str) {
    let as_reply = Reply {
        status: http::StatusCode::from_u16(reply.status).unwrap(),
        headers: reply
            .headers
            .iter()
            .map(|(n, v)| (http::HeaderName::try_from(n.as_str()).unwrap(), v.parse().unwrap()))
            .collect(),
        body: reply.body.clone().into(),
    };
    as_reply.assert_error(status, code);
}

fn status_of(bytes: &[u8]) -> u16 {
    raw::parse(bytes).unwrap_or_else(|| panic!("no HTTP response in {:?}", String::from_utf8_lossy(bytes))).status
}

#[tokio::test]
async fn limits_content_length_over_route_max_returns_413_without_forwarding() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "max_body_size: 1MiB"));

    // Only the head is sent: the declared length alone must be enough to refuse.
    let mut stream = raw::connect(gateway.addr()).await;
    stream.write_all(b"POST /upload HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 1048577\r\n\r\n").await.unwrap();
    assert_raw_error(&raw::read_response(&mut stream).await, 413, "payload_too_large");
    assert_eq!(echo.stats().await.requests, 0, "the upstream saw the request");
}

#[tokio::test]
async fn limits_content_length_at_route_max_passes() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "max_body_size: 1KiB"));

    let body = vec![1u8; 1024];
    let request = e2e::client::request("POST", "/").body(e2e::client::full(body)).unwrap();
    let reply = e2e::client::send(gateway.addr(), request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!((reply.echoed().body_bytes, reply.echoed().body_sum), (1024, 1024));
}

#[tokio::test]
async fn limits_server_max_body_size_applies_to_routes_without_their_own() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "max_body_size: 1KiB", ""));

    let mut stream = raw::connect(gateway.addr()).await;
    stream.write_all(b"POST / HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 1025\r\n\r\n").await.unwrap();
    assert_raw_error(&raw::read_response(&mut stream).await, 413, "payload_too_large");
}

#[tokio::test]
async fn limits_chunked_body_over_route_max_returns_413() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "max_body_size: 1MiB"));

    let mut stream = raw::connect(gateway.addr()).await;
    let (mut reader, mut writer) = stream.split();
    let chunk = vec![b'x'; 64 * 1024];
    // 20 x 64 KiB = 1.25 MiB, written while the response is read: the gateway may answer (and stop
    // reading) as soon as the limit is crossed, so write errors are expected and ignored.
    let write = async move {
        let _ = writer.write_all(b"POST /upload HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\n\r\n").await;
        for _ in 0..20 {
            let mut framed = format!("{:x}\r\n", chunk.len()).into_bytes();
            framed.extend_from_slice(&chunk);
            framed.extend_from_slice(b"\r\n");
            if writer.write_all(&framed).await.is_err() {
                return;
            }
        }
        let _ = writer.write_all(b"0\r\n\r\n").await;
    };
    let read = raw::read_response(&mut reader);
    let ((), reply) = tokio::join!(write, read);
    assert_raw_error(&reply, 413, "payload_too_large");
}

#[tokio::test]
async fn limits_chunked_body_under_route_max_passes() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "max_body_size: 1MiB"));

    let chunks = futures_util::stream::iter((0..8).map(|_| Ok(bytes::Bytes::from(vec![2u8; 64 * 1024]))));
    let request = e2e::client::request("POST", "/").body(e2e::client::stream(chunks)).unwrap();
    let reply = e2e::client::send(gateway.addr(), request).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echoed = reply.echoed();
    assert_eq!((echoed.body_bytes, echoed.body_sum), (512 * 1024, 2 * 512 * 1024));
}

#[tokio::test]
async fn limits_head_over_max_header_size_returns_431() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "max_header_size: 8KiB", ""));

    let big = "a".repeat(10 * 1024);
    let request = format!("GET / HTTP/1.1\r\nhost: gw.test\r\nx-big: {big}\r\n\r\n");
    assert_eq!(status_of(&raw::exchange(gateway.addr(), request.as_bytes()).await), 431);
    assert_eq!(echo.stats().await.requests, 0, "the upstream saw the request");
}

#[tokio::test]
async fn limits_head_under_max_header_size_passes() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "max_header_size: 8KiB", ""));

    let value = "a".repeat(6 * 1024);
    let reply = e2e::client::get_with(gateway.addr(), "/", &[("x-big", value.as_str())]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echoed().header("x-big").map(str::len), Some(value.len()));
}

#[tokio::test]
async fn limits_more_headers_than_max_headers_returns_431() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "max_headers: 20", ""));

    let request = |extra: usize| {
        let headers: String = (0..extra).map(|i| format!("x-h{i}: {i}\r\n")).collect();
        format!("GET / HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n{headers}\r\n")
    };
    assert_eq!(status_of(&raw::exchange(gateway.addr(), request(40).as_bytes()).await), 431);
    // Host, Connection and 18 more: exactly the limit, whatever the gateway adds (a `traceparent`).
    assert_eq!(status_of(&raw::exchange(gateway.addr(), request(18).as_bytes()).await), 200);
}

/// `GET /` over HTTP/2 with prior knowledge (no TLS) carrying `extra` headers.
async fn h2c_get_with_headers(gateway: &Gateway, extra: usize) -> Reply {
    use http_body_util::{BodyExt, Empty};
    let stream = raw::connect(gateway.addr()).await;
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::get(format!("http://{}/", gateway.addr()));
    for i in 0..extra {
        request = request.header(format!("x-h{i}"), i.to_string());
    }
    let response = sender.send_request(request.body(Empty::<bytes::Bytes>::new()).unwrap()).await.unwrap();
    let (parts, body) = response.into_parts();
    Reply { status: parts.status, headers: parts.headers, body: body.collect().await.unwrap().to_bytes() }
}

#[tokio::test]
async fn limits_more_headers_than_max_headers_over_http2_returns_431() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "max_headers: 20", ""));
    h2c_get_with_headers(&gateway, 21).await.assert_error(431, "too_many_headers");
    assert_eq!(h2c_get_with_headers(&gateway, 20).await.status, 200, "exactly the limit");
}

#[tokio::test]
async fn limits_transfer_coding_other_than_chunked_returns_501() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    // hyper decodes the chunks; the gzip under them would reach the upstream unannounced.
    for codings in ["gzip, chunked", "chunked, chunked"] {
        let request = format!("POST / HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\ntransfer-encoding: {codings}\r\n\r\n5\r\nhello\r\n0\r\n\r\n");
        let reply = raw::parse(&raw::exchange(gateway.addr(), request.as_bytes()).await).expect("a response");
        assert_raw_error(&reply, 501, "unsupported_transfer_coding");
    }
    assert_eq!(echo.stats().await.requests, 0, "none reached the upstream");
}

#[tokio::test]
async fn limits_http11_request_needs_exactly_one_host_that_is_a_host() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    let cases = [
        ("no Host", ""),
        ("two Hosts", "host: a.test\r\nhost: b.test\r\n"),
        ("a Host with a path and query", "host: evil.test/x?\r\n"),
        ("a Host with userinfo", "host: user@a.test\r\n"),
        ("a port that is not a number", "host: a.test:abc\r\n"),
        ("a port over 65535", "host: a.test:99999\r\n"),
        ("two ports", "host: a.test:80:81\r\n"),
        ("an unclosed IPv6 literal", "host: [::1\r\n"),
        ("brackets around no IPv6 address", "host: [a.test]:80\r\n"),
        ("a bracket in a name", "host: a]b.test\r\n"),
        // A list in X-Forwarded-Host whose first entry no host route saw.
        ("a comma", "host: evil.test,a.test\r\n"),
        ("a sub-delim", "host: a.test;x=1\r\n"),
        ("a percent-encoded name", "host: a%2etest\r\n"),
    ];
    for (what, hosts) in cases {
        let request = format!("GET / HTTP/1.1\r\n{hosts}connection: close\r\n\r\n");
        let reply = raw::parse(&raw::exchange(gateway.addr(), request.as_bytes()).await).expect("a response");
        assert_eq!(reply.status, 400, "{what}: {reply:?}");
        assert_raw_error(&reply, 400, "bad_request");
    }
    assert_eq!(echo.stats().await.requests, 0, "none reached the upstream");
    // HTTP/1.0 predates Host.
    let reply = raw::exchange(gateway.addr(), b"GET / HTTP/1.0\r\n\r\n").await;
    assert_eq!(status_of(&reply), 200);
    for host in ["[::1]:8080", "[2001:db8::7]", "a-b.c_d.test:443", "127.0.0.1", "a.test:65535", "a.test:", ""] {
        let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        assert_eq!(status_of(&raw::exchange(gateway.addr(), request.as_bytes()).await), 200, "{host}");
    }
    // An authority-form target has a host and no path: the path is what is wrong with it.
    let reply = raw::parse(
        &raw::exchange(gateway.addr(), b"GET a.test:80 HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n").await,
    );
    let reply = reply.expect("a response");
    assert_raw_error(&reply, 400, "bad_request");
    let body = String::from_utf8_lossy(&reply.body);
    assert!(body.contains("the request target must be an absolute path"), "{body}");
    // An absolute-form target names the host too: both must agree.
    for (host, status) in [("a.test", 200), ("A.TEST", 200), ("b.test", 400)] {
        let request = format!("GET http://a.test/ HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        assert_eq!(status_of(&raw::exchange(gateway.addr(), request.as_bytes()).await), status, "{host}");
    }
}

#[tokio::test]
async fn limits_http2_authority_is_a_host_and_any_host_header_names_it() {
    use http_body_util::{BodyExt, Empty};
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    let io = hyper_util::rt::TokioIo::new(raw::connect(gateway.addr()).await);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    for (host, status) in [("a.test", 200), ("b.test", 400)] {
        let request = http::Request::get("http://a.test/").header("host", host).body(Empty::<bytes::Bytes>::new());
        let response = sender.send_request(request.unwrap()).await.unwrap();
        assert_eq!(response.status(), status, "host {host} for :authority a.test");
        response.into_body().collect().await.unwrap();
    }
    // Without a Host header `:authority` is the host, held to the same rules (no userinfo).
    for (uri, status) in [("http://a.test:8080/", 200), ("http://good.test@evil.test/", 400)] {
        let response = sender.send_request(http::Request::get(uri).body(Empty::<bytes::Bytes>::new()).unwrap());
        let response = response.await.unwrap();
        assert_eq!(response.status(), status, ":authority of {uri}");
        response.into_body().collect().await.unwrap();
    }
}

#[tokio::test]
async fn limits_partial_head_stalled_returns_408_and_closes() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "header_read_timeout: 300ms", ""));

    let mut stream = raw::connect(gateway.addr()).await;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\n").await.unwrap();
    // Never finish the head; the gateway must answer 408 and close (read_until_close bounds the wait).
    let bytes = raw::read_until_close(&mut stream).await;
    assert_eq!(status_of(&bytes), 408);
}

#[tokio::test]
async fn limits_idle_keepalive_connection_closed_by_gateway() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "idle_timeout: 300ms", ""));

    let mut stream = raw::connect(gateway.addr()).await;
    stream.write_all(b"GET /first HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
    let reply = raw::read_response(&mut stream).await;
    assert_eq!(reply.status, 200);
    assert_ne!(reply.header("connection"), Some("close"), "the gateway should keep the connection alive at first");
    // Then stay silent: the gateway must close the connection (EOF) with nothing more sent.
    let rest = raw::read_until_close(&mut stream).await;
    assert!(rest.is_empty(), "unexpected bytes before close: {:?}", String::from_utf8_lossy(&rest));
}

/// An idle HTTP/2 connection ends with GOAWAY (NO_ERROR), as nginx's does: a client whose request
/// raced the close learns it was not processed and may send it again, where a bare close leaves it
/// not knowing.
#[tokio::test]
async fn limits_idle_http2_connection_is_closed_with_goaway() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "idle_timeout: 300ms", ""));

    let (client, connection) = h2::client::handshake(raw::connect(gateway.addr()).await).await.unwrap();
    let connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/", gateway.addr())).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    // Idle from here: the gateway closes the connection (h2 answers its PING on its own).
    let ended = tokio::time::timeout(Duration::from_secs(10), connection).await;
    assert!(ended.is_ok(), "the idle HTTP/2 connection is still open after 10 s");
    let error = client.ready().await.expect_err("a request could still be sent on the closed connection");
    assert!(error.is_go_away() && error.reason() == Some(h2::Reason::NO_ERROR), "closed without GOAWAY: {error:?}");
}

/// A client that never answers the PING that follows the GOAWAY is closed all the same.
#[tokio::test]
async fn limits_idle_http2_client_not_answering_the_goaway_ping_is_closed() {
    const GOAWAY: u8 = 0x7;
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "idle_timeout: 300ms", ""));

    let mut stream = raw::connect(gateway.addr()).await;
    // The connection preface and an empty SETTINGS frame; nothing is read or answered after.
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0").await.unwrap();
    let received = raw::read_until_close(&mut stream).await;
    let mut frames = Vec::new();
    let mut rest = &received[..];
    while rest.len() >= 9 {
        let length = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
        frames.push(rest[3]);
        rest = &rest[(9 + length).min(rest.len())..];
    }
    assert!(frames.contains(&GOAWAY), "closed without GOAWAY; frame types received: {frames:?}");
}

#[tokio::test]
async fn limits_client_not_reading_its_response_is_disconnected_after_idle_timeout() {
    const BODY: u64 = 200 * 1024 * 1024;
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "idle_timeout: 300ms", ""));

    let mut stream = raw::connect(gateway.addr()).await;
    // Far more than the socket buffers between the echo, the gateway and this client hold.
    stream.write_all(format!("GET /bytes/{BODY} HTTP/1.1\r\nhost: gw.test\r\n\r\n").as_bytes()).await.unwrap();
    // Take nothing for several idle timeouts: the gateway must give up on this client.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let received = raw::read_until_close(&mut stream).await;
    assert_eq!(status_of(&received), 200);
    assert!(received.len() < BODY as usize, "the gateway sent the whole body to a client that read nothing for 2 s");
}

/// HTTP/2 lets a client keep its connection busy (PINGs) while it leaves a stream's window shut:
/// the response waits on it all the same, and so does its upstream connection.
#[tokio::test]
async fn limits_http2_client_keeping_a_window_shut_is_disconnected_despite_pings() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "idle_timeout: 300ms", ""));

    let (client, mut connection) = h2::client::Builder::new()
        .initial_window_size(0)
        .handshake::<_, bytes::Bytes>(raw::connect(gateway.addr()).await)
        .await
        .unwrap();
    let mut ping_pong = connection.ping_pong().unwrap();
    let mut connection = tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/bytes/1000000", gateway.addr())).body(()).unwrap();
    let (response, _) = client.send_request(request, true).unwrap();
    let response = response.await.unwrap();
    assert_eq!(response.status(), 200);
    // A PING every 100 ms, the window never opened: closed within a few idle timeouts.
    for _ in 0..100 {
        if let Ok(ended) = tokio::time::timeout(Duration::from_millis(100), &mut connection).await {
            let _ = ended.unwrap();
            return;
        }
        if ping_pong.ping(h2::Ping::opaque()).await.is_err() {
            return; // closed while pinging
        }
    }
    panic!("the connection is still open after 10 s of PINGs with the response waiting on its window");
}

#[tokio::test]
async fn limits_keepalive_connection_serves_several_requests() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let mut stream = raw::connect(gateway.addr()).await;
    for path in ["/one", "/two", "/three"] {
        stream.write_all(format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\n\r\n").as_bytes()).await.unwrap();
        let reply = raw::read_response(&mut stream).await;
        assert_eq!(reply.status, 200);
        let json: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
        assert_eq!(json["path"], path);
    }
}

#[tokio::test]
async fn limits_max_connections_holds_new_connections_until_one_closes() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "max_connections: 2", ""));
    let get = b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n";
    // Two keep-alive connections, each served once: both open.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = raw::connect(gateway.addr()).await;
        stream.write_all(get).await.unwrap();
        assert_eq!(raw::read_response(&mut stream).await.status, 200);
        held.push(stream);
    }
    // A third waits in the backlog: connected by the kernel, not yet served.
    let mut third = raw::connect(gateway.addr()).await;
    third.write_all(get).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), raw::read_response(&mut third)).await;
    assert!(early.is_err(), "served past max_connections: {early:?}");
    // The admin listener is not counted: it answers, and tells.
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    for line in ["gateway_client_connections 2", "gateway_client_connections_max 2"] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    // One closes: the third is served.
    drop(held.pop());
    assert_eq!(raw::read_response(&mut third).await.status, 200);
}

/// One address may hold `max_connections_per_ip`: its next connection is closed at once, counted,
/// while other addresses (here 127.0.0.2) and trusted proxies are served; a close makes room.
#[tokio::test]
async fn limits_max_connections_per_ip_closes_an_address_s_extra_connections() {
    let echo = Backend::spawn("echo");
    let config = one_route_config(&echo, "max_connections_per_ip: 2", "").replace("127.0.0.1:0", "0.0.0.0:0");
    let gateway = Gateway::start(&config);
    let port = gateway.addr().port();
    let get = b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n";
    let served = |from: [u8; 4]| async move {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind((from, 0).into()).unwrap();
        let mut stream = socket.connect(([127, 0, 0, 1], port).into()).await.unwrap();
        stream.write_all(get).await.unwrap();
        let mut reply = Vec::new();
        // Served: a status line. Closed at accept: nothing, or a reset.
        let read = tokio::time::timeout(e2e::TIMEOUT, stream.read_buf(&mut reply)).await.unwrap();
        (matches!(read, Ok(n) if n > 0), stream)
    };
    let (first, _held1) = served([127, 0, 0, 1]).await;
    let (second, held2) = served([127, 0, 0, 1]).await;
    assert!(first && second, "the first two are served");
    let (third, _) = served([127, 0, 0, 1]).await;
    assert!(!third, "a third from 127.0.0.1 was served");
    let (other, _held3) = served([127, 0, 0, 2]).await;
    assert!(other, "another address is not held to 127.0.0.1's count");
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let line = "gateway_client_rejections_total{reason=\"per_ip_connections\"} 1";
    assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");

    drop(held2);
    e2e::eventually("a close makes room for the address", || async { served([127, 0, 0, 1]).await.0 }).await;

    // A trusted proxy speaks for many clients: not capped.
    let trusted = one_route_config(&echo, "max_connections_per_ip: 1\ntrusted_proxies: [127.0.0.1]", "");
    let proxy_facing = Gateway::start(&trusted);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = raw::connect(proxy_facing.addr()).await;
        stream.write_all(get).await.unwrap();
        assert_eq!(raw::read_response(&mut stream).await.status, 200);
        held.push(stream);
    }
}

/// Started with systemd's usual soft limit far below the hard one, the gateway raises the soft
/// limit to the hard one (as nginx's `worker_rlimit_nofile`), and `max_connections` defaults to
/// half of what the raised limit leaves after 256 descriptors kept for everything else.
#[tokio::test]
async fn limits_open_file_limit_raised_to_the_hard_one_at_start() {
    let hard = open_file_limits(std::process::id()).1;
    const SOFT: u64 = 300;
    assert!(hard >= 2 * SOFT, "this test needs a hard open file limit of at least {} (it is {hard})", 2 * SOFT);
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start_with_ulimit(&one_route_config(&echo, "", ""), &format!("-Sn {SOFT}"));
    assert_eq!(open_file_limits(gateway.pid()), (hard, hard), "the gateway's (soft, hard) open file limits");
    assert!(gateway.stderr().contains("raised the open file limit"), "{}", gateway.stderr());
    let line = format!("gateway_client_connections_max {}", (hard - 256) / 2);
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
}

/// `Max open files` of process `pid`, (soft, hard), from `/proc/<pid>/limits`.
fn open_file_limits(pid: u32) -> (u64, u64) {
    let path = format!("/proc/{pid}/limits");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
    let line = text.lines().find(|l| l.starts_with("Max open files")).unwrap_or_else(|| panic!("{path}:\n{text}"));
    let number = |word: Option<&str>| word.and_then(|w| w.parse::<u64>().ok()).unwrap_or_else(|| panic!("{line}"));
    let mut words = line.trim_start_matches("Max open files").split_whitespace();
    (number(words.next()), number(words.next()))
}

#[tokio::test]
async fn limits_heads_refused_before_routing_are_counted() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "header_read_timeout: 300ms\nmax_header_size: 8KiB", ""));
    let huge = format!("GET / HTTP/1.1\r\nhost: gw.test\r\nx-big: {}\r\n\r\n", "x".repeat(16 * 1024));
    for (request, status) in
        [(&b"GET / HTTP/9.9\r\n\r\n"[..], 400), (huge.as_bytes(), 431), (b"GET / HTTP/1.1\r\n", 408)]
    {
        assert_eq!(status_of(&raw::exchange(gateway.addr(), request).await), status);
    }
    // Counted once the connection has ended, which the client may see first: polled.
    for reason in ["malformed", "head_too_large", "head_timeout"] {
        let line = format!("gateway_client_rejections_total{{reason=\"{reason}\"}} 1");
        let metrics = || async { client::get(gateway.admin_addr(), "/metrics").await.text() };
        e2e::fetch_until(&line, metrics, |text| text.lines().any(|l| l == line), String::clone).await;
    }
}

#[tokio::test]
async fn limits_max_connections_counts_websocket_tunnels_until_they_close() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "max_connections: 1", ""));
    let (mut socket, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr()))
        .await
        .unwrap_or_else(|e| panic!("upgrade via the gateway: {e}"));
    // The upgraded connection still holds the one place.
    let mut waiting = raw::connect(gateway.addr()).await;
    waiting.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), raw::read_response(&mut waiting)).await;
    assert!(early.is_err(), "served while a WebSocket held the only place: {early:?}");
    socket.close(None).await.unwrap();
    drop(socket);
    assert_eq!(raw::read_response(&mut waiting).await.status, 200, "served once the tunnel closed");
}

#[tokio::test]
async fn limits_max_connections_raised_by_a_reload_lets_waiting_connections_in() {
    let echo = Backend::spawn("echo");
    let dir = e2e::ConfigDir::new(&one_route_config(&echo, "max_connections: 1", ""));
    let gateway = Gateway::start_with_file(dir.path());
    let get = b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n";
    let mut held = raw::connect(gateway.addr()).await;
    held.write_all(get).await.unwrap();
    assert_eq!(raw::read_response(&mut held).await.status, 200);
    let mut waiting = raw::connect(gateway.addr()).await;
    waiting.write_all(get).await.unwrap();
    let early = tokio::time::timeout(Duration::from_millis(300), raw::read_response(&mut waiting)).await;
    assert!(early.is_err(), "served past max_connections: {early:?}");
    // Nothing closes; the reload alone makes room.
    dir.replace(&one_route_config(&echo, "max_connections: 2", ""));
    assert_eq!(raw::read_response(&mut waiting).await.status, 200, "served after the reload");
    drop(held);
}

/// "Rapid reset" with a pause (CVE-2023-44487): a client opens streams, waits until the gateway
/// has sent them upstream, and resets them. Each reset costs an upstream request and connection,
/// and h2's own limit (on streams reset before they are accepted) never sees these. Once 100
/// such resets are half its streams or more, the connection is closed (GOAWAY).
#[tokio::test]
async fn limits_http2_client_resetting_streams_right_after_opening_them_is_closed() {
    const BATCH: u64 = 20;
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    let addr = gateway.addr();
    let (mut client, connection) = h2::client::handshake(raw::connect(addr).await).await.unwrap();
    let mut connection = tokio::spawn(connection);
    let (mut opened, mut closed) = (0, false);
    'attack: while opened < 50 * BATCH {
        let before = echo.stats().await.requests;
        let mut streams = Vec::new();
        for _ in 0..BATCH {
            let Ok(ready) = client.clone().ready().await else { break 'attack };
            client = ready;
            let request = http::Request::get(format!("http://{addr}/slow/5000")).body(()).unwrap();
            let Ok((response, _)) = client.send_request(request, true) else { break 'attack };
            streams.push(response);
            opened += 1;
        }
        let forwarded = async {
            while echo.stats().await.requests < before + streams.len() as u64 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::select! {
            () = forwarded => drop(streams),
            _ = &mut connection => {
                closed = true;
                break;
            }
        }
    }
    if !closed {
        let ended = tokio::time::timeout(e2e::TIMEOUT, connection).await;
        assert!(ended.is_ok(), "the connection is still open after {opened} streams reset early");
    }
    assert!(opened <= 160, "closed only after {opened} streams");
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let line = r#"gateway_client_rejections_total{reason="rapid_reset"} 1"#;
    assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    // Other clients are served as ever.
    assert_eq!(client::get(addr, "/").await.status, 200);
}

/// PINGs cost a client 17 bytes each and the gateway an answer each: a connection that floods
/// them (or SETTINGS, PRIORITY or empty DATA frames) is closed once past its burst.
#[tokio::test]
async fn limits_http2_client_flooding_pings_is_closed() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    let stream = raw::connect(gateway.addr()).await;
    let (mut reader, mut writer) = stream.into_split();
    let mut flood = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0".to_vec();
    for _ in 0..5_000 {
        flood.extend_from_slice(b"\0\0\x08\x06\0\0\0\0\0pingpong");
    }
    // Written while the answers are read, so neither side waits on the other's buffer.
    let writing = tokio::spawn(async move {
        let _ = writer.write_all(&flood).await;
        writer
    });
    let closed = tokio::time::timeout(e2e::TIMEOUT, async {
        let mut buf = [0u8; 16 * 1024];
        while matches!(reader.read(&mut buf).await, Ok(n) if n > 0) {}
    });
    assert!(closed.await.is_ok(), "the connection is still open after 5,000 PINGs at once");
    drop(writing.await);
    let line = r#"gateway_client_rejections_total{reason="control_flood"} 1"#;
    e2e::eventually(line, || async {
        client::get(gateway.admin_addr(), "/metrics").await.text().lines().any(|l| l == line)
    })
    .await;
    // Other clients, HTTP/2 ones included, are served as ever.
    let (mut h2, connection) = h2::client::handshake(raw::connect(gateway.addr()).await).await.unwrap();
    tokio::spawn(connection);
    h2 = h2.ready().await.unwrap();
    let request = http::Request::get(format!("http://{}/", gateway.addr())).body(()).unwrap();
    let (response, _) = h2.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
}

/// Each HTTP/2 stream may take an upstream connection of its own, so a few client connections
/// could hold more sockets than the process may open, and then nothing works: not new clients,
/// not the admin listener. Upstream sockets count against the open file limit too: past it a
/// request that needs a new upstream connection gets 503 `gateway_at_capacity` at once.
#[tokio::test]
async fn limits_upstream_connections_stay_within_the_open_file_limit() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start_with_ulimit(&one_route_config(&echo, "", ""), "-n 300");
    assert_eq!(open_file_limits(gateway.pid()), (300, 300));
    // Room for 44 sockets (300 less 256 kept for everything else): 2 clients and 42 upstream.
    let mut streams = tokio::task::JoinSet::new();
    for _ in 0..2 {
        let sender = h2_sender(gateway.addr()).await;
        spawn_gets(&mut streams, &sender, &format!("http://{}/slow/2000", gateway.addr()), 150);
    }
    // While they are in flight, the admin listener still answers.
    e2e::eventually("requests to reach the echo", || async { echo.stats().await.requests > 0 }).await;
    assert_eq!(client::get(gateway.admin_addr(), "/healthz").await.status, 200);
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(joined) = streams.join_next().await {
        let (status, body) = joined.unwrap();
        if status == 503 {
            assert!(String::from_utf8_lossy(&body).contains("gateway_at_capacity"), "{body:?}");
        }
        *statuses.entry(status.as_u16()).or_insert(0) += 1;
    }
    let served = statuses.get(&200).copied().unwrap_or(0);
    assert!((1..=42).contains(&served), "statuses {statuses:?}");
    assert_eq!(served + statuses.get(&503).copied().unwrap_or(0), 300, "statuses {statuses:?}");
}

/// Idle pooled connections hold descriptors too: a request that needs a new upstream connection
/// when none is left closes the connection that has idled longest, of any upstream, instead of
/// being refused while sockets nobody uses sit in the pools.
#[tokio::test]
async fn limits_idle_pooled_connections_make_room_for_new_ones() {
    let (a, b) = (Backend::spawn("a"), Backend::spawn("b"));
    let yaml = r#"
upstreams:
  a: { endpoints: ["${a}"] }
  b: { endpoints: ["${b}"] }
routes:
  - { name: a, match: { path_prefix: /a }, upstream: a, strip_prefix: true }
  - { name: b, match: { path_prefix: /b }, upstream: b, strip_prefix: true }
"#;
    let gateway = Gateway::start_with_ulimit(&e2e::config(yaml, &[&a, &b]), "-n 300");
    // Room for 44 sockets (300 less 256 kept for everything else): one client connection, and 40
    // streams at once that each take an upstream connection, pooled idle once answered.
    let sender = h2_sender(gateway.addr()).await;
    for upstream in ["a", "b"] {
        let mut streams = tokio::task::JoinSet::new();
        spawn_gets(&mut streams, &sender, &format!("http://{}/{upstream}/slow/500", gateway.addr()), 40);
        let mut statuses = std::collections::BTreeMap::new();
        while let Some(joined) = streams.join_next().await {
            let (status, body) = joined.unwrap();
            *statuses.entry(status.as_u16()).or_insert(0) += 1;
            assert_eq!(status, 200, "to {upstream}: {}; statuses so far {statuses:?}", String::from_utf8_lossy(&body));
        }
    }
    assert_eq!((a.stats().await.requests, b.stats().await.requests), (40, 40));
}

type H2Sender = hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>;

/// A new HTTP/2 connection (prior knowledge) to `addr`.
async fn h2_sender(addr: std::net::SocketAddr) -> H2Sender {
    let io = hyper_util::rt::TokioIo::new(raw::connect(addr).await);
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// `count` GETs of `uri` at once on `sender`'s connection, each giving its status and body.
fn spawn_gets(
    streams: &mut tokio::task::JoinSet<(http::StatusCode, bytes::Bytes)>,
    sender: &H2Sender,
    uri: &str,
    count: usize,
) {
    use http_body_util::{BodyExt, Empty};
    for _ in 0..count {
        let (mut sender, uri) = (sender.clone(), uri.to_owned());
        streams.spawn(async move {
            sender.ready().await.unwrap();
            let response = sender.send_request(http::Request::get(uri).body(Empty::new()).unwrap());
            let (parts, body) = response.await.unwrap().into_parts();
            (parts.status, body.collect().await.unwrap().to_bytes())
        });
    }
}
