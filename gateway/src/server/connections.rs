//! The cap on client connections served at once (`server.max_connections`), across every listener
//! and worker: past it each accept loop holds the connection it accepted last, unserved, and
//! accepts no more, so new connections wait in the kernel's backlog until one closes. Without it,
//! a flood of connections runs the process out of file descriptors, and then nothing works: not
//! upstream connections, not the admin listener's `/healthz`, not the config file's reload.
//!
//! `server.max_connections_per_ip` caps what one address may hold of that (see [`per_address`]).
//!
//! Upstream sockets are counted too, against what the file descriptor limit leaves after
//! [`RESERVED_FDS`]: an HTTP/2 client connection may hold up to 200 of them (one per stream), so
//! capping client connections alone does not keep the process within its limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError};
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

/// One open client connection, counted until dropped (and for its address, when capped).
#[derive(Debug)]
pub(super) struct Open {
    /// Held for its drop.
    _address: Option<AddressSlot>,
}

impl Open {
    /// Counts the connection for its address too, until dropped.
    pub(super) fn with_address(mut self, address: Option<AddressSlot>) -> Open {
        self._address = address;
        self
    }
}

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
        .map(|_| Open { _address: None })
}

/// Client connections open now by address, for `server.max_connections_per_ip`: addresses with
/// none open are not kept. Touched once per accept and per close, by one worker at a time.
static PER_ADDRESS: LazyLock<Mutex<HashMap<IpAddr, usize>>> = LazyLock::new(Mutex::default);

/// One client connection counted for its address until dropped.
#[derive(Debug)]
pub(super) struct AddressSlot(IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = PER_ADDRESS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.0) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.0);
            }
        }
    }
}

/// Counts one more connection from `peer`, unless `limit` from its address are open. IPv6
/// addresses count by their /64, which one host may hold whole.
pub(super) fn per_address(peer: IpAddr, limit: usize) -> Option<AddressSlot> {
    let address = match peer.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6(Ipv6Addr::from_bits(v6.to_bits() & !((1u128 << 64) - 1))),
        v4 => v4,
    };
    let mut open = PER_ADDRESS.lock().unwrap_or_else(PoisonError::into_inner);
    let count = open.entry(address).or_insert(0);
    if *count >= limit {
        return None;
    }
    *count += 1;
    Some(AddressSlot(address))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_counts_an_ipv6_64_as_one_address_and_forgets_closed_ones() {
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        // Addresses of this test only: the table is the process's.
        let one = per_address(ip("2001:db8:77:1::1"), 2).unwrap();
        let two = per_address(ip("2001:db8:77:1:ffff::9"), 2).unwrap();
        assert!(per_address(ip("2001:db8:77:1::42"), 2).is_none(), "the same /64");
        assert!(per_address(ip("2001:db8:77:2::1"), 2).is_some(), "another /64");
        drop(one);
        let three = per_address(ip("2001:db8:77:1::1"), 2).unwrap();
        drop((two, three));
        let four = per_address(ip("::ffff:192.0.2.77"), 1).unwrap();
        assert!(per_address(ip("192.0.2.77"), 1).is_none(), "an IPv4-mapped address is its IPv4 one");
        drop(four);
        let open = PER_ADDRESS.lock().unwrap();
        assert!(!open.keys().any(|a| a.to_string().starts_with("2001:db8:77:") || *a == ip("192.0.2.77")), "{open:?}");
    }
}
