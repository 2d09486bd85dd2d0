//! Prometheus metrics, served on the admin listener at `/metrics`.
//!
//! One registry for the process, so the series of names a reload keeps outlive it. Label lookups (a
//! hash and a lock) happen when a snapshot is built: the request path only bumps the atomics of
//! handles resolved then. Labels are names from the config (routes, upstreams, endpoints, limits,
//! providers) and small fixed sets, never anything a client sends; a reload drops the series of
//! names it no longer has ([`Metrics::retain`]), so the number of series is bounded by the config.

mod process;

use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use std::collections::HashMap;

use prometheus::core::{Collector, MetricVec, MetricVecBuilder};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::upstream::breaker::State;

/// Seconds: from a cached-token check through a slow upstream.
const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Seconds: a Redis round trip, from loopback up to `redis.timeout`.
const REDIS_CALL_BUCKETS: &[f64] =
    &[0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Rate-limit decisions per Redis call, up to the most a call carries.
const REDIS_BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
/// The reasons `server::conn` gives for a request head refused before routing: each is exported
/// from the start (at 0), so a dashboard finds the series before the first one happens.
pub const CLIENT_REJECTION_REASONS: [&str; 6] =
    ["malformed", "head_too_large", "head_timeout", "rapid_reset", "control_flood", "per_ip_connections"];

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    identity_headers_stripped: IntCounterVec,
    upstream_errors: IntCounterVec,
    upstream_retries: IntCounterVec,
    upstream_overloaded: IntCounterVec,
    endpoint_ejections: IntCounterVec,
    upstream_duration: HistogramVec,
    upstream_in_flight: IntGaugeVec,
    endpoint_in_rotation: IntGaugeVec,
    breaker_state: IntGaugeVec,
    breaker_transitions: IntCounterVec,
    rate_limit_decisions: IntCounterVec,
    jwt_checks: IntCounterVec,
    reloads: IntCounterVec,
    client_rejections: IntCounterVec,
    tls_handshake_errors: IntCounter,
    tls_handshake_timeouts: IntCounter,
    redis_connected: IntGauge,
    client_connections: IntGauge,
    client_connections_max: IntGauge,
    pub redis: RedisMetrics,
    access_log_dropped: IntCounter,
    process: process::ProcessMetrics,
    /// Held by a scrape while it resets, refills and gathers the gauges read off the running
    /// state, so a concurrent scrape cannot gather between another's reset and refill.
    render: Mutex<()>,
}

/// What `/metrics` reads off the running gateway when scraped.
#[derive(Debug, Default)]
pub struct Readings<'a> {
    /// `None` when no Redis is configured.
    pub redis_connected: Option<bool>,
    /// Client connections open now, and the most allowed (`server.max_connections`).
    pub client_connections: usize,
    pub client_connections_max: usize,
    /// Requests in flight to each upstream of the current config.
    pub upstream_in_flight: Vec<(&'a str, usize)>,
    /// Upstream, endpoint, and whether it is in rotation, for each endpoint of the current config.
    pub endpoints_in_rotation: Vec<(&'a str, &'a str, bool)>,
    /// Each upstream of the current config and its breaker's state (`None`: it has no breaker).
    pub breaker_states: Vec<(&'a str, Option<State>)>,
}

/// The Redis rate-limit store's calls (one per batch of decisions).
#[derive(Debug, Clone)]
pub struct RedisMetrics {
    /// From sending a call to its answer, for calls Redis answered.
    pub call_time: Histogram,
    /// Decisions the call carried.
    pub batch_size: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn counter(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let counter = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| misdefined(name, &e));
    register(registry, name, Box::new(counter.clone()));
    counter
}

fn plain_counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let counter = IntCounter::new(name, help).unwrap_or_else(|e| misdefined(name, &e));
    register(registry, name, Box::new(counter.clone()));
    counter
}

fn histogram(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    let histogram = HistogramVec::new(opts, labels).unwrap_or_else(|e| misdefined(name, &e));
    register(registry, name, Box::new(histogram.clone()));
    histogram
}

fn plain_histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Histogram {
    let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
        .unwrap_or_else(|e| misdefined(name, &e));
    register(registry, name, Box::new(histogram.clone()));
    histogram
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::new(name, help).unwrap_or_else(|e| misdefined(name, &e));
    register(registry, name, Box::new(gauge.clone()));
    gauge
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let gauge = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| misdefined(name, &e));
    register(registry, name, Box::new(gauge.clone()));
    gauge
}

fn register(registry: &Registry, name: &str, collector: Box<dyn prometheus::core::Collector>) {
    if let Err(error) = registry.register(collector) {
        misdefined(name, &error);
    }
}

/// Metric definitions are constants, so this can only be a bug, and the first test that touches
/// metrics (every e2e test does) catches it: never a runtime condition.
#[allow(clippy::panic)]
fn misdefined(name: &str, error: &prometheus::Error) -> ! {
    panic!("metric {name} is misdefined: {error}")
}

impl Metrics {
    fn new() -> Metrics {
        let r = Registry::new();
        let reloads =
            counter(&r, "gateway_config_reloads_total", "Config reloads by result (ok, failed).", &["result"]);
        // Present from the start, so `increase()` sees the first reload and alerts can match on 0.
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        let client_rejections = counter(
            &r,
            "gateway_client_rejections_total",
            "Request heads refused before routing, with no access log line: malformed (400), head_too_large (431), head_timeout (408); rapid_reset: HTTP/2 connections closed for resetting most of their streams; control_flood: HTTP/2 connections closed for sending PINGs, SETTINGS, PRIORITY or empty DATA frames faster than 100 a second after a burst of 1,000; per_ip_connections: connections closed at accept because their address had server.max_connections_per_ip open.",
            &["reason"],
        );
        for reason in CLIENT_REJECTION_REASONS {
            client_rejections.with_label_values(&[reason]);
        }
        let tls_handshake_failures = counter(
            &r,
            "gateway_tls_handshake_failures_total",
            "TLS handshakes that failed (error: refused or broken, plain HTTP on a TLS port included) or did not finish within handshake_timeout (timeout).",
            &["reason"],
        );
        Metrics {
            requests: counter(
                &r,
                "gateway_requests_total",
                "Responses by route (empty: no route matched) and status class (2xx, 4xx...).",
                &["route", "status"],
            ),
            duration: histogram(
                &r,
                "gateway_request_duration_seconds",
                "From the request's arrival to its response body's end, by route.",
                &["route"],
            ),
            identity_headers_stripped: counter(
                &r,
                "gateway_identity_headers_stripped_total",
                "Client-sent identity headers removed (zero trust), by route.",
                &["route"],
            ),
            upstream_errors: counter(
                &r,
                "gateway_upstream_errors_total",
                "Failed upstream requests by upstream and kind (connect, timeout, error).",
                &["upstream", "kind"],
            ),
            upstream_overloaded: counter(
                &r,
                "gateway_upstream_overloaded_total",
                "Requests answered 503 upstream_overloaded because the upstream had max_requests in flight.",
                &["upstream"],
            ),
            upstream_retries: counter(
                &r,
                "gateway_upstream_retries_total",
                "Requests sent again by upstream and reason: connect_failed (to another endpoint), \
                 connection_closed (on a new connection, after a reused one closed unanswered).",
                &["upstream", "reason"],
            ),
            endpoint_ejections: counter(
                &r,
                "gateway_upstream_endpoint_ejections_total",
                "Times an endpoint left the rotation after failed connects (passive_health), by upstream and endpoint.",
                &["upstream", "endpoint"],
            ),
            upstream_duration: histogram(
                &r,
                "gateway_upstream_response_seconds",
                "From sending the request upstream to its response head, by upstream.",
                &["upstream"],
            ),
            upstream_in_flight: gauge_vec(
                &r,
                "gateway_upstream_in_flight",
                "Requests sent to an upstream whose response has not ended yet (body included), by upstream.",
                &["upstream"],
            ),
            endpoint_in_rotation: gauge_vec(
                &r,
                "gateway_upstream_endpoint_in_rotation",
                "1 while an endpoint gets requests, 0 while passive_health keeps it out, by upstream and endpoint.",
                &["upstream", "endpoint"],
            ),
            breaker_state: gauge_vec(
                &r,
                "gateway_circuit_breaker_state",
                "Circuit breaker state by upstream: 0 closed, 1 open, 2 half-open.",
                &["upstream"],
            ),
            breaker_transitions: counter(
                &r,
                "gateway_circuit_breaker_transitions_total",
                "Circuit breaker transitions by upstream and the state entered (open, half_open, closed).",
                &["upstream", "to"],
            ),
            rate_limit_decisions: counter(
                &r,
                "gateway_rate_limit_decisions_total",
                "Rate-limit decisions by limit, decision (allowed, denied) and where counted (redis, local).",
                &["limit", "decision", "counted_in"],
            ),
            jwt_checks: counter(
                &r,
                "gateway_jwt_checks_total",
                "Token checks by provider and result (valid, absent, missing, malformed, invalid, insufficient, unavailable).",
                &["provider", "result"],
            ),
            reloads,
            client_rejections,
            // Resolved now, so both series are there (at 0) from the start.
            tls_handshake_errors: tls_handshake_failures.with_label_values(&["error"]),
            tls_handshake_timeouts: tls_handshake_failures.with_label_values(&["timeout"]),
            redis_connected: gauge(&r, "gateway_redis_connected", "1 while the rate-limit Redis connection is up."),
            client_connections: gauge(&r, "gateway_client_connections", "Client connections open now, every listener."),
            client_connections_max: gauge(
                &r,
                "gateway_client_connections_max",
                "The most client connections open at once (server.max_connections); new ones wait past it.",
            ),
            redis: RedisMetrics {
                call_time: plain_histogram(
                    &r,
                    "gateway_redis_call_seconds",
                    "Rate-limit calls to Redis (one per batch of decisions), from sending to the answer.",
                    REDIS_CALL_BUCKETS,
                ),
                batch_size: plain_histogram(
                    &r,
                    "gateway_redis_batch_decisions",
                    "Rate-limit decisions per Redis call: those a worker asked for while its previous call was out.",
                    REDIS_BATCH_BUCKETS,
                ),
            },
            access_log_dropped: plain_counter(
                &r,
                "gateway_access_log_dropped_lines_total",
                "Access log lines dropped because the writer could not keep up.",
            ),
            process: process::ProcessMetrics::register(&r),
            render: Mutex::new(()),
            registry: r,
        }
    }

    pub fn route(&self, route: &str) -> RouteMetrics {
        let status = |class: &str| self.requests.with_label_values(&[route, class]);
        RouteMetrics {
            responses: [status("1xx"), status("2xx"), status("3xx"), status("4xx"), status("5xx")],
            duration: self.duration.with_label_values(&[route]),
            identity_headers_stripped: self.identity_headers_stripped.with_label_values(&[route]),
        }
    }

    pub fn upstream(&self, upstream: &str) -> UpstreamMetrics {
        let errors = |kind: &str| self.upstream_errors.with_label_values(&[upstream, kind]);
        UpstreamMetrics {
            retries_after_connect_failure: self.upstream_retries.with_label_values(&[upstream, "connect_failed"]),
            retries_after_close: self.upstream_retries.with_label_values(&[upstream, "connection_closed"]),
            overloaded: self.upstream_overloaded.with_label_values(&[upstream]),
            connect_errors: errors("connect"),
            timeouts: errors("timeout"),
            errors: errors("error"),
            response_time: self.upstream_duration.with_label_values(&[upstream]),
            breaker_opened: self.breaker_transitions.with_label_values(&[upstream, "open"]),
            breaker_half_opened: self.breaker_transitions.with_label_values(&[upstream, "half_open"]),
            breaker_closed: self.breaker_transitions.with_label_values(&[upstream, "closed"]),
        }
    }

    /// An endpoint's series of ejections, present (at 0) from the start.
    pub fn endpoint_ejections(&self, upstream: &str, endpoint: &str) -> IntCounter {
        self.endpoint_ejections.with_label_values(&[upstream, endpoint])
    }

    pub fn rate_limit(&self, limit: &str) -> RateLimitMetrics {
        let decisions =
            |decision: &str, store: &str| self.rate_limit_decisions.with_label_values(&[limit, decision, store]);
        RateLimitMetrics {
            allowed_redis: decisions("allowed", "redis"),
            denied_redis: decisions("denied", "redis"),
            allowed_local: decisions("allowed", "local"),
            denied_local: decisions("denied", "local"),
        }
    }

    /// The counter for one token check result of `provider`.
    pub fn jwt_check(&self, provider: &str, result: &str) -> IntCounter {
        self.jwt_checks.with_label_values(&[provider, result])
    }

    pub fn reload(&self, ok: bool) {
        self.reloads.with_label_values(&[if ok { "ok" } else { "failed" }]).inc();
    }

    /// A request head refused by the HTTP layer before any routing (see `server::conn`); `reason`
    /// is one of [`CLIENT_REJECTION_REASONS`].
    pub fn client_rejected(&self, reason: &str) {
        self.client_rejections.with_label_values(&[reason]).inc();
    }

    /// Drops the series of the routes, upstreams, endpoints, rate limits and JWT providers `live`
    /// no longer has. A config generator that names them anew on each reload (`route-v123`) would
    /// otherwise add series for ever: 118 series and 52 KB per reload, in a probe, and seconds of
    /// CPU per scrape within weeks. A request still in flight on the old config counts into a
    /// handle no longer exported; a name that comes back starts again from 0, which Prometheus
    /// takes as a counter reset.
    pub fn retain(&self, live: &LiveNames<'_>) {
        let route = |labels: &Labels<'_>| labels.get("route").is_none_or(|name| live.routes.contains(name));
        let upstream =
            |labels: &Labels<'_>| labels.get("upstream").is_none_or(|name| live.upstreams.contains_key(name));
        let endpoint = |labels: &Labels<'_>| match (labels.get("upstream"), labels.get("endpoint")) {
            (Some(upstream), Some(endpoint)) => {
                live.upstreams.get(upstream).is_some_and(|e| e.iter().any(|a| a == endpoint))
            }
            _ => true,
        };
        let limit = |labels: &Labels<'_>| labels.get("limit").is_none_or(|name| live.rate_limits.contains(name));
        let provider = |labels: &Labels<'_>| labels.get("provider").is_none_or(|name| live.providers.contains(name));
        retain(&self.requests, route);
        retain(&self.duration, route);
        retain(&self.identity_headers_stripped, route);
        retain(&self.upstream_errors, upstream);
        retain(&self.upstream_retries, upstream);
        retain(&self.upstream_overloaded, upstream);
        retain(&self.upstream_duration, upstream);
        retain(&self.breaker_transitions, upstream);
        retain(&self.endpoint_ejections, endpoint);
        retain(&self.rate_limit_decisions, limit);
        retain(&self.jwt_checks, provider);
    }

    /// A TLS handshake that failed, or ran past the listener's `handshake_timeout` (see `server::conn`).
    pub fn tls_handshake_failed(&self, timed_out: bool) {
        if timed_out { &self.tls_handshake_timeouts } else { &self.tls_handshake_errors }.inc();
    }

    /// An access log line dropped because its writer fell behind. Counted here, not per log: a
    /// reload that opens another log must not take the count back.
    pub fn access_log_line_dropped(&self) {
        self.access_log_dropped.inc();
    }

    /// The text exposition, with the gauges that are read off the running state set first.
    pub fn render(&self, readings: &Readings<'_>) -> String {
        // Nothing is left half-done by a panic while held: recover from poisoning.
        let _scrape = self.render.lock().unwrap_or_else(PoisonError::into_inner);
        self.redis_connected.set(i64::from(readings.redis_connected.unwrap_or(false)));
        self.client_connections.set(i64::try_from(readings.client_connections).unwrap_or(i64::MAX));
        self.client_connections_max.set(i64::try_from(readings.client_connections_max).unwrap_or(i64::MAX));
        // Upstreams a reload removed must not linger with their last count.
        self.upstream_in_flight.reset();
        for (upstream, in_flight) in &readings.upstream_in_flight {
            self.upstream_in_flight.with_label_values(&[upstream]).set(i64::try_from(*in_flight).unwrap_or(i64::MAX));
        }
        self.endpoint_in_rotation.reset();
        for (upstream, endpoint, in_rotation) in &readings.endpoints_in_rotation {
            self.endpoint_in_rotation.with_label_values(&[upstream, endpoint]).set(i64::from(*in_rotation));
        }
        // Read off the breakers in use now: a reload may have replaced or removed the one that
        // last changed state, and an idle open breaker half-opens with no request to say so.
        self.breaker_state.reset();
        for (upstream, state) in &readings.breaker_states {
            self.breaker_state.with_label_values(&[upstream]).set(breaker_state_value(*state));
        }
        self.process.update();
        let mut families = self.registry.gather();
        // Without `redis` there is no connection to be up or down: a 0 would page someone.
        if readings.redis_connected.is_none() {
            families.retain(|family| family.name() != "gateway_redis_connected");
        }
        let mut out = Vec::with_capacity(16 * 1024);
        if let Err(error) = prometheus::TextEncoder::new().encode(&families, &mut out) {
            tracing::warn!(%error, "cannot encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// A route's handles.
#[derive(Debug, Clone)]
pub struct RouteMetrics {
    responses: [IntCounter; 5],
    duration: Histogram,
    pub identity_headers_stripped: IntCounter,
}

impl RouteMetrics {
    /// One finished request.
    pub fn record(&self, status: u16, duration: Duration) {
        let class = usize::from(status / 100).clamp(1, 5) - 1;
        if let Some(counter) = self.responses.get(class) {
            counter.inc();
        }
        self.duration.observe(duration.as_secs_f64());
    }
}

/// An upstream's handles.
#[derive(Debug, Clone)]
pub struct UpstreamMetrics {
    pub retries_after_connect_failure: IntCounter,
    pub retries_after_close: IntCounter,
    pub overloaded: IntCounter,
    pub connect_errors: IntCounter,
    pub timeouts: IntCounter,
    pub errors: IntCounter,
    pub response_time: Histogram,
    breaker_opened: IntCounter,
    breaker_half_opened: IntCounter,
    breaker_closed: IntCounter,
}

impl UpstreamMetrics {
    /// Counts a transition of the breaker into `state` (its gauge is read at scrape time).
    pub fn breaker_entered(&self, state: State) {
        let counter = match state {
            State::Closed => &self.breaker_closed,
            State::Open => &self.breaker_opened,
            State::HalfOpen => &self.breaker_half_opened,
        };
        counter.inc();
    }
}

/// `gateway_circuit_breaker_state`: an upstream without a breaker always forwards, as a closed one does.
fn breaker_state_value(state: Option<State>) -> i64 {
    match state {
        None | Some(State::Closed) => 0,
        Some(State::Open) => 1,
        Some(State::HalfOpen) => 2,
    }
}

/// The names a config has, for [`Metrics::retain`]: upstreams with the endpoint authorities their
/// series are labelled with.
#[derive(Debug, Default)]
pub struct LiveNames<'a> {
    pub routes: Vec<&'a str>,
    pub upstreams: HashMap<&'a str, Vec<String>>,
    pub rate_limits: Vec<&'a str>,
    pub providers: Vec<&'a str>,
}

/// A series' labels, by name.
type Labels<'a> = HashMap<&'a str, &'a str>;

/// Removes the series of `vec` whose labels `keep` refuses.
fn retain<T: MetricVecBuilder>(vec: &MetricVec<T>, keep: impl Fn(&Labels<'_>) -> bool) {
    for family in vec.collect() {
        for metric in family.get_metric() {
            let labels: Labels<'_> = metric.get_label().iter().map(|pair| (pair.name(), pair.value())).collect();
            if !keep(&labels) {
                // Gone already only if another reload removed it meanwhile.
                let _ = vec.remove(&labels);
            }
        }
    }
}

/// A rate limit's handles.
#[derive(Debug, Clone)]
pub struct RateLimitMetrics {
    pub allowed_redis: IntCounter,
    pub denied_redis: IntCounter,
    pub allowed_local: IntCounter,
    pub denied_local: IntCounter,
}

#[cfg(test)]
mod tests;
