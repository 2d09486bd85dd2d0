//! The processes under test: one echo backend and the gateways in front of it (nginx: `nginx`),
//! each started from generated config in a private temp dir and stopped when dropped.

use std::fmt::Write as _;
use std::fs;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

use crate::jwt::{self, Tokens};
use crate::procs::{self, ProcGuard};
use crate::redis;

/// How long a process may take to start listening.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Paths of the binaries under test.
#[derive(Debug)]
pub struct Binaries {
    pub gateway: PathBuf,
    pub echo: PathBuf,
    /// The `hyper-floor` yardstick: always the one beside this executable, as it is part of the
    /// bench, not of the build measured.
    pub hyper_floor: PathBuf,
}

/// Finds `gateway` and `echo` in `bin_dir`, or next to this executable, and `hyperfloor` next to
/// this executable; builds them with cargo (release when this is a release build) when they are
/// missing from there. `gateway` is only looked for when `needs_gateway`, `hyperfloor` when
/// `needs_hyper_floor`.
pub fn binaries(bin_dir: Option<&Path>, needs_gateway: bool, needs_hyper_floor: bool) -> anyhow::Result<Binaries> {
    let own_dir = std::env::current_exe()?.parent().context("executable has no directory")?.to_owned();
    let dir = bin_dir.unwrap_or(&own_dir);
    let bins =
        Binaries { gateway: dir.join("gateway"), echo: dir.join("echo"), hyper_floor: own_dir.join("hyperfloor") };
    let wanted = [(&bins.echo, true), (&bins.gateway, needs_gateway), (&bins.hyper_floor, needs_hyper_floor)];
    let missing: Vec<&Path> =
        wanted.iter().filter(|(p, needed)| *needed && !p.is_file()).map(|(p, _)| p.as_path()).collect();
    if missing.is_empty() {
        return Ok(bins);
    }
    if let Some(p) = missing.iter().find(|p| p.parent() != Some(own_dir.as_path())) {
        bail!("missing in --bin-dir: {}", p.display());
    }
    let profile = if cfg!(debug_assertions) { None } else { Some("--release") };
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("benches/ has no parent")?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build").args(profile).args(["-p", "gateway", "-p", "backends", "-p", "benches", "--bins"]);
    cmd.current_dir(workspace);
    eprintln!("==================================================================");
    eprintln!("{}: {missing:?} not built; building now: {cmd:?}", procs::program());
    eprintln!("==================================================================");
    let status = cmd.status().context("running cargo build")?;
    if !status.success() {
        bail!("cargo build failed ({status})");
    }
    if let Some((p, _)) = wanted.iter().find(|(p, needed)| *needed && !p.is_file()) {
        bail!("{} still missing after cargo build", p.display());
    }
    Ok(bins)
}

/// The echo backend every scenario ends at.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The process.
    pub proc: ProcGuard,
}

/// Starts `echo --listen 127.0.0.1:0 --name bench` and waits for `listening <addr>`.
pub fn start_echo(bin: &Path, dir: &Path) -> anyhow::Result<Backend> {
    let mut cmd = Command::new(bin);
    cmd.args(["--listen", "127.0.0.1:0", "--name", "bench"]);
    let mut proc = ProcGuard::spawn("echo", cmd, &dir.join("echo.stderr"))?;
    let addr = proc.wait_for_line(STARTUP_TIMEOUT, |line| line.strip_prefix("listening ")?.trim().parse().ok())?;
    probe(&mut proc, addr)?;
    Ok(Backend { addr, proc })
}

/// Starts `hyperfloor` (the `hyper-floor` yardstick) with `workers` worker threads in front of
/// `backend`, and waits for it to answer.
pub fn start_hyper_floor(bin: &Path, dir: &Path, backend: SocketAddr, workers: usize) -> anyhow::Result<Proxy> {
    let mut cmd = Command::new(bin);
    cmd.arg("--upstream").arg(backend.to_string()).arg("--workers").arg(workers.to_string());
    let mut proc = ProcGuard::spawn("hyper-floor", cmd, &dir.join("hyper-floor.stderr"))?;
    let addr = proc.wait_for_line(STARTUP_TIMEOUT, |line| match parse_listening(line) {
        Some(("bench", addr)) => Some(addr),
        _ => None,
    })?;
    probe(&mut proc, addr)?;
    Ok(Proxy { addr, tls_addr: None, admin_addr: None, access_log: None, proc, has_workers: false })
}

/// A proxy in front of the backend.
#[derive(Debug)]
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    /// Where clients connect with TLS (the gateway's second listener, when started with TLS).
    pub tls_addr: Option<SocketAddr>,
    /// The gateway's admin listener (see [`GatewayOptions::has_admin`]).
    pub admin_addr: Option<SocketAddr>,
    /// The gateway's access log file (when started with one).
    pub access_log: Option<PathBuf>,
    /// The (master) process.
    pub proc: ProcGuard,
    /// nginx: measure the master plus its workers; gateway: just the one process.
    pub has_workers: bool,
}

impl Proxy {
    /// Every pid whose CPU and memory count as the proxy's (workers re-listed each call).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids = vec![self.proc.pid()];
        if self.has_workers {
            pids.extend(procs::children_of(self.proc.pid()));
        }
        pids
    }
}

/// The CA that `gateway certs dev` writes and TLS clients trust (in the gateway's directory).
pub const DEV_CA_FILE: &str = "ca.crt";

/// The route with an in-process (or, with `redis`, Redis-counted) rate limit per client address
/// and nothing else. The gateway strips it, like the JWT prefixes.
pub const LIMIT_PATH_PREFIX: &str = "/limit";
/// The route with every feature: the JWT check, then a rate limit per token subject.
pub const ALL_PATH_PREFIX: &str = "/all";
/// Every limit's budget per key and window: never reached in a bench (a billion a minute is 16M
/// req/s for one client), so the scenarios measure what deciding costs, not refusals.
pub const LIMIT_REQUESTS: u32 = 1_000_000_000;
/// The limits' window, as the YAML writes it.
pub const LIMIT_WINDOW: &str = "60s";

/// What a generated gateway config holds besides the cleartext listener `bench`, the route with
/// a rate limit under [`LIMIT_PATH_PREFIX`] and the catch-all route (no limit, no auth).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayOptions {
    /// A second listener `bench-tls` serving the dev certificate.
    pub tls: bool,
    /// A provider (RS256, public key in `jwt::KEY_FILE`), a route under `jwt::PATH_PREFIX` that
    /// requires its tokens, one under `jwt::UNCHECKED_PATH_PREFIX` that does not, and one under
    /// [`ALL_PATH_PREFIX`] that requires them and limits per token subject.
    pub jwt: bool,
    /// `redis:` pointing here, so every limit is counted in Redis; also an admin listener, to
    /// see the connection at `/admin/ratelimit`. Without it limits are counted in-process.
    pub redis: Option<SocketAddr>,
    /// A JSON access log to the file [`access_log_file`] names, beside the config; also an admin
    /// listener, to read the lines the writer dropped on `/metrics`.
    pub access_log: bool,
}

impl GatewayOptions {
    /// Whether the config has an admin listener: with Redis or an access log, whose state the
    /// bench reads there.
    pub fn has_admin(self) -> bool {
        self.redis.is_some() || self.access_log
    }
}

/// The access log file of gateway `name`, relative to its config. Named per gateway because
/// several gateways share one directory, and two writing one file would interleave their lines.
pub fn access_log_file(name: &str) -> String {
    format!("access-{name}.log")
}

/// The YAML gateway `name` runs with (see [`GatewayOptions`]); default pool settings. `name`
/// only names the access log file.
pub fn gateway_yaml(name: &str, backend: SocketAddr, options: GatewayOptions) -> String {
    let mut yaml = String::from("# Generated by loadbench.\nlisteners:\n  - name: bench\n    address: 127.0.0.1:0\n");
    if options.tls {
        yaml.push_str(
            "  - name: bench-tls\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n\
             \x20       - { cert: localhost.crt, key: localhost.key }\n",
        );
    }
    if options.has_admin() {
        yaml.push_str("admin:\n  address: 127.0.0.1:0\n");
    }
    if let Some(redis) = options.redis {
        let _ = writeln!(yaml, "redis:\n  url: redis://{redis}");
    }
    if options.access_log {
        let _ = writeln!(yaml, "access_log:\n  path: {}", access_log_file(name));
    }
    if options.jwt {
        let _ = write!(
            yaml,
            "jwt:\n  providers:\n    {}: {{ issuer: {}, audiences: [{}], algorithms: [RS256], public_key: {} }}\n",
            jwt::PROVIDER,
            jwt::ISSUER,
            jwt::AUDIENCE,
            jwt::KEY_FILE
        );
    }
    let limit = |name: &str, key: &str| {
        format!("  {name}: {{ requests: {LIMIT_REQUESTS}, window: {LIMIT_WINDOW}, key: {key} }}\n")
    };
    yaml.push_str("rate_limits:\n");
    yaml.push_str(&limit("per_ip", "client_ip"));
    if options.jwt {
        yaml.push_str(&limit("per_user", "jwt.sub"));
    }
    let _ = write!(yaml, "upstreams:\n  echo:\n    endpoints: [http://{backend}]\nroutes:\n");
    let route = |name: &str, prefix: &str, extra: &str| {
        format!("  - name: {name}\n    match: {{ path_prefix: {prefix} }}\n    upstream: echo\n    strip_prefix: true\n{extra}")
    };
    if options.jwt {
        let auth = format!("    auth: {{ provider: {} }}\n", jwt::PROVIDER);
        yaml.push_str(&route("jwt", jwt::PATH_PREFIX, &auth));
        yaml.push_str(&route("bearer", jwt::UNCHECKED_PATH_PREFIX, ""));
        yaml.push_str(&route("everything", ALL_PATH_PREFIX, &format!("{auth}    rate_limit: per_user\n")));
    }
    yaml.push_str(&route("limit", LIMIT_PATH_PREFIX, "    rate_limit: per_ip\n"));
    yaml.push_str("  - name: all\n    upstream: echo\n");
    yaml
}

/// `listening <name> <addr>` as the gateway prints it for each listener.
pub fn parse_listening(line: &str) -> Option<(&str, SocketAddr)> {
    let mut words = line.split_whitespace();
    match (words.next(), words.next(), words.next(), words.next()) {
        (Some("listening"), Some(name), Some(addr), None) => Some((name, addr.parse().ok()?)),
        _ => None,
    }
}

/// Starts `gateway run --config <dir>/<name>.yaml` and waits for its listeners and `ready`.
/// Several gateways may share `dir`: with `tls`, the first writes dev certificates there with
/// `gateway certs dev` (the config names them relative to its own directory) and the others reuse
/// them, so clients trust one `dir/DEV_CA_FILE`; with `tokens` (which must match `options.jwt`),
/// the public key is written there likewise. With `access_log`, it logs to
/// `dir/`[`access_log_file`]`(name)`.
///
/// Before returning it proves the config does what the scenarios assume: the token routes refuse a
/// request without a token, the limit route answers with `RateLimit-Limit` and the catch-all
/// without; with `redis`, that the gateway connected (bounded wait) and decided in Redis; with
/// `access_log`, that those requests reached the file (bounded wait).
pub fn start_gateway(
    bin: &Path,
    dir: &Path,
    name: &str,
    backend: SocketAddr,
    options: GatewayOptions,
    tokens: Option<&Tokens>,
) -> anyhow::Result<Proxy> {
    anyhow::ensure!(options.jwt == tokens.is_some(), "{name}: a JWT route needs tokens, and tokens a JWT route");
    if options.tls && !dir.join(DEV_CA_FILE).is_file() {
        let out = Command::new(bin).args(["certs", "dev", "--out"]).arg(dir).output()?;
        if !out.status.success() {
            bail!("gateway certs dev failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
    }
    if let Some(tokens) = tokens.filter(|_| !dir.join(jwt::KEY_FILE).is_file()) {
        fs::write(dir.join(jwt::KEY_FILE), &tokens.public_pem)?;
    }
    let config = dir.join(format!("{name}.yaml"));
    fs::write(&config, gateway_yaml(name, backend, options))?;
    let mut cmd = Command::new(bin);
    cmd.arg("run").arg("--config").arg(&config);
    let mut proc = ProcGuard::spawn(name, cmd, &dir.join(format!("{name}.stderr")))?;
    let (mut addr, mut tls_addr, mut admin_addr) = (None, None, None);
    proc.wait_for_line(STARTUP_TIMEOUT, |line| {
        match parse_listening(line) {
            Some(("bench", a)) => addr = Some(a),
            Some(("bench-tls", a)) => tls_addr = Some(a),
            Some(("admin", a)) => admin_addr = Some(a),
            _ => {}
        }
        (line.trim() == "ready").then_some(())
    })?;
    let addr = addr.with_context(|| format!("{name} did not print `listening bench <addr>` before `ready`"))?;
    anyhow::ensure!(tls_addr.is_some() == options.tls, "{name} did not print `listening bench-tls <addr>`");
    probe(&mut proc, addr)?;
    anyhow::ensure!(admin_addr.is_some() == options.has_admin(), "{name} did not print `listening admin <addr>`");
    if let (Some(_), Some(admin)) = (options.redis, admin_addr) {
        redis::wait_connected(&mut proc, admin)?;
    }
    if options.jwt {
        expect_status(&proc, addr, &format!("{}/", jwt::PATH_PREFIX), 401)?;
        expect_status(&proc, addr, &format!("{ALL_PATH_PREFIX}/"), 401)?;
    }
    expect_rate_limit_only_on_its_route(&proc, addr)?;
    if let (Some(_), Some(admin)) = (options.redis, admin_addr) {
        redis::expect_no_fallbacks(&proc, admin)?;
    }
    let access_log = options.access_log.then(|| dir.join(access_log_file(name)));
    if let Some(path) = &access_log {
        expect_logged(&proc, path)?;
    }
    Ok(Proxy { addr, tls_addr, admin_addr, access_log, proc, has_workers: false })
}

/// Fails unless the access log file holds a line within [`STARTUP_TIMEOUT`]: the checks above
/// sent requests, and the writer flushes as soon as it is idle. A log that stays empty would make
/// `gateway-access-log` and `gateway-all` measure a gateway that logs nothing.
fn expect_logged(proc: &ProcGuard, path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    while Instant::now() < deadline {
        if fs::read(path).is_ok_and(|bytes| bytes.contains(&b'\n')) {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("{}: no line reached the access log {}{}", proc.name, path.display(), proc.stderr_tail())
}

/// The gauge that counts access log lines dropped because the writer could not keep up.
pub const ACCESS_LOG_DROPPED_METRIC: &str = "gateway_access_log_dropped_lines_total";

/// What a gateway's access log holds, and what it could not write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AccessLogStats {
    /// Complete lines in the file (one per request, the startup checks' included).
    pub lines: u64,
    pub bytes: u64,
    /// Lines the gateway dropped ([`ACCESS_LOG_DROPPED_METRIC`] on `/metrics`).
    pub dropped: u64,
}

/// Reads `proxy`'s access log file and the dropped-lines gauge from its admin `/metrics`; `None`
/// for a proxy without an access log. Waits (bounded) until the file stops growing, since the
/// writer thread may still be draining its queue after the last response.
pub fn access_log_stats(proxy: &Proxy) -> anyhow::Result<Option<AccessLogStats>> {
    let Some(path) = &proxy.access_log else { return Ok(None) };
    let admin =
        proxy.admin_addr.with_context(|| format!("{} has an access log but no admin listener", proxy.proc.name))?;
    let size = || fs::metadata(path).map(|m| m.len()).with_context(|| format!("reading {}", path.display()));
    let (mut last, deadline) = (size()?, Instant::now() + Duration::from_secs(2));
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        match size()? {
            now if now == last => break,
            now => last = now,
        }
    }
    let (lines, bytes) = count_lines(path).with_context(|| format!("reading {}", path.display()))?;
    let dropped = admin_count(admin, ACCESS_LOG_DROPPED_METRIC)?;
    Ok(Some(AccessLogStats { lines, bytes, dropped }))
}

/// The series `name` (without labels) on the gateway's admin `/metrics` at `admin`: a count, which
/// Prometheus renders as a whole number.
pub fn admin_count(admin: SocketAddr, name: &str) -> anyhow::Result<u64> {
    let metrics = get(admin, "/metrics")?;
    anyhow::ensure!(metrics.status == 200, "GET /metrics at {admin} answered {}", metrics.status);
    let value = metric_value(&metrics.body, name).with_context(|| format!("GET /metrics at {admin}: no {name}"))?;
    Ok(value as u64)
}

/// Newlines and bytes in the file, read in chunks: a long bench's log runs to hundreds of MiB.
fn count_lines(path: &Path) -> std::io::Result<(u64, u64)> {
    let mut file = fs::File::open(path)?;
    let (mut buf, mut lines, mut bytes) = (vec![0u8; 1 << 16], 0u64, 0u64);
    loop {
        match file.read(&mut buf)? {
            0 => return Ok((lines, bytes)),
            n => {
                lines += buf[..n].iter().filter(|b| **b == b'\n').count() as u64;
                bytes += n as u64;
            }
        }
    }
}

/// The value of the series `name` without labels in Prometheus text `exposition`.
pub fn metric_value(exposition: &str, name: &str) -> Option<f64> {
    exposition.lines().find_map(|line| {
        let (series, value) = line.split_once(' ')?;
        (series == name).then(|| value.trim().parse().ok())?
    })
}

/// Fails unless `GET path` answers `want`: a JWT scenario that got 200 without a token would be
/// measuring a route that checks nothing.
fn expect_status(proc: &ProcGuard, addr: SocketAddr, path: &str, want: u16) -> anyhow::Result<()> {
    match get_status(addr, path)? {
        status if status == want => Ok(()),
        status => bail!("{} at {addr}: GET {path} answered {status}, not {want}{}", proc.name, proc.stderr_tail()),
    }
}

/// Fails unless the limit route reports the bench's budget and the catch-all route reports none:
/// `gateway` must stay the route without a limit, or the ratios against it would hide the cost.
fn expect_rate_limit_only_on_its_route(proc: &ProcGuard, addr: SocketAddr) -> anyhow::Result<()> {
    let path = format!("{LIMIT_PATH_PREFIX}/");
    let limited = get(addr, &path)?;
    let want = LIMIT_REQUESTS.to_string();
    if limited.status != 200 || limited.header("ratelimit-limit") != Some(want.as_str()) {
        bail!(
            "{} at {addr}: GET {path} answered {} with RateLimit-Limit {:?}, not 200 with {want}{}",
            proc.name,
            limited.status,
            limited.header("ratelimit-limit"),
            proc.stderr_tail()
        );
    }
    if let Some(limit) = get(addr, "/")?.header("ratelimit-limit") {
        bail!("{} at {addr}: the catch-all route has a rate limit (RateLimit-Limit {limit})", proc.name);
    }
    Ok(())
}

/// Waits until `GET /` on `addr` answers 200 (polling; fails early if the process exits).
pub(crate) fn probe(proc: &mut ProcGuard, addr: SocketAddr) -> anyhow::Result<()> {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        proc.check_alive()?;
        match get_status(addr, "/") {
            Ok(200) => return Ok(()),
            Ok(status) => last = format!("status {status}"),
            Err(e) => last = e.to_string(),
        }
        thread::sleep(Duration::from_millis(20));
    }
    bail!("{} at {addr}: GET / never answered 200 (last: {last}){}", proc.name, proc.stderr_tail())
}

/// One `GET path` on a new connection with `Connection: close`; returns the status code.
pub fn get_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head)?;
    let text = std::str::from_utf8(&head)?;
    text.strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3)?.parse().ok())
        .with_context(|| format!("not an HTTP/1.1 status line: {text:?}"))
}

/// A whole response to a `Connection: close` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The status line and the header lines, CRLF-separated.
    pub head: String,
    pub body: String,
}

impl Response {
    /// Parses what a server sent before closing the connection (a body not chunked).
    pub fn parse(raw: &str) -> anyhow::Result<Response> {
        let (head, body) = raw.split_once("\r\n\r\n").context("no end of the response head")?;
        let status = head
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3)?.parse().ok())
            .with_context(|| format!("not an HTTP/1.1 status line: {head:?}"))?;
        Ok(Response { status, head: head.to_owned(), body: body.to_owned() })
    }

    /// The value of the first header `name` (case-insensitive), trimmed.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.split("\r\n").skip(1).find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.trim().eq_ignore_ascii_case(name).then_some(value.trim())
        })
    }
}

/// One `GET path` on a new connection with `Connection: close`, read until the server closes it.
pub fn get(addr: SocketAddr, path: &str) -> anyhow::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).with_context(|| format!("GET {path} at {addr}"))?;
    Response::parse(&raw)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use gateway::config::{Config, RateLimitKey, Route};

    use super::*;

    const BACKEND: &str = "127.0.0.1:9002";

    fn parse(options: GatewayOptions) -> Config {
        let yaml = gateway_yaml("gateway", BACKEND.parse().unwrap(), options);
        match gateway::config::parse("gateway.yaml", &yaml) {
            Ok(loaded) => loaded.config,
            Err(problems) => panic!("{problems}\n{yaml}"),
        }
    }

    /// The route `GET path` reaches.
    fn route<'c>(config: &'c Config, path: &str) -> &'c Route {
        let router = gateway::router::Router::new(&config.routes);
        let found = router.find(None, path, &http::Method::GET, &http::HeaderMap::new());
        &config.routes[found.unwrap_or_else(|| panic!("no route for {path}"))]
    }

    #[test]
    fn gateway_yaml_plain_limit_route_counts_per_ip_in_process() {
        let config = parse(GatewayOptions::default());
        assert_eq!(config.redis, None);
        assert!(config.admin.is_none());
        assert!(config.jwt_providers.is_empty());
        assert_eq!(config.access_log, None);
        let yaml = gateway_yaml("gateway", BACKEND.parse().unwrap(), GatewayOptions::default());
        assert!(yaml.contains("endpoints: [http://127.0.0.1:9002]"), "{yaml}");
        let [limit] = &config.rate_limits[..] else { panic!("{:?}", config.rate_limits) };
        assert_eq!((limit.name.as_str(), limit.requests), ("per_ip", LIMIT_REQUESTS));
        assert_eq!((limit.window, &limit.key), (Duration::from_secs(60), &RateLimitKey::ClientIp));
        assert_eq!(route(&config, "/limit/").rate_limit.as_deref(), Some("per_ip"));
        let plain = route(&config, "/");
        assert_eq!(plain.name, "all");
        assert!(plain.rate_limit.is_none() && plain.auth.is_none(), "{plain:?}");
    }

    #[test]
    fn gateway_yaml_tls_adds_second_listener_with_dev_cert() {
        let options = GatewayOptions { tls: true, ..GatewayOptions::default() };
        let yaml = gateway_yaml("gateway", BACKEND.parse().unwrap(), options);
        let want = "  - name: bench\n    address: 127.0.0.1:0\n  - name: bench-tls\n    address: 127.0.0.1:0\n    \
                    tls:\n      certificates:\n        - { cert: localhost.crt, key: localhost.key }\nrate_limits:";
        assert!(yaml.contains(want), "{yaml}");
    }

    #[test]
    fn gateway_yaml_redis_counts_limits_in_redis_and_adds_admin() {
        let config =
            parse(GatewayOptions { redis: Some("127.0.0.1:6390".parse().unwrap()), ..GatewayOptions::default() });
        assert_eq!(config.redis.as_ref().map(|r| r.url.as_str()), Some("redis://127.0.0.1:6390"));
        assert!(config.admin.is_some());
        assert_eq!(config.access_log, None);
        assert_eq!(route(&config, "/limit/x").rate_limit.as_deref(), Some("per_ip"));
        assert!(route(&config, "/").rate_limit.is_none());
    }

    /// Loaded from a real directory, as the gateway resolves it: the file sits beside the config
    /// (whose directory must exist), one per gateway name, with an admin listener to read
    /// `/metrics` even without Redis.
    #[test]
    fn gateway_yaml_access_log_per_gateway_file_beside_config_with_admin() {
        let dir = procs::TempDir::new(false).unwrap();
        let options = GatewayOptions { access_log: true, ..GatewayOptions::default() };
        for name in ["gateway-all", "gateway-other"] {
            let config_file = dir.path().join(format!("{name}.yaml"));
            fs::write(&config_file, gateway_yaml(name, BACKEND.parse().unwrap(), options)).unwrap();
            let config = gateway::config::load(&config_file).unwrap().config;
            let want = dir.path().join(format!("access-{name}.log"));
            assert_eq!(config.access_log, Some(gateway::access_log::Target::File(want)));
            assert!(config.admin.is_some());
            assert_eq!(config.redis, None);
        }
    }

    #[test]
    fn gateway_yaml_access_log_with_redis_has_one_admin_listener() {
        let redis = Some("127.0.0.1:6390".parse().unwrap());
        let options = GatewayOptions { access_log: true, redis, ..GatewayOptions::default() };
        let yaml = gateway_yaml("gateway-all", BACKEND.parse().unwrap(), options);
        assert_eq!(yaml.matches("admin:").count(), 1, "{yaml}");
        let config = parse(options);
        assert!(config.admin.is_some() && config.redis.is_some());
        assert!(matches!(config.access_log, Some(gateway::access_log::Target::File(_))));
    }

    #[test]
    fn metric_value_reads_unlabelled_series_only() {
        let text = "# HELP gateway_access_log_dropped_lines_total Access log lines dropped.\n\
                    # TYPE gateway_access_log_dropped_lines_total counter\n\
                    gateway_access_log_dropped_lines_total 3\n\
                    gateway_requests_total{route=\"all\"} 7\n";
        assert_eq!(metric_value(text, ACCESS_LOG_DROPPED_METRIC), Some(3.0));
        assert_eq!(metric_value(text, "gateway_requests_total"), None);
        assert_eq!(metric_value("", ACCESS_LOG_DROPPED_METRIC), None);
    }

    /// The JWT config as the gateway loads it: the token route wins for its prefix, requires the
    /// provider, and the provider accepts a minted token; the route with everything requires it
    /// too and limits per subject; the others check nothing.
    #[test]
    fn gateway_yaml_jwt_routes_check_minted_tokens() {
        let dir = procs::TempDir::new(false).unwrap();
        let tokens = jwt::mint(2).unwrap();
        fs::write(dir.path().join(jwt::KEY_FILE), &tokens.public_pem).unwrap();
        let config_file = dir.path().join("gateway.yaml");
        let redis = Some("127.0.0.1:6390".parse().unwrap());
        let options = GatewayOptions { jwt: true, redis, ..GatewayOptions::default() };
        fs::write(&config_file, gateway_yaml("gateway", BACKEND.parse().unwrap(), options)).unwrap();
        let config = gateway::config::load(&config_file).unwrap().config;

        let provider = |route: &Route| route.auth.as_ref().map(|a| a.provider.clone());
        let jwt_route = route(&config, "/jwt/");
        assert_eq!(jwt_route.name, "jwt");
        assert_eq!(provider(jwt_route).as_deref(), Some(jwt::PROVIDER));
        assert!(jwt_route.rate_limit.is_none());
        let everything = route(&config, "/all/");
        assert_eq!(provider(everything).as_deref(), Some(jwt::PROVIDER));
        assert_eq!(everything.rate_limit.as_deref(), Some("per_user"));
        let per_user = config.rate_limits.iter().find(|l| l.name == "per_user").unwrap();
        assert_eq!((per_user.requests, &per_user.key), (LIMIT_REQUESTS, &RateLimitKey::Claim("sub".into())));
        for path in ["/bearer/", "/"] {
            let unchecked = route(&config, path);
            assert!(unchecked.auth.is_none() && unchecked.rate_limit.is_none(), "{unchecked:?}");
        }

        let provider = gateway::auth::Provider::build(&config.jwt_providers[0], None).unwrap();
        let token = tokens.authorization[1].to_str().unwrap().strip_prefix("Bearer ").unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let claims = runtime.block_on(provider.verify(token)).unwrap();
        assert_eq!(claims["sub"], "user-1");
    }

    #[test]
    fn parse_listening_reads_name_and_addr() {
        assert_eq!(
            parse_listening("listening bench-tls 127.0.0.1:4433"),
            Some(("bench-tls", "127.0.0.1:4433".parse().unwrap()))
        );
        assert_eq!(parse_listening("listening admin nonsense"), None);
        assert_eq!(parse_listening("ready"), None);
    }

    #[test]
    fn response_parse_reads_status_headers_and_body() {
        let raw = "HTTP/1.1 200 OK\r\nRateLimit-Limit: 5\r\ncontent-length: 2\r\n\r\n{}";
        let response = Response::parse(raw).unwrap();
        assert_eq!((response.status, response.body.as_str()), (200, "{}"));
        assert_eq!(response.header("ratelimit-limit"), Some("5"));
        assert_eq!(response.header("retry-after"), None);
        assert!(Response::parse("HTTP/1.1 200 OK\r\n").is_err());
    }
}
