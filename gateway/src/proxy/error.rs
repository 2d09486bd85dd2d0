//! Proxy errors and the one place that maps them to HTTP responses.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::body::ProxyBody;
use super::headers::whole_seconds;
use crate::auth::{AuthError, Rejection};
use crate::limit::Decision;
use crate::text;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// nginx's status for a request the client abandoned before it could be answered.
const CLIENT_CLOSED_REQUEST: StatusCode = match StatusCode::from_u16(499) {
    Ok(status) => status,
    Err(_) => StatusCode::BAD_REQUEST,
};

/// Why a request could not be proxied. Client-facing messages never name endpoints or addresses.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("no route matches this request")]
    NoRoute,
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("request body is larger than this route's limit of {limit} bytes")]
    PayloadTooLarge { limit: u64 },
    #[error("the request carries more than {limit} header fields")]
    TooManyHeaders { limit: usize },
    #[error("transfer codings other than chunked are not supported")]
    UnsupportedTransferCoding,
    #[error("the request body could not be read: it was malformed")]
    ClientBody,
    /// Not an answer anyone reads: for the access log and metrics (nginx's 499).
    #[error("the client went away before it was answered")]
    ClientClosed,
    /// Not an answer anyone reads either: the drain timeout closed the connection first.
    #[error("the gateway shut down before the request was answered (shutdown.drain_timeout)")]
    DrainTimeout,
    /// Not an answer either: a WebSocket tunnel still open when the gateway stopped (tunnels are not
    /// drained), for the access log of its `101`.
    #[error("the gateway shut down while the tunnel was open")]
    GatewayShutdown,
    #[error("no more of the request body arrived within this route's timeout of {timeout:?}")]
    ClientBodyTimeout { timeout: Duration },
    #[error("upstream {upstream:?} has no endpoint available")]
    NoEndpoint { upstream: String },
    #[error("upstream {upstream:?} has {max_requests} requests in flight, its max_requests")]
    UpstreamOverloaded { upstream: String, max_requests: u32 },
    #[error("the gateway has as many connections open as it may; try again shortly")]
    AtCapacity,
    #[error("upstream {upstream:?} is failing; requests to it are paused (circuit breaker open)")]
    CircuitOpen { upstream: String, retry_after: Duration },
    #[error("could not connect to upstream {upstream:?} at {endpoint}")]
    UpstreamConnect { upstream: String, endpoint: String, source: BoxError },
    #[error("upstream {upstream:?} did not answer within {timeout:?}")]
    UpstreamTimeout { upstream: String, timeout: Duration },
    #[error("upstream {upstream:?} failed: {source}")]
    Upstream { upstream: String, source: BoxError },
    #[error(transparent)]
    Auth(Rejection),
    #[error("too many requests: the budget of {} requests is spent; retry in {}s", .0.limit, whole_seconds(.0.retry_after))]
    RateLimited(Decision),
}

impl ProxyError {
    /// Status and stable machine-readable code, exhaustively: adding a variant forces a decision here.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ProxyError::NoRoute => (StatusCode::NOT_FOUND, "no_route"),
            ProxyError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
            ProxyError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            ProxyError::PayloadTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ProxyError::TooManyHeaders { .. } => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too_many_headers"),
            ProxyError::UnsupportedTransferCoding => (StatusCode::NOT_IMPLEMENTED, "unsupported_transfer_coding"),
            ProxyError::ClientBody => (StatusCode::BAD_REQUEST, "bad_request_body"),
            ProxyError::ClientClosed => (CLIENT_CLOSED_REQUEST, "client_closed_request"),
            ProxyError::DrainTimeout => (StatusCode::SERVICE_UNAVAILABLE, "drain_timeout"),
            ProxyError::GatewayShutdown => (StatusCode::SERVICE_UNAVAILABLE, "gateway_shutdown"),
            ProxyError::ClientBodyTimeout { .. } => (StatusCode::REQUEST_TIMEOUT, "request_body_timeout"),
            ProxyError::NoEndpoint { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no_endpoint"),
            ProxyError::UpstreamOverloaded { .. } => (StatusCode::SERVICE_UNAVAILABLE, "upstream_overloaded"),
            ProxyError::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "circuit_open"),
            ProxyError::AtCapacity => (StatusCode::SERVICE_UNAVAILABLE, "gateway_at_capacity"),
            ProxyError::UpstreamConnect { .. } => (StatusCode::BAD_GATEWAY, "upstream_connect_error"),
            ProxyError::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            ProxyError::Upstream { .. } => (StatusCode::BAD_GATEWAY, "upstream_error"),
            ProxyError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ProxyError::Auth(rejection) => match rejection.error {
                AuthError::Missing => (StatusCode::UNAUTHORIZED, "missing_token"),
                AuthError::Malformed(_) => (StatusCode::UNAUTHORIZED, "invalid_request"),
                AuthError::Invalid(_) => (StatusCode::UNAUTHORIZED, "invalid_token"),
                AuthError::InsufficientClaims(_) => (StatusCode::FORBIDDEN, "insufficient_scope"),
                AuthError::KeysUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable"),
            },
        }
    }

    /// What the client is told: enough to act on, nothing about the inside of the network.
    fn client_message(&self) -> String {
        match self {
            ProxyError::UpstreamConnect { upstream, .. } => format!("could not connect to upstream {upstream:?}"),
            ProxyError::Upstream { upstream, .. } => format!("upstream {upstream:?} failed to answer properly"),
            other => other.to_string(),
        }
    }

    pub fn into_response(self, request_id: &HeaderValue) -> Response<ProxyBody> {
        let (status, code) = self.status_and_code();
        let mut response = json_response(status, code, &self.client_message(), request_id);
        if let ProxyError::RateLimited(decision) = &self {
            super::headers::set_rate_limit(response.headers_mut(), decision);
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(decision.retry_after)));
        }
        if let ProxyError::CircuitOpen { retry_after, .. } = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(whole_seconds(*retry_after).max(1)));
        }
        if let ProxyError::AtCapacity = &self {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let ProxyError::Auth(rejection) = &self {
            let headers = response.headers_mut();
            match rejection.error {
                // Keys are usually a fetch away.
                AuthError::KeysUnavailable => {
                    headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                }
                _ => {
                    if let Ok(challenge) = HeaderValue::try_from(challenge(rejection, code)) {
                        headers.insert(header::WWW_AUTHENTICATE, challenge);
                    }
                }
            }
        }
        response
    }
}

/// `WWW-Authenticate` for a refused token (RFC 6750 section 3): a request without credentials
/// gets the bare challenge, any other failure names its error code and says why.
fn challenge(rejection: &Rejection, code: &str) -> String {
    let mut challenge = format!("Bearer realm=\"{}\"", rejection.realm);
    if rejection.error != AuthError::Missing {
        // Quoted-string content: descriptions are ASCII; quotes and backslashes are swapped out.
        let description = match &rejection.error {
            AuthError::Malformed(why) => why.to_string(),
            AuthError::Invalid(why) => why.to_string(),
            AuthError::InsufficientClaims(why) => why.clone(),
            AuthError::Missing | AuthError::KeysUnavailable => String::new(),
        };
        let description = description.replace(['"', '\\'], "'");
        challenge.push_str(&format!(", error=\"{code}\", error_description=\"{description}\""));
    }
    if let Some(scope) = &rejection.scope {
        challenge.push_str(&format!(", scope=\"{}\"", scope.replace(['"', '\\'], "'")));
    }
    challenge
}

/// The JSON error body every rejection uses: `{"error", "message", "request_id"}`.
pub fn json_response(status: StatusCode, code: &str, message: &str, request_id: &HeaderValue) -> Response<ProxyBody> {
    // Written by hand: serde_json's `json!` builds a map and costs thousands of instructions, which
    // matters when the gateway sheds a flood with 429s.
    let request_id = request_id.to_str().unwrap_or("");
    let mut body = String::with_capacity(48 + code.len() + message.len() + request_id.len());
    body.push_str("{\"error\":");
    text::push_json_string(&mut body, code);
    body.push_str(",\"message\":");
    text::push_json_string(&mut body, message);
    body.push_str(",\"request_id\":");
    text::push_json_string(&mut body, request_id);
    body.push('}');
    let mut response = Response::new(ProxyBody::full(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
