//! The runtime snapshot: everything a request needs, compiled from a validated `Config`.
//!
//! A snapshot is immutable. The server holds the current one behind an `ArcSwap`; each request
//! loads it once and uses it to the end, so a later swap never changes a request midway.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::access_log::{self, AccessLog};
use crate::auth::{self, Provider};
use crate::config::{self, Config, PathMatch, Rewrite};
use crate::limit::{self, RateLimit, RedisStore};
use crate::metrics::{self, RouteMetrics};
use crate::proxy::IdentityHeaders;
use crate::router::Router;
use crate::tls;
use crate::upstream::Upstream;

/// The swappable slot holding the current snapshot.
pub type Runtime = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    pub router: Router,
    /// Indexed by what `router.find` returns.
    pub routes: Vec<RouteRuntime>,
    /// By name: what the next reload carries over from.
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Client-side limits; a connection uses those of the snapshot current when it was accepted.
    pub server: config::Server,
    pub drain_timeout: Duration,
    /// After SIGTERM, how long to keep accepting (with `/readyz` at 503) before closing listeners.
    pub accept_grace: Duration,
    /// Removed from every request before anything else (zero trust).
    pub identity_headers: IdentityHeaders,
    /// By name: what the next reload carries over from (JWKS key sets, verified tokens).
    pub jwt_providers: HashMap<String, Arc<Provider>>,
    /// Where rate limits are counted when configured: what the next reload carries over.
    pub redis: Option<Arc<RedisStore>>,
    /// By name: what the next reload carries over from (in-process counts).
    pub rate_limits: HashMap<String, Arc<RateLimit>>,
    /// `/metrics` series of requests no route matched.
    pub unmatched: RouteMetrics,
    /// Present when access logging is on; carried over while its target is unchanged.
    pub access_log: Option<AccessLog>,
    /// What each listener does with a connection, by listener name.
    pub listeners: HashMap<String, Arc<ListenerRuntime>>,
}

/// How a listener's connections are served.
#[derive(Debug)]
pub struct ListenerRuntime {
    /// Present on listeners that terminate TLS.
    pub tls: Option<tls::Acceptor>,
    /// Plain listeners that send every request to `https://` on this port.
    pub redirect_https: Option<u16>,
}

/// A route with its upstream resolved and its timeout decided.
#[derive(Debug)]
pub struct RouteRuntime {
    pub name: Arc<str>,
    pub path: PathMatch,
    pub rewrite: Rewrite,
    pub upstream: Arc<Upstream>,
    pub timeout: Duration,
    pub preserve_host: bool,
    pub allow_encoded_slashes: bool,
    pub max_body_size: u64,
    /// Whether its `methods` name TRACE: only then is a TRACE forwarded (see `proxy`).
    pub allows_trace: bool,
    /// Present when the route checks tokens.
    pub auth: Option<auth::RouteAuth>,
    /// Present when the route draws from a request budget.
    pub rate_limit: Option<Arc<RateLimit>>,
    /// Its series in `/metrics`, resolved once per snapshot.
    pub metrics: RouteMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("route {route:?} names upstream {upstream:?}, which does not exist")]
    UnknownUpstream { route: String, upstream: String },
    #[error("listener {listener:?}: cannot set up TLS: {source}")]
    Tls { listener: String, source: rustls::Error },
    #[error("route {route:?} names JWT provider {provider:?}, which does not exist")]
    UnknownProvider { route: String, provider: String },
    #[error("cannot open the access log {path}: {source}")]
    AccessLog { path: String, source: std::io::Error },
    #[error("route {route:?} names rate limit {limit:?}, which does not exist")]
    UnknownRateLimit { route: String, limit: String },
    #[error("JWT provider {provider:?}: cannot set up the JWKS client: {reason}")]
    Jwks { provider: String, reason: String },
}

impl Snapshot {
    /// Compiles `config`; upstreams get one connection pool per worker thread. With `previous`
    /// (the running snapshot, on reload), unchanged upstreams keep their pools and state.
    pub fn build(config: &Config, workers: usize, previous: Option<&Snapshot>) -> Result<Snapshot, BuildError> {
        let upstreams: HashMap<String, Arc<Upstream>> = config
            .upstreams
            .iter()
            .map(|u| {
                let previous = previous.and_then(|p| p.upstreams.get(&u.name));
                (u.name.clone(), Upstream::build(u, workers, previous))
            })
            .collect();
        let jwt_providers = config
            .jwt_providers
            .iter()
            .map(|p| {
                let previous = previous.and_then(|s| s.jwt_providers.get(&p.name));
                let provider = Provider::build(p, previous)
                    .map_err(|reason| BuildError::Jwks { provider: p.name.clone(), reason })?;
                Ok((p.name.clone(), provider))
            })
            .collect::<Result<HashMap<_, _>, BuildError>>()?;
        let access_log = match (&config.access_log, previous.and_then(|p| p.access_log.as_ref())) {
            (None, _) => None,
            (Some(target), Some(running)) if running.target() == target => Some(running.clone()),
            (Some(target), _) => Some(AccessLog::open(target).map_err(|source| {
                let path = match target {
                    access_log::Target::Stdout => "stdout".to_owned(),
                    access_log::Target::File(path) => path.display().to_string(),
                };
                BuildError::AccessLog { path, source }
            })?),
        };
        let redis = limit::redis_store(config.redis.as_ref(), workers, previous.and_then(|p| p.redis.as_ref()));
        let rate_limits: HashMap<String, Arc<RateLimit>> = (config.rate_limits.iter())
            .map(|l| {
                let previous = previous.and_then(|p| p.rate_limits.get(&l.name));
                (l.name.clone(), RateLimit::build(l, redis.as_ref(), previous))
            })
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|route| {
                let upstream = upstreams.get(&route.upstream).cloned().ok_or_else(|| BuildError::UnknownUpstream {
                    route: route.name.clone(),
                    upstream: route.upstream.clone(),
                })?;
                let auth = (route.auth.as_ref())
                    .map(|auth| {
                        let provider = jwt_providers.get(&auth.provider).cloned().ok_or_else(|| {
                            BuildError::UnknownProvider { route: route.name.clone(), provider: auth.provider.clone() }
                        })?;
                        Ok(auth::RouteAuth::new(provider, auth.optional, auth.require.clone()))
                    })
                    .transpose()?;
                let rate_limit = (route.rate_limit.as_ref())
                    .map(|name| {
                        rate_limits.get(name).cloned().ok_or_else(|| BuildError::UnknownRateLimit {
                            route: route.name.clone(),
                            limit: name.clone(),
                        })
                    })
                    .transpose()?;
                Ok(RouteRuntime {
                    name: Arc::from(route.name.as_str()),
                    path: route.matcher.path.clone(),
                    rewrite: route.rewrite.clone(),
                    timeout: route.timeout.unwrap_or(upstream.request_timeout),
                    upstream,
                    preserve_host: route.preserve_host,
                    allow_encoded_slashes: route.allow_encoded_slashes,
                    max_body_size: route.max_body_size,
                    allows_trace: route.matcher.methods.contains(&http::Method::TRACE),
                    auth,
                    rate_limit,
                    metrics: metrics::global().route(&route.name),
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()?;
        let mut listeners = config
            .listeners
            .iter()
            .map(|listener| {
                let tls = listener.tls.as_ref().map(tls::acceptor).transpose();
                let tls = tls.map_err(|source| BuildError::Tls { listener: listener.name.clone(), source })?;
                let runtime = ListenerRuntime { tls, redirect_https: listener.redirect_https };
                Ok((listener.name.clone(), Arc::new(runtime)))
            })
            .collect::<Result<HashMap<_, _>, BuildError>>()?;
        // Sockets are bound once, at start, under their names: one the file renamed or removed
        // keeps serving as it did until the restart the reload asks for.
        for (name, running) in previous.map(|p| &p.listeners).into_iter().flatten() {
            listeners.entry(name.clone()).or_insert_with(|| running.clone());
        }
        Ok(Snapshot {
            listeners,
            router: Router::new(&config.routes),
            routes,
            upstreams,
            jwt_providers,
            redis,
            rate_limits,
            unmatched: metrics::global().route(""),
            access_log,
            server: config.server.clone(),
            drain_timeout: config.shutdown.drain_timeout,
            accept_grace: config.shutdown.accept_grace,
            identity_headers: IdentityHeaders::new(&config.identity_headers),
        })
    }

    pub fn is_trusted(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.server.trusted_proxies.iter().any(|net| net.contains(&ip))
    }
}
