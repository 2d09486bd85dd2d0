//! Checks `upstreams`: names, endpoint URLs, balancing, timeouts, pool, TLS, circuit breakers and
//! passive health.

pub(super) mod tls;

use std::time::Duration;

use http::Uri;
use serde_saphyr::{Location, Spanned};

use super::{check_name, duration, path_key, Report};
use crate::config::model::{defaults, CircuitBreaker, Endpoint, LoadBalancing, PassiveHealth, Pool, Upstream};
use crate::config::raw::{OrderedMap, RawCircuitBreaker, RawPassiveHealth, RawUpstream};
use crate::config::suggest;

const LOAD_BALANCING: [(&str, LoadBalancing); 2] =
    [("round_robin", LoadBalancing::RoundRobin), ("least_request", LoadBalancing::LeastRequest)];

pub(super) fn upstreams(report: &mut Report<'_>, raw: &Spanned<OrderedMap<RawUpstream>>) -> Vec<Upstream> {
    if raw.value.0.is_empty() {
        report
            .error(raw.referenced, "upstreams", "at least one upstream is required")
            .hint("add one, e.g. `echo: { endpoints: [http://127.0.0.1:9001] }`");
    }
    raw.value.0.iter().map(|(name, upstream)| self::upstream(report, name, upstream)).collect()
}

fn upstream(report: &mut Report<'_>, name: &Spanned<String>, raw: &RawUpstream) -> Upstream {
    let path = path_key("upstreams", &name.value);
    check_name(report, "upstream", name, &path);

    let endpoints_path = format!("{path}.endpoints");
    if raw.endpoints.value.is_empty() {
        report
            .error(raw.endpoints.referenced, &endpoints_path, "an upstream needs at least one endpoint")
            .hint("e.g. `endpoints: [http://127.0.0.1:9001]`");
    }
    let mut endpoints: Vec<Endpoint> = Vec::new();
    // Where each valid endpoint was written, for checks that point at one of them.
    let mut located: Vec<(String, Location)> = Vec::new();
    for (i, raw_endpoint) in raw.endpoints.value.iter().enumerate() {
        let endpoint_path = format!("{endpoints_path}[{i}]");
        let Some(endpoint) = self::endpoint(report, raw_endpoint, &endpoint_path) else { continue };
        if endpoints.contains(&endpoint) {
            // Legal, but it silently doubles that endpoint's share of the traffic.
            report
                .warn(raw_endpoint.referenced, &endpoint_path, format!("endpoint {} is listed twice", endpoint.uri))
                .hint("remove the duplicate");
        }
        located.push((endpoint_path, raw_endpoint.referenced));
        endpoints.push(endpoint);
    }

    let load_balancing = match &raw.load_balancing {
        None => LoadBalancing::RoundRobin,
        Some(lb) => match LOAD_BALANCING.iter().find(|(word, _)| *word == lb.value) {
            Some(&(_, policy)) => policy,
            None => {
                let words = LOAD_BALANCING.map(|(word, _)| word);
                let hint = match suggest::closest(&lb.value, words) {
                    Some(word) => format!("did you mean `{word}`? expected round_robin or least_request"),
                    None => "expected round_robin or least_request".to_owned(),
                };
                report
                    .error(
                        lb.referenced,
                        &format!("{path}.load_balancing"),
                        format!("unknown load_balancing {:?}", lb.value),
                    )
                    .hint(hint);
                LoadBalancing::RoundRobin
            }
        },
    };

    let connect_timeout =
        duration(report, raw.connect_timeout.as_ref(), &format!("{path}.connect_timeout"), defaults::CONNECT_TIMEOUT);
    let request_timeout =
        duration(report, raw.request_timeout.as_ref(), &format!("{path}.request_timeout"), defaults::REQUEST_TIMEOUT);
    let max_requests = raw.max_requests.as_ref().and_then(|n| {
        let valid = u32::try_from(n.value).ok().filter(|n| *n > 0);
        if valid.is_none() {
            (report.error(n.referenced, &format!("{path}.max_requests"), "max_requests must be 1 to 4294967295"))
                .hint("the most requests in flight to this upstream at once, e.g. 1024; omit it for no cap");
        }
        valid
    });
    let raw_pool = raw.pool.as_ref();
    let pool = Pool {
        idle_timeout: duration(
            report,
            raw_pool.and_then(|p| p.idle_timeout.as_ref()),
            &format!("{path}.pool.idle_timeout"),
            defaults::POOL_IDLE_TIMEOUT,
        ),
        // 0 is meaningful: keep no idle connections.
        max_idle_per_host: raw_pool
            .and_then(|p| p.max_idle_per_host.as_ref())
            .map_or(defaults::POOL_MAX_IDLE_PER_HOST, |n| n.value),
    };
    let tls = tls::upstream_tls(report, &name.value, raw.tls.as_ref(), &endpoints, &located, &path);
    let circuit_breaker = raw.circuit_breaker.as_ref().map(|raw| circuit_breaker(report, raw, &path));
    let passive_health = passive_health(report, raw.passive_health.as_ref().map(|raw| &raw.value), &path);
    if let Some(written) = raw.passive_health.as_ref().filter(|_| raw.endpoints.value.len() == 1) {
        (report.warn(
            written.referenced,
            &format!("{path}.passive_health"),
            "passive_health does nothing with one endpoint",
        ))
        .hint("a lone endpoint is always tried; to pause requests to a failing upstream, set `circuit_breaker`");
    }
    Upstream {
        name: name.value.clone(),
        endpoints,
        load_balancing,
        connect_timeout,
        request_timeout,
        max_requests,
        pool,
        tls,
        circuit_breaker,
        passive_health,
    }
}

/// `passive_health`: on by default, with nginx's settings; every key optional.
fn passive_health(report: &mut Report<'_>, raw: Option<&RawPassiveHealth>, path: &str) -> PassiveHealth {
    let path = format!("{path}.passive_health");
    let max_fails = match raw.and_then(|raw| raw.max_fails.as_ref()) {
        Some(n) => u32::try_from(n.value).unwrap_or_else(|_| {
            (report.error(n.referenced, &format!("{path}.max_fails"), "max_fails must be 0 to 4294967295"))
                .hint("failed connects in a row that take an endpoint out of rotation, e.g. 1; 0 never does");
            defaults::PASSIVE_MAX_FAILS
        }),
        None => defaults::PASSIVE_MAX_FAILS,
    };
    let raw_timeout = raw.and_then(|raw| raw.fail_timeout.as_ref());
    let key = format!("{path}.fail_timeout");
    let fail_timeout = match (duration(report, raw_timeout, &key, defaults::PASSIVE_FAIL_TIMEOUT), raw_timeout) {
        (timeout, Some(raw)) if timeout < Duration::from_secs(1) => {
            (report.error(raw.referenced, &key, "fail_timeout must be at least 1s"))
                .hint("how long an endpoint that cannot be connected to stays out of rotation, e.g. `10s`");
            defaults::PASSIVE_FAIL_TIMEOUT
        }
        (timeout, _) => timeout,
    };
    PassiveHealth { max_fails, fail_timeout }
}

/// `circuit_breaker`: every key optional (`circuit_breaker: {}` takes the defaults).
fn circuit_breaker(report: &mut Report<'_>, raw: &Spanned<RawCircuitBreaker>, path: &str) -> CircuitBreaker {
    let path = format!("{path}.circuit_breaker");
    let raw = &raw.value;
    let failure_rate = match &raw.failure_rate {
        Some(rate) if rate.value > 0.0 && rate.value <= 1.0 => rate.value,
        Some(rate) => {
            (report.error(
                rate.referenced,
                &format!("{path}.failure_rate"),
                "failure_rate must be above 0 and at most 1",
            ))
            .hint("the failed share of requests that opens the breaker, e.g. 0.5 for half");
            defaults::BREAKER_FAILURE_RATE
        }
        None => defaults::BREAKER_FAILURE_RATE,
    };
    let min_requests = match &raw.min_requests {
        Some(n) => u32::try_from(n.value).ok().filter(|n| *n > 0).unwrap_or_else(|| {
            (report.error(n.referenced, &format!("{path}.min_requests"), "min_requests must be 1 to 4294967295"))
                .hint("so a handful of failures on a quiet upstream does not open it, e.g. 20");
            defaults::BREAKER_MIN_REQUESTS
        }),
        None => defaults::BREAKER_MIN_REQUESTS,
    };
    let at_least_a_second = |report: &mut Report<'_>, raw: Option<&Spanned<String>>, key: &str, default| {
        let value = duration(report, raw, &format!("{path}.{key}"), default);
        match raw {
            Some(raw) if value < Duration::from_secs(1) => {
                (report.error(raw.referenced, &format!("{path}.{key}"), format!("{key} must be at least 1s")))
                    .hint(format!("e.g. `{key}: {}s`", default.as_secs()));
                default
            }
            _ => value,
        }
    };
    let window = at_least_a_second(report, raw.window.as_ref(), "window", defaults::BREAKER_WINDOW);
    let open_for = at_least_a_second(report, raw.open_for.as_ref(), "open_for", defaults::BREAKER_OPEN_FOR);
    CircuitBreaker { failure_rate, min_requests, window, open_for }
}

/// `http://host[:port][/]` or `https://host[:port][/]` and nothing else.
fn endpoint(report: &mut Report<'_>, raw: &Spanned<String>, path: &str) -> Option<Endpoint> {
    let text = raw.value.trim();
    let mut fail = |message: String, hint: &str| {
        report.error(raw.referenced, path, message).hint(hint);
        None
    };
    // Checked before parsing, and without quoting the URL: it would put a password in the logs.
    let authority_part =
        text.split_once("://").map_or("", |(_, rest)| rest.split(['/', '?', '#']).next().unwrap_or(""));
    if authority_part.contains('@') {
        return fail(
            "endpoint URL must not contain credentials (user:password@)".to_owned(),
            "remove them: the gateway does not authenticate to upstreams",
        );
    }
    let example = "write it as http://HOST:PORT, e.g. http://127.0.0.1:9001";
    let Ok(uri) = text.parse::<Uri>() else {
        return fail(format!("endpoint {text:?} is not a valid URL"), example);
    };
    let scheme = match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => "http",
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => "https",
        Some(scheme) => {
            return fail(format!("endpoint {text:?}: scheme {scheme:?} is not supported"), "use http:// or https://")
        }
        None => return fail(format!("endpoint {text:?} has no scheme"), &format!("write \"http://{text}\"")),
    };
    let Some(authority) = uri.authority().filter(|a| !a.host().is_empty()) else {
        return fail(format!("endpoint {text:?} has no host"), example);
    };
    // `http::Uri` accepts any text after the colon; `port_u16` is `None` unless it is a real port.
    let after_host = authority.as_str().get(authority.host().len()..).unwrap_or("");
    if !after_host.is_empty() && authority.port_u16().is_none() {
        return fail(format!("endpoint {text:?} has an invalid port"), example);
    }
    if authority.port_u16() == Some(0) {
        return fail(format!("endpoint {text:?} has port 0, which cannot be connected to"), example);
    }
    if !matches!(uri.path(), "" | "/") {
        return fail(
            format!("endpoint {text:?} has a path ({:?}); endpoints are scheme, host and port only", uri.path()),
            "remove the path; to send requests to a path prefix upstream, set `rewrite_prefix` on the route",
        );
    }
    if uri.query().is_some() || text.contains('#') {
        return fail(format!("endpoint {text:?} has a query or fragment"), "remove everything from `?` or `#` on");
    }
    match format!("{scheme}://{authority}").parse::<Uri>() {
        Ok(uri) => Some(Endpoint { uri }),
        Err(_) => fail(format!("endpoint {text:?} is not a valid URL"), example),
    }
}
