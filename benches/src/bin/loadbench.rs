//! `loadbench`: one command that starts the echo backend, the gateway and nginx, sends the same
//! load straight to the backend and through each proxy in interleaved rounds, and reports.
//!
//! ```text
//! cargo run --release -p benches --bin loadbench -- [--duration 10s] [--connections 64]
//!     [--rounds 3] [--rate N] [--json FILE] [--svg FILE] [--cross-check]
//!     [--scenarios direct,gateway,gateway-https,...]
//! ```
//!
//! One gateway process, `gateway`, serves the `gateway*` scenarios: a cleartext listener
//! (HTTP/1.1, and HTTP/2 by prior knowledge) and a TLS listener with `gateway certs dev`
//! certificates, a catch-all route (no limit, no auth), a route with a rate limit that never
//! limits (counted in-process) and, for the JWT scenarios, a route that requires a token (RS256, a
//! key generated at start; the client sends tokens of `--jwt-users` users in turn). Three more,
//! each serving one scenario so that its features cost nothing in the others: `gateway-redis`, the
//! same config plus `redis:` pointing at a `redis-server` the bench starts, serves
//! `gateway-redis-limit` (skipped without redis-server); `gateway-log`, the same config plus a
//! JSON access log to a file, serves `gateway-access-log`; `gateway-all` serves `gateway-all` with
//! every feature on: TLS, JWT, limits counted in Redis (in-process without redis-server) and a
//! JSON access log to a file. The lines and drops of each access log are reported after the run.
//! Each gateway is started only when one of its scenarios is selected. Two yardsticks sit beside
//! them: nginx, and `hyperfloor` (about the least a hyper 1.x proxy does).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use benches::client;
use benches::jwt::{self, Tokens};
use benches::load::{self, LoadSpec};
use benches::procs::{self, TempDir};
use benches::redis::{self, RedisServer};
use benches::report::{self, CrossCheck, Report, RunResult, ScenarioReport, Summary};
use benches::stack::{self, AccessLogStats, Backend, Binaries, GatewayOptions, Proxy};
use benches::{nginx, plot, wrk};
use clap::Parser;
use serde_json::json;

// Beside this file rather than in src/bin/, where Cargo would take it for a binary of its own.
#[path = "loadbench/scenario.rs"]
mod scenario;

use scenario::{Gateway, Scenario, Server, TlsClients};

/// Load bench: direct-to-backend vs gateway vs nginx, same backend, same load.
#[derive(Debug, Parser)]
#[command(name = "loadbench")]
struct Args {
    /// Measured time per scenario and round (`500ms`, `10s`, `1m`; 100ms at least).
    #[arg(long, default_value = "10s", value_parser = parse_window)]
    duration: Duration,
    /// Unmeasured load before each measurement (connections open during it); `0s` for none.
    #[arg(long, default_value = "1s", value_parser = parse_warmup)]
    warmup: Duration,
    /// Connections per scenario: HTTP/1.1 has one request in flight on each, HTTP/2
    /// `--h2-streams`; `gateway-https-new-conn` keeps this many connects + requests in flight.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Concurrent requests (streams) on each HTTP/2 connection. The default 1 keeps the number
    /// of requests in flight equal to the HTTP/1.1 scenarios', so only the protocol differs.
    #[arg(long, default_value_t = 1)]
    h2_streams: usize,
    /// Rounds; each round runs every scenario once, interleaved, and medians are reported.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Open loop: total requests per second, sent on a fixed schedule. A request due while its
    /// connection is still busy counts its latency from when it was due, so a stall shows as
    /// queueing (no coordinated omission); one sent on time counts from its send. Requests still
    /// unsent a second after the window count at their wait so far, and the rate is reported
    /// as not met. Without it: closed loop (each connection sends as soon as its previous
    /// response is read).
    #[arg(long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also draw latency by percentile (p50 .. p99.99, median over rounds) per scenario as an
    /// SVG image to this file.
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Request path. The default asks the echo for a fixed 256-byte body, like a small API
    /// response: its JSON report (`/`, for example) lists every request header it received, so
    /// each header a scenario adds (a token, the proxy's forwarding headers) would be paid for
    /// again in the response. The JWT scenarios put `/jwt` in front, which the gateway strips again.
    #[arg(long, default_value = "/bytes/256")]
    path: String,
    /// Users in the JWT scenarios' token pool, one token each, sent in turn. Past the gateway's
    /// 16,384-token cache most requests pay for a signature check.
    #[arg(long, default_value_t = 1000)]
    jwt_users: usize,
    /// Load generator OS threads (each a current-thread tokio runtime).
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Scenarios to run, in this order in odd rounds and backwards in even ones (so that none
    /// always runs right after the same one). `nginx` needs nginx and
    /// `gateway-redis-limit` redis-server installed; each is skipped, with a message, without.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "direct,gateway,gateway-bearer,gateway-jwt,gateway-local-limit,gateway-redis-limit,\
                         gateway-access-log,gateway-h2,gateway-https,gateway-https-h2,gateway-https-new-conn,\
                         gateway-all,nginx,hyper-floor"
    )]
    scenarios: Vec<Scenario>,
    /// nginx worker processes [default: the gateway's worker threads = available CPUs].
    #[arg(long)]
    nginx_workers: Option<usize>,
    /// Directory holding `gateway` and `echo` [default: the directory of this executable].
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// A request with no complete response this long after it was sent counts as a transport
    /// error.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    request_timeout: Duration,
    /// Keep the temp dir (configs, stderr of every process) for inspection.
    #[arg(long)]
    keep_tmp: bool,
    /// After the rounds, also load `direct`, `gateway` and `nginx` (those selected) with wrk, when
    /// installed: same connections, client threads and duration, printed beside loadbench's
    /// medians, so an independent client confirms the figures.
    #[arg(long)]
    cross_check: bool,
}

/// A measured window: shorter than 100 ms, timer and scheduling noise would be the measurement.
fn parse_window(s: &str) -> Result<Duration, String> {
    let window = parse_duration(s)?;
    if window < Duration::from_millis(100) {
        return Err(format!("{s:?} is too short to measure: 100ms at least"));
    }
    Ok(window)
}

/// A warm-up: like a duration, or `0s` for none.
fn parse_warmup(s: &str) -> Result<Duration, String> {
    match s.trim().trim_end_matches(['m', 's']).parse::<f64>() {
        Ok(0.0) => Ok(Duration::ZERO),
        _ => parse_duration(s),
    }
}

/// Requests per second: a finite number above 0.
fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(rate) if rate > 0.0 && rate.is_finite() => Ok(rate),
        _ => Err(format!("{s:?} is not a rate: give requests per second above 0, e.g. 5000")),
    }
}

/// `250ms`, `10s`, `5m`, or a plain number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit() && c != '.').map_or((s, "s"), |i| s.split_at(i));
    let value: f64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (use ms, s or m)")),
    };
    if secs <= 0.0 || !secs.is_finite() {
        return Err(format!("duration must be > 0: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` gives the whole context chain on one line, without a backtrace.
            eprintln!("loadbench: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench(args: &Args) -> anyhow::Result<()> {
    // The orchestrator only sleeps and waits; the load runs on its own threads (see `load`).
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        let (mut sigterm, mut sighup) = (signal(SignalKind::terminate())?, signal(SignalKind::hangup())?);
        // Dropping `run` on a signal drops its process guards, which stop every child. (SIGKILL
        // cannot be caught: the children outlive it.)
        tokio::select! {
            result = run(args) => result,
            _ = tokio::signal::ctrl_c() => bail!("interrupted; stopped all child processes"),
            _ = sigterm.recv() => bail!("terminated; stopped all child processes"),
            _ = sighup.recv() => bail!("hung up (SIGHUP); stopped all child processes"),
        }
    })
}

/// Everything started for the bench. Field order is drop order: proxies, redis-server, backend,
/// temp dir.
struct Stack {
    /// The gateways a selected scenario needs, in [`Gateway::EVERY`] order.
    gateways: Vec<(Gateway, Proxy)>,
    nginx: Option<Proxy>,
    hyper_floor: Option<Proxy>,
    redis: Option<RedisServer>,
    backend: Backend,
    /// Client configs for the gateway's TLS listener (when a TLS scenario runs).
    tls: Option<TlsClients>,
    /// The JWT scenarios' tokens (when one runs).
    tokens: Option<Tokens>,
    tmp: TempDir,
}

impl Stack {
    fn gateways(&self) -> impl Iterator<Item = &Proxy> {
        self.gateways.iter().map(|(_, proxy)| proxy)
    }

    fn proxies_mut(&mut self) -> impl Iterator<Item = &mut Proxy> {
        self.gateways.iter_mut().map(|(_, proxy)| proxy).chain(self.nginx.iter_mut()).chain(self.hyper_floor.iter_mut())
    }

    /// The proxy `scenario`'s client talks to (`None`: the echo itself).
    fn proxy(&self, scenario: Scenario) -> Option<&Proxy> {
        match scenario.server() {
            Server::Echo => None,
            Server::Gateway(gateway) => self.gateways.iter().find(|(g, _)| *g == gateway).map(|(_, proxy)| proxy),
            Server::Nginx => self.nginx.as_ref(),
            Server::HyperFloor => self.hyper_floor.as_ref(),
        }
    }

    /// Whether `scenario`'s limit is counted in the redis-server the bench runs.
    fn counts_in_redis(&self, scenario: Scenario) -> bool {
        scenario.counts_in_redis(self.redis.is_some())
    }

    /// For a scenario counted in Redis: how many decisions its gateway has made in-process so far
    /// because Redis did not answer (within `redis.timeout`). `None` for the other scenarios.
    fn redis_fallbacks(&self, scenario: Scenario) -> anyhow::Result<Option<u64>> {
        let Some(admin) = self.proxy(scenario).filter(|_| self.counts_in_redis(scenario)).and_then(|p| p.admin_addr)
        else {
            return Ok(None);
        };
        Ok(Some(redis::fallback_decisions(&redis::rate_limit_status(admin)?)))
    }
}

async fn run(args: &Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rounds > 0, "--rounds must be > 0");
    anyhow::ensure!(args.connections > 0, "--connections must be > 0");
    anyhow::ensure!(args.h2_streams > 0, "--h2-streams must be > 0");
    anyhow::ensure!(args.jwt_users > 0, "--jwt-users must be > 0");
    anyhow::ensure!(args.client_threads > 0, "--client-threads must be > 0");
    if let Some(rate) = args.rate {
        let due = rate * args.duration.as_secs_f64();
        anyhow::ensure!(due >= 1.0, "--rate {rate} schedules {due:.2} requests in a {:?} window", args.duration);
    }
    check_open_files(args)?;
    let needs_gateway = args.scenarios.iter().any(|s| matches!(s.server(), Server::Gateway(_)));
    let bins = stack::binaries(args.bin_dir.as_deref(), needs_gateway, args.scenarios.contains(&Scenario::HyperFloor))?;
    let mut scenarios: Vec<Scenario> = Vec::new();
    for s in &args.scenarios {
        if !scenarios.contains(s) {
            scenarios.push(*s);
        }
    }
    let nginx = if scenarios.contains(&Scenario::Nginx) {
        let found = nginx::find_nginx();
        if found.is_none() {
            println!("nginx is not installed: skipping the nginx scenario (install it with `apt-get install nginx`)");
            scenarios.retain(|s| *s != Scenario::Nginx);
        }
        found
    } else {
        None
    };
    let redis_server = find_redis_server(&mut scenarios);
    anyhow::ensure!(!scenarios.is_empty(), "nothing to measure: every selected scenario was skipped");

    let (mut stack, setup) = start_stack(args, &bins, &scenarios, nginx.as_deref(), redis_server.as_deref())?;
    let mut tls_handshake = None;
    let tls_gateway = stack.gateways().find_map(|g| g.tls_addr);
    if let (Some(addr), Some(tls)) = (tls_gateway, &stack.tls) {
        let negotiated = client::describe_handshake(addr, &tls.h2).await?;
        println!("TLS handshake with the gateway: {negotiated}");
        tls_handshake = Some(negotiated);
    }
    let mode = match args.rate {
        Some(rate) => format!("open loop at {} req/s total", report::fmt_int(rate)),
        None => "closed loop".to_owned(),
    };
    println!(
        "load: {} connections per scenario, {mode}, GET {}, {} client thread(s), \
         warm-up {:?} + {:?} measured per scenario, {} round(s), in this order:",
        args.connections, args.path, args.client_threads, args.warmup, args.duration, args.rounds,
    );
    let width = scenarios.iter().map(|s| s.name().len()).max().unwrap_or(0);
    for s in &scenarios {
        println!("  {:<width$}  {}", s.name(), s.description(&setup, args.h2_streams));
    }
    for &s in &scenarios {
        check_first_request(args, &stack, s).await?;
    }

    // Interleaved: round 1 runs every scenario, then round 2, ..., so drift hits all alike.
    let ticks_per_sec = procs::clock_ticks_per_sec();
    let mut results: Vec<Vec<RunResult>> = vec![Vec::new(); scenarios.len()];
    let mut fallback_notes = Vec::new();
    for round in 1..=args.rounds {
        let mut order: Vec<usize> = (0..scenarios.len()).collect();
        if round % 2 == 0 {
            order.reverse();
        }
        for i in order {
            let scenario = scenarios[i];
            let fallbacks_before = stack.redis_fallbacks(scenario)?;
            let result = measure(args, &mut stack, scenario, round, ticks_per_sec).await?;
            println!("{}", report::round_line(scenario.name(), width, &result));
            results[i].push(result);
            if let (Some(before), Some(after)) = (fallbacks_before, stack.redis_fallbacks(scenario)?) {
                if after > before {
                    let note = format!(
                        "{} round {round}: {} rate-limit decisions were made in-process because Redis did not \
                         answer in time: that round measured a mix",
                        scenario.name(),
                        after - before
                    );
                    eprintln!("loadbench: {note}");
                    fallback_notes.push(note);
                }
            }
        }
    }

    let scenario_reports: Vec<ScenarioReport> = scenarios
        .iter()
        .zip(results)
        .map(|(&s, rounds)| ScenarioReport {
            name: s.name().to_owned(),
            description: s.description(&setup, args.h2_streams),
            median: Summary::of(&rounds),
            rounds,
        })
        .collect();
    let access_logs = check_access_logs(&stack)?;
    let client_cpu_limit = 100.0 * args.client_threads.min(args.connections) as f64;
    let mut notes = report::notes(&scenario_reports, client_cpu_limit, setup.cpus);
    notes.extend(fallback_notes);
    notes.extend(access_logs.iter().filter(|(_, stats)| stats.dropped > 0).map(|(name, stats)| {
        format!(
            "{name}: the access log dropped {} lines (the writer could not keep up): the gateway logged \
             fewer requests than it served, and paid for fewer writes",
            report::fmt_int(stats.dropped as f64)
        )
    }));
    let redis_server = redis_server.as_deref().filter(|_| setup.redis);
    let tls_handshake = tls_handshake.as_deref();
    let cross_check = if args.cross_check { cross_check(args, &stack, &scenario_reports)? } else { Vec::new() };
    let report = Report {
        settings: settings(args, &bins, &setup, nginx.as_deref(), redis_server, tls_handshake, &access_logs),
        ratios: report::ratios(&scenario_reports),
        cross_check,
        notes,
        scenarios: scenario_reports,
    };
    println!();
    print!("{}", report::table(&report));
    if !report.cross_check.is_empty() {
        let settings =
            format!("-t{} -c{} -d{}s", args.client_threads, args.connections, wrk::whole_seconds(args.duration));
        print!("{}", report::cross_check_table(&report.cross_check, &settings));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    if let Some(path) = &args.svg {
        let (title, subtitle) = plot_titles(args, &setup);
        std::fs::write(path, plot::svg(&plot::from_report(&report, title, subtitle)))
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    drop(stack);
    Ok(())
}

/// `--cross-check`: wrk against the plain HTTP/1.1 targets that ran (direct, gateway, nginx), one
/// run each; empty, with a message, when wrk is not installed.
fn cross_check(args: &Args, stack: &Stack, reports: &[ScenarioReport]) -> anyhow::Result<Vec<CrossCheck>> {
    let Some(bin) = wrk::find() else {
        println!("{}; skipping the cross-check", wrk::NOT_FOUND);
        return Ok(Vec::new());
    };
    let mut checks = Vec::new();
    for scenario in [Scenario::Direct, Scenario::Gateway, Scenario::Nginx] {
        let Some(ours) = reports.iter().find(|r| r.name == scenario.name()) else { continue };
        let spec = load_spec(args, stack, scenario)?;
        println!("cross-check   wrk -> {} ({}s)", scenario.name(), wrk::whole_seconds(args.duration));
        let wrk = wrk::run(&bin, spec.addr, &spec.path, args.client_threads, args.connections, args.duration)
            .with_context(|| format!("cross-check of {}", scenario.name()))?;
        checks.push(CrossCheck {
            scenario: scenario.name().to_owned(),
            wrk,
            loadbench_requests_per_sec: ours.median.requests_per_sec,
        });
    }
    Ok(checks)
}

/// Reads the access log of every gateway that writes one (`gateway-log`, `gateway-all`) and prints
/// what it holds, so a reader sees the log was really written; what the writer dropped is a note,
/// not an error.
fn check_access_logs(stack: &Stack) -> anyhow::Result<Vec<(&'static str, AccessLogStats)>> {
    let mut logs = Vec::new();
    for (gateway, proxy) in &stack.gateways {
        let Some(stats) = stack::access_log_stats(proxy)? else { continue };
        println!(
            "access log    {} wrote {} lines ({:.1} MiB), dropped {}",
            gateway.name(),
            report::fmt_int(stats.lines as f64),
            stats.bytes as f64 / (1024.0 * 1024.0),
            report::fmt_int(stats.dropped as f64)
        );
        logs.push((gateway.name(), stats));
    }
    Ok(logs)
}

/// The plot's title (the load) and subtitle (the rest of the setup, what a curve is).
fn plot_titles(args: &Args, setup: &Setup) -> (String, String) {
    let mode = match args.rate {
        Some(rate) => format!("open loop at {} req/s", report::fmt_int(rate)),
        None => "closed loop".to_owned(),
    };
    let title = format!(
        "Latency by percentile: {mode}, {} connections, {:?} measured × {} round{}",
        args.connections,
        args.duration,
        args.rounds,
        if args.rounds == 1 { "" } else { "s" }
    );
    let streams = if args.h2_streams > 1 {
        format!(", {} streams per HTTP/2 connection", args.h2_streams)
    } else {
        String::new()
    };
    let subtitle = format!(
        "GET {}, warm-up {:?}, {} client thread(s), {} CPUs{streams}; each curve: median over rounds at each percentile",
        args.path, args.warmup, args.client_threads, setup.cpus
    );
    (title, subtitle)
}

/// Facts about the started processes that the report states.
struct Setup {
    cpus: usize,
    /// Worker threads counted in the running gateway (`cpus` when the gateway is not run).
    gateway_workers: usize,
    nginx_workers: usize,
    /// Tokens (and users) in the JWT scenarios' pool.
    jwt_users: usize,
    /// redis-server runs, and the gateway that counts limits in it.
    redis: bool,
}

/// redis-server, when a selected scenario wants it; without it, drops `gateway-redis-limit`
/// and says so (`gateway-all` then counts its limit in-process).
fn find_redis_server(scenarios: &mut Vec<Scenario>) -> Option<PathBuf> {
    if !scenarios.iter().any(|s| s.counts_in_redis(true)) {
        return None;
    }
    let found = redis::find_redis_server();
    if found.is_none() {
        let mut consequences = Vec::new();
        if scenarios.contains(&Scenario::GatewayRedisLimit) {
            consequences.push("skipping the gateway-redis-limit scenario");
        }
        if scenarios.contains(&Scenario::GatewayAll) {
            consequences.push("gateway-all counts its rate limit in-process");
        }
        println!("{}; {}", redis::NOT_FOUND, consequences.join("; "));
        scenarios.retain(|s| *s != Scenario::GatewayRedisLimit);
    }
    found
}

/// Starts the echo backend, then redis-server (when a scenario counts in Redis and it is
/// installed), then each gateway that serves a selected scenario (see [`Gateway`]), with the TLS
/// listener, JWT routes, `redis:` and access log only if a scenario it serves needs them; then
/// nginx and `hyperfloor` (as selected). nginx gets as many workers as the gateway has worker
/// threads, unless `--nginx-workers` says otherwise; `hyperfloor` always does.
fn start_stack(
    args: &Args,
    bins: &Binaries,
    scenarios: &[Scenario],
    nginx: Option<&Path>,
    redis_server: Option<&Path>,
) -> anyhow::Result<(Stack, Setup)> {
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let tmp = TempDir::new(args.keep_tmp)?;
    let backend = stack::start_echo(&bins.echo, tmp.path())?;
    let mut stack = Stack {
        gateways: Vec::new(),
        nginx: None,
        hyper_floor: None,
        redis: None,
        backend,
        tls: None,
        tokens: None,
        tmp,
    };
    // Which build is measured: `--bin-dir` may point at another (e.g. the PGO build's).
    println!("binaries      {} and {}", bins.gateway.display(), bins.echo.display());
    println!("echo backend  pid {:<7} {}", stack.backend.proc.pid(), stack.backend.addr);
    let mut setup = Setup {
        cpus,
        gateway_workers: cpus,
        nginx_workers: args.nginx_workers.unwrap_or(cpus),
        jwt_users: args.jwt_users,
        redis: false,
    };
    if scenarios.iter().any(|s| s.jwt()) {
        let t0 = Instant::now();
        stack.tokens = Some(jwt::mint(args.jwt_users)?);
        println!(
            "jwt           {} RS256 tokens signed in {:.1?}",
            report::fmt_int(args.jwt_users as f64),
            t0.elapsed()
        );
    }
    if let Some(bin) = redis_server.filter(|_| scenarios.iter().any(|s| s.counts_in_redis(true))) {
        let server = redis::start_redis(bin, stack.tmp.path())?;
        println!("redis-server  pid {:<7} {}", server.proc.pid(), server.addr);
        stack.redis = Some(server);
        setup.redis = true;
    }
    for gateway in Gateway::EVERY {
        let served: Vec<Scenario> =
            scenarios.iter().copied().filter(|s| s.server() == Server::Gateway(gateway)).collect();
        if served.is_empty() {
            continue;
        }
        let options = GatewayOptions {
            tls: served.iter().any(|s| s.tls()),
            jwt: served.iter().any(|s| s.jwt()),
            redis: (stack.redis.as_ref().map(|r| r.addr))
                .filter(|_| served.iter().any(|s| s.counts_in_redis(setup.redis))),
            access_log: served.iter().any(|s| s.access_log()),
        };
        let name = gateway.name();
        let tokens = stack.tokens.as_ref().filter(|_| options.jwt);
        let proxy = stack::start_gateway(&bins.gateway, stack.tmp.path(), name, stack.backend.addr, options, tokens)?;
        setup.gateway_workers = procs::count_threads(proxy.proc.pid(), &procs::WORKER_THREAD_NAMES);
        let tls_addr = proxy.tls_addr.map(|a| format!(", TLS {a}")).unwrap_or_default();
        let admin_addr = proxy.admin_addr.map(|a| format!(", admin {a}")).unwrap_or_default();
        let counted = if options.redis.is_some() { "; limits counted in Redis, connected" } else { "" };
        let logged = if options.access_log { "; access log to a file" } else { "" };
        println!(
            "{name:<13} pid {:<7} {}{tls_addr}{admin_addr}  ({} worker threads{counted}{logged})",
            proxy.proc.pid(),
            proxy.addr,
            setup.gateway_workers
        );
        stack.gateways.push((gateway, proxy));
    }
    if args.nginx_workers.is_none() && setup.gateway_workers > 0 {
        setup.nginx_workers = setup.gateway_workers;
    }
    if scenarios.iter().any(|s| s.tls()) {
        stack.tls = Some(TlsClients::new(&stack.tmp.path().join(stack::DEV_CA_FILE))?);
    }
    if let (true, Some(bin)) = (scenarios.contains(&Scenario::Nginx), nginx) {
        let proxy = nginx::start_nginx(bin, stack.tmp.path(), stack.backend.addr, setup.nginx_workers)?;
        println!("nginx         pid {:<7} {}  (workers {:?})", proxy.proc.pid(), proxy.addr, &proxy.pids()[1..]);
        stack.nginx = Some(proxy);
    }
    if scenarios.contains(&Scenario::HyperFloor) {
        let proxy =
            stack::start_hyper_floor(&bins.hyper_floor, stack.tmp.path(), stack.backend.addr, setup.gateway_workers)?;
        println!(
            "hyper-floor   pid {:<7} {}  ({} worker threads)",
            proxy.proc.pid(),
            proxy.addr,
            setup.gateway_workers
        );
        stack.hyper_floor = Some(proxy);
    }
    Ok((stack, setup))
}

/// How the bench ran, for the JSON report.
fn settings(
    args: &Args,
    bins: &Binaries,
    setup: &Setup,
    nginx: Option<&Path>,
    redis_server: Option<&Path>,
    tls_handshake: Option<&str>,
    access_logs: &[(&str, AccessLogStats)],
) -> serde_json::Value {
    let access_logs: BTreeMap<&str, &AccessLogStats> = access_logs.iter().map(|(name, stats)| (*name, stats)).collect();
    json!({
        "duration_secs": args.duration.as_secs_f64(),
        "warmup_secs": args.warmup.as_secs_f64(),
        "connections": args.connections,
        "h2_streams_per_connection": args.h2_streams,
        "tls_handshake": tls_handshake,
        "rounds": args.rounds,
        "rate": args.rate,
        "mode": if args.rate.is_some() { "open_loop" } else { "closed_loop" },
        "path": args.path,
        "client_threads": args.client_threads,
        "client_runtime": "one current_thread tokio runtime per client thread (+ a pacer thread in open loop)",
        "cpus": setup.cpus,
        "gateway_tokio_workers": setup.gateway_workers,
        "nginx_workers": setup.nginx_workers,
        "jwt": { "algorithm": "RS256", "users": setup.jwt_users, "path_prefix": jwt::PATH_PREFIX },
        "rate_limit": {
            "requests": stack::LIMIT_REQUESTS,
            "window": stack::LIMIT_WINDOW,
            "key": { "gateway-local-limit": "client_ip", "gateway-redis-limit": "client_ip", "gateway-all": "jwt.sub" },
            "path_prefix": { "limit": stack::LIMIT_PATH_PREFIX, "all": stack::ALL_PATH_PREFIX },
            "gateway_all_counted_in": if setup.redis { "redis" } else { "process" },
        },
        "access_logs": access_logs,
        "nginx_version": nginx.and_then(nginx_version),
        "redis_version": redis_server.and_then(redis::version),
        "gateway_bin": bins.gateway.display().to_string(),
        "echo_bin": bins.echo.display().to_string(),
        "hyper_floor_bin": bins.hyper_floor.display().to_string(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").ok().map(|s| s.trim().to_owned()),
        "cpu_model": cpu_model(),
    })
}

/// The load `scenario` sends: where, how, on which path, with which tokens.
fn load_spec(args: &Args, stack: &Stack, scenario: Scenario) -> anyhow::Result<LoadSpec> {
    let addr = match stack.proxy(scenario) {
        None => stack.backend.addr,
        Some(p) if scenario.tls() => p.tls_addr.context("the proxy has no TLS listener")?,
        Some(p) => p.addr,
    };
    let authorization = match (scenario.jwt(), &stack.tokens) {
        (false, _) => Arc::new([]),
        (true, Some(tokens)) => Arc::clone(&tokens.authorization),
        (true, None) => bail!("{}: no tokens were minted", scenario.name()),
    };
    Ok(LoadSpec {
        addr,
        path: scenario.path(&args.path),
        authorization,
        connections: args.connections,
        protocol: scenario.protocol(stack.tls.as_ref(), args.h2_streams)?,
        threads: args.client_threads,
        warmup: args.warmup,
        duration: args.duration,
        rate: args.rate,
        request_timeout: args.request_timeout,
    })
}

/// Fails unless the scenario's first request (first token, if any) answers 2xx: a misconfigured
/// scenario would otherwise be measured as a fast stream of errors.
async fn check_first_request(args: &Args, stack: &Stack, scenario: Scenario) -> anyhow::Result<()> {
    let spec = load_spec(args, stack, scenario)?;
    let status = load::first_status(&spec).await.with_context(|| format!("{}: first request", scenario.name()))?;
    if !status.is_success() {
        let tail = stack.proxy(scenario).map(|p| p.proc.stderr_tail()).unwrap_or_default();
        bail!("{}: the first request (GET {}) answered {status}, not 2xx{tail}", scenario.name(), spec.path);
    }
    Ok(())
}

/// Runs the load against one scenario and measures client, proxy and backend over the window.
async fn measure(
    args: &Args,
    stack: &mut Stack,
    scenario: Scenario,
    round: usize,
    ticks_per_sec: u64,
) -> anyhow::Result<RunResult> {
    let proxy = stack.proxy(scenario);
    let is_proxy = proxy.is_some();
    let running = load::start(&load_spec(args, stack, scenario)?)?;
    let window = running.window;
    let proxy_pids = proxy.map(Proxy::pids).unwrap_or_default();
    let backend_pid = [stack.backend.proc.pid()];
    let me = [std::process::id()];
    // Charged to its own column, only in the scenarios that use it (else its idle ticks are "other").
    let redis_pid: Vec<u32> =
        stack.redis.iter().filter(|_| stack.counts_in_redis(scenario)).map(|r| r.proc.pid()).collect();
    let redis_admin = proxy.and_then(|p| p.admin_addr).filter(|_| stack.counts_in_redis(scenario));
    let batches = || redis_admin.map(redis::calls).transpose();

    let mut memory = PeakMemory::new(&proxy_pids);
    memory.sample_until(window.measure_start).await;
    let machine_before = procs::machine_ticks()?;
    let before = (procs::cpu_ticks(&proxy_pids)?, procs::cpu_ticks(&backend_pid)?, procs::cpu_ticks(&me)?);
    let redis_before = procs::cpu_ticks(&redis_pid)?.0;
    let batches_before = batches()?;
    let t0 = Instant::now();
    memory.sample_until(window.end).await;
    let machine_after = procs::machine_ticks()?;
    let after = (procs::cpu_ticks(&proxy_pids)?, procs::cpu_ticks(&backend_pid)?, procs::cpu_ticks(&me)?);
    let redis_after = procs::cpu_ticks(&redis_pid)?.0;
    let batches_after = batches()?;
    let secs = t0.elapsed().as_secs_f64();
    let outcome = running.finish().await?;

    if !(before.0 .1 && after.0 .1) {
        eprintln!("loadbench: a {} process vanished during round {round}", scenario.name());
    }
    stack.backend.proc.check_alive()?;
    for p in stack.proxies_mut() {
        p.proc.check_alive()?;
    }
    if outcome.ok == 0 {
        bail!(
            "{}: no successful request in round {round} (first bad status: {:?}, first transport error: {:?})",
            scenario.name(),
            outcome.first_bad_status,
            outcome.first_transport_error
        );
    }
    if outcome.errors() > 0 {
        eprintln!(
            "loadbench: {} round {round}: {} non-2xx (first {:?}), {} transport errors (first {:?})",
            scenario.name(),
            outcome.status_errors,
            outcome.first_bad_status,
            outcome.transport_errors,
            outcome.first_transport_error
        );
    }

    // Per-request CPU and req/s use the responses completed inside the CPU window.
    let ok = outcome.completed_in_window.max(1) as f64;
    let cpu_us = |b: u64, a: u64| a.saturating_sub(b) as f64 * 1e6 / ticks_per_sec as f64;
    let proxy_cpu = cpu_us(before.0 .0, after.0 .0);
    let client_cpu = cpu_us(before.2 .0, after.2 .0);
    let backend_cpu = cpu_us(before.1 .0, after.1 .0);
    let redis_cpu = cpu_us(redis_before, redis_after);
    let (machine_tasks_cpu, irq_cpu, steal_cpu) = (
        cpu_us(machine_before.tasks, machine_after.tasks),
        cpu_us(machine_before.irq, machine_after.irq),
        cpu_us(machine_before.steal, machine_after.steal),
    );
    let other_cpu = (machine_tasks_cpu - proxy_cpu - client_cpu - backend_cpu - redis_cpu).max(0.0);
    let mut samples = outcome.samples;
    let latency_curve = samples.curve();
    let latency = samples.percentiles();
    Ok(RunResult {
        round,
        requests_per_sec: ok / args.duration.as_secs_f64(),
        ok: outcome.ok,
        errors: outcome.status_errors + outcome.transport_errors,
        status_errors: outcome.status_errors,
        transport_errors: outcome.transport_errors,
        reconnects: outcome.reconnects,
        missed: outcome.missed,
        latency_lower_bound: outcome.missed > 0,
        pacer_lag_max_us: args.rate.map(|_| outcome.pacer_lag_max_us),
        pacer_late_pct: args
            .rate
            .map(|_| 100.0 * outcome.pacer_late_wakeups as f64 / outcome.pacer_wakeups.max(1) as f64),
        latency,
        latency_curve,
        proxy_cpu_us_per_req: is_proxy.then(|| proxy_cpu / ok),
        proxy_cpu_ticks: is_proxy.then(|| after.0 .0.saturating_sub(before.0 .0)),
        backend_cpu_us_per_req: backend_cpu / ok,
        redis_cpu_us_per_req: (!redis_pid.is_empty()).then(|| redis_cpu / ok),
        requests_per_redis_call: batches_before
            .zip(batches_after)
            .map(|(before, after)| ok / after.saturating_sub(before).max(1) as f64),
        client_cpu_us_per_req: client_cpu / ok,
        client_cpu_pct: client_cpu / 1e4 / secs,
        proxy_peak_pss_kib: memory.peak(),
        other_cpu_pct: other_cpu / 1e4 / secs,
        irq_cpu_pct: irq_cpu / 1e4 / secs,
        steal_cpu_pct: steal_cpu / 1e4 / secs,
        window_secs: secs,
    })
}

/// The highest memory use (PSS, summed over its processes) of a proxy seen while a scenario ran.
struct PeakMemory<'a> {
    pids: &'a [u32],
    peak: Option<u64>,
}

/// How often [`PeakMemory`] looks: often enough for a load's plateau, rarely enough to cost the
/// client (which does the reading) nothing it would notice.
const MEMORY_SAMPLE_EVERY: Duration = Duration::from_millis(200);

impl<'a> PeakMemory<'a> {
    fn new(pids: &'a [u32]) -> PeakMemory<'a> {
        let mut memory = PeakMemory { pids, peak: None };
        memory.sample();
        memory
    }

    fn sample(&mut self) {
        let now: Option<u64> = self.pids.iter().map(|&pid| procs::pss_kib(pid)).sum();
        self.peak = self.peak.max(now);
    }

    /// Samples every [`MEMORY_SAMPLE_EVERY`] until `until`, and once more then.
    async fn sample_until(&mut self, until: Instant) {
        while Instant::now() < until {
            tokio::time::sleep_until(until.min(Instant::now() + MEMORY_SAMPLE_EVERY).into()).await;
            self.sample();
        }
    }

    /// `None` without proxy processes, or when one could not be read.
    fn peak(&self) -> Option<u64> {
        self.peak.filter(|_| !self.pids.is_empty())
    }
}

/// Fails early when the open-file limit cannot hold the connections: the client's, and a proxy's
/// for both its client and its upstream sides (the gateway also keeps 256 in reserve). Past it,
/// connects fail by the thousand, and so would reading the processes' CPU in /proc.
fn check_open_files(args: &Args) -> anyhow::Result<()> {
    let Some(limit) = procs::open_files_limit() else { return Ok(()) };
    let proxied = args.scenarios.iter().any(|s| s.server() != Server::Echo);
    let needed = if proxied { 2 * args.connections as u64 + 256 } else { args.connections as u64 + 64 };
    anyhow::ensure!(
        needed <= limit,
        "--connections {} needs about {needed} open files{}, but the limit is {limit}: raise it (`ulimit -n`, up to \
         `ulimit -Hn`) or use fewer connections",
        args.connections,
        if proxied { " in a proxy (client and upstream sides)" } else { "" }
    );
    Ok(())
}

fn nginx_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("-v").output().ok()?;
    // nginx prints its version on stderr.
    let text = String::from_utf8_lossy(&out.stderr);
    Some(text.trim().trim_start_matches("nginx version: ").to_owned())
}

fn cpu_model() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::*;

    #[test]
    fn parse_duration_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_window("50ms").is_err());
        assert_eq!(parse_window("100ms"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_warmup("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_warmup("0"), Ok(Duration::ZERO));
        assert_eq!(parse_warmup("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_warmup("-1s").is_err());
    }

    #[test]
    fn parse_rate_takes_positive_finite_numbers() {
        assert_eq!(parse_rate("5000"), Ok(5000.0));
        assert_eq!(parse_rate("0.5"), Ok(0.5));
        for bad in ["0", "-1", "nan", "inf", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn default_scenarios_are_every_scenario() {
        let args = Args::parse_from(["loadbench"]);
        assert_eq!(args.scenarios, Scenario::value_variants());
    }
}
