//! Steady load through the gateway for tests that change it underneath (reloads, later failover):
//! client tasks, each on its own keep-alive connection, looping on `GET /load/<client>/<n>` and
//! checking every response is one whole echo body from an expected backend.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use crate::client::{self, Connection, Reply};
use crate::TIMEOUT;

/// Client tasks looping on `GET /load/<client>/<n>` through the gateway until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    clients: Vec<JoinHandle<LoadReport>>,
}

/// What the clients saw.
#[derive(Default)]
pub struct LoadReport {
    /// Responses per backend name (only well-formed echo responses from an allowed backend).
    pub by_backend: BTreeMap<String, u64>,
    /// Every failed, reset or wrong response, described.
    pub failures: Vec<String>,
}

impl Load {
    /// Starts `clients` clients against `addr`; a response counts only if it comes from one of
    /// `backends`.
    pub fn start(addr: SocketAddr, clients: usize, backends: &[&str]) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let backends: Arc<Vec<String>> = Arc::new(backends.iter().map(|b| (*b).to_owned()).collect());
        let clients = (0..clients)
            .map(|id| tokio::spawn(client_loop(addr, id, Arc::clone(&stop), Arc::clone(&backends))))
            .collect();
        Load { stop, clients }
    }

    /// Stops the clients and merges their reports; panics if a client task panicked or hung.
    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = LoadReport::default();
        for client in self.clients {
            let report = tokio::time::timeout(TIMEOUT, client)
                .await
                .unwrap_or_else(|_| panic!("a load client did not stop within {TIMEOUT:?}"))
                .unwrap_or_else(|e| panic!("a load client panicked: {e}"));
            for (backend, n) in report.by_backend {
                *total.by_backend.entry(backend).or_default() += n;
            }
            total.failures.extend(report.failures);
        }
        eprintln!("load: responses per backend {:?}, failures {}", total.by_backend, total.failures.len());
        total
    }
}

impl LoadReport {
    /// Responses that passed.
    pub fn total(&self) -> u64 {
        self.by_backend.values().sum()
    }

    /// Panics listing the failures (the first 20) unless there are none.
    pub fn assert_no_failures(&self) {
        let shown: Vec<&str> = self.failures.iter().take(20).map(String::as_str).collect();
        assert!(
            self.failures.is_empty(),
            "{} of {} requests failed (first {} shown):\n{}",
            self.failures.len(),
            self.failures.len() as u64 + self.total(),
            shown.len(),
            shown.join("\n")
        );
    }
}

async fn client_loop(addr: SocketAddr, id: usize, stop: Arc<AtomicBool>, backends: Arc<Vec<String>>) -> LoadReport {
    let mut report = LoadReport::default();
    let mut connection: Option<Connection> = None;
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let path = format!("/load/{id}/{n}");
        let open = match connection.take() {
            Some(open) => Ok(open),
            None => Connection::open(addr).await,
        };
        let mut open = match open {
            Ok(open) => open,
            Err(e) => {
                report.failures.push(format!("client {id}: connecting for {path}: {e:#}"));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let request = client::request("GET", &path).body(client::empty()).unwrap_or_else(|e| panic!("{e}"));
        match open.try_send(request).await {
            Ok(reply) => {
                match judge(&reply, &path, &backends) {
                    Ok(backend) => *report.by_backend.entry(backend).or_default() += 1,
                    Err(problem) => report.failures.push(format!("client {id}: GET {path}: {problem}")),
                }
                connection = Some(open);
            }
            // The connection is unusable now; the next request opens a new one.
            Err(e) => report.failures.push(format!("client {id}: GET {path}: {e:#}")),
        }
    }
    report
}

/// The backend that answered, if `reply` is one whole echo body for `path` from one of `backends`.
fn judge(reply: &Reply, path: &str, backends: &[String]) -> Result<String, String> {
    if reply.status != 200 {
        return Err(format!("status {}: {}", reply.status, reply.text()));
    }
    let json: Value = serde_json::from_slice(&reply.body)
        .map_err(|e| format!("body is not one JSON document ({e}): {}", reply.text()))?;
    let backend = json["backend"].as_str().ok_or_else(|| format!("not an echo body: {json}"))?;
    if !backends.iter().any(|b| b == backend) {
        return Err(format!("answered by {backend:?}, expected one of {backends:?}"));
    }
    if reply.header("x-backend") != Some(backend) {
        return Err(format!("x-backend header {:?} but the body is from {backend:?}", reply.header("x-backend")));
    }
    if json["path"] != path {
        return Err(format!("the echo saw path {} instead of {path:?}", json["path"]));
    }
    Ok(backend.to_owned())
}
