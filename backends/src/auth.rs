//! The auth service: trades a username and password for a short-lived ES256 access token, and
//! publishes the public key as a JWKS for the gateway and the other backends.
//!
//! Routes:
//! - `POST /token` with `{"username": "...", "password": "..."}`: 200
//!   `{"access_token", "token_type": "Bearer", "expires_in", "scope"}`; a wrong password and an
//!   unknown user both get the same 401 `invalid_credentials`.
//! - `GET /.well-known/jwks.json`: the signing key, `Cache-Control: max-age=300`.
//! - `GET /healthz`: `ok`.
//!
//! The key is generated at start (a random hex `kid`) and never stored: a restart rotates it, and
//! verifiers pick the new one up by its unknown `kid`. Token claims: `iss`, `aud`, `sub` (the
//! username), `scope` (space-separated), `iat`, `nbf`, `exp`, `jti`.
//!
//! `config/demo-users.json` holds DEMO credentials only (`alice` / `alice-demo-password`,
//! `admin` / `admin-demo-password`), in plain text for the quick start and tests: never use it,
//! or plain-text passwords, anywhere real.

mod users;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header::CACHE_CONTROL;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::api::{self, ApiError, JsonBody};
use crate::token::{self, Algorithm, SigningKey};
pub use users::{Users, UsersError};

/// Login bodies are tiny; anything larger is refused unread.
const BODY_LIMIT: usize = 4 * 1024;
/// Random bytes in a `kid` and in a `jti` (hex-encoded, so twice as many characters).
const KID_BYTES: usize = 8;
const JTI_BYTES: usize = 16;

/// What the auth service is started with.
pub struct Settings {
    /// The tokens' `iss`.
    pub issuer: String,
    /// The tokens' `aud`.
    pub audience: String,
    pub users: Users,
    /// How long a token is valid: its `exp` minus its `iat`.
    pub token_lifetime: Duration,
}

struct Auth {
    settings: Settings,
    key: SigningKey,
    /// The JWKS document, made once: the key never changes while the process runs.
    jwks: Value,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Login {
    username: String,
    password: String,
}

/// The auth router, with a freshly generated signing key.
///
/// # Errors
/// When the key cannot be generated (the system RNG failed).
pub fn app(settings: Settings) -> io::Result<Router> {
    let kid = random_hex(KID_BYTES)?;
    let key = SigningKey::try_generate(Algorithm::ES256, &kid)
        .map_err(|e| io::Error::other(format!("generating the signing key: {e:#}")))?;
    tracing::info!(kid, users = settings.users.len(), "signing key generated");
    let jwks = token::jwks(&[&key]);
    let routes = Router::new().route("/token", post(issue)).route("/.well-known/jwks.json", get(publish_keys));
    Ok(api::finish(routes, BODY_LIMIT).with_state(Arc::new(Auth { settings, key, jwks })))
}

/// Serves the auth service on `listener` until the process ends.
pub async fn serve(listener: TcpListener, settings: Settings) -> io::Result<()> {
    crate::service::run(listener, app(settings)?, std::future::pending()).await
}

async fn publish_keys(State(auth): State<Arc<Auth>>) -> Response {
    ([(CACHE_CONTROL, "max-age=300")], Json(auth.jwks.clone())).into_response()
}

async fn issue(State(auth): State<Arc<Auth>>, JsonBody(login): JsonBody<Login>) -> Result<Response, ApiError> {
    let Some(user) = auth.settings.users.check(&login.username, &login.password) else {
        tracing::debug!("login refused");
        return Err(ApiError::InvalidCredentials);
    };
    let lifetime = auth.settings.token_lifetime;
    let mut claims = token::claims(&auth.settings.issuer, &auth.settings.audience, &login.username, lifetime);
    claims["scope"] = json!(user.scope);
    claims["jti"] = json!(random_hex(JTI_BYTES).map_err(|e| ApiError::Internal(e.to_string()))?);
    let access_token = auth.key.try_sign(&claims).map_err(|e| ApiError::Internal(format!("signing failed: {e}")))?;
    tracing::debug!(sub = login.username, scope = user.scope, "token issued");
    let body = json!({
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": lifetime.as_secs(),
        "scope": user.scope,
    });
    // RFC 6749 section 5.1: responses carrying tokens must not be cached.
    Ok(([(CACHE_CONTROL, "no-store")], Json(body)).into_response())
}

fn random_hex(len: usize) -> io::Result<String> {
    let mut bytes = vec![0u8; len];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| io::Error::other("the system RNG failed"))?;
    Ok(token::hex(&bytes))
}
