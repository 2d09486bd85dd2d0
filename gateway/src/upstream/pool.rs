//! Connections to an upstream's endpoints: made, lent to one request at a time, and kept idle per
//! worker for the next.
//!
//! A connection is driven by the task of the request that holds it, as nginx does: while the
//! request waits for the response head, and then by the response body as the client reads it. No
//! task of its own, no channel to cross, no wake-up of another task per request (nor, through
//! [`DriveWaker`], of the same task again for hyper's hand-overs within one poll). An idle
//! connection is driven by nobody: a sweep every second closes those the upstream closed or that
//! idled past `idle_timeout`. One the upstream closed since the last sweep reads that close before
//! writing anything, hands the request back unsent, and the request goes on a new connection.

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response, Uri};
use http_body::{Body as _, Frame};
use hyper::body::Incoming;
use hyper::client::conn::{http1, TrySendError};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tower_service::Service;

use super::deadline::DeadlineTimer;
use super::drive::DriveWaker;
use super::{Endpoint, MAX_RESPONSE_HEAD};
use crate::proxy::{copy_without_body, BodyProgress, UpstreamRequestBody};
use crate::server::connections::{self, UpstreamSocket};
use crate::{config, worker};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;

/// How often idle connections are checked for having been closed or having idled too long.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// A request going out on a connection idle for less than this keeps no copy to send again if the
/// upstream closes it unanswered: upstreams close idle connections after seconds, not
/// milliseconds, and the copy would cost a busy gateway (connections reused within microseconds)
/// about 4% of its CPU.
const KEEP_COPY_AFTER_IDLE: Duration = Duration::from_millis(100);

/// Every upstream's pools, so that a request finding no file descriptor to spare for a new
/// connection can close an idle one of any upstream first (see [`close_longest_idle`]).
static ALL_POOLS: Mutex<Vec<Weak<Pools>>> = Mutex::new(Vec::new());

/// Closes the pooled connection that has idled longest, of any upstream and worker; false when
/// none is pooled. Idle connections hold file descriptors that a request needing a new connection
/// would otherwise be refused for (503), while they wait for requests that may never come.
fn close_longest_idle() -> bool {
    let all: Vec<Arc<Pools>> =
        ALL_POOLS.lock().unwrap_or_else(PoisonError::into_inner).iter().filter_map(Weak::upgrade).collect();
    // Each list is oldest first. Another worker's lock is taken here, briefly: this is the rare path.
    let mut longest: Option<(Instant, &Mutex<WorkerPool>)> = None;
    for slot in all.iter().flat_map(|pools| pools.workers.iter()) {
        let since = slot.lock().unwrap_or_else(PoisonError::into_inner).idle.front().map(|idle| idle.since);
        if let Some(since) = since.filter(|since| longest.is_none_or(|(oldest, _)| *since < oldest)) {
            longest = Some((since, slot));
        }
    }
    let Some((_, slot)) = longest else { return false };
    // Dropped after the lock is let go: its socket closes, and its count is given back.
    let closed = slot.lock().unwrap_or_else(PoisonError::into_inner).idle.pop_front();
    closed.is_some()
}

/// Makes new connections. An upstream's endpoints are all `http://` or all `https://`
/// (validation rejects a mix); the TLS connector refuses `http://`.
#[derive(Debug, Clone)]
pub(super) enum Connector {
    Plain(HttpConnector),
    Tls(HttpsConnector<HttpConnector>),
}

/// One upstream's connection pools, one per worker thread so that pooled connections never
/// cross threads (the lock is taken by its own worker, and by any when it must close an idle
/// connection to make room for a new one).
#[derive(Debug)]
pub(super) struct Pools {
    connector: Connector,
    /// Bounds the TCP connect and the TLS handshake together (the connector bounds only the first).
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_idle_per_endpoint: usize,
    workers: Box<[Mutex<WorkerPool>]>,
}

#[derive(Debug, Default)]
struct WorkerPool {
    /// Oldest first: checkout takes the newest (warmest), the sweep and overflow drop the oldest.
    idle: VecDeque<Idle>,
    sweeping: bool,
}

#[derive(Debug)]
struct Idle {
    authority: Authority,
    connection: Box<Connection>,
    since: Instant,
}

/// An HTTP/1.1 connection to one endpoint: the handle requests go in by, and the connection
/// itself, which must be polled for anything to happen on it.
#[derive(Debug)]
struct Connection {
    sender: http1::SendRequest<UpstreamRequestBody>,
    /// `None` once it finished (closed by either side, or failed). Dropping it then also answers
    /// a request still queued on it: handed back unsent.
    conn: Option<Conn>,
    /// What its holder drives it with.
    drive: DriveWaker,
    /// Times its requests' response heads.
    deadline_timer: DeadlineTimer,
    /// Counts its socket against the process's file descriptors.
    _socket: UpstreamSocket,
}

type Conn = http1::Connection<Io, UpstreamRequestBody>;

/// A connection lent to one request. Its response body drives it through [`Lease::poll_body`]
/// and hands it back with [`Lease::release`] once read to the end; dropped instead, it closes.
#[derive(Debug)]
pub struct Lease {
    /// Boxed: a connection (TLS state, buffers) is kilobytes, and leases move with responses.
    connection: Box<Connection>,
    pools: Arc<Pools>,
    authority: Authority,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be made: the request, never sent, comes back (boxed, so the common
    /// result stays small).
    Connect { error: BoxError, unsent: Box<Request<UpstreamRequestBody>> },
    /// The exchange failed on an open connection.
    Http(hyper::Error),
    /// The response head did not arrive by the deadline (connecting included); `connected`: a
    /// connection was made (or reused) before it passed.
    TimedOut { connected: bool },
    /// A new connection was needed, and the process has no file descriptor to spare for it (see
    /// [`connections::upstream_socket`]); nothing was sent.
    NoRoom,
}

/// The response head did not arrive by the deadline.
#[derive(Debug)]
struct TimedOut;

impl Pools {
    pub(super) fn new(
        connector: Connector,
        connect_timeout: Duration,
        pool: &config::Pool,
        workers: usize,
    ) -> Arc<Pools> {
        let pools = Arc::new(Pools {
            connector,
            connect_timeout,
            idle_timeout: pool.idle_timeout,
            max_idle_per_endpoint: pool.max_idle_per_host,
            workers: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
        });
        let mut all = ALL_POOLS.lock().unwrap_or_else(PoisonError::into_inner);
        // Pools a reload replaced are gone once their last request ends.
        all.retain(|pools| pools.strong_count() > 0);
        all.push(Arc::downgrade(&pools));
        pools
    }

    pub(super) fn workers(&self) -> usize {
        self.workers.len()
    }

    #[cfg(test)]
    pub(super) fn is_tls(&self) -> bool {
        matches!(self.connector, Connector::Tls(_))
    }

    /// Sends `request` (origin-form URI, Host set) to `endpoint` on an idle connection, or a new
    /// one. When the idle connection turns out to be closing, the request goes once more on a new
    /// connection if that is safe: always when no byte of it was written; when it was, only if it
    /// is idempotent and has no body, the connection had idled at least [`KEEP_COPY_AFTER_IDLE`],
    /// and the upstream closed without answering (as a server does when its keep-alive timeout
    /// runs out, or it restarts, just as the request goes out). `retried` counts the second kind.
    ///
    /// A plain function around an `async move` block: an `async fn` keeps a `mut` argument apart
    /// from the local it moves into, so the request would be held, and copied, twice.
    #[expect(clippy::manual_async_fn, reason = "an async fn would hold the request twice")]
    pub(super) fn send<'a>(
        self: &'a Arc<Pools>,
        endpoint: &'a Endpoint,
        mut request: Request<UpstreamRequestBody>,
        deadline: tokio::time::Instant,
        retried: &'a IntCounter,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), SendError>> + Send + 'a {
        async move {
            if let Some((connection, idled)) = self.checkout(&endpoint.authority) {
                // Boxed: only a connection that idled long needs the copy.
                let again = (idled >= KEEP_COPY_AFTER_IDLE && can_go_again(&request))
                    .then(|| Box::new(copy_without_body(&request)));
                let mut lease = self.lease(connection, endpoint);
                match lease.connection.exchange(request, deadline).await {
                    Ok(Ok(response)) => return Ok((response, lease)),
                    Err(TimedOut) => return Err(SendError::TimedOut { connected: true }),
                    Ok(Err(mut error)) => match (error.take_message(), again) {
                        (Some(unsent), _) => request = unsent,
                        (None, Some(again)) if closed_unanswered(error.error()) => {
                            tracing::debug!(endpoint = %endpoint.authority, error = %error.error(), "a reused connection closed unanswered; sending again on a new one");
                            retried.inc();
                            request = *again;
                        }
                        (None, _) => return Err(SendError::Http(error.into_error())),
                    },
                }
            }
            let Some(socket) = connections::upstream_socket(close_longest_idle) else { return Err(SendError::NoRoom) };
            // Boxed: connecting is the rare path, and its future is large; the request's stays small.
            let connection = match Box::pin(tokio::time::timeout_at(deadline, self.connect(endpoint, socket))).await {
                Ok(Ok(connection)) => connection,
                Ok(Err(error)) => return Err(SendError::Connect { error, unsent: Box::new(request) }),
                Err(_elapsed) => return Err(SendError::TimedOut { connected: false }),
            };
            let mut lease = self.lease(connection, endpoint);
            match lease.connection.exchange(request, deadline).await {
                Ok(Ok(response)) => Ok((response, lease)),
                Ok(Err(error)) => Err(SendError::Http(error.into_error())),
                Err(TimedOut) => Err(SendError::TimedOut { connected: true }),
            }
        }
    }

    /// Sends a protocol upgrade request on a new connection that runs as a task of its own: after
    /// a `101` it becomes the upstream half of a tunnel, and is never pooled.
    pub(super) async fn send_upgrade(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamRequestBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let sending = async {
            let Some(socket) = connections::upstream_socket(close_longest_idle) else { return Err(SendError::NoRoom) };
            let (mut sender, conn) = match self.handshake(endpoint).await {
                Ok(handshake) => handshake,
                Err(error) => return Err(SendError::Connect { error, unsent: Box::new(request) }),
            };
            tokio::spawn(async move {
                let _socket = socket;
                if let Err(error) = conn.with_upgrades().await {
                    tracing::debug!(%error, "upstream connection for an upgrade ended with an error");
                }
            });
            sender.send_request(request).await.map_err(SendError::Http)
        };
        // Whether the connection was made is not known here: the tunnel's health says nothing either way.
        tokio::time::timeout_at(deadline, sending).await.unwrap_or(Err(SendError::TimedOut { connected: false }))
    }

    fn lease(self: &Arc<Pools>, connection: Box<Connection>, endpoint: &Endpoint) -> Lease {
        Lease { connection, pools: self.clone(), authority: endpoint.authority.clone() }
    }

    async fn connect(&self, endpoint: &Endpoint, socket: UpstreamSocket) -> Result<Box<Connection>, BoxError> {
        let (sender, conn) = self.handshake(endpoint).await?;
        Ok(Box::new(Connection {
            sender,
            conn: Some(conn),
            drive: DriveWaker::new(),
            deadline_timer: DeadlineTimer::default(),
            _socket: socket,
        }))
    }

    /// A new connection to `endpoint`, TLS included for `https://`, ready for HTTP/1.1.
    async fn handshake(
        &self,
        endpoint: &Endpoint,
    ) -> Result<(http1::SendRequest<UpstreamRequestBody>, http1::Connection<Io, UpstreamRequestBody>), BoxError> {
        let uri = Uri::builder()
            .scheme(endpoint.scheme.clone())
            .authority(endpoint.authority.clone())
            .path_and_query("/")
            .build()?;
        let io = match &self.connector {
            Connector::Plain(http) => MaybeHttpsStream::Http(http.clone().call(uri).await?),
            Connector::Tls(https) => tokio::time::timeout(self.connect_timeout, https.clone().call(uri))
                .await
                .map_err(|_| format!("no TLS connection within connect_timeout ({:?})", self.connect_timeout))??,
        };
        // The header size limit is exact; the buffer's alone lets a head that came in one read
        // through at nearly twice the size.
        Ok(http1::Builder::new()
            .max_buf_size(MAX_RESPONSE_HEAD)
            .max_header_size(MAX_RESPONSE_HEAD)
            .handshake(io)
            .await?)
    }

    /// The newest idle connection to `authority` that has not idled too long, and how long it
    /// idled; older ones met on the way are closed. Whether the upstream closed it is not checked
    /// here: the connection reads that close before it writes a request, and hands the request
    /// back unsent.
    fn checkout(&self, authority: &Authority) -> Option<(Box<Connection>, Duration)> {
        let mut pool = self.local();
        let now = Instant::now();
        while let Some(position) = pool.idle.iter().rposition(|idle| idle.authority == *authority) {
            let idle = pool.idle.remove(position)?;
            let idled = now.duration_since(idle.since);
            if idled < self.idle_timeout {
                return Some((idle.connection, idled));
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly for the next request to its endpoint.
    fn checkin(self: &Arc<Pools>, authority: Authority, connection: Box<Connection>) {
        let start_sweeping = {
            let mut pool = self.local();
            let full = pool.idle.len() >= self.max_idle_per_endpoint
                && pool.idle.iter().filter(|idle| idle.authority == authority).count() >= self.max_idle_per_endpoint;
            if full {
                let oldest = pool.idle.iter().position(|idle| idle.authority == authority);
                oldest.and_then(|position| pool.idle.remove(position));
            }
            if self.max_idle_per_endpoint > 0 {
                pool.idle.push_back(Idle { authority, connection, since: Instant::now() });
            }
            !std::mem::replace(&mut pool.sweeping, true)
        };
        if start_sweeping {
            self.start_sweeping(worker::index() % self.workers.len());
        }
    }

    /// A task on this worker that closes its idle connections once stale, for as long as the
    /// pools exist (a reload that changes connection settings drops them).
    fn start_sweeping(self: &Arc<Pools>, worker: usize) {
        let pools: Weak<Pools> = Arc::downgrade(self);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        runtime.spawn(async move {
            let mut every = tokio::time::interval(SWEEP_EVERY);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                let Some(pools) = pools.upgrade() else { return };
                let Some(slot) = pools.workers.get(worker) else { return };
                let now = Instant::now();
                let mut pool = slot.lock().unwrap_or_else(PoisonError::into_inner);
                pool.idle.retain_mut(|idle| idle.worth_keeping(now, pools.idle_timeout));
            }
        });
    }

    fn local(&self) -> MutexGuard<'_, WorkerPool> {
        let slot = &self.workers[worker::index() % self.workers.len()];
        // A panic while holding it leaves a list of connections, still consistent.
        slot.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Whether a request may be sent again after it was written: only when it has no body and its
/// method is idempotent (sending it twice does what sending it once does).
fn can_go_again(request: &Request<UpstreamRequestBody>) -> bool {
    request.body().is_end_stream() && request.method().is_idempotent()
}

/// The upstream closed or reset the connection before any of the response arrived.
fn closed_unanswered(error: &hyper::Error) -> bool {
    use std::error::Error as _;
    error.is_incomplete_message()
        || error
            .source()
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .is_some_and(|e| matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe))
}

impl Idle {
    /// Not idle too long, and not closed by the upstream (a close that has arrived is read here).
    fn worth_keeping(&mut self, now: Instant, idle_timeout: Duration) -> bool {
        now.duration_since(self.since) < idle_timeout && self.connection.poll_open()
    }
}

impl Connection {
    /// Sends the request and drives the connection until the response head arrives, or the
    /// deadline passes.
    async fn exchange(
        &mut self,
        request: Request<UpstreamRequestBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Result<Response<Incoming>, TrySendError<Request<UpstreamRequestBody>>>, TimedOut> {
        let Connection { sender, conn, drive, deadline_timer, .. } = self;
        let body = request.body().progress().cloned();
        let mut deadline = deadline;
        let mut response = std::pin::pin!(sender.try_send_request(request));
        poll_fn(|cx| {
            let polled = drive.poll(cx, |cx| {
                if let Poll::Ready(result) = response.as_mut().poll(cx) {
                    return Poll::Ready(result);
                }
                // Driving may answer it (or, finishing, answer every request it held) at once.
                poll_drive(conn, cx);
                response.as_mut().poll(cx)
            });
            if let Poll::Ready(result) = polled {
                return Poll::Ready(Ok(result));
            }
            while deadline_timer.poll_passed(deadline, cx).is_ready() {
                // A request body moves the deadline on with each piece, and with its end.
                match body.as_ref().map(BodyProgress::deadline).filter(|later| *later > deadline) {
                    Some(later) => deadline = later,
                    None => return Poll::Ready(Err(TimedOut)),
                }
            }
            Poll::Pending
        })
        .await
    }

    /// Whether the connection is open and idle, checked without waiting: an upstream's close
    /// that has arrived is read here.
    fn poll_open(&mut self) -> bool {
        poll_drive(&mut self.conn, &mut Context::from_waker(Waker::noop()));
        self.conn.is_some() && !self.sender.is_closed()
    }
}

/// Lets the connection make progress (read the response body, notice a close); once it has
/// finished, it is dropped.
fn poll_drive(conn: &mut Option<Conn>, cx: &mut Context<'_>) {
    if conn.as_mut().is_some_and(|conn| Pin::new(conn).poll(cx).is_ready()) {
        *conn = None;
    }
}

impl Lease {
    /// The response body's next piece: it only arrives while the connection is driven, which
    /// this does first.
    pub fn poll_body(
        &mut self,
        body: &mut Incoming,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let Connection { conn, drive, .. } = &mut *self.connection;
        drive.poll(cx, |cx| {
            poll_drive(conn, cx);
            Pin::new(&mut *body).poll_frame(cx)
        })
    }

    /// Hands the connection back once its response was read to the end, if it can take another
    /// request; otherwise it is closed. Polled once more without a waker first: a close that has
    /// arrived is seen before pooling, and every waker the connection holds is left a no-op, so
    /// handing it the next request wakes nobody.
    pub fn release(mut self) {
        self.connection.drive.release();
        if self.connection.poll_open() && self.connection.sender.is_ready() {
            self.pools.checkin(self.authority, self.connection);
        }
    }
}
