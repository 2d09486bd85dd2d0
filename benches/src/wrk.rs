//! The cross-check (`loadbench --cross-check`): wrk, an independent load generator, sent at the
//! same targets with the same connections and duration, so a load tester can see that loadbench's
//! own client neither limits nor skews a figure.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context as _};
use serde::Serialize;

/// What to print when `wrk` is missing.
pub const NOT_FOUND: &str = "wrk not found: install it for the cross-check (Debian: apt-get install wrk)";

/// What wrk measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

/// The `wrk` binary on PATH.
pub fn find() -> Option<PathBuf> {
    crate::procs::on_path("wrk")
}

/// `wrk -t<threads> -c<connections> -d<duration> --latency http://<addr><path>`: HTTP/1.1
/// keep-alive, closed loop, like loadbench's plain scenarios. Fails on any non-2xx/3xx answer or
/// socket error, so the check never compares against a stream of errors.
pub fn run(
    bin: &Path,
    addr: SocketAddr,
    path: &str,
    threads: usize,
    connections: usize,
    duration: Duration,
) -> anyhow::Result<WrkResult> {
    let url = format!("http://{addr}{path}");
    let out = Command::new(bin)
        .arg(format!("-t{}", threads.clamp(1, connections.max(1))))
        .arg(format!("-c{connections}"))
        .arg(format!("-d{}s", whole_seconds(duration)))
        .arg("--latency")
        .arg(&url)
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk {url} exited with {}: {}{}", out.status, text, String::from_utf8_lossy(&out.stderr));
    }
    parse(&text).with_context(|| format!("wrk {url}: {text}"))
}

/// wrk takes whole seconds: `duration` rounded up, at least 1.
pub fn whole_seconds(duration: Duration) -> u64 {
    duration.as_millis().div_ceil(1000).max(1).try_into().unwrap_or(u64::MAX)
}

/// Reads `Requests/sec:`, the 50% and 99% lines of `--latency`, and refuses output that reports
/// socket errors or non-2xx/3xx responses.
pub fn parse(output: &str) -> anyhow::Result<WrkResult> {
    if let Some(line) = output.lines().find(|l| l.contains("Non-2xx or 3xx responses") || l.contains("Socket errors")) {
        bail!("wrk saw errors: {}", line.trim());
    }
    let field = |prefix: &str| output.lines().map(str::trim).find_map(|line| line.strip_prefix(prefix)).map(str::trim);
    let requests_per_sec: f64 = field("Requests/sec:").context("no Requests/sec line")?.parse()?;
    let latency = |percent: &str| field(percent).and_then(duration_us).with_context(|| format!("no {percent} line"));
    Ok(WrkResult { requests_per_sec, p50_us: latency("50%")?, p99_us: latency("99%")? })
}

/// wrk's durations: `713.00us`, `0.86ms`, `1.20s`, `2.00m`.
fn duration_us(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let scale = match unit {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        "m" => 60e6,
        _ => return None,
    };
    Some(number.parse::<f64>().ok()? * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What wrk 4.1.0 printed against the echo backend.
    const OUTPUT: &str = "Running 2s test @ http://127.0.0.1:18081/
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   751.07us  341.12us   8.11ms   84.64%
    Req/Sec    74.76k    11.09k   93.06k    70.00%
  Latency Distribution
     50%  713.00us
     75%    0.86ms
     90%    1.04ms
     99%    1.75ms
  148420 requests in 2.00s, 36.52MB read
Requests/sec:  74132.98
Transfer/sec:     18.24MB
";

    #[test]
    fn parse_reads_rate_and_percentiles() {
        let got = parse(OUTPUT).unwrap();
        assert_eq!(got, WrkResult { requests_per_sec: 74132.98, p50_us: 713.0, p99_us: 1750.0 });
    }

    #[test]
    fn parse_refuses_errors_and_missing_lines() {
        let with_errors = OUTPUT.replace("Requests/sec", "  Non-2xx or 3xx responses: 12\nRequests/sec");
        assert!(parse(&with_errors).unwrap_err().to_string().contains("Non-2xx"));
        let socket =
            OUTPUT.replace("Requests/sec", "  Socket errors: connect 0, read 3, write 0, timeout 0\nRequests/sec");
        assert!(parse(&socket).is_err());
        assert!(parse(&OUTPUT.replace("     99%    1.75ms\n", "")).is_err());
        assert!(parse("").is_err());
    }

    #[test]
    fn whole_seconds_rounds_up() {
        assert_eq!(whole_seconds(Duration::from_millis(500)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(5)), 5);
        assert_eq!(whole_seconds(Duration::from_millis(5_001)), 6);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn duration_us_reads_every_unit() {
        assert_eq!(duration_us("713.00us"), Some(713.0));
        assert_eq!(duration_us("0.86ms"), Some(860.0));
        assert_eq!(duration_us("1.20s"), Some(1_200_000.0));
        assert_eq!(duration_us("2.00m"), Some(120_000_000.0));
        assert_eq!(duration_us("3.0h"), None);
        assert_eq!(duration_us("ms"), None);
    }
}
