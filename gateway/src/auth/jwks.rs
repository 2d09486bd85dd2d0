//! A provider's JWKS: fetched in the background, refetched once for an unknown `kid` (with a
//! cooldown), and kept when the endpoint fails, so a down issuer never breaks verification.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};

use crate::config;

/// A fetch (connect, response and body) must finish within this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Larger key sets are refused: real ones are a few KiB.
const MAX_JWKS_BYTES: usize = 1024 * 1024;
/// First retry after a failed fetch; doubles up to `min_cache_age`.
const FIRST_RETRY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct Jwks {
    provider: Arc<str>,
    pub config: config::Jwks,
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    keys: ArcSwapOption<KeySet>,
    /// Bumped whenever the fetched keys differ from the previous set: cached tokens re-verify.
    generation: AtomicU64,
    /// When the last fetch (scheduled or on demand) ended, whatever its outcome. Held across every
    /// fetch, so requests with unknown `kid`s wait for the fetch in flight, then find it within the
    /// cooldown.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
    /// When the background refresh fetches next: a successful on-demand fetch moves it, so the
    /// `max-age` it brought rules from then on.
    refresh_due: tokio::sync::watch::Sender<tokio::time::Instant>,
    /// What `/admin/jwt` shows about fetching.
    fetches: std::sync::Mutex<FetchLog>,
}

/// The latest fetch outcomes, for operators wondering why a route answers 503.
#[derive(Debug, Default, Clone)]
struct FetchLog {
    last_success: Option<SystemTime>,
    last_failure: Option<(SystemTime, String)>,
}

/// Verification keys by `kid`.
#[derive(Debug)]
struct KeySet {
    by_kid: HashMap<String, Key>,
    /// Keys published without a `kid`; usable only by tokens without one, and only when alone.
    unnamed: Vec<Key>,
    fingerprint: u64,
}

#[derive(Debug, Clone)]
pub struct Key {
    pub decoding: Arc<DecodingKey>,
    /// The JWK's `alg`, when it pins one.
    pub algorithm: Option<Algorithm>,
}

/// What looking up a token's key found.
#[derive(Debug)]
pub enum Lookup {
    Found(Key),
    /// No key set was ever fetched.
    NoKeys,
    UnknownKid,
    /// No `kid` in the token and not exactly one key to fall back on.
    Ambiguous,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("timed out after {FETCH_TIMEOUT:?}")]
    Timeout,
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("body unreadable or larger than {MAX_JWKS_BYTES} bytes")]
    Body,
    #[error("not a JWK set: {0}")]
    Json(#[from] serde_json::Error),
    #[error("holds no usable signing key")]
    NoKeys,
    #[error("bad URL: {0}")]
    Url(#[from] http::Error),
}

impl Jwks {
    /// Starts fetching right away in the background when called inside a tokio runtime; without
    /// one (unit tests), keys are fetched on first use.
    ///
    /// # Errors
    ///
    /// When TLS cannot be set up (not expected: it only needs the built-in crypto provider).
    pub fn start(provider: &str, config: &config::Jwks) -> Result<Arc<Jwks>, String> {
        let provider: Arc<str> = Arc::from(provider);
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(FETCH_TIMEOUT));
        http.set_nodelay(true);
        let connector =
            crate::upstream::fetch_connector(&provider, http, config.ca.as_ref()).map_err(|e| e.to_string())?;
        // No pooling: fetches are minutes apart, and a pooled connection would belong to whichever
        // runtime happened to open it.
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build(connector);
        let (refresh_due, due) = tokio::sync::watch::channel(tokio::time::Instant::now());
        let jwks = Arc::new(Jwks {
            provider,
            config: config.clone(),
            client,
            keys: ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            last_fetch: tokio::sync::Mutex::new(None),
            refresh_due,
            fetches: std::sync::Mutex::default(),
        });
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(refresh_loop(Arc::downgrade(&jwks), due));
            }
            Err(_) => tracing::debug!(provider = &*jwks.provider, "no runtime: JWKS fetched on first use"),
        }
        Ok(jwks)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub fn lookup(&self, kid: Option<&str>) -> Lookup {
        let guard = self.keys.load();
        let Some(set) = guard.as_deref() else { return Lookup::NoKeys };
        let found = match kid {
            Some(kid) => set.by_kid.get(kid),
            None => match (set.by_kid.len(), set.unnamed.as_slice()) {
                (0, [only]) => Some(only),
                (1, []) => set.by_kid.values().next(),
                _ => return Lookup::Ambiguous,
            },
        };
        found.map_or(Lookup::UnknownKid, |key| Lookup::Found(key.clone()))
    }

    /// Fetches again for a `kid` the current set lacks (or when there is no set yet), unless the
    /// last fetch ended less than `min_cache_age` ago: the cooldown that keeps a flood of made-up
    /// `kid`s off the issuer. Requests arriving during a fetch wait for it to end, and so find it
    /// within the cooldown (`min_cache_age` is at least 1s) whether it succeeded, failed or timed
    /// out: however slow the issuer, they cause no fetch of their own.
    ///
    /// The fetch runs in a task of its own: one that died with the request that started it (its
    /// client went away) would leave the requests waiting on it without the keys, and start the
    /// cooldown all the same.
    pub async fn refetch_for_unknown_kid(self: &Arc<Self>) {
        let jwks = Arc::clone(self);
        let _ = tokio::spawn(async move {
            let mut last = jwks.last_fetch.lock().await;
            if last.is_some_and(|at| at.elapsed() < jwks.config.min_cache_age) {
                return;
            }
            if let Ok(max_age) = jwks.fetch("unknown kid").await {
                jwks.refresh_due.send_replace(tokio::time::Instant::now() + jwks.next_refresh(max_age));
            }
            *last = Some(Instant::now());
        })
        .await;
    }

    /// The background refresh: always fetches, and starts the cooldown when done like any fetch.
    async fn scheduled_fetch(&self) -> Result<Option<Duration>, ()> {
        let mut last = self.last_fetch.lock().await;
        let fetched = self.fetch("scheduled").await;
        *last = Some(Instant::now());
        fetched
    }

    /// One fetch; on success the new set replaces the old. Returns the server's `max-age`.
    async fn fetch(&self, why: &str) -> Result<Option<Duration>, ()> {
        match tokio::time::timeout(FETCH_TIMEOUT, self.try_fetch()).await.unwrap_or(Err(FetchError::Timeout)) {
            Ok((set, max_age)) => {
                let changed = self.keys.load().as_ref().is_none_or(|old| old.fingerprint != set.fingerprint);
                let count = set.by_kid.len() + set.unnamed.len();
                self.log().last_success = Some(SystemTime::now());
                if changed {
                    self.keys.store(Some(Arc::new(set)));
                    self.generation.fetch_add(1, Ordering::AcqRel);
                    tracing::info!(provider = &*self.provider, keys = count, why, "JWKS key set loaded");
                } else {
                    tracing::debug!(provider = &*self.provider, why, "JWKS key set unchanged");
                }
                Ok(max_age)
            }
            Err(error) => {
                self.log().last_failure = Some((SystemTime::now(), error.to_string()));
                let keeping = if self.keys.load().is_some() { "keeping the last good key set" } else { "no keys yet" };
                let cause = crate::proxy::causes(&error);
                tracing::warn!(provider = &*self.provider, url = %self.config.url, %error, cause, why, "JWKS fetch failed; {keeping}");
                Err(())
            }
        }
    }

    async fn try_fetch(&self) -> Result<(KeySet, Option<Duration>), FetchError> {
        let request = Request::get(self.config.url.clone())
            .header(ACCEPT, HeaderValue::from_static("application/json"))
            .body(Empty::new())?;
        let response = self.client.request(request).await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let max_age = response.headers().get(CACHE_CONTROL).and_then(max_age);
        let body = Limited::new(response.into_body(), MAX_JWKS_BYTES).collect().await.map_err(|_| FetchError::Body)?;
        let set = parse(&body.to_bytes(), &self.provider)?;
        Ok((set, max_age))
    }

    fn log(&self) -> std::sync::MutexGuard<'_, FetchLog> {
        self.fetches.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `{"url", "keys", "generation", "last_success", "last_failure": {"at", "error"}}`.
    pub fn status(&self) -> serde_json::Value {
        let keys = self.keys.load().as_ref().map(|set| set.by_kid.len() + set.unnamed.len());
        let log = self.log().clone();
        serde_json::json!({
            "url": self.config.url.to_string(),
            "keys": keys,
            "generation": self.generation(),
            "last_success": log.last_success.map(crate::timefmt::rfc3339),
            "last_failure": log.last_failure.map(|(at, error)| serde_json::json!({
                "at": crate::timefmt::rfc3339(at),
                "error": error,
            })),
        })
    }

    /// How long the keys just fetched are good for.
    fn next_refresh(&self, max_age: Option<Duration>) -> Duration {
        max_age
            .map_or(self.config.refresh_interval, |age| age.clamp(self.config.min_cache_age, self.config.max_cache_age))
    }
}

/// Refreshes while the `Jwks` is in use; ends once the last snapshot using it is gone. Sleeps
/// until `due`, which an on-demand fetch may move meanwhile.
async fn refresh_loop(jwks: Weak<Jwks>, mut due: tokio::sync::watch::Receiver<tokio::time::Instant>) {
    let mut retry = FIRST_RETRY;
    loop {
        let Some(strong) = jwks.upgrade() else { return };
        let wait = match strong.scheduled_fetch().await {
            Ok(max_age) => {
                retry = FIRST_RETRY;
                strong.next_refresh(max_age)
            }
            Err(()) => {
                let wait = retry.min(strong.config.min_cache_age);
                retry = retry.saturating_mul(2);
                wait
            }
        };
        strong.refresh_due.send_replace(tokio::time::Instant::now() + wait);
        drop(strong);
        loop {
            let at = *due.borrow_and_update();
            tokio::select! {
                () = tokio::time::sleep_until(at) => break,
                // Gone with the `Jwks`.
                changed = due.changed() => if changed.is_err() { return },
            }
        }
    }
}

/// `max-age` of a `Cache-Control` header, if any.
fn max_age(value: &HeaderValue) -> Option<Duration> {
    let value = value.to_str().ok()?;
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        name.trim().eq_ignore_ascii_case("max-age").then(|| seconds.trim().parse().ok().map(Duration::from_secs))?
    })
}

/// A JWK set; keys that are not for signatures or that cannot be used are skipped (and logged),
/// so one odd key never hides the others.
fn parse(body: &[u8], provider: &str) -> Result<KeySet, FetchError> {
    #[derive(serde::Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let raw: RawSet = serde_json::from_slice(body)?;
    let mut set = KeySet { by_kid: HashMap::new(), unnamed: Vec::new(), fingerprint: 0 };
    let mut fingerprint = std::collections::hash_map::DefaultHasher::new();
    for value in raw.keys {
        let kid = value.get("kid").and_then(|k| k.as_str()).map(str::to_owned);
        match key(&value) {
            Ok(key) => {
                value.to_string().hash(&mut fingerprint);
                match kid.map(|kid| set.by_kid.entry(kid)) {
                    Some(Entry::Vacant(vacant)) => {
                        vacant.insert(key);
                    }
                    // RFC 7517 section 4.5: kids should differ. Tokens signed by a skipped key fail,
                    // so say which kid it was instead of dropping it silently.
                    Some(Entry::Occupied(taken)) => tracing::warn!(
                        provider,
                        kid = taken.key(),
                        "JWKS key skipped: an earlier key in the set has the same kid"
                    ),
                    None => set.unnamed.push(key),
                }
            }
            Err(why) => tracing::warn!(provider, kid = kid.as_deref().unwrap_or(""), why, "JWKS key skipped"),
        }
    }
    if set.by_kid.is_empty() && set.unnamed.is_empty() {
        return Err(FetchError::NoKeys);
    }
    set.fingerprint = fingerprint.finish();
    Ok(set)
}

fn key(value: &serde_json::Value) -> Result<Key, &'static str> {
    if value.get("use").and_then(|u| u.as_str()).is_some_and(|u| u != "sig") {
        return Err("not a signature key (`use` is not \"sig\")");
    }
    let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| "not a valid JWK")?;
    if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
        return Err("symmetric keys are never taken from a JWKS");
    }
    let algorithm = match value.get("alg").and_then(|a| a.as_str()) {
        Some(alg) => Some(Algorithm::from_str(alg).map_err(|_| "unsupported `alg`")?),
        None => None,
    };
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| "key parameters are not valid")?;
    Ok(Key { decoding: Arc::new(decoding), algorithm })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_among_directives_found() {
        let header = |v: &'static str| HeaderValue::from_static(v);
        assert_eq!(max_age(&header("public, max-age=600")), Some(Duration::from_secs(600)));
        assert_eq!(max_age(&header("no-store")), None);
        assert_eq!(max_age(&header("max-age=abc")), None);
    }

    #[test]
    fn parse_skips_unusable_keys_keeps_others() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "OKP", "kid": "enc", "use": "enc", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "OKP", "kid": "ed", "crv": "Ed25519", "alg": "EdDSA", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty": "RSA", "kid": "weird"}
        ]});
        let set = parse(body.to_string().as_bytes(), "p").unwrap();
        assert_eq!(set.by_kid.keys().collect::<Vec<_>>(), vec!["ed"]);
        assert_eq!(set.by_kid["ed"].algorithm, Some(Algorithm::EdDSA));
    }

    #[test]
    fn parse_keeps_the_first_of_two_keys_with_one_kid() {
        let x = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
        let first = serde_json::json!({"kty": "OKP", "kid": "same", "crv": "Ed25519", "alg": "EdDSA", "x": x});
        let second = serde_json::json!({"kty": "OKP", "kid": "same", "crv": "Ed25519", "x": x});
        let body = serde_json::json!({"keys": [first, second]});
        let set = parse(body.to_string().as_bytes(), "p").unwrap();
        assert_eq!(set.by_kid.len(), 1);
        assert_eq!(set.by_kid["same"].algorithm, Some(Algorithm::EdDSA));
    }

    #[test]
    fn parse_nothing_usable_is_an_error() {
        assert!(matches!(parse(br#"{"keys": []}"#, "p"), Err(FetchError::NoKeys)));
        assert!(matches!(parse(b"<html>", "p"), Err(FetchError::Json(_))));
    }
}
