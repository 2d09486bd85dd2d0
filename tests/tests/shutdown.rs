//! The process: SIGTERM stops accepting, lets in-flight requests finish, exits 0; start-up does not
//! depend on anyone reading stdout.

use std::io::ErrorKind;

use e2e::{client, eventually, one_route_config, Backend, Gateway, TIMEOUT};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Starts `GET path` through the gateway in the background and waits until the echo has received it.
async fn start_in_flight(gateway: &Gateway, echo: &Backend, path: &str) -> tokio::task::JoinHandle<client::Reply> {
    let before = echo.stats().await.requests;
    let (addr, path_owned) = (gateway.addr(), path.to_owned());
    let in_flight = tokio::spawn(async move { client::get(addr, &path_owned).await });
    eventually(&format!("{path} to reach the echo"), || async { echo.stats().await.requests > before }).await;
    in_flight
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sigterm_in_flight_completes_new_refused_exit_zero() {
    let echo = Backend::spawn("echo");
    let mut gateway = Gateway::start(&one_route_config(&echo, "", ""));
    let in_flight = start_in_flight(&gateway, &echo, "/slow/1500").await;

    gateway.sigterm();

    // New connections are refused once the gateway has stopped accepting; it must do so while the
    // in-flight request is still being served, i.e. before the process exits.
    let addr = gateway.addr();
    eventually("new connections to be refused", || async move {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => true,
            // A connection still in the accept queue when the listener closes is reset: the gateway
            // is closing right now; try again.
            Err(e) if e.kind() == ErrorKind::ConnectionReset => false,
            Err(e) => panic!("connect failed with {e} instead of a refusal"),
            Ok(_) => false,
        }
    })
    .await;
    assert!(gateway.try_exit_status().is_none(), "the gateway exited before the in-flight request finished");

    let reply =
        tokio::time::timeout(TIMEOUT, in_flight).await.expect("in-flight request hung").expect("request task panicked");
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echoed().path, "/slow/1500");

    let status = gateway.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}; stderr:\n{}", gateway.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sigterm_readyz_reports_503_while_draining() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    assert_eq!(client::get(gateway.admin_addr(), "/readyz").await.status, 200);
    let in_flight = start_in_flight(&gateway, &echo, "/slow/1500").await;

    gateway.sigterm();

    let admin = gateway.admin_addr();
    eventually("/readyz to answer 503", || async {
        match client::try_send(admin, client::request("GET", "/readyz").body(client::empty()).unwrap()).await {
            Ok(reply) => reply.status == 503,
            Err(e) => panic!("the admin listener stopped answering while draining: {e:#}"),
        }
    })
    .await;
    let reply =
        tokio::time::timeout(TIMEOUT, in_flight).await.expect("in-flight request hung").expect("request task panicked");
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[tokio::test]
async fn shutdown_sigterm_when_idle_exits_zero() {
    let echo = Backend::spawn("echo");
    let mut gateway = Gateway::start(&one_route_config(&echo, "", ""));
    assert_eq!(client::get(gateway.addr(), "/").await.status, 200);

    gateway.sigterm();

    let status = gateway.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}; stderr:\n{}", gateway.stderr());
}

#[tokio::test]
async fn startup_with_nobody_reading_stdout_still_serves() {
    // `gateway run | head -1`, or a log shipper that went away: the `listening`/`ready` lines
    // meet a closed pipe, which must not stop the gateway.
    let echo = Backend::spawn("echo");
    let port = e2e::closed_port_addr();
    let yaml = format!(
        "listeners:\n  - {{ name: public, address: \"{port}\" }}\nupstreams:\n  echo: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
        echo.url()
    );
    let path = e2e::write_temp("stdout-closed", "yaml", &yaml);
    let mut child = std::process::Command::new(e2e::binary("gateway"))
        .args(["run", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let serving = async {
        loop {
            if let Ok(reply) = client::try_send(port, client::request("GET", "/").body(client::empty()).unwrap()).await
            {
                return reply.status;
            }
            assert!(child.try_wait().unwrap().is_none(), "the gateway exited: {:?}", child.try_wait());
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    };
    let status = tokio::time::timeout(TIMEOUT, serving).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status.expect("the gateway never served"), 200);
}

#[tokio::test]
async fn startup_on_addresses_another_gateway_serves_fails_instead_of_sharing_them() {
    // SO_REUSEPORT would let a second gateway (or an old one never stopped) take a share of the
    // connections with its own config; it must fail to start instead.
    let echo = Backend::spawn("echo");
    let (traffic, admin) = (e2e::closed_port_addr(), e2e::closed_port_addr());
    let config = |traffic: std::net::SocketAddr, admin: std::net::SocketAddr| {
        format!(
            "listeners:\n  - {{ name: public, address: \"{traffic}\" }}\nadmin: {{ address: \"{admin}\" }}\nupstreams:\n  echo: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: all, upstream: echo }}\n",
            echo.url()
        )
    };
    let first = Gateway::start(&config(traffic, admin));
    let elsewhere = e2e::closed_port_addr();
    for (taken, second) in [(traffic, config(traffic, elsewhere)), (admin, config(elsewhere, admin))] {
        let second = e2e::gateway_run_invalid(&e2e::write_temp("second", "yaml", &second));
        let stderr = String::from_utf8_lossy(&second.stderr);
        assert_eq!(second.status.code(), Some(1), "{taken}: {stderr}");
        assert!(stderr.contains(&format!("cannot listen on {taken}")), "{stderr}");
        assert_eq!(stderr.matches("another gateway").count(), 1, "said once: {stderr}");
    }
    assert_eq!(client::get(first.addr(), "/").await.status, 200, "the first one serves on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_second_sigterm_exits_without_waiting_for_the_drain() {
    let echo = Backend::spawn("echo");
    let mut gateway = Gateway::start(&one_route_config(&echo, "", ""));
    // Far longer than the test waits: only a cut-short drain ends the process in time.
    let _in_flight = start_in_flight(&gateway, &echo, "/slow/60000").await;
    gateway.sigterm();
    eventually("the drain to begin", || async { client::get(gateway.admin_addr(), "/readyz").await.status == 503 })
        .await;

    gateway.sigterm();

    let status = gateway.wait_exit().await;
    assert_eq!(status.code(), Some(1), "exit status {status}; stderr:\n{}", gateway.stderr());
    assert!(gateway.stderr().contains("second stop signal"), "{}", gateway.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_accept_grace_serves_new_connections_while_not_ready() {
    let echo = Backend::spawn("echo");
    let yaml = format!("{}shutdown:\n  accept_grace: 5s\n", one_route_config(&echo, "", ""));
    let mut gateway = Gateway::start(&yaml);

    gateway.sigterm();

    // Not ready at once, so load balancers stop sending; whoever still does is served.
    eventually("/readyz to turn 503", || async { client::get(gateway.admin_addr(), "/readyz").await.status == 503 })
        .await;
    assert_eq!(client::get(gateway.addr(), "/").await.status, 200, "a new connection during the grace");
    let addr = gateway.addr();
    eventually("new connections to be refused after the grace", || async move {
        TcpStream::connect(addr).await.is_err_and(|e| e.kind() == ErrorKind::ConnectionRefused)
    })
    .await;
    let status = gateway.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}; stderr:\n{}", gateway.stderr());
}

/// Once the drain has begun, HTTP/1.1 answers say `connection: close`, so keep-alive clients open
/// their next connection elsewhere (the load balancer's other instances) instead of meeting this
/// one's close, whether during `accept_grace` or after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keepalive_answers_say_connection_close_once_draining() {
    let echo = Backend::spawn("echo");
    let yaml = format!("{}shutdown:\n  accept_grace: 5s\n", one_route_config(&echo, "", ""));
    let gateway = Gateway::start(&yaml);
    let mut stream = e2e::raw::connect(gateway.addr()).await;
    let get = b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n";
    stream.write_all(get).await.unwrap();
    let before = e2e::raw::read_response(&mut stream).await;
    assert_eq!((before.status, before.header("connection")), (200, None), "{before:?}");

    gateway.sigterm();
    eventually("/readyz to turn 503", || async { client::get(gateway.admin_addr(), "/readyz").await.status == 503 })
        .await;
    stream.write_all(get).await.unwrap();
    let during = e2e::raw::read_response(&mut stream).await;
    assert_eq!((during.status, during.header("connection")), (200, Some("close")), "{during:?}");
    assert!(e2e::raw::read_until_close(&mut stream).await.is_empty(), "the connection closes after that answer");
}

/// An idle keep-alive connection does not hold the drain up: it is closed when the drain begins,
/// long before `drain_timeout`, and the process exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_idle_keepalive_connection_is_closed_when_the_drain_begins() {
    let echo = Backend::spawn("echo");
    // Nothing else would close it, or wake its task, for ten minutes.
    let server = "idle_timeout: 10m\nheader_read_timeout: 10m";
    let yaml = format!("{}shutdown:\n  drain_timeout: 10m\n", one_route_config(&echo, server, "timeout: 10m"));
    let mut gateway = Gateway::start(&yaml);
    let mut stream = e2e::raw::connect(gateway.addr()).await;
    stream.write_all(b"GET / HTTP/1.1\r\nhost: gw.test\r\n\r\n").await.unwrap();
    assert_eq!(e2e::raw::read_response(&mut stream).await.status, 200);

    gateway.sigterm();
    assert!(e2e::raw::read_until_close(&mut stream).await.is_empty(), "bytes before the close");
    let status = gateway.wait_exit().await;
    assert_eq!(status.code(), Some(0), "exit status {status}; stderr:\n{}", gateway.stderr());
}
