//! JWT checks, zero trust: the gateway verifies the caller's token and lets the request through
//! with its `Authorization` header untouched. It never tells the upstream who the caller is (no
//! identity headers); upstreams verify the same token again.
//!
//! `bearer` finds the token, `Provider::verify` checks it (cache first, then signature and
//! claims), `RouteAuth::check` adds the route's claim rules. Keys come from the config (a PEM
//! file or an HMAC secret) or from a JWKS endpoint (`jwks`).

mod bearer;
mod cache;
mod jwks;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use prometheus::IntCounter;

use crate::config::{self, ClaimRule, JwtKeys};
use cache::TokenCache;
use jwks::{Jwks, Lookup};

pub use bearer::MAX_TOKEN_BYTES;

/// A verified token's payload.
pub type Claims = serde_json::Map<String, serde_json::Value>;

/// [`Claims`] read from a payload that names each claim once. RFC 7519 section 4 lets a parser
/// take the last of duplicates instead, but an upstream that checks the token again may take the
/// first: the two would then decide on different claims.
struct UniqueClaims(Claims);

/// How a payload with a duplicate claim fails to parse; [`describe`] tells it apart.
const DUPLICATE_CLAIM: &str = "a claim appears twice";

impl<'de> serde::Deserialize<'de> for UniqueClaims {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = UniqueClaims;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<UniqueClaims, A::Error> {
                let mut claims = Claims::new();
                while let Some((name, value)) = map.next_entry::<String, serde_json::Value>()? {
                    if let serde_json::map::Entry::Vacant(vacant) = claims.entry(name) {
                        vacant.insert(value);
                    } else {
                        return Err(serde::de::Error::custom(DUPLICATE_CLAIM));
                    }
                }
                Ok(UniqueClaims(claims))
            }
        }
        deserializer.deserialize_map(Visitor)
    }
}

/// Why a request's token was refused. Descriptions never quote the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("this route requires a bearer token")]
    Missing,
    #[error("malformed credentials: {0}")]
    Malformed(&'static str),
    #[error("invalid token: {0}")]
    Invalid(Cow<'static, str>),
    #[error("the token does not grant access: {0}")]
    InsufficientClaims(String),
    #[error("the token's signing keys are not available yet")]
    KeysUnavailable,
}

/// An [`AuthError`] with what the client's `WWW-Authenticate` challenge needs.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{error}")]
pub struct Rejection {
    pub realm: Arc<str>,
    pub error: AuthError,
    /// The scope a `scope` rule asked for (RFC 6750 section 3).
    pub scope: Option<String>,
}

/// A provider ready to verify tokens: keys, validation rules and the verified-token cache.
#[derive(Debug)]
pub struct Provider {
    /// What it was built from: a reload compares against it to decide what to carry over.
    config: config::JwtProvider,
    realm: Arc<str>,
    /// One per accepted algorithm, each allowing only it: jsonwebtoken refuses a key unless every
    /// algorithm its validation allows is of the key's family, so a shared one would refuse every
    /// token of a provider that accepts, say, RS256 and ES256.
    validations: Vec<(Algorithm, Validation)>,
    keys: Keys,
    cache: TokenCache,
}

#[derive(Debug)]
enum Keys {
    Fixed(Arc<DecodingKey>),
    Jwks(Arc<Jwks>),
}

impl Provider {
    /// Builds a provider, carrying over from `previous` (the running one of the same name): all
    /// of it when its config is unchanged, else the JWKS key set when the endpoint settings are
    /// (so a reload never leaves routes without keys). The token cache is only kept whole: tokens
    /// verified under other rules must be verified again.
    ///
    /// # Errors
    ///
    /// When the JWKS client cannot be set up (not expected).
    pub fn build(config: &config::JwtProvider, previous: Option<&Arc<Provider>>) -> Result<Arc<Provider>, String> {
        if let Some(previous) = previous.filter(|p| p.config == *config) {
            return Ok(previous.clone());
        }
        let keys = match &config.keys {
            JwtKeys::PublicKey(key) => Keys::Fixed(key.key.clone()),
            JwtKeys::Secret(secret) => Keys::Fixed(Arc::new(DecodingKey::from_secret(&secret.value))),
            JwtKeys::Jwks(settings) => match previous.map(|p| &p.keys) {
                Some(Keys::Jwks(jwks)) if jwks.config == *settings => Keys::Jwks(jwks.clone()),
                _ => Keys::Jwks(Jwks::start(&config.name, settings)?),
            },
        };
        Ok(Arc::new(Provider {
            realm: Arc::from(config.realm.as_str()),
            validations: config
                .algorithms
                .iter()
                .map(|&algorithm| (algorithm, validation(config, algorithm)))
                .collect(),
            config: config.clone(),
            keys,
            cache: TokenCache::default(),
        }))
    }

    /// The token's claims if it is valid for this provider now.
    pub async fn verify(&self, token: &str) -> Result<Arc<Claims>, AuthError> {
        let digest = cache::digest(token);
        let now = unix_now();
        let generation = match &self.keys {
            Keys::Fixed(_) => 0,
            Keys::Jwks(jwks) => jwks.generation(),
        };
        if let Some(claims) = self.cache.get(&digest, now, generation) {
            return Ok(claims);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| invalid("the token header is not valid or names an unknown algorithm"))?;
        let Some((_, validation)) = self.validations.iter().find(|(algorithm, _)| *algorithm == header.alg) else {
            return Err(invalid("the token's algorithm is not accepted"));
        };
        if header.crit.is_some() {
            // RFC 7515 section 4.1.11: extensions the recipient does not understand make it invalid.
            return Err(invalid("the token names critical header extensions (crit), which are not supported"));
        }
        let key = self.key(header.kid.as_deref(), header.alg).await?;
        let data = jsonwebtoken::decode::<UniqueClaims>(token, &key, validation).map_err(|e| describe(e, token))?;
        let claims = data.claims.0;
        if !claims.get("iss").is_some_and(serde_json::Value::is_string) {
            // RFC 7519 section 4.1.1: one issuer, a string (jsonwebtoken also takes a list).
            return Err(invalid("the token's issuer (iss) is not a single string"));
        }
        match claims.get("iat").map(serde_json::Value::as_f64) {
            Some(Some(iat)) if iat > (now + validation.leeway) as f64 => {
                return Err(invalid("the token was issued in the future"))
            }
            Some(None) => return Err(invalid("the token's iat is not a number")),
            _ => {}
        }
        if let Some(missing) = self.config.required_claims.iter().find(|c| claims.get(*c).is_none_or(|v| v.is_null())) {
            return Err(AuthError::Invalid(format!("the token lacks the required claim `{missing}`").into()));
        }
        // `exp` is required and was checked; a fractional one is cut to whole seconds.
        let expires_at = claims.get("exp").and_then(serde_json::Value::as_f64).map_or(0, |exp| exp as u64);
        let claims = Arc::new(claims);
        self.cache.insert(digest, token.len(), expires_at, generation, claims.clone(), now);
        Ok(claims)
    }

    /// What `/admin/jwt` shows: the key source and, for a JWKS, how fetching goes.
    pub fn status(&self) -> serde_json::Value {
        let keys = match (&self.keys, &self.config.keys) {
            (Keys::Jwks(jwks), _) => serde_json::json!({"jwks": jwks.status()}),
            (Keys::Fixed(_), JwtKeys::PublicKey(key)) => serde_json::json!({"public_key": key.path}),
            (Keys::Fixed(_), JwtKeys::Secret(secret)) => serde_json::json!({"secret_env": secret.env}),
            (Keys::Fixed(_), JwtKeys::Jwks(_)) => serde_json::Value::Null,
        };
        serde_json::json!({
            "issuer": self.config.issuer,
            "algorithms": self.config.algorithms.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>(),
            "keys": keys,
            "cached_tokens": self.cache.len(),
        })
    }

    async fn key(&self, kid: Option<&str>, algorithm: Algorithm) -> Result<Arc<DecodingKey>, AuthError> {
        let jwks = match &self.keys {
            Keys::Fixed(key) => return Ok(key.clone()),
            Keys::Jwks(jwks) => jwks,
        };
        let mut lookup = jwks.lookup(kid);
        if matches!(lookup, Lookup::NoKeys | Lookup::UnknownKid) {
            jwks.refetch_for_unknown_kid().await;
            lookup = jwks.lookup(kid);
        }
        match lookup {
            Lookup::Found(key) if key.algorithm.is_some_and(|pinned| pinned != algorithm) => {
                Err(invalid("the token's algorithm does not match its key"))
            }
            Lookup::Found(key) => Ok(key.decoding),
            Lookup::NoKeys => Err(AuthError::KeysUnavailable),
            Lookup::UnknownKid => Err(invalid("the token's key id (kid) is not in the issuer's key set")),
            Lookup::Ambiguous => Err(invalid("the token has no key id (kid) and the issuer publishes several keys")),
        }
    }
}

fn validation(config: &config::JwtProvider, algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.leeway = config.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_issuer(&[&config.issuer]);
    validation.set_audience(&config.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    validation
}

fn invalid(description: &'static str) -> AuthError {
    AuthError::Invalid(Cow::Borrowed(description))
}

/// What the client is told about a token jsonwebtoken refused.
fn describe(error: jsonwebtoken::errors::Error, token: &str) -> AuthError {
    match error.kind() {
        ErrorKind::ExpiredSignature => invalid("the token has expired"),
        ErrorKind::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
        ErrorKind::InvalidIssuer => invalid("the token's issuer is not accepted"),
        ErrorKind::InvalidAudience => invalid("the token's audience is not accepted"),
        ErrorKind::InvalidSignature => invalid("the signature does not match"),
        ErrorKind::InvalidAlgorithm => invalid("the token's algorithm does not fit the key"),
        // jsonwebtoken says "missing" of a claim it cannot read too (`"exp": "soon"`): look.
        ErrorKind::MissingRequiredClaim(claim) if carries(token, claim) => {
            AuthError::Invalid(format!("the `{claim}` claim has the wrong type").into())
        }
        ErrorKind::MissingRequiredClaim(claim) => {
            AuthError::Invalid(format!("the token lacks the required claim `{claim}`").into())
        }
        ErrorKind::InvalidClaimFormat(claim) => {
            AuthError::Invalid(format!("the `{claim}` claim has the wrong type").into())
        }
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidEddsaKey | ErrorKind::InvalidRsaKey(_) => {
            invalid("the token's algorithm does not fit the key")
        }
        ErrorKind::Json(error) if error.to_string().starts_with(DUPLICATE_CLAIM) => {
            invalid("the token names a claim twice")
        }
        _ => invalid("the token is not well-formed"),
    }
}

/// Whether the token's payload has `claim` at all, whatever its value. Only to word an answer:
/// the payload is read without its signature.
fn carries(token: &str, claim: &str) -> bool {
    let payload = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Map<String, serde_json::Value>>(token);
    payload.is_ok_and(|claims| claims.get(claim).is_some_and(|value| !value.is_null()))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A route's token check.
#[derive(Debug)]
pub struct RouteAuth {
    pub provider: Arc<Provider>,
    pub optional: bool,
    pub require: Vec<ClaimRule>,
    /// `gateway_jwt_checks_total` of the provider, by [`CheckResult`].
    results: [IntCounter; CheckResult::COUNT],
}

/// How a token check ended, for the metrics.
#[derive(Debug, Clone, Copy)]
enum CheckResult {
    Valid,
    /// No token on an `optional` route.
    Absent,
    Missing,
    Malformed,
    Invalid,
    Insufficient,
    Unavailable,
}

impl CheckResult {
    const COUNT: usize = 7;
    const LABELS: [&'static str; CheckResult::COUNT] =
        ["valid", "absent", "missing", "malformed", "invalid", "insufficient", "unavailable"];

    fn of(error: &AuthError) -> CheckResult {
        match error {
            AuthError::Missing => CheckResult::Missing,
            AuthError::Malformed(_) => CheckResult::Malformed,
            AuthError::Invalid(_) => CheckResult::Invalid,
            AuthError::InsufficientClaims(_) => CheckResult::Insufficient,
            AuthError::KeysUnavailable => CheckResult::Unavailable,
        }
    }
}

impl RouteAuth {
    pub fn new(provider: Arc<Provider>, optional: bool, require: Vec<ClaimRule>) -> RouteAuth {
        let metrics = crate::metrics::global();
        let results = CheckResult::LABELS.map(|label| metrics.jwt_check(&provider.config.name, label));
        RouteAuth { provider, optional, require, results }
    }

    /// Passes the request with its verified claims (none when an optional token is absent), or
    /// says why not.
    pub async fn check(&self, headers: &HeaderMap) -> Result<Option<Arc<Claims>>, Rejection> {
        let result = self.decide(headers).await;
        let outcome = match &result {
            Ok(Some(_)) => CheckResult::Valid,
            Ok(None) => CheckResult::Absent,
            Err(rejection) => CheckResult::of(&rejection.error),
        };
        if let Some(counter) = self.results.get(outcome as usize) {
            counter.inc();
        }
        result
    }

    async fn decide(&self, headers: &HeaderMap) -> Result<Option<Arc<Claims>>, Rejection> {
        let reject = |error| Rejection { realm: self.provider.realm.clone(), error, scope: None };
        let token = match bearer::token(headers).map_err(reject)? {
            Some(token) => token,
            None if self.optional => return Ok(None),
            None => return Err(reject(AuthError::Missing)),
        };
        let claims = self.provider.verify(token).await.map_err(reject)?;
        for rule in &self.require {
            if let Some(missing) = rule.values.iter().find(|value| !claim_contains(&claims, &rule.claim, value)) {
                return Err(Rejection {
                    scope: (rule.claim == "scope").then(|| rule.values.join(" ")),
                    ..reject(AuthError::InsufficientClaims(format!("the `{}` claim lacks `{missing}`", rule.claim)))
                });
            }
        }
        Ok(Some(claims))
    }
}

/// Whether `claim` holds `value`: as one of its space-separated words (OAuth `scope`), or as an
/// element of an array of strings.
fn claim_contains(claims: &Claims, claim: &str, value: &str) -> bool {
    match claims.get(claim) {
        Some(serde_json::Value::String(words)) => words.split_ascii_whitespace().any(|word| word == value),
        Some(serde_json::Value::Array(items)) => items.iter().any(|item| item.as_str() == Some(value)),
        _ => false,
    }
}

#[cfg(test)]
mod tests;
