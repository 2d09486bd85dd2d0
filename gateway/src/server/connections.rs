//! The cap on client connections served at once (`server.max_connections`), across every listener
//! and worker: past it each accept loop holds the connection it accepted last, unserved, and
//! accepts no more, so new connections wait in the kernel's backlog until one closes. Without it,
//! a flood of connections runs the process out of file descriptors, and then nothing works: not
//! upstream connections, not the admin listener's `/healthz`, not the config file's reload.
//!
//! Upstream sockets are counted too, against what the file descriptor limit leaves after
//! [`RESERVED_FDS`]: an HTTP/2 client connection may hold up to 200 of them (one per stream), so
//! capping client connections alone does not keep the process within its limit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::Notify;

use crate::config::Server;
use crate::throttle::Throttle;

static OPEN: AtomicUsize = AtomicUsize::new(0);
/// Accept loops waiting for room; a closing connection wakes them only when there are any, so the
/// common close touches no lock shared by the workers.
static WAITING: AtomicUsize = AtomicUsize::new(0);
static CLOSED: Notify = Notify::const_new();
/// How often a loop waiting for room reads the limit again, which a reload may raise.
const RECHECK: Duration = Duration::from_secs(1);

/// One open client connection, counted until dropped.
#[derive(Debug)]
pub(super) struct Open(());

impl Drop for Open {
    fn drop(&mut self) {
        // SeqCst with `room`: either this sees its waiter, or the waiter sees this close.
        OPEN.fetch_sub(1, Ordering::SeqCst);
        if WAITING.load(Ordering::SeqCst) > 0 {
            CLOSED.notify_waiters();
        }
    }
}

/// Counts one more connection, unless `limit` are open.
fn try_open(limit: usize) -> Option<Open> {
    OPEN.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |open| (open < limit).then_some(open + 1))
        .ok()
        .map(|_| Open(()))
}

/// Client connections open now.
pub fn open() -> usize {
    OPEN.load(Ordering::Relaxed)
}

/// The cap in force: `server.max_connections`, or else one derived from the process's file
/// descriptor limit (see [`from_fd_limit`]).
pub fn limit(server: &Server) -> usize {
    server.max_connections.unwrap_or_else(|| *DEFAULT.get_or_init(from_fd_limit))
}

static DEFAULT: OnceLock<usize> = OnceLock::new();
static FD_BUDGET: OnceLock<usize> = OnceLock::new();

/// Descriptors kept for everything but client connections and upstream sockets: listeners, Redis,
/// JWKS fetches, the access log, the config watcher, the admin listener's own connections.
const RESERVED_FDS: u64 = 256;

/// Half of what the soft `RLIMIT_NOFILE` leaves after [`RESERVED_FDS`]: each client connection
/// may hold an upstream connection too. Unlimited when the limit cannot be read.
fn from_fd_limit() -> usize {
    (fd_budget() / 2).max(1)
}

/// What the soft `RLIMIT_NOFILE` leaves after [`RESERVED_FDS`], read once (after
/// [`raise_fd_limit`]); unlimited when it cannot be read.
fn fd_budget() -> usize {
    *FD_BUDGET.get_or_init(|| match rlimit::Resource::NOFILE.get() {
        Ok((soft, _)) => usize::try_from(soft.saturating_sub(RESERVED_FDS)).unwrap_or(usize::MAX),
        Err(_) => usize::MAX,
    })
}

static UPSTREAM: AtomicUsize = AtomicUsize::new(0);

/// One open upstream socket, counted until dropped.
#[derive(Debug)]
pub struct UpstreamSocket(());

impl Drop for UpstreamSocket {
    fn drop(&mut self) {
        UPSTREAM.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Room for one more upstream socket, unless client connections and upstream sockets together
/// already take what the file descriptor limit leaves after [`RESERVED_FDS`]. Then `make_room` is
/// asked once to close one (an idle pooled connection) and say whether it did.
pub fn upstream_socket(make_room: impl FnOnce() -> bool) -> Option<UpstreamSocket> {
    if let Some(socket) = try_upstream_socket() {
        return Some(socket);
    }
    if make_room() {
        if let Some(socket) = try_upstream_socket() {
            return Some(socket);
        }
    }
    static WARNED: Throttle = Throttle::new(Duration::from_secs(10));
    if WARNED.allows() {
        tracing::warn!(
            client_connections = open(),
            upstream_connections = UPSTREAM.load(Ordering::Relaxed),
            "as many connections are open as the open file limit allows, none of them idle: requests that need a new upstream connection get 503 (raise the limit, or cap upstreams with max_requests; logged once in 10 s at most)"
        );
    }
    None
}

fn try_upstream_socket() -> Option<UpstreamSocket> {
    let budget = fd_budget();
    UPSTREAM
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |upstream| {
            (upstream.saturating_add(open()) < budget).then_some(upstream + 1)
        })
        .ok()
        .map(|_| UpstreamSocket(()))
}

/// Raises the soft file descriptor limit to the hard one, as nginx's `worker_rlimit_nofile` would:
/// systemd starts services with 1,024 soft (and 524,288 hard), which would cap the gateway near
/// 400 connections. Called once at start, before the default cap is taken from it.
pub fn raise_fd_limit() {
    let before = rlimit::Resource::NOFILE.get().map_or(0, |(soft, _)| soft);
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(now) if before < now => tracing::info!(from = before, to = now, "raised the open file limit"),
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot raise the open file limit"),
    }
}

/// A place for a connection just accepted, once fewer than `limit()` are open. Meanwhile its
/// accept loop accepts no more: the rest wait in the kernel's backlog.
pub(super) async fn room(limit: impl Fn() -> usize) -> Open {
    if let Some(open) = try_open(limit()) {
        return open;
    }
    // Counted until this returns or is dropped (the loop stopping at shutdown).
    struct Waiting;
    impl Drop for Waiting {
        fn drop(&mut self) {
            WAITING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    WAITING.fetch_add(1, Ordering::SeqCst);
    let _waiting = Waiting;
    loop {
        let closed = CLOSED.notified();
        tokio::pin!(closed);
        // Registered before the count is read again: a close in between still wakes it.
        closed.as_mut().enable();
        let limit = limit();
        if let Some(open) = try_open(limit) {
            return open;
        }
        warn_full(limit);
        // Also looked at again each second: a reload may have raised the limit.
        let _ = tokio::time::timeout(RECHECK, closed).await;
    }
}

/// Warns that the cap was reached, at most once a minute.
fn warn_full(limit: usize) {
    static FULL: Throttle = Throttle::new(Duration::from_secs(60));
    if FULL.allows() {
        tracing::warn!(
            limit,
            "server.max_connections reached: new connections wait until one closes (logged once a minute at most)"
        );
    }
}
