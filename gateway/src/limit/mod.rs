//! Rate limits: a sliding-window budget per key, counted in Redis when configured (shared by every
//! gateway instance) and in-process otherwise or while Redis is unreachable.

mod local;
mod redis;
mod window;

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

pub use self::local::LocalLimiter;
pub use self::redis::RedisStore;
use crate::auth::Claims;
use crate::config::{self, RateLimitKey};
use crate::metrics::{self, RateLimitMetrics};
use crate::text;

/// One rate-limit decision, with what the `RateLimit-*` response headers report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The budget: requests per window.
    pub limit: u32,
    /// Requests left in the budget after this one (0 when denied).
    pub remaining: u32,
    /// Until the budget is whole again (`RateLimit-Reset`).
    pub reset: Duration,
    /// When denied: until a request would be allowed (`Retry-After`); zero when allowed.
    pub retry_after: Duration,
}

/// A route's budget, ready to decide: counted in Redis when configured and reachable, otherwise
/// by the in-process limiter (per gateway instance, same requests per window).
#[derive(Debug)]
pub struct RateLimit {
    /// What it was built from: a reload compares against it to decide what to carry over.
    config: config::RateLimit,
    /// Kept across reloads while `requests` and `window` are unchanged, so a reload never hands
    /// out a fresh budget.
    local: Arc<LocalLimiter>,
    redis: Option<Arc<RedisStore>>,
    /// Decisions the in-process limiter made because Redis could not answer.
    fallbacks: AtomicU64,
    metrics: RateLimitMetrics,
}

impl RateLimit {
    /// Builds a limit, carrying over from `previous` (the running one of the same name): all of it
    /// when nothing changed, else its in-process counts when the budget itself is unchanged.
    pub fn build(
        config: &config::RateLimit,
        redis: Option<&Arc<RedisStore>>,
        previous: Option<&Arc<RateLimit>>,
    ) -> Arc<RateLimit> {
        let same_redis = |p: &RateLimit| match (&p.redis, redis) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        if let Some(previous) = previous.filter(|p| p.config == *config && same_redis(p)) {
            return previous.clone();
        }
        let local = match previous.filter(|p| p.config.requests == config.requests && p.config.window == config.window)
        {
            Some(previous) => previous.local.clone(),
            None => Arc::new(LocalLimiter::new(config.requests, config.window)),
        };
        Arc::new(RateLimit {
            config: config.clone(),
            local,
            redis: redis.cloned(),
            fallbacks: AtomicU64::new(0),
            metrics: metrics::global().rate_limit(&config.name),
        })
    }

    /// Whether its key is a claim of the verified token, so it can only be counted after auth.
    pub fn keyed_by_claim(&self) -> bool {
        matches!(self.config.key, RateLimitKey::Claim(_))
    }

    /// What this request is counted as: its client address, a claim of its verified token (the
    /// client address when there is no token or no such claim), or one shared budget.
    pub fn key(&self, client_ip: IpAddr, claims: Option<&Claims>) -> String {
        let claim = |name: &str| match claims?.get(name)? {
            Value::String(string) => Some(Cow::Borrowed(string.as_str())),
            Value::Number(number) => Some(Cow::Owned(number.to_string())),
            _ => None,
        };
        let (prefix, value) = match &self.config.key {
            RateLimitKey::Global => return String::new(),
            RateLimitKey::ClientIp => ("ip:", None),
            RateLimitKey::Claim(name) => match claim(name) {
                Some(value) if value.len() > MAX_CLAIM_IN_KEY => ("jwt#", Some(Cow::Owned(digest_hex(&value)))),
                Some(value) => ("jwt:", Some(value)),
                None => ("ip:", None),
            },
        };
        let mut key = String::with_capacity(prefix.len() + value.as_ref().map_or(39, |v| v.len()));
        key.push_str(prefix);
        match value {
            Some(value) => key.push_str(&value),
            None => text::push_ip(&mut key, client_ip.to_canonical()),
        }
        key
    }

    /// Decides one request for `key`, and counts it when allowed.
    pub async fn check(&self, key: &str) -> Decision {
        if let Some(redis) = &self.redis {
            let mut counted_as = String::with_capacity(self.config.name.len() + 1 + key.len());
            counted_as.push_str(&self.config.name);
            counted_as.push(':');
            counted_as.push_str(key);
            match redis.check(counted_as, self.config.requests, self.config.window).await {
                Ok(decision) => {
                    let counter =
                        if decision.allowed { &self.metrics.allowed_redis } else { &self.metrics.denied_redis };
                    counter.inc();
                    return decision;
                }
                Err(error) => {
                    self.fallbacks.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(limit = %self.config.name, %error, "rate limit decided in-process");
                }
            }
        }
        let decision = self.local.check(key);
        let counter = if decision.allowed { &self.metrics.allowed_local } else { &self.metrics.denied_local };
        counter.inc();
        decision
    }

    /// For `GET /admin/ratelimit`.
    pub fn status(&self) -> Value {
        json!({
            "name": self.config.name,
            "requests": self.config.requests,
            "window": match self.config.window.subsec_millis() {
                0 => format!("{}s", self.config.window.as_secs()),
                _ => format!("{}ms", self.config.window.as_millis()),
            },
            "key": match &self.config.key {
                RateLimitKey::ClientIp => "client_ip".to_owned(),
                RateLimitKey::Global => "global".to_owned(),
                RateLimitKey::Claim(claim) => format!("jwt.{claim}"),
            },
            "local_keys": self.local.keys(),
            "local_keys_forgotten": self.local.forgot_all(),
            "fallback_decisions": self.fallbacks.load(Ordering::Relaxed),
        })
    }
}

/// The shared Redis store (with a connection per worker thread), carried over from `previous`
/// while its settings are unchanged (so a reload keeps the connections).
pub fn redis_store(
    config: Option<&config::Redis>,
    workers: usize,
    previous: Option<&Arc<RedisStore>>,
) -> Option<Arc<RedisStore>> {
    let config = config?;
    match previous.filter(|p| p.config() == config) {
        Some(previous) => Some(previous.clone()),
        None => Some(RedisStore::start(config, workers)),
    }
}

/// Longest claim value a limit's key holds as it is. A longer one counts by its digest (`jwt#`, so
/// it never meets a short value spelled like one): a token of up to 8 KiB may carry a claim of
/// kilobytes, and a million such keys would take gigabytes of the in-process limiter's memory, and
/// of Redis's.
const MAX_CLAIM_IN_KEY: usize = 64;

/// The first 128 bits of `value`'s SHA-256, in hex.
fn digest_hex(value: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, value.as_bytes());
    let mut hex = [0_u8; 32];
    for (digits, bytes) in hex.chunks_mut(16).zip(digest.as_ref().chunks(8)) {
        let mut word = [0_u8; 8];
        word.copy_from_slice(bytes);
        text::put_hex(digits, u64::from_be_bytes(word));
    }
    String::from_utf8_lossy(&hex).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(requests: u32, key: RateLimitKey) -> config::RateLimit {
        config::RateLimit { name: "l".into(), requests, window: Duration::from_secs(60), key }
    }

    #[test]
    fn key_by_client_ip_claim_or_global() {
        let mapped: IpAddr = "::ffff:1.2.3.4".parse().unwrap();
        let claims: Claims = serde_json::from_str(r#"{"sub":"alice","org":42,"roles":["a"]}"#).unwrap();
        let key = |key, claims| RateLimit::build(&limit(1, key), None, None).key(mapped, claims);
        assert_eq!(key(RateLimitKey::ClientIp, Some(&claims)), "ip:1.2.3.4");
        assert_eq!(key(RateLimitKey::Claim("sub".into()), Some(&claims)), "jwt:alice");
        assert_eq!(key(RateLimitKey::Claim("org".into()), Some(&claims)), "jwt:42");
        // No usable claim, or no token: counted per client address instead.
        assert_eq!(key(RateLimitKey::Claim("roles".into()), Some(&claims)), "ip:1.2.3.4");
        assert_eq!(key(RateLimitKey::Claim("sub".into()), None), "ip:1.2.3.4");
        assert_eq!(key(RateLimitKey::Global, Some(&claims)), "");
        // A long claim counts by its digest, whatever its length.
        let long = |sub: &str| serde_json::from_value::<Claims>(serde_json::json!({ "sub": sub })).unwrap();
        let (a, b) = (long(&"a".repeat(5000)), long(&format!("{}b", "a".repeat(4999))));
        let (key_a, key_b) =
            (key(RateLimitKey::Claim("sub".into()), Some(&a)), key(RateLimitKey::Claim("sub".into()), Some(&b)));
        assert!(key_a.starts_with("jwt#") && key_a.len() == 36, "{key_a}");
        assert_ne!(key_a, key_b);
        assert_eq!(key_a, key(RateLimitKey::Claim("sub".into()), Some(&a)));
        assert_eq!(digest_hex("abc"), "ba7816bf8f01cfea414140de5dae2223", "SHA-256's first 128 bits");
        let just_short = long(&"a".repeat(64));
        assert_eq!(key(RateLimitKey::Claim("sub".into()), Some(&just_short)), format!("jwt:{}", "a".repeat(64)));
    }

    #[tokio::test]
    async fn build_carries_over_counts_while_the_budget_is_unchanged() {
        let first = RateLimit::build(&limit(1, RateLimitKey::Global), None, None);
        assert!(first.check("").await.allowed);
        assert!(Arc::ptr_eq(&first, &RateLimit::build(&limit(1, RateLimitKey::Global), None, Some(&first))));

        // Another key source, same budget: a new limit that still remembers what was spent.
        let rekeyed = RateLimit::build(&limit(1, RateLimitKey::ClientIp), None, Some(&first));
        assert!(!Arc::ptr_eq(&first, &rekeyed));
        assert!(!rekeyed.check("").await.allowed);

        // A new budget starts afresh.
        let raised = RateLimit::build(&limit(2, RateLimitKey::ClientIp), None, Some(&rekeyed));
        assert!(raised.check("").await.allowed);
    }
}
