//! The `gateway` command: `run` serves traffic, `check` validates a config file.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use gateway::access_log;
use gateway::config::{self, LoadError};
use gateway::reload::{self, Reloader};
use gateway::server::Server;
use gateway::telemetry::{self, LogFormat};
use gateway::worker;

// A proxy allocates and frees small buffers and header maps on every request; mimalloc does that
// markedly cheaper than glibc's allocator (measured with the load bench, see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "gateway",
    version,
    about = "An API gateway: YAML routes, streaming reverse proxy, zero-trust JWT checks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve traffic with the given config until SIGTERM or SIGINT, then drain and exit.
    Run {
        /// The YAML config file.
        #[arg(long, short, default_value = "config/gateway.yaml")]
        config: PathBuf,
        #[arg(long, value_enum, default_value_t = LogFormat::Text)]
        log_format: LogFormat,
        /// Log filter, e.g. `info` or `gateway=debug` (RUST_LOG overrides it).
        #[arg(long, default_value = "info", value_parser = telemetry::log_filter)]
        log_level: String,
    },
    /// Validate a config file: exit 0 when valid, 1 with every problem listed, 2 when unreadable.
    Check {
        /// The YAML config file.
        #[arg(long, short, default_value = "config/gateway.yaml")]
        config: PathBuf,
    },
    /// Certificate tools.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Write a local CA and a certificate for localhost / 127.0.0.1 / ::1, for development only.
    Dev {
        /// Directory to write ca.crt, ca.key, localhost.crt and localhost.key into.
        #[arg(long, default_value = "certs")]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Check { config } => check(&config),
        Command::Certs { command: CertsCommand::Dev { out } } => match gateway::dev_certs::write_dev_certs(&out) {
            Ok(written) => {
                println!(
                    "wrote {} and {} (CA: {})",
                    written.cert.display(),
                    written.key.display(),
                    written.ca_cert.display()
                );
                println!("use them in a listener's tls.certificates; clients trust the CA file");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, log_format, log_level } => {
            telemetry::init(log_format, &log_level);
            match run(&config) {
                Ok(code) => code,
                Err(error) => {
                    eprintln!("error: {}", describe(&error));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for warning in &loaded.warnings {
                eprintln!("{warning}");
            }
            println!("{}: OK ({})", path.display(), summary(&loaded.config));
            ExitCode::SUCCESS
        }
        Err(LoadError::Invalid(problems)) => {
            eprintln!("{problems}");
            ExitCode::FAILURE
        }
        Err(error @ LoadError::Unreadable { .. }) => {
            eprintln!("{error}");
            ExitCode::from(2)
        }
    }
}

/// What `check` found, counted: `2 listeners, 1 upstream, 3 routes, ...`.
fn summary(c: &config::Config) -> String {
    let mut parts = vec![
        count(c.listeners.len(), "listener"),
        count(c.upstreams.len(), "upstream"),
        count(c.routes.len(), "route"),
    ];
    if !c.jwt_providers.is_empty() {
        let protected = c.routes.iter().filter(|r| r.auth.is_some()).count();
        parts.push(count(c.jwt_providers.len(), "JWT provider"));
        parts.push(format!("{} checking tokens", count(protected, "route")));
    }
    if !c.rate_limits.is_empty() {
        let limited = c.routes.iter().filter(|r| r.rate_limit.is_some()).count();
        let place = if c.redis.is_some() { "in Redis" } else { "in-process" };
        parts.push(format!(
            "{} counted {place} on {}",
            count(c.rate_limits.len(), "rate limit"),
            count(limited, "route")
        ));
    }
    parts.join(", ")
}

/// `1 route`, `2 routes`.
fn count(n: usize, noun: &str) -> String {
    match n {
        1 => format!("1 {noun}"),
        n => format!("{n} {noun}s"),
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<ExitCode> {
    let (loaded, version) = match reload::read(path) {
        Ok(read) => read,
        Err(error) => {
            eprintln!("{error}");
            return Ok(ExitCode::FAILURE);
        }
    };
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    // This thread only handles signals, reloads, background fetches (JWKS) and the admin listener;
    // workers carry the traffic. Entered before the first snapshot is built so it can start those.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let entered = runtime.enter();
    gateway::server::connections::raise_fd_limit();
    let server = Server::bind(&loaded.config, worker::count())?;
    let reloader = Arc::new(Reloader::new(path.to_owned(), loaded.config, version, server.runtime(), server.workers()));
    let served = runtime.block_on(async {
        let _watching = reload::watch(reloader.clone())?;
        // Listened for before `ready`: a stop signal sent right after it must drain, not kill.
        let signals = StopSignals::listen().context("listening for SIGTERM and SIGINT")?;
        for (name, address) in server.local_addrs() {
            // Machine-readable: tests and scripts read the bound ports (port 0 gets a free one).
            announce(&format!("listening {name} {address}"));
            tracing::info!(listener = %name, %address, "listening");
        }
        announce("ready");
        server.run(shutdown_signal(signals), Some(reloader.status())).await?;
        if gateway::server::drain::cut_short() {
            tracing::info!("stopped; the drain timeout closed the connections still open");
        } else {
            tracing::info!("all connections drained; stopped");
        }
        Ok(ExitCode::SUCCESS)
    });
    // The last snapshots, and with them the access log's handles, go with these; then the log's
    // writer has written out every line before the process ends.
    drop(reloader);
    drop(entered);
    drop(runtime);
    access_log::finish(access_log::CLOSE_WAIT);
    served
}

/// The error and its causes, each said once: most of the gateway's errors already quote their
/// cause, which `{:#}` would repeat.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text = format!("{text}: {cause}");
        }
    }
    text
}

/// A line on stdout for scripts. Nobody reading it (`gateway run | head -1`, a log shipper that
/// went away) must not stop the gateway: `println!` would panic on the broken pipe.
fn announce(line: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

/// Completes on the first SIGTERM or SIGINT. A second one during the drain exits at once (status 1)
/// without waiting for in-flight requests: an operator who means now should not need SIGKILL.
async fn shutdown_signal(mut signals: StopSignals) {
    signals.next().await;
    tokio::spawn(async move {
        signals.next().await;
        tracing::warn!("second stop signal: exiting without waiting for in-flight requests");
        std::process::exit(1);
    });
}

/// SIGTERM and SIGINT, caught from the moment this is made (a signal that comes before would
/// end the process unhandled, and one that comes before a listener exists is not seen by it).
#[cfg(unix)]
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl StopSignals {
    fn listen() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals { terminate: signal(SignalKind::terminate())?, interrupt: signal(SignalKind::interrupt())? })
    }

    /// Completes on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => tracing::info!("SIGINT received"),
            _ = self.terminate.recv() => tracing::info!("SIGTERM received"),
        }
    }
}

#[cfg(not(unix))]
struct StopSignals;

#[cfg(not(unix))]
impl StopSignals {
    fn listen() -> std::io::Result<StopSignals> {
        Ok(StopSignals)
    }

    async fn next(&mut self) {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_counts_in_the_singular_and_plural() {
        let yaml = "listeners: [{ name: a, address: 127.0.0.1:0 }]\n\
                    upstreams: { u: { endpoints: [http://127.0.0.1:1] } }\n\
                    jwt: { providers: { p: { issuer: i, audiences: [a], algorithms: [ES256], jwks_url: 'http://127.0.0.1:1/k' } } }\n\
                    rate_limits: { l: { requests: 1, window: 1s, key: client_ip } }\n\
                    routes:\n\
                    - { name: r1, match: { path_prefix: /a }, upstream: u, auth: { provider: p }, rate_limit: l }\n\
                    - { name: r2, upstream: u }\n";
        let loaded = config::parse("t.yaml", yaml).unwrap();
        assert_eq!(
            summary(&loaded.config),
            "1 listener, 1 upstream, 2 routes, 1 JWT provider, 1 route checking tokens, \
             1 rate limit counted in-process on 1 route"
        );
    }
}
