//! Checks a route's `match`: host pattern, path or path prefix, methods and headers.

use http::{HeaderName, HeaderValue, Method};
use serde_saphyr::Spanned;

use super::{path_key, Report};
use crate::config::model::{HostMatch, PathMatch, RouteMatch};
use crate::config::raw::{OrderedMap, RawMatch};
use crate::config::suggest;
use crate::proxy::path::Normalized;

/// The methods RFC 9110 §9 and RFC 5789 (PATCH) define; others are allowed as extensions.
const STANDARD_METHODS: [&str; 9] = ["GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"];

/// The validated match, or `None` when any part of it was wrong (the problems are recorded).
/// No `match` at all means every request.
pub(super) fn route_match(report: &mut Report<'_>, raw: Option<&Spanned<RawMatch>>, path: &str) -> Option<RouteMatch> {
    let Some(raw) = raw else {
        return Some(RouteMatch {
            host: None,
            path: PathMatch::Prefix("/".to_owned()),
            methods: Vec::new(),
            headers: Vec::new(),
        });
    };
    let raw = &raw.value;
    let host = match &raw.host {
        Some(h) => host(report, h, &format!("{path}.host")).map(Some),
        None => Some(None),
    };
    let path_match = path_match(report, raw, path);
    let methods = match &raw.methods {
        Some(m) => methods(report, m, &format!("{path}.methods")),
        None => Some(Vec::new()),
    };
    let headers = match &raw.headers {
        Some(h) => headers(report, h, &format!("{path}.headers")),
        None => Some(Vec::new()),
    };
    Some(RouteMatch { host: host?, path: path_match?, methods: methods?, headers: headers? })
}

fn path_match(report: &mut Report<'_>, raw: &RawMatch, path: &str) -> Option<PathMatch> {
    match (&raw.path, &raw.path_prefix) {
        (Some(exact), Some(_)) => {
            report
                .error(exact.referenced, path, "set either `path` or `path_prefix`, not both")
                .hint("`path` matches one exact path; `path_prefix` matches a path and everything below it");
            None
        }
        (Some(exact), None) => check_path(report, exact, &format!("{path}.path"), "path").map(PathMatch::Exact),
        (None, Some(prefix)) => check_path(report, prefix, &format!("{path}.path_prefix"), "path_prefix")
            .map(|p| PathMatch::Prefix(trim_prefix(&p))),
        (None, None) => Some(PathMatch::Prefix("/".to_owned())),
    }
}

/// `/api/` and `/api` are the same segment-aware prefix; keep one spelling (`/` stays `/`).
pub(super) fn trim_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// A path as routing sees it: absolute, no query or fragment, no dot segments.
pub(super) fn check_path(report: &mut Report<'_>, raw: &Spanned<String>, path: &str, what: &str) -> Option<String> {
    let value = &raw.value;
    let mut fail = |message: String, hint: String| {
        report.error(raw.referenced, path, message).hint(hint);
        None
    };
    if !value.starts_with('/') {
        return fail(format!("{what} {value:?} must start with \"/\""), format!("did you mean \"/{value}\"?"));
    }
    if value.contains(['?', '#']) {
        let why =
            if what == "rewrite_prefix" { "a rewrite replaces the path only" } else { "routes match on the path only" };
        return fail(
            format!("{what} {value:?} must not contain a query or fragment (`?` or `#`)"),
            format!("{why}; remove everything from `?` or `#` on"),
        );
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return fail(
            format!("{what} {value:?} contains spaces or control characters"),
            "percent-encode them as requests carry them, e.g. %20 for a space".to_owned(),
        );
    }
    let dot_segment = value.split('/').any(|segment| {
        let decoded = segment.to_ascii_lowercase().replace("%2e", ".");
        decoded == "." || decoded == ".."
    });
    if dot_segment {
        // Requests with such segments are rejected with 400 before routing.
        return fail(
            format!("{what} {value:?} contains a `.` or `..` segment"),
            "write the path without dot segments".to_owned(),
        );
    }
    // Requests are routed by their normalized path, so a route written another way never matches.
    if what != "rewrite_prefix" {
        match crate::proxy::path::normalize(value) {
            Ok(Normalized { path: Some(normal), .. }) => {
                return fail(
                    format!("{what} {value:?} can never match: requests are routed by their path with `//` merged and percent-encoded letters, digits and `-._~` decoded"),
                    format!("write {normal:?}"),
                )
            }
            Err(reason) => {
                return fail(format!("{what} {value:?} can never match: requests with such a path get 400"), reason.to_owned())
            }
            Ok(_) => {}
        }
    }
    Some(value.clone())
}

/// `api.example.com` or `*.example.com`: lowercase, no port, `*` only as the whole first label.
fn host(report: &mut Report<'_>, raw: &Spanned<String>, path: &str) -> Option<HostMatch> {
    let text = raw.value.trim().to_ascii_lowercase();
    let mut fail = |message: String, hint: &str| {
        report.error(raw.referenced, path, message).hint(hint);
        None
    };
    let quoted = format!("{:?}", raw.value);
    if text == "*" || text == "*." {
        return fail(format!("host {quoted} would match every host"), "leave `host` out to match any host");
    }
    if let Some((_, rest)) = text.split_once("://") {
        let name = rest.split(['/', ':']).next().unwrap_or(rest);
        return fail(format!("host {quoted} is a URL; `host` is a host name only"), &format!("write `host: {name}`"));
    }
    if text.contains(':') {
        return fail(
            format!("host {quoted} must not include a port"),
            "remove the port: it is ignored when matching (e.g. `host: api.example.com`)",
        );
    }
    let (wildcard, name) = match text.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, text.as_str()),
    };
    if name.contains('*') {
        return fail(
            format!("host pattern {quoted} is not valid: `*` is only allowed as the whole first label"),
            "write an exact host (api.example.com) or a suffix pattern (*.example.com)",
        );
    }
    if name.ends_with('.') {
        return fail(format!("host {quoted} ends with a dot"), "remove the trailing dot");
    }
    if !is_hostname(name) {
        return fail(
            format!("host {quoted} is not a valid host name"),
            "use letters, digits, `-` and dots, e.g. api.example.com; write international names in punycode (xn--...)",
        );
    }
    Some(if wildcard { HostMatch::Suffix(format!(".{name}")) } else { HostMatch::Exact(name.to_owned()) })
}

/// RFC 1123 host name (underscore tolerated: it is common in internal names).
fn is_hostname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

fn methods(report: &mut Report<'_>, raw: &Spanned<Vec<Spanned<String>>>, path: &str) -> Option<Vec<Method>> {
    if raw.value.is_empty() {
        // Empty would mean "any method", the opposite of what a list suggests: make it explicit.
        report
            .error(raw.referenced, path, "methods is an empty list")
            .hint("leave `methods` out to allow every method");
    }
    let mut ok = !raw.value.is_empty();
    let mut methods: Vec<Method> = Vec::new();
    for (i, m) in raw.value.iter().enumerate() {
        let item_path = format!("{path}[{i}]");
        let text = m.value.trim();
        let standard = STANDARD_METHODS.iter().find(|s| s.eq_ignore_ascii_case(text));
        if let Some(standard) = standard.filter(|s| **s != text) {
            // RFC 9110 §9.1: method names are case-sensitive; `get` never matches a GET request.
            report
                .error(
                    m.referenced,
                    &item_path,
                    format!("method {text:?} is not uppercase; HTTP methods are case-sensitive"),
                )
                .hint(format!("did you mean `{standard}`?"));
            ok = false;
            continue;
        }
        let method = if text.is_empty() { None } else { Method::from_bytes(text.as_bytes()).ok() };
        let Some(method) = method else {
            report
                .error(m.referenced, &item_path, format!("{text:?} is not a valid HTTP method"))
                .hint("use a method name such as GET or POST");
            ok = false;
            continue;
        };
        // Requests with these are refused before routing (see `proxy::check_method`): a route
        // listing one would never match.
        let never = if method == Method::CONNECT {
            Some("CONNECT is never forwarded: the gateway opens no tunnels")
        } else if text.bytes().any(|b| b.is_ascii_lowercase()) {
            Some("requests with lower-case methods are refused (400) before routing")
        } else {
            None
        };
        if let Some(reason) = never {
            report
                .error(m.referenced, &item_path, format!("method {text:?} can never match: {reason}"))
                .hint("remove it from `methods`");
            ok = false;
            continue;
        }
        if standard.is_none() {
            if let Some(close) = suggest::closest(text, STANDARD_METHODS) {
                report
                    .warn(m.referenced, &item_path, format!("{text:?} is not a standard HTTP method"))
                    .hint(format!("did you mean `{close}`? (extension methods are allowed)"));
            }
        }
        if !methods.contains(&method) {
            methods.push(method);
        }
    }
    ok.then_some(methods)
}

fn headers(
    report: &mut Report<'_>,
    raw: &OrderedMap<Spanned<String>>,
    path: &str,
) -> Option<Vec<(HeaderName, HeaderValue)>> {
    let mut ok = true;
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    let mut seen: Vec<HeaderName> = Vec::new();
    for (name, value) in &raw.0 {
        let header_path = path_key(path, &name.value);
        // `from_bytes` lowercases: header names are case-insensitive (RFC 9110 §5.1).
        let Ok(header) = HeaderName::from_bytes(name.value.trim().as_bytes()) else {
            report
                .error(name.referenced, &header_path, format!("invalid header name {:?}", name.value))
                .hint("header names are letters, digits and !#$%&'*+-.^_`|~ (no spaces or colons)");
            ok = false;
            continue;
        };
        if seen.contains(&header) {
            report
                .error(
                    name.referenced,
                    &header_path,
                    format!("header `{header}` is listed twice (names are case-insensitive)"),
                )
                .hint("keep one entry per header");
            ok = false;
            continue;
        }
        seen.push(header.clone());
        if value.value.trim_matches([' ', '\t']) != value.value {
            report
                .error(value.referenced, &header_path, format!("the value for header `{header}` has spaces around it"))
                .hint("requests' values are compared without the spaces around them: remove them");
            ok = false;
            continue;
        }
        // The value is not quoted back: match headers may carry keys.
        let Ok(header_value) = HeaderValue::from_str(&value.value) else {
            report
                .error(value.referenced, &header_path, format!("invalid value for header `{header}`"))
                .hint("header values are visible ASCII characters and spaces");
            ok = false;
            continue;
        };
        headers.push((header, header_value));
    }
    ok.then_some(headers)
}
