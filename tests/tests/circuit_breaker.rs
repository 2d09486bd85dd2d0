//! Circuit breakers (`upstreams.*.circuit_breaker`): a failing upstream stops getting requests
//! (503 `circuit_open` with `Retry-After`, nothing forwarded), a probe after `open_for` decides,
//! other upstreams are unaffected, and `/metrics` shows the state. Clients that abandon or stall
//! their own uploads are not the upstream's failures and never open it. The state gauge tells what
//! is true at the scrape: after `open_for` with no request, and after a reload that replaced or
//! removed the breaker.
//!
//! The echo fails on demand (`/status/503`), so "failing" is a path, not a dead process. Waits are
//! bounded polls; nothing asserts wall-clock time (`open_for` is 1 s, the shortest allowed, and
//! the probe test only waits for it to pass).

use std::time::{Duration, Instant};

use e2e::client::{self, Reply};
use e2e::{config, config_version, fetch_until, raw, Backend, ConfigDir, Gateway, TIMEOUT};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

/// Opens after 3 requests in the window when at least half failed; probes after 1 s.
fn breaker_config(flaky: &Backend, steady: &Backend) -> String {
    config(
        "upstreams:
  flaky:
    endpoints: [\"${flaky}\"]
    circuit_breaker: { failure_rate: 0.5, min_requests: 3, window: 60s, open_for: 1s }
  steady: { endpoints: [\"${steady}\"] }
routes:
  - { name: flaky, match: { path_prefix: /flaky }, upstream: flaky, strip_prefix: true }
  - { name: steady, match: { path_prefix: /steady }, upstream: steady, strip_prefix: true }
",
        &[flaky, steady],
    )
}

async fn get(gateway: &Gateway, path: &str) -> Reply {
    client::get(gateway.addr(), path).await
}

fn assert_circuit_open(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 503, "{what}: {reply:?}");
    let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert_eq!(body["error"], "circuit_open", "{what}: {body}");
    let retry_after: u64 = (reply.header("retry-after"))
        .unwrap_or_else(|| panic!("{what}: no Retry-After; {reply:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("{what}: Retry-After is not seconds ({e})"));
    assert_eq!(retry_after, 1, "{what}: Retry-After with open_for 1s");
}

async fn metrics(gateway: &Gateway) -> String {
    client::get(gateway.admin_addr(), "/metrics").await.text()
}

/// Polls `/metrics` until it has `line`; panics with the exposition after [`TIMEOUT`].
async fn wait_for_metric(gateway: &Gateway, line: &str) {
    let what = format!("`{line}` in /metrics");
    fetch_until(&what, || metrics(gateway), |text| text.lines().any(|l| l == line), String::clone).await;
}

/// Sends `path` until the breaker lets it through after `open_for` (the probe) and returns that
/// reply; every refusal before it must be the breaker's.
async fn probe(gateway: &Gateway, path: &str) -> Reply {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let reply = get(gateway, path).await;
        // The echo's own 503 has no `circuit_open` error: that would be the probe, forwarded.
        if !reply.text().contains("circuit_open") {
            return reply;
        }
        assert_circuit_open(&reply, "waiting for open_for to pass");
        assert!(Instant::now() < deadline, "the breaker never let a probe through");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Three failures open the breaker (3 requests, all failed >= 0.5).
async fn open_it(gateway: &Gateway) {
    for i in 0..3 {
        assert_eq!(get(gateway, "/flaky/status/503").await.status, 503, "failure {i} reaches the echo");
    }
}

#[tokio::test]
async fn breaker_opens_after_failures_and_stops_forwarding() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "a closed breaker forwards");
    // One success and two failures: 2 of 3 failed, over half.
    assert_eq!(get(&gateway, "/flaky/status/503").await.status, 503);
    assert_eq!(get(&gateway, "/flaky/status/503").await.status, 503);
    let forwarded = flaky.stats().await.requests;
    assert_eq!(forwarded, 3);

    let refused = get(&gateway, "/flaky/ok").await;
    assert_circuit_open(&refused, "open breaker");
    assert_eq!(flaky.stats().await.requests, forwarded, "an open breaker must not forward");
    assert_eq!(get(&gateway, "/steady/ok").await.status, 200, "another upstream is unaffected");
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 1").await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_transitions_total{to=\"open\",upstream=\"flaky\"} 1").await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"steady\"} 0").await;
}

#[tokio::test]
async fn breaker_probe_success_closes_it() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    open_it(&gateway).await;
    assert_circuit_open(&get(&gateway, "/flaky/ok").await, "just opened");

    // After open_for the next request is the probe; it succeeds, and the breaker closes.
    let probe = probe(&gateway, "/flaky/ok").await;
    assert_eq!(probe.status, 200, "the probe: {probe:?}");
    for i in 0..5 {
        assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "request {i} after the breaker closed");
    }
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 0").await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_transitions_total{to=\"half_open\",upstream=\"flaky\"} 1").await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_transitions_total{to=\"closed\",upstream=\"flaky\"} 1").await;
}

#[tokio::test]
async fn breaker_probe_failure_opens_it_again() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    open_it(&gateway).await;

    let probe = probe(&gateway, "/flaky/status/503").await;
    assert_eq!(probe.status, 503, "the probe reached the failing echo: {probe:?}");
    assert_circuit_open(&get(&gateway, "/flaky/ok").await, "a failed probe opens it again");
    wait_for_metric(&gateway, "gateway_circuit_breaker_transitions_total{to=\"open\",upstream=\"flaky\"} 2").await;
}

/// Sends the head of a POST to `/flaky/ok` declaring a 1,000-byte body, and the first 10 bytes of it.
async fn start_upload(gateway: &Gateway) -> tokio::net::TcpStream {
    let mut stream = raw::connect(gateway.addr()).await;
    let head = "POST /flaky/ok HTTP/1.1\r\nhost: breaker.test\r\ncontent-length: 1000\r\n\r\n0123456789";
    stream.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("sending the upload: {e}"));
    stream
}

#[tokio::test]
async fn breaker_ignores_clients_that_abandon_their_upload() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    for _ in 0..3 {
        // The body never ends: the client hangs up after 10 of its 1,000 bytes.
        drop(start_upload(&gateway).await);
    }
    // Failures of the client's, not of the upstream: enough of them would open it otherwise.
    wait_for_metric(&gateway, "gateway_requests_total{route=\"flaky\",status=\"4xx\"} 3").await;
    assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "the breaker must stay closed");
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 0").await;
}

#[tokio::test]
async fn breaker_ignores_uploads_too_slow_for_the_route_timeout() {
    let flaky = Backend::spawn("flaky");
    let gateway = Gateway::start(&config(
        "upstreams:
  flaky:
    endpoints: [\"${flaky}\"]
    circuit_breaker: { failure_rate: 0.5, min_requests: 3, window: 60s, open_for: 60s }
routes:
  - { name: flaky, match: { path_prefix: /flaky }, upstream: flaky, strip_prefix: true, timeout: 1s }
",
        &[&flaky],
    ));
    for i in 0..3 {
        // 10 of 1,000 bytes, then nothing: the route's timeout runs out waiting for the client.
        let mut upload = start_upload(&gateway).await;
        let reply = raw::read_response(&mut upload).await;
        assert_eq!(reply.status, 408, "stalled upload {i}: {reply:?}");
        let body: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_else(|e| panic!("{reply:?}: {e}"));
        assert_eq!(body["error"], "request_body_timeout", "{body}");
    }
    assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "the breaker must stay closed");
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 0").await;
}

#[tokio::test]
async fn breaker_ignores_http2_clients_that_reset_their_upload() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    // HTTP/2 with prior knowledge: a body that fails makes the client reset the stream.
    let io = hyper_util::rt::TokioIo::new(raw::connect(gateway.addr()).await);
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    for i in 0..3u64 {
        let (chunks, body) = tokio::sync::mpsc::unbounded_channel::<std::io::Result<bytes::Bytes>>();
        let body = futures_util::stream::unfold(body, |mut body| async { Some((body.recv().await?, body)) });
        let request =
            http::Request::post(format!("http://{}/flaky/ok", gateway.addr())).body(client::stream(body)).unwrap();
        let response = tokio::spawn(sender.send_request(request));
        chunks.send(Ok(bytes::Bytes::from_static(b"0123456789"))).unwrap();
        // The upload is under way once the request reached the echo; then the client gives up.
        fetch_until("the upload at the echo", || flaky.stats(), |s| s.requests == i + 1, |s| s.requests.to_string())
            .await;
        chunks.send(Err(std::io::Error::other("the client gives up"))).unwrap();
        let response = response.await.unwrap();
        assert!(response.is_err(), "upload {i} was reset, yet: {:?}", response.map(|r| r.status()));
    }
    wait_for_metric(&gateway, "gateway_requests_total{route=\"flaky\",status=\"4xx\"} 3").await;
    assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "the breaker must stay closed");
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 0").await;
    let request = http::Request::get(format!("http://{}/flaky/ok", gateway.addr())).body(client::empty()).unwrap();
    let reply = sender.send_request(request).await.unwrap();
    assert_eq!(reply.status(), 200, "the connection serves on after the resets");
    reply.into_body().collect().await.unwrap();
}

#[tokio::test]
async fn breaker_ignores_http2_uploads_reset_with_no_error() {
    // hyper reads RST_STREAM(NO_ERROR) as a clean end: the upstream would see a short body.
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    for i in 0..3u64 {
        let (_response, mut upload) = raw::h2_upload(gateway.addr(), "/flaky/ok", Some(100_000), b"0123456789").await;
        fetch_until("the upload at the echo", || flaky.stats(), |s| s.requests == i + 1, |s| s.requests.to_string())
            .await;
        upload.send_reset(h2::Reason::NO_ERROR);
    }
    wait_for_metric(&gateway, "gateway_requests_total{route=\"flaky\",status=\"4xx\"} 3").await;
    assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "the breaker must stay closed");
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 0").await;
    wait_for_metric(&gateway, "gateway_upstream_errors_total{kind=\"error\",upstream=\"flaky\"} 0").await;
}

/// Opens after 3 requests in the window when at least half failed.
fn one_upstream_breaker_config(endpoint: std::net::SocketAddr) -> String {
    config(
        &format!(
            "upstreams:
  bad:
    endpoints: [\"http://{endpoint}\"]
    circuit_breaker: {{ failure_rate: 0.5, min_requests: 3, window: 60s, open_for: 60s }}
routes:
  - {{ name: bad, upstream: bad }}
"
        ),
        &[],
    )
}

#[tokio::test]
async fn breaker_counts_bodies_the_upstream_breaks_off() {
    // A good head, then 10 of the 100 bytes it announced, then the connection is gone.
    let upstream = raw::scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789").await;
    let gateway = Gateway::start(&one_upstream_breaker_config(upstream));
    for i in 0..3 {
        // hyper may drop the connection before it flushed the head: either way, nothing complete.
        let request = client::request("GET", "/x").body(client::empty()).unwrap();
        if let Ok(response) = client::open(gateway.addr(), request).await {
            assert_eq!(response.status(), 200, "request {i}: the head was fine");
            assert!(
                response.into_body().collect().await.is_err(),
                "request {i}: a cut-off body must not look complete"
            );
        }
    }
    // Told when the body ends, which the client may see first.
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"bad\"} 1").await;
    get(&gateway, "/x").await.assert_error(503, "circuit_open");
    wait_for_metric(&gateway, "gateway_upstream_errors_total{kind=\"error\",upstream=\"bad\"} 3").await;
}

#[tokio::test]
async fn breaker_counts_switching_protocols_nobody_asked_for() {
    let upstream =
        raw::scripted_upstream(b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: x\r\n\r\n").await;
    let gateway = Gateway::start(&one_upstream_breaker_config(upstream));
    for _ in 0..3 {
        get(&gateway, "/x").await.assert_error(502, "upstream_error");
    }
    get(&gateway, "/x").await.assert_error(503, "circuit_open");
    wait_for_metric(&gateway, "gateway_upstream_errors_total{kind=\"error\",upstream=\"bad\"} 3").await;
}

#[tokio::test]
async fn breaker_counts_bodies_the_upstream_leaves_waiting() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let yaml = breaker_config(&flaky, &steady)
        .replace("upstream: flaky, strip_prefix: true", "upstream: flaky, strip_prefix: true, timeout: 200ms");
    let gateway = Gateway::start(&yaml);
    for i in 0..3 {
        // The head comes at once; the body's first byte ten minutes later.
        let response =
            client::open(gateway.addr(), client::request("GET", "/flaky/drip/2/600000").body(client::empty()).unwrap());
        let response = response.await.unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(response.status(), 200, "request {i}");
        assert!(response.into_body().collect().await.is_err(), "request {i}: the body was cut off");
    }
    // Told when the body ends, which the client may see first.
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 1").await;
    assert_circuit_open(&get(&gateway, "/flaky/ok").await, "three bodies left waiting");
}

#[tokio::test]
async fn breaker_counts_a_request_another_endpoint_served_after_a_failed_connect_as_served() {
    let echo = Backend::spawn("echo");
    let dead = e2e::closed_port_addr();
    let yaml = config(
        &format!(
            "upstreams:
  pair:
    endpoints: [\"http://{dead}\", \"${{echo}}\"]
    passive_health: {{ max_fails: 0 }}
    circuit_breaker: {{ failure_rate: 0.5, min_requests: 1, window: 60s, open_for: 60s }}
routes:
  - {{ name: pair, upstream: pair }}
"
        ),
        &[&echo],
    );
    let gateway = Gateway::start(&yaml);
    // Round robin: every other request meets the dead endpoint first and is served by the echo.
    // Counted once each, as served, they never open the breaker (one failure in two would).
    for i in 0..6 {
        assert_eq!(get(&gateway, "/x").await.status, 200, "request {i}");
    }
    wait_for_metric(&gateway, "gateway_upstream_retries_total{reason=\"connect_failed\",upstream=\"pair\"} 3").await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"pair\"} 0").await;
}

#[tokio::test]
async fn breaker_opens_when_no_endpoint_can_be_connected_to() {
    let first = e2e::closed_port_addr();
    let second = std::iter::repeat_with(e2e::closed_port_addr).find(|addr| *addr != first).unwrap();
    let yaml = config(
        &format!(
            "upstreams:
  pair:
    endpoints: [\"http://{first}\", \"http://{second}\"]
    passive_health: {{ max_fails: 0 }}
    circuit_breaker: {{ failure_rate: 0.5, min_requests: 2, window: 60s, open_for: 60s }}
routes:
  - {{ name: pair, upstream: pair }}
"
        ),
        &[],
    );
    let gateway = Gateway::start(&yaml);
    // Each request fails on both endpoints: one failure each for the breaker.
    for _ in 0..2 {
        get(&gateway, "/x").await.assert_error(502, "upstream_connect_error");
    }
    get(&gateway, "/x").await.assert_error(503, "circuit_open");
}

#[tokio::test]
async fn breaker_left_idle_after_open_for_reads_half_open() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    open_it(&gateway).await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 1").await;
    // No request after it opened: only the passing of open_for can change what a scrape reads.
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 2").await;
    assert_eq!(flaky.stats().await.requests, 3, "nothing was sent to find out");
}

#[tokio::test]
async fn breaker_probe_abandoned_by_its_client_is_one_transition() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let gateway = Gateway::start(&breaker_config(&flaky, &steady));
    open_it(&gateway).await;
    assert_circuit_open(&get(&gateway, "/flaky/ok").await, "just opened");
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 2").await;

    // The first probe reaches the echo, which holds its answer; its client leaves, freeing the slot.
    let mut first = raw::connect(gateway.addr()).await;
    let head = "GET /flaky/slow/600000 HTTP/1.1\r\nhost: breaker.test\r\n\r\n";
    first.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("sending the first probe: {e}"));
    e2e::eventually("the first probe at the echo", || async { flaky.stats().await.requests == 4 }).await;
    drop(first);

    let second = probe(&gateway, "/flaky/ok").await;
    assert_eq!(second.status, 200, "the second probe: {second:?}");
    // One open period ended once, however many probes it took.
    wait_for_metric(&gateway, "gateway_circuit_breaker_transitions_total{to=\"closed\",upstream=\"flaky\"} 1").await;
    let text = metrics(&gateway).await;
    let half_opened = "gateway_circuit_breaker_transitions_total{to=\"half_open\",upstream=\"flaky\"} 1";
    assert!(text.lines().any(|l| l == half_opened), "want `{half_opened}`:\n{text}");
    let logged = || gateway.stderr().matches("circuit breaker half-open").count();
    e2e::eventually("the half-open log line", || async { logged() > 0 }).await;
    assert_eq!(logged(), 1, "one half-open log line:\n{}", gateway.stderr());
}

/// Applies `yaml` through the gateway's config file and waits until it is the running config.
async fn reload(gateway: &Gateway, dir: &ConfigDir, yaml: &str) {
    dir.replace(yaml);
    gateway.wait_for_version(&config_version(yaml)).await;
}

/// A gateway on [`breaker_config`] (with `open_for: 60s`, so nothing changes by time) in a config
/// directory of its own, `flaky`'s breaker opened.
async fn opened_on_reloadable_config(flaky: &Backend, steady: &Backend) -> (Gateway, ConfigDir, String) {
    let yaml = breaker_config(flaky, steady).replace("open_for: 1s", "open_for: 60s");
    let dir = ConfigDir::new(&yaml);
    let gateway = Gateway::start_with_file(dir.path());
    open_it(&gateway).await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 1").await;
    (gateway, dir, yaml)
}

#[tokio::test]
async fn breaker_replaced_by_a_reload_reads_as_the_new_one() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let (gateway, dir, yaml) = opened_on_reloadable_config(&flaky, &steady).await;
    // Other settings: a new breaker, closed, while the old one is still open.
    reload(&gateway, &dir, &yaml.replace("open_for: 60s", "open_for: 30s")).await;
    for i in 0..3 {
        assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "request {i} through the new breaker");
    }
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 0").await;
}

#[tokio::test]
async fn breaker_removed_by_a_reload_leaves_no_state_behind() {
    let (flaky, steady) = (Backend::spawn("flaky"), Backend::spawn("steady"));
    let (gateway, dir, yaml) = opened_on_reloadable_config(&flaky, &steady).await;
    // Without a breaker every request goes through: what 0 (closed) says.
    let unguarded =
        yaml.replace("    circuit_breaker: { failure_rate: 0.5, min_requests: 3, window: 60s, open_for: 60s }\n", "");
    assert_ne!(unguarded, yaml, "the breaker is removed");
    reload(&gateway, &dir, &unguarded).await;
    assert_eq!(get(&gateway, "/flaky/ok").await.status, 200, "no breaker");
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"flaky\"} 0").await;

    // Without the upstream, no series for it.
    let gone = config(
        "upstreams:\n  steady: { endpoints: [\"${steady}\"] }\nroutes:\n  - { name: steady, upstream: steady }\n",
        &[&steady],
    );
    reload(&gateway, &dir, &gone).await;
    let series = "gateway_circuit_breaker_state{upstream=\"flaky\"}";
    let what = format!("no `{series}` in /metrics");
    fetch_until(&what, || metrics(&gateway), |text| !text.contains(series), String::clone).await;
    wait_for_metric(&gateway, "gateway_circuit_breaker_state{upstream=\"steady\"} 0").await;
}
