//! The JWT scenarios' tokens: an RS256 key generated for the run (only its public half is written,
//! for the gateway) and a pool of tokens, one per user, that the load generator sends round robin.

use std::sync::Arc;
use std::time::Duration;

use backends::token::{claims, Algorithm, SigningKey};
use http::HeaderValue;

/// The provider the gateway's token route checks against, and what its tokens say.
pub const PROVIDER: &str = "bench";
pub const ISSUER: &str = "https://auth.bench.test";
pub const AUDIENCE: &str = "bench";
/// The route that requires a token. The gateway strips it, so the echo sees the same path as on
/// the plain route and `--path` means the same thing in every scenario.
pub const PATH_PREFIX: &str = "/jwt";
/// A route without auth that the same tokens go to (`gateway-bearer`): the bytes on the wire are
/// the same as on the token route, so the two differ only by the check.
pub const UNCHECKED_PATH_PREFIX: &str = "/bearer";
/// The provider's public key, next to gateway.yaml.
pub const KEY_FILE: &str = "jwt.pem";
/// Longer than any run: a token expiring mid-run would turn into 401s.
const LIFETIME: Duration = Duration::from_secs(7 * 24 * 3600);

/// A signing key's public half and tokens it signed.
#[derive(Debug)]
pub struct Tokens {
    /// SPKI PEM: what the gateway verifies with.
    pub public_pem: String,
    /// `Bearer <token>`, one token per user (`sub` = `user-<i>`).
    pub authorization: Arc<[HeaderValue]>,
}

/// A fresh RS256 key and a token for each of `users` users (about 1 ms of signing per token).
pub fn mint(users: usize) -> anyhow::Result<Tokens> {
    let key = SigningKey::try_generate(Algorithm::RS256, "bench-1")?;
    let authorization = (0..users)
        .map(|i| {
            let token = key.sign(&claims(ISSUER, AUDIENCE, &format!("user-{i}"), LIFETIME));
            HeaderValue::try_from(format!("Bearer {token}"))
        })
        .collect::<Result<_, _>>()?;
    Ok(Tokens { public_pem: key.public_pem(), authorization })
}
