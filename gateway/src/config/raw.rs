//! The YAML exactly as written: serde structs with no logic, unknown keys rejected.
//!
//! Values whose meaning is checked later (names, durations, sizes, URLs, paths...) stay strings
//! wrapped in `Spanned`, so validation can point at their line and column.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_saphyr::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub listeners: Spanned<Vec<RawListener>>,
    pub admin: Option<RawAdmin>,
    pub server: Option<RawServer>,
    pub shutdown: Option<RawShutdown>,
    pub upstreams: Spanned<OrderedMap<RawUpstream>>,
    pub routes: Spanned<Vec<Spanned<RawRoute>>>,
    pub identity_headers: Option<Vec<Spanned<String>>>,
    pub jwt: Option<RawJwt>,
    pub redis: Option<Spanned<RawRedis>>,
    pub rate_limits: Option<Spanned<OrderedMap<Spanned<RawRateLimit>>>>,
    pub access_log: Option<Spanned<RawAccessLog>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub path: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub url: Option<Spanned<String>>,
    pub ca: Option<Spanned<String>>,
    pub cluster: Option<Spanned<bool>>,
    pub timeout: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
}

/// Required keys are `Option` so validation can say what is missing with a hint, and keep going.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    pub requests: Option<Spanned<u64>>,
    pub window: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwt {
    pub providers: Spanned<OrderedMap<Spanned<RawJwtProvider>>>,
}

/// Required keys are `Option` so validation can say what is missing with a hint, and keep going.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawJwtProvider {
    pub issuer: Option<Spanned<String>>,
    pub audiences: Option<Spanned<Vec<Spanned<String>>>>,
    pub algorithms: Option<Spanned<Vec<Spanned<String>>>>,
    pub jwks_url: Option<Spanned<String>>,
    pub jwks_ca: Option<Spanned<String>>,
    pub refresh_interval: Option<Spanned<String>>,
    pub min_cache_age: Option<Spanned<String>>,
    pub max_cache_age: Option<Spanned<String>>,
    pub public_key: Option<Spanned<String>>,
    pub secret_env: Option<Spanned<String>>,
    pub leeway: Option<Spanned<String>>,
    pub required_claims: Option<Vec<Spanned<String>>>,
    pub realm: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRouteAuth {
    pub provider: Spanned<String>,
    pub optional: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    pub tls: Option<RawListenerTls>,
    pub redirect_https: Option<Spanned<RawRedirectHttps>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedirectHttps {
    pub port: Spanned<u16>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHsts {
    pub max_age: Spanned<String>,
    pub include_subdomains: Option<bool>,
    pub preload: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientAuth {
    pub ca: Spanned<String>,
    pub required: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListenerTls {
    pub certificates: Spanned<Vec<RawCertificate>>,
    pub min_version: Option<Spanned<String>>,
    pub handshake_timeout: Option<Spanned<String>>,
    pub hsts: Option<RawHsts>,
    pub client_auth: Option<RawClientAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertificate {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
    pub default: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub address: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub max_header_size: Option<Spanned<String>>,
    pub max_headers: Option<Spanned<usize>>,
    pub max_connections: Option<Spanned<usize>>,
    pub max_connections_per_ip: Option<Spanned<usize>>,
    pub header_read_timeout: Option<Spanned<String>>,
    pub idle_timeout: Option<Spanned<String>>,
    pub max_body_size: Option<Spanned<String>>,
    pub trusted_proxies: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShutdown {
    pub drain_timeout: Option<Spanned<String>>,
    pub accept_grace: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstream {
    pub endpoints: Spanned<Vec<Spanned<String>>>,
    pub load_balancing: Option<Spanned<String>>,
    pub connect_timeout: Option<Spanned<String>>,
    pub request_timeout: Option<Spanned<String>>,
    pub max_requests: Option<Spanned<u64>>,
    pub pool: Option<RawPool>,
    pub tls: Option<Spanned<RawUpstreamTls>>,
    pub circuit_breaker: Option<Spanned<RawCircuitBreaker>>,
    pub passive_health: Option<Spanned<RawPassiveHealth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPassiveHealth {
    pub max_fails: Option<Spanned<u64>>,
    pub fail_timeout: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCircuitBreaker {
    pub failure_rate: Option<Spanned<f64>>,
    pub min_requests: Option<Spanned<u64>>,
    pub window: Option<Spanned<String>>,
    pub open_for: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub ca: Option<Spanned<String>>,
    pub server_name: Option<Spanned<String>>,
    pub insecure_skip_verify: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawPool {
    pub idle_timeout: Option<Spanned<String>>,
    pub max_idle_per_host: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub name: Spanned<String>,
    #[serde(rename = "match")]
    pub matcher: Option<Spanned<RawMatch>>,
    pub upstream: Spanned<String>,
    pub strip_prefix: Option<Spanned<bool>>,
    pub rewrite_prefix: Option<Spanned<String>>,
    pub timeout: Option<Spanned<String>>,
    pub preserve_host: Option<bool>,
    pub allow_encoded_slashes: Option<bool>,
    pub max_body_size: Option<Spanned<String>>,
    pub auth: Option<Spanned<RawRouteAuth>>,
    pub require: Option<Spanned<RawClaimRules>>,
    pub rate_limit: Option<Spanned<String>>,
}

/// Claim name -> values that must all be present in it.
pub(crate) type RawClaimRules = OrderedMap<Spanned<Vec<Spanned<String>>>>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMatch {
    pub host: Option<Spanned<String>>,
    pub path_prefix: Option<Spanned<String>>,
    pub path: Option<Spanned<String>>,
    pub methods: Option<Spanned<Vec<Spanned<String>>>>,
    pub headers: Option<OrderedMap<Spanned<String>>>,
}

/// A YAML mapping kept in file order, keys with their location.
///
/// Order matters for upstreams (the validated config lists them as written) and for reporting
/// problems in reading order. Duplicate keys never reach here: serde-saphyr rejects them.
#[derive(Debug)]
pub(crate) struct OrderedMap<V>(pub Vec<(Spanned<String>, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct OrderedMapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for OrderedMapVisitor<V> {
            type Value = OrderedMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a mapping")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(OrderedMap(entries))
            }
        }

        deserializer.deserialize_map(OrderedMapVisitor(PhantomData))
    }
}

/// Just the files a config refers to (`listeners[].tls.certificates[].cert/key`), read leniently
/// (other keys ignored) so a reload can fingerprint them even when the config is invalid.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawFileRefs {
    #[serde(default)]
    pub listeners: Vec<RawListenerRefs>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawListenerRefs {
    pub tls: Option<RawTlsRefs>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawTlsRefs {
    #[serde(default)]
    pub certificates: Vec<RawCertificateRefs>,
    pub client_auth: Option<RawCaRef>,
}

/// A section whose one file is its `ca` (`client_auth`, an upstream's `tls`, `redis`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCaRef {
    pub ca: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCertificateRefs {
    pub cert: Option<String>,
    pub key: Option<String>,
}

/// Just the files upstreams refer to (`upstreams.*.tls.ca`), read leniently like [`RawFileRefs`].
/// A separate document so a malformed `upstreams` section cannot hide the listeners' files.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawUpstreamFileRefs {
    #[serde(default)]
    pub upstreams: Option<OrderedMap<RawUpstreamRefs>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawUpstreamRefs {
    pub tls: Option<RawCaRef>,
}

/// Just the file Redis refers to (`redis.ca`), read leniently like [`RawFileRefs`].
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRedisFileRefs {
    pub redis: Option<RawCaRef>,
}

/// Just the files JWT providers refer to (`jwt.providers.*.public_key` / `jwks_ca`), read leniently.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawJwtFileRefs {
    pub jwt: Option<RawJwtRefs>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawJwtRefs {
    pub providers: Option<OrderedMap<RawJwtProviderRefs>>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawJwtProviderRefs {
    pub public_key: Option<String>,
    pub jwks_ca: Option<String>,
}
