//! `product --listen ADDR --issuer URL --audience AUD --jwks-url URL [--jwks-cooldown 30s]`: runs the
//! product service and prints `listening <ip:port>` on stdout.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    backends::service::run_checking(
        "product",
        "Serves the product catalog to callers whose token the issuer's JWKS verifies.",
        backends::product::app,
    )
    .await
}
