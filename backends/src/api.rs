//! What auth, product and cart share over HTTP: JSON errors (statuses mapped in one `match`), JSON
//! body and path extractors that fail with those errors, and the routes every service has.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::header::{RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::jwt_check::Rejection;

/// Every error a backend answers with. Bodies are `{"error": "<code>", "message": "..."}`, plus
/// `"field"` for an invalid field.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Auth(#[from] Rejection),
    /// The body is not JSON at all (RFC 8259), or cannot be read.
    #[error("{0}")]
    BodySyntax(String),
    /// JSON of the wrong shape: a missing or unknown field, a wrong type.
    #[error("{0}")]
    BodyShape(String),
    #[error("the request body must be JSON, sent with `Content-Type: application/json`")]
    BodyNotJson,
    #[error("the request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// A field parsed but its value is out of bounds.
    #[error("{field}: {problem}")]
    InvalidField { field: &'static str, problem: String },
    /// A path parameter that cannot be decoded.
    #[error("{0}")]
    BadPath(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    /// A per-resource bound (a full cart): the client can make room and try again.
    #[error("{0}")]
    LimitReached(String),
    /// A server-wide bound (the catalog, the number of carts): nothing the client can fix.
    #[error("{0}")]
    OutOfCapacity(String),
    #[error("invalid username or password")]
    InvalidCredentials,
    #[error("{0}")]
    Internal(String),
}

impl ApiError {
    /// Status, error code, and the `WWW-Authenticate` challenge when there is one.
    fn parts(&self) -> (StatusCode, &'static str, Option<String>) {
        match self {
            ApiError::Auth(Rejection::Missing { realm }) => {
                // RFC 6750 section 3.1: no error code when the request carried no credentials.
                (StatusCode::UNAUTHORIZED, "missing_token", Some(format!("Bearer realm=\"{realm}\"")))
            }
            ApiError::Auth(Rejection::InvalidToken { realm, description }) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                Some(format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"{description}\"")),
            ),
            ApiError::Auth(Rejection::InsufficientScope { realm, scope }) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                Some(format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\"")),
            ),
            ApiError::Auth(Rejection::KeysUnavailable) => (StatusCode::SERVICE_UNAVAILABLE, "keys_unavailable", None),
            ApiError::BodySyntax(_) => (StatusCode::BAD_REQUEST, "invalid_json", None),
            ApiError::BodyShape(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", None),
            ApiError::BodyNotJson => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", None),
            ApiError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", None),
            ApiError::InvalidField { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", None),
            ApiError::BadPath(_) => (StatusCode::BAD_REQUEST, "invalid_path", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None),
            ApiError::LimitReached(_) => (StatusCode::CONFLICT, "limit_reached", None),
            // RFC 4918 section 11.5: the server cannot store what the request needs.
            ApiError::OutOfCapacity(_) => (StatusCode::INSUFFICIENT_STORAGE, "out_of_capacity", None),
            // RFC 9110 section 15.5.2 wants a challenge on every 401, but a login form has no
            // scheme to offer: `Basic` would make browsers pop up a dialog.
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials", None),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal", None),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, challenge) = self.parts();
        let mut body = json!({ "error": code, "message": self.to_string() });
        if let ApiError::InvalidField { field, .. } = &self {
            body["field"] = json!(field);
        }
        let mut response = (status, axum::Json(body)).into_response();
        if let Some(value) = challenge.and_then(|c| HeaderValue::from_str(&c).ok()) {
            response.headers_mut().insert(WWW_AUTHENTICATE, value);
        }
        if matches!(self, ApiError::Auth(Rejection::KeysUnavailable)) {
            response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
        }
        response
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        ApiError::Auth(self).into_response()
    }
}

/// `axum::Json`, failing with a JSON [`ApiError`] instead of a plain-text rejection.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req.extensions().get::<BodyLimit>().map_or(0, |limit| limit.0);
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::BodyShape(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::BodySyntax(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::BodyNotJson),
            Err(other) if other.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError::BodyTooLarge(limit)),
            // `JsonRejection` is non-exhaustive: whatever else stops the body from being read.
            Err(other) => Err(ApiError::BodySyntax(other.body_text())),
        }
    }
}

/// The one `{param}` of a route, failing with a JSON [`ApiError`] (a path that is not UTF-8 once
/// percent-decoded).
#[derive(Debug)]
pub struct PathParam(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathParam {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(param)| PathParam(param))
            .map_err(|rejection: PathRejection| ApiError::BadPath(rejection.body_text()))
    }
}

/// The body limit in force, so a 413 can say what it is.
#[derive(Debug, Clone, Copy)]
struct BodyLimit(usize);

/// Adds what every service has: `GET /healthz` (no auth), JSON 404 and 405 answers, and a cap of
/// `body_limit` bytes on request bodies.
pub fn finish<S: Clone + Send + Sync + 'static>(routes: Router<S>, body_limit: usize) -> Router<S> {
    routes
        .route("/healthz", get(|| async { "ok" }))
        .fallback(|| async { ApiError::NotFound("no such route".to_owned()) })
        .method_not_allowed_fallback(|| async {
            ApiError::MethodNotAllowed("this route does not take that method; see the Allow header".to_owned())
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::Extension(BodyLimit(body_limit)))
}
