//! `cart --listen ADDR --issuer URL --audience AUD --jwks-url URL [--jwks-cooldown 30s]`: runs the
//! cart service and prints `listening <ip:port>` on stdout.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backends::service::run_checking(
        "cart",
        "Serves per-user carts to callers whose token the issuer's JWKS verifies.",
        backends::cart::app,
    )
    .await
}
