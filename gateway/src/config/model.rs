//! The validated configuration: plain data, every value checked, defaults filled in.
//!
//! Nothing here knows YAML; the proxy builds its runtime snapshot from these types only.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method, Uri};
use ipnet::IpNet;
use rustls::sign::CertifiedKey;

/// A complete, valid gateway configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listeners: Vec<Listener>,
    pub admin: Option<Admin>,
    pub server: Server,
    pub shutdown: Shutdown,
    /// Upstreams in file order; names are unique.
    pub upstreams: Vec<Upstream>,
    /// Routes in file order; names are unique and every `upstream` names an entry of `upstreams`.
    pub routes: Vec<Route>,
    /// Removed from every request before anything else: a client must never be able to tell an
    /// upstream who it is by a header (zero trust; identity travels only in the checked token).
    pub identity_headers: Vec<HeaderName>,
    /// JWT issuers routes may require tokens from, in file order; names are unique.
    pub jwt_providers: Vec<JwtProvider>,
    /// Where shared rate-limit counters live; without it every limit is counted in-process.
    pub redis: Option<Redis>,
    /// Request budgets routes may draw from, in file order; names are unique.
    pub rate_limits: Vec<RateLimit>,
    /// Where the JSON access log goes; `None`: no access log.
    pub access_log: Option<crate::access_log::Target>,
}

/// The Redis server every gateway instance shares its rate-limit counters through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redis {
    /// `redis://` or `rediss://` (TLS) `[user:password@]host:port[/db]` as written (it may hold a
    /// password: never log it whole).
    pub url: String,
    /// CA certificates to verify a `rediss://` server against instead of the webpki (Mozilla) roots.
    pub ca: Option<CaBundle>,
    /// `url` is one node of a Redis Cluster, which tells where the others are.
    pub cluster: bool,
    /// Longest a request waits for a decision from Redis before the in-process limiter decides.
    pub timeout: Duration,
    /// Longest one connection attempt may take.
    pub connect_timeout: Duration,
}

/// A request budget: at most `requests` per sliding `window` for each value of `key`. Routes
/// that name the same limit draw from the same budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub name: String,
    pub requests: u32,
    pub window: Duration,
    pub key: RateLimitKey,
}

/// What a budget is counted per.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateLimitKey {
    /// The client's address (the one `X-Forwarded-For` names when the peer is a trusted proxy).
    ClientIp,
    /// A claim of the verified token (`jwt.sub`); requests without a token count per client address.
    Claim(String),
    /// One budget shared by every client.
    Global,
}

/// A token issuer: what its tokens must say and where the keys that sign them come from.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtProvider {
    pub name: String,
    /// `iss` must equal this exactly.
    pub issuer: String,
    /// `aud` must contain at least one of these. Never empty.
    pub audiences: Vec<String>,
    /// The only `alg` values accepted, each fitting the key source. Never empty.
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub keys: JwtKeys,
    /// Clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Claims that must be present besides `exp`, `iss` and `aud` (always required).
    pub required_claims: Vec<String>,
    /// The `realm` of `WWW-Authenticate` challenges.
    pub realm: String,
}

/// Where a provider's verification keys come from.
#[derive(Debug, Clone, PartialEq)]
pub enum JwtKeys {
    Jwks(Jwks),
    /// One public key (RSA, EC or Ed25519), read from a PEM file.
    PublicKey(PublicKey),
    /// An HMAC secret read from an environment variable.
    Secret(Secret),
}

/// A JWKS endpoint and how often its key set is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwks {
    pub url: Uri,
    /// CA certificates to verify an `https://` endpoint against instead of the webpki (Mozilla) roots.
    pub ca: Option<CaBundle>,
    /// Between background refreshes when the response carries no `Cache-Control: max-age`.
    pub refresh_interval: Duration,
    /// Floor on refreshes, and the cooldown between refetches that unknown `kid`s trigger.
    pub min_cache_age: Duration,
    /// Cap on a response's `max-age`.
    pub max_cache_age: Duration,
}

#[derive(Clone)]
pub struct PublicKey {
    pub path: PathBuf,
    pub family: jsonwebtoken::AlgorithmFamily,
    pub key: Arc<jsonwebtoken::DecodingKey>,
    /// The file's bytes: what tells two keys apart.
    pub pem: Arc<[u8]>,
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &PublicKey) -> bool {
        self.path == other.path && self.pem == other.pem
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublicKey").field("path", &self.path).field("family", &self.family).finish_non_exhaustive()
    }
}

/// An HMAC secret; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    /// The environment variable it was read from.
    pub env: String,
    pub value: Arc<[u8]>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret").field("env", &self.env).field("value", &"<redacted>").finish()
    }
}

/// A socket the gateway accepts client traffic on.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    /// Present when the listener terminates TLS.
    pub tls: Option<ListenerTls>,
    /// On a plain listener: answer every request with a 308 to `https://` on this port.
    pub redirect_https: Option<u16>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ListenerTls {
    /// At least one, in file order.
    pub certificates: Vec<Certificate>,
    /// Index of the certificate for clients without SNI or with a name no certificate covers.
    pub default_certificate: usize,
    pub min_version: TlsVersion,
    pub handshake_timeout: Duration,
    /// `Strict-Transport-Security` sent on every response of this listener.
    pub hsts: Option<Hsts>,
    /// Verify client certificates against these CAs.
    pub client_auth: Option<ClientAuth>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hsts {
    pub max_age: Duration,
    pub include_subdomains: bool,
    pub preload: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClientAuth {
    pub ca_path: PathBuf,
    /// The CA certificates read from `ca_path`, at least one.
    pub roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    /// When false, clients without a certificate are let in; one that presents a bad one is not.
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V1_2,
    V1_3,
}

/// A certificate chain and its key, read from disk and checked to match during validation.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub certified: Arc<CertifiedKey>,
}

impl Certificate {
    /// When the leaf certificate is valid, if it says.
    pub fn validity(&self) -> Option<super::validate::expiry::Validity> {
        self.certified.end_entity_cert().ok().and_then(|leaf| super::validate::expiry::validity(leaf))
    }

    /// Whether the certificate's subject alternative names cover `name` (RFC 6125 rules, as
    /// clients check them: wildcards cover one label).
    pub fn covers(&self, name: &str) -> bool {
        let Ok(name) = rustls_pki_types::ServerName::try_from(name) else { return false };
        (self.certified.end_entity_cert().ok())
            .and_then(|leaf| webpki::EndEntityCert::try_from(leaf).ok())
            .is_some_and(|leaf| leaf.verify_is_valid_for_subject_name(&name).is_ok())
    }
}

/// Same files with the same chain. The key need not be compared: it must match the chain.
impl PartialEq for Certificate {
    fn eq(&self, other: &Certificate) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.certified.cert == other.certified.cert
    }
}

/// The admin listener (`/healthz`, `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admin {
    pub address: SocketAddr,
}

/// Limits and trust settings for the client (downstream) side.
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Largest request head (request line + headers) accepted; larger gets 431. At least 8 KiB.
    pub max_header_size: usize,
    /// Most request headers accepted; more gets 431.
    pub max_headers: usize,
    /// Most client connections open at once, across listeners; `None`: derived from the file
    /// descriptor limit (see `server::connections`).
    pub max_connections: Option<usize>,
    /// Most client connections open at once from one address (an IPv6 /64), trusted proxies
    /// aside; more are closed at once. `None`: no such cap.
    pub max_connections_per_ip: Option<usize>,
    /// A request head must arrive within this time once its first byte has; else 408.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long; so is one
    /// whose client takes nothing of a response for this long.
    pub idle_timeout: Duration,
    /// Default cap on request bodies for routes that set none.
    pub max_body_size: u64,
    /// Peers whose `X-Forwarded-*` / `Forwarded` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shutdown {
    /// How long in-flight requests may run after SIGTERM/SIGINT before the process exits anyway.
    pub drain_timeout: Duration,
    /// How long to keep accepting after SIGTERM, with `/readyz` already 503, so load balancers stop
    /// sending before the listeners close. Zero: close at once.
    pub accept_grace: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub name: String,
    /// At least one; each `http://host:port` or `https://host:port` with no path, query or credentials.
    pub endpoints: Vec<Endpoint>,
    pub load_balancing: LoadBalancing,
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response head, then for each piece of its body (routes may override).
    pub request_timeout: Duration,
    /// Most requests in flight to it at once (all endpoints together); past it, 503. `None`: no cap.
    pub max_requests: Option<u32>,
    pub pool: Pool,
    /// Present exactly when the endpoints are `https://` (an upstream never mixes schemes).
    pub tls: Option<UpstreamTls>,
    /// Present when the upstream stops getting requests while most of them fail.
    pub circuit_breaker: Option<CircuitBreaker>,
    /// When one of several endpoints leaves the rotation because it cannot be connected to.
    pub passive_health: PassiveHealth,
}

/// When an endpoint that cannot be connected to stops getting requests, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassiveHealth {
    /// Failed connects in a row that take it out of rotation; 0 never does.
    pub max_fails: u32,
    /// How long it stays out before one request tries it again.
    pub fail_timeout: Duration,
}

/// When to stop sending requests to a failing upstream, and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct CircuitBreaker {
    /// Failed share of the requests in `window` (0 < rate <= 1) that opens the breaker.
    pub failure_rate: f64,
    /// Fewer requests than this in `window` never open it.
    pub min_requests: u32,
    pub window: Duration,
    /// How long it stays open before letting a probe through.
    pub open_for: Duration,
}

/// How the gateway checks an `https://` upstream's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// CA certificates to trust instead of the webpki (Mozilla) roots.
    pub ca: Option<CaBundle>,
    /// Name sent as SNI and verified in the certificate, instead of each endpoint's host.
    pub server_name: Option<rustls_pki_types::ServerName<'static>>,
    /// Accept any certificate (the connection is still encrypted). Only when written explicitly.
    pub insecure_skip_verify: bool,
}

/// A CA file, read and parsed during validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaBundle {
    pub path: PathBuf,
    /// At least one, in file order.
    pub roots: Vec<rustls_pki_types::TrustAnchor<'static>>,
    /// The file as read: the Redis client parses it itself.
    pub pem: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Scheme (`http` or `https`, lowercase) and authority only, e.g. `http://127.0.0.1:9001`.
    pub uri: Uri,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadBalancing {
    RoundRobin,
    /// Power of two random choices on in-flight request count.
    LeastRequest,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub idle_timeout: Duration,
    pub max_idle_per_host: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub name: String,
    pub matcher: RouteMatch,
    pub upstream: String,
    pub rewrite: Rewrite,
    /// Overrides the upstream's `request_timeout`.
    pub timeout: Option<Duration>,
    pub preserve_host: bool,
    /// Paths with `%2F` or `%5C` are served, not refused (see `proxy::path::Normalized`).
    pub allow_encoded_slashes: bool,
    pub max_body_size: u64,
    /// Present when the route checks tokens.
    pub auth: Option<RouteAuth>,
    /// Names an entry of `rate_limits`.
    pub rate_limit: Option<String>,
}

/// A route's token check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteAuth {
    /// Names an entry of `jwt_providers`.
    pub provider: String,
    /// Requests without a token pass; a token that is present must still be valid.
    pub optional: bool,
    /// Rules the token's claims must all meet (only when `optional` is false).
    pub require: Vec<ClaimRule>,
}

/// Every one of `values` must be in `claim` (a space-separated string or an array of strings).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRule {
    pub claim: String,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    pub host: Option<HostMatch>,
    pub path: PathMatch,
    /// Empty means any method.
    pub methods: Vec<Method>,
    /// Every listed header must be present with exactly this value. Names are lowercase.
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HostMatch {
    /// Lowercase host without port.
    Exact(String),
    /// `*.example.com` is stored as `.example.com`: matches any host ending in it.
    Suffix(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PathMatch {
    /// The whole path must equal this.
    Exact(String),
    /// Segment-aware prefix without trailing slash (`/` for everything):
    /// `/api` matches `/api` and `/api/x`, never `/apix`.
    Prefix(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rewrite {
    None,
    /// Remove the matched prefix (`/api/x` -> `/x`).
    StripPrefix,
    /// Replace the matched prefix (`/api/x` -> `/v2/x`).
    ReplacePrefix(String),
}

/// Defaults, in one place so the README and the validator agree.
pub mod defaults {
    use std::time::Duration;

    pub const MAX_HEADER_SIZE: usize = 64 * 1024;
    pub const MIN_HEADER_SIZE: usize = 8 * 1024;
    pub const MAX_HEADERS: usize = 100;
    pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
    pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
    pub const MAX_BODY_SIZE: u64 = 10 * 1024 * 1024;
    pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
    /// No grace: listeners close as soon as the stop signal comes.
    pub const ACCEPT_GRACE: Duration = Duration::ZERO;
    pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
    /// Headers gateways and auth proxies commonly use to tell upstreams who the caller is.
    /// A trailing `*` stands for any ending.
    pub const IDENTITY_HEADERS: &[&str] = &[
        "x-user",
        "x-userid",
        "x-user-*",
        "x-auth-user",
        "x-auth-request-*",        // oauth2-proxy
        "x-authenticated-*",       // Kong, and others' x-authenticated-user
        "x-consumer-*",            // Kong
        "x-credential-identifier", // Kong
        "x-anonymous-consumer",    // Kong
        "x-forwarded-user",        // oauth2-proxy, Traefik forward auth
        "x-forwarded-email",
        "x-forwarded-groups",
        "x-forwarded-preferred-username",
        "remote-user", // Apache's REMOTE_USER
        "x-remote-user",
        "x-jwt-*",                     // claims or payloads other gateways pass on
        "x-goog-authenticated-user-*", // Google IAP
        "x-goog-iap-jwt-assertion",
        "x-amzn-oidc-*",          // AWS ALB
        "x-ms-client-principal*", // Azure App Service
    ];
    pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
    pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
    pub const POOL_MAX_IDLE_PER_HOST: usize = 256;
    pub const JWT_LEEWAY: Duration = Duration::from_secs(30);
    pub const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(5 * 60);
    pub const JWKS_MIN_CACHE_AGE: Duration = Duration::from_secs(30);
    pub const JWKS_MAX_CACHE_AGE: Duration = Duration::from_secs(24 * 60 * 60);
    pub const BREAKER_FAILURE_RATE: f64 = 0.5;
    pub const BREAKER_MIN_REQUESTS: u32 = 20;
    pub const BREAKER_WINDOW: Duration = Duration::from_secs(10);
    pub const BREAKER_OPEN_FOR: Duration = Duration::from_secs(30);
    /// nginx's defaults for `max_fails` and `fail_timeout`.
    pub const PASSIVE_MAX_FAILS: u32 = 1;
    pub const PASSIVE_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
    pub const REDIS_TIMEOUT: Duration = Duration::from_millis(100);
    pub const REDIS_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
}

/// How specific a route's match is. Compared field by field, higher wins; equal ones go to file order.
///
/// Host first (exact > longer wildcard suffix > shorter > any host), then path (exact > longer prefix
/// > shorter prefix), then a method constraint over none, then more header constraints over fewer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Specificity {
    host: (u8, usize),
    path: (u8, usize),
    has_methods: bool,
    header_count: usize,
}

impl RouteMatch {
    pub fn specificity(&self) -> Specificity {
        let host = match &self.host {
            Some(HostMatch::Exact(h)) => (2, h.len()),
            Some(HostMatch::Suffix(s)) => (1, s.len()),
            None => (0, 0),
        };
        let path = match &self.path {
            PathMatch::Exact(p) => (1, p.len()),
            PathMatch::Prefix(p) => (0, p.len()),
        };
        Specificity { host, path, has_methods: !self.methods.is_empty(), header_count: self.headers.len() }
    }

    /// True when every request `later` matches is also matched by `self` at the same specificity,
    /// so a `later` route listed after `self` can never win.
    pub fn shadows(&self, later: &RouteMatch) -> bool {
        let methods_cover = match (self.methods.is_empty(), later.methods.is_empty()) {
            (true, true) => true,
            (false, false) => later.methods.iter().all(|m| self.methods.contains(m)),
            _ => false,
        };
        self.specificity() == later.specificity()
            && self.host == later.host
            && self.path == later.path
            && methods_cover
            && self.headers.iter().all(|h| later.headers.contains(h))
    }
}
