//! Checks `routes`: names, upstream references, rewrites, limits, token checks, rate limits, and routes that can
//! never win.

use std::collections::HashMap;
use std::time::Duration;

use serde_saphyr::Spanned;

use super::matcher::{check_path, route_match, trim_prefix};
use super::{check_name, duration, path_key, size, Report};
use super::{jwt, rate_limits};
use crate::config::model::{HostMatch, PathMatch, RateLimit, Rewrite, Route, RouteMatch, Server};
use crate::config::raw::{OrderedMap, RawRoute, RawUpstream};
use crate::config::suggest;

pub(super) fn routes(
    report: &mut Report<'_>,
    raw: &Spanned<Vec<Spanned<RawRoute>>>,
    upstreams: &Spanned<OrderedMap<RawUpstream>>,
    server: &Server,
    providers: &[&str],
    (limits, limit_names): (&[RateLimit], &[&str]),
) -> Vec<Route> {
    if raw.value.is_empty() {
        report
            .error(raw.referenced, "routes", "at least one route is required")
            .hint("add one, e.g. `- { name: all, upstream: echo }` (no `match` means every request)");
    }
    let upstream_names: Vec<&str> = upstreams.value.0.iter().map(|(name, _)| name.value.as_str()).collect();
    let mut routes = Vec::new();
    // Matches that validated, for the shadowing check, by host and path (only a route with the
    // same two can shadow another): (index, route). A map, as generated configs run to thousands.
    let mut matches: HashMap<(Option<HostMatch>, PathMatch), Vec<Validated<'_>>> = HashMap::new();
    // The first route of each name.
    let mut names: HashMap<&str, usize> = HashMap::new();
    for (i, spanned) in raw.value.iter().enumerate() {
        let path = format!("routes[{i}]");
        let route = &spanned.value;
        check_unique_name(report, &raw.value, &mut names, i, &path);
        let matcher = route_match(report, route.matcher.as_ref(), &format!("{path}.match"));
        check_upstream(report, &route.upstream, &upstream_names, &format!("{path}.upstream"));
        let rewrite = rewrite(report, route, &path);
        let timeout =
            route.timeout.as_ref().map(|t| duration(report, Some(t), &format!("{path}.timeout"), Duration::ZERO));
        let max_body_size =
            size(report, route.max_body_size.as_ref(), &format!("{path}.max_body_size"), server.max_body_size);
        let auth = jwt::route_auth(report, route, providers, &path);
        let rate_limit = rate_limits::route_rate_limit(report, route, limits, limit_names, &path);
        if let Some(matcher) = matcher {
            let same_place = matches.entry((matcher.host.clone(), matcher.path.clone())).or_default();
            if let Some((earlier_index, earlier)) =
                same_place.iter().find(|(_, _, m)| m.shadows(&matcher)).map(|(j, r, _)| (*j, *r))
            {
                report
                    .error(
                        spanned.referenced,
                        &path,
                        format!(
                            "route {:?} can never match: route {:?} (routes[{earlier_index}], line {}) matches every request it would, and wins ties by file order",
                            route.name.value,
                            earlier.value.name.value,
                            earlier.referenced.line()
                        ),
                    )
                    .hint("make its match more specific (host, path, methods or headers) or remove it");
            }
            same_place.push((i, spanned, matcher.clone()));
            routes.push(Route {
                name: route.name.value.clone(),
                matcher,
                upstream: route.upstream.value.clone(),
                rewrite,
                timeout,
                preserve_host: route.preserve_host.unwrap_or(true),
                allow_encoded_slashes: route.allow_encoded_slashes.unwrap_or(false),
                max_body_size,
                auth,
                rate_limit,
            });
        }
    }
    warn_unused_upstreams(report, raw, upstreams);
    routes
}

/// A route whose match validated: its index, the route, its match.
type Validated<'a> = (usize, &'a Spanned<RawRoute>, RouteMatch);

fn check_unique_name<'a>(
    report: &mut Report<'_>,
    all: &'a [Spanned<RawRoute>],
    names: &mut HashMap<&'a str, usize>,
    i: usize,
    path: &str,
) {
    let Some(route) = all.get(i) else { return };
    let name = &route.value.name;
    let name_path = format!("{path}.name");
    if !check_name(report, "route", name, &name_path) {
        return;
    }
    let first = *names.entry(&name.value).or_insert(i);
    if let Some(r) = all.get(first).filter(|_| first != i) {
        report
            .error(
                name.referenced,
                &name_path,
                format!(
                    "route name {:?} is already used by routes[{first}] (line {})",
                    name.value,
                    r.referenced.line()
                ),
            )
            .hint("route names must be unique: they label metrics and logs");
    }
}

fn check_upstream(report: &mut Report<'_>, upstream: &Spanned<String>, names: &[&str], path: &str) {
    if names.contains(&upstream.value.as_str()) {
        return;
    }
    let hint = suggest::unknown_name_hint(&upstream.value, names, "upstreams");
    report.error(upstream.referenced, path, format!("unknown upstream {:?}", upstream.value)).hint(hint);
}

/// `strip_prefix` and `rewrite_prefix` both say what replaces the matched prefix: one at most.
fn rewrite(report: &mut Report<'_>, route: &RawRoute, path: &str) -> Rewrite {
    let strip = route.strip_prefix.as_ref().is_some_and(|s| s.value);
    match &route.rewrite_prefix {
        Some(prefix) if strip => {
            report
                .error(prefix.referenced, &format!("{path}.rewrite_prefix"), "strip_prefix and rewrite_prefix cannot be used together")
                .hint("rewrite_prefix already replaces the matched prefix (`rewrite_prefix: /` strips it); remove strip_prefix");
            Rewrite::None
        }
        Some(prefix) => check_path(report, prefix, &format!("{path}.rewrite_prefix"), "rewrite_prefix")
            .map_or(Rewrite::None, |p| Rewrite::ReplacePrefix(trim_prefix(&p))),
        None if strip => {
            let matcher = route.matcher.as_ref().map(|matcher| &matcher.value);
            let prefix_is_root = matcher.is_none_or(|m| {
                m.path.is_none() && m.path_prefix.as_ref().is_none_or(|prefix| trim_prefix(&prefix.value) == "/")
            });
            if let Some(strip) = route.strip_prefix.as_ref().filter(|_| prefix_is_root) {
                report
                    .warn(
                        strip.referenced,
                        &format!("{path}.strip_prefix"),
                        "strip_prefix strips nothing: the route's prefix is /",
                    )
                    .hint("remove it, or give the route the path_prefix to strip");
            }
            Rewrite::StripPrefix
        }
        None => Rewrite::None,
    }
}

fn warn_unused_upstreams(
    report: &mut Report<'_>,
    routes: &Spanned<Vec<Spanned<RawRoute>>>,
    upstreams: &Spanned<OrderedMap<RawUpstream>>,
) {
    for (name, _) in &upstreams.value.0 {
        if !routes.value.iter().any(|r| r.value.upstream.value == name.value) {
            report
                .warn(
                    name.referenced,
                    &path_key("upstreams", &name.value),
                    format!("upstream {:?} is not used by any route", name.value),
                )
                .hint(format!("remove it, or point a route at it with `upstream: {}`", name.value));
        }
    }
}
