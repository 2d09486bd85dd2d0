//! The backends' own JWT check, zero trust: product and cart verify the caller's bearer token
//! themselves, and take the caller's identity from it alone, never from a header such as
//! `X-User-Id`, whoever sent it.
//!
//! A [`Verifier`] accepts ES256 tokens (what `auth` signs) whose `kid` names a key in the issuer's
//! JWKS, with the expected `iss` and `aud`, not expired (30 s leeway), and a non-empty `sub`. The
//! JWKS is fetched over plain `http://` only (the backends carry no TLS client: serve it on
//! loopback or a private network), on first use, so services start in any order, and again when
//! a token names an unknown `kid`, at most once per cooldown (30 s by default), so a flood of
//! made-up `kid`s cannot become a flood of fetches. A failed fetch keeps the keys held, and the
//! next may come sooner (1 s, doubling up to the cooldown): until a first fetch succeeds, tokens
//! get 503 `keys_unavailable`.
//!
//! Handlers take a [`Caller`] (an axum extractor; the router state must yield the `Verifier`
//! through `FromRef`) and call [`Caller::require`] for the scope they need.

mod jwks;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use jwks::{Jwks, Lookup};

/// Between two JWKS fetches for unknown `kid`s, by default.
pub const DEFAULT_REFETCH_COOLDOWN: Duration = Duration::from_secs(30);
/// Leeway on `exp` (and `nbf`) for clocks that drift apart.
const LEEWAY_SECS: u64 = 30;
/// Larger tokens are refused before any decoding; real ones are well under 2 KiB.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// For a `sub` that is missing, empty or not a string alike.
const SUB_REQUIRED: &str = "the token's subject (sub) must be a non-empty string";

/// Checks bearer tokens for one service (the `realm` of its challenges). Cheap to clone.
#[derive(Clone)]
pub struct Verifier {
    inner: Arc<Inner>,
}

struct Inner {
    realm: Arc<str>,
    validation: Validation,
    jwks: Jwks,
}

/// A verifier that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum VerifierError {
    #[error("the JWKS URL `{0}` is not a valid URL")]
    Url(String),
    #[error("the JWKS URL `{0}` is not http://: the backends fetch keys over plain HTTP only (serve them on loopback or a private network)")]
    NotHttp(String),
    #[error("the {0} must not be empty")]
    Empty(&'static str),
    #[error("the realm `{0}` must be letters, digits, '.', '_' and '-' (it is quoted in WWW-Authenticate)")]
    Realm(String),
}

/// Why a request was refused; the `realm` goes into the `WWW-Authenticate` challenge. Messages
/// never quote the token.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Rejection {
    /// No `Authorization` header, or one of another scheme (RFC 6750 section 3.1: no error code).
    #[error("this route requires a bearer token")]
    Missing { realm: Arc<str> },
    #[error("invalid token: {description}")]
    InvalidToken { realm: Arc<str>, description: &'static str },
    #[error("the token does not grant the scope `{scope}`")]
    InsufficientScope { realm: Arc<str>, scope: String },
    /// The issuer's keys have never been fetched: the token cannot be checked yet.
    #[error("the token's signing keys are not available yet; try again shortly")]
    KeysUnavailable,
}

/// The verified caller: identity and scopes from the token, nothing else.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's `sub`: who the caller is.
    pub sub: String,
    /// The words of the token's `scope` claim (OAuth style, space-separated).
    pub scopes: Vec<String>,
    realm: Arc<str>,
}

impl Caller {
    /// `Ok` when the token grants `scope`; else a 403 naming it.
    pub fn require(&self, scope: &str) -> Result<(), Rejection> {
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(Rejection::InsufficientScope { realm: self.realm.clone(), scope: scope.to_owned() })
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller
where
    Verifier: FromRef<S>,
{
    type Rejection = Rejection;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Caller, Rejection> {
        Verifier::from_ref(state).verify(&parts.headers).await
    }
}

impl Verifier {
    /// A verifier for tokens from `issuer` meant for `audience`, with keys from `jwks_url` (plain
    /// `http://`). Nothing is fetched until the first token arrives.
    pub fn new(realm: &str, issuer: &str, audience: &str, jwks_url: &str) -> Result<Verifier, VerifierError> {
        Verifier::with_cooldown(realm, issuer, audience, jwks_url, DEFAULT_REFETCH_COOLDOWN)
    }

    /// Like [`Verifier::new`], with another least time between two fetches of the key set.
    pub fn with_cooldown(
        realm: &str,
        issuer: &str,
        audience: &str,
        jwks_url: &str,
        cooldown: Duration,
    ) -> Result<Verifier, VerifierError> {
        if realm.is_empty() || !realm.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(VerifierError::Realm(realm.to_owned()));
        }
        if issuer.is_empty() {
            return Err(VerifierError::Empty("issuer"));
        }
        if audience.is_empty() {
            return Err(VerifierError::Empty("audience"));
        }
        let url: Uri = jwks_url.parse().map_err(|_| VerifierError::Url(jwks_url.to_owned()))?;
        if url.scheme_str() != Some("http") || url.host().is_none() {
            return Err(VerifierError::NotHttp(jwks_url.to_owned()));
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = LEEWAY_SECS;
        let inner = Inner { realm: Arc::from(realm), validation, jwks: jwks::Jwks::new(url, cooldown) };
        Ok(Verifier { inner: Arc::new(inner) })
    }

    /// The caller of a request with these headers, if its bearer token is valid.
    pub async fn verify(&self, headers: &HeaderMap) -> Result<Caller, Rejection> {
        let token = self.bearer(headers)?;
        let invalid = |description| Rejection::InvalidToken { realm: self.inner.realm.clone(), description };
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("the token header is malformed"))?;
        if header.alg != Algorithm::ES256 {
            return Err(invalid("the token must be signed with ES256"));
        }
        let Some(kid) = header.kid else { return Err(invalid("the token header has no key id (kid)")) };
        let key = match self.inner.jwks.key(&kid).await {
            Lookup::Found(key) => key,
            Lookup::UnknownKid => return Err(invalid("the token's signing key (kid) is unknown")),
            Lookup::NoKeys => return Err(Rejection::KeysUnavailable),
        };
        let claims = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &self.inner.validation)
            .map_err(|e| invalid(describe(e.kind())))?
            .claims;
        let sub = match claims.get("sub") {
            Some(Value::String(sub)) if !sub.is_empty() => sub.clone(),
            _ => return Err(invalid(SUB_REQUIRED)),
        };
        let scopes = match claims.get("scope") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(scope)) => scope.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            Some(_) => return Err(invalid("the token's scope must be a string of space-separated words")),
        };
        Ok(Caller { sub, scopes, realm: self.inner.realm.clone() })
    }

    /// The token of `Authorization: Bearer <token>` (RFC 6750 section 2.1).
    fn bearer<'h>(&self, headers: &'h HeaderMap) -> Result<&'h str, Rejection> {
        let realm = || self.inner.realm.clone();
        let invalid = |description| Rejection::InvalidToken { realm: realm(), description };
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let Some(value) = values.next() else { return Err(Rejection::Missing { realm: realm() }) };
        if values.next().is_some() {
            return Err(invalid("more than one Authorization header"));
        }
        let value = value.to_str().map_err(|_| invalid("the Authorization header is not visible ASCII"))?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Rejection::Missing { realm: realm() });
        }
        let token = token.trim_start_matches(' ');
        if token.is_empty() {
            return Err(invalid("Bearer without a token"));
        }
        if token.len() > MAX_TOKEN_BYTES {
            return Err(invalid("the token is larger than 8192 bytes"));
        }
        Ok(token)
    }
}

/// What went wrong, in words fit for `error_description` (RFC 6750 section 3: no `"` or `\`).
fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "the token's signature does not verify",
        ErrorKind::ExpiredSignature => "the token has expired",
        ErrorKind::ImmatureSignature => "the token is not valid yet (nbf)",
        ErrorKind::InvalidIssuer => "the token's issuer (iss) is not accepted",
        ErrorKind::InvalidAudience => "the token's audience (aud) is not accepted",
        ErrorKind::InvalidAlgorithm => "the token must be signed with ES256",
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "exp" => "the token has no expiry (exp)",
            "iss" => "the token has no issuer (iss)",
            "aud" => "the token has no audience (aud)",
            _ => SUB_REQUIRED,
        },
        ErrorKind::InvalidClaimFormat(_) => "a claim of the token has the wrong type",
        _ => "the token is malformed",
    }
}
