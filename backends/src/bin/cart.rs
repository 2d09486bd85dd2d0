//! `cart --listen ADDR --issuer URL --audience AUD --jwks-url URL`: runs the cart service and prints
//! `listening <ip:port>` on stdout.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use backends::jwt_check::Verifier;
use backends::{cart, service};
use clap::Parser;

/// Serves per-user carts to callers whose token the issuer's JWKS verifies.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The `iss` tokens must carry.
    #[arg(long)]
    issuer: String,
    /// The `aud` tokens must carry.
    #[arg(long)]
    audience: String,
    /// The issuer's JWKS, over plain http:// (fetched on first use).
    #[arg(long)]
    jwks_url: String,
    /// Least time between two JWKS fetches for tokens with an unknown key id.
    #[arg(long, default_value = "30s", value_parser = service::parse_duration)]
    jwks_cooldown: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service::init_tracing();
    let args = Args::parse();
    let verifier = Verifier::with_cooldown("cart", &args.issuer, &args.audience, &args.jwks_url, args.jwks_cooldown)?;
    let listener = service::listen(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    service::run(listener, cart::app(verifier), service::shutdown_signal()).await.context("serving")
}
