//! The Redis side of the Redis-counted rate-limit scenarios: a private `redis-server` on a free
//! loopback port, and the gateway's view of its connection to it (`GET /admin/ratelimit`).

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde_json::Value;

use crate::procs::{self, ProcGuard};
use crate::stack::{self, STARTUP_TIMEOUT};

/// What to print when `redis-server` is missing, before saying what is skipped.
pub const NOT_FOUND: &str = "redis-server not found: install it (Debian: apt-get install redis-server)";

/// Longest the gateway may take to report `connected: true` once it is ready. It connects in the
/// background, retrying from 100 ms; a local server answers at once, so this is generous.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The `redis-server` binary on PATH (Debian installs it in /usr/bin).
pub fn find_redis_server() -> Option<PathBuf> {
    procs::on_path("redis-server")
}

/// A running `redis-server` that persists nothing.
#[derive(Debug)]
pub struct RedisServer {
    /// Where it listens (loopback).
    pub addr: SocketAddr,
    /// The process.
    pub proc: ProcGuard,
}

/// Starts `redis-server --port P --bind 127.0.0.1 --save "" --appendonly no` on a free port, its
/// working directory under `dir`, and waits until it answers PING.
pub fn start_redis(bin: &Path, dir: &Path) -> anyhow::Result<RedisServer> {
    let dir = dir.join("redis");
    fs::create_dir_all(&dir)?;
    // redis-server cannot report the port it got for `0`, so take a free one; retry if it was raced.
    let mut last_err = None;
    for _ in 0..3 {
        let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", &addr.port().to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir);
        let mut proc = ProcGuard::spawn("redis-server", cmd, &dir.join("redis.stderr"))?;
        match wait_for_pong(&mut proc, addr) {
            Ok(()) => return Ok(RedisServer { addr, proc }),
            Err(e) => last_err = Some(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("redis-server did not start")))
}

/// `redis-server --version`, e.g. `Redis server v=7.0.15 sha=... bits=64 ...`.
pub fn version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn wait_for_pong(proc: &mut ProcGuard, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        proc.check_alive()?;
        match ping(addr) {
            Ok(()) => return Ok(()),
            Err(e) => last = format!("{e:#}"),
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("redis-server at {addr} never answered PING (last: {last}){}", proc.stderr_tail())
}

/// One inline `PING`, expecting `+PONG`.
fn ping(addr: SocketAddr) -> anyhow::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.write_all(b"PING\r\n")?;
    let mut reply = [0u8; 7];
    s.read_exact(&mut reply)?;
    anyhow::ensure!(&reply == b"+PONG\r\n", "PING answered {:?}", String::from_utf8_lossy(&reply));
    Ok(())
}

/// The series the gateway counts its rate-limit calls to Redis in: one per batch of decisions.
const REDIS_CALLS_METRIC: &str = "gateway_redis_call_seconds_count";

/// How many rate-limit calls the gateway has made to Redis, from its admin `/metrics`. (Not from
/// redis-server's command counts: which commands a batch sends depends on what the gateway
/// remembers.)
pub fn calls(admin: SocketAddr) -> anyhow::Result<u64> {
    stack::admin_count(admin, REDIS_CALLS_METRIC)
}

/// `GET /admin/ratelimit` on the gateway's admin listener, parsed.
pub fn rate_limit_status(admin: SocketAddr) -> anyhow::Result<Value> {
    let response = stack::get(admin, "/admin/ratelimit")?;
    anyhow::ensure!(response.status == 200, "GET /admin/ratelimit at {admin} answered {}", response.status);
    serde_json::from_str(&response.body).with_context(|| format!("GET /admin/ratelimit at {admin}: not JSON"))
}

/// True when the status says the gateway has a live connection to Redis.
pub fn is_connected(status: &Value) -> bool {
    status["redis"]["connected"] == true
}

/// Decisions the in-process limiter made because Redis could not answer, over every limit.
pub fn fallback_decisions(status: &Value) -> u64 {
    let limits = status["limits"].as_array().map(Vec::as_slice).unwrap_or_default();
    limits.iter().filter_map(|limit| limit["fallback_decisions"].as_u64()).sum()
}

/// Waits until the gateway reports `connected: true`: measuring before would silently measure the
/// in-process fallback. Fails with the last status after [`CONNECT_TIMEOUT`].
pub fn wait_connected(proc: &mut ProcGuard, admin: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        proc.check_alive()?;
        match rate_limit_status(admin) {
            Ok(status) if is_connected(&status) => return Ok(()),
            Ok(status) => last = status.to_string(),
            Err(e) => last = format!("{e:#}"),
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not connect to Redis within {CONNECT_TIMEOUT:?} (last /admin/ratelimit: {last}){}",
        proc.name,
        proc.stderr_tail()
    )
}

/// Fails if the gateway has decided any request in-process although connected (say, a Redis
/// command failed): the Redis scenarios would then measure the fallback.
pub fn expect_no_fallbacks(proc: &ProcGuard, admin: SocketAddr) -> anyhow::Result<()> {
    let status = rate_limit_status(admin)?;
    match fallback_decisions(&status) {
        0 => Ok(()),
        n => bail!("{}: {n} rate-limit decisions fell back in-process: {status}{}", proc.name, proc.stderr_tail()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fallback_decisions_sums_every_limit() {
        let status = json!({
            "redis": { "url": "redis://127.0.0.1:1", "connected": true, "last_error": null },
            "limits": [{ "name": "a", "fallback_decisions": 2 }, { "name": "b", "fallback_decisions": 3 }],
        });
        assert!(is_connected(&status));
        assert_eq!(fallback_decisions(&status), 5);
    }

    #[test]
    fn calls_reads_a_series_the_gateway_exports() {
        let text = gateway::metrics::global().render(&gateway::metrics::Readings::default());
        assert_eq!(stack::metric_value(&text, REDIS_CALLS_METRIC), Some(0.0), "{text}");
    }

    #[test]
    fn is_connected_false_without_redis_or_before_connecting() {
        assert!(!is_connected(&json!({ "redis": null, "limits": [] })));
        assert!(!is_connected(&json!({ "redis": { "connected": false }, "limits": [] })));
        assert_eq!(fallback_decisions(&json!({ "redis": null })), 0);
    }
}
