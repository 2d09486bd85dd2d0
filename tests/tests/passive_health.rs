//! Passive health (`upstreams.*.passive_health`): an endpoint that cannot be connected to leaves
//! the rotation, so requests stop failing on it, and a request after `fail_timeout` that connects
//! puts it back. The dead endpoint is a port nothing listens on, brought to life by starting an
//! echo on it; waits are bounded polls, nothing asserts wall-clock time.

use std::net::SocketAddr;

use e2e::{client, closed_port_addr, config, fetch_until, Backend, Gateway};

/// Two endpoints, the first one dead; round robin would alternate between them.
fn pair_config(dead: SocketAddr, live: &Backend, passive_health: &str) -> String {
    config(
        &format!(
            r#"
upstreams:
  pair: {{ endpoints: ["http://{dead}", "${{live}}"], passive_health: {{ {passive_health} }} }}
routes:
  - {{ name: pair, upstream: pair }}
"#
        ),
        &[live],
    )
}

async fn post(gateway: &Gateway, i: usize) -> u16 {
    let request = client::request("POST", "/orders").body(client::full(format!("order {i}"))).unwrap();
    client::send(gateway.addr(), request).await.status.as_u16()
}

async fn metric(gateway: &Gateway, name: &str) -> Option<String> {
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    metrics.lines().find(|l| l.starts_with(name)).map(str::to_owned)
}

#[tokio::test]
async fn passive_health_endpoint_refusing_connections_stops_getting_requests() {
    let live = Backend::spawn("live");
    let dead = closed_port_addr();
    let gateway = Gateway::start(&pair_config(dead, &live, "fail_timeout: 60s"));

    // A POST with a body is never sent twice: the one that meets the dead endpoint fails, and
    // that takes it out of rotation (max_fails 1, the default).
    let mut statuses = Vec::new();
    for i in 0..8 {
        statuses.push(post(&gateway, i).await);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 502]);
    assert_eq!(live.stats().await.requests, 7);

    let ejections = format!("gateway_upstream_endpoint_ejections_total{{endpoint=\"{dead}\",upstream=\"pair\"}}");
    assert_eq!(metric(&gateway, &ejections).await, Some(format!("{ejections} 1")));
    let in_rotation =
        |endpoint| format!("gateway_upstream_endpoint_in_rotation{{endpoint=\"{endpoint}\",upstream=\"pair\"}}");
    assert_eq!(metric(&gateway, &in_rotation(dead)).await, Some(format!("{} 0", in_rotation(dead))));
    assert_eq!(metric(&gateway, &in_rotation(live.addr)).await, Some(format!("{} 1", in_rotation(live.addr))));
    let connect_errors = "gateway_upstream_errors_total{kind=\"connect\",upstream=\"pair\"}";
    assert_eq!(metric(&gateway, connect_errors).await, Some(format!("{connect_errors} 1")));
    assert!(gateway.stderr().contains("out of rotation"), "a warning names the endpoint: {}", gateway.stderr());
}

#[tokio::test]
async fn passive_health_endpoint_that_comes_back_rejoins_the_rotation() {
    let live = Backend::spawn("live");
    let dead = closed_port_addr();
    let gateway = Gateway::start(&pair_config(dead, &live, "fail_timeout: 1s"));
    let mut statuses = Vec::new();
    for i in 0..4 {
        statuses.push(post(&gateway, i).await);
    }
    assert_eq!(statuses.iter().filter(|&&s| s == 502).count(), 1, "{statuses:?}");

    // It comes back: after fail_timeout one request tries it, connects, and it is in again.
    let back = Backend::spawn_on("back", dead);
    let what = "a request reaching the endpoint that came back";
    fetch_until(
        what,
        || async { (post(&gateway, 0).await, back.stats().await.requests) },
        |&(_, n)| n > 0,
        |r| format!("{r:?}"),
    )
    .await;
    let before = (live.stats().await.requests, back.stats().await.requests);
    for i in 0..10 {
        assert_eq!(post(&gateway, i).await, 200, "request {i} after the endpoint came back");
    }
    let after = (live.stats().await.requests, back.stats().await.requests);
    assert_eq!((after.0 - before.0, after.1 - before.1), (5, 5), "round robin over both again");
    assert!(gateway.stderr().contains("back in rotation"), "{}", gateway.stderr());
    let in_rotation = format!("gateway_upstream_endpoint_in_rotation{{endpoint=\"{dead}\",upstream=\"pair\"}}");
    assert_eq!(metric(&gateway, &in_rotation).await, Some(format!("{in_rotation} 1")));
}

#[tokio::test]
async fn passive_health_max_fails_0_keeps_every_endpoint_in_rotation() {
    let live = Backend::spawn("live");
    let gateway = Gateway::start(&pair_config(closed_port_addr(), &live, "max_fails: 0"));
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(post(&gateway, i).await);
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 502, 502, 502]);
}

#[tokio::test]
async fn passive_health_lone_endpoint_is_always_tried() {
    let dead = closed_port_addr();
    let yaml = format!(
        "\nupstreams:\n  lone: {{ endpoints: [\"http://{dead}\"] }}\nroutes:\n  - {{ name: lone, upstream: lone }}\n"
    );
    let gateway = Gateway::start(&config(&yaml, &[]));
    for _ in 0..3 {
        client::get(gateway.addr(), "/").await.assert_error(502, "upstream_connect_error");
    }
    // Nowhere else to send it: it is never reported as out of rotation.
    let back = Backend::spawn_on("back", dead);
    assert_eq!(client::get(gateway.addr(), "/").await.status, 200, "no fail_timeout to wait out");
    assert_eq!(back.stats().await.requests, 1);
    assert!(!gateway.stderr().contains("out of rotation"), "{}", gateway.stderr());
}

#[tokio::test]
async fn passive_health_trial_that_connects_but_times_out_puts_the_endpoint_back() {
    // A slow answer says the endpoint is there: its route timeout is not a failed connect.
    let live = Backend::spawn("live");
    let dead = closed_port_addr();
    let gateway = Gateway::start(
        &pair_config(dead, &live, "fail_timeout: 1s")
            .replace("{ name: pair, upstream: pair }", "{ name: pair, upstream: pair, timeout: 1s }"),
    );
    assert_eq!(post(&gateway, 0).await, 502, "the first request meets the dead endpoint");
    let in_rotation = format!("gateway_upstream_endpoint_in_rotation{{endpoint=\"{dead}\",upstream=\"pair\"}}");
    assert_eq!(metric(&gateway, &in_rotation).await, Some(format!("{in_rotation} 0")));

    // It comes back mute: it accepts connections and never answers.
    let mute = tokio::net::TcpListener::bind(dead).await.unwrap();
    let _mute = tokio::spawn(async move {
        let (connection, _) = mute.accept().await.unwrap();
        std::future::pending::<()>().await;
        drop(connection);
    });
    let what = "the request trying the endpoint again, timed out";
    fetch_until(what, || post(&gateway, 1), |&status| status == 504, u16::to_string).await;
    assert_eq!(metric(&gateway, &in_rotation).await, Some(format!("{in_rotation} 1")), "it connected");
}

#[tokio::test]
async fn passive_health_every_endpoint_out_counts_each_ejection_once() {
    let (a, b) = (closed_port_addr(), closed_port_addr());
    let yaml = format!(
        "\nupstreams:\n  gone: {{ endpoints: [\"http://{a}\", \"http://{b}\"], passive_health: {{ fail_timeout: 60s }} }}\nroutes:\n  - {{ name: gone, upstream: gone }}\n"
    );
    let gateway = Gateway::start(&config(&yaml, &[]));
    for _ in 0..6 {
        // Both out: requests still go to them in turn (better an attempt than a refusal).
        client::get(gateway.addr(), "/").await.assert_error(502, "upstream_connect_error");
    }
    for endpoint in [a, b] {
        let ejections =
            format!("gateway_upstream_endpoint_ejections_total{{endpoint=\"{endpoint}\",upstream=\"gone\"}}");
        assert_eq!(metric(&gateway, &ejections).await, Some(format!("{ejections} 1")), "they left once each");
    }
    let warnings = gateway.stderr().lines().filter(|l| l.contains("out of rotation")).count();
    assert_eq!(warnings, 2, "{}", gateway.stderr());
}
