//! Results: one record per scenario and round, medians over rounds, ratios, the printed
//! table and the JSON file.

use std::fmt::Write as _;

use serde::Serialize;

use crate::hist::{CurvePoint, Percentiles};

/// One scenario measured once.
#[derive(Debug, Clone, Serialize)]
pub struct RunResult {
    /// 1-based round number.
    pub round: usize,
    /// 2xx responses per second of measured window.
    pub requests_per_sec: f64,
    /// 2xx responses in the window.
    pub ok: u64,
    /// Non-2xx responses plus transport errors.
    pub errors: u64,
    /// Non-2xx responses.
    pub status_errors: u64,
    /// Connect failures, I/O or protocol errors, timeouts.
    pub transport_errors: u64,
    /// Connections the peer closed between requests (re-opened; not errors).
    pub reconnects: u64,
    /// Open loop: scheduled requests never sent (the system fell behind). 0 in closed loop.
    pub missed: u64,
    /// Open loop: some requests were never sent (`missed`), so the offered rate was not met. Their
    /// wait until the generator gave up is in `latency`, which is then a lower bound.
    pub latency_lower_bound: bool,
    /// Open loop: worst lateness of the pacer releasing a request, microseconds.
    pub pacer_lag_max_us: Option<u64>,
    /// Open loop: share of pacer wake-ups more than 1 ms late, percent.
    pub pacer_late_pct: Option<f64>,
    /// Latency percentiles of the 2xx responses (and, open loop, of the requests never sent: see
    /// `latency_lower_bound`).
    pub latency: Percentiles,
    /// Latency of the 2xx responses from p50 to p99.99, for the plot (`plot`); not in the JSON.
    #[serde(skip)]
    pub latency_curve: Vec<CurvePoint>,
    /// Proxy user+system CPU per 2xx response, microseconds (nginx: master + workers).
    pub proxy_cpu_us_per_req: Option<f64>,
    /// The clock ticks (`CLK_TCK`, 10 ms each) `proxy_cpu_us_per_req` rests on: ±1 is its resolution.
    pub proxy_cpu_ticks: Option<u64>,
    /// Echo backend CPU per 2xx response, microseconds.
    pub backend_cpu_us_per_req: f64,
    /// redis-server CPU per 2xx response, microseconds, in scenarios whose limit is counted in
    /// Redis (not part of the proxy's CPU; part of the total).
    pub redis_cpu_us_per_req: Option<f64>,
    /// In the same scenarios: 2xx responses per rate-limit call the gateway made to Redis, that
    /// is, how many decisions its batches carried on average.
    pub requests_per_redis_call: Option<f64>,
    /// Load generator CPU per 2xx response, microseconds.
    pub client_cpu_us_per_req: f64,
    /// Load generator CPU use in % of one core (100% per thread = client saturated).
    pub client_cpu_pct: f64,
    /// Proxy peak memory while this scenario ran (warm-up and window), KiB: its proportional set
    /// size (resident memory, pages shared between processes divided among them), summed over its
    /// processes (nginx: master + workers), sampled every 200 ms. The `gateway*` scenarios that
    /// share one gateway process see what an earlier one left resident.
    pub proxy_peak_pss_kib: Option<u64>,
    /// CPU charged to processes other than client, proxy, backend and redis-server during the
    /// window (anything else running on the machine), in % of one core.
    pub other_cpu_pct: f64,
    /// irq + softirq CPU during the window (mostly loopback packet processing), % of one core.
    pub irq_cpu_pct: f64,
    /// Steal during the window: time the hypervisor gave this VM's CPUs to someone else while
    /// they had work, in % of one core. The bench's processes waited for it, and nothing of
    /// theirs counts it, so it shows only here.
    pub steal_cpu_pct: f64,
    /// Measured window, seconds.
    pub window_secs: f64,
}

impl RunResult {
    /// A round with nothing measured, for tests to fill in.
    #[cfg(test)]
    pub(crate) fn empty(round: usize) -> RunResult {
        RunResult {
            round,
            requests_per_sec: 0.0,
            ok: 0,
            errors: 0,
            status_errors: 0,
            transport_errors: 0,
            reconnects: 0,
            missed: 0,
            latency_lower_bound: false,
            pacer_lag_max_us: None,
            pacer_late_pct: None,
            latency: Percentiles::default(),
            latency_curve: Vec::new(),
            proxy_cpu_us_per_req: None,
            proxy_cpu_ticks: None,
            backend_cpu_us_per_req: 0.0,
            redis_cpu_us_per_req: None,
            requests_per_redis_call: None,
            client_cpu_us_per_req: 0.0,
            client_cpu_pct: 0.0,
            proxy_peak_pss_kib: None,
            other_cpu_pct: 0.0,
            irq_cpu_pct: 0.0,
            steal_cpu_pct: 0.0,
            window_secs: 0.0,
        }
    }

    /// CPU of every process involved (client + proxy + backend + redis-server) per 2xx response,
    /// microseconds.
    pub fn total_cpu_us_per_req(&self) -> f64 {
        self.client_cpu_us_per_req
            + self.proxy_cpu_us_per_req.unwrap_or(0.0)
            + self.backend_cpu_us_per_req
            + self.redis_cpu_us_per_req.unwrap_or(0.0)
    }
}

/// Medians over rounds of one scenario (errors summed, peak memory maxed).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub requests_per_sec: f64,
    pub p50_us: f64,
    /// `None` unless every round had samples enough to tell it (the same for p99 and p99.9).
    pub p90_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub errors: u64,
    pub missed: u64,
    /// Some round's latency is a lower bound (open loop, rate not met).
    pub latency_lower_bound: bool,
    pub proxy_cpu_us_per_req: Option<f64>,
    pub backend_cpu_us_per_req: f64,
    pub redis_cpu_us_per_req: Option<f64>,
    pub requests_per_redis_call: Option<f64>,
    pub client_cpu_us_per_req: f64,
    pub total_cpu_us_per_req: f64,
    pub client_cpu_pct: f64,
    pub proxy_peak_pss_kib: Option<u64>,
    pub other_cpu_pct: f64,
    pub irq_cpu_pct: f64,
    pub steal_cpu_pct: f64,
}

impl Summary {
    /// Medians over `runs` (which must not be empty to be meaningful).
    pub fn of(runs: &[RunResult]) -> Summary {
        let m = |f: &dyn Fn(&RunResult) -> f64| median(runs.iter().map(f).collect());
        let proxy_cpu: Vec<f64> = runs.iter().filter_map(|r| r.proxy_cpu_us_per_req).collect();
        let redis_cpu: Vec<f64> = runs.iter().filter_map(|r| r.redis_cpu_us_per_req).collect();
        let per_call: Vec<f64> = runs.iter().filter_map(|r| r.requests_per_redis_call).collect();
        let told = |f: &dyn Fn(&Percentiles) -> Option<u32>| {
            let known: Option<Vec<f64>> = runs.iter().map(|r| f(&r.latency).map(f64::from)).collect();
            known.filter(|k| !k.is_empty()).map(median)
        };
        Summary {
            requests_per_sec: m(&|r| r.requests_per_sec),
            p50_us: m(&|r| f64::from(r.latency.p50_us)),
            p90_us: told(&|p| p.p90_us),
            p99_us: told(&|p| p.p99_us),
            p999_us: told(&|p| p.p999_us),
            errors: runs.iter().map(|r| r.errors).sum(),
            missed: runs.iter().map(|r| r.missed).sum(),
            latency_lower_bound: runs.iter().any(|r| r.latency_lower_bound),
            proxy_cpu_us_per_req: (!proxy_cpu.is_empty()).then(|| median(proxy_cpu)),
            backend_cpu_us_per_req: m(&|r| r.backend_cpu_us_per_req),
            redis_cpu_us_per_req: (!redis_cpu.is_empty()).then(|| median(redis_cpu)),
            requests_per_redis_call: (!per_call.is_empty()).then(|| median(per_call)),
            client_cpu_us_per_req: m(&|r| r.client_cpu_us_per_req),
            total_cpu_us_per_req: m(&|r| r.total_cpu_us_per_req()),
            client_cpu_pct: m(&|r| r.client_cpu_pct),
            proxy_peak_pss_kib: runs.iter().filter_map(|r| r.proxy_peak_pss_kib).max(),
            other_cpu_pct: m(&|r| r.other_cpu_pct),
            irq_cpu_pct: m(&|r| r.irq_cpu_pct),
            steal_cpu_pct: m(&|r| r.steal_cpu_pct),
        }
    }
}

/// Median; the mean of the two middle values for an even count; 0 when empty.
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// All rounds of one scenario and their medians.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// `direct`, `gateway`, `gateway-https`, ... or `nginx`.
    pub name: String,
    /// What the client talked to.
    pub description: String,
    /// Medians over rounds.
    pub median: Summary,
    /// Every round.
    pub rounds: Vec<RunResult>,
}

/// `a` relative to `b` (a / b), from the medians.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// e.g. `gateway/direct`.
    pub name: String,
    pub throughput: f64,
    /// Lowest and highest throughput ratio of one round (a's round over b's same round, measured
    /// moments apart): how far machine noise moved the ratio in this run.
    pub throughput_rounds: Option<(f64, f64)>,
    /// `None` when either side's latency is only a lower bound (open loop, rate not met) or, for
    /// p99, unknown (too few samples).
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    /// Proxy CPU per request (only when both sides are proxies).
    pub proxy_cpu_per_req: Option<f64>,
    /// Like `throughput_rounds`, for proxy CPU per request.
    pub proxy_cpu_rounds: Option<(f64, f64)>,
    /// CPU of all processes per request (client + proxy + backend + redis-server).
    pub total_cpu_per_req: f64,
}

fn div(x: f64, y: f64) -> f64 {
    if y > 0.0 {
        x / y
    } else {
        f64::NAN
    }
}

/// Lowest and highest of `value(a's round) / value(b's round)` over the rounds both have; `None`
/// with fewer than two such rounds or when a round lacks the value.
fn round_range(a: &[RunResult], b: &[RunResult], value: impl Fn(&RunResult) -> Option<f64>) -> Option<(f64, f64)> {
    let per_round: Option<Vec<f64>> = a.iter().zip(b).map(|(x, y)| Some(div(value(x)?, value(y)?))).collect();
    let per_round = per_round.filter(|r| r.len() >= 2)?;
    Some(per_round.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &r| (lo.min(r), hi.max(r))))
}

impl Ratio {
    fn between(a: &ScenarioReport, b: &ScenarioReport) -> Ratio {
        let (x, y) = (&a.median, &b.median);
        let bounded = x.latency_lower_bound || y.latency_lower_bound;
        Ratio {
            name: format!("{}/{}", a.name, b.name),
            throughput: div(x.requests_per_sec, y.requests_per_sec),
            throughput_rounds: round_range(&a.rounds, &b.rounds, |r| Some(r.requests_per_sec)),
            p50: (!bounded).then(|| div(x.p50_us, y.p50_us)),
            p99: x.p99_us.zip(y.p99_us).filter(|_| !bounded).map(|(p, q)| div(p, q)),
            proxy_cpu_per_req: x.proxy_cpu_us_per_req.zip(y.proxy_cpu_us_per_req).map(|(p, q)| div(p, q)),
            proxy_cpu_rounds: round_range(&a.rounds, &b.rounds, |r| r.proxy_cpu_us_per_req),
            total_cpu_per_req: div(x.total_cpu_us_per_req, y.total_cpu_us_per_req),
        }
    }
}

/// The ratios the bench reports (a, b), when both scenarios ran: the proxies against direct
/// and each other, every TLS, JWT, rate-limit, access-log and HTTP/2 scenario against plain
/// gateway, Redis against in-process counting, all features against TLS alone, and HTTP/2 against
/// HTTP/1.1.
pub const RATIOS: [(&str, &str); 18] = [
    ("gateway", "direct"),
    ("nginx", "direct"),
    ("gateway", "nginx"),
    // What the gateway's own work costs, and what hyper costs against nginx.
    ("gateway", "hyper-floor"),
    ("hyper-floor", "nginx"),
    ("gateway-https", "gateway"),
    ("gateway-https-h2", "gateway"),
    ("gateway-https-new-conn", "gateway"),
    ("gateway-h2", "gateway"),
    ("gateway-jwt", "gateway"),
    // The cost of the check alone: the same requests, with and without it.
    ("gateway-jwt", "gateway-bearer"),
    ("gateway-local-limit", "gateway"),
    ("gateway-redis-limit", "gateway"),
    ("gateway-redis-limit", "gateway-local-limit"),
    // The same requests through a gateway that also writes a JSON access log.
    ("gateway-access-log", "gateway"),
    ("gateway-all", "gateway"),
    // What the features cost beyond TLS, which the client pays for too on the same cores.
    ("gateway-all", "gateway-https"),
    ("gateway-https-h2", "gateway-https"),
];

/// The `RATIOS` whose two scenarios are both present.
pub fn ratios(scenarios: &[ScenarioReport]) -> Vec<Ratio> {
    let find = |name: &str| scenarios.iter().find(|s| s.name == name);
    RATIOS.iter().filter_map(|(a, b)| Some(Ratio::between(find(a)?, find(b)?))).collect()
}

/// Warnings to print under the table: a saturated client, a busy machine, a late pacer,
/// errors, and what a small machine means for req/s.
pub fn notes(scenarios: &[ScenarioReport], client_cpu_limit_pct: f64, cpus: usize) -> Vec<String> {
    let mut notes = Vec::new();
    for s in scenarios {
        if s.median.client_cpu_pct > 0.9 * client_cpu_limit_pct {
            notes.push(format!(
                "{}: the load generator used {:.0}% of its {:.0}% CPU: throughput may be client-bound; \
                 compare CPU/req",
                s.name, s.median.client_cpu_pct, client_cpu_limit_pct
            ));
        }
        let (other, steal) = (s.median.other_cpu_pct, s.median.steal_cpu_pct);
        if other + steal > 15.0 {
            notes.push(format!(
                "{}: {:.0}% of a core was not the bench's during the measurement ({other:.0}% other processes, \
                 {steal:.0}% taken by the hypervisor as steal): numbers are noisy; rerun on a quiet machine",
                s.name,
                other + steal
            ));
        }
        let late_pct = s.rounds.iter().filter_map(|r| r.pacer_late_pct).fold(0.0, f64::max);
        if late_pct > 1.0 {
            let worst_lag = s.rounds.iter().filter_map(|r| r.pacer_lag_max_us).max().unwrap_or(0);
            notes.push(format!(
                "{}: {late_pct:.1}% of the pacer's wake-ups were over 1 ms late (worst {}): the client \
                 was short of CPU and the offered load was burstier than asked",
                s.name,
                fmt_us(worst_lag as f64)
            ));
        }
        if s.median.errors > 0 {
            notes.push(format!("{}: {} errors (see the per-round lines)", s.name, s.median.errors));
        }
        let fewest_ticks = s.rounds.iter().filter_map(|r| r.proxy_cpu_ticks).min();
        if let Some(ticks) = fewest_ticks.filter(|&t| t < 20) {
            notes.push(format!(
                "{}: its proxy CPU/req rests on as few as {ticks} clock ticks of CPU time in a round, and /proc \
                 counts whole ticks: ±1 tick is ±{:.0}%; measure longer or at a higher rate for a firmer figure",
                s.name,
                100.0 / ticks.max(1) as f64
            ));
        }
        if s.median.latency_lower_bound {
            let scheduled: u64 = s.rounds.iter().map(|r| r.ok + r.errors + r.missed).sum();
            notes.push(format!(
                "{}: the offered rate was not met: {} of the {} requests scheduled in the measured windows \
                 ({:.1}%) were never sent; they count in its latency at their wait when the generator gave \
                 up, so its percentiles are lower bounds (≥) and its latency ratios are left out",
                s.name,
                fmt_int(s.median.missed as f64),
                fmt_int(scheduled as f64),
                100.0 * s.median.missed as f64 / scheduled.max(1) as f64
            ));
        }
    }
    notes.extend(missing_baselines(scenarios));
    if cpus <= 4 {
        let processes = if scenarios.iter().any(|s| s.median.redis_cpu_us_per_req.is_some()) {
            "client, proxy, backend and redis-server"
        } else {
            "client, proxy and backend"
        };
        notes.push(format!(
            "{processes} share {cpus} CPUs: req/s is a property of the whole box; \
             proxy CPU/req is the fairer proxy comparison"
        ));
    }
    notes
}

/// A note naming the scenarios left without any ratio, because none of the scenarios they are
/// compared with ran (a ratio needs both sides measured in the same run), and those.
fn missing_baselines(scenarios: &[ScenarioReport]) -> Option<String> {
    let ran = |name: &str| scenarios.iter().any(|s| s.name == name);
    let mut alone: Vec<&str> = Vec::new();
    let mut baselines: Vec<&str> = Vec::new();
    for s in scenarios {
        let theirs: Vec<&str> = RATIOS
            .iter()
            .filter_map(|&(a, b)| match s.name.as_str() {
                name if name == a => Some(b),
                name if name == b => Some(a),
                _ => None,
            })
            .collect();
        if !theirs.is_empty() && !theirs.iter().any(|b| ran(b)) {
            alone.push(&s.name);
            for b in theirs {
                if !baselines.contains(&b) {
                    baselines.push(b);
                }
            }
        }
    }
    (!alone.is_empty()).then(|| {
        format!(
            "no ratio for {}: a ratio needs both sides in the same run; add one of {} to --scenarios",
            alone.join(", "),
            baselines.join(", ")
        )
    })
}

/// Everything the bench measured, as written by `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// How the bench ran (arguments, thread counts, versions).
    pub settings: serde_json::Value,
    pub scenarios: Vec<ScenarioReport>,
    pub ratios: Vec<Ratio>,
    /// `--cross-check`: what wrk measured against the same targets.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cross_check: Vec<CrossCheck>,
    /// Warnings worth reading next to the numbers.
    pub notes: Vec<String>,
}

/// One scenario measured by wrk after the rounds, beside loadbench's median.
#[derive(Debug, Clone, Serialize)]
pub struct CrossCheck {
    pub scenario: String,
    pub wrk: crate::wrk::WrkResult,
    pub loadbench_requests_per_sec: f64,
}

/// The cross-check as text: per scenario, wrk's req/s, loadbench's, their ratio, wrk's p50 and p99.
pub fn cross_check_table(checks: &[CrossCheck], settings: &str) -> String {
    let w = checks.iter().map(|c| c.scenario.len()).max().unwrap_or(0).max("scenario".len());
    let mut out = format!("cross-check with wrk ({settings}, one run each after the rounds):\n");
    let _ = writeln!(
        out,
        "  {:<w$} {:>12} {:>16} {:>8} {:>8} {:>8}",
        "scenario", "wrk req/s", "loadbench req/s", "ratio", "wrk p50", "wrk p99"
    );
    for c in checks {
        let _ = writeln!(
            out,
            "  {:<w$} {:>12} {:>16} {:>7.2}x {:>8} {:>8}",
            c.scenario,
            fmt_int(c.wrk.requests_per_sec),
            fmt_int(c.loadbench_requests_per_sec),
            c.wrk.requests_per_sec / c.loadbench_requests_per_sec.max(f64::MIN_POSITIVE),
            fmt_us(c.wrk.p50_us),
            fmt_us(c.wrk.p99_us),
        );
    }
    let find = |name: &str| checks.iter().find(|c| c.scenario == name);
    if let (Some(gateway), Some(nginx)) = (find("gateway"), find("nginx")) {
        let _ = writeln!(
            out,
            "  gateway/nginx throughput: {:.2}x by wrk, {:.2}x by loadbench",
            gateway.wrk.requests_per_sec / nginx.wrk.requests_per_sec.max(f64::MIN_POSITIVE),
            gateway.loadbench_requests_per_sec / nginx.loadbench_requests_per_sec.max(f64::MIN_POSITIVE),
        );
    }
    out
}

/// `850µs` below a millisecond, `1.23ms` above.
pub fn fmt_us(us: f64) -> String {
    if us < 1000.0 {
        format!("{us:.0}µs")
    } else {
        format!("{:.2}ms", us / 1000.0)
    }
}

/// `12,345` style integer.
pub fn fmt_int(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A latency: `-` when unknown, `≥` in front when only a lower bound.
fn fmt_latency(us: Option<f64>, lower_bound: bool) -> String {
    match us {
        None => "-".to_owned(),
        Some(us) if lower_bound => format!("≥{}", fmt_us(us)),
        Some(us) => fmt_us(us),
    }
}

fn fmt_opt_us(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}µs"))
}

/// One line per round, printed as the bench goes; `width` pads the name.
pub fn round_line(name: &str, width: usize, r: &RunResult) -> String {
    let mut line = format!(
        "round {}  {:<width$} {:>9} req/s  p50 {:>8}  p99 {:>8}  p99.9 {:>8}  errors {}  proxy CPU/req {}  client CPU {:.0}%  softirq {:.0}%  other CPU {:.0}%  steal {:.0}%",
        r.round,
        name,
        fmt_int(r.requests_per_sec),
        fmt_latency(Some(f64::from(r.latency.p50_us)), r.latency_lower_bound),
        fmt_latency(r.latency.p99_us.map(f64::from), r.latency_lower_bound),
        fmt_latency(r.latency.p999_us.map(f64::from), r.latency_lower_bound),
        r.errors,
        fmt_opt_us(r.proxy_cpu_us_per_req),
        r.client_cpu_pct,
        r.irq_cpu_pct,
        r.other_cpu_pct,
        r.steal_cpu_pct,
    );
    if let Some(redis) = r.redis_cpu_us_per_req {
        let _ = write!(line, "  redis CPU/req {redis:.1}µs");
    }
    if let Some(per_call) = r.requests_per_redis_call {
        let _ = write!(line, "  req/Redis call {per_call:.1}");
    }
    if r.missed > 0 {
        let _ = write!(line, "  missed {} (rate not met)", r.missed);
    }
    line
}

/// The final table: medians per scenario, then the ratios and notes.
pub fn table(report: &Report) -> String {
    let mut out = String::new();
    let w = report.scenarios.iter().map(|s| s.name.len()).max().unwrap_or(0).max("scenario".len());
    let latencies = |m: &Summary| {
        let bound = m.latency_lower_bound;
        [Some(m.p50_us), m.p90_us, m.p99_us, m.p999_us].map(|us| fmt_latency(us, bound))
    };
    // Wide enough for a lower bound past a second (`≥1398.54ms`).
    let lw = report.scenarios.iter().flat_map(|s| latencies(&s.median)).map(|l| l.chars().count()).fold(8, usize::max);
    let _ = writeln!(
        out,
        "{:<w$} {:>9} {:>lw$} {:>lw$} {:>lw$} {:>lw$} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "scenario",
        "req/s",
        "p50",
        "p90",
        "p99",
        "p99.9",
        "errors",
        "proxy",
        "backend",
        "client",
        "total",
        "client",
        "proxy",
        "softirq",
        "other",
        "steal"
    );
    let _ = writeln!(
        out,
        "{:<w$} {:>9} {:>lw$} {:>lw$} {:>lw$} {:>lw$} {:>7} {:>10} {:>10} {:>10} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "",
        "(median)",
        "",
        "",
        "",
        "",
        "(sum)",
        "CPU/req",
        "CPU/req",
        "CPU/req",
        "CPU/req",
        "CPU",
        "peak PSS",
        "CPU",
        "CPU",
        "CPU"
    );
    for s in &report.scenarios {
        let m = &s.median;
        let [p50, p90, p99, p999] = latencies(m);
        let _ = writeln!(
            out,
            "{:<w$} {:>9} {:>lw$} {:>lw$} {:>lw$} {:>lw$} {:>7} {:>10} {:>10} {:>10} {:>10} {:>8.0}% {:>9} {:>8.0}% {:>8.0}% {:>8.0}%",
            s.name,
            fmt_int(m.requests_per_sec),
            p50,
            p90,
            p99,
            p999,
            m.errors,
            fmt_opt_us(m.proxy_cpu_us_per_req),
            fmt_opt_us(Some(m.backend_cpu_us_per_req)),
            fmt_opt_us(Some(m.client_cpu_us_per_req)),
            fmt_opt_us(Some(m.total_cpu_us_per_req)),
            m.client_cpu_pct,
            m.proxy_peak_pss_kib.map_or_else(|| "-".to_owned(), |k| format!("{:.1}MiB", k as f64 / 1024.0)),
            m.irq_cpu_pct,
            m.other_cpu_pct,
            m.steal_cpu_pct,
        );
    }
    if report.scenarios.iter().any(|s| s.median.redis_cpu_us_per_req.is_some()) {
        let _ = writeln!(out, "redis-server CPU/req (in total CPU/req, not in proxy CPU/req):");
        for s in &report.scenarios {
            if let Some(redis) = s.median.redis_cpu_us_per_req {
                let per_call = s.median.requests_per_redis_call.map_or_else(String::new, |n| {
                    format!(" ({n:.1} requests per Redis call: the gateway batches a worker's waiting decisions)")
                });
                let _ = writeln!(out, "  {:<w$} {}{per_call}", s.name, fmt_opt_us(Some(redis)));
            }
        }
    }
    if report.scenarios.iter().any(|s| s.median.missed > 0) {
        let _ = writeln!(out, "missed (open loop, scheduled in the window but never sent, sum over rounds):");
        for s in &report.scenarios {
            let _ = writeln!(out, "  {:<w$} {}", s.name, s.median.missed);
        }
    }
    if !report.ratios.is_empty() {
        let rw = report.ratios.iter().map(|r| r.name.len()).max().unwrap_or(0).max("ratio (a/b)".len());
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<rw$} {:>10} {:>12} {:>8} {:>8} {:>14} {:>12} {:>14}",
            "ratio (a/b)", "throughput", "(rounds)", "p50", "p99", "proxy CPU/req", "(rounds)", "total CPU/req"
        );
        let range = |r: Option<(f64, f64)>| r.map_or_else(|| "-".to_owned(), |(lo, hi)| format!("{lo:.2}-{hi:.2}x"));
        let times = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}x"));
        for r in &report.ratios {
            let _ = writeln!(
                out,
                "{:<rw$} {:>9.2}x {:>12} {:>8} {:>8} {:>14} {:>12} {:>13.2}x",
                r.name,
                r.throughput,
                range(r.throughput_rounds),
                times(r.p50),
                times(r.p99),
                times(r.proxy_cpu_per_req),
                range(r.proxy_cpu_rounds),
                r.total_cpu_per_req,
            );
        }
        if report.ratios.iter().any(|r| r.throughput_rounds.is_some()) {
            let _ = writeln!(
                out,
                "(rounds): lowest-highest ratio of a single round; a range that spans 1.00x means this run cannot tell the two apart"
            );
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(Vec::new()), 0.0);
    }

    #[test]
    fn fmt_int_groups_thousands() {
        assert_eq!(fmt_int(1234567.4), "1,234,567");
        assert_eq!(fmt_int(999.0), "999");
        assert_eq!(fmt_int(1000.0), "1,000");
    }

    fn scenario(name: &str, rps: f64) -> ScenarioReport {
        let mut median = Summary::of(&[]);
        median.requests_per_sec = rps;
        ScenarioReport { name: name.to_owned(), description: String::new(), median, rounds: Vec::new() }
    }

    #[test]
    fn ratios_only_pairs_present_tls_h2_and_jwt_against_plain() {
        let names = ["direct", "gateway", "gateway-h2", "gateway-https", "gateway-https-new-conn", "gateway-jwt"];
        let scenarios: Vec<_> = names.iter().map(|n| scenario(n, 1000.0)).collect();
        let got: Vec<String> = ratios(&scenarios).into_iter().map(|r| r.name).collect();
        assert_eq!(
            got,
            [
                "gateway/direct",
                "gateway-https/gateway",
                "gateway-https-new-conn/gateway",
                "gateway-h2/gateway",
                "gateway-jwt/gateway"
            ]
        );
    }

    #[test]
    fn ratios_limits_against_plain_and_redis_against_local() {
        let names = ["gateway", "gateway-local-limit", "gateway-redis-limit"];
        let scenarios: Vec<_> = names.iter().map(|n| scenario(n, 1000.0)).collect();
        let got: Vec<String> = ratios(&scenarios).into_iter().map(|r| r.name).collect();
        assert_eq!(
            got,
            ["gateway-local-limit/gateway", "gateway-redis-limit/gateway", "gateway-redis-limit/gateway-local-limit"]
        );
    }

    #[test]
    fn table_lists_redis_cpu_of_redis_scenarios_only() {
        let mut redis = scenario("gateway-redis-limit", 1.0);
        redis.median.redis_cpu_us_per_req = Some(12.34);
        redis.median.requests_per_redis_call = Some(8.26);
        let report = Report {
            settings: serde_json::Value::Null,
            scenarios: vec![scenario("gateway", 1.0), redis],
            ratios: Vec::new(),
            cross_check: Vec::new(),
            notes: Vec::new(),
        };
        let text = table(&report);
        let listed: Vec<&str> = text
            .lines()
            .skip_while(|l| !l.starts_with("redis-server"))
            .skip(1)
            .take_while(|l| l.starts_with("  "))
            .collect();
        assert_eq!(
            listed,
            ["  gateway-redis-limit 12.3µs (8.3 requests per Redis call: the gateway batches a worker's waiting decisions)"],
            "{text}"
        );
        assert!(!table(&Report { scenarios: vec![scenario("gateway", 1.0)], ..report }).contains("redis"));
    }

    #[test]
    fn ratios_all_features_against_plain_and_tls_alone() {
        let names = ["gateway", "gateway-https", "gateway-all"];
        let scenarios: Vec<_> = names.iter().map(|n| scenario(n, 1000.0)).collect();
        let got: Vec<String> = ratios(&scenarios).into_iter().map(|r| r.name).collect();
        assert_eq!(got, ["gateway-https/gateway", "gateway-all/gateway", "gateway-all/gateway-https"]);
    }

    #[test]
    fn ratios_access_log_against_plain_only() {
        let names = ["direct", "gateway", "gateway-access-log", "gateway-all"];
        let scenarios: Vec<_> = names.iter().map(|n| scenario(n, 1000.0)).collect();
        let got: Vec<String> = ratios(&scenarios).into_iter().map(|r| r.name).collect();
        assert_eq!(got, ["gateway/direct", "gateway-access-log/gateway", "gateway-all/gateway"]);
        // Without the baseline there is nothing to divide by.
        assert!(ratios(&[scenario("gateway-access-log", 1000.0)]).is_empty());
    }

    /// Every scenario a ratio names is one the bench runs, each pair once.
    #[test]
    fn ratios_name_known_scenarios_once() {
        let known = [
            "direct",
            "gateway",
            "gateway-bearer",
            "gateway-jwt",
            "gateway-local-limit",
            "gateway-redis-limit",
            "gateway-access-log",
            "gateway-h2",
            "gateway-https",
            "gateway-https-h2",
            "gateway-https-new-conn",
            "gateway-all",
            "nginx",
            "hyper-floor",
        ];
        for (i, (a, b)) in RATIOS.iter().enumerate() {
            assert!(known.contains(a) && known.contains(b) && a != b, "{a}/{b}");
            assert!(!RATIOS[..i].contains(&(*a, *b)), "{a}/{b} twice");
        }
        let scenarios: Vec<_> = known.iter().map(|n| scenario(n, 1000.0)).collect();
        assert_eq!(ratios(&scenarios).len(), RATIOS.len());
    }

    #[test]
    fn ratios_throughput_is_a_over_b() {
        let scenarios = [scenario("gateway", 1000.0), scenario("gateway-https", 800.0)];
        let r = &ratios(&scenarios)[0];
        assert!((r.throughput - 0.8).abs() < 1e-9);
    }

    #[test]
    fn ratio_rounds_range_over_same_round_pairs() {
        let round =
            |round, rps, cpu| RunResult { requests_per_sec: rps, proxy_cpu_us_per_req: cpu, ..RunResult::empty(round) };
        let mut gateway = scenario("gateway", 0.0);
        gateway.rounds = vec![round(1, 90.0, Some(9.0)), round(2, 120.0, Some(12.0)), round(3, 100.0, Some(10.0))];
        let mut nginx = scenario("nginx", 0.0);
        nginx.rounds = vec![round(1, 100.0, Some(10.0)), round(2, 100.0, Some(8.0)), round(3, 80.0, Some(10.0))];
        let r = Ratio::between(&gateway, &nginx);
        assert_eq!(r.throughput_rounds, Some((0.9, 1.25)));
        assert_eq!(r.proxy_cpu_rounds, Some((0.9, 1.5)));
        // The backend has no proxy CPU; one round is no range.
        let mut direct = scenario("direct", 0.0);
        direct.rounds = vec![round(1, 100.0, None), round(2, 100.0, None), round(3, 100.0, None)];
        assert_eq!(Ratio::between(&gateway, &direct).proxy_cpu_rounds, None);
        gateway.rounds.truncate(1);
        assert_eq!(Ratio::between(&gateway, &nginx).throughput_rounds, None);

        let report = Report {
            settings: serde_json::Value::Null,
            scenarios: Vec::new(),
            ratios: vec![r],
            cross_check: Vec::new(),
            notes: Vec::new(),
        };
        let text = table(&report);
        let row: Vec<&str> =
            text.lines().find(|l| l.starts_with("gateway/nginx")).unwrap().split_whitespace().collect();
        // name, throughput, (rounds), p50, p99, proxy CPU/req, (rounds), total CPU/req
        assert_eq!((row[2], row[6]), ("0.90-1.25x", "0.90-1.50x"), "{text}");
        assert!(text.contains("a range that spans 1.00x"), "{text}");
    }

    #[test]
    fn table_widens_name_column_for_long_names() {
        let report = Report {
            settings: serde_json::Value::Null,
            scenarios: vec![scenario("gateway", 1.0), scenario("gateway-https-new-conn", 1.0)],
            ratios: Vec::new(),
            cross_check: Vec::new(),
            notes: Vec::new(),
        };
        let text = table(&report);
        let rows: Vec<&str> = text.lines().filter(|l| l.starts_with("gateway")).collect();
        assert_eq!(rows.len(), 2);
        // Rows of equal length: every column starts after the longest name.
        assert_eq!(rows[0].len(), rows[1].len(), "{text}");
    }

    #[test]
    fn cross_check_table_puts_wrk_beside_loadbench() {
        let check = |scenario: &str, wrk_rps: f64, ours: f64| CrossCheck {
            scenario: scenario.to_owned(),
            wrk: crate::wrk::WrkResult { requests_per_sec: wrk_rps, p50_us: 713.0, p99_us: 1750.0 },
            loadbench_requests_per_sec: ours,
        };
        let checks = [check("direct", 74_133.0, 75_443.0), check("gateway", 40_000.0, 38_039.0)];
        let text = cross_check_table(&checks, "-t1 -c64");
        let rows: Vec<Vec<&str>> = text.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(rows[0], ["direct", "74,133", "75,443", "0.98x", "713µs", "1.75ms"], "{text}");
        assert_eq!(rows[1], ["gateway", "40,000", "38,039", "1.05x", "713µs", "1.75ms"], "{text}");
        assert!(text.starts_with("cross-check with wrk (-t1 -c64, "), "{text}");
        assert!(!text.contains("gateway/nginx"), "no nginx, no ratio: {text}");
        let with_nginx = cross_check_table(&[checks[1].clone(), check("nginx", 50_000.0, 40_000.0)], "-t1 -c64");
        assert!(with_nginx.ends_with("gateway/nginx throughput: 0.80x by wrk, 0.95x by loadbench\n"), "{with_nginx}");
    }

    #[test]
    fn rate_not_met_marks_latency_as_a_lower_bound_and_drops_its_latency_ratios() {
        let round = |missed| RunResult {
            requests_per_sec: 100.0,
            ok: 90,
            missed,
            latency_lower_bound: missed > 0,
            latency: Percentiles { p50_us: 2_000, p99_us: Some(9_000), ..Percentiles::default() },
            ..RunResult::empty(1)
        };
        let of = |name: &str, missed| {
            let rounds = vec![round(missed)];
            ScenarioReport { name: name.to_owned(), description: String::new(), median: Summary::of(&rounds), rounds }
        };
        let (direct, gateway) = (of("direct", 0), of("gateway", 10));
        let ratio = Ratio::between(&gateway, &direct);
        assert_eq!((ratio.p50, ratio.p99), (None, None));
        assert!((ratio.throughput - 1.0).abs() < 1e-9);
        assert_eq!(Ratio::between(&direct, &direct).p99, Some(1.0));

        let notes = notes(&[direct.clone(), gateway.clone()], 100.0, 8);
        assert!(
            notes.iter().any(|n| n.starts_with("gateway: the offered rate was not met: 10 of the 100")),
            "{notes:?}"
        );
        let report = Report {
            settings: serde_json::Value::Null,
            scenarios: vec![direct, gateway],
            ratios: vec![ratio],
            cross_check: Vec::new(),
            notes,
        };
        let text = table(&report);
        let row = |name: &str| text.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
        assert!(row("gateway ").contains("≥2.00ms") && row("gateway ").contains("≥9.00ms"), "{text}");
        assert!(!row("direct ").contains('≥'), "{text}");
        let ratio_row: Vec<String> = row("gateway/direct").split_whitespace().map(str::to_owned).collect();
        assert_eq!((ratio_row[3].as_str(), ratio_row[4].as_str()), ("-", "-"), "{text}");
    }

    #[test]
    fn notes_name_missing_baselines_and_coarse_cpu_figures() {
        let mut jwt = scenario("gateway-jwt", 1000.0);
        jwt.rounds = vec![RunResult { proxy_cpu_ticks: Some(3), ..RunResult::empty(1) }];
        let notes = notes(&[jwt], 100.0, 8);
        assert!(
            notes.contains(
                &"no ratio for gateway-jwt: a ratio needs both sides in the same run; add one of gateway, \
                  gateway-bearer to --scenarios"
                    .to_owned()
            ),
            "{notes:?}"
        );
        assert!(notes.iter().any(|n| n.contains("as few as 3 clock ticks") && n.contains("±33%")), "{notes:?}");
        // Each has a ratio (gateway/nginx; gateway-jwt/gateway): nothing to say.
        let some = [scenario("gateway", 1.0), scenario("nginx", 1.0), scenario("gateway-jwt", 1.0)];
        assert!(super::notes(&some, 100.0, 8).iter().all(|n| !n.contains("no ratio")));
    }

    #[test]
    fn busy_machine_note_tells_other_processes_from_steal_and_table_shows_steal() {
        let busy = |name: &str, other: f64, steal: f64| {
            let mut s = scenario(name, 1000.0);
            (s.median.other_cpu_pct, s.median.steal_cpu_pct) = (other, steal);
            s
        };
        let (quiet, stolen) = (busy("gateway", 6.0, 8.0), busy("nginx", 4.0, 23.0));
        let notes = notes(&[quiet.clone(), stolen.clone()], 100.0, 2);
        let busy_notes: Vec<&String> = notes.iter().filter(|n| n.contains("not the bench's")).collect();
        assert_eq!(
            busy_notes,
            ["nginx: 27% of a core was not the bench's during the measurement (4% other processes, 23% taken by \
              the hypervisor as steal): numbers are noisy; rerun on a quiet machine"]
        );
        let report = Report {
            settings: serde_json::Value::Null,
            scenarios: vec![quiet, stolen],
            ratios: Vec::new(),
            cross_check: Vec::new(),
            notes,
        };
        let text = table(&report);
        let header: Vec<&str> = text.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header.last(), Some(&"steal"), "{text}");
        let nginx = text.lines().find(|l| l.starts_with("nginx")).unwrap_or_default();
        assert!(nginx.trim_end().ends_with("4%       23%"), "{text}");
    }

    #[test]
    fn fmt_us_switches_to_ms() {
        assert_eq!(fmt_us(850.0), "850µs");
        assert_eq!(fmt_us(1234.0), "1.23ms");
    }
}
