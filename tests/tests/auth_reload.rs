//! JWT providers across hot reloads: a rotated `public_key` file takes effect without a restart
//! (and tokens of the old key stop passing, cached or not), and a reload keeps a JWKS key set it
//! already fetched instead of leaving routes without keys.

use std::time::Duration;

use backends::token::{claims, Algorithm, SigningKey};
use e2e::client::{self, Reply};
use e2e::jwks::JwksServer;
use e2e::{config, Backend, ConfigDir, Gateway};

/// Provider `main` with `keys` (one YAML line) and `extra` lines, one route `/account` requiring it.
fn yaml(echo: &Backend, keys: &str, extra: &str) -> String {
    let body = format!(
        r#"
jwt:
  providers:
    main:
      issuer: https://auth.test
      audiences: [shop]
      algorithms: [ES256]
      {keys}
      {extra}
upstreams:
  echo: {{ endpoints: ["${{echo}}"] }}
routes:
  - {{ name: account, match: {{ path_prefix: /account }}, upstream: echo, auth: {{ provider: main }} }}
"#
    );
    config(&body, &[echo])
}

fn token(key: &SigningKey, user: &str) -> String {
    key.sign(&claims("https://auth.test", "shop", user, Duration::from_secs(600)))
}

async fn call(gateway: &Gateway, token: &str) -> Reply {
    client::get_with(gateway.addr(), "/account", &[("authorization", &format!("Bearer {token}"))]).await
}

async fn version(gateway: &Gateway) -> String {
    gateway.admin_config().await["version"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn auth_reload_rotated_public_key_file_applies_and_old_tokens_stop() {
    let echo = Backend::spawn("echo");
    let (old_key, new_key) = (SigningKey::generate(Algorithm::ES256, "a"), SigningKey::generate(Algorithm::ES256, "b"));
    let dir = ConfigDir::new(&yaml(&echo, "public_key: keys/jwt.pem", ""));
    dir.write_file("keys/jwt.pem", &old_key.public_pem());
    let gateway = Gateway::start_with_file(dir.path());
    let old_token = token(&old_key, "u1");
    assert_eq!(call(&gateway, &old_token).await.status, 200, "cached from here on");
    let before = version(&gateway).await;

    dir.write_file("keys/jwt.pem", &new_key.public_pem());
    gateway.admin_config_until("a reload for the new key file", |json| json["version"] != before.as_str()).await;

    assert_eq!(call(&gateway, &token(&new_key, "u1")).await.status, 200);
    call(&gateway, &old_token).await.assert_error(401, "invalid_token");
}

#[tokio::test]
async fn auth_reload_keeps_the_fetched_jwks_key_set() {
    let echo = Backend::spawn("echo");
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]);
    let keys = format!("jwks_url: {}", jwks.url());
    let dir = ConfigDir::new(&yaml(&echo, &keys, "leeway: 30s"));
    let gateway = Gateway::start_with_file(dir.path());
    assert_eq!(call(&gateway, &token(&key, "u1")).await.status, 200);
    let fetches = jwks.fetches();

    // The provider changes (so its token cache starts over) but its JWKS settings do not.
    jwks.go_down().await;
    let changed = yaml(&echo, &keys, "leeway: 10s");
    dir.replace(&changed);
    gateway.wait_for_version(&e2e::config_version(&changed)).await;

    // A token the new provider has never seen is verified with the carried-over keys.
    assert_eq!(call(&gateway, &token(&key, "u2")).await.status, 200);
    assert_eq!(jwks.fetches(), fetches, "no refetch was needed");
}
