//! What the auth, product and cart binaries share: logging, the `listening` line, serving until
//! SIGTERM or SIGINT, the duration flags, and the whole `main` of product and cart.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use clap::{CommandFactory, FromArgMatches, Parser};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tower_service::Service;
use tracing_subscriber::EnvFilter;

use crate::jwt_check::Verifier;

/// What [`run`] holds clients to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// The longest a client may take to send a request head, or keep a connection idle between two.
    pub header_read_timeout: Duration,
    /// The most connections served at once.
    pub max_connections: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { header_read_timeout: Duration::from_secs(30), max_connections: 4096 }
    }
}

/// After SIGTERM, how long requests in flight may take to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The flags every shop service has: where it listens, and whose tokens it issues or checks.
#[derive(Debug, clap::Args)]
pub struct Common {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// The tokens' issuer (`iss`).
    #[arg(long)]
    pub issuer: String,
    /// The tokens' audience (`aud`).
    #[arg(long)]
    pub audience: String,
}

impl Common {
    /// Binds `--listen` (printing the `listening` line) and serves `app` until SIGTERM or SIGINT.
    pub async fn serve(&self, app: Router) -> anyhow::Result<()> {
        let listener = listen(self.listen).await.with_context(|| format!("binding {}", self.listen))?;
        run(listener, app, shutdown_signal()).await.context("serving")
    }
}

/// The command line of a service that checks tokens itself (product, cart).
#[derive(Debug, Parser)]
struct CheckingArgs {
    #[command(flatten)]
    common: Common,
    /// The issuer's JWKS, over plain http:// (fetched on first use).
    #[arg(long)]
    jwks_url: String,
    /// Least time between two JWKS fetches for tokens with an unknown key id.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    jwks_cooldown: Duration,
}

/// The `main` of a service that checks tokens: reads its command line (`about` is its help text),
/// then serves `app` with a verifier whose realm is `name` until SIGTERM or SIGINT.
pub async fn run_checking(name: &'static str, about: &'static str, app: fn(Verifier) -> Router) -> anyhow::Result<()> {
    init_tracing();
    let matches = CheckingArgs::command().name(name).about(about).get_matches();
    let args = CheckingArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let Common { issuer, audience, .. } = &args.common;
    let verifier = Verifier::with_cooldown(name, issuer, audience, &args.jwks_url, args.jwks_cooldown)?;
    args.common.serve(app(verifier)).await
}

/// Logs to stderr, at the level `RUST_LOG` asks for (`info` without it).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .with_writer(io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
}

/// Binds `addr` and prints `listening <ip:port>` on stdout: tests and scripts read that line to
/// learn the port when `addr` asks for port 0.
pub async fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    // Stdout is line-buffered, so the line is flushed at once.
    println!("listening {}", listener.local_addr()?);
    Ok(listener)
}

/// Serves `app` on `listener` until `shutdown` resolves, then lets requests in flight finish (for
/// up to [`DRAIN_TIMEOUT`]), with the default [`Limits`].
pub async fn run(listener: TcpListener, app: Router, shutdown: impl Future<Output = ()> + Send) -> io::Result<()> {
    run_with(listener, app, shutdown, Limits::default()).await
}

/// [`run`] with other limits. Zero trust goes for connections too: a client that never finishes
/// a request head is cut off (`axum::serve` never does), and past `max_connections` clients wait
/// in the listen backlog rather than use up the file descriptors.
pub async fn run_with(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send,
    limits: Limits,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Also the longest a keep-alive connection may sit idle: hyper starts the clock at each head.
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    let slots = Arc::new(Semaphore::new(limits.max_connections as usize));
    let (stop, stopping) = watch::channel(false);
    tokio::pin!(shutdown);
    loop {
        let slot = tokio::select! {
            slot = Arc::clone(&slots).acquire_owned() => slot.map_err(io::Error::other)?,
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was taken: not fatal.
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let (builder, app, mut stopping) = (builder.clone(), app.clone(), stopping.clone());
        tokio::spawn(async move {
            let service = service_fn(move |request| app.clone().call(request));
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = async { stopping.wait_for(|stop| *stop).await.is_ok() } => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(slot);
        });
    }
    let _ = stop.send(true);
    // Every slot back: every connection closed.
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, slots.acquire_many(limits.max_connections)).await;
    if drained.is_err() {
        tracing::warn!("connections still open after {DRAIN_TIMEOUT:?}; stopping anyway");
    }
    Ok(())
}

/// Resolves on the first SIGTERM or SIGINT (on other systems, Ctrl-C only).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            // Without handlers the default action (ending the process) still applies.
            _ => std::future::pending().await,
        }
    }
    #[cfg(not(unix))]
    {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// `300`, `300s`, `5m` or `1h`: a whole number of seconds, minutes or hours, above zero.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, "s"),
    };
    let factor = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(format!("`{text}`: use a whole number with s, m or h, like 300s or 5m")),
    };
    match number.parse::<u64>().ok().and_then(|n| n.checked_mul(factor)) {
        Some(0) => Err(format!("`{text}`: must be above zero")),
        Some(seconds) => Ok(Duration::from_secs(seconds)),
        None => Err(format!("`{text}`: use a whole number with s, m or h, like 300s or 5m")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_duration_units_accepted_others_refused() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "m", "5d", "-5s", "1.5m", "0s", "5 m"] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }
}
