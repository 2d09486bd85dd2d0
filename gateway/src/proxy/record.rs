//! The record phase: when a response body ends (or the client goes away), the route's metrics and
//! the access log line.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use http::uri::Authority;
use http::{header, HeaderValue, Method, Request, Version};

use super::{trace_context, Connection, ProxyError};
use crate::access_log::Entry;
use crate::runtime::{RouteRuntime, Snapshot};
use crate::upstream::breaker::Permit;

/// What the request path learned along the way.
#[derive(Debug, Default)]
pub(super) struct Trace {
    /// Index into the snapshot's routes, once one matched.
    pub route: Option<usize>,
    pub endpoint: Option<Authority>,
    /// Until the upstream's response head arrived.
    pub upstream_time: Option<Duration>,
    /// The breaker's permit for a response whose head was fine: its outcome is told when the body
    /// ends, as the upstream may yet break it off.
    pub owed: Option<Permit>,
}

/// What the access log needs of the request, taken before the request moves on (only when the
/// log is on: otherwise nothing is copied).
#[derive(Debug)]
pub(super) struct Seen {
    time: SystemTime,
    client_ip: IpAddr,
    tls: bool,
    method: Method,
    host: Option<HeaderValue>,
    path: String,
    version: Version,
    user_agent: Option<HeaderValue>,
    traceparent: Option<HeaderValue>,
}

impl Seen {
    pub fn of<B>(request: &Request<B>, conn: &Connection, client_ip: IpAddr) -> Seen {
        Seen {
            time: SystemTime::now(),
            client_ip: client_ip.to_canonical(),
            tls: conn.proto == "https",
            method: request.method().clone(),
            host: super::request_host(request),
            path: request.uri().path().to_owned(),
            version: request.version(),
            user_agent: request.headers().get(header::USER_AGENT).cloned(),
            traceparent: request.headers().get(&trace_context::TRACEPARENT).cloned(),
        }
    }
}

/// Everything the record phase needs. Made when the request arrives and handed to the response
/// body; whoever drops it last records: the body when it ends or the client goes away, or the
/// request path itself when the client left before the response (status 499, as nginx logs it).
#[derive(Debug)]
pub(super) struct Record {
    snapshot: Arc<Snapshot>,
    started: Instant,
    trace: Trace,
    request_id: HeaderValue,
    seen: Option<Box<Seen>>,
    status: u16,
    /// The gateway's error code when it answered itself.
    error: Option<&'static str>,
    bytes_sent: u64,
    completed: bool,
    /// The upstream broke off the body or left it waiting: a failure for its breaker.
    upstream_failed: bool,
    /// The route's metrics were recorded already (an upgrade: at its `101`).
    counted: bool,
}

impl Record {
    pub(super) fn start(
        snapshot: Arc<Snapshot>,
        started: Instant,
        request_id: HeaderValue,
        seen: Option<Box<Seen>>,
    ) -> Record {
        // What is recorded unless a response comes: the client went away first.
        let (status, error) = ProxyError::ClientClosed.status_and_code();
        Record {
            snapshot,
            started,
            trace: Trace::default(),
            request_id,
            seen,
            status: status.as_u16(),
            error: Some(error),
            bytes_sent: 0,
            completed: false,
            upstream_failed: false,
            counted: false,
        }
    }

    /// The snapshot this request uses throughout, and the trace the request path fills in.
    pub(super) fn parts(&mut self) -> (&Snapshot, &mut Trace) {
        (&self.snapshot, &mut self.trace)
    }

    /// The response is ready: what to record unless the body says otherwise.
    pub(super) fn responded(&mut self, status: u16, error: Option<&'static str>) {
        self.status = status;
        self.error = error;
    }

    /// Body bytes handed to the connection.
    pub(super) fn sent(&mut self, bytes: u64) {
        if !self.client_left() {
            self.bytes_sent += bytes;
        }
    }

    /// The answer is a 499: the client went away first, so what is written reaches nobody and
    /// is logged as not sent, as nginx does.
    fn client_left(&self) -> bool {
        self.error == Some(ProxyError::ClientClosed.status_and_code().1)
    }

    /// The upstream left the body waiting past the route's timeout: an upstream timeout in the
    /// metrics, the log line and the breaker's count (the status stays what was already sent).
    pub(super) fn upstream_body_timed_out(&mut self) {
        self.error = Some("upstream_timeout");
        self.upstream_failed = true;
        let Some(route) = self.route() else { return };
        route.upstream.metrics.timeouts.inc();
        let request_id = self.request_id.to_str().unwrap_or("");
        tracing::warn!(request_id, upstream = &*route.upstream.name, timeout = ?route.timeout, "the upstream stopped sending the response body; the response was cut off");
    }

    /// The upstream broke off the body (a reset, fewer bytes than it announced, broken chunks): an
    /// upstream error in the metrics, the log line and the breaker's count.
    pub(super) fn upstream_body_broke(&mut self, error: &(dyn std::error::Error + 'static)) {
        self.error = Some("upstream_error");
        self.upstream_failed = true;
        let Some(route) = self.route() else { return };
        route.upstream.metrics.errors.inc();
        let request_id = self.request_id.to_str().unwrap_or("");
        let cause = super::causes(error);
        tracing::warn!(request_id, upstream = &*route.upstream.name, %error, cause, "the upstream broke off the response body; the response was cut off");
    }

    /// The gateway stopped with this tunnel open: its doing, not the client's. Tunnels are never
    /// drained, so this holds whether or not the drain ran out of time.
    pub(super) fn cut_by_shutdown(&mut self) {
        self.error = Some(ProxyError::GatewayShutdown.status_and_code().1);
    }

    fn shut_down(&self) -> bool {
        self.error == Some(ProxyError::GatewayShutdown.status_and_code().1)
    }

    /// The body reached its end.
    pub(super) fn completed(&mut self) {
        self.completed = !self.client_left();
    }

    /// Records the route's metrics now, not at the drop: a tunnel's session may last hours, which
    /// the request duration histogram is not for. The access log line still waits for the drop.
    pub(super) fn count_now(&mut self) {
        self.count(self.started.elapsed());
        self.counted = true;
    }

    /// The route the request matched, if it got that far.
    fn route(&self) -> Option<&RouteRuntime> {
        self.trace.route.and_then(|index| self.snapshot.routes.get(index))
    }

    fn count(&self, duration: Duration) {
        match self.route() {
            Some(route) => route.metrics.record(self.status, duration),
            None => self.snapshot.unmatched.record(self.status, duration),
        }
    }
}

impl Drop for Record {
    fn drop(&mut self) {
        if !self.completed && crate::server::drain::timed_out() && !self.shut_down() {
            // The gateway closed the connection, not the client: a 503 if nothing had been sent.
            let (status, error) = ProxyError::DrainTimeout.status_and_code();
            if self.client_left() {
                self.status = status.as_u16();
            }
            self.error = Some(error);
        }
        let duration = self.started.elapsed();
        if !self.counted {
            self.count(duration);
        }
        let owed = self.trace.owed.take();
        let route = self.route();
        if let (Some(route), Some(permit)) = (route, owed) {
            route.upstream.record(Some(permit), !self.upstream_failed);
        }
        let (Some(log), Some(seen)) = (&self.snapshot.access_log, &self.seen) else { return };
        let endpoint = self.trace.endpoint.as_ref().map(Authority::as_str);
        log.log(&Entry {
            time: seen.time,
            request_id: self.request_id.to_str().unwrap_or(""),
            trace_id: seen.traceparent.as_ref().and_then(trace_context::trace_id),
            client_ip: seen.client_ip,
            method: &seen.method,
            host: seen.host.as_ref().and_then(|h| h.to_str().ok()),
            path: &seen.path,
            protocol: seen.version,
            tls: seen.tls,
            status: self.status,
            route: route.map(|r| &*r.name),
            upstream: route.filter(|_| endpoint.is_some()).map(|r| &*r.upstream.name),
            endpoint,
            error: self.error,
            duration,
            upstream_duration: self.trace.upstream_time,
            bytes_sent: self.bytes_sent,
            completed: self.completed,
            // UTF-8, not only the visible ASCII `to_str` takes: browsers and apps send names in their own script.
            user_agent: seen.user_agent.as_ref().and_then(|ua| std::str::from_utf8(ua.as_bytes()).ok()),
        });
    }
}
