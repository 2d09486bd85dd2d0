//! Listeners: bind, accept, serve connections, and drain them on shutdown.

mod admin;
mod conn;
mod timed_io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::Config;
use crate::runtime::{BuildError, Runtime, Snapshot};
use conn::ConnSettings;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address} (listener {name:?}): {source}")]
    Bind { name: String, address: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Build(#[from] BuildError),
}

/// A gateway whose sockets are bound and whose first snapshot is built, ready to `run`.
#[derive(Debug)]
pub struct Server {
    listeners: Vec<(String, TcpListener)>,
    admin: Option<TcpListener>,
    runtime: Runtime,
    settings: Arc<ConnSettings>,
    drain_timeout: Duration,
}

impl Server {
    pub async fn bind(config: &Config) -> Result<Server, ServeError> {
        let runtime: Runtime = Arc::new(ArcSwap::from_pointee(Snapshot::build(config)?));
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            listeners.push((listener.name.clone(), bind(&listener.name, listener.address).await?));
        }
        let admin = match &config.admin {
            Some(admin) => Some(bind("admin", admin.address).await?),
            None => None,
        };
        Ok(Server {
            listeners,
            admin,
            runtime,
            settings: Arc::new(ConnSettings::new(&config.server)),
            drain_timeout: config.shutdown.drain_timeout,
        })
    }

    /// The bound addresses by listener name (the admin listener is named `admin`).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let traffic = self.listeners.iter().filter_map(|(name, l)| Some((name.clone(), l.local_addr().ok()?)));
        let admin = self.admin.iter().filter_map(|l| Some(("admin".to_string(), l.local_addr().ok()?)));
        traffic.chain(admin).collect()
    }

    /// Serves until `shutdown` completes, then stops accepting and drains in-flight requests.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let draining = Arc::new(AtomicBool::new(false));
        let graceful = Arc::new(GracefulShutdown::new());
        let (stop, stopped) = watch::channel(false);
        let mut accepting = JoinSet::new();
        for (name, listener) in self.listeners {
            accepting.spawn(accept_loop(
                name,
                listener,
                self.runtime.clone(),
                self.settings.clone(),
                graceful.clone(),
                stopped.clone(),
            ));
        }
        let admin = self.admin.map(|listener| tokio::spawn(admin::serve(listener, draining.clone())));

        shutdown.await;
        draining.store(true, Ordering::Relaxed);
        let _ = stop.send(true);
        // Accept loops drop their sockets as they end, so new connections are refused from here on.
        while accepting.join_next().await.is_some() {}
        tracing::info!(connections = graceful.count(), drain_timeout = ?self.drain_timeout, "draining");
        if let Some(graceful) = Arc::into_inner(graceful) {
            match tokio::time::timeout(self.drain_timeout, graceful.shutdown()).await {
                Ok(()) => tracing::info!("all connections drained"),
                Err(_) => tracing::warn!("drain timeout reached; closing the remaining connections"),
            }
        }
        if let Some(admin) = admin {
            admin.abort();
        }
    }
}

async fn bind(name: &str, address: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(address).await.map_err(|source| ServeError::Bind { name: name.to_string(), address, source })
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    runtime: Runtime,
    settings: Arc<ConnSettings>,
    graceful: Arc<GracefulShutdown>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            biased;
            _ = stopped.changed() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let watcher = graceful.watcher();
                    tokio::spawn(conn::serve(stream, peer, runtime.clone(), settings.clone(), watcher));
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    tracing::warn!(listener = %name, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
