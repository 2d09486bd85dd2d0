//! The upstream leg: sending the request to an endpoint (once more to another when the first could
//! not be connected to), telling the breaker how it went, and sorting what failed into the
//! gateway's errors.

use std::future::Future;
use std::time::Duration;

use http::{header, Request, Response};
use http_body::Body as _;
use hyper::body::Incoming;

use super::record::Trace;
use super::request_body::ClientBodyError;
use super::{causes, only_chunked, BodyProgress, ProxyError, UpstreamRequestBody};
use crate::runtime::RouteRuntime;
use crate::upstream::breaker::Permit;
use crate::upstream::{Endpoint, InFlight, Lease, SendError};

/// Sends the request, and tells the breaker how it went. When the endpoint could not be connected
/// to, a request without a body goes once more, to the upstream's next endpoint: the first never
/// received it, so that is safe whatever the method (and the request itself comes back, so
/// nothing is copied up front). The breaker is told the request's outcome once, whichever
/// endpoint served it: a connect failure another endpoint makes good is that endpoint's (passive
/// health counts it), not the upstream's, and counted too it would open the breaker of an upstream
/// that served every request. Returns the response, the endpoint's slot and the connection (none
/// for an upgrade, whose connection becomes the tunnel).
#[expect(clippy::manual_async_fn, reason = "an async fn would hold the request twice")]
pub(super) fn forward<'a>(
    route: &'a RouteRuntime,
    mut in_flight: InFlight,
    request: Request<UpstreamRequestBody>,
    permit: Option<Permit>,
    upgrade: bool,
    trace: &'a mut Trace,
) -> impl Future<Output = Result<(Response<Incoming>, InFlight, Option<Lease>), ProxyError>> + Send + 'a {
    async move {
        let upstream = &route.upstream;
        trace.endpoint = Some(in_flight.endpoint().authority.clone());
        let (mut sent, unsent) = send(route, &in_flight, request, upgrade).await;
        let again = unsent.filter(|request| !upgrade && request.body().is_end_stream());
        // Asked in turn: only a request that can go again takes a slot on another endpoint.
        let other = again.as_ref().and_then(|_| upstream.pick_other(in_flight.endpoint()));
        if let (Some(mut again), Some(other)) = (again, other) {
            retarget(&mut again, in_flight.endpoint(), other.endpoint());
            upstream.metrics.retries_after_connect_failure.inc();
            tracing::debug!(upstream = &*upstream.name, from = %in_flight.endpoint().authority, to = %other.endpoint().authority, "connect failed; sending to another endpoint");
            in_flight = other;
            trace.endpoint = Some(in_flight.endpoint().authority.clone());
            // Boxed: the rare path keeps the common one's future small.
            (sent, _) = Box::pin(send(route, &in_flight, *again, false)).await;
        }
        let owed = tell_breaker(route, permit, &sent, upgrade);
        let Sent { response, lease, upstream_time } = sent?;
        trace.upstream_time = Some(upstream_time);
        trace.owed = owed;
        Ok((response, in_flight, lease))
    }
}

/// An upstream's answer: the response head, the connection it came on, how long it took.
struct Sent {
    response: Response<Incoming>,
    lease: Option<Lease>,
    upstream_time: Duration,
}

/// Tells the upstream's breaker (if any) how a permitted request went. A good response head is
/// not the whole answer: the body may yet break off, so its permit comes back, to be told when the
/// body ends. A probe's and an upgrade's are told now: a long stream or tunnel would hold them.
fn tell_breaker(
    route: &RouteRuntime,
    permit: Option<Permit>,
    sent: &Result<Sent, ProxyError>,
    upgrade: bool,
) -> Option<Permit> {
    match upstream_succeeded(sent) {
        Some(true) if !upgrade && permit.as_ref().is_some_and(|permit| !permit.is_probe()) => permit,
        Some(success) => {
            route.upstream.record(permit, success);
            None
        }
        None => None,
    }
}

/// Points a request built for endpoint `from` at endpoint `to`: its Host header, when it named
/// `from` (routes that do not preserve the client's Host).
fn retarget(request: &mut Request<UpstreamRequestBody>, from: &Endpoint, to: &Endpoint) {
    if request.headers().get(header::HOST) == Some(&from.host) {
        request.headers_mut().insert(header::HOST, to.host.clone());
    }
}

/// Sends the request within the route's timeout and classifies failures; with a connect failure,
/// the request, which never left.
async fn send(
    route: &RouteRuntime,
    in_flight: &InFlight,
    request: Request<UpstreamRequestBody>,
    upgrade: bool,
) -> (Result<Sent, ProxyError>, Option<Box<Request<UpstreamRequestBody>>>) {
    let upstream = || route.upstream.name.to_string();
    let metrics = &route.upstream.metrics;
    let endpoint = in_flight.endpoint();
    let body = request.body().progress().cloned();
    let started = tokio::time::Instant::now();
    let deadline = started + route.timeout;
    let sent = match upgrade {
        true => {
            Box::pin(route.upstream.send_upgrade(endpoint, request, deadline)).await.map(|response| (response, None))
        }
        false => {
            route.upstream.send(endpoint, request, deadline).await.map(|(response, lease)| (response, Some(lease)))
        }
    };
    match &sent {
        Err(SendError::Connect { .. }) => route.upstream.connect_failed(endpoint),
        Err(SendError::Http(error)) if handshake_refused(error) => route.upstream.connect_failed(endpoint),
        Err(SendError::TimedOut { connected: false } | SendError::NoRoom) => {}
        Ok(_) | Err(SendError::Http(_) | SendError::TimedOut { connected: true }) => route.upstream.connected(endpoint),
    }
    let result = match sent {
        // The client's slow upload, not the upstream: a 408, and nothing for the breaker.
        Err(SendError::TimedOut { .. }) if body.as_ref().is_some_and(BodyProgress::waiting_for_client) => {
            Err(ProxyError::ClientBodyTimeout { timeout: route.timeout })
        }
        Err(SendError::TimedOut { .. }) => {
            metrics.timeouts.inc();
            Err(ProxyError::UpstreamTimeout { upstream: upstream(), timeout: route.timeout })
        }
        Err(SendError::NoRoom) => Err(ProxyError::AtCapacity),
        Ok((response, _)) if !upgrade && response.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
            // Passed on, it would switch the client's connection to a protocol nobody tunnels.
            metrics.errors.inc();
            let source = "switched protocols on a request that asked for no WebSocket upgrade".into();
            Err(ProxyError::Upstream { upstream: upstream(), source })
        }
        // RFC 9110 section 15: status codes run from 100 to 599; hyper reads any three digits.
        Ok((response, _)) if response.status().as_u16() > 599 => {
            metrics.errors.inc();
            let source = format!("answered with status {}, outside 100 to 599", response.status().as_u16()).into();
            Err(ProxyError::Upstream { upstream: upstream(), source })
        }
        // hyper takes off the chunks only: what another coding left would reach the client
        // undecodable, with nothing to say so (a length or chunks tell it that no coding is left).
        Ok((response, _)) if response.body().size_hint().exact().is_none() && !only_chunked(response.headers()) => {
            metrics.errors.inc();
            let source = "answered with a transfer coding other than chunked, which the gateway does not decode".into();
            Err(ProxyError::Upstream { upstream: upstream(), source })
        }
        Ok((response, lease)) => {
            let upstream_time = started.elapsed();
            metrics.response_time.observe(upstream_time.as_secs_f64());
            Ok(Sent { response, lease, upstream_time })
        }
        Err(SendError::Connect { error, unsent }) => {
            metrics.connect_errors.inc();
            let error = ProxyError::UpstreamConnect {
                upstream: upstream(),
                endpoint: endpoint.authority.to_string(),
                source: error,
            };
            return (Err(error), Some(unsent));
        }
        Err(SendError::Http(error)) if caused_by::<http_body_util::LengthLimitError>(&error) => {
            Err(ProxyError::PayloadTooLarge { limit: route.max_body_size })
        }
        Err(SendError::Http(error)) if caused_by::<ClientBodyError>(&error) => {
            tracing::debug!(error = %causes(&error), "the client's request body failed");
            Err(if client_went_away(&error) { ProxyError::ClientClosed } else { ProxyError::ClientBody })
        }
        Err(SendError::Http(error)) if handshake_refused(&error) => {
            metrics.connect_errors.inc();
            let endpoint = endpoint.authority.to_string();
            Err(ProxyError::UpstreamConnect { upstream: upstream(), endpoint, source: Box::new(error) })
        }
        Err(SendError::Http(error)) => {
            metrics.errors.inc();
            Err(ProxyError::Upstream { upstream: upstream(), source: Box::new(error) })
        }
    };
    (result, None)
}

/// Whether the upstream refused the TLS handshake: with TLS 1.3 the client's side of it ends
/// before the server has checked the client (its certificate, above all), so a server that refuses
/// says so with an alert to the first request. That is a failed connect (passive health counts it),
/// not a broken exchange: otherwise an endpoint that refuses the gateway would stay in rotation and
/// fail its share of requests for ever.
fn handshake_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    use rustls::AlertDescription::{
        AccessDenied, BadCertificate, CertificateExpired, CertificateRequired, CertificateRevoked, CertificateUnknown,
        HandshakeFailure, UnknownCA, UnsupportedCertificate,
    };
    let mut current = Some(error);
    while let Some(e) = current {
        // tokio-rustls hands rustls's error over inside an io::Error, whose `source` skips it.
        let inner = e.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        let e_or_inner: &(dyn std::error::Error + 'static) = match inner {
            Some(inner) => inner,
            None => e,
        };
        if let Some(rustls::Error::AlertReceived(alert)) = e_or_inner.downcast_ref::<rustls::Error>() {
            return matches!(
                alert,
                CertificateRequired
                    | BadCertificate
                    | UnsupportedCertificate
                    | CertificateRevoked
                    | CertificateExpired
                    | CertificateUnknown
                    | UnknownCA
                    | AccessDenied
                    | HandshakeFailure
            );
        }
        current = e.source();
    }
    false
}

/// Whether the upstream did its part, for its breaker: a gateway-side refusal (a body over the
/// limit) or the client's failure (its body ended early, or came too slowly) says nothing about it
/// (`None`); 502, 503 and 504 from it count as failures.
fn upstream_succeeded(sent: &Result<Sent, ProxyError>) -> Option<bool> {
    match sent {
        Ok(sent) => Some(!matches!(sent.response.status().as_u16(), 502..=504)),
        Err(
            ProxyError::PayloadTooLarge { .. }
            | ProxyError::ClientBody
            | ProxyError::ClientClosed
            | ProxyError::ClientBodyTimeout { .. }
            | ProxyError::AtCapacity,
        ) => None,
        Err(_) => Some(false),
    }
}

/// Whether a request body failed because the client went away (hung up before its end, or reset
/// its HTTP/2 stream) rather than because it was malformed (a bad chunk, which hyper reports as
/// invalid data).
fn client_went_away(error: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset, UnexpectedEof};
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if matches!(io.kind(), UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe) {
                return true;
            }
        }
        if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_incomplete_message) {
            return true;
        }
        if e.downcast_ref::<h2::Error>().is_some_and(|h2| h2.is_reset() && h2.is_remote()) {
            return true;
        }
        current = e.source();
    }
    false
}

fn caused_by<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(error);
    while let Some(e) = current {
        if e.is::<E>() {
            return true;
        }
        current = e.source();
    }
    false
}
