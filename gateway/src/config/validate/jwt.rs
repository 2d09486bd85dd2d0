//! `jwt.providers` and each route's `auth` / `require`: issuers, audiences, the algorithm
//! allowlist, exactly one key source that fits it, and rules that name real providers.

use std::str::FromStr;
use std::time::Duration;

use http::Uri;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde_saphyr::Spanned;

use super::{check_name, duration, path_key, Report};
use crate::config::model::{defaults, ClaimRule, Jwks, JwtKeys, JwtProvider, PublicKey, RouteAuth, Secret};
use crate::config::raw::{RawJwt, RawJwtProvider, RawRoute};
use crate::config::suggest;

/// HMAC secrets shorter than the hash output weaken it (RFC 7518 section 3.2).
const MIN_SECRET_BYTES: usize = 32;

const ALGORITHMS_HINT: &str = "list what the issuer signs with, e.g. `algorithms: [RS256]`; accepted: HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA";

pub(super) fn providers(report: &mut Report<'_>, raw: Option<&RawJwt>) -> Vec<JwtProvider> {
    let Some(raw) = raw else { return Vec::new() };
    let mut providers = Vec::new();
    for (name, spanned) in &raw.providers.value.0 {
        let path = path_key("jwt.providers", &name.value);
        if check_name(report, "provider", name, &path) {
            providers.extend(provider(report, &name.value, spanned, &path));
        }
    }
    providers
}

fn provider(report: &mut Report<'_>, name: &str, at: &Spanned<RawJwtProvider>, path: &str) -> Option<JwtProvider> {
    let raw = &at.value;
    let issuer = match &raw.issuer {
        Some(issuer) if !issuer.value.trim().is_empty() => Some(issuer.value.clone()),
        Some(issuer) => {
            report.error(issuer.referenced, &format!("{path}.issuer"), "issuer must not be empty");
            None
        }
        None => {
            (report.error(at.referenced, path, "issuer is required: tokens from any issuer would be accepted"))
                .hint("add the `iss` value the issuer puts in its tokens, e.g. `issuer: https://auth.example.com`");
            None
        }
    };
    let audiences = audiences(report, at, path);
    let algorithms = algorithms(report, at, path);
    let keys = keys(report, at, path);
    if let Some(keys) = &keys {
        check_algorithms_fit_keys(report, raw, keys, path);
    }
    let leeway = duration(report, raw.leeway.as_ref(), &format!("{path}.leeway"), defaults::JWT_LEEWAY);
    let required_claims = (raw.required_claims.iter().flatten())
        .filter(|claim| !matches!(claim.value.as_str(), "exp" | "iss" | "aud"))
        .map(|claim| claim.value.clone())
        .collect();
    let realm = match &raw.realm {
        Some(realm) if realm.value.contains(['"', '\\']) || !realm.value.is_ascii() => {
            (report.error(realm.referenced, &format!("{path}.realm"), "realm must be ASCII without `\"` or `\\`"))
                .hint("it is quoted in the WWW-Authenticate header");
            None
        }
        Some(realm) => Some(realm.value.clone()),
        None => Some(name.to_owned()),
    };
    Some(JwtProvider {
        name: name.to_owned(),
        issuer: issuer?,
        audiences: audiences?,
        algorithms: algorithms?,
        keys: keys?,
        leeway,
        required_claims,
        realm: realm?,
    })
}

fn audiences(report: &mut Report<'_>, at: &Spanned<RawJwtProvider>, path: &str) -> Option<Vec<String>> {
    match &at.value.audiences {
        Some(list) if !list.value.is_empty() => Some(list.value.iter().map(|a| a.value.clone()).collect()),
        Some(list) => {
            (report.error(list.referenced, &format!("{path}.audiences"), "audiences must not be empty"))
                .hint("list the `aud` values this gateway's services accept, e.g. `audiences: [shop]`");
            None
        }
        None => {
            (report.error(
                at.referenced,
                path,
                "audiences is required: tokens minted for other services would be accepted",
            ))
            .hint("list the `aud` values this gateway's services accept, e.g. `audiences: [shop]`");
            None
        }
    }
}

fn algorithms(report: &mut Report<'_>, at: &Spanned<RawJwtProvider>, path: &str) -> Option<Vec<Algorithm>> {
    let Some(list) = &at.value.algorithms else {
        report
            .error(at.referenced, path, "algorithms is required: the allowlist of `alg` values")
            .hint(ALGORITHMS_HINT);
        return None;
    };
    if list.value.is_empty() {
        report
            .error(list.referenced, &format!("{path}.algorithms"), "algorithms must not be empty")
            .hint(ALGORITHMS_HINT);
        return None;
    }
    // The valid ones even when some are not, so the key fit is still checked (and reported).
    let mut algorithms = Vec::new();
    for (i, name) in list.value.iter().enumerate() {
        let item_path = format!("{path}.algorithms[{i}]");
        match Algorithm::from_str(name.value.trim()) {
            Ok(algorithm) => algorithms.push(algorithm),
            Err(_) if name.value.trim().eq_ignore_ascii_case("none") => {
                (report.error(name.referenced, &item_path, "`none` is never accepted: unsigned tokens prove nothing"))
                    .hint("remove it");
            }
            Err(_) => {
                let accepted = [
                    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384",
                    "EdDSA",
                ];
                let hint = suggest::did_you_mean(&name.value, accepted).unwrap_or_else(|| ALGORITHMS_HINT.to_owned());
                report.error(name.referenced, &item_path, format!("unknown algorithm {:?}", name.value)).hint(hint);
            }
        }
    }
    Some(algorithms)
}

/// Exactly one of `jwks_url`, `public_key`, `secret_env`.
fn keys(report: &mut Report<'_>, at: &Spanned<RawJwtProvider>, path: &str) -> Option<JwtKeys> {
    let raw = &at.value;
    let sources: Vec<(&str, &Spanned<String>)> =
        [("jwks_url", &raw.jwks_url), ("public_key", &raw.public_key), ("secret_env", &raw.secret_env)]
            .into_iter()
            .filter_map(|(name, value)| Some((name, value.as_ref()?)))
            .collect();
    let hint = "set one of `jwks_url` (a JWKS endpoint), `public_key` (a PEM file) or `secret_env` (an environment variable holding an HMAC secret)";
    match sources.as_slice() {
        [] => {
            report.error(at.referenced, path, "no key source: the gateway could not check signatures").hint(hint);
            return None;
        }
        [_] => {}
        [(first, _), (second, at), ..] => {
            report
                .error(at.referenced, path, format!("{first} and {second} both set: a provider has one key source"))
                .hint(hint);
            return None;
        }
    }
    if raw.jwks_url.is_none() {
        for (field, value) in [
            ("jwks_ca", &raw.jwks_ca),
            ("refresh_interval", &raw.refresh_interval),
            ("min_cache_age", &raw.min_cache_age),
            ("max_cache_age", &raw.max_cache_age),
        ] {
            if let Some(value) = value {
                (report.error(
                    value.referenced,
                    &format!("{path}.{field}"),
                    format!("{field} only applies to `jwks_url`"),
                ))
                .hint("remove it: only keys fetched from `jwks_url` use it");
            }
        }
    }
    if let Some(url) = &raw.jwks_url {
        return jwks(report, raw, url, path).map(JwtKeys::Jwks);
    }
    if let Some(file) = &raw.public_key {
        return public_key(report, file, &format!("{path}.public_key")).map(JwtKeys::PublicKey);
    }
    raw.secret_env.as_ref().and_then(|env| secret(report, env, &format!("{path}.secret_env"))).map(JwtKeys::Secret)
}

fn jwks(report: &mut Report<'_>, raw: &RawJwtProvider, url: &Spanned<String>, path: &str) -> Option<Jwks> {
    let url_path = format!("{path}.jwks_url");
    let example = "e.g. `jwks_url: https://auth.example.com/.well-known/jwks.json`";
    let parsed = url.value.trim().parse::<Uri>().ok().filter(|uri| {
        matches!(uri.scheme_str(), Some("http" | "https")) && uri.host().is_some_and(|host| !host.is_empty())
    });
    let Some(parsed) = parsed else {
        report
            .error(url.referenced, &url_path, format!("{:?} is not an http:// or https:// URL", url.value))
            .hint(example);
        return None;
    };
    if parsed.authority().is_some_and(|a| a.as_str().contains('@')) {
        report.error(url.referenced, &url_path, "jwks_url must not contain credentials").hint(example);
        return None;
    }
    let loopback = parsed
        .host()
        .is_some_and(|h| h == "localhost" || h.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()));
    if parsed.scheme_str() == Some("http") && !loopback {
        (report.warn(
            url.referenced,
            &url_path,
            "the key set is fetched over plain HTTP: anyone on the path could swap the keys",
        ))
        .hint("use https://");
    }
    let field = |name: &str| format!("{path}.{name}");
    let ca = match &raw.jwks_ca {
        Some(ca) if parsed.scheme_str() != Some("https") => {
            (report.error(ca.referenced, &field("jwks_ca"), "jwks_ca only applies to an https:// jwks_url"))
                .hint("use https:// for the key set, or remove jwks_ca");
            None
        }
        Some(ca) => super::upstreams::tls::ca_bundle(report, ca, &field("jwks_ca")),
        None => None,
    };
    let refresh_interval =
        duration(report, raw.refresh_interval.as_ref(), &field("refresh_interval"), defaults::JWKS_REFRESH_INTERVAL);
    let min_cache_age =
        duration(report, raw.min_cache_age.as_ref(), &field("min_cache_age"), defaults::JWKS_MIN_CACHE_AGE);
    let max_cache_age =
        duration(report, raw.max_cache_age.as_ref(), &field("max_cache_age"), defaults::JWKS_MAX_CACHE_AGE);
    for (name, value) in [("refresh_interval", refresh_interval), ("min_cache_age", min_cache_age)] {
        if value < Duration::from_secs(1) {
            let at = if name == "refresh_interval" { &raw.refresh_interval } else { &raw.min_cache_age };
            if let Some(at) = at {
                report
                    .error(at.referenced, &field(name), format!("{name} must be at least 1s"))
                    .hint("a shorter one would hammer the issuer");
            }
        }
    }
    if min_cache_age > max_cache_age {
        let at = raw.max_cache_age.as_ref().or(raw.min_cache_age.as_ref()).unwrap_or(url);
        report
            .error(at.referenced, &field("max_cache_age"), "max_cache_age is shorter than min_cache_age")
            .hint("min_cache_age is the floor and max_cache_age the cap on how long a key set is kept: the cap must not be below the floor");
    }
    Some(Jwks { url: parsed, ca, refresh_interval, min_cache_age, max_cache_age })
}

fn public_key(report: &mut Report<'_>, raw: &Spanned<String>, path: &str) -> Option<PublicKey> {
    let file = crate::config::resolve(report.file, &raw.value);
    let pem = super::tls::read(report, raw, &file, path, "public key")?;
    let parsed = [
        (AlgorithmFamily::Rsa, DecodingKey::from_rsa_pem(&pem)),
        (AlgorithmFamily::Ec, DecodingKey::from_ec_pem(&pem)),
        (AlgorithmFamily::Ed, DecodingKey::from_ed_pem(&pem)),
    ]
    .into_iter()
    .find_map(|(family, key)| Some((family, key.ok()?)));
    let Some((family, key)) = parsed else {
        report
            .error(
                raw.referenced,
                path,
                format!("{} holds no RSA, EC or Ed25519 public key in PEM form", file.display()),
            )
            .hint("export the issuer's public key, e.g. `openssl pkey -pubout -in private.pem -out public.pem`");
        return None;
    };
    Some(PublicKey { path: file, family, key: std::sync::Arc::new(key), pem: pem.into() })
}

fn secret(report: &mut Report<'_>, env: &Spanned<String>, path: &str) -> Option<Secret> {
    let value = match std::env::var_os(&env.value) {
        Some(value) => value.into_encoded_bytes(),
        None => {
            (report.error(env.referenced, path, format!("environment variable {} is not set", env.value)))
                .hint("export the HMAC secret in the gateway's environment; it is never written in the YAML");
            return None;
        }
    };
    if value.len() < MIN_SECRET_BYTES {
        (report.error(
            env.referenced,
            path,
            format!("the secret in {} is {} bytes; at least {MIN_SECRET_BYTES} are required", env.value, value.len()),
        ))
        .hint("use a random secret of 32 bytes or more (RFC 7518 section 3.2)");
        return None;
    }
    Some(Secret { env: env.value.clone(), value: value.into() })
}

/// An algorithm the keys cannot verify would turn every such token into a confusing 401, and an
/// HMAC algorithm next to a public key is the classic key-confusion hole: refuse both.
fn check_algorithms_fit_keys(report: &mut Report<'_>, raw: &RawJwtProvider, keys: &JwtKeys, path: &str) {
    let Some(list) = &raw.algorithms else { return };
    let known =
        list.value.iter().enumerate().filter_map(|(i, at)| Some((i, at, Algorithm::from_str(at.value.trim()).ok()?)));
    for (i, at, algorithm) in known {
        let family = algorithm.family();
        let problem = match keys {
            JwtKeys::Secret(_) if family != AlgorithmFamily::Hmac => Some("secret_env holds an HMAC secret; use HS256, HS384 or HS512"),
            JwtKeys::PublicKey(_) | JwtKeys::Jwks(_) if family == AlgorithmFamily::Hmac => {
                Some("HMAC algorithms need a shared secret (`secret_env`); with public keys they would let anyone who has the public key sign tokens")
            }
            JwtKeys::PublicKey(key) if key.family != family => Some(match key.family {
                AlgorithmFamily::Rsa => "the public key is RSA: use RS256, RS384, RS512, PS256, PS384 or PS512",
                AlgorithmFamily::Ec => "the public key is EC: use ES256 or ES384",
                _ => "the public key is Ed25519: use EdDSA",
            }),
            _ => None,
        };
        if let Some(hint) = problem {
            report
                .error(
                    at.referenced,
                    &format!("{path}.algorithms[{i}]"),
                    format!("algorithm {algorithm:?} does not fit this provider's keys"),
                )
                .hint(hint);
        }
    }
}

/// A route's `auth` and `require`, checked against the providers' names.
pub(super) fn route_auth(
    report: &mut Report<'_>,
    route: &RawRoute,
    providers: &[&str],
    path: &str,
) -> Option<RouteAuth> {
    let require = claim_rules(report, route, path);
    let Some(auth) = &route.auth else {
        if let Some(rules) = &route.require {
            (report.error(
                rules.referenced,
                &format!("{path}.require"),
                "require checks token claims, but this route checks no token",
            ))
            .hint("add `auth: { provider: NAME }`");
        }
        return None;
    };
    let provider = &auth.value.provider;
    if !providers.contains(&provider.value.as_str()) {
        let hint = suggest::unknown_name_hint(&provider.value, providers, "jwt.providers");
        report
            .error(
                provider.referenced,
                &format!("{path}.auth.provider"),
                format!("unknown JWT provider {:?}", provider.value),
            )
            .hint(hint);
    }
    let optional = auth.value.optional.as_ref().is_some_and(|o| o.value);
    if let (true, Some(rules)) = (optional, &route.require) {
        (report.error(
            rules.referenced,
            &format!("{path}.require"),
            "require cannot be met by requests without a token, which `optional: true` lets through",
        ))
        .hint("remove `optional: true` to require a token, or remove `require`");
    }
    Some(RouteAuth { provider: provider.value.clone(), optional, require })
}

fn claim_rules(report: &mut Report<'_>, route: &RawRoute, path: &str) -> Vec<ClaimRule> {
    let Some(rules) = &route.require else { return Vec::new() };
    let mut out = Vec::new();
    for (claim, values) in &rules.value.0 {
        let rule_path = path_key(&format!("{path}.require"), &claim.value);
        if values.value.is_empty() || values.value.iter().any(|v| v.value.trim().is_empty()) {
            (report.error(values.referenced, &rule_path, "list the values the claim must contain, none empty"))
                .hint("e.g. `require: { scope: [cart:write] }`");
            continue;
        }
        out.push(ClaimRule {
            claim: claim.value.clone(),
            values: values.value.iter().map(|v| v.value.clone()).collect(),
        });
    }
    out
}

/// Providers no route uses are probably a typo in a route's `auth.provider`.
pub(super) fn warn_unused_providers(report: &mut Report<'_>, raw: Option<&RawJwt>, routes: &[crate::config::Route]) {
    let Some(raw) = raw else { return };
    for (name, _) in &raw.providers.value.0 {
        if !routes.iter().any(|r| r.auth.as_ref().is_some_and(|a| a.provider == name.value)) {
            report
                .warn(
                    name.referenced,
                    &path_key("jwt.providers", &name.value),
                    format!("JWT provider {:?} is not used by any route", name.value),
                )
                .hint(format!("remove it, or protect a route with `auth: {{ provider: {} }}`", name.value));
        }
    }
}
