//! The request path: one function, `handle`, runs the phases in a fixed, visible order.
//!
//! request id -> identity headers out -> route -> auth -> rate limit -> body limit -> breaker permit
//! -> pick endpoint -> rewrite + headers -> forward -> breaker outcome -> response headers -> record
//! (metrics, access log, when the response body ends).

mod body;
mod error;
mod forward;
mod headers;
pub(crate) mod path;
mod record;
mod redirect;
mod request_body;
mod trace_context;
mod upgrade;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use hyper::body::Incoming;

pub use body::ProxyBody;
pub use error::ProxyError;
use forward::forward;
pub use headers::{remove_hop_by_hop, request_id, set_forwarding, Client, IdentityHeaders, Message};
use record::{Record, Seen, Trace};
pub use request_body::{copy_without_body, BodyProgress, UpstreamRequestBody};

use crate::auth::Claims;
use crate::limit::{Decision, RateLimit};
use crate::runtime::{RouteRuntime, Snapshot};
use crate::upstream::{Endpoint, Refusal};

/// What the gateway knows about the connection a request arrived on, and its listener's rules.
#[derive(Debug, Clone)]
pub struct Connection {
    pub peer: SocketAddr,
    /// `http` or `https`.
    pub proto: &'static str,
    /// Answer every request with a redirect to `https://` on this port instead of proxying it.
    pub redirect_https: Option<u16>,
    /// `Strict-Transport-Security` for every response (HTTPS listeners only, RFC 6797).
    pub hsts: Option<HeaderValue>,
}

/// Proxies one request with the given snapshot. Never fails: errors become JSON responses.
///
/// A plain function around an `async move` block, as is `proxy`: an `async fn` keeps a `mut`
/// argument apart from the local it moves into, so the request would be held, and copied, twice.
#[expect(clippy::manual_async_fn, reason = "an async fn would hold the request twice")]
pub fn handle(
    snapshot: Arc<Snapshot>,
    conn: Connection,
    mut request: Request<Incoming>,
) -> impl Future<Output = Response<ProxyBody>> + Send {
    async move {
        let started = Instant::now();
        let request_id = headers::request_id(request.headers());
        // Counted before the gateway adds a `traceparent` of its own.
        let too_many_headers = request.headers().len() > snapshot.server.max_headers;
        trace_context::ensure(request.headers_mut());
        let method = request.method().clone();
        let caller = caller(&snapshot, &conn, request.headers());
        let seen = snapshot.access_log.as_ref().map(|_| Box::new(Seen::of(&request, &conn, caller.ip)));
        // Records the request when dropped: with the response body, or here if the client leaves first.
        let mut record = Record::start(snapshot, started, request_id.clone(), seen);
        let (snapshot, trace) = record.parts();
        let result = match conn.redirect_https {
            _ if too_many_headers => Err(ProxyError::TooManyHeaders { limit: snapshot.server.max_headers }),
            Some(port) => redirect::to_https(&request, port),
            None => proxy(snapshot, &conn, caller, request, &request_id, trace).await,
        };
        let (mut response, error) = match result {
            Ok(response) => (response, None),
            Err(error) => {
                let (status, code) = error.status_and_code();
                let request_id_text = request_id.to_str().unwrap_or("");
                // The gateway's or an upstream's failures are worth a warning; a client's own mistakes
                // (no route, a bad token, over budget) are routine, and a flood of them must not
                // flood the log. Nor must load shed on purpose: the breaker and `max_requests` say
                // so themselves, once.
                let shed = matches!(
                    error,
                    ProxyError::CircuitOpen { .. } | ProxyError::UpstreamOverloaded { .. } | ProxyError::AtCapacity
                );
                if status.is_server_error() && !shed {
                    let cause = causes(&error);
                    tracing::warn!(request_id = request_id_text, %method, status = status.as_u16(), code, %error, cause, "request failed");
                } else {
                    tracing::debug!(request_id = request_id_text, %method, status = status.as_u16(), code, %error, "request refused");
                }
                (error.into_response(&request_id), Some(code))
            }
        };
        headers::set_request_id(response.headers_mut(), request_id);
        if let Some(hsts) = conn.hsts {
            response.headers_mut().insert(header::STRICT_TRANSPORT_SECURITY, hsts);
        }
        record.responded(response.status().as_u16(), error);
        // hyper sends a HEAD response's head alone and never polls its body: the head ends it.
        if method == http::Method::HEAD {
            record.completed();
        }
        response.body_mut().record(record);
        response
    }
}

#[expect(clippy::manual_async_fn, reason = "an async fn would hold the request twice")]
fn proxy<'a>(
    snapshot: &'a Snapshot,
    conn: &'a Connection,
    caller: Caller,
    mut request: Request<Incoming>,
    request_id: &'a HeaderValue,
    trace: &'a mut Trace,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> + Send + 'a {
    async move {
        // identity: a client must never tell an upstream who it is; only a checked token may
        let stripped = headers::remove_identity(request.headers_mut(), &snapshot.identity_headers);

        check_method(request.method())?;

        // route
        // First: an authority-form target (`GET a:80`) has a host but no path.
        if !request.uri().path().starts_with('/') {
            return Err(ProxyError::BadRequest("the request target must be an absolute path"));
        }
        // A cheap reference-counted copy: the request itself moves on below.
        let host_value = single_host(&request)?;
        let host = host_value.as_ref().and_then(|h| h.to_str().ok());
        let normalized = path::normalize(request.uri().path()).map_err(ProxyError::BadRequest)?;
        if let Some(path) = &normalized.path {
            set_path(request.uri_mut(), path)?;
        }
        check_head(&request)?;
        // Before routing: a header the client names in `Connection` goes no further, so a route's
        // header condition must not hold on it either (the upstream would never see it).
        let upgrade = headers::is_upgrade_request(request.headers()) && request.version() == Version::HTTP_11;
        let message = if upgrade { headers::Message::Upgrade } else { headers::Message::Request };
        headers::remove_hop_by_hop(request.headers_mut(), message);
        let path = request.uri().path();
        let found = snapshot.router.find(host, path, request.method(), request.headers());
        if let Some(servlet_path) = &normalized.without_parameters {
            if snapshot.router.find(host, servlet_path, request.method(), request.headers()) != found {
                return Err(ProxyError::BadRequest(
                    "a ';' path parameter changes which route this path belongs to (servlet containers drop it)",
                ));
            }
        }
        let index = found.ok_or(ProxyError::NoRoute)?;
        let route = snapshot.routes.get(index).ok_or(ProxyError::NoRoute)?;
        trace.route = Some(index);
        if normalized.encoded_slash && !route.allow_encoded_slashes {
            return Err(ProxyError::BadRequest(
                "the path has an encoded slash (%2F or %5C), which this route does not take (allow_encoded_slashes)",
            ));
        }
        // An upstream answering TRACE echoes the request back, cookies and tokens with it
        // (cross-site tracing); nginx refuses it too. A route that names it in `methods` wants it.
        if request.method() == http::Method::TRACE && !route.allows_trace {
            return Err(ProxyError::MethodNotAllowed("TRACE is not forwarded unless the route lists it in `methods`"));
        }
        if stripped > 0 {
            route.metrics.identity_headers_stripped.inc_by(stripped);
            tracing::debug!(route = &*route.name, stripped, "removed client-sent identity headers");
        }

        // rate limit by address or for everyone: before auth, so floods of bad tokens are limited too
        let mut rate_limit = match route.rate_limit.as_deref().filter(|limit| !limit.keyed_by_claim()) {
            Some(limit) => Some(draw(limit, caller.ip, None).await?),
            None => None,
        };

        // auth: check the token; the Authorization header itself travels on untouched
        let claims = match &route.auth {
            Some(auth) => Box::pin(auth.check(request.headers())).await.map_err(ProxyError::Auth)?,
            None => None,
        };

        // rate limit by a claim: after auth, so a user's budget counts only that user's tokens
        if let Some(limit) = route.rate_limit.as_deref().filter(|limit| limit.keyed_by_claim()) {
            rate_limit = Some(draw(limit, caller.ip, claims.as_deref()).await?);
        }

        // body limit: refuse early when the declared length is already too large
        if declared_length(&request).is_some_and(|len| len > route.max_body_size) {
            return Err(ProxyError::PayloadTooLarge { limit: route.max_body_size });
        }

        // upstream: the breaker's permission, then an endpoint
        let upstream = &route.upstream;
        let permit = (upstream.permit())
            .map_err(|retry_after| ProxyError::CircuitOpen { upstream: upstream.name.to_string(), retry_after })?;
        let in_flight = upstream.pick().map_err(|refusal| match refusal {
            Refusal::NoEndpoint => ProxyError::NoEndpoint { upstream: upstream.name.to_string() },
            Refusal::Overloaded { max_requests } => {
                ProxyError::UpstreamOverloaded { upstream: upstream.name.to_string(), max_requests }
            }
        })?;

        // forward
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut request));
        let client = Client {
            ip: conn.peer.ip(),
            trusted: caller.peer_trusted,
            proto: conn.proto,
            host: host.and(host_value.as_ref()),
        };
        let upstream_request = upstream_request(request, route, in_flight.endpoint(), client, request_id)?;
        let (mut response, in_flight, lease) =
            forward(route, in_flight, upstream_request, permit, upgrade, trace).await?;

        // response
        if let Some(client_upgrade) =
            client_upgrade.filter(|_| response.status() == http::StatusCode::SWITCHING_PROTOCOLS)
        {
            let idle_timeout = snapshot.server.idle_timeout;
            let (record_to, record) = tokio::sync::oneshot::channel();
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            upgrade::tunnel(client_upgrade, upstream_upgrade, idle_timeout, request_id.clone(), record);
            let (parts, _) = response.into_parts();
            return Ok(Response::from_parts(parts, ProxyBody::tunnel(record_to)));
        }
        let (mut parts, body) = response.into_parts();
        // The client's connection speaks HTTP/1.1 (hyper downgrades for an HTTP/1.0 client): an
        // HTTP/1.0 upstream's status line would turn it into an HTTP/1.0 one, closed after this.
        parts.version = Version::HTTP_11;
        headers::remove_hop_by_hop(&mut parts.headers, headers::Message::Response);
        headers::single_content_length(&mut parts.headers);
        if let Some(decision) = &rate_limit {
            headers::set_rate_limit(&mut parts.headers, decision);
        }
        Ok(Response::from_parts(parts, ProxyBody::upstream(body, in_flight, lease, route.timeout)))
    }
}

/// One request from `limit`'s budget: the decision when allowed, a 429 otherwise.
async fn draw(limit: &RateLimit, client_ip: IpAddr, claims: Option<&Claims>) -> Result<Decision, ProxyError> {
    let decision = Box::pin(limit.check(&limit.key(client_ip, claims))).await;
    match decision.allowed {
        true => Ok(decision),
        false => Err(ProxyError::RateLimited(decision)),
    }
}

/// Who sent a request: the client's address, and whether the peer is a trusted proxy.
#[derive(Debug, Clone, Copy)]
struct Caller {
    /// The peer's address, or when the peer is a trusted proxy, the one it forwarded.
    ip: IpAddr,
    peer_trusted: bool,
}

fn caller(snapshot: &Snapshot, conn: &Connection, headers: &http::HeaderMap) -> Caller {
    let peer = conn.peer.ip();
    let peer_trusted = snapshot.is_trusted(peer);
    let ip = match peer_trusted {
        true => headers::forwarded_client_ip(headers, peer, |ip| snapshot.is_trusted(ip)),
        false => peer,
    };
    Caller { ip, peer_trusted }
}

/// The host the client asked for: the Host header (HTTP/1.1) or the URI authority (HTTP/2).
pub(crate) fn request_host<B>(request: &Request<B>) -> Option<HeaderValue> {
    match request.headers().get(header::HOST) {
        Some(host) => Some(host.clone()),
        None => HeaderValue::from_str(request.uri().authority()?.as_str()).ok(),
    }
}

/// Methods the gateway refuses whatever the route. Lower case: RFC 9110 makes `get` another method
/// than `GET`, so it passes routes with `methods: [GET]` and the `TRACE` refusal, yet Django,
/// Flask and others upper-case the method and serve it as `GET` (nginx refuses such methods too).
/// `CONNECT`: a tunnel through a forward proxy, which an upstream service is not.
fn check_method(method: &http::Method) -> Result<(), ProxyError> {
    if method == http::Method::CONNECT {
        return Err(ProxyError::MethodNotAllowed("CONNECT is for forward proxies; this gateway opens no tunnels"));
    }
    if method.as_str().bytes().any(|b| b.is_ascii_lowercase()) {
        return Err(ProxyError::BadRequest("method names are upper case"));
    }
    Ok(())
}

/// What hyper leaves to the gateway (besides the header count on HTTP/2, checked in `handle`): no
/// transfer coding but chunked, the only one hyper decodes (RFC 9112 section 6.1: 501).
fn check_head(request: &Request<Incoming>) -> Result<(), ProxyError> {
    // A coding comes with a body: requests without one (most) skip the lookup.
    if !request.body().is_end_stream() && !only_chunked(request.headers()) {
        return Err(ProxyError::UnsupportedTransferCoding);
    }
    Ok(())
}

/// Whether `Transfer-Encoding`, if any, names no coding but chunked, and that once: hyper takes
/// off one layer of chunks, and a second would be passed on as if it were the body.
fn only_chunked(headers: &http::HeaderMap) -> bool {
    let mut chunked = 0;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        let Ok(codings) = value.to_str() else { return false };
        for coding in codings.split(',') {
            if !coding.trim().eq_ignore_ascii_case("chunked") {
                return false;
            }
            chunked += 1;
        }
    }
    chunked <= 1
}

/// [`request_host`], for a request to serve: an HTTP/1.1 request must carry exactly one Host, and
/// a Host must be a host and port, nothing more (RFC 9112 section 3.2: 400 otherwise).
pub(crate) fn single_host<B>(request: &Request<B>) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = request.headers().get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(host), None) if !is_host(host.as_bytes()) => {
            Err(ProxyError::BadRequest("the Host header is not a host and port"))
        }
        // HTTP/2's `:authority`, or an absolute-form target: one request, one host (RFC 9113
        // section 8.3.1), or routing and the upstream could each pick another.
        (Some(host), None)
            if request
                .uri()
                .authority()
                .is_some_and(|a| !a.as_str().as_bytes().eq_ignore_ascii_case(host.as_bytes())) =>
        {
            Err(ProxyError::BadRequest("the Host header names another host than the request target"))
        }
        (Some(host), None) => Ok(Some(host.clone())),
        (Some(_), Some(_)) => Err(ProxyError::BadRequest("the request carries more than one Host header")),
        (None, _) if request.version() == Version::HTTP_11 => {
            Err(ProxyError::BadRequest("an HTTP/1.1 request must carry a Host header"))
        }
        (None, _) => match request.uri().authority() {
            // HTTP/2's `:authority` is held to what a Host header is (RFC 9113 section 8.3.1: no
            // userinfo), as it stands in for one.
            Some(authority) if !is_host(authority.as_str().as_bytes()) => {
                Err(ProxyError::BadRequest("the request's authority is not a host and port"))
            }
            // RFC 9113 section 8.3.1: malformed without either.
            None if request.version() == Version::HTTP_2 => {
                Err(ProxyError::BadRequest("an HTTP/2 request must carry :authority or a Host header"))
            }
            _ => Ok(request_host(request)),
        },
    }
}

/// Replaces the path of `uri`, keeping its query (an origin-form target keeps no more).
fn set_path(uri: &mut Uri, path: &str) -> Result<(), ProxyError> {
    let path_and_query = match uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path),
    };
    let mut parts = std::mem::take(uri).into_parts();
    parts.path_and_query =
        Some(path_and_query.map_err(|_| ProxyError::BadRequest("the path is not a valid URI path"))?);
    *uri = Uri::from_parts(parts).map_err(|_| ProxyError::BadRequest("the path is not a valid URI path"))?;
    Ok(())
}

/// `uri-host [":" port]` (RFC 9110 section 7.2): a name or IPv4 address of letters, digits and
/// `-._~`, or an IPv6 address in brackets, then at most a port of digits up to 65535 (or an empty
/// one, as the grammar allows). Refuses what would change a URL built from it (`/`, `?`, `#`, `@`,
/// `\`, spaces), and the reg-name's `%` and sub-delims (`!$&'()*+,;=`), which no DNS name has: a
/// comma would make `X-Forwarded-Host` a list whose first entry (`evil.test,a.example.com`) a
/// wildcard route never saw. Checked in place, the usual `name[:port]` in one pass: this runs for
/// every request.
fn is_host(host: &[u8]) -> bool {
    let (name, port) = match host.iter().rposition(|&b| b == b':') {
        Some(colon) => (&host[..colon], Some(&host[colon + 1..])),
        None => (host, None),
    };
    if name.iter().all(|&b| NAME_BYTES[usize::from(b)]) {
        return port.is_none_or(is_port);
    }
    ipv6_literal_port(host).is_some_and(is_port)
}

/// Up to five digits, at most 65535; empty too (RFC 9110 section 4.1: `port = *DIGIT`).
fn is_port(port: &[u8]) -> bool {
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port.iter().fold(0_u32, |n, d| n * 10 + u32::from(d - b'0')) <= 65_535
}

/// The port digits after `[IPv6 address]`, if `host` is one (with or without `:port`).
fn ipv6_literal_port(host: &[u8]) -> Option<&[u8]> {
    let literal = host.strip_prefix(b"[")?;
    let end = literal.iter().position(|&b| b == b']')?;
    std::str::from_utf8(&literal[..end]).ok()?.parse::<std::net::Ipv6Addr>().ok()?;
    match &literal[end + 1..] {
        [] => Some(&[]),
        [b':', port @ ..] => Some(port),
        _ => None,
    }
}

/// The bytes of a name or IPv4 address ([`is_host`]), as a table: one load per byte.
static NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 256 {
        table[b] = (b as u8).is_ascii_alphanumeric();
        b += 1;
    }
    let others = b"-._~";
    let mut i = 0;
    while i < others.len() {
        table[others[i] as usize] = true;
        i += 1;
    }
    table
};

fn declared_length<B>(request: &Request<B>) -> Option<u64> {
    request.headers().get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// Turns the client's request into the upstream's: rewritten path, header rules applied (its
/// hop-by-hop headers went before routing).
fn upstream_request(
    request: Request<Incoming>,
    route: &RouteRuntime,
    endpoint: &Endpoint,
    client: Client<'_>,
    request_id: &HeaderValue,
) -> Result<Request<UpstreamRequestBody>, ProxyError> {
    let (mut parts, body) = request.into_parts();
    let path = path::rewrite(parts.uri.path(), &route.path, &route.rewrite);
    let path_and_query = match parts.uri.query() {
        Some(query) => PathAndQuery::try_from(format!("{path}?{query}")),
        None => PathAndQuery::try_from(path.as_ref()),
    }
    .map_err(|_| ProxyError::BadRequest("the rewritten path is not a valid URI path"))?;
    // Origin-form: the endpoint is the connection's, named again only in Host.
    parts.uri = Uri::from(path_and_query);
    // Upstreams speak HTTP/1.1 whatever the client spoke.
    let http2 = parts.version == Version::HTTP_2;
    parts.version = Version::HTTP_11;

    // Room for the forwarding headers and the request id in one step, not a regrowth per insert.
    parts.headers.reserve(5);
    if http2 {
        headers::join_http2_fields(&mut parts.headers);
    }
    headers::set_forwarding(&mut parts.headers, client);
    parts.headers.insert(&headers::X_REQUEST_ID, request_id.clone());
    let upstream_host = match client.host.filter(|_| route.preserve_host) {
        Some(host) => host.clone(),
        None => endpoint.host.clone(),
    };
    parts.headers.insert(header::HOST, upstream_host);
    let body = UpstreamRequestBody::capped(body, route.max_body_size, route.timeout, http2);
    // hyper sends a GET or HEAD body of unknown length as no body at all (they "almost never have
    // bodies"): a chunked one, or an HTTP/2 one without a length, must say it is chunked.
    if matches!(parts.method, http::Method::GET | http::Method::HEAD)
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
        && !parts.headers.contains_key(header::CONTENT_LENGTH)
    {
        parts.headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
    }
    Ok(Request::from_parts(parts, body))
}

/// The chain of underlying errors, for the log (clients never see it): `tls: UnknownIssuer`.
pub(crate) fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut current = error.source();
    while let Some(cause) = current {
        chain.push(cause.to_string());
        current = cause.source();
    }
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(version: Version, uri: &str, host: Option<&str>) -> Request<()> {
        let mut request = Request::builder().version(version).uri(uri);
        if let Some(host) = host {
            request = request.header(header::HOST, host);
        }
        request.body(()).unwrap()
    }

    #[test]
    fn single_host_needs_one_from_http11_and_http2_requests() {
        assert!(single_host(&request(Version::HTTP_11, "/m", None)).is_err());
        assert!(single_host(&request(Version::HTTP_2, "/m", None)).is_err(), "no :authority, no Host");
        assert_eq!(single_host(&request(Version::HTTP_2, "http://a.test/m", None)).unwrap().unwrap(), "a.test");
        assert_eq!(single_host(&request(Version::HTTP_2, "/m", Some("b.test"))).unwrap().unwrap(), "b.test");
        // HTTP/1.0 predates Host.
        assert_eq!(single_host(&request(Version::HTTP_10, "/m", None)).unwrap(), None);
    }
}
