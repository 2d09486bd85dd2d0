//! End-to-end test support: builds the binaries once, runs real `gateway` and `echo` processes on port 0,
//! and talks to them over real sockets (a small hyper client, raw TCP for malformed traffic).
//!
//! Every wait is bounded by [`TIMEOUT`] so a hung process fails the test with its stderr instead of
//! hanging the run. Nothing here asserts wall-clock time.
//!
//! Modules: `binaries` (build and locate the executables), `process` (children and the echo backend),
//! `gateway` (the gateway process), `configs` (YAML and config files), [`client`], [`raw`], [`load`],
//! [`tls`] (test certificates, TLS clients, HTTP over TLS), [`jwks`] (a JWKS endpoint for JWT tests),
//! [`redis`] (a real `redis-server` for the shared rate-limit tests).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod binaries;
pub mod client;
mod configs;
mod gateway;
pub mod jwks;
pub mod load;
mod process;
pub mod raw;
pub mod redis;
pub mod tls;
pub mod tls_site;
pub mod upstream_tls;

pub use binaries::binary;
pub use configs::{config, config_version, one_route_config, write_temp, ConfigDir, LISTENERS};
pub use gateway::{assert_error_has_every_check_line, gateway_check, gateway_run_invalid, Gateway};
pub use process::{Backend, EchoStats, Service};

/// Upper bound for any single wait (process start, a response, a process exit). Generous on purpose:
/// it only turns a hang into a failure, it never measures speed.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

/// A loopback address where nothing listens (bound on port 0, then closed).
pub fn closed_port_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding port 0: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after [`TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fetches a value every 20 ms until `condition` holds for it, and returns that value; panics
/// naming `what`, with the last value as `show` renders it, after [`TIMEOUT`].
pub async fn fetch_until<T, F, Fut>(
    what: &str,
    mut fetch: F,
    mut condition: impl FnMut(&T) -> bool,
    show: impl Fn(&T) -> String,
) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let value = fetch().await;
        if condition(&value) {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for {what}; last:\n{}", show(&value));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True for a UUID in canonical text form whose version nibble is 7.
pub fn is_uuid_v7(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        && groups[2].starts_with('7')
}

/// Byte `i` of the echo's `/bytes/{n}` body.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}
