//! `hyperfloor`: about the least an HTTP/1.1 reverse proxy built on hyper 1.x can do, as the
//! `hyper-floor` yardstick of `loadbench`. It runs as the gateway does (one single-threaded tokio
//! runtime per worker thread, each accepting on its own `SO_REUSEPORT` socket, keep-alive
//! connections to the upstream pooled per worker, the same allocator) and adds the headers the
//! gateway and the bench's nginx add: `X-Forwarded-For`, `-Proto`, `-Host`, `Forwarded`, a random
//! `X-Request-Id` both ways and a `traceparent`. Nothing else: no routing, no path or header
//! checks, no hop-by-hop removal, no upstream timeouts, breaker, metrics or logs. What the gateway
//! spends above it is what its own work costs; what it spends above nginx is hyper's.
//!
//!   hyperfloor --upstream 127.0.0.1:9001 [--listen 127.0.0.1:0] [--workers N]
//!
//! Prints `listening bench <addr>` and then `ready` on stdout. A failed upstream exchange is
//! answered with an empty 502.

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use clap::Parser;
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{Either, Empty};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(about = "The least a hyper 1.x reverse proxy does: loadbench's `hyper-floor` yardstick")]
struct Args {
    /// The upstream every request goes to (plain HTTP/1.1).
    #[arg(long)]
    upstream: SocketAddr,
    /// Where to listen (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Worker threads [default: available CPUs].
    #[arg(long)]
    workers: Option<usize>,
}

/// As the gateway's `server.header_read_timeout` default: the one timer every request arms.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let workers = args.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from)).max(1);
    let first = bind(args.listen).with_context(|| format!("binding {}", args.listen))?;
    // Port 0 resolves on the first bind; the other workers join that port.
    let address = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..workers {
        sockets.push(bind(address).with_context(|| format!("binding {address}"))?);
    }
    println!("listening bench {address}");
    println!("ready");
    let threads: Vec<_> =
        sockets.into_iter().map(|socket| std::thread::spawn(move || worker(socket, args.upstream))).collect();
    for thread in threads {
        thread.join().map_err(|_| anyhow::anyhow!("a worker panicked"))??;
    }
    Ok(())
}

fn bind(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

fn worker(socket: std::net::TcpListener, upstream: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    tokio::task::LocalSet::new().block_on(&runtime, async move {
        let listener = TcpListener::from_std(socket)?;
        let pool = Pool::default();
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                // Out of file descriptors, say: the client retries.
                Err(_) => continue,
            };
            let _ = stream.set_nodelay(true);
            let pool = pool.clone();
            tokio::task::spawn_local(async move {
                let service = hyper::service::service_fn(move |request| proxy(request, peer, upstream, pool.clone()));
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// This worker's idle connections to the upstream.
#[derive(Clone, Default)]
struct Pool(Rc<RefCell<Vec<SendRequest<Incoming>>>>);

impl Pool {
    /// An open connection that has finished its last exchange, if one is idle.
    fn take(&self) -> Option<SendRequest<Incoming>> {
        let mut idle = self.0.borrow_mut();
        idle.retain(|sender| !sender.is_closed());
        let ready = idle.iter().position(SendRequest::is_ready)?;
        Some(idle.swap_remove(ready))
    }

    /// Kept from the response head on: it is ready again once the body has been read.
    fn give_back(&self, sender: SendRequest<Incoming>) {
        self.0.borrow_mut().push(sender);
    }
}

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");

type Body = Either<Incoming, Empty<Bytes>>;

async fn proxy(
    mut request: Request<Incoming>,
    peer: SocketAddr,
    upstream: SocketAddr,
    pool: Pool,
) -> Result<Response<Body>, std::convert::Infallible> {
    let request_id = HeaderValue::from_bytes(&random_hex::<32>()).unwrap_or(HeaderValue::from_static("-"));
    let client = peer.ip().to_string();
    let headers = request.headers_mut();
    if let Some(host) = headers.get(header::HOST).cloned() {
        let forwarded = format!("for={client};host=\"{}\";proto=http", String::from_utf8_lossy(host.as_bytes()));
        if let Ok(forwarded) = HeaderValue::try_from(forwarded) {
            headers.insert(header::FORWARDED, forwarded);
        }
        headers.insert(&X_FORWARDED_HOST, host);
    }
    if let Ok(client) = HeaderValue::try_from(client) {
        headers.insert(&X_FORWARDED_FOR, client);
    }
    headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    headers.insert(&X_REQUEST_ID, request_id.clone());
    let mut traceparent = *b"00-00000000000000000000000000000000-0000000000000000-01";
    traceparent[3..35].copy_from_slice(&random_hex::<32>());
    traceparent[36..52].copy_from_slice(&random_hex::<16>());
    if let Ok(traceparent) = HeaderValue::from_bytes(&traceparent) {
        headers.insert(&TRACEPARENT, traceparent);
    }
    let mut response = match exchange(request, upstream, &pool).await {
        Ok(response) => response.map(Either::Left),
        Err(_) => {
            let mut response = Response::new(Either::Right(Empty::new()));
            *response.status_mut() = StatusCode::BAD_GATEWAY;
            response
        }
    };
    response.headers_mut().insert(&X_REQUEST_ID, request_id);
    Ok(response)
}

async fn exchange(request: Request<Incoming>, upstream: SocketAddr, pool: &Pool) -> anyhow::Result<Response<Incoming>> {
    let mut sender = match pool.take() {
        Some(sender) => sender,
        None => {
            let stream = TcpStream::connect(upstream).await?;
            stream.set_nodelay(true)?;
            let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            tokio::task::spawn_local(connection);
            sender
        }
    };
    let response = sender.send_request(request).await?;
    pool.give_back(sender);
    Ok(response)
}

/// `N` random lowercase hex digits, from a per-thread xorshift generator: ids, not secrets.
fn random_hex<const N: usize>() -> [u8; N] {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    let mut out = [0u8; N];
    STATE.with(|state| {
        for chunk in out.chunks_mut(16) {
            let mut x = state.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            state.set(x);
            for (i, digit) in chunk.iter_mut().enumerate() {
                *digit = b"0123456789abcdef"[((x >> (4 * i)) & 0xf) as usize];
            }
        }
    });
    out
}

fn seed() -> u64 {
    use std::hash::BuildHasher as _;
    // std seeds each thread's hasher keys at random; never the generator's fixed point, zero.
    std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id()) | 1
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// An upstream that answers each request with its head as the body, then closes.
    fn head_echo() -> SocketAddr {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap() == 1 {
                    head.push(byte[0]);
                }
                let reply = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", head.len());
                stream.write_all(reply.as_bytes()).unwrap();
                stream.write_all(&head).unwrap();
            }
        });
        address
    }

    /// Starts a one-worker floor in front of `upstream`; returns where it listens.
    fn floor(upstream: SocketAddr) -> SocketAddr {
        let socket = bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = socket.local_addr().unwrap();
        std::thread::spawn(move || worker(socket, upstream));
        address
    }

    fn get(address: SocketAddr) -> String {
        let mut stream = std::net::TcpStream::connect(address).unwrap();
        write!(stream, "GET /x HTTP/1.1\r\nHost: shop.test\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        response.to_ascii_lowercase()
    }

    fn header<'a>(text: &'a str, name: &str) -> Option<&'a str> {
        text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(": "))
    }

    #[test]
    fn adds_the_gateways_forwarding_headers_and_ids() {
        let response = get(floor(head_echo()));
        let (head, forwarded) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("http/1.1 200"), "{response}");
        assert_eq!(header(forwarded, "x-forwarded-for"), Some("127.0.0.1"));
        assert_eq!(header(forwarded, "x-forwarded-proto"), Some("http"));
        assert_eq!(header(forwarded, "x-forwarded-host"), Some("shop.test"));
        assert_eq!(header(forwarded, "forwarded"), Some("for=127.0.0.1;host=\"shop.test\";proto=http"));
        let id = header(forwarded, "x-request-id").unwrap();
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(header(head, "x-request-id"), Some(id), "the same id both ways");
        let traceparent = header(forwarded, "traceparent").unwrap();
        let parts: Vec<&str> = traceparent.split('-').collect();
        assert_eq!(parts.iter().map(|p| p.len()).collect::<Vec<_>>(), [2, 32, 16, 2], "{traceparent}");
        assert_ne!(get(floor(head_echo())), response, "ids differ per request");
    }

    #[test]
    fn a_dead_upstream_gets_502() {
        let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        assert!(get(floor(dead)).starts_with("http/1.1 502"));
    }
}
