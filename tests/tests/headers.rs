//! What the gateway does to request headers: hop-by-hop removal, forwarding headers, request ids,
//! trace context, Host.

use e2e::client::{self, empty, request};
use e2e::{is_uuid_v7, one_route_config, Backend, Gateway};

fn gateway_trusting(echo: &Backend, trusted: &str) -> Gateway {
    Gateway::start(&one_route_config(echo, &format!("trusted_proxies: {trusted}"), ""))
}

#[tokio::test]
async fn headers_hop_by_hop_request_headers_removed() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    // RFC 9110 §7.6.1: Connection and every header it names are for this hop only.
    let reply = client::get_with(
        gateway.addr(),
        "/",
        &[
            ("connection", "keep-alive, X-Custom-Hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "gzip"),
            ("upgrade", "foo/1"),
            ("x-end-to-end", "kept"),
        ],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echoed = reply.echoed();
    for name in ["connection", "x-custom-hop", "keep-alive", "proxy-connection", "te", "upgrade"] {
        assert_eq!(echoed.header(name), None, "`{name}` reached the upstream: {:?}", echoed.headers);
    }
    assert_eq!(echoed.header_all("x-end-to-end"), ["kept"]);
}

#[tokio::test]
async fn headers_te_trailers_kept() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let reply = client::get_with(gateway.addr(), "/", &[("te", "trailers")]).await;
    assert_eq!(reply.echoed().header_all("te"), ["trailers"]);
}

/// HTTP/2 lets a client split `Cookie` into several fields; an HTTP/1.1 upstream reads one (or
/// joins them with ",", which makes the first cookie's value swallow the rest): they go as one,
/// joined with "; " (RFC 9113 section 8.2.3). A repeated equal `content-length` goes once, as
/// nginx refuses the repeat with 400.
#[tokio::test]
async fn headers_http2_split_cookies_joined_and_content_length_sent_once() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let (client, connection) = h2::client::handshake(e2e::raw::connect(gateway.addr()).await).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::post(format!("http://{}/", gateway.addr()))
        .header("cookie", "session=abc")
        .header("cookie", "csrf=xyz")
        .header("content-length", "5")
        .header("content-length", "5")
        .body(())
        .unwrap();
    let (response, mut body) = client.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(b"hello"), true).unwrap();
    let response = response.await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let mut received = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = received.data().await {
        bytes.extend_from_slice(&chunk.unwrap());
    }
    let reply = client::Reply { status, headers, body: bytes.into() };
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echoed = reply.echoed();
    assert_eq!(echoed.header_all("cookie"), ["session=abc; csrf=xyz"]);
    assert_eq!(echoed.header_all("content-length"), ["5"]);
    assert_eq!(echoed.body_bytes, 5);
}

#[tokio::test]
async fn headers_untrusted_peer_forwarding_headers_replaced() {
    let echo = Backend::spawn("echo");
    let gateway = gateway_trusting(&echo, "[]");

    let reply = client::get_with(
        gateway.addr(),
        "/",
        &[
            ("host", "gw.test"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "evil.example"),
            ("forwarded", "for=1.2.3.4;proto=https"),
            // Read as X-Forwarded-For by CGI and PHP; Spring and Tomcat build redirects from the
            // port and prefix; many backends take X-Real-IP as the client's address.
            ("x_forwarded_for", "9.9.9.9"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "//evil.example"),
            ("x-real-ip", "6.6.6.6"),
        ],
    )
    .await;
    let echoed = reply.echoed();
    for forged in ["x_forwarded_for", "x-forwarded-port", "x-forwarded-prefix", "x-real-ip"] {
        assert_eq!(echoed.header_all(forged), [""; 0], "{forged} reached the upstream");
    }
    assert_eq!(echoed.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(echoed.header_all("x-forwarded-host"), ["gw.test"]);
    assert_eq!(echoed.header_all("forwarded"), [r#"for=127.0.0.1;host="gw.test";proto=http"#]);
}

#[tokio::test]
async fn headers_untrusted_peer_without_forwarding_headers_gets_them_added() {
    let echo = Backend::spawn("echo");
    let gateway = gateway_trusting(&echo, "[]");

    let echoed = client::get_with(gateway.addr(), "/", &[("host", "gw.test")]).await.echoed();
    assert_eq!(echoed.header_all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed.header_all("x-forwarded-proto"), ["http"]);
    assert_eq!(echoed.header_all("x-forwarded-host"), ["gw.test"]);
    assert_eq!(echoed.header_all("forwarded"), [r#"for=127.0.0.1;host="gw.test";proto=http"#]);
}

#[tokio::test]
async fn headers_trusted_peer_forwarding_headers_appended() {
    let echo = Backend::spawn("echo");
    let gateway = gateway_trusting(&echo, "[127.0.0.0/8]");

    let reply = client::get_with(
        gateway.addr(),
        "/",
        &[
            ("host", "gw.test"),
            ("x-forwarded-for", "1.2.3.4"),
            ("x-forwarded-proto", "https"),
            ("x-forwarded-host", "original.example"),
            ("forwarded", "for=1.2.3.4"),
        ],
    )
    .await;
    let echoed = reply.echoed();
    assert_eq!(echoed.header_all("x-forwarded-for"), ["1.2.3.4, 127.0.0.1"]);
    assert_eq!(echoed.header_all("x-forwarded-proto"), ["https"]);
    assert_eq!(echoed.header_all("x-forwarded-host"), ["original.example"]);
    assert_eq!(echoed.header_all("forwarded"), [r#"for=1.2.3.4, for=127.0.0.1;host="gw.test";proto=http"#]);
}

#[tokio::test]
async fn headers_trusted_peer_without_xff_gets_peer_only() {
    let echo = Backend::spawn("echo");
    let gateway = gateway_trusting(&echo, "[127.0.0.0/8]");

    let echoed = client::get_with(gateway.addr(), "/", &[("host", "gw.test")]).await.echoed();
    assert_eq!(echoed.header_all("x-forwarded-for"), ["127.0.0.1"]);
}

#[tokio::test]
async fn headers_request_id_well_formed_kept_and_forwarded() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let longest = "a".repeat(128);
    for id in ["abc-123.X:y_z", "0", longest.as_str()] {
        let reply = client::get_with(gateway.addr(), "/", &[("x-request-id", id)]).await;
        assert_eq!(reply.header("x-request-id"), Some(id), "returned to the client");
        assert_eq!(reply.echoed().header_all("x-request-id"), [id], "forwarded upstream");
    }
}

#[tokio::test]
async fn headers_request_id_malformed_replaced_with_uuid_v7() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let too_long = "a".repeat(129);
    for id in [too_long.as_str(), "has space", "a/b", "semi;colon", "quote\"d", ""] {
        let reply = client::get_with(gateway.addr(), "/", &[("x-request-id", id)]).await;
        let returned = reply.header("x-request-id").unwrap_or_else(|| panic!("no x-request-id for {id:?}")).to_owned();
        assert!(is_uuid_v7(&returned), "replacement for {id:?} is {returned:?}, not a UUIDv7");
        assert_eq!(
            reply.echoed().header_all("x-request-id"),
            [returned.as_str()],
            "upstream saw the replacement for {id:?}"
        );
    }
}

#[tokio::test]
async fn headers_request_id_missing_generated_and_forwarded() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let first = client::get(gateway.addr(), "/").await;
    let second = client::get(gateway.addr(), "/").await;
    let ids: Vec<String> =
        [&first, &second].iter().map(|r| r.header("x-request-id").unwrap_or_default().to_owned()).collect();
    assert!(ids.iter().all(|id| is_uuid_v7(id)), "generated ids {ids:?}");
    assert_ne!(ids[0], ids[1], "each request gets its own id");
    assert_eq!(first.echoed().header_all("x-request-id"), [ids[0].as_str()]);
}

#[tokio::test]
async fn headers_preserve_host_default_forwards_client_host() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let echoed = client::get_with(gateway.addr(), "/", &[("host", "client.example:8080")]).await.echoed();
    assert_eq!(echoed.header_all("host"), ["client.example:8080"]);
}

#[tokio::test]
async fn headers_preserve_host_false_sends_endpoint_authority() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "preserve_host: false"));

    let echoed = client::get_with(gateway.addr(), "/", &[("host", "client.example")]).await.echoed();
    assert_eq!(echoed.header_all("host"), [echo.addr.to_string().as_str()]);
}

#[tokio::test]
async fn headers_error_response_carries_request_id() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "match: { path: /only }"));

    let reply = client::send(
        gateway.addr(),
        request("GET", "/missing").header("x-request-id", "keep-me").body(empty()).unwrap(),
    )
    .await;
    let json = reply.assert_error(404, "no_route");
    assert_eq!(json["request_id"], "keep-me");
}

/// Every default identity header, in odd cases and repeated: a client must never be able to tell an
/// upstream who it is by a header, on any route (zero trust).
const SPOOFED: &[(&str, &str)] = &[
    ("X-User-Id", "1"),
    ("x-user-role", "admin"),
    ("x-user-role", "root"),
    ("X-USER-EMAIL", "ceo@example.com"),
    ("x-user-name", "ceo"),
    ("x-authenticated-user", "ceo"),
    ("x-forwarded-user", "ceo"),
    ("x-consumer-id", "7"),
    ("x-auth-request-user", "ceo"),
    ("x-auth-request-email", "ceo@example.com"),
    // What CGI, PHP and nginx with `underscores_in_headers` read as `X-User-Id` and `X-User-Role`.
    ("X_User_Id", "1"),
    ("x-user_role", "admin"),
    // Names the list covers by a pattern (`x-user-*`, `x-jwt-*`...), and other products' names.
    ("x-user-scopes", "admin"),
    ("X_User_Sub", "ceo"),
    ("x-user-groups", "admins"),
    ("x-user", "ceo"),
    ("x-userid", "1"),
    ("x-auth-user", "ceo"),
    ("x-auth-request-groups", "admins"),
    ("x-authenticated-userid", "ceo"),
    ("x-authenticated-scope", "admin"),
    ("x-consumer-username", "ceo"),
    ("x-forwarded-groups", "admins"),
    ("remote-user", "ceo"),
    ("x-remote-user", "ceo"),
    ("x-jwt-payload", "eyJzdWIiOiJjZW8ifQ"),
    ("x-jwt-claim-sub", "ceo"),
    ("x-goog-authenticated-user-email", "ceo@example.com"),
    ("x-amzn-oidc-identity", "ceo"),
    ("x-ms-client-principal-name", "ceo"),
];

#[tokio::test]
async fn headers_spoofed_identity_headers_never_reach_the_upstream_on_any_route() {
    let echo = Backend::spawn("echo");
    let routes = "\nupstreams:\n  echo: { endpoints: [\"${echo}\"] }\nroutes:\n  \
                  - { name: api, match: { path_prefix: /api }, upstream: echo, strip_prefix: true }\n  \
                  - { name: rest, upstream: echo }\n";
    let gateway = Gateway::start(&e2e::config(routes, &[&echo]));
    let mut headers = SPOOFED.to_vec();
    headers.extend([("x-end-to-end", "kept"), ("x-users-count", "kept"), ("x-api-key", "kept")]);
    for path in ["/api/orders", "/anything"] {
        let reply = client::get_with(gateway.addr(), path, &headers).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let echoed = reply.echoed();
        for (name, _) in SPOOFED {
            assert_eq!(echoed.header(&name.to_ascii_lowercase()), None, "{path}: `{name}` reached the upstream");
        }
        for kept in ["x-end-to-end", "x-users-count", "x-api-key"] {
            assert_eq!(echoed.header_all(kept), ["kept"], "{path}: `{kept}`");
        }
    }
}

#[tokio::test]
async fn headers_configured_identity_headers_replace_the_default_list() {
    let echo = Backend::spawn("echo");
    let routes = "\nidentity_headers: [x-tenant, x-user-id]\nupstreams:\n  echo: { endpoints: [\"${echo}\"] }\n\
                  routes:\n  - { name: all, upstream: echo }\n";
    let gateway = Gateway::start(&e2e::config(routes, &[&echo]));
    let reply =
        client::get_with(gateway.addr(), "/", &[("x-tenant", "acme"), ("x-user-id", "1"), ("x-user-role", "r")]).await;
    let echoed = reply.echoed();
    assert_eq!((echoed.header("x-tenant"), echoed.header("x-user-id")), (None, None));
    assert_eq!(echoed.header("x-user-role"), Some("r"), "only the configured list is stripped");
}

/// `00-<32 hex>-<16 hex>-00`: a trace the gateway started (version 00, not sampled).
fn started_by_gateway(traceparent: Option<&str>) -> bool {
    let Some(value) = traceparent else { return false };
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let parts: Vec<&str> = value.split('-').collect();
    matches!(parts.as_slice(), ["00", trace, parent, "00"] if hex(trace, 32) && hex(parent, 16))
}

#[tokio::test]
async fn headers_valid_traceparent_and_tracestate_pass_untouched() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let reply =
        client::get_with(gateway.addr(), "/", &[("traceparent", traceparent), ("tracestate", "rojo=00f067aa0ba902b7")])
            .await;
    let echoed = reply.echoed();
    assert_eq!(echoed.header_all("traceparent"), [traceparent]);
    assert_eq!(echoed.header_all("tracestate"), ["rojo=00f067aa0ba902b7"]);
}

#[tokio::test]
async fn headers_missing_or_invalid_traceparent_replaced_by_a_new_trace() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    let first = client::get(gateway.addr(), "/").await.echoed();
    let second = client::get(gateway.addr(), "/").await.echoed();
    let (first, second) = (first.header("traceparent"), second.header("traceparent"));
    assert!(started_by_gateway(first), "{first:?}");
    assert!(started_by_gateway(second), "{second:?}");
    assert_ne!(first.map(|t| &t[3..35]), second.map(|t| &t[3..35]), "each request starts its own trace");

    let invalid = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
    let reply = client::get_with(gateway.addr(), "/", &[("traceparent", invalid), ("tracestate", "rojo=1")]).await;
    let echoed = reply.echoed();
    assert!(started_by_gateway(echoed.header("traceparent")), "{:?}", echoed.header("traceparent"));
    assert_eq!(echoed.header("tracestate"), None, "a tracestate of no valid trace is dropped");
}

#[tokio::test]
async fn headers_traceparent_named_in_connection_still_reaches_the_upstream() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    // Whether the gateway started the trace or the client did, the upstream gets it.
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let headers = [("connection", "traceparent"), ("traceparent", traceparent)];
    let given = client::get_with(gateway.addr(), "/", &headers).await.echoed();
    assert_eq!(given.header_all("traceparent"), [traceparent]);
    let started = client::get_with(gateway.addr(), "/", &[("connection", "traceparent")]).await.echoed();
    assert!(started_by_gateway(started.header("traceparent")), "{:?}", started.header("traceparent"));
}

/// An upstream that records every byte of one request (chunked, so it reads to the empty line
/// after the last chunk and its trailers), answers 200, and hands the bytes over.
async fn recording_upstream() -> (std::net::SocketAddr, tokio::task::JoinHandle<String>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let recorded = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut bytes = Vec::new();
        let mut buf = [0u8; 4096];
        // The head's end, then the last chunk's `0\r\n` and the end of its trailer section.
        while !bytes.windows(5).any(|w| w == b"\r\n0\r\n") || !bytes.ends_with(b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the gateway closed mid-request: {}", String::from_utf8_lossy(&bytes));
            bytes.extend_from_slice(&buf[..n]);
        }
        stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.unwrap();
        String::from_utf8_lossy(&bytes).to_lowercase()
    });
    (addr, recorded)
}

#[tokio::test]
async fn headers_identity_headers_in_request_trailers_never_reach_the_upstream() {
    let (upstream, recorded) = recording_upstream().await;
    let yaml = format!(
        "\nupstreams:\n  raw: {{ endpoints: [\"http://{upstream}\"] }}\nroutes:\n  - {{ name: all, upstream: raw }}\n"
    );
    let gateway = Gateway::start(&e2e::config(&yaml, &[]));
    let request = "POST /orders HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\ntrailer: x-user-id\r\n\r\n\
                   5\r\nhello\r\n0\r\nx-user-id: admin\r\nx-other: 1\r\n\r\n";
    let mut client = e2e::raw::connect(gateway.addr()).await;
    tokio::io::AsyncWriteExt::write_all(&mut client, request.as_bytes()).await.unwrap();
    assert_eq!(e2e::raw::read_response(&mut client).await.status, 200);
    let recorded = tokio::time::timeout(e2e::TIMEOUT, recorded).await.unwrap().unwrap();
    assert!(recorded.contains("hello"), "the body arrived: {recorded}");
    // Trailers are not passed on at all: nothing checks them.
    assert!(!recorded.contains("x-user-id: admin"), "{recorded}");
    assert!(!recorded.contains("x-other"), "{recorded}");
}
