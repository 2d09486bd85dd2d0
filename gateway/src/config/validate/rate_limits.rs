//! Checks `redis` and `rate_limits`, and each route's `rate_limit` against them.

use std::time::Duration;

use redis::IntoConnectionInfo;
use serde_saphyr::Spanned;

use super::{check_name, duration, path_key, Report};
use crate::config::model::{defaults, RateLimit, RateLimitKey, Redis, Route};
use crate::config::raw::{OrderedMap, RawRateLimit, RawRedis, RawRoute};
use crate::config::suggest;

/// Windows are whole seconds at least: `RateLimit-Reset` and `Retry-After` count in seconds.
const MIN_WINDOW: Duration = Duration::from_secs(1);
/// Past a day a counter stops being a rate limit and becomes a quota, which wants a database.
const MAX_WINDOW: Duration = Duration::from_secs(24 * 60 * 60);
const KEY_HINT: &str = "use `client_ip`, `global`, or a token claim such as `jwt.sub`";

pub(super) fn redis(report: &mut Report<'_>, raw: Option<&Spanned<RawRedis>>) -> Option<Redis> {
    let raw = raw?;
    let timeout = duration(report, raw.value.timeout.as_ref(), "redis.timeout", defaults::REDIS_TIMEOUT);
    let connect_timeout =
        duration(report, raw.value.connect_timeout.as_ref(), "redis.connect_timeout", defaults::REDIS_CONNECT_TIMEOUT);
    let Some(url) = &raw.value.url else {
        (report.error(raw.referenced, "redis", "url is required"))
            .hint("e.g. `redis: { url: redis://127.0.0.1:6379 }`, or remove `redis` to count limits in-process");
        return None;
    };
    let scheme = url.value.split_once("://").map_or("", |(scheme, _)| scheme);
    let problem = match scheme {
        "redis" | "rediss" | "redis+unix" | "unix" => match url.value.as_str().into_connection_info() {
            Ok(_) => None,
            Err(_) => Some((
                "the Redis URL is not valid",
                "e.g. redis://127.0.0.1:6379, redis://:password@host:6379/0, or rediss:// for TLS",
            )),
        },
        _ => Some(("the Redis URL must start with redis:// (or rediss:// for TLS)", "e.g. redis://127.0.0.1:6379")),
    };
    if let Some((message, hint)) = problem {
        // Never echo the URL: it may hold a password.
        report.error(url.referenced, "redis.url", message).hint(hint);
        return None;
    }
    let ca = match &raw.value.ca {
        Some(ca) if scheme != "rediss" => {
            (report.error(ca.referenced, "redis.ca", "ca is only for TLS connections (a rediss:// url)"))
                .hint("use rediss:// to connect with TLS, or remove `ca`");
            return None;
        }
        Some(ca) => Some(super::upstreams::tls::ca_bundle(report, ca, "redis.ca")?),
        None => None,
    };
    let cluster = raw.value.cluster.as_ref().is_some_and(|cluster| cluster.value);
    if cluster && !matches!(scheme, "redis" | "rediss") {
        (report.error(url.referenced, "redis.url", "a Redis Cluster is reached over TCP"))
            .hint("give one node's redis:// (or rediss://) address; the others are learned from it");
        return None;
    }
    Some(Redis { url: url.value.clone(), ca, cluster, timeout, connect_timeout })
}

pub(super) fn rate_limits(
    report: &mut Report<'_>,
    raw: Option<&Spanned<OrderedMap<Spanned<RawRateLimit>>>>,
) -> Vec<RateLimit> {
    let Some(raw) = raw else { return Vec::new() };
    let mut limits = Vec::new();
    for (name, spanned) in &raw.value.0 {
        let path = path_key("rate_limits", &name.value);
        if check_name(report, "rate limit", name, &path) {
            limits.extend(rate_limit(report, &name.value, spanned, &path));
        }
    }
    limits
}

fn rate_limit(report: &mut Report<'_>, name: &str, at: &Spanned<RawRateLimit>, path: &str) -> Option<RateLimit> {
    let raw = &at.value;
    let requests = match &raw.requests {
        Some(requests) => match u32::try_from(requests.value) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                (report.error(requests.referenced, &format!("{path}.requests"), "requests must be 1 to 4294967295"))
                    .hint("the most requests one key may make per window");
                None
            }
        },
        None => {
            (report.error(at.referenced, path, "requests is required"))
                .hint("e.g. `{ requests: 100, window: 60s, key: client_ip }`");
            None
        }
    };
    let window = match &raw.window {
        Some(window) => {
            let value = duration(report, Some(window), &format!("{path}.window"), MIN_WINDOW);
            if !(MIN_WINDOW..=MAX_WINDOW).contains(&value) {
                (report.error(window.referenced, &format!("{path}.window"), "window must be 1s to 24h"))
                    .hint("e.g. `window: 60s`");
            }
            value
        }
        None => {
            report.error(at.referenced, path, "window is required").hint("e.g. `window: 60s`");
            MIN_WINDOW
        }
    };
    let key = match &raw.key {
        Some(key) => key_source(report, key, &format!("{path}.key")),
        None => {
            report.error(at.referenced, path, "key is required: what the budget is counted per").hint(KEY_HINT);
            None
        }
    };
    Some(RateLimit { name: name.to_owned(), requests: requests?, window, key: key? })
}

fn key_source(report: &mut Report<'_>, key: &Spanned<String>, path: &str) -> Option<RateLimitKey> {
    match key.value.as_str() {
        "client_ip" => Some(RateLimitKey::ClientIp),
        "global" => Some(RateLimitKey::Global),
        other => match other.strip_prefix("jwt.") {
            Some(claim) if !claim.is_empty() && claim.chars().all(|c| c.is_ascii_graphic()) => {
                Some(RateLimitKey::Claim(claim.to_owned()))
            }
            _ => {
                report.error(key.referenced, path, format!("unknown rate limit key {other:?}")).hint(KEY_HINT);
                None
            }
        },
    }
}

/// A route's `rate_limit`: a defined limit, and a token to count by when the limit is per claim.
pub(super) fn route_rate_limit(
    report: &mut Report<'_>,
    route: &RawRoute,
    limits: &[RateLimit],
    limit_names: &[&str],
    path: &str,
) -> Option<String> {
    let name = route.rate_limit.as_ref()?;
    let path = format!("{path}.rate_limit");
    if !limit_names.contains(&name.value.as_str()) {
        let hint = suggest::unknown_name_hint(&name.value, limit_names, "rate_limits");
        report.error(name.referenced, &path, format!("unknown rate limit {:?}", name.value)).hint(hint);
        return None;
    }
    let claim = limits.iter().find(|l| l.name == name.value).and_then(|l| match &l.key {
        RateLimitKey::Claim(claim) => Some(claim),
        _ => None,
    });
    if let (Some(claim), None) = (claim, &route.auth) {
        (report.error(
            name.referenced,
            &path,
            format!("rate limit {:?} counts per token claim `{claim}`, but this route checks no token", name.value),
        ))
        .hint("add `auth: { provider: NAME }` to the route, or use a limit keyed by client_ip");
    }
    Some(name.value.clone())
}

/// Limits no route names are probably a typo in a route's `rate_limit`.
pub(super) fn warn_unused(
    report: &mut Report<'_>,
    raw: Option<&Spanned<OrderedMap<Spanned<RawRateLimit>>>>,
    routes: &[Route],
) {
    let Some(raw) = raw else { return };
    for (name, _) in &raw.value.0 {
        if !routes.iter().any(|r| r.rate_limit.as_deref() == Some(name.value.as_str())) {
            report
                .warn(
                    name.referenced,
                    &path_key("rate_limits", &name.value),
                    format!("rate limit {:?} is not used by any route", name.value),
                )
                .hint(format!("remove it, or name it in a route with `rate_limit: {}`", name.value));
        }
    }
}
