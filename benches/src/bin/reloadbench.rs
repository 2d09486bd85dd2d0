//! `reloadbench`: how long a config change takes to go live. Starts the echo backend and the
//! gateway, then N times renames a new config into place (a new route `/rN` each time) and polls
//! `GET /rN` every `--poll` until it first answers 200; prints min / p50 / max of those times.
//!
//! ```text
//! cargo run --release -p benches --bin reloadbench -- [--reloads 20] [--poll 1ms] [--keep-tmp]
//! ```
//!
//! The time runs from the moment `rename` returns to the first 200, so it includes the watcher's
//! debounce, the re-read, validation, the snapshot build and swap, and up to one poll interval.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use benches::procs::{self, ProcGuard, TempDir};
use benches::stack;
use clap::Parser;

/// How long the gateway may take to start listening.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// The goal from the hot reload issue (reported against, never asserted).
const GOAL: Duration = Duration::from_millis(500);

/// Reload latency: config file renamed into place -> a request on a new route succeeds.
#[derive(Debug, Parser)]
#[command(name = "reloadbench")]
struct Args {
    /// Number of reloads measured.
    #[arg(long, default_value_t = 20)]
    reloads: usize,
    /// Interval between polls of the new route, in milliseconds.
    #[arg(long, default_value_t = 1)]
    poll_ms: u64,
    /// Give up on one reload after this many seconds (the gateway's stderr is shown).
    #[arg(long, default_value_t = 10)]
    timeout_s: u64,
    /// Directory holding `gateway` and `echo` [default: the directory of this executable].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Keep the temp dir (configs, stderr of both processes) for inspection.
    #[arg(long)]
    keep_tmp: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("reloadbench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The error a caught signal ends the run with (its guards then stop the children).
const STOPPED: &str = "stopped by a signal; stopped all child processes";

fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.reloads > 0, "--reloads must be > 0");
    let stop = procs::stop_on_signals()?;
    let stack::Binaries { gateway: gateway_bin, echo: echo_bin, .. } =
        stack::binaries(args.bin_dir.as_deref(), true, false)?;
    let tmp = TempDir::new(args.keep_tmp)?;
    // The gateway watches its config's directory: keep it apart from the stderr files, which are
    // written all the time and would be a stream of (ignored) change events.
    let config_dir = tmp.path().join("config");
    std::fs::create_dir(&config_dir)?;
    let config = config_dir.join("gateway.yaml");

    let backend = stack::start_echo(&echo_bin, tmp.path())?;
    std::fs::write(&config, yaml(backend.addr, 0))?;
    let (mut gateway, addr) = start_gateway(&gateway_bin, &config, tmp.path())?;
    wait_for_200(&mut gateway, addr, "/r0", Duration::from_secs(args.timeout_s), &stop)
        .context("the first config never served /r0")?;

    println!(
        "reload latency: {} reloads, rename of a new config -> first 200 on its new route, polled every {} ms",
        args.reloads, args.poll_ms
    );
    println!("gateway: {}", gateway_bin.display());
    let poll = Duration::from_millis(args.poll_ms);
    let timeout = Duration::from_secs(args.timeout_s);
    let mut samples = Vec::with_capacity(args.reloads);
    for i in 1..=args.reloads {
        let temp = config_dir.join(".gateway.yaml.tmp");
        std::fs::write(&temp, yaml(backend.addr, i))?;
        std::fs::rename(&temp, &config)?;
        let renamed = Instant::now();
        let path = format!("/r{i}");
        loop {
            gateway.check_alive()?;
            anyhow::ensure!(!stop.load(Ordering::Relaxed), STOPPED);
            if stack::get_status(addr, &path).ok() == Some(200) {
                break;
            }
            if renamed.elapsed() > timeout {
                bail!("reload {i}: {path} did not answer 200 within {timeout:?}{}", gateway.stderr_tail());
            }
            thread::sleep(poll);
        }
        let took = renamed.elapsed();
        println!("reload {i:>3}: {:>7.1} ms", ms(took));
        samples.push(took);
    }

    samples.sort_unstable();
    let (min, max) = (samples[0], samples[samples.len() - 1]);
    let p50 = samples[(samples.len().div_ceil(2)).max(1) - 1];
    let verdict = if max < GOAL { "all under" } else { "NOT all under" };
    println!(
        "min {:.1} ms, p50 {:.1} ms, max {:.1} ms ({verdict} the {} ms goal, debounce included)",
        ms(min),
        ms(p50),
        ms(max),
        GOAL.as_millis()
    );
    Ok(())
}

/// Config number `i`: one route `r<i>` matching exactly `/r<i>`, so `/r<i>` answers 404 until it is live.
fn yaml(backend: SocketAddr, i: usize) -> String {
    format!(
        "# Generated by reloadbench (config {i}).\n\
         listeners:\n  - name: bench\n    address: 127.0.0.1:0\n\
         upstreams:\n  echo:\n    endpoints: [http://{backend}]\n\
         routes:\n  - name: r{i}\n    match: {{ path: /r{i} }}\n    upstream: echo\n"
    )
}

/// Starts `gateway run --config <config>` and waits for its `bench` listener and `ready`.
fn start_gateway(bin: &Path, config: &Path, dir: &Path) -> anyhow::Result<(ProcGuard, SocketAddr)> {
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(config);
    let mut proc = ProcGuard::spawn("gateway", cmd, &dir.join("gateway.stderr"))?;
    let addr = proc.wait_for_line(STARTUP_TIMEOUT, |line| {
        let mut words = line.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("listening"), Some("bench"), Some(addr)) => addr.parse::<SocketAddr>().ok(),
            _ => None,
        }
    })?;
    proc.wait_for_line(STARTUP_TIMEOUT, |line| (line.trim() == "ready").then_some(()))?;
    Ok((proc, addr))
}

fn wait_for_200(
    proc: &mut ProcGuard,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    while Instant::now() < deadline {
        proc.check_alive()?;
        anyhow::ensure!(!stop.load(Ordering::Relaxed), STOPPED);
        match stack::get_status(addr, path) {
            Ok(200) => return Ok(()),
            Ok(status) => last = format!("status {status}"),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("GET {path} never answered 200 (last: {last}){}", proc.stderr_tail())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
