//! `auth --listen ADDR --issuer URL --audience AUD --users FILE [--token-lifetime 5m]`: runs the
//! auth service and prints `listening <ip:port>` on stdout.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use backends::auth::{self, Settings, Users};
use backends::service;
use clap::Parser;

/// Issues ES256 access tokens for the users of a file, and publishes the key as a JWKS.
#[derive(Debug, Parser)]
struct Args {
    /// Address to listen on; port 0 picks a free port (the bound address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The tokens' `iss`.
    #[arg(long)]
    issuer: String,
    /// The tokens' `aud`.
    #[arg(long)]
    audience: String,
    /// JSON file of users: `[{"username": "...", "password": "...", "scopes": ["..."]}]`.
    #[arg(long)]
    users: PathBuf,
    /// How long tokens are valid: `300s`, `5m`, `1h`.
    #[arg(long, default_value = "5m", value_parser = service::parse_duration)]
    token_lifetime: Duration,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    service::init_tracing();
    let args = Args::parse();
    anyhow::ensure!(!args.issuer.is_empty() && !args.audience.is_empty(), "--issuer and --audience must not be empty");
    let users = Users::load(&args.users)?;
    let settings =
        Settings { issuer: args.issuer, audience: args.audience, users, token_lifetime: args.token_lifetime };
    let app = auth::app(settings)?;
    let listener = service::listen(args.listen).await.with_context(|| format!("binding {}", args.listen))?;
    service::run(listener, app, service::shutdown_signal()).await.context("serving")
}
