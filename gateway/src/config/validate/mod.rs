//! Raw YAML structs -> validated `Config`, collecting every problem before giving up.
//!
//! Each section is checked on its own and yields a best-effort value even when it is wrong (a
//! bad duration falls back to the default, a bad listener is skipped) so that later checks still
//! run and the author sees every problem in one go. The config is only returned when no error
//! was recorded, so those stand-ins never escape.

pub(in crate::config) mod expiry;
mod jwt;
mod matcher;
mod rate_limits;
mod routes;
mod server;
mod tls;
mod upstreams;

use std::time::Duration;

use serde_saphyr::{Location, Spanned};

use http::HeaderName;

use super::model::{defaults, Config};
use super::problem::{Problem, Problems, Severity};
use super::raw::{RawConfig, RawRoute};
use super::units;
use crate::proxy::IdentityHeaders;

/// The whole config, or every error found. Warnings come with a valid config only.
pub(crate) fn validate(file: &str, raw: &RawConfig) -> Result<(Config, Vec<Problem>), Problems> {
    let mut report = Report { file, problems: Vec::new() };
    let (listeners, admin) = server::listeners(&mut report, &raw.listeners, raw.admin.as_ref());
    let server = server::server(&mut report, raw.server.as_ref());
    let shutdown = server::shutdown(&mut report, raw.shutdown.as_ref());
    let upstreams = upstreams::upstreams(&mut report, &raw.upstreams);
    let jwt_providers = jwt::providers(&mut report, raw.jwt.as_ref());
    let provider_names: Vec<&str> =
        raw.jwt.iter().flat_map(|jwt| &jwt.providers.value.0).map(|(name, _)| name.value.as_str()).collect();
    let redis = rate_limits::redis(&mut report, raw.redis.as_ref());
    let rate_limits = rate_limits::rate_limits(&mut report, raw.rate_limits.as_ref());
    let limit_names: Vec<&str> =
        raw.rate_limits.iter().flat_map(|limits| &limits.value.0).map(|(name, _)| name.value.as_str()).collect();
    let routes = routes::routes(
        &mut report,
        &raw.routes,
        &raw.upstreams,
        &server,
        &provider_names,
        (&rate_limits, &limit_names),
    );
    jwt::warn_unused_providers(&mut report, raw.jwt.as_ref(), &routes);
    rate_limits::warn_unused(&mut report, raw.rate_limits.as_ref(), &routes);
    tls::host_coverage(&mut report, &raw.listeners.value, &listeners, &routes);
    let identity_headers = identity_headers(&mut report, raw.identity_headers.as_deref());
    refuse_identity_conditions(&mut report, &raw.routes.value, &identity_headers);
    let access_log = server::access_log(&mut report, raw.access_log.as_ref());

    let (errors, warnings): (Vec<Problem>, Vec<Problem>) =
        report.problems.into_iter().partition(|p| p.severity == Severity::Error);
    match Problems::new(errors) {
        Some(errors) => Err(errors),
        None => Ok((
            Config {
                listeners,
                admin,
                server,
                shutdown,
                upstreams,
                routes,
                identity_headers,
                jwt_providers,
                redis,
                rate_limits,
                access_log,
            },
            warnings,
        )),
    }
}

/// `identity_headers`: valid header names (lowercased), or the default list when absent.
fn identity_headers(report: &mut Report<'_>, raw: Option<&[Spanned<String>]>) -> Vec<HeaderName> {
    let Some(raw) = raw else {
        return defaults::IDENTITY_HEADERS.iter().map(|name| HeaderName::from_static(name)).collect();
    };
    (raw.iter().enumerate())
        .filter_map(|(i, name)| match HeaderName::from_bytes(name.value.trim().as_bytes()) {
            Ok(header) => match not_identity(&header) {
                None => Some(header),
                Some(why) => {
                    report
                        .error(name.referenced, &format!("identity_headers[{i}]"), format!("`{header}` {why}"))
                        .hint("list only headers that say who the caller is, e.g. x-user-id");
                    None
                }
            },
            Err(_) => {
                report
                    .error(
                        name.referenced,
                        &format!("identity_headers[{i}]"),
                        format!("{:?} is not a header name", name.value),
                    )
                    .hint("header names are letters, digits and `-`, e.g. x-user-id");
                None
            }
        })
        .collect()
}

/// A route's header condition on an identity header (or its `_` spelling) can never hold: the
/// header is removed from every request before routing.
fn refuse_identity_conditions(report: &mut Report<'_>, routes: &[Spanned<RawRoute>], identity: &[HeaderName]) {
    let identity = IdentityHeaders::new(identity);
    for (i, route) in routes.iter().enumerate() {
        let conditions = route.value.matcher.as_ref().and_then(|matcher| matcher.value.headers.as_ref());
        for (name, _) in conditions.iter().flat_map(|headers| &headers.0) {
            // An invalid name is reported where the match is checked.
            let Ok(header) = HeaderName::from_bytes(name.value.trim().as_bytes()) else { continue };
            if let Some(removed) = identity.removes(&header) {
                report
                    .error(
                        name.referenced,
                        &path_key(&format!("routes[{i}].match.headers"), &name.value),
                        format!("`{}` can never match: identity_headers removes `{removed}` from every request before routing", name.value),
                    )
                    .hint("match on another header; the gateway learns who the caller is from a checked token only");
            }
        }
    }
}

/// Why `header` cannot be an identity header, if it cannot: removed from every request, it would
/// break every request, or every checked one.
fn not_identity(header: &HeaderName) -> Option<String> {
    use http::header::{AUTHORIZATION, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING, UPGRADE};
    if header.as_str().trim_end_matches('*').contains('*') {
        return Some("may have a `*` only at its end (standing for any ending)".to_owned());
    }
    let framing = "cannot be removed: it frames the message, it does not say who sent it";
    let needed = [
        (HOST, "cannot be removed: every HTTP/1.1 request would lack its Host and get 400"),
        (
            AUTHORIZATION,
            "cannot be removed: it carries the token routes with `auth` check, and upstreams check it again",
        ),
        (CONTENT_LENGTH, framing),
        (TRANSFER_ENCODING, framing),
        (CONNECTION, framing),
        (UPGRADE, framing),
    ];
    let removes = IdentityHeaders::new(std::slice::from_ref(header));
    let (name, why) = needed.into_iter().find(|(name, _)| removes.removes(name).is_some())?;
    match header == name {
        true => Some(why.to_owned()),
        false => Some(format!("takes in `{name}`, which {why}")),
    }
}

/// Collects problems for one file.
pub(crate) struct Report<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

impl Report<'_> {
    /// Records an error at `at`; chain `.hint(...)` to say how to fix it.
    pub(crate) fn error(&mut self, at: Location, path: &str, message: impl Into<String>) -> &mut Problem {
        self.push(Severity::Error, at, path, message.into())
    }

    pub(crate) fn warn(&mut self, at: Location, path: &str, message: impl Into<String>) -> &mut Problem {
        self.push(Severity::Warning, at, path, message.into())
    }

    fn push(&mut self, severity: Severity, at: Location, path: &str, message: String) -> &mut Problem {
        let yaml_path = (!path.is_empty()).then(|| path.to_owned());
        let problem = Problem::new(severity, self.file, position(at), yaml_path, message);
        self.problems.push(problem);
        let last = self.problems.len() - 1;
        &mut self.problems[last]
    }
}

/// Line and column, 1-based; an unknown location (line 0, never expected) becomes 1:1.
pub(crate) fn position(at: Location) -> (usize, usize) {
    let convert = |n: u64| usize::try_from(n.max(1)).unwrap_or(usize::MAX);
    (convert(at.line()), convert(at.column()))
}

/// `parent.key`, or `parent["odd key"]` when the key would make the path ambiguous.
pub(crate) fn path_key(parent: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (plain, parent.is_empty()) {
        (true, true) => key.to_owned(),
        (true, false) => format!("{parent}.{key}"),
        (false, _) => format!("{parent}[{key:?}]"),
    }
}

/// A duration field: its value, or `default` when absent (or wrong, after recording why).
pub(crate) fn duration(
    report: &mut Report<'_>,
    raw: Option<&Spanned<String>>,
    path: &str,
    default: Duration,
) -> Duration {
    let Some(raw) = raw else { return default };
    units::parse_duration(&raw.value).unwrap_or_else(|e| {
        let problem = report.error(raw.referenced, path, e.message);
        problem.hint = e.hint;
        default
    })
}

/// A size field in bytes: its value, or `default` when absent (or wrong, after recording why).
pub(crate) fn size(report: &mut Report<'_>, raw: Option<&Spanned<String>>, path: &str, default: u64) -> u64 {
    let Some(raw) = raw else { return default };
    units::parse_size(&raw.value).unwrap_or_else(|e| {
        let problem = report.error(raw.referenced, path, e.message);
        problem.hint = e.hint;
        default
    })
}

/// Names label metrics and log lines, so keep them to a safe, greppable alphabet.
pub(crate) fn check_name(report: &mut Report<'_>, what: &str, name: &Spanned<String>, path: &str) -> bool {
    let value = &name.value;
    let ok_chars = value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if value.is_empty() || value.len() > 64 || !ok_chars {
        report
            .error(name.referenced, path, format!("{what} name {value:?} is not valid"))
            .hint("use 1 to 64 letters, digits, `-`, `_` or `.`");
        return false;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_key_plain_key_joined_with_dot() {
        assert_eq!(path_key("", "routes"), "routes");
        assert_eq!(path_key("upstreams", "product"), "upstreams.product");
    }

    #[test]
    fn path_key_odd_key_quoted() {
        assert_eq!(path_key("upstreams", "a.b"), "upstreams[\"a.b\"]");
        assert_eq!(path_key("", "x y"), "[\"x y\"]");
    }
}
