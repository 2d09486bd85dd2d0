//! `auth --listen ADDR --issuer URL --audience AUD --users FILE [--token-lifetime 5m]`: runs the
//! auth service and prints `listening <ip:port>` on stdout.

use std::path::PathBuf;
use std::time::Duration;

use backends::auth::{self, Settings, Users};
use backends::service::{self, Common};
use clap::Parser;

/// Issues ES256 access tokens for the users of a file, and publishes the key as a JWKS.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    common: Common,
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
    let Args { common, users, token_lifetime } = Args::parse();
    anyhow::ensure!(
        !common.issuer.is_empty() && !common.audience.is_empty(),
        "--issuer and --audience must not be empty"
    );
    let users = Users::load(&users)?;
    let settings = Settings { issuer: common.issuer.clone(), audience: common.audience.clone(), users, token_lifetime };
    common.serve(auth::app(settings)?).await
}
