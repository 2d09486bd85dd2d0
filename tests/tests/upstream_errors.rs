//! Upstream failures map to 502 / 504 JSON errors, and the gateway keeps serving afterwards.

use e2e::client::{empty, request};
use e2e::{client, closed_port_addr, config, one_route_config, raw, Backend, Gateway};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

/// The gateway is still up and proxying: a plain request through it succeeds.
async fn assert_still_serving(gateway: &Gateway, path: &str) {
    let reply = client::get(gateway.addr(), path).await;
    assert_eq!(reply.status, 200, "follow-up request {path}: {}", reply.text());
    assert_eq!(reply.echoed().path, path);
}

#[tokio::test]
async fn upstream_nothing_listening_returns_502_upstream_connect_error() {
    let echo = Backend::spawn("echo");
    let dead = closed_port_addr();
    let yaml = config(
        &format!(
            r#"
upstreams:
  dead: {{ endpoints: ["http://{dead}"], connect_timeout: 2s }}
  echo: {{ endpoints: ["${{echo}}"] }}
routes:
  - {{ name: dead, match: {{ path_prefix: /dead }}, upstream: dead }}
  - {{ name: live, upstream: echo }}
"#
        ),
        &[&echo],
    );
    let gateway = Gateway::start(&yaml);

    client::get(gateway.addr(), "/dead/x").await.assert_error(502, "upstream_connect_error");
    assert_still_serving(&gateway, "/live").await;
    client::get(gateway.addr(), "/dead/again").await.assert_error(502, "upstream_connect_error");
}

#[tokio::test]
async fn upstream_slower_than_route_timeout_returns_504_upstream_timeout() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "timeout: 300ms"));

    client::get(gateway.addr(), "/slow/3000").await.assert_error(504, "upstream_timeout");
    assert_still_serving(&gateway, "/after").await;
}

#[tokio::test]
async fn upstream_request_timeout_applies_when_route_sets_none() {
    let echo = Backend::spawn("echo");
    let yaml = config(
        r#"
upstreams:
  echo: { endpoints: ["${echo}"], request_timeout: 300ms }
routes:
  - { name: all, upstream: echo }
"#,
        &[&echo],
    );
    let gateway = Gateway::start(&yaml);

    client::get(gateway.addr(), "/slow/3000").await.assert_error(504, "upstream_timeout");
    assert_still_serving(&gateway, "/after").await;
}

#[tokio::test]
async fn upstream_body_stalling_past_route_timeout_ends_the_response_in_an_error() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "timeout: 300ms"));

    // The head comes at once; the body's first byte would come ten minutes later.
    let response = client::open(gateway.addr(), request("GET", "/drip/2/600000").body(empty()).unwrap()).await.unwrap();
    assert_eq!(response.status(), 200);
    let body = tokio::time::timeout(e2e::TIMEOUT, response.into_body().collect()).await;
    let body = body.unwrap_or_else(|_| panic!("the gateway kept a stalled body open: {}", gateway.stderr()));
    assert!(body.is_err(), "a cut-off body must not look complete to the client");

    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let timeouts = r#"gateway_upstream_errors_total{kind="timeout",upstream="echo"} 1"#;
    assert!(metrics.lines().any(|l| l == timeouts), "{metrics}");
    assert_still_serving(&gateway, "/after").await;
}

#[tokio::test]
async fn upstream_body_arriving_steadily_may_outlast_route_timeout() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "timeout: 1s"));

    // 30 bytes 50 ms apart: 1.5 s in all, but never a second's wait.
    let reply = client::get(gateway.addr(), "/drip/30/50").await;
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "x".repeat(30)));
}

#[tokio::test]
async fn upstream_response_head_too_large_returns_502_upstream_error() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    client::get(gateway.addr(), "/huge-headers").await.assert_error(502, "upstream_error");
    // Past 64 KiB, even when the whole head comes in one read; just under it, served.
    for kib in [65, 100] {
        client::get(gateway.addr(), &format!("/huge-headers/{kib}")).await.assert_error(502, "upstream_error");
    }
    assert_eq!(client::get(gateway.addr(), "/huge-headers/63").await.status, 200);
    assert_still_serving(&gateway, "/after").await;
}

#[tokio::test]
async fn upstream_error_status_passes_through_unchanged() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    for code in [404u16, 500, 503] {
        let reply = client::get(gateway.addr(), &format!("/status/{code}")).await;
        assert_eq!(reply.status.as_u16(), code, "{}", reply.text());
        assert_eq!(reply.echoed().backend, "echo", "the upstream's own body, not a gateway error");
        assert!(reply.header("x-request-id").is_some(), "x-request-id on a proxied response");
    }
}

/// Two endpoints, the first refusing connections; round robin alternates between them, and every
/// request sent to the dead one meets it (it never leaves the rotation).
fn half_dead_config(echo: &Backend, dead: std::net::SocketAddr, preserve_host: bool) -> String {
    config(
        &format!(
            r#"
upstreams:
  pair: {{ endpoints: ["http://{dead}", "${{echo}}"], passive_health: {{ max_fails: 0 }} }}
routes:
  - {{ name: pair, upstream: pair, preserve_host: {preserve_host} }}
"#
        ),
        &[echo],
    )
}

#[tokio::test]
async fn upstream_connect_failure_without_body_is_sent_to_the_next_endpoint() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&half_dead_config(&echo, closed_port_addr(), false));

    for i in 0..4 {
        let reply = client::get(gateway.addr(), &format!("/item/{i}")).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
        let echoed = reply.echoed();
        assert_eq!(echoed.path, format!("/item/{i}"));
        // Host follows the endpoint the request went to (preserve_host: false).
        let expected = echo.url().trim_start_matches("http://").to_owned();
        assert_eq!(echoed.header("host"), Some(expected.as_str()), "request {i}: Host names the endpoint reached");
    }
    assert_eq!(echo.stats().await.requests, 4);
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    assert!(
        metrics.lines().any(|l| l == r#"gateway_upstream_retries_total{reason="connect_failed",upstream="pair"} 2"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn upstream_connect_failure_with_a_body_is_not_sent_again() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&half_dead_config(&echo, closed_port_addr(), true));

    let mut statuses = Vec::new();
    for i in 0..4 {
        let request = client::request("POST", "/orders").body(client::full(format!("order {i}")));
        let reply = client::send(gateway.addr(), request.unwrap_or_else(|e| panic!("bad request: {e}"))).await;
        statuses.push(reply.status.as_u16());
    }
    statuses.sort_unstable();
    // Round robin: half went to the dead endpoint and failed there; the body is not replayed.
    assert_eq!(statuses, [200, 200, 502, 502]);
    assert_eq!(echo.stats().await.requests, 2);
}

#[tokio::test]
async fn upstream_that_stops_reading_an_upload_returns_504_upstream_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // An upstream that takes the first bytes of a request and then never reads again.
    let stuck = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let yaml = format!(
        "\nupstreams:\n  stuck: {{ endpoints: [\"http://{}\"] }}\nroutes:\n  - {{ name: upload, upstream: stuck, timeout: 1s, max_body_size: 1GiB }}\n",
        stuck.local_addr().unwrap()
    );
    let gateway = Gateway::start(&config(&yaml, &[]));
    let held = tokio::spawn(async move {
        let (mut connection, _) = stuck.accept().await.unwrap();
        let _ = connection.read(&mut [0u8; 1024]).await;
        std::future::pending::<()>().await;
    });

    // The client always has more to send: only the upstream makes the upload wait.
    let (mut from_gateway, mut to_gateway) = e2e::raw::connect(gateway.addr()).await.into_split();
    let uploading = tokio::spawn(async move {
        to_gateway.write_all(b"PUT /up HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 1073741824\r\n\r\n").await?;
        let piece = vec![b'x'; 64 * 1024];
        loop {
            to_gateway.write_all(&piece).await?;
        }
        #[expect(unreachable_code, reason = "the loop ends with the first write error")]
        std::io::Result::Ok(())
    });
    let reply = e2e::raw::read_response(&mut from_gateway).await;
    assert_eq!(reply.status, 504, "{reply:?}");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(body["error"], "upstream_timeout", "{body}");
    uploading.abort();
    held.abort();

    // The upstream's failure, not the client's: counted against it.
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let timeouts = r#"gateway_upstream_errors_total{kind="timeout",upstream="stuck"} 1"#;
    assert!(metrics.lines().any(|l| l == timeouts), "{metrics}");
}

/// One route to an upstream that answers every request with `response` and hangs up.
async fn scripted(response: &'static [u8]) -> Gateway {
    let upstream = raw::scripted_upstream(response).await;
    let yaml = format!("\nupstreams:\n  scripted: {{ endpoints: [\"http://{upstream}\"] }}\nroutes:\n  - {{ name: all, upstream: scripted }}\n");
    Gateway::start(&config(&yaml, &[]))
}

#[tokio::test]
async fn upstream_speaking_http10_is_answered_as_http11() {
    let gateway = scripted(b"HTTP/1.0 200 OK\r\ncontent-type: text/plain\r\n\r\nhello").await;
    // Two requests on one connection: the first did not turn it into an HTTP/1.0 one.
    let mut stream = raw::connect(gateway.addr()).await;
    for i in 0..2 {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
        let reply = raw::read_response(&mut stream).await;
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"hello"[..]), "request {i}: {reply:?}");
    }
}

#[tokio::test]
async fn upstream_transfer_coding_other_than_chunked_returns_502() {
    let gateway = scripted(b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").await;
    client::get(gateway.addr(), "/").await.assert_error(502, "upstream_error");
    // Chunked twice: one layer of chunks would reach the client as the body.
    let gateway =
        scripted(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\na\r\n5\r\nhello\r\n0\r\n\r\n").await;
    client::get(gateway.addr(), "/").await.assert_error(502, "upstream_error");
}

/// hyper accepts a Content-Length of equal values (`2, 2`, or the field twice); passed on, the
/// list makes the response malformed to an HTTP/2 client (RFC 9113 section 8.1.1), which refuses
/// it. RFC 9110 section 8.6: one value goes on.
#[tokio::test]
async fn upstream_content_length_of_equal_values_goes_on_as_one() {
    for head in [
        &b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok"[..],
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok",
    ] {
        let gateway = scripted(head).await;
        let mut stream = raw::connect(gateway.addr()).await;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
        let reply = raw::read_response(&mut stream).await;
        assert_eq!((reply.status, reply.body.as_slice()), (200, &b"ok"[..]), "{reply:?}");
        let lengths: Vec<_> = reply.headers.iter().filter(|(name, _)| name == "content-length").collect();
        assert_eq!(lengths.len(), 1, "{reply:?}");
        assert_eq!(lengths[0].1, "2", "{reply:?}");
    }
}

/// RFC 9110 section 15: a status outside 100 to 599 is no status; clients may choke on it.
#[tokio::test]
async fn upstream_status_outside_100_to_599_returns_502() {
    let gateway = scripted(b"HTTP/1.1 600 Odd\r\ncontent-length: 2\r\n\r\nok").await;
    client::get(gateway.addr(), "/").await.assert_error(502, "upstream_error");
    let gateway = scripted(b"HTTP/1.1 599 Odd\r\ncontent-length: 2\r\n\r\nok").await;
    assert_eq!(client::get(gateway.addr(), "/").await.status, 599);
}

#[tokio::test]
async fn upstream_response_with_more_than_100_header_fields_returns_502() {
    fn head(fields: usize) -> &'static [u8] {
        let extra: String = (0..fields - 1).map(|i| format!("x-field-{i}: v\r\n")).collect();
        format!("HTTP/1.1 200 OK\r\n{extra}content-length: 2\r\n\r\nok").leak().as_bytes()
    }
    // Read raw: with the gateway's own fields added, the response has more than a hyper client takes.
    for (fields, status) in [(100, 200), (101, 502)] {
        let gateway = scripted(head(fields)).await;
        let mut stream = raw::connect(gateway.addr()).await;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
        assert_eq!(raw::read_response(&mut stream).await.status, status, "{fields} header fields");
    }
}

/// `max_requests` caps the requests in flight to an upstream: past it the gateway answers 503
/// itself, counts it, and takes requests again as soon as one in flight ends.
#[tokio::test]
async fn upstream_past_max_requests_returns_503_upstream_overloaded_until_one_ends() {
    let echo = Backend::spawn("echo");
    let yaml = config(
        "upstreams:\n  echo: { endpoints: [\"${echo}\"], max_requests: 2 }\nroutes:\n  - { name: all, upstream: echo }\n",
        &[&echo],
    );
    let gateway = Gateway::start(&yaml);
    // Two requests the echo holds for far longer than this test runs.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut stream = raw::connect(gateway.addr()).await;
        stream.write_all(b"GET /slow/600000 HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
        held.push(stream);
    }
    e2e::eventually("both held requests at the echo", || async { echo.stats().await.requests == 2 }).await;

    let refused = client::get(gateway.addr(), "/third").await;
    refused.assert_error(503, "upstream_overloaded");
    assert_eq!(echo.stats().await.requests, 2, "the refused request reached the echo");
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let line = "gateway_upstream_overloaded_total{upstream=\"echo\"} 1";
    assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");

    // One client leaves: its request ends, and there is room again.
    drop(held.pop());
    e2e::eventually("a request served once a slot is free", || async {
        client::get(gateway.addr(), "/fourth").await.status == 200
    })
    .await;
}
