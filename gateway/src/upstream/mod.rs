//! Upstreams: their endpoints, the balancer that picks one, and the pooled HTTP client.

mod balancer;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::proxy::UpstreamRequestBody;
use crate::{config, worker};
use balancer::Balancer;

/// Largest upstream response head accepted; larger is a 502, never unbounded memory.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

pub type HttpClient = Client<HttpConnector, UpstreamRequestBody>;

/// A named upstream with its endpoints and connection pools.
#[derive(Debug)]
pub struct Upstream {
    pub name: Arc<str>,
    /// What it was built from: a reload compares against it to decide what to carry over.
    config: config::Upstream,
    endpoints: Vec<Arc<Endpoint>>,
    balancer: Balancer,
    /// One pool per worker thread, so pooled connections never cross threads.
    clients: Arc<[HttpClient]>,
    pub request_timeout: Duration,
}

/// One endpoint of an upstream and the requests currently in flight to it.
#[derive(Debug)]
pub struct Endpoint {
    pub scheme: Scheme,
    pub authority: Authority,
    in_flight: AtomicUsize,
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
        if let Some(previous) = previous.filter(|p| p.config == *config && p.clients.len() == workers.max(1)) {
            return previous.clone();
        }
        let reuse_pools = previous.filter(|p| {
            p.clients.len() == workers.max(1)
                && p.config.connect_timeout == config.connect_timeout
                && p.config.pool == config.pool
        });
        let endpoints = config
            .endpoints
            .iter()
            .filter_map(|e| {
                let (scheme, authority) = (e.uri.scheme()?, e.uri.authority()?);
                let kept = previous
                    .and_then(|p| p.endpoints.iter().find(|old| old.scheme == *scheme && old.authority == *authority));
                // Validation guarantees scheme and authority; an endpoint without them is skipped, not a panic.
                Some(kept.cloned().unwrap_or_else(|| {
                    Arc::new(Endpoint {
                        scheme: scheme.clone(),
                        authority: authority.clone(),
                        in_flight: AtomicUsize::new(0),
                    })
                }))
            })
            .collect();
        Arc::new(Upstream {
            name: Arc::from(config.name.as_str()),
            config: config.clone(),
            endpoints,
            balancer: Balancer::new(config.load_balancing),
            clients: match reuse_pools {
                Some(previous) => previous.clients.clone(),
                None => (0..workers.max(1)).map(|_| build_client(config)).collect(),
            },
            request_timeout: config.request_timeout,
        })
    }

    /// Whether this upstream shares its pools and at least one endpoint's state with `other`.
    #[cfg(test)]
    pub(crate) fn shares_state_with(&self, other: &Upstream) -> bool {
        Arc::ptr_eq(&self.clients, &other.clients)
            && self.endpoints.iter().any(|e| other.endpoints.iter().any(|o| Arc::ptr_eq(e, o)))
    }

    /// The calling worker's client.
    pub fn client(&self) -> &HttpClient {
        &self.clients[worker::index() % self.clients.len()]
    }

    /// Picks an endpoint and takes an in-flight slot on it; `None` when there is none to pick.
    pub fn pick(&self) -> Option<InFlight> {
        let index = self.balancer.pick(&self.endpoints, |e| e.in_flight.load(Ordering::Relaxed))?;
        let endpoint = self.endpoints.get(index)?;
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(InFlight(endpoint.clone()))
    }
}

fn build_client(config: &config::Upstream) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    connector.enforce_http(true);
    Client::builder(TokioExecutor::new())
        // Without a timer the pool never expires idle connections.
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(config.pool.idle_timeout)
        .pool_max_idle_per_host(config.pool.max_idle_per_host)
        .http1_max_buf_size(MAX_RESPONSE_HEAD)
        // The gateway sets Host itself (preserve_host), so the client must not replace it.
        .set_host(false)
        .build(connector)
}

/// Response from an upstream, as handed back by the client.
pub type UpstreamResponse = http::Response<Incoming>;
