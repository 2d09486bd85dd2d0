//! The issuer's keys, fetched from its JWKS URL on first use and again for an unknown `kid`, at
//! most once per cooldown; a failed fetch keeps the keys already held, and is tried again sooner
//! (1 s, doubling up to the cooldown), so an issuer that comes back is found within seconds.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use axum::http::header::ACCEPT;
use axum::http::{Request, Uri};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use tokio::time::Instant;

/// A fetch (connect, response and body) must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
/// The first wait after a failed fetch; it doubles with each failure in a row, up to the cooldown.
const FIRST_RETRY: Duration = Duration::from_secs(1);
/// Larger key sets are refused: real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Keys by `kid`; only P-256 keys, the one kind an ES256 token can be checked with.
type Keys = HashMap<String, Arc<DecodingKey>>;

pub(super) struct Jwks {
    url: Uri,
    cooldown: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
    keys: RwLock<Option<Arc<Keys>>>,
    /// When the last fetch started, and how long until the next. Held across the fetch, so
    /// requests arriving meanwhile wait for it and then find it too recent to fetch again.
    pace: tokio::sync::Mutex<Pace>,
}

#[derive(Clone, Copy)]
struct Pace {
    last: Option<Instant>,
    /// Until the next fetch: the cooldown after a success, less after failures.
    wait: Duration,
    /// The wait after the next failure.
    retry: Duration,
}

/// What looking up a `kid` found.
pub(super) enum Lookup {
    Found(Arc<DecodingKey>),
    UnknownKid,
    /// No key set was ever fetched: the issuer has not been reachable yet.
    NoKeys,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("timed out after {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error("answered {0}")]
    Status(axum::http::StatusCode),
    #[error("body unreadable or larger than {MAX_JWKS_BYTES} bytes")]
    Body,
    #[error("not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("holds no P-256 key with a kid")]
    NoKeys,
    #[error("bad request: {0}")]
    Http(#[from] axum::http::Error),
}

impl Jwks {
    pub(super) fn new(url: Uri, cooldown: Duration) -> Jwks {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        // No pooling: fetches are rare, and a restarted issuer should get a fresh connection.
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(http);
        let pace = Pace { last: None, wait: Duration::ZERO, retry: FIRST_RETRY };
        Jwks { url, cooldown, client, keys: RwLock::new(None), pace: tokio::sync::Mutex::new(pace) }
    }

    /// The key for `kid`, fetching the set first when it lacks `kid` and the cooldown allows.
    pub(super) async fn key(&self, kid: &str) -> Lookup {
        match self.lookup(kid) {
            Lookup::Found(key) => Lookup::Found(key),
            Lookup::UnknownKid | Lookup::NoKeys => {
                self.refetch().await;
                self.lookup(kid)
            }
        }
    }

    fn lookup(&self, kid: &str) -> Lookup {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner).clone();
        match keys {
            None => Lookup::NoKeys,
            Some(keys) => keys.get(kid).map_or(Lookup::UnknownKid, |key| Lookup::Found(key.clone())),
        }
    }

    /// Fetches unless the last fetch is too recent: within the cooldown after a success, within
    /// the retry wait after a failure. The start is recorded before fetching, as if it would
    /// fail, so requests that give up mid-fetch (their client left) cannot skip the wait.
    async fn refetch(&self) {
        let mut pace = self.pace.lock().await;
        if pace.last.is_some_and(|at| at.elapsed() < pace.wait) {
            return;
        }
        let failed = Pace {
            last: Some(Instant::now()),
            wait: pace.retry.min(self.cooldown),
            retry: pace.retry.saturating_mul(2).min(self.cooldown.max(FIRST_RETRY)),
        };
        *pace = failed;
        match tokio::time::timeout(FETCH_TIMEOUT, self.fetch()).await.unwrap_or(Err(FetchError::Timeout)) {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "JWKS fetched");
                *self.keys.write().unwrap_or_else(PoisonError::into_inner) = Some(Arc::new(keys));
                *pace = Pace { wait: self.cooldown, retry: FIRST_RETRY, ..failed };
            }
            Err(error) => {
                tracing::warn!(url = %self.url, %error, retry_in = ?failed.wait, "JWKS fetch failed; keeping the keys held")
            }
        }
    }

    async fn fetch(&self) -> Result<Keys, FetchError> {
        let request = Request::get(self.url.clone()).header(ACCEPT, "application/json").body(Empty::new())?;
        let response = self.client.request(request).await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|_| FetchError::Body)?;
        parse(&body.to_bytes())
    }
}

/// The usable keys of a JWK set. Keys of other kinds (RSA, another curve, `use: enc`, no `kid`,
/// unparseable) are skipped rather than refused, so one odd key never hides the others.
fn parse(body: &[u8]) -> Result<Keys, FetchError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(body)?;
    let keys: Keys =
        set.keys.into_iter().filter_map(|value| serde_json::from_value::<Jwk>(value).ok()).filter_map(usable).collect();
    if keys.is_empty() {
        return Err(FetchError::NoKeys);
    }
    Ok(keys)
}

fn usable(jwk: Jwk) -> Option<(String, Arc<DecodingKey>)> {
    let for_signatures = jwk.common.public_key_use.as_ref().is_none_or(|u| *u == PublicKeyUse::Signature);
    let p256 = matches!(&jwk.algorithm, AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256);
    if !(for_signatures && p256) {
        return None;
    }
    let key = DecodingKey::from_jwk(&jwk).ok()?;
    Some((jwk.common.key_id?, Arc::new(key)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::{jwks, Algorithm, SigningKey};

    #[test]
    fn parse_keeps_p256_keys_with_a_kid_only() {
        let es256 = SigningKey::generate(Algorithm::ES256, "es256");
        let es384 = SigningKey::generate(Algorithm::ES384, "es384");
        let ed = SigningKey::generate(Algorithm::EdDSA, "ed");
        let mut unnamed = es256.with_kid("x").jwk();
        unnamed.as_object_mut().unwrap().remove("kid");
        let mut document = jwks(&[&es256, &es384, &ed]);
        document["keys"].as_array_mut().unwrap().push(unnamed);
        let keys = parse(document.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["es256"]);
    }

    #[test]
    fn parse_nothing_usable_is_an_error() {
        assert!(matches!(parse(br#"{"keys": []}"#), Err(FetchError::NoKeys)));
        assert!(matches!(parse(b"<html>"), Err(FetchError::Json(_))));
    }
}
