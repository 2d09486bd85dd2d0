//! The load generator: N connections (HTTP/1.1 or HTTP/2, cleartext or TLS, keep-alive or one per
//! request, see `client`), closed loop or open loop at a fixed rate.
//!
//! Each connection carries one request loop (a *slot*), or one per stream for HTTP/2 with
//! several streams per connection; everything below that says "connection" means a slot.
//!
//! Closed loop: each connection sends a request as soon as the previous response has been read
//! in full, so throughput is whatever the system under test sustains.
//! Open loop (`rate`): global request j is *scheduled* at `start + j / rate` and goes to
//! connection `j % N`. A pacer thread releases the requests with `std::thread::sleep`, waking
//! at most every 200 µs (tokio's 1 ms timer would release the requests of a millisecond as one
//! burst: at 5k req/s that alone tripled the direct p50). When a connection is still busy
//! with an earlier request at the scheduled time, latency is measured from the scheduled time,
//! so a stalled server shows up as queueing delay in the percentiles instead of silently
//! lowering the request rate (no coordinated omission). When the connection is idle, latency
//! counts from the actual send, so the pacer's wake-up lag is not charged to the server.
//!
//! Latency and errors are attributed to the measured window by a request's start (closed loop)
//! or scheduled (open loop) time, and every such request is awaited; throughput counts the 2xx
//! responses completed inside the window, the span over which process CPU is measured.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::{BodyExt as _, Empty};
use tokio::sync::{oneshot, Semaphore, TryAcquireError};

use crate::client::{self, Protocol, Sender};
use crate::hist::Samples;

/// What load to send where.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Where to connect.
    pub addr: SocketAddr,
    /// Request path (and query), e.g. `/`.
    pub path: String,
    /// `Authorization` values, one per request in turn over all connections; empty: none sent.
    pub authorization: Arc<[HeaderValue]>,
    /// Connections (each carrying `protocol.streams_per_connection()` request loops).
    pub connections: usize,
    /// HTTP version, TLS, keep-alive or a new connection per request.
    pub protocol: Protocol,
    /// OS threads, each running a current-thread tokio runtime; connections are dealt round robin.
    pub threads: usize,
    /// Load sent before the measured window (connections are opened during it).
    pub warmup: Duration,
    /// Length of the measured window.
    pub duration: Duration,
    /// Open loop: total requests per second over all connections. `None`: closed loop.
    pub rate: Option<f64>,
    /// A request with no complete response this long after it was sent counts as an error, and
    /// its connection is replaced.
    pub request_timeout: Duration,
}

/// The measured window in wall-clock terms.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// When load starts (beginning of the warm-up).
    pub start: Instant,
    /// Beginning of the measured window.
    pub measure_start: Instant,
    /// End of the measured window.
    pub end: Instant,
}

/// What the generator saw during the measured window, summed over connections.
#[derive(Debug, Default)]
pub struct LoadOutcome {
    /// Latency of every 2xx response, and in open loop also of every request never sent
    /// (`missed`), at its wait when the generator gave up: a lower bound.
    pub samples: Samples,
    /// 2xx responses to requests started (open loop: scheduled) in the window.
    pub ok: u64,
    /// 2xx responses completed in the window: the throughput count.
    pub completed_in_window: u64,
    /// Non-2xx responses.
    pub status_errors: u64,
    /// Connect failures, I/O or protocol errors, timeouts.
    pub transport_errors: u64,
    /// Connections re-opened after the peer closed one between requests (not an error).
    pub reconnects: u64,
    /// Open loop only: requests scheduled inside the window that were never sent because the
    /// connection was still behind schedule when the window ended.
    pub missed: u64,
    /// Status of the first non-2xx response, to say what went wrong.
    pub first_bad_status: Option<StatusCode>,
    /// Text of the first transport error.
    pub first_transport_error: Option<String>,
    /// Open loop only: how late the pacer released requests (worst case), microseconds.
    pub pacer_lag_max_us: u64,
    /// Open loop only: pacer wake-ups more than 1 ms late (out of `pacer_wakeups`).
    pub pacer_late_wakeups: u64,
    /// Open loop only: pacer wake-ups.
    pub pacer_wakeups: u64,
}

impl LoadOutcome {
    fn merge(&mut self, other: LoadOutcome) {
        self.samples.merge(other.samples);
        self.ok += other.ok;
        self.completed_in_window += other.completed_in_window;
        self.status_errors += other.status_errors;
        self.transport_errors += other.transport_errors;
        self.reconnects += other.reconnects;
        self.missed += other.missed;
        self.first_bad_status = self.first_bad_status.or(other.first_bad_status);
        if self.first_transport_error.is_none() {
            self.first_transport_error = other.first_transport_error;
        }
        self.pacer_lag_max_us = self.pacer_lag_max_us.max(other.pacer_lag_max_us);
        self.pacer_late_wakeups += other.pacer_late_wakeups;
        self.pacer_wakeups += other.pacer_wakeups;
    }

    /// Non-2xx responses plus transport errors.
    pub fn errors(&self) -> u64 {
        self.status_errors + self.transport_errors
    }
}

/// A load run in progress: the generator threads and when they measure.
#[derive(Debug)]
pub struct Running {
    /// When the measured window begins and ends.
    pub window: Window,
    results: Vec<oneshot::Receiver<LoadOutcome>>,
}

impl Running {
    /// Waits for every generator thread (they stop by themselves shortly after `window.end`).
    pub async fn finish(self) -> anyhow::Result<LoadOutcome> {
        let mut total = LoadOutcome::default();
        for rx in self.results {
            total.merge(rx.await.context("a load generator thread died")?);
        }
        Ok(total)
    }
}

/// Starts the generator threads (and, in open loop, the pacer); load begins about 20 ms from now.
pub fn start(spec: &LoadSpec) -> anyhow::Result<Running> {
    anyhow::ensure!(spec.connections > 0, "connections must be > 0");
    anyhow::ensure!(spec.threads > 0, "threads must be > 0");
    let start = Instant::now() + Duration::from_millis(20);
    let window = Window { start, measure_start: start + spec.warmup, end: start + spec.warmup + spec.duration };
    let target = Arc::new(Target::new(spec)?);
    let per_conn = spec.protocol.streams_per_connection();
    let slots = spec.connections * per_conn;
    let schedule = match spec.rate {
        Some(rate) => {
            anyhow::ensure!(rate > 0.0 && rate.is_finite(), "rate must be > 0");
            Some(Schedule { start, rate, slots })
        }
        None => None,
    };
    // One semaphore per slot; the pacer adds a permit when a request of it is due.
    let permits: Vec<Arc<Semaphore>> = (0..slots).map(|_| Arc::new(Semaphore::new(0))).collect();
    // Open-loop slots still running; the pacer waits for them before closing.
    let active = Arc::new(AtomicUsize::new(slots));
    let mut results = Vec::new();
    if let Some(schedule) = schedule {
        let (tx, rx) = oneshot::channel();
        let permits = permits.clone();
        let active = Arc::clone(&active);
        thread::Builder::new()
            .name("load-pacer".to_owned())
            .spawn(move || {
                let _ = tx.send(pace(schedule, window.end, &permits, &active));
            })
            .context("spawning the pacer thread")?;
        results.push(rx);
    }
    let threads = spec.threads.min(spec.connections);
    for t in 0..threads {
        // Connections are dealt round robin; the slots of one connection stay on its thread.
        let conns: Vec<Vec<(usize, Arc<Semaphore>)>> = (t..spec.connections)
            .step_by(threads)
            .map(|c| (c * per_conn..(c + 1) * per_conn).map(|i| (i, Arc::clone(&permits[i]))).collect())
            .collect();
        let (tx, rx) = oneshot::channel();
        let target = Arc::clone(&target);
        let active = Arc::clone(&active);
        thread::Builder::new()
            .name(format!("load-{t}"))
            .spawn(move || {
                let outcome = run_thread(&target, window, conns, schedule, &active);
                let _ = tx.send(outcome);
            })
            .context("spawning a load generator thread")?;
        results.push(rx);
    }
    Ok(Running { window, results })
}

/// Sends the first request `spec` describes on a new connection and returns its status: a
/// scenario whose first request is refused is not worth measuring.
pub async fn first_status(spec: &LoadSpec) -> anyhow::Result<StatusCode> {
    let target = Target::new(spec)?;
    match (Conn { sender: None }).request(&target, &mut LoadOutcome::default()).await {
        Sent::Response(status) => Ok(status),
        Sent::Failed(e) => bail!("{e}"),
    }
}

/// Open-loop timetable: global request j is due at `start + j / rate`, on slot `j % slots`.
#[derive(Debug, Clone, Copy)]
struct Schedule {
    start: Instant,
    rate: f64,
    slots: usize,
}

impl Schedule {
    /// When the `k`-th request of slot `conn` is due.
    fn due(&self, conn: usize, k: u64) -> Instant {
        let j = conn as u64 + k * self.slots as u64;
        self.start + Duration::from_secs_f64(j as f64 / self.rate)
    }
}

/// Lateness the pacer accepts in exchange for fewer wake-ups: it wakes at most once per
/// quantum and then releases everything due (at most 4 requests at 20k req/s), so at most
/// 5,000 wake-ups a second. Each wake-up of the pacer and of a client thread costs CPU that
/// the system under test shares. Requests are released late, never early.
const PACER_QUANTUM: Duration = Duration::from_micros(200);

/// How long connections that are behind schedule at the end of the window may keep sending
/// the requests that fell due inside it (their latency counts from the scheduled time).
/// Whatever is still unsent after that counts as missed.
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Releases every request at its due time until `end`; once every connection has finished
/// (or `DRAIN_GRACE` after `end`) closes the semaphores so that the rest stop.
/// Returns how punctual it was (the `pacer_*` fields).
fn pace(schedule: Schedule, end: Instant, permits: &[Arc<Semaphore>], active: &AtomicUsize) -> LoadOutcome {
    let mut worst = Duration::ZERO;
    let (mut wakeups, mut late) = (0, 0);
    let mut j: u64 = 0;
    let due = |j: u64| {
        let conns = schedule.slots as u64;
        schedule.due((j % conns) as usize, j / conns)
    };
    let mut last_wake = schedule.start;
    loop {
        let next = due(j);
        let now = Instant::now();
        if next >= end || now >= end {
            break;
        }
        let wake_at = next.max(last_wake + PACER_QUANTUM);
        if wake_at > now {
            // Linux sleeps with ~50 µs timer slack: precise enough, and no spinning.
            thread::sleep(wake_at - now);
        }
        let now = Instant::now();
        last_wake = now;
        let lag = now.saturating_duration_since(next);
        worst = worst.max(lag);
        wakeups += 1;
        if lag > Duration::from_millis(1) {
            late += 1;
        }
        while due(j) < end && due(j) <= now {
            permits[(j % schedule.slots as u64) as usize].add_permits(1);
            j += 1;
        }
    }
    while active.load(Ordering::Acquire) > 0 && Instant::now() < end + DRAIN_GRACE {
        thread::sleep(Duration::from_millis(5));
    }
    for p in permits {
        p.close();
    }
    LoadOutcome {
        pacer_lag_max_us: u64::try_from(worst.as_micros()).unwrap_or(u64::MAX),
        pacer_late_wakeups: late,
        pacer_wakeups: wakeups,
        ..LoadOutcome::default()
    }
}

/// Where requests go and how; shared by every connection.
#[derive(Debug)]
struct Target {
    addr: SocketAddr,
    /// The request to send, copied for each send.
    request: Request<Empty<Bytes>>,
    protocol: Protocol,
    timeout: Duration,
    authorization: Arc<[HeaderValue]>,
    /// Requests made so far: picks the next `authorization` value.
    sent: AtomicUsize,
}

impl Target {
    fn new(spec: &LoadSpec) -> anyhow::Result<Target> {
        let authority = client::authority(&spec.protocol, spec.addr);
        Ok(Target {
            addr: spec.addr,
            request: client::get_request(&spec.protocol, &authority, &spec.path)
                .with_context(|| format!("bad request path {:?}", spec.path))?,
            protocol: spec.protocol.clone(),
            timeout: spec.request_timeout,
            authorization: Arc::clone(&spec.authorization),
            sent: AtomicUsize::new(0),
        })
    }

    fn request(&self) -> Request<Empty<Bytes>> {
        let mut req = Request::new(Empty::new());
        *req.uri_mut() = self.request.uri().clone();
        *req.version_mut() = self.request.version();
        *req.headers_mut() = self.request.headers().clone();
        if !self.authorization.is_empty() {
            let i = self.sent.fetch_add(1, Ordering::Relaxed) % self.authorization.len();
            req.headers_mut().insert(header::AUTHORIZATION, self.authorization[i].clone());
        }
        req
    }
}

/// Runs the slots of `conns` (one inner list per connection) on a current-thread runtime.
fn run_thread(
    target: &Arc<Target>,
    window: Window,
    conns: Vec<Vec<(usize, Arc<Semaphore>)>>,
    schedule: Option<Schedule>,
    active: &Arc<AtomicUsize>,
) -> LoadOutcome {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return LoadOutcome {
                transport_errors: 1,
                first_transport_error: Some(format!("building a tokio runtime: {e}")),
                ..LoadOutcome::default()
            }
        }
    };
    runtime.block_on(async {
        let mut tasks = Vec::new();
        for slots in conns {
            // HTTP/2 streams share their connection: open it now, in the 20 ms before the
            // warm-up. If that fails each slot opens its own (and counts the errors).
            let shared = match slots.len() {
                1 => None,
                _ => client::connect(target.addr, &target.protocol).await.ok(),
            };
            for (idx, permits) in slots {
                let target = Arc::clone(target);
                let active = Arc::clone(active);
                let conn = Conn { sender: shared.as_ref().and_then(Sender::share) };
                tasks.push(tokio::spawn(async move {
                    match schedule {
                        None => closed_loop(&target, window, conn).await,
                        Some(schedule) => {
                            let outcome = open_loop(&target, window, schedule, idx, &permits, conn).await;
                            active.fetch_sub(1, Ordering::Release);
                            outcome
                        }
                    }
                }));
            }
        }
        let mut total = LoadOutcome::default();
        for task in tasks {
            match task.await {
                Ok(outcome) => total.merge(outcome),
                Err(e) => {
                    total.transport_errors += 1;
                    total.first_transport_error.get_or_insert(e.to_string());
                }
            }
        }
        total
    })
}

/// Result of one request on one connection.
enum Sent {
    Response(StatusCode),
    /// The request failed; the connection must be replaced.
    Failed(String),
}

/// A keep-alive connection that re-opens itself when the peer closed it between requests
/// (or, in new-connection-per-request mode, a fresh connection for every request, whose
/// connect and handshakes count in the request's latency).
struct Conn {
    sender: Option<Sender>,
}

impl Conn {
    /// Sends one GET and reads the whole response body.
    async fn request(&mut self, target: &Target, out: &mut LoadOutcome) -> Sent {
        let attempt = async {
            let sender = self.ready_sender(target, out).await?;
            let resp = sender.send(target.request()).await.map_err(|e| format!("request: {e}"))?;
            let status = resp.status();
            let mut body = resp.into_body();
            while let Some(frame) = body.frame().await {
                frame.map_err(|e| format!("response body: {e}"))?;
            }
            Ok::<_, String>(status)
        };
        let sent = Instant::now();
        let outcome = tokio::time::timeout(target.timeout, attempt).await;
        match outcome {
            // Checked again: the timer fires on the next tick of a busy runtime, the limit is exact.
            Ok(Ok(status)) if sent.elapsed() <= target.timeout => {
                if target.protocol.new_conn_per_request {
                    self.sender = None;
                }
                Sent::Response(status)
            }
            Ok(Err(e)) => {
                self.sender = None;
                Sent::Failed(e)
            }
            Ok(Ok(_)) | Err(_) => {
                self.sender = None;
                Sent::Failed(format!("no complete response within {:?}", target.timeout))
            }
        }
    }

    async fn ready_sender(&mut self, target: &Target, out: &mut LoadOutcome) -> Result<&mut Sender, String> {
        if let Some(sender) = self.sender.as_mut() {
            if sender.ready().await.is_err() {
                // Closed by the peer while idle (e.g. after `Connection: close`): re-open.
                self.sender = None;
                out.reconnects += 1;
            }
        }
        if self.sender.is_none() {
            self.sender = Some(client::connect(target.addr, &target.protocol).await?);
        }
        self.sender.as_mut().ok_or_else(|| "no connection".to_owned())
    }
}

/// Books one request. Latency and errors belong to the window the request *started* in
/// (scheduled in, in open loop); throughput counts 2xx responses *completed* inside the
/// window, the same span over which the processes' CPU is measured.
fn account(out: &mut LoadOutcome, window: &Window, sent: Sent, started: Instant, latency: Duration) {
    let done = Instant::now();
    if let Sent::Response(status) = &sent {
        if status.is_success() && done >= window.measure_start && done <= window.end {
            out.completed_in_window += 1;
        }
    }
    if started < window.measure_start || started >= window.end {
        return;
    }
    match sent {
        Sent::Response(status) if status.is_success() => {
            out.ok += 1;
            out.samples.record(latency);
        }
        Sent::Response(status) => {
            out.status_errors += 1;
            out.first_bad_status.get_or_insert(status);
        }
        Sent::Failed(e) => {
            out.transport_errors += 1;
            out.first_transport_error.get_or_insert(e);
        }
    }
}

/// Back-off after a failed request so a dead server does not turn into a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);

async fn closed_loop(target: &Target, window: Window, mut conn: Conn) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    tokio::time::sleep_until(window.start.into()).await;
    loop {
        let sent_at = Instant::now();
        if sent_at >= window.end {
            break;
        }
        let sent = conn.request(target, &mut out).await;
        let failed = matches!(sent, Sent::Failed(_));
        account(&mut out, &window, sent, sent_at, sent_at.elapsed());
        if failed {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
    }
    out
}

async fn open_loop(
    target: &Target,
    window: Window,
    schedule: Schedule,
    idx: usize,
    permits: &Semaphore,
    mut conn: Conn,
) -> LoadOutcome {
    let mut out = LoadOutcome::default();
    let mut k = 0;
    loop {
        let scheduled = schedule.due(idx, k);
        if scheduled >= window.end {
            break;
        }
        // A permit already waiting means the request fell due while this connection was busy:
        // the wait since `scheduled` is the server's doing and counts as latency.
        let behind = match permits.try_acquire() {
            Ok(permit) => {
                permit.forget();
                true
            }
            Err(TryAcquireError::NoPermits) => match permits.acquire().await {
                Ok(permit) => {
                    permit.forget();
                    false
                }
                Err(_closed) => break,
            },
            Err(TryAcquireError::Closed) => break,
        };
        let sent_at = Instant::now();
        let sent = conn.request(target, &mut out).await;
        let failed = matches!(sent, Sent::Failed(_));
        let latency = if behind { scheduled.elapsed() } else { sent_at.elapsed() };
        account(&mut out, &window, sent, scheduled, latency);
        if failed {
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
        k += 1;
    }
    // The pacer closed the semaphore (`DRAIN_GRACE` after the window, or it could not keep up):
    // whatever is left fell due inside the window but was never sent. Left out of the latency,
    // they would leave the slowest requests out of it: they count at their wait so far.
    loop {
        let scheduled = schedule.due(idx, k);
        if scheduled >= window.end {
            break;
        }
        if scheduled >= window.measure_start {
            out.missed += 1;
            out.samples.record(scheduled.elapsed());
        }
        k += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Write as _};

    use super::*;

    /// A blocking keep-alive HTTP/1.1 server on port 0 that answers every request with `status`.
    fn serve(status: u16) -> SocketAddr {
        serve_counting(status).0
    }

    /// `serve`, also counting the connections it accepted.
    fn serve_counting(status: u16) -> (SocketAddr, Arc<AtomicUsize>) {
        serve_after(status, Duration::ZERO)
    }

    /// `serve_counting`, answering each request `delay` after it came.
    fn serve_after(status: u16, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                counter.fetch_add(1, Ordering::Relaxed);
                thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
                    let mut writer = stream;
                    let mut line = String::new();
                    loop {
                        line.clear();
                        match reader.read_line(&mut line) {
                            Ok(0) | Err(_) => return,
                            Ok(_) if line == "\r\n" => {
                                thread::sleep(delay);
                                let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                                if writer.write_all(resp.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    /// An HTTP/2 (prior knowledge) server on port 0 answering 200, counting connections.
    fn serve_h2() -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&accepted);
        thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                while let Ok((stream, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::Relaxed);
                    let service = hyper::service::service_fn(|_req| async {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Empty::<Bytes>::new()))
                    });
                    let builder = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::spawn(conn);
                }
            });
        });
        (addr, accepted)
    }

    fn spec(addr: SocketAddr, rate: Option<f64>) -> LoadSpec {
        LoadSpec {
            addr,
            path: "/".to_owned(),
            authorization: Arc::new([]),
            connections: 4,
            protocol: Protocol::http1(),
            threads: 1,
            warmup: Duration::from_millis(100),
            duration: Duration::from_millis(500),
            rate,
            request_timeout: Duration::from_secs(2),
        }
    }

    fn run(spec: &LoadSpec) -> LoadOutcome {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async { start(spec).expect("start").finish().await.expect("finish") })
    }

    #[test]
    fn closed_loop_ok_server_counts_successes() {
        let out = run(&spec(serve(200), None));
        assert!(out.ok > 100, "ok = {}", out.ok);
        assert_eq!(out.errors(), 0);
        assert_eq!(out.samples.len() as u64, out.ok);
        assert!(out.completed_in_window > 0);
    }

    #[test]
    fn closed_loop_h2_streams_share_their_connection() {
        let (addr, accepted) = serve_h2();
        let protocol = Protocol { http2: true, streams: 3, ..Protocol::http1() };
        let out = run(&LoadSpec { connections: 2, protocol, ..spec(addr, None) });
        assert!(out.ok > 100, "ok = {}", out.ok);
        assert_eq!(out.errors(), 0, "{:?}", out.first_transport_error);
        assert_eq!(accepted.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn closed_loop_new_conn_per_request_opens_a_connection_per_request() {
        let (addr, accepted) = serve_counting(200);
        let protocol = Protocol { new_conn_per_request: true, ..Protocol::http1() };
        let out = run(&LoadSpec { protocol, ..spec(addr, None) });
        assert!(out.ok > 50, "ok = {}", out.ok);
        assert_eq!(out.errors(), 0, "{:?}", out.first_transport_error);
        // Every request, warm-up included, had its own connection.
        assert!(accepted.load(Ordering::Relaxed) as u64 > out.ok);
        assert_eq!(out.reconnects, 0);
    }

    #[test]
    fn closed_loop_error_status_counts_errors_not_latency() {
        let out = run(&spec(serve(503), None));
        assert_eq!(out.ok, 0);
        assert!(out.status_errors > 0);
        assert_eq!(out.first_bad_status, Some(StatusCode::SERVICE_UNAVAILABLE));
        assert!(out.samples.is_empty());
    }

    #[test]
    fn open_loop_sends_rate_times_duration() {
        let out = run(&spec(serve(200), Some(2000.0)));
        // 2000/s over 0.5 s; the schedule is exact, so only a late pacer could change it.
        assert_eq!(out.ok + out.missed, 1000, "ok {} missed {}", out.ok, out.missed);
        assert!(out.missed <= 5, "missed {}", out.missed);
        assert!(out.pacer_wakeups > 0);
    }

    #[test]
    fn open_loop_past_capacity_counts_the_unsent_in_latency() {
        // One connection answering in 20 ms at most 50 a second, asked for 400 a second: most
        // requests are never sent, and they are the ones that waited longest.
        let (addr, _) = serve_after(200, Duration::from_millis(20));
        let out = run(&LoadSpec { connections: 1, ..spec(addr, Some(400.0)) });
        assert_eq!(out.ok + out.missed, 200, "ok {} missed {}", out.ok, out.missed);
        assert!(out.missed > 100, "missed {}", out.missed);
        assert_eq!(out.samples.len() as u64, out.ok + out.missed);
        // Unsent when the generator gave up, a second after the window: they waited that long.
        assert!(out.samples.percentiles().max_us >= 1_000_000);
    }

    #[test]
    fn closed_loop_nothing_listening_counts_transport_errors() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
        let out = run(&spec(addr, None));
        assert_eq!(out.ok, 0);
        assert!(out.transport_errors > 0);
        assert!(out.first_transport_error.is_some_and(|e| e.contains("connect")));
    }

    #[test]
    fn authorization_values_taken_in_turn() {
        let values: Arc<[HeaderValue]> = ["Bearer a", "Bearer b", "Bearer c"].map(HeaderValue::from_static).into();
        let addr = "127.0.0.1:9".parse().expect("addr");
        let target = Target::new(&LoadSpec { authorization: values, ..spec(addr, None) }).expect("target");
        let sent: Vec<_> = (0..4).map(|_| target.request().headers()[header::AUTHORIZATION].clone()).collect();
        assert_eq!(sent, ["Bearer a", "Bearer b", "Bearer c", "Bearer a"]);
        let plain = Target::new(&spec(addr, None)).expect("target");
        assert!(plain.request().headers().get(header::AUTHORIZATION).is_none());
    }

    #[test]
    fn first_status_is_the_servers_answer() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let status = |code| rt.block_on(first_status(&spec(serve(code), None))).expect("status");
        assert_eq!(status(200), StatusCode::OK);
        assert_eq!(status(401), StatusCode::UNAUTHORIZED);
    }

    #[test]
    fn schedule_due_interleaves_connections_evenly() {
        let start = Instant::now();
        let s = Schedule { start, rate: 1000.0, slots: 4 };
        let ms = |conn, k| (s.due(conn, k) - start).as_secs_f64() * 1000.0;
        assert!((ms(0, 0) - 0.0).abs() < 1e-6);
        assert!((ms(1, 0) - 1.0).abs() < 1e-6);
        assert!((ms(3, 0) - 3.0).abs() < 1e-6);
        assert!((ms(0, 1) - 4.0).abs() < 1e-6);
        assert!((ms(2, 5) - 22.0).abs() < 1e-6);
    }
}
