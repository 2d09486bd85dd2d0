//! `echo --listen ADDR --name NAME`: runs the echo backend and prints `listening <ip:port>` on stdout.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Echo backend for gateway tests and benchmarks: reports every request it receives.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Name reported in bodies and the `x-backend` header: letters, digits, `.`, `_`, `-`.
    #[arg(long, default_value = "echo", value_parser = parse_name)]
    name: String,
}

fn parse_name(name: &str) -> Result<String, String> {
    let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(name.to_owned())
    } else {
        Err("use letters, digits, '.', '_' and '-' only".to_owned())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .init();
    let args = Args::parse();
    let listener = TcpListener::bind(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    // Tests and scripts read this line to learn the port; stdout is line-buffered, so it is flushed here.
    println!("listening {}", listener.local_addr()?);
    backends::echo::serve(listener, &args.name).await.context("serving")
}
