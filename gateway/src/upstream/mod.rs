//! Upstreams: their endpoints and their passive health, the balancer that picks one, the circuit
//! breaker, and the connection pools.

mod balancer;
pub mod breaker;
mod deadline;
mod drive;
mod health;
mod pool;
mod tls;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::IntCounter;

use crate::config;
use crate::metrics::{self, UpstreamMetrics};
use crate::proxy::UpstreamRequestBody;
use crate::throttle::Throttle;
use balancer::Balancer;
use breaker::{Breaker, Permit, State};
use health::Health;
use pool::{Connector, Pools};
pub use pool::{Lease, SendError};
pub(crate) use tls::fetch_connector;

/// Largest upstream response head accepted; larger is a 502, never unbounded memory.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A named upstream with its endpoints and connection pools.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    /// What it was built from: a reload compares against it to decide what to carry over.
    config: config::Upstream,
    endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    /// Idle connections, one pool per worker thread.
    pools: Arc<Pools>,
    pub request_timeout: Duration,
    /// Its series in `/metrics`.
    pub metrics: UpstreamMetrics,
    /// Present when configured; carried over by reloads that leave its settings unchanged.
    pub breaker: Option<Arc<Breaker>>,
    overload_warning: Throttle,
}

/// One endpoint of an upstream, the requests currently in flight to it, and whether it is in rotation.
#[derive(Debug)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
    /// The authority as a `Host` header value, made once.
    pub host: http::HeaderValue,
    in_flight: AtomicUsize,
    health: Health,
    /// Its series of `gateway_upstream_endpoint_ejections_total`.
    ejections: IntCounter,
}

/// Why [`Upstream::pick`] found no endpoint for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoEndpoint,
    /// `max_requests` requests are in flight already.
    Overloaded {
        max_requests: u32,
    },
}

/// Holds an endpoint's in-flight slot until dropped (when the response body has been sent).
#[derive(Debug)]
pub struct InFlight(Arc<Endpoint>);

impl InFlight {
    pub fn endpoint(&self) -> &Endpoint {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Upstream {
    /// Builds an upstream, carrying over what a reload may keep from `previous` (the upstream of
    /// the same name in the running snapshot): everything when its config is unchanged; otherwise
    /// the connection pools when the connection settings are unchanged, and the state (in-flight
    /// counts) of endpoints that remain.
    pub fn build(config: &config::Upstream, workers: usize, previous: Option<&Arc<Upstream>>) -> Arc<Upstream> {
        if let Some(previous) = previous.filter(|p| p.config == *config && p.pools.workers() == workers.max(1)) {
            return previous.clone();
        }
        let reuse_pools = previous.filter(|p| {
            p.pools.workers() == workers.max(1)
                && p.config.connect_timeout == config.connect_timeout
                && p.config.pool == config.pool
                && p.config.tls == config.tls
        });
        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|e| {
                let (scheme, authority) = (e.uri.scheme()?, e.uri.authority()?);
                let kept = previous
                    .and_then(|p| p.endpoints.iter().find(|old| old.scheme == *scheme && old.authority == *authority));
                // Validation guarantees scheme and authority; an endpoint without them is skipped, not a panic.
                if let Some(kept) = kept {
                    return Some(kept.clone());
                }
                Some(Arc::new(Endpoint {
                    scheme: scheme.clone(),
                    authority: authority.clone(),
                    host: http::HeaderValue::from_str(authority.as_str()).ok()?,
                    in_flight: AtomicUsize::new(0),
                    health: Health::default(),
                    ejections: metrics::global().endpoint_ejections(&config.name, authority.as_str()),
                }))
            })
            .collect();
        let name: Arc<str> = Arc::from(config.name.as_str());
        Arc::new(Upstream {
            pools: match reuse_pools {
                Some(previous) => previous.pools.clone(),
                None => Pools::new(connector(&name, config), config.connect_timeout, &config.pool, workers),
            },
            name,
            config: config.clone(),
            endpoints,
            balancer: Balancer::new(config.load_balancing),
            request_timeout: config.request_timeout,
            metrics: metrics::global().upstream(&config.name),
            breaker: config.circuit_breaker.as_ref().map(|settings| {
                let kept = previous.and_then(|p| p.breaker.as_ref()).filter(|b| b.config() == settings);
                kept.cloned().unwrap_or_else(|| Arc::new(Breaker::new(settings)))
            }),
            overload_warning: Throttle::new(Duration::from_secs(10)),
        })
    }

    /// Whether this upstream shares its pools and at least one endpoint's state with `other`.
    #[cfg(test)]
    pub(crate) fn shares_state_with(&self, other: &Upstream) -> bool {
        Arc::ptr_eq(&self.pools, &other.pools)
            && self.endpoints.iter().any(|e| other.endpoints.iter().any(|o| Arc::ptr_eq(e, o)))
    }

    /// Another endpoint than `failed` (another address, not a second entry of the same one), with
    /// an in-flight slot taken on it: the next in the list that is in rotation, else the next in the
    /// list; `None` when there is no other.
    pub fn pick_other(&self, failed: &Endpoint) -> Option<InFlight> {
        let position = self.endpoints.iter().position(|e| std::ptr::eq(Arc::as_ptr(e), failed))?;
        let others = || {
            (1..self.endpoints.len())
                .filter_map(|k| self.endpoints.get((position + k) % self.endpoints.len()))
                .filter(|e| e.authority != failed.authority)
        };
        let endpoint =
            others().find(|e| e.health.available(&self.config.passive_health)).or_else(|| others().next())?;
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(endpoint.clone()))
    }

    /// A connect to `endpoint` failed: with other endpoints to turn to, it may leave the rotation.
    pub fn connect_failed(&self, endpoint: &Endpoint) {
        if self.endpoints.len() < 2 {
            // Nowhere else to send its requests: the breaker, if any, is what pauses them.
            return;
        }
        let settings = &self.config.passive_health;
        match endpoint.health.connect_failed(settings) {
            health::Failed::Counted => {}
            health::Failed::TakenOut => {
                endpoint.ejections.inc();
                tracing::warn!(upstream = &*self.name, endpoint = %endpoint.authority, fail_timeout = ?settings.fail_timeout, "cannot connect to the endpoint; it is out of rotation until a request after fail_timeout connects");
            }
            health::Failed::KeptOut => {
                tracing::debug!(upstream = &*self.name, endpoint = %endpoint.authority, "still cannot connect to the endpoint; it stays out of rotation");
            }
        }
    }

    /// A request to `endpoint` got a connection: the endpoint is up.
    pub fn connected(&self, endpoint: &Endpoint) {
        if endpoint.health.connected() {
            tracing::info!(upstream = &*self.name, endpoint = %endpoint.authority, "connected to the endpoint again; it is back in rotation");
        }
    }

    /// The breaker's permission for one request (`None`: no breaker); `Err(retry_after)` while
    /// it is open.
    pub fn permit(&self) -> Result<Option<Permit>, Duration> {
        let Some(breaker) = &self.breaker else { return Ok(None) };
        let permit = breaker.permit()?;
        // Once per open period: a probe sent again after its client went away is no new transition.
        if permit.half_opened() {
            self.metrics.breaker_entered(State::HalfOpen);
            tracing::info!(upstream = &*self.name, "circuit breaker half-open: sending a probe");
        }
        Ok(Some(permit))
    }

    /// Tells the breaker how a permitted request went.
    pub fn record(&self, permit: Option<Permit>, success: bool) {
        let (Some(breaker), Some(permit)) = (&self.breaker, permit) else { return };
        let Some(state) = breaker.record(permit, success) else { return };
        self.metrics.breaker_entered(state);
        match state {
            State::Open => tracing::warn!(upstream = &*self.name, "circuit breaker open: requests paused"),
            _ => tracing::info!(upstream = &*self.name, state = state.as_str(), "circuit breaker state changed"),
        }
    }

    /// Sends `request` (origin-form URI, Host set) to `endpoint`, its response head due by
    /// `deadline` (connecting included); with the response, the connection it came on, which its
    /// body drives and then returns to the pool.
    ///
    /// A plain function handing back the pool's future: an `async fn` wrapper would keep a copy
    /// of the request in its own state, and move it once more.
    pub fn send<'a>(
        &'a self,
        endpoint: &'a Endpoint,
        request: Request<UpstreamRequestBody>,
        deadline: tokio::time::Instant,
    ) -> impl Future<Output = Result<(Response<Incoming>, Lease), SendError>> + Send + 'a {
        self.pools.send(endpoint, request, deadline, &self.metrics.retries_after_close)
    }

    /// Sends a protocol upgrade request on a connection of its own (see `Pools::send_upgrade`).
    pub async fn send_upgrade(
        &self,
        endpoint: &Endpoint,
        request: Request<UpstreamRequestBody>,
        deadline: tokio::time::Instant,
    ) -> Result<Response<Incoming>, SendError> {
        self.pools.send_upgrade(endpoint, request, deadline).await
    }

    /// Each endpoint's authority, and whether it is in rotation (not kept out by passive health).
    pub fn endpoints_in_rotation(&self) -> impl Iterator<Item = (&str, bool)> {
        self.endpoints.iter().map(|e| (e.authority.as_str(), e.health.in_rotation()))
    }

    /// Requests in flight to all of its endpoints (each until its response body has ended).
    pub fn in_flight(&self) -> usize {
        self.endpoints.iter().map(|e| e.in_flight.load(Ordering::Relaxed)).sum()
    }

    /// Picks an endpoint in rotation (any, when none is) and takes an in-flight slot on it, unless
    /// `max_requests` are in flight already.
    pub fn pick(&self) -> Result<InFlight, Refusal> {
        let index = self.balancer.pick(
            &self.endpoints,
            |e| e.in_flight.load(Ordering::Relaxed),
            |e| e.health.available(&self.config.passive_health),
        );
        let endpoint = index.and_then(|index| self.endpoints.get(index)).ok_or(Refusal::NoEndpoint)?;
        // The slot is taken, then the total read, both in one order across threads: of two requests
        // racing for the last slot, at least one sees the other, so the cap is never passed (both
        // may be refused).
        endpoint.in_flight.fetch_add(1, Ordering::SeqCst);
        let in_flight = InFlight(endpoint.clone());
        if let Some(max_requests) = self.config.max_requests {
            let total: usize = self.endpoints.iter().map(|e| e.in_flight.load(Ordering::SeqCst)).sum();
            if total > max_requests as usize {
                self.metrics.overloaded.inc();
                if self.overload_warning.allows() {
                    tracing::warn!(upstream = &*self.name, max_requests, "upstream has max_requests in flight; answering 503 upstream_overloaded (logged once in 10 s at most)");
                }
                return Err(Refusal::Overloaded { max_requests });
            }
        }
        Ok(in_flight)
    }
}

/// How the upstream's connections are made. An upstream whose TLS connector cannot be set up
/// (not expected: it only depends on the built-in crypto provider) gets a plain one, which refuses
/// its `https://` endpoints: its requests fail as connect errors (502) instead of the whole reload
/// failing.
fn connector(name: &Arc<str>, config: &config::Upstream) -> Connector {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(config.connect_timeout));
    http.set_nodelay(true);
    if let Some(upstream_tls) = &config.tls {
        // The TLS connector hands the `https://` URI to the TCP connector.
        http.enforce_http(false);
        match tls::connector(name, upstream_tls, http.clone()) {
            Ok(https) => return Connector::Tls(https),
            Err(error) => tracing::error!(upstream = &**name, %error, "TLS to this upstream is unavailable"),
        }
        http.enforce_http(true);
    }
    Connector::Plain(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream_config(endpoint: &str, tls: Option<config::UpstreamTls>) -> config::Upstream {
        config::Upstream {
            name: "u".into(),
            endpoints: vec![config::Endpoint { uri: endpoint.parse().unwrap() }],
            load_balancing: config::LoadBalancing::RoundRobin,
            connect_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            max_requests: None,
            pool: config::Pool { idle_timeout: Duration::from_secs(1), max_idle_per_host: 1 },
            tls,
            circuit_breaker: None,
            passive_health: config::PassiveHealth {
                max_fails: config::defaults::PASSIVE_MAX_FAILS,
                fail_timeout: config::defaults::PASSIVE_FAIL_TIMEOUT,
            },
        }
    }

    fn tls(insecure_skip_verify: bool) -> Option<config::UpstreamTls> {
        Some(config::UpstreamTls { ca: None, server_name: None, insecure_skip_verify })
    }

    #[tokio::test]
    async fn pick_refuses_past_max_requests_across_endpoints_until_a_slot_frees() {
        let mut config = upstream_config("http://127.0.0.1:1", None);
        config.endpoints.push(config::Endpoint { uri: "http://127.0.0.1:2".parse().unwrap() });
        config.max_requests = Some(2);
        let upstream = Upstream::build(&config, 1, None);
        let first = upstream.pick().unwrap();
        let second = upstream.pick().unwrap();
        assert_ne!(first.endpoint().authority, second.endpoint().authority, "round robin over both");
        assert_eq!(upstream.pick().unwrap_err(), Refusal::Overloaded { max_requests: 2 });
        assert_eq!(upstream.in_flight(), 2, "a refused pick gives its slot back");
        drop(first);
        let third = upstream.pick().unwrap();
        assert_eq!(upstream.in_flight(), 2);
        drop((second, third));
        assert_eq!(upstream.in_flight(), 0);
    }

    #[test]
    fn build_plain_endpoints_plain_client() {
        let upstream = Upstream::build(&upstream_config("http://127.0.0.1:1", None), 2, None);
        assert!(!upstream.pools.is_tls());
    }

    #[test]
    fn build_https_endpoints_tls_client() {
        let upstream = Upstream::build(&upstream_config("https://127.0.0.1:1", tls(false)), 2, None);
        assert!(upstream.pools.is_tls());
        assert_eq!(upstream.endpoints[0].scheme, Scheme::HTTPS);
    }

    #[test]
    fn build_same_tls_settings_kept_whole() {
        let config = upstream_config("https://127.0.0.1:1", tls(false));
        let before = Upstream::build(&config, 2, None);
        assert!(Arc::ptr_eq(&before, &Upstream::build(&config, 2, Some(&before))));
    }

    #[test]
    fn pick_other_passes_over_a_duplicate_of_the_failed_endpoint() {
        let mut config = upstream_config("http://127.0.0.1:1", None);
        config.endpoints = ["http://127.0.0.1:1", "http://127.0.0.1:1", "http://127.0.0.1:2"]
            .map(|uri| config::Endpoint { uri: uri.parse().unwrap() })
            .to_vec();
        let upstream = Upstream::build(&config, 1, None);
        let other = upstream.pick_other(&upstream.endpoints[0]).unwrap();
        assert_eq!(other.endpoint().authority, "127.0.0.1:2");
    }

    #[test]
    fn build_changed_tls_settings_new_pools() {
        let before = Upstream::build(&upstream_config("https://127.0.0.1:1", tls(false)), 2, None);
        let after = Upstream::build(&upstream_config("https://127.0.0.1:1", tls(true)), 2, Some(&before));
        assert!(!Arc::ptr_eq(&before.pools, &after.pools));
        // The endpoint itself (its in-flight count) carries over.
        assert!(Arc::ptr_eq(&before.endpoints[0], &after.endpoints[0]));
    }
}
