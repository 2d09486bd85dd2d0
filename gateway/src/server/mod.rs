//! Listeners: bind, run one worker per core, accept and serve connections, drain on shutdown.
//!
//! Every listener is bound once per worker with `SO_REUSEPORT`, so the kernel spreads new
//! connections over the workers and each worker accepts on its own socket with no lock between
//! them. The calling thread keeps the admin listener and waits for the shutdown signal.

mod admin;
mod conn;
pub mod connections;
pub mod drain;
mod timed_io;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use self::drain::Drain;

use crate::config::Config;
use crate::reload::Status;
use crate::runtime::{BuildError, Runtime, Snapshot};
use crate::throttle::Throttle;
use crate::worker;

/// Pending connections the kernel queues per socket before accept.
const LISTEN_BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {address} (listener {name:?}): {source}")]
    Bind { name: String, address: SocketAddr, source: std::io::Error },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error("cannot start worker thread {index}: {source}")]
    Worker { index: usize, source: std::io::Error },
}

/// A gateway whose sockets are bound and whose first snapshot is built, ready to `run`.
#[derive(Debug)]
pub struct Server {
    /// Per listener: its name, bound address and one socket per worker.
    listeners: Vec<(String, SocketAddr, Vec<std::net::TcpListener>)>,
    admin: Option<std::net::TcpListener>,
    runtime: Runtime,
    workers: usize,
}

impl Server {
    /// Binds every listener once per worker (`workers` at least 1) and builds the first snapshot.
    pub fn bind(config: &Config, workers: usize) -> Result<Server, ServeError> {
        let workers = workers.max(1);
        let runtime: Runtime = Arc::new(ArcSwap::from_pointee(Snapshot::build(config, workers, None)?));
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for listener in &config.listeners {
            let bind_error =
                |source| ServeError::Bind { name: listener.name.clone(), address: listener.address, source };
            refuse_if_taken(listener.address).map_err(bind_error)?;
            let first = bind_reuseport(listener.address).map_err(bind_error)?;
            // Port 0 resolves on the first bind; the other workers join that port.
            let address = first.local_addr().map_err(bind_error)?;
            let mut sockets = vec![first];
            for _ in 1..workers {
                sockets.push(bind_reuseport(address).map_err(bind_error)?);
            }
            listeners.push((listener.name.clone(), address, sockets));
        }
        let admin = match &config.admin {
            // One socket, so no SO_REUSEPORT: a second gateway fails here instead of sharing it.
            Some(admin) => Some(bind(admin.address, false).map_err(|source| ServeError::Bind {
                name: "admin".to_string(),
                address: admin.address,
                source,
            })?),
            None => None,
        };
        Ok(Server { listeners, admin, runtime, workers })
    }

    /// The slot holding the current snapshot: a reload swaps a new one in.
    pub fn runtime(&self) -> Runtime {
        self.runtime.clone()
    }

    /// How many worker threads `run` starts (each upstream has a pool per worker).
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// The bound addresses by listener name (the admin listener is named `admin`).
    pub fn local_addrs(&self) -> Vec<(String, SocketAddr)> {
        let traffic = self.listeners.iter().map(|(name, address, _)| (name.clone(), *address));
        let admin = self.admin.iter().filter_map(|l| Some(("admin".to_string(), l.local_addr().ok()?)));
        traffic.chain(admin).collect()
    }

    /// Serves until `shutdown` completes, then stops accepting and drains in-flight requests.
    /// Call it from a tokio runtime: it serves the admin listener there (with `status` at
    /// `/admin/config`) and starts the workers.
    pub async fn run(self, shutdown: impl Future<Output = ()>, status: Option<Arc<Status>>) -> Result<(), ServeError> {
        let (stop, stopped) = watch::channel(false);

        // Hand socket i of every listener to worker i.
        let mut per_worker: Vec<Vec<(String, std::net::TcpListener)>> = (0..self.workers).map(|_| Vec::new()).collect();
        for (name, _, sockets) in self.listeners {
            for (index, socket) in sockets.into_iter().enumerate() {
                per_worker[index].push((name.clone(), socket));
            }
        }
        let mut workers = Vec::with_capacity(self.workers);
        for (index, listeners) in per_worker.into_iter().enumerate() {
            let worker = Worker { index, listeners, runtime: self.runtime.clone(), stopped: stopped.clone() };
            let handle = std::thread::Builder::new()
                .name(format!("gateway-worker-{index}"))
                .spawn(move || worker.run())
                .map_err(|source| ServeError::Worker { index, source })?;
            workers.push(handle);
        }
        let admin = match self.admin.map(TcpListener::from_std).transpose() {
            Ok(admin) => admin.map(|listener| tokio::spawn(admin::serve(listener, status, self.runtime.clone()))),
            Err(error) => {
                tracing::error!(%error, "cannot serve the admin listener");
                None
            }
        };

        shutdown.await;
        DRAINING.store(true, Ordering::Relaxed);
        // Still accepting, but no longer ready: load balancers take the gateway out first.
        let accept_grace = self.runtime.load().accept_grace;
        if !accept_grace.is_zero() {
            tracing::info!(?accept_grace, "not ready; accepting until the grace ends");
            tokio::time::sleep(accept_grace).await;
        }
        let _ = stop.send(true);
        // Workers close their sockets first (new connections are refused), then drain.
        let joined = tokio::task::spawn_blocking(move || {
            for handle in workers {
                if handle.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        })
        .await;
        if joined.is_err() {
            tracing::error!("waiting for the workers failed");
        }
        if let Some(admin) = admin {
            admin.abort();
        }
        Ok(())
    }
}

/// Set once a stop signal came: `/readyz` answers 503, and HTTP/1.1 answers say `connection: close`
/// so that keep-alive clients take their next request elsewhere. (One server per process.)
static DRAINING: AtomicBool = AtomicBool::new(false);

fn draining() -> bool {
    DRAINING.load(Ordering::Relaxed)
}

/// A nonblocking listening socket with `SO_REUSEPORT`, so every worker can bind the same address.
fn bind_reuseport(address: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    bind(address, true)
}

fn bind(address: SocketAddr, reuse_port: bool) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into()).map_err(explain_in_use)?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

/// Fails when another process listens on `address`. Its `SO_REUSEPORT` sockets would let ours
/// join in silently (a second gateway, or an old one never stopped, taking a share of the
/// traffic with another config); a socket without the option cannot bind beside them.
fn refuse_if_taken(address: SocketAddr) -> std::io::Result<()> {
    if address.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
    probe.set_reuse_address(true)?;
    probe.bind(&address.into()).map_err(explain_in_use)
}

fn explain_in_use(error: std::io::Error) -> std::io::Error {
    match error.kind() {
        std::io::ErrorKind::AddrInUse => {
            std::io::Error::new(error.kind(), "address already in use by another process (another gateway?)")
        }
        _ => error,
    }
}

/// One worker thread: its own single-threaded runtime, its sockets, its connections.
struct Worker {
    index: usize,
    listeners: Vec<(String, std::net::TcpListener)>,
    runtime: Runtime,
    stopped: watch::Receiver<bool>,
}

impl Worker {
    fn run(self) {
        worker::set_index(self.index);
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(error) => {
                tracing::error!(worker = self.index, %error, "cannot start the worker's runtime");
                return;
            }
        };
        runtime.block_on(self.serve());
    }

    async fn serve(self) {
        let drain = Arc::new(Drain::new());
        let mut accepting = JoinSet::new();
        for (name, socket) in self.listeners {
            match TcpListener::from_std(socket) {
                Ok(listener) => {
                    accepting.spawn(accept_loop(
                        name,
                        listener,
                        self.runtime.clone(),
                        drain.clone(),
                        self.stopped.clone(),
                    ));
                }
                Err(error) => tracing::error!(listener = %name, %error, "cannot serve the listener"),
            }
        }
        // Accept loops drop their sockets as they end, so new connections are refused from here on.
        while accepting.join_next().await.is_some() {}
        tracing::debug!(worker = self.index, connections = drain.connections(), "draining");
        let drain_timeout = self.runtime.load().drain_timeout;
        if let Some(drain) = Arc::into_inner(drain) {
            if tokio::time::timeout(drain_timeout, drain.run()).await.is_err() {
                drain::mark_timed_out();
                tracing::warn!(worker = self.index, "drain timeout reached; closing the remaining connections");
            }
        }
    }
}

/// The slot `server.max_connections_per_ip` gives `peer` (none without the cap, or for a trusted
/// proxy, which speaks for many clients), or `Err` when its address has all of them: the caller
/// drops the connection, which closes it.
fn per_address(snapshot: &Snapshot, peer: SocketAddr) -> Result<Option<connections::AddressSlot>, ()> {
    let Some(limit) = snapshot.server.max_connections_per_ip else { return Ok(None) };
    if snapshot.is_trusted(peer.ip()) {
        return Ok(None);
    }
    match connections::per_address(peer.ip(), limit) {
        Some(slot) => Ok(Some(slot)),
        None => {
            crate::metrics::global().client_rejected("per_ip_connections");
            static WARNED: Throttle = Throttle::new(Duration::from_secs(60));
            if WARNED.allows() {
                tracing::warn!(%peer, limit, "server.max_connections_per_ip reached: closing the address's new connections (logged once a minute at most)");
            }
            Err(())
        }
    }
}

async fn accept_loop(
    name: String,
    listener: TcpListener,
    runtime: Runtime,
    drain: Arc<Drain>,
    mut stopped: watch::Receiver<bool>,
) {
    let name: Arc<str> = Arc::from(name);
    // The connection waits for room once accepted, so a loop holds at most one unserved.
    let accept = || async {
        loop {
            let (stream, peer) = listener.accept().await?;
            let Ok(address) = per_address(&runtime.load(), peer) else { continue };
            let open = connections::room(|| connections::limit(&runtime.load().server)).await;
            return Ok::<_, std::io::Error>((stream, peer, open.with_address(address)));
        }
    };
    loop {
        tokio::select! {
            biased;
            // Also ends if the sender is gone: nobody could stop this loop any more.
            () = async { let _ = stopped.wait_for(|stop| *stop).await; } => return,
            accepted = accept() => match accepted {
                Ok((stream, peer, open)) => {
                    let draining = drain.watcher();
                    tokio::spawn(conn::serve(stream, peer, name.clone(), runtime.clone(), draining, open));
                }
                Err(error) => {
                    // Usually out of file descriptors: back off instead of spinning, and say so
                    // without a line per attempt.
                    static FAILING: Throttle = Throttle::new(Duration::from_secs(10));
                    if FAILING.allows() {
                        tracing::warn!(listener = %name, %error, "accept failed (logged once in 10 s at most)");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
}
