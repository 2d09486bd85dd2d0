//! Pooled upstream connections: what the gateway does when the upstream closes one, and when one
//! idles past the pool's `idle_timeout`. The upstream here is a hand-written HTTP/1.1 server, so
//! each test decides exactly when it closes a connection and sees exactly when the gateway does,
//! and what a malformed response looks like.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use e2e::{client, config, eventually, Gateway};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// What the upstream does with a connection after answering a request on it.
#[derive(Debug, Clone, Copy)]
enum AfterReply {
    /// Closes it, without having said `Connection: close` (as a server whose keep-alive timeout
    /// just ran out would).
    Close,
    /// Keeps it open for more requests.
    KeepOpen,
    /// Keeps it open, then closes it unanswered when the next request arrives (as a server does
    /// whose keep-alive timeout runs out, or that restarts, just as the request goes out).
    CloseOnNextRequest,
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const NO_CONTENT: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

/// An upstream answering every request with one fixed response, counting the connections it accepted and
/// reporting each connection the gateway closed.
struct Upstream {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    closed_by_gateway: mpsc::UnboundedReceiver<()>,
    closed_by_upstream: mpsc::UnboundedReceiver<()>,
}

impl Upstream {
    async fn spawn(reply: &'static [u8], after_reply: AfterReply) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (gateway_tx, closed_by_gateway) = mpsc::unbounded_channel();
        let (upstream_tx, closed_by_upstream) = mpsc::unbounded_channel();
        let counter = accepted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                let (gateway_tx, upstream_tx) = (gateway_tx.clone(), upstream_tx.clone());
                tokio::spawn(async move {
                    match serve(stream, reply, after_reply).await {
                        Closed::ByGateway => gateway_tx.send(()),
                        Closed::ByUpstream => upstream_tx.send(()),
                    }
                });
            }
        });
        Upstream { addr, accepted, closed_by_gateway, closed_by_upstream }
    }

    fn config(&self, pool: &str) -> String {
        config(
            &format!(
                "\nupstreams:\n  raw: {{ endpoints: [\"http://{}\"], pool: {{ {pool} }} }}\nroutes:\n  - {{ name: all, upstream: raw }}\n",
                self.addr
            ),
            &[],
        )
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

enum Closed {
    ByGateway,
    ByUpstream,
}

async fn serve(mut stream: TcpStream, reply: &[u8], after_reply: AfterReply) -> Closed {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    let mut answered = false;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return Closed::ByGateway,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
        // Requests here have no body: the head is the whole request.
        while let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            head.drain(..end + 4);
            if answered && matches!(after_reply, AfterReply::CloseOnNextRequest) {
                return Closed::ByUpstream;
            }
            answered = true;
            stream.write_all(reply).await.unwrap();
            if let AfterReply::Close = after_reply {
                return Closed::ByUpstream;
            }
        }
    }
}

#[tokio::test]
async fn pool_connection_closed_by_upstream_is_not_reused() {
    let mut upstream = Upstream::spawn(OK, AfterReply::Close).await;
    let gateway = Gateway::start(&upstream.config("idle_timeout: 90s"));
    let mut downstream = client::Connection::connect(gateway.addr()).await;

    let first = downstream.get("/first").await;
    assert_eq!((first.status.as_u16(), first.text().as_str()), (200, "ok"));
    // The upstream has closed the pooled connection before the next request arrives.
    upstream.closed_by_upstream.recv().await.unwrap();

    let second = downstream.get("/second").await;
    assert_eq!(
        (second.status.as_u16(), second.text().as_str()),
        (200, "ok"),
        "a pooled connection the upstream closed must not be used: {}",
        gateway.stderr()
    );
    assert_eq!(upstream.accepted(), 2, "the second request should have gone on a new connection");
}

/// Sends three requests on one client connection to an upstream answering `reply` (status
/// `status`) and returns how many upstream connections they took.
async fn upstream_connections_for_three_requests(reply: &'static [u8], status: u16) -> usize {
    let upstream = Upstream::spawn(reply, AfterReply::KeepOpen).await;
    let gateway = Gateway::start(&upstream.config("idle_timeout: 90s"));
    let mut downstream = client::Connection::connect(gateway.addr()).await;
    for path in ["/1", "/2", "/3"] {
        assert_eq!(downstream.get(path).await.status, status, "{path}");
    }
    upstream.accepted()
}

#[tokio::test]
async fn pool_reuses_one_connection_for_sequential_requests() {
    let opened = upstream_connections_for_three_requests(OK, 200).await;
    assert_eq!(opened, 1, "one client connection's requests should share one upstream connection");
}

#[tokio::test]
async fn pool_reuses_connection_after_responses_without_body() {
    let opened = upstream_connections_for_three_requests(NO_CONTENT, 204).await;
    assert_eq!(opened, 1, "a 204 ends its exchange at the head: the connection should go back to the pool");
}

#[tokio::test]
async fn pool_closes_connections_idle_past_idle_timeout() {
    let mut upstream = Upstream::spawn(OK, AfterReply::KeepOpen).await;
    let gateway = Gateway::start(&upstream.config("idle_timeout: 1s"));

    assert_eq!(client::get(gateway.addr(), "/").await.status, 200);
    // Nothing else arrives: the idle connection must still be closed by the gateway's own sweep.
    let closed = tokio::time::timeout(e2e::TIMEOUT, upstream.closed_by_gateway.recv()).await;
    assert!(matches!(closed, Ok(Some(()))), "the gateway kept an idle upstream connection open past idle_timeout");

    // And the next request simply opens a new one.
    assert_eq!(client::get(gateway.addr(), "/again").await.status, 200);
    eventually("a second upstream connection", || async { upstream.accepted() == 2 }).await;
}

/// Longer than the gateway's `KEEP_COPY_AFTER_IDLE` (100 ms).
const IDLE_A_WHILE: std::time::Duration = std::time::Duration::from_millis(300);

/// An upstream that closes a reused connection unanswered, a gateway in front of it, and a client
/// connection whose first request has put one upstream connection in the pool.
async fn pooled_connection_about_to_close() -> (Upstream, Gateway, client::Connection) {
    let upstream = Upstream::spawn(OK, AfterReply::CloseOnNextRequest).await;
    let gateway = Gateway::start(&upstream.config("idle_timeout: 90s"));
    let mut downstream = client::Connection::connect(gateway.addr()).await;
    assert_eq!(downstream.get("/first").await.status, 200);
    (upstream, gateway, downstream)
}

/// Sends a bodiless `method` request once the pooled connection has idled a while: the gateway
/// keeps a copy to send again only of requests on such connections.
async fn send_after_idling(downstream: &mut client::Connection, method: &str) -> client::Reply {
    tokio::time::sleep(IDLE_A_WHILE).await;
    downstream.try_send(client::request(method, "/again").body(client::empty()).unwrap()).await.unwrap()
}

#[tokio::test]
async fn pool_connection_closed_as_an_idempotent_request_goes_out_sends_it_again_on_a_new_one() {
    let (upstream, gateway, mut downstream) = pooled_connection_about_to_close().await;

    for (i, method) in ["GET", "DELETE"].into_iter().enumerate() {
        let reply = send_after_idling(&mut downstream, method).await;
        assert_eq!(
            (reply.status.as_u16(), reply.text().as_str()),
            (200, "ok"),
            "{method}: the upstream closed the reused connection unanswered; a new one should have answered"
        );
        assert_eq!(upstream.accepted(), i + 2, "{method} went again on a new connection");
    }
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let retried = r#"gateway_upstream_retries_total{reason="connection_closed",upstream="raw"} 2"#;
    assert!(metrics.lines().any(|l| l == retried), "{metrics}");
}

#[tokio::test]
async fn pool_connection_closed_as_a_post_goes_out_is_not_sent_again() {
    let (upstream, _gateway, mut downstream) = pooled_connection_about_to_close().await;

    // A POST may have had effects even unanswered: the client decides whether to send it again.
    send_after_idling(&mut downstream, "POST").await.assert_error(502, "upstream_error");
    assert_eq!(upstream.accepted(), 1, "the POST was not sent again");
}

#[tokio::test]
async fn upstream_length_sent_with_a_chunked_body_is_not_passed_on() {
    // The chunks frame the body (RFC 9112 section 6.3): a proxy passing on the length too would
    // cut "hello" to "hel" and leave the rest to be read as the next response.
    const CL_AND_CHUNKED: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let upstream = Upstream::spawn(CL_AND_CHUNKED, AfterReply::KeepOpen).await;
    let gateway = Gateway::start(&upstream.config("idle_timeout: 90s"));
    let mut downstream = client::Connection::connect(gateway.addr()).await;
    for path in ["/1", "/2"] {
        let reply = downstream.get(path).await;
        assert_eq!((reply.status.as_u16(), reply.text().as_str()), (200, "hello"), "{path}: {reply:?}");
        assert_ne!(reply.header("content-length"), Some("3"), "{path}: {reply:?}");
    }
}

#[tokio::test]
async fn upstream_switching_protocols_unasked_is_a_502() {
    const SWITCHED: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n";
    let upstream = Upstream::spawn(SWITCHED, AfterReply::KeepOpen).await;
    let gateway = Gateway::start(&upstream.config("idle_timeout: 90s"));
    client::get(gateway.addr(), "/").await.assert_error(502, "upstream_error");
}
