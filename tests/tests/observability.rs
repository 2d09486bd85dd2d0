//! Observability: the admin listener's `GET /metrics` (Prometheus text format) and the JSON access
//! log (`access_log.path`): request counts by route and status class, the latency histograms,
//! upstream errors and requests in flight, rate-limit decisions, token checks, stripped identity
//! headers, reloads and the process's own resource use; one log line per request with the
//! documented fields, never the query string or a token; reopening on SIGHUP (logrotate); a missing
//! log directory refused by `gateway check`; a client gone mid-body.
//!
//! A request is recorded when its response body ends (or the client goes away), and log lines are
//! written by a background thread: every check polls `/metrics` or the log file, bounded by
//! [`TIMEOUT`]. Nothing asserts wall-clock time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use backends::token::{claims, Algorithm, SigningKey};
use e2e::client::{self, Reply};
use e2e::{
    closed_port_addr, config, config_version, eventually, fetch_until, gateway_check, gateway_run_invalid,
    one_route_config, raw, Backend, ConfigDir, Gateway, LISTENERS, TIMEOUT,
};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "shop";
/// The variable `secret_env` names in the JWT config.
const SECRET_ENV: &str = "E2E_JWT_SECRET";

// ---------------------------------------------------------------------------------------------------
// /metrics: parsing and polling
// ---------------------------------------------------------------------------------------------------

/// One sample line of the exposition.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed `/metrics` response: every sample, the `# TYPE` of every family, and the text (for
/// failure messages).
#[derive(Debug)]
struct Exposition {
    text: String,
    samples: Vec<Sample>,
    types: BTreeMap<String, String>,
}

impl Exposition {
    /// Parses the text format; panics (with the text) on a line that is neither a comment nor a
    /// well-formed sample.
    fn parse(text: String) -> Exposition {
        let mut samples = Vec::new();
        let mut types = BTreeMap::new();
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut words = rest.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some(family), Some(kind), None) => types.insert(family.to_owned(), kind.to_owned()),
                    _ => panic!("malformed TYPE line {line:?} in /metrics:\n{text}"),
                };
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let sample =
                parse_sample(line).unwrap_or_else(|| panic!("malformed sample line {line:?} in /metrics:\n{text}"));
            samples.push(sample);
        }
        Exposition { text, samples, types }
    }

    /// The value of the series `name` whose labels are exactly `labels`, if present.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let wanted: BTreeMap<String, String> = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        self.samples.iter().find(|s| s.name == name && s.labels == wanted).map(|s| s.value)
    }

    /// Like [`Exposition::get`], panicking (with the whole text) when the series is missing.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels).unwrap_or_else(|| panic!("no series {name}{labels:?} in /metrics:\n{}", self.text))
    }

    /// Asserts the series `name{labels}` is present with value `expected`.
    fn assert_value(&self, name: &str, labels: &[(&str, &str)], expected: f64) {
        let value = self.value(name, labels);
        assert_eq!(value, expected, "{name}{labels:?}; /metrics:\n{}", self.text);
    }

    /// Every sample of `name`.
    fn series<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Sample> {
        self.samples.iter().filter(move |s| s.name == name)
    }

    /// The sum over every series of `name`.
    fn total(&self, name: &str) -> f64 {
        self.series(name).map(|s| s.value).sum()
    }

    /// The series of `name` with a non-zero value, as (labels, value), sorted.
    fn non_zero(&self, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let mut found: Vec<_> =
            self.series(name).filter(|s| s.value != 0.0).map(|s| (s.labels.clone(), s.value)).collect();
        found.sort_by(|a, b| a.0.cmp(&b.0));
        found
    }

    /// Asserts every sample belongs to a family with a `# TYPE` line (a histogram's `_bucket`,
    /// `_sum` and `_count` to a `histogram`), and each histogram series has cumulative buckets
    /// ending in `+Inf` equal to its `_count`.
    fn assert_well_formed(&self) {
        for sample in &self.samples {
            let typed = self.types.contains_key(&sample.name)
                || ["_bucket", "_sum", "_count"].iter().any(|suffix| {
                    sample
                        .name
                        .strip_suffix(suffix)
                        .is_some_and(|family| self.types.get(family).is_some_and(|kind| kind == "histogram"))
                });
            assert!(typed, "sample {sample:?} has no # TYPE line; /metrics:\n{}", self.text);
        }
        for (family, kind) in &self.types {
            if kind != "histogram" {
                continue;
            }
            for count in self.series(&format!("{family}_count")) {
                let mut buckets: Vec<(f64, f64)> = self
                    .series(&format!("{family}_bucket"))
                    .filter(|b| {
                        let mut labels = b.labels.clone();
                        labels.remove("le");
                        labels == count.labels
                    })
                    .map(|b| {
                        let le = b.labels.get("le").map(String::as_str).unwrap_or_default();
                        let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::NAN) };
                        (bound, b.value)
                    })
                    .collect();
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let what = format!("{family} {:?}", count.labels);
                assert!(!buckets.is_empty(), "{what}: no buckets; /metrics:\n{}", self.text);
                assert!(
                    buckets.iter().all(|(bound, _)| !bound.is_nan()),
                    "{what}: a bad `le`; /metrics:\n{}",
                    self.text
                );
                assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{what}: buckets not cumulative: {buckets:?}");
                assert_eq!(buckets.last().map(|b| b.0), Some(f64::INFINITY), "{what}: no +Inf bucket");
                assert_eq!(buckets.last().map(|b| b.1), Some(count.value), "{what}: +Inf bucket vs _count");
            }
        }
    }
}

/// `name{a="x",b="y"} value` (a timestamp after the value is tolerated); `None` when malformed.
fn parse_sample(line: &str) -> Option<Sample> {
    let is_name =
        |text: &str| !text.is_empty() && text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':');
    let name_end = line.find(['{', ' '])?;
    let name = &line[..name_end];
    if !is_name(name) {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(mut inner) = rest.strip_prefix('{') {
        // `label="value"` pairs separated by `,`, up to `}`; values escape `\\`, `\"` and `\n`.
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = inner.find("=\"")?;
            let label = &inner[..eq];
            if !is_name(label) {
                return None;
            }
            let quoted = &inner[eq + 2..];
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i + 1,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    (_, other) => value.push(other),
                }
            };
            labels.insert(label.to_owned(), value);
            inner = &quoted[end..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    let value = match rest.split_whitespace().next()? {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        text => text.parse().ok()?,
    };
    Some(Sample { name: name.to_owned(), labels, value })
}

/// `GET /metrics` on the admin listener, parsed; panics unless it is a 200 in the text format.
async fn scrape(gateway: &Gateway) -> Exposition {
    let reply = client::get(gateway.admin_addr(), "/metrics").await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text());
    Exposition::parse(reply.text())
}

/// Scrapes `/metrics` every 20 ms until `condition` holds and returns that scrape; panics naming
/// `what`, with the last text, after [`TIMEOUT`].
async fn scrape_until(gateway: &Gateway, what: &str, condition: impl Fn(&Exposition) -> bool) -> Exposition {
    fetch_until(&format!("/metrics to show {what}"), || scrape(gateway), condition, |m| m.text.clone()).await
}

/// Labels as an owned map, for comparing with [`Exposition::non_zero`].
fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

/// The series of `gateway_requests_total` for `route` and status class `status`.
fn requests(route: &'static str, status: &'static str) -> [(&'static str, &'static str); 2] {
    [("route", route), ("status", status)]
}

// ---------------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------------

/// Limit `one` (1 request per client address), routes `a` (`/a`) and `b` (`/b`, drawing from
/// `one`) to the echo, and `extra_routes` (list items, indented two spaces).
fn two_routes_config(echo: &Backend, extra_routes: &str) -> String {
    let body = format!(
        r#"
rate_limits:
  one: {{ requests: 1, window: 60s, key: client_ip }}
upstreams:
  echo: {{ endpoints: ["${{echo}}"] }}
routes:
  - {{ name: a, match: {{ path_prefix: /a }}, upstream: echo }}
  - {{ name: b, match: {{ path_prefix: /b }}, upstream: echo, rate_limit: one }}
{extra_routes}"#
    );
    config(&body, &[echo])
}

/// `access_log.path: log_path`, routes `api` (`/api`), `bytes` (`/bytes`), `slow` (`/slow`) and `drip`
/// (`/drip`) to the echo; no catch-all, so anything else is a 404.
fn access_log_config(echo: &Backend, log_path: &str) -> String {
    let body = format!(
        r#"
access_log: {{ path: {log_path} }}
upstreams:
  echo: {{ endpoints: ["${{echo}}"] }}
routes:
  - {{ name: api, match: {{ path_prefix: /api }}, upstream: echo }}
  - {{ name: bytes, match: {{ path_prefix: /bytes }}, upstream: echo }}
  - {{ name: slow, match: {{ path_prefix: /slow }}, upstream: echo }}
  - {{ name: drip, match: {{ path_prefix: /drip }}, upstream: echo }}
  - {{ name: ws, match: {{ path_prefix: /ws }}, upstream: echo }}
"#
    );
    config(&body, &[echo])
}

// ---------------------------------------------------------------------------------------------------
// Access log: reading and polling
// ---------------------------------------------------------------------------------------------------

/// A gateway on [`access_log_config`] logging to `logs/access.log` next to its config file, with
/// its echo and its config directory.
struct LogFixture {
    gateway: Gateway,
    echo: Backend,
    /// The log file, `<config dir>/logs/access.log`.
    log: PathBuf,
    dir: ConfigDir,
}

impl LogFixture {
    fn start() -> LogFixture {
        LogFixture::start_with("")
    }

    /// With `extra` (top-level YAML keys) appended to the config.
    fn start_with(extra: &str) -> LogFixture {
        let echo = Backend::spawn("echo");
        let dir = ConfigDir::new(&format!("{}{extra}", access_log_config(&echo, "logs/access.log")));
        let logs = dir.path().parent().unwrap_or_else(|| panic!("{} has no parent", dir.path_text())).join("logs");
        std::fs::create_dir(&logs).unwrap_or_else(|e| panic!("creating {}: {e}", logs.display()));
        let gateway = Gateway::start_with_file(dir.path());
        LogFixture { gateway, echo, log: logs.join("access.log"), dir }
    }
}

/// The complete lines (newline-terminated) of the log file at `path`, each parsed as a JSON
/// object; none when the file does not exist. Panics (with the file) on a line that is not one.
fn log_lines(path: &Path) -> Vec<Value> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => panic!("reading {}: {e}", path.display()),
    };
    let complete = match text.rfind('\n') {
        Some(end) => &text[..end],
        None => return Vec::new(),
    };
    complete
        .lines()
        .map(|line| {
            let json: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("access log line {line:?} is not JSON ({e}); {}:\n{text}", path.display()));
            assert!(json.is_object(), "access log line {line:?} is not a JSON object");
            json
        })
        .collect()
}

/// The `request_id` of each line of the log file at `path`, in order.
fn logged_ids(path: &Path) -> Vec<String> {
    log_lines(path).iter().map(|line| line["request_id"].as_str().unwrap_or_default().to_owned()).collect()
}

/// Polls the log file every 20 ms until it holds a line with `request_id` and returns that line;
/// panics, with the file, after [`TIMEOUT`].
async fn wait_for_line(path: &Path, request_id: &str) -> Value {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Some(line) = log_lines(path).into_iter().find(|l| l["request_id"] == request_id) {
            return line;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {TIMEOUT:?} waiting for the line of request {request_id} in {}; it holds:\n{}",
            path.display(),
            std::fs::read_to_string(path).unwrap_or_else(|e| format!("({e})"))
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The response's `x-request-id`; panics when it has none.
fn request_id(reply: &Reply) -> String {
    reply.header("x-request-id").unwrap_or_else(|| panic!("no x-request-id in {reply:?}")).to_owned()
}

/// The keys of a log line.
fn keys(line: &Value) -> BTreeSet<&str> {
    line.as_object().map(|o| o.keys().map(String::as_str).collect()).unwrap_or_default()
}

/// `2026-11-21T17:47:27.310Z`: RFC 3339, UTC, milliseconds.
fn is_utc_millis_time(text: &str) -> bool {
    text.len() == 24
        && text.bytes().enumerate().all(|(i, c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        })
}

/// The fields every line has, whatever answered the request.
const COMMON_FIELDS: [&str; 13] = [
    "time",
    "request_id",
    "trace_id",
    "client_ip",
    "method",
    "host",
    "path",
    "protocol",
    "tls",
    "status",
    "duration_ms",
    "bytes_sent",
    "completed",
];

/// Asserts the fields every line shares: time format, client address, method, host, path,
/// protocol, plain TCP, a non-negative duration, and `user_agent` when one was sent.
fn assert_common_fields(line: &Value, host: &str, path: &str, user_agent: &str) {
    let time = line["time"].as_str().unwrap_or_default();
    assert!(is_utc_millis_time(time), "time {time:?} in {line}");
    assert_eq!(line["client_ip"], "127.0.0.1", "client_ip in {line}");
    assert_eq!(line["method"], "GET", "method in {line}");
    assert_eq!(line["host"], host, "host in {line}");
    assert_eq!(line["path"], path, "path in {line}");
    assert_eq!(line["protocol"], "HTTP/1.1", "protocol in {line}");
    assert_eq!(line["tls"], false, "tls in {line}");
    assert!(line["duration_ms"].as_f64().is_some_and(|ms| ms >= 0.0), "duration_ms in {line}");
    assert_eq!(line["user_agent"], user_agent, "user_agent in {line}");
}

// ---------------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_requests_by_route_and_status_class() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&two_routes_config(&echo, ""));

    for path in ["/a/1", "/a/2"] {
        let reply = client::get(gateway.addr(), path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    client::get(gateway.addr(), "/nowhere").await.assert_error(404, "no_route");
    let allowed = client::get(gateway.addr(), "/b/1").await;
    assert_eq!(allowed.status, 200, "the first request on b: {}", allowed.text());
    client::get(gateway.addr(), "/b/2").await.assert_error(429, "rate_limited");

    let metrics = scrape_until(&gateway, "5 requests counted", |m| m.total("gateway_requests_total") >= 5.0).await;
    metrics.assert_well_formed();
    let counted = metrics.non_zero("gateway_requests_total");
    let expected = vec![
        (labels(&requests("", "4xx")), 1.0),
        (labels(&requests("a", "2xx")), 2.0),
        (labels(&requests("b", "2xx")), 1.0),
        (labels(&requests("b", "4xx")), 1.0),
    ];
    assert_eq!(counted, expected, "gateway_requests_total; /metrics:\n{}", metrics.text);

    for (route, count) in [("a", 2.0), ("b", 2.0), ("", 1.0)] {
        let route_label = [("route", route)];
        metrics.assert_value("gateway_request_duration_seconds_count", &route_label, count);
        metrics.assert_value("gateway_request_duration_seconds_bucket", &[("route", route), ("le", "+Inf")], count);
        let sum = metrics.value("gateway_request_duration_seconds_sum", &route_label);
        assert!(sum >= 0.0, "gateway_request_duration_seconds_sum{{route={route:?}}} {sum}");
    }

    let decisions = "gateway_rate_limit_decisions_total";
    metrics.assert_value(decisions, &[("limit", "one"), ("decision", "allowed"), ("counted_in", "local")], 1.0);
    metrics.assert_value(decisions, &[("limit", "one"), ("decision", "denied"), ("counted_in", "local")], 1.0);
    assert_eq!(metrics.total(decisions), 2.0, "{decisions}: nothing counted in Redis; /metrics:\n{}", metrics.text);

    // Three requests went upstream: two on a, the allowed one on b.
    metrics.assert_value("gateway_upstream_response_seconds_count", &[("upstream", "echo")], 3.0);
    assert_eq!(metrics.total("gateway_upstream_errors_total"), 0.0, "upstream errors; /metrics:\n{}", metrics.text);
    assert_eq!(metrics.get("gateway_redis_connected", &[]), None, "no `redis` configured; /metrics:\n{}", metrics.text);
    metrics.assert_value("gateway_access_log_dropped_lines_total", &[], 0.0);
    metrics.assert_value("gateway_config_reloads_total", &[("result", "ok")], 0.0);
    metrics.assert_value("gateway_config_reloads_total", &[("result", "failed")], 0.0);
}

#[tokio::test]
async fn metrics_upstream_in_flight_counts_requests_until_their_response_ends() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    // Held at the upstream for 3 s: long enough to be seen in flight.
    let slow = tokio::spawn(client::get(gateway.addr(), "/slow/3000"));
    let in_flight = [("upstream", "echo")];
    scrape_until(&gateway, "one request in flight", |m| m.get("gateway_upstream_in_flight", &in_flight) == Some(1.0))
        .await;
    assert_eq!(slow.await.unwrap().status, 200);
    scrape_until(&gateway, "no request in flight", |m| m.get("gateway_upstream_in_flight", &in_flight) == Some(0.0))
        .await;
}

#[tokio::test]
async fn metrics_process_series_under_standard_names() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&two_routes_config(&echo, ""));

    let metrics = scrape(&gateway).await;
    metrics.assert_well_formed();
    for name in ["process_resident_memory_bytes", "process_virtual_memory_bytes", "process_open_fds", "process_max_fds"]
    {
        assert!(metrics.value(name, &[]) > 0.0, "{name}; /metrics:\n{}", metrics.text);
    }
    assert!(metrics.value("process_threads", &[]) >= 2.0, "a worker and the main thread at least");
    let started = metrics.value("process_start_time_seconds", &[]);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!((now - 600.0..=now + 1.0).contains(&started), "started {started}, now {now}");
    assert_eq!(metrics.types.get("process_cpu_seconds_total").map(String::as_str), Some("counter"));
}

#[tokio::test]
async fn metrics_upstream_connect_errors() {
    let dead = closed_port_addr();
    let body = format!(
        "\nupstreams:\n  dead: {{ endpoints: [\"http://{dead}\"], connect_timeout: 2s }}\nroutes:\n  \
         - {{ name: down, upstream: dead }}\n"
    );
    let gateway = Gateway::start(&config(&body, &[]));

    client::get(gateway.addr(), "/x").await.assert_error(502, "upstream_connect_error");

    let reply = client::get(gateway.admin_addr(), "/metrics").await;
    assert_eq!(reply.status, 200, "GET /metrics: {}", reply.text());
    assert_eq!(reply.header("content-type"), Some(PROMETHEUS_TEXT), "content-type of /metrics");
    Exposition::parse(reply.text()).assert_well_formed();

    let metrics = scrape_until(&gateway, "the 502 counted", |m| m.total("gateway_requests_total") >= 1.0).await;
    let expected = vec![(labels(&requests("down", "5xx")), 1.0)];
    assert_eq!(metrics.non_zero("gateway_requests_total"), expected, "requests; /metrics:\n{}", metrics.text);
    let errors = "gateway_upstream_errors_total";
    metrics.assert_value(errors, &[("upstream", "dead"), ("kind", "connect")], 1.0);
    metrics.assert_value(errors, &[("upstream", "dead"), ("kind", "timeout")], 0.0);
    metrics.assert_value(errors, &[("upstream", "dead"), ("kind", "error")], 0.0);
    // No response head ever came back.
    metrics.assert_value("gateway_upstream_response_seconds_count", &[("upstream", "dead")], 0.0);
}

#[tokio::test]
async fn metrics_jwt_checks_by_result() {
    let echo = Backend::spawn("echo");
    let key = SigningKey::generate(Algorithm::HS256, "hs");
    let other = SigningKey::generate(Algorithm::HS256, "hs");
    let body = format!(
        "\njwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      \
         algorithms: [HS256]\n      secret_env: {SECRET_ENV}\nupstreams:\n  echo: {{ endpoints: [\"${{echo}}\"] }}\n\
         routes:\n  - {{ name: account, match: {{ path_prefix: /account }}, upstream: echo, auth: {{ provider: main }} }}\n"
    );
    let secret = std::str::from_utf8(key.secret().expect("an HMAC key")).expect("generated secrets are text");
    let gateway = Gateway::start_with_env(&config(&body, &[&echo]), &[(SECRET_ENV, secret)]);
    let lifetime = Duration::from_secs(300);

    let valid = key.sign(&claims(ISSUER, AUDIENCE, "alice", lifetime));
    let reply = client::get_with(gateway.addr(), "/account", &[("authorization", &format!("Bearer {valid}"))]).await;
    assert_eq!(reply.status, 200, "a valid token: {}", reply.text());
    client::get(gateway.addr(), "/account").await.assert_error(401, "missing_token");
    let forged = other.sign(&claims(ISSUER, AUDIENCE, "mallory", lifetime));
    let reply = client::get_with(gateway.addr(), "/account", &[("authorization", &format!("Bearer {forged}"))]).await;
    reply.assert_error(401, "invalid_token");

    let checks = "gateway_jwt_checks_total";
    let metrics = scrape_until(&gateway, "3 token checks", |m| m.total(checks) >= 3.0).await;
    for (result, count) in [
        ("valid", 1.0),
        ("missing", 1.0),
        ("invalid", 1.0),
        ("absent", 0.0),
        ("malformed", 0.0),
        ("insufficient", 0.0),
        ("unavailable", 0.0),
    ] {
        metrics.assert_value(checks, &[("provider", "main"), ("result", result)], count);
    }
    assert_eq!(metrics.total(checks), 3.0, "{checks}; /metrics:\n{}", metrics.text);
}

#[tokio::test]
async fn metrics_identity_headers_stripped() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&two_routes_config(&echo, ""));

    let reply = client::get_with(gateway.addr(), "/a/me", &[("x-user-id", "42")]).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echoed().header("x-user-id"), None, "the upstream received the client's X-User-Id");
    let reply = client::get(gateway.addr(), "/a/plain").await;
    assert_eq!(reply.status, 200, "{}", reply.text());

    let metrics =
        scrape_until(&gateway, "2 requests on a", |m| m.value("gateway_requests_total", &requests("a", "2xx")) >= 2.0)
            .await;
    let stripped = "gateway_identity_headers_stripped_total";
    metrics.assert_value(stripped, &[("route", "a")], 1.0);
    metrics.assert_value(stripped, &[("route", "b")], 0.0);
    assert_eq!(metrics.total(stripped), 1.0, "{stripped}; /metrics:\n{}", metrics.text);
}

#[tokio::test]
async fn metrics_reloads_counted() {
    let echo = Backend::spawn("echo");
    let dir = ConfigDir::new(&two_routes_config(&echo, ""));
    let gateway = Gateway::start_with_file(dir.path());
    let reloads = "gateway_config_reloads_total";
    let (ok, failed) = ([("result", "ok")], [("result", "failed")]);

    assert_eq!(client::get(gateway.addr(), "/a/before").await.status, 200);
    let metrics =
        scrape_until(&gateway, "the request on a", |m| m.value("gateway_requests_total", &requests("a", "2xx")) >= 1.0)
            .await;
    metrics.assert_value(reloads, &ok, 0.0);
    metrics.assert_value(reloads, &failed, 0.0);

    let changed = two_routes_config(&echo, "  - { name: c, match: { path_prefix: /c }, upstream: echo }\n");
    dir.replace(&changed);
    gateway.wait_for_version(&config_version(&changed)).await;
    scrape_until(&gateway, "an ok reload", |m| m.value(reloads, &ok) >= 1.0).await;

    // Series are process-wide: the count from before the reload carries on.
    assert_eq!(client::get(gateway.addr(), "/a/after").await.status, 200);
    assert_eq!(client::get(gateway.addr(), "/c/new").await.status, 200);
    let metrics = scrape_until(&gateway, "the requests after the reload", |m| {
        m.value("gateway_requests_total", &requests("a", "2xx")) >= 2.0
            && m.get("gateway_requests_total", &requests("c", "2xx")).is_some_and(|n| n >= 1.0)
    })
    .await;
    metrics.assert_value("gateway_requests_total", &requests("a", "2xx"), 2.0);
    metrics.assert_value("gateway_requests_total", &requests("c", "2xx"), 1.0);

    dir.replace(&format!("{LISTENERS}upstreams: {{}}\nroutes: []\nbogus_key: 1\n"));
    let admin = gateway.wait_for_failed_reloads_over(0).await;
    assert_eq!(admin["version"], config_version(&changed), "still serving the valid config");
    let metrics = scrape_until(&gateway, "a failed reload", |m| m.value(reloads, &failed) >= 1.0).await;
    assert!(metrics.value(reloads, &ok) >= 1.0, "{reloads} ok; /metrics:\n{}", metrics.text);

    // The counters agree with /admin/config's (once both have settled).
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let admin = gateway.admin_config().await;
        let metrics = scrape(&gateway).await;
        let admin_counts = (admin["reloads"]["ok"].as_f64(), admin["reloads"]["failed"].as_f64());
        let metric_counts = (metrics.get(reloads, &ok), metrics.get(reloads, &failed));
        if admin_counts == metric_counts {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{reloads} {metric_counts:?} never matched /admin/config's reloads {admin_counts:?}; /metrics:\n{}",
            metrics.text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(client::get(gateway.addr(), "/a/still").await.status, 200, "serving after the failed reload");
}

// ---------------------------------------------------------------------------------------------------
// Access log
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn access_log_lines_for_proxied_and_refused_requests() {
    let fixture = LogFixture::start();
    let (host, user_agent, token) = ("api.example.test", "e2e-observability/1.0", "xyz-e2e-bearer-token");
    let authorization = format!("Bearer {token}");
    let headers = [("host", host), ("user-agent", user_agent), ("authorization", authorization.as_str())];

    let proxied = client::get_with(fixture.gateway.addr(), "/api/items?token=secret", &headers).await;
    assert_eq!(proxied.status, 200, "{}", proxied.text());
    assert_eq!(proxied.echoed().path, "/api/items?token=secret", "what the upstream received");
    let refused = client::get_with(fixture.gateway.addr(), "/nowhere?token=secret", &headers).await;
    refused.assert_error(404, "no_route");

    let line = wait_for_line(&fixture.log, &request_id(&proxied)).await;
    let mut expected: BTreeSet<&str> = COMMON_FIELDS.into_iter().collect();
    expected.extend(["route", "upstream", "endpoint", "upstream_ms", "user_agent"]);
    assert_eq!(keys(&line), expected, "fields of the proxied request's line {line}");
    assert_common_fields(&line, host, "/api/items", user_agent);
    assert_eq!(line["status"], 200, "status in {line}");
    assert_eq!(line["route"], "api", "route in {line}");
    assert_eq!(line["upstream"], "echo", "upstream in {line}");
    assert_eq!(line["endpoint"], fixture.echo.addr.to_string(), "endpoint in {line}");
    let (duration, upstream) = (line["duration_ms"].as_f64(), line["upstream_ms"].as_f64());
    assert!(
        upstream.zip(duration).is_some_and(|(upstream, duration)| (0.0..=duration).contains(&upstream)),
        "upstream_ms must be a number within duration_ms: {line}"
    );
    assert_eq!(line["bytes_sent"].as_u64(), Some(proxied.body.len() as u64), "bytes_sent vs the body in {line}");
    assert_eq!(line["completed"], true, "completed in {line}");
    let traceparent = proxied.echoed().header("traceparent").map(str::to_owned);
    let sent_trace_id = traceparent.as_deref().and_then(|t| t.get(3..35));
    assert_eq!(line["trace_id"].as_str(), sent_trace_id, "trace_id vs the upstream's traceparent in {line}");

    let line = wait_for_line(&fixture.log, &request_id(&refused)).await;
    let mut expected: BTreeSet<&str> = COMMON_FIELDS.into_iter().collect();
    expected.extend(["error", "user_agent"]);
    assert_eq!(keys(&line), expected, "fields of the 404's line {line}");
    assert_common_fields(&line, host, "/nowhere", user_agent);
    assert_eq!(line["status"], 404, "status in {line}");
    assert_eq!(line["error"], "no_route", "error in {line}");
    assert_eq!(line["bytes_sent"].as_u64(), Some(refused.body.len() as u64), "bytes_sent vs the body in {line}");
    assert_eq!(line["completed"], true, "completed in {line}");

    let text = std::fs::read_to_string(&fixture.log).unwrap_or_else(|e| panic!("reading the log: {e}"));
    assert_eq!(text.lines().count(), 2, "one line per request:\n{text}");
    for secret in ["secret", "token=", "?", token, "Bearer", "authorization"] {
        assert!(!text.contains(secret), "the access log holds {secret:?}:\n{text}");
    }
}

/// A HEAD response is its head: hyper never polls its body, so the gateway's own answers (404 here)
/// and proxied ones alike are complete once the head is sent, with no body bytes.
#[tokio::test]
async fn access_log_head_requests_complete_with_their_head() {
    let fixture = LogFixture::start();
    for path in ["/api/items", "/nowhere"] {
        let reply =
            client::send(fixture.gateway.addr(), client::request("HEAD", path).body(client::empty()).unwrap()).await;
        let line = wait_for_line(&fixture.log, &request_id(&reply)).await;
        assert_eq!(line["method"], "HEAD", "{line}");
        assert_eq!((&line["completed"], &line["bytes_sent"]), (&Value::from(true), &Value::from(0)), "{path}: {line}");
    }
}

/// A User-Agent in UTF-8 beyond ASCII is logged as it is (JSON is UTF-8), not left out.
#[tokio::test]
async fn access_log_user_agent_in_utf8_is_logged() {
    let fixture = LogFixture::start();
    let reply =
        client::get_with(fixture.gateway.addr(), "/api/items", &[("user-agent", "Bücherwurm/1.0 (日本)")]).await;
    let line = wait_for_line(&fixture.log, &request_id(&reply)).await;
    assert_eq!(line["user_agent"], "Bücherwurm/1.0 (日本)", "{line}");
}

/// A log shipper reading stdout skips the start-up lines up to `ready`; JSON from there on.
#[tokio::test]
async fn access_log_on_stdout_is_json_after_ready() {
    let echo = Backend::spawn("echo");
    let config = format!("{}access_log: {{ path: stdout }}\n", one_route_config(&echo, "", ""));
    let gateway = Gateway::start(&config);
    for path in ["/one", "/two"] {
        assert_eq!(client::get(gateway.addr(), path).await.status, 200);
    }
    let stdout = fetch_until(
        "both access log lines on stdout",
        || async { gateway.stdout() },
        |text| text.contains(r#""path":"/two""#) && text.contains(r#""path":"/one""#),
        String::clone,
    )
    .await;
    let (start, log) = stdout.split_once("ready\n").unwrap_or_else(|| panic!("no `ready` line:\n{stdout}"));
    assert!(start.lines().all(|line| line.starts_with("listening ")), "start-up lines:\n{start}");
    assert_eq!(log.lines().count(), 2, "one line per request:\n{log}");
    for line in log.lines() {
        let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert_eq!(json["status"], 200, "{line}");
    }
}

#[tokio::test]
async fn access_log_reopens_on_sighup() {
    let fixture = LogFixture::start();
    let before = client::get(fixture.gateway.addr(), "/api/before").await;
    assert_eq!(before.status, 200, "{}", before.text());
    wait_for_line(&fixture.log, &request_id(&before)).await;

    // logrotate: rename, then SIGHUP (`postrotate`).
    let rotated = fixture.log.with_file_name("access.log.1");
    std::fs::rename(&fixture.log, &rotated).unwrap_or_else(|e| panic!("renaming the log: {e}"));
    fixture.gateway.sighup();
    // The reopen is requested before the reload the SIGHUP also starts is recorded.
    fixture.gateway.admin_config_until("the SIGHUP handled", |json| json["last_reload"]["trigger"] == "sighup").await;

    let after = client::get(fixture.gateway.addr(), "/api/after").await;
    assert_eq!(after.status, 200, "{}", after.text());
    let line = wait_for_line(&fixture.log, &request_id(&after)).await;
    assert_eq!(line["path"], "/api/after", "{line}");

    let new_file = log_lines(&fixture.log);
    assert_eq!(new_file.len(), 1, "the new file holds only the request after the SIGHUP: {new_file:?}");
    let old_file = log_lines(&rotated);
    let ids: Vec<&Value> = old_file.iter().map(|l| &l["request_id"]).collect();
    assert_eq!(ids, [&Value::from(request_id(&before))], "the rotated file holds only the request before it");
}

#[tokio::test]
async fn access_log_every_line_written_before_exit() {
    const REQUESTS: usize = 200;
    let mut fixture = LogFixture::start();
    let mut connection = client::Connection::connect(fixture.gateway.addr()).await;
    let mut ids = BTreeSet::new();
    for i in 0..REQUESTS {
        let reply = connection.get(&format!("/api/{i}")).await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        ids.insert(request_id(&reply));
    }
    drop(connection);
    // At once: the last lines are still queued for the writer, which the exit must wait for.
    fixture.gateway.sigterm();
    let status = fixture.gateway.wait_exit().await;
    assert!(status.success(), "exit status {status}; stderr:\n{}", fixture.gateway.stderr());
    let logged = logged_ids(&fixture.log);
    assert_eq!(logged.len(), REQUESTS, "lines in the log after exit");
    assert_eq!(logged.into_iter().collect::<BTreeSet<_>>(), ids, "the log's request ids against the responses'");
}

/// Requests that `drain_timeout` cuts off were ended by the gateway, not by their clients: logged
/// as 503 `drain_timeout` when nothing had been sent, with the status already sent otherwise, and
/// never as a client's 499.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_requests_cut_by_the_drain_timeout_are_the_gateways_doing() {
    let mut fixture = LogFixture::start_with("shutdown: { drain_timeout: 1s }\n");
    let addr = fixture.gateway.addr();
    let get = |path: &str| {
        let request = client::request("GET", path).body(client::empty());
        request.unwrap_or_else(|e| panic!("building GET {path}: {e}"))
    };
    let before = fixture.echo.stats().await.requests;
    let waiting = tokio::spawn(client::open(addr, get("/slow/60000")));
    // 600 bytes, one every 100 ms: the head arrives at once, the body would take a minute.
    let streaming = client::open(addr, get("/drip/600/100")).await.unwrap_or_else(|e| panic!("GET /drip: {e:#}"));
    assert_eq!(streaming.status(), 200);
    let echo = &fixture.echo;
    eventually("both requests to reach the echo", || async { echo.stats().await.requests >= before + 2 }).await;

    fixture.gateway.sigterm();
    let status = fixture.gateway.wait_exit().await;
    let stderr = fixture.gateway.stderr();
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(stderr.contains("the drain timeout closed the connections still open"), "{stderr}");
    let waited = tokio::time::timeout(TIMEOUT, waiting).await.expect("the cut request hung").expect("task panicked");
    assert!(waited.is_err(), "the request cut off got an answer: {:?}", waited.map(|r| r.status()));
    drop(streaming);

    let lines = log_lines(&fixture.log);
    let line = |path: &str| {
        let line = lines.iter().find(|line| line["path"] == path);
        line.unwrap_or_else(|| panic!("no line for {path} in {lines:?}")).clone()
    };
    let waited = line("/slow/60000");
    assert_eq!(waited["status"], 503, "status in {waited}");
    assert_eq!(waited["error"], "drain_timeout", "error in {waited}");
    assert_eq!((&waited["completed"], &waited["bytes_sent"]), (&Value::from(false), &Value::from(0)), "{waited}");
    let streamed = line("/drip/600/100");
    assert_eq!(streamed["status"], 200, "the status sent, in {streamed}");
    assert_eq!(streamed["error"], "drain_timeout", "error in {streamed}");
    assert_eq!(streamed["completed"], false, "completed in {streamed}");
}

#[tokio::test]
async fn access_log_moved_by_a_reload_keeps_in_flight_lines_in_the_old_file() {
    let fixture = LogFixture::start();
    // 40 bytes, one every 100 ms: the head arrives at once, the body takes 4 s, past the reload.
    let request = client::request("GET", "/drip/40/100").body(client::empty());
    let request = request.unwrap_or_else(|e| panic!("building the request: {e}"));
    let streaming = client::open(fixture.gateway.addr(), request)
        .await
        .unwrap_or_else(|e| panic!("opening the streaming request: {e}"));
    let streaming_id = streaming.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let streaming_id = streaming_id.unwrap_or_else(|| panic!("no x-request-id in {:?}", streaming.headers()));

    let moved = fixture.log.with_file_name("moved.log");
    let changed = access_log_config(&fixture.echo, "logs/moved.log");
    fixture.dir.replace(&changed);
    fixture.gateway.wait_for_version(&config_version(&changed)).await;
    let after = client::get(fixture.gateway.addr(), "/api/after").await;
    assert_eq!(after.status, 200, "{}", after.text());
    wait_for_line(&moved, &request_id(&after)).await;

    // The request that began before the reload ends after it, on the old snapshot: its line goes
    // to the old file, written out although nothing else holds that log any more.
    let body = http_body_util::BodyExt::collect(streaming.into_body())
        .await
        .unwrap_or_else(|e| panic!("reading the streamed body: {e}"))
        .to_bytes();
    assert_eq!(body.len(), 40, "streamed body");
    let line = wait_for_line(&fixture.log, &streaming_id).await;
    assert_eq!(line["completed"], true, "completed in {line}");
    assert_eq!(line["bytes_sent"], 40, "bytes_sent in {line}");
    assert_eq!(logged_ids(&fixture.log), [streaming_id], "the old file holds only the request begun before the reload");
    assert_eq!(logged_ids(&moved), [request_id(&after)], "the new file holds only the request after the reload");
}

#[test]
fn access_log_bad_directory_refused() {
    let echo = Backend::spawn("echo");
    let yaml = access_log_config(&echo, "missing-dir/access.log");
    let dir = ConfigDir::new(&yaml);
    let line = yaml.lines().position(|l| l.starts_with("access_log:")).map(|i| i + 1).unwrap_or_default();
    let column = yaml.lines().nth(line - 1).and_then(|l| l.find("missing-dir")).map(|i| i + 1).unwrap_or_default();
    let expected = format!("{}:{line}:{column}: access_log.path:", dir.path_text());

    let check = gateway_check(dir.path());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "gateway check; stderr:\n{stderr}");
    let problem = stderr.lines().find(|l| l.starts_with(&expected));
    let problem = problem.unwrap_or_else(|| panic!("no line starting {expected:?}; stderr:\n{stderr}"));
    assert!(problem.contains("missing-dir"), "the problem should name the directory: {problem}");

    let run = gateway_run_invalid(dir.path());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "gateway run; stderr:\n{stderr}");
    assert!(stderr.lines().any(|l| l == problem), "gateway run should report {problem:?}; stderr:\n{stderr}");
}

#[tokio::test]
async fn access_log_client_gone_midway_is_incomplete() {
    // Far more than the socket buffers between the gateway and a client that stops reading.
    const SIZE: u64 = 64 * 1024 * 1024;
    let fixture = LogFixture::start();

    let mut stream = raw::connect(fixture.gateway.addr()).await;
    let request = format!("GET /bytes/{SIZE} HTTP/1.1\r\nhost: gone.test\r\nuser-agent: e2e-gone\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("sending the request: {e}"));
    // The head and some of the body, then hang up with unread data (a reset).
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let reading = async {
        while received.len() < 256 * 1024 {
            match stream.read(&mut buf).await {
                Ok(0) => panic!("the gateway closed after {} bytes", received.len()),
                Ok(n) => received.extend_from_slice(&buf[..n]),
                Err(e) => panic!("reading the response: {e}"),
            }
        }
    };
    tokio::time::timeout(TIMEOUT, reading).await.unwrap_or_else(|_| panic!("no body within {TIMEOUT:?}"));
    drop(stream);
    let head_end = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or_else(|| panic!("no response head"));
    let head = String::from_utf8_lossy(&received[..head_end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 200"), "response head:\n{head}");
    let id = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("x-request-id")))
        .map(|(_, value)| value.trim())
        .unwrap_or_else(|| panic!("no x-request-id in the head:\n{head}"));

    let line = wait_for_line(&fixture.log, id).await;
    assert_eq!(line["completed"], false, "completed in {line}");
    assert_eq!(line["status"], 200, "status in {line}");
    assert_eq!(line["route"], "bytes", "route in {line}");
    assert_eq!(line["path"], format!("/bytes/{SIZE}"), "path in {line}");
    let sent = line["bytes_sent"].as_u64().unwrap_or_else(|| panic!("no bytes_sent in {line}"));
    assert!(sent < SIZE, "bytes_sent {sent} of a {SIZE}-byte body the client never read: {line}");
    let metrics = scrape_until(&fixture.gateway, "the abandoned request counted", |m| {
        m.get("gateway_requests_total", &requests("bytes", "2xx")).is_some_and(|n| n >= 1.0)
    })
    .await;
    metrics.assert_value("gateway_requests_total", &requests("bytes", "2xx"), 1.0);
}

/// The line of a request whose client left first: the 499 the gateway wrote reached nobody.
fn assert_abandoned(line: &Value) {
    assert_eq!((&line["status"], &line["error"]), (&Value::from(499), &Value::from("client_closed_request")), "{line}");
    assert_eq!((&line["completed"], &line["bytes_sent"]), (&Value::from(false), &Value::from(0)), "{line}");
}

/// A client that hangs up before its body is complete is logged as nginx logs it (499), apart from
/// one whose body is malformed (400).
#[tokio::test]
async fn access_log_upload_abandoned_is_499_and_malformed_is_400() {
    let fixture = LogFixture::start();

    let mut stream = raw::connect(fixture.gateway.addr()).await;
    let head = "POST /api/upload HTTP/1.1\r\nhost: gone.test\r\nx-request-id: e2e-abandoned-upload\r\n\
                content-length: 1000\r\n\r\n0123456789";
    stream.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("sending the upload: {e}"));
    // 10 of its 1,000 bytes, then the client hangs up once the upload has reached the echo.
    fetch_until("the upload at the echo", || fixture.echo.stats(), |s| s.requests == 1, |s| s.requests.to_string())
        .await;
    drop(stream);
    let line = wait_for_line(&fixture.log, "e2e-abandoned-upload").await;
    assert_abandoned(&line);

    // On HTTP/2 the client resets the stream instead.
    let (_response, mut upload) = raw::h2_upload(fixture.gateway.addr(), "/api/h2-upload", Some(1000), b"0123").await;
    fetch_until("the upload at the echo", || fixture.echo.stats(), |s| s.requests == 2, |s| s.requests.to_string())
        .await;
    upload.send_reset(h2::Reason::CANCEL);
    let reset = |l: &&Value| l["path"] == "/api/h2-upload";
    let lines = fetch_until(
        "the line of the reset upload",
        || async { log_lines(&fixture.log) },
        |lines| lines.iter().any(|l| reset(&l)),
        |lines| format!("{lines:?}"),
    )
    .await;
    let line = lines.iter().find(reset).unwrap_or_else(|| panic!("no line for the reset upload"));
    assert_abandoned(line);

    let mut stream = raw::connect(fixture.gateway.addr()).await;
    let head = "POST /api/upload HTTP/1.1\r\nhost: bad.test\r\nx-request-id: e2e-malformed-chunk\r\n\
                transfer-encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n";
    stream.write_all(head.as_bytes()).await.unwrap_or_else(|e| panic!("sending the upload: {e}"));
    let reply = raw::read_response(&mut stream).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    let line = wait_for_line(&fixture.log, "e2e-malformed-chunk").await;
    assert_eq!((&line["status"], &line["error"]), (&Value::from(400), &Value::from("bad_request_body")), "{line}");
}

#[tokio::test]
async fn access_log_upstream_bodies_with_trailers_or_cut_short() {
    let trailers = raw::scripted_upstream(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-t: v\r\n\r\n",
    );
    let broken = raw::scripted_upstream(b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n0123456789");
    let yaml = format!(
        r#"
access_log: {{ path: access.log }}
upstreams:
  trailers: {{ endpoints: ["http://{}"] }}
  broken: {{ endpoints: ["http://{}"] }}
routes:
  - {{ name: trailers, match: {{ path_prefix: /trailers }}, upstream: trailers }}
  - {{ name: broken, match: {{ path_prefix: /broken }}, upstream: broken }}
"#,
        trailers.await,
        broken.await
    );
    let dir = ConfigDir::new(&config(&yaml, &[]));
    let log = dir.path().parent().unwrap_or_else(|| panic!("{} has no parent", dir.path_text())).join("access.log");
    let gateway = Gateway::start_with_file(dir.path());

    let reply = client::get(gateway.addr(), "/trailers").await;
    assert_eq!((reply.status.as_u16(), reply.text()), (200, "hello".to_string()));
    let line = wait_for_line(&log, &request_id(&reply)).await;
    // Trailers end a body: the client got all of it.
    assert_eq!(
        (&line["completed"], &line["bytes_sent"], line.get("error")),
        (&Value::from(true), &Value::from(5), None),
        "{line}"
    );

    // hyper may drop the client's connection before it flushed the head: the line is found by path.
    let _ = client::open(gateway.addr(), client::request("GET", "/broken").body(client::empty()).unwrap()).await;
    let line = fetch_until(
        "the line of /broken",
        || async { log_lines(&log) },
        |lines| lines.iter().any(|l| l["path"] == "/broken"),
        |lines| format!("{lines:?}"),
    )
    .await;
    let line = line.into_iter().find(|l| l["path"] == "/broken").unwrap_or_default();
    assert_eq!(
        (&line["error"], &line["completed"], &line["status"]),
        (&Value::from("upstream_error"), &Value::from(false), &Value::from(200)),
        "{line}"
    );
    scrape_until(&gateway, "the cut-off body counted as the upstream's error", |m| {
        m.get("gateway_upstream_errors_total", &[("kind", "error"), ("upstream", "broken")]) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn access_log_client_gone_before_the_response_is_499() {
    let fixture = LogFixture::start();

    // The echo answers /slow/{ms} after that long; the client gives up well before.
    let mut stream = raw::connect(fixture.gateway.addr()).await;
    let request = "GET /slow/20000 HTTP/1.1\r\nhost: impatient.test\r\nuser-agent: e2e-impatient\r\n\r\n";
    stream.write_all(request.as_bytes()).await.unwrap_or_else(|e| panic!("sending the request: {e}"));
    // Recorded only once the gateway sees the request, so wait until the echo has it.
    eventually("the request to reach the echo", || async { fixture.echo.stats().await.requests > 0 }).await;
    drop(stream);

    let deadline = Instant::now() + TIMEOUT;
    let line = loop {
        if let Some(line) = log_lines(&fixture.log).into_iter().find(|l| l["path"] == "/slow/20000") {
            break line;
        }
        assert!(Instant::now() < deadline, "no line for the abandoned request in {}", fixture.log.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(line["status"], 499, "status in {line}");
    assert_eq!(line["error"], "client_closed_request", "error in {line}");
    assert_eq!(line["completed"], false, "completed in {line}");
    assert_eq!(line["route"], "slow", "route in {line}");
    assert_eq!(line["bytes_sent"], 0, "bytes_sent in {line}");
    scrape_until(&fixture.gateway, "the abandoned request counted as 4xx", |m| {
        m.get("gateway_requests_total", &requests("slow", "4xx")) == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn access_log_client_ip_is_the_forwarded_client_behind_a_trusted_proxy() {
    let echo = Backend::spawn("echo");
    let trusting = format!("{}server: {{ trusted_proxies: [127.0.0.1/32] }}\n", e2e::LISTENERS);
    let dir = ConfigDir::new(&access_log_config(&echo, "logs/access.log").replacen(e2e::LISTENERS, &trusting, 1));
    let logs = dir.path().parent().unwrap_or_else(|| panic!("{} has no parent", dir.path_text())).join("logs");
    std::fs::create_dir(&logs).unwrap_or_else(|e| panic!("creating {}: {e}", logs.display()));
    let gateway = Gateway::start_with_file(dir.path());

    // The client wrote 6.6.6.6 itself; our trusted proxy (127.0.0.1) saw 203.0.113.9.
    let headers = [("x-forwarded-for", "6.6.6.6, 203.0.113.9")];
    let reply = client::get_with(gateway.addr(), "/api/x", &headers).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let line = wait_for_line(&logs.join("access.log"), &request_id(&reply)).await;
    assert_eq!(line["client_ip"], "203.0.113.9", "client_ip in {line}");
}

#[tokio::test]
async fn access_log_websocket_line_is_written_when_the_tunnel_closes() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let fx = LogFixture::start();
    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", fx.gateway.addr()))
        .await
        .unwrap_or_else(|e| panic!("upgrade via the gateway: {e}"));
    let ws_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    socket.send(Message::text("hello")).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text("hello"));

    // Counted in the metrics at the 101; logged only when the session ends.
    let metrics = client::get(fx.gateway.admin_addr(), "/metrics").await.text();
    assert!(metrics.lines().any(|l| l == "gateway_requests_total{route=\"ws\",status=\"1xx\"} 1"), "{metrics}");
    let later = request_id(&client::get(fx.gateway.addr(), "/api/after").await);
    wait_for_line(&fx.log, &later).await;
    assert!(!logged_ids(&fx.log).contains(&ws_id), "logged while the tunnel was still open");

    socket.close(None).await.unwrap();
    while socket.next().await.is_some() {}
    drop(socket);
    let line = wait_for_line(&fx.log, &ws_id).await;
    assert_eq!((line["status"].as_u64(), line["route"].as_str()), (Some(101), Some("ws")), "{line}");
    assert_eq!(line["completed"], true, "closed cleanly: {line}");
    assert!(line["bytes_sent"].as_u64().is_some_and(|n| n >= 5), "the echoed message reached the client: {line}");
}

#[tokio::test]
async fn access_log_websocket_reset_by_the_client_still_counts_what_it_carried() {
    use tokio_tungstenite::MaybeTlsStream;
    let fx = LogFixture::start();
    let (socket, ws_id) = websocket_with_1000_bytes_echoed(&fx.gateway).await;
    // A reset, not a close: the tunnel ends in an error.
    let MaybeTlsStream::Plain(tcp) = socket.get_ref() else { panic!("a plain TCP WebSocket") };
    tcp.set_zero_linger().unwrap();
    drop(socket);
    let line = wait_for_line(&fx.log, &ws_id).await;
    assert_eq!(line["completed"], false, "reset: {line}");
    assert!(line["bytes_sent"].as_u64().is_some_and(|n| n >= 1000), "the echoed message reached the client: {line}");
}

/// Opens a WebSocket to `/ws` through `gateway` and has a 1000-byte message echoed; returns the
/// socket, still open, and the request id of its `101`.
async fn websocket_with_1000_bytes_echoed(
    gateway: &Gateway,
) -> (tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr()))
        .await
        .unwrap_or_else(|e| panic!("upgrade via the gateway: {e}"));
    let ws_id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
    let message = "x".repeat(1000);
    socket.send(Message::text(message.clone())).await.unwrap();
    assert_eq!(socket.next().await.unwrap().unwrap(), Message::text(message));
    (socket, ws_id)
}

/// The line of the tunnel with `ws_id` once the gateway stopped with it open: the gateway's doing,
/// with what it carried.
fn assert_tunnel_cut_by_shutdown(log: &Path, ws_id: &str) {
    let lines = log_lines(log);
    let line =
        lines.iter().find(|l| l["request_id"] == ws_id).unwrap_or_else(|| panic!("no line for {ws_id}: {lines:?}"));
    assert_eq!(line["status"], 101, "status in {line}");
    assert_eq!(line["completed"], false, "completed in {line}");
    assert_eq!(line["error"], "gateway_shutdown", "error in {line}");
    assert!(line["bytes_sent"].as_u64().is_some_and(|n| n >= 1000), "the echoed message reached the client: {line}");
}

#[tokio::test]
async fn access_log_websocket_cut_by_shutdown_counts_what_it_carried() {
    let mut fx = LogFixture::start();
    let (socket, ws_id) = websocket_with_1000_bytes_echoed(&fx.gateway).await;
    // The only connection: the drain ends at once, and the tunnel with the worker.
    fx.gateway.sigterm();
    let status = fx.gateway.wait_exit().await;
    assert!(status.success(), "exit status {status}; stderr:\n{}", fx.gateway.stderr());
    drop(socket);
    assert_tunnel_cut_by_shutdown(&fx.log, &ws_id);
}

/// A drain that runs out of time ends the tunnel too, but tunnels are never drained: a longer
/// `drain_timeout` would not have kept it, so it is not blamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_websocket_cut_when_the_drain_times_out_counts_what_it_carried() {
    let mut fx = LogFixture::start_with("shutdown: { drain_timeout: 1s }\n");
    let (socket, ws_id) = websocket_with_1000_bytes_echoed(&fx.gateway).await;
    let before = fx.echo.stats().await.requests;
    let request = client::request("GET", "/slow/60000").body(client::empty());
    let waiting = tokio::spawn(client::open(fx.gateway.addr(), request.unwrap_or_else(|e| panic!("{e}"))));
    let echo = &fx.echo;
    eventually("the slow request to reach the echo", || async { echo.stats().await.requests > before }).await;
    fx.gateway.sigterm();
    let status = fx.gateway.wait_exit().await;
    let stderr = fx.gateway.stderr();
    assert!(status.success(), "exit status {status}; stderr:\n{stderr}");
    assert!(stderr.contains("the drain timeout closed the connections still open"), "{stderr}");
    drop((socket, waiting));
    assert_tunnel_cut_by_shutdown(&fx.log, &ws_id);
}
