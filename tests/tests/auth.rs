//! JWT validation at the gateway (`jwt.providers`, a route's `auth` and `require`): every signing
//! algorithm and key source, the claims checks, attacks (`alg: none`, key confusion, forged and
//! tampered signatures), JWKS rotation / outages / kid floods, malformed Authorization headers, the
//! RFC 6750 challenges and error codes, identity-header stripping, and tokens kept out of the logs.
//!
//! Keys are generated per test (`backends::token`); JWKS endpoints are in-process ([`JwksServer`]).

use std::time::{Duration, Instant};

use backends::token::{self, claims, now, segment, Algorithm, SigningKey};
use e2e::client::{self, Reply};
use e2e::jwks::JwksServer;
use e2e::tls::TestCa;
use e2e::upstream_tls::TlsUpstream;
use e2e::{eventually, fetch_until, gateway_check, Backend, ConfigDir, Gateway, TIMEOUT};
use futures_util::future::join_all;
use http::HeaderValue;
use serde_json::{json, Value};

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "shop";
const REALM: &str = "shop";
/// The variable `secret_env` names in HMAC configs.
const SECRET_ENV: &str = "E2E_JWT_SECRET";

/// The routes of every test gateway, all to the echo:
/// `/cart` (token required, `scope` must include `cart:write`), `/staff` (token required, `roles`
/// must include `admin`), `/account` (token required), `/catalog` (token optional), `/open` (no auth).
const ROUTES: &str = r#"upstreams:
  echo:
    endpoints: ["${echo}"]
routes:
  - name: cart
    match: { path_prefix: /cart }
    upstream: echo
    auth: { provider: main }
    require: { scope: [cart:write] }
  - name: staff
    match: { path_prefix: /staff }
    upstream: echo
    auth: { provider: main }
    require: { roles: [admin] }
  - name: account
    match: { path_prefix: /account }
    upstream: echo
    auth: { provider: main }
  - name: catalog
    match: { path_prefix: /catalog }
    upstream: echo
    auth: { provider: main, optional: true }
  - name: open
    match: { path_prefix: /open }
    upstream: echo
"#;

// ---------------------------------------------------------------------------------------------------
// Fixture
// ---------------------------------------------------------------------------------------------------

/// A gateway with [`ROUTES`] and provider `main`, its echo upstream and its config directory.
struct Fixture {
    gateway: Gateway,
    echo: Backend,
    _dir: ConfigDir,
}

/// The whole config: provider `main` (issuer, audience, then `lines`, one YAML line each) and [`ROUTES`].
fn auth_config(echo: &Backend, lines: &str) -> String {
    let mut body = format!("jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n");
    for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
        body.push_str(&format!("      {line}\n"));
    }
    body.push_str(ROUTES);
    e2e::config(&body, &[echo])
}

impl Fixture {
    /// Starts the gateway on [`auth_config`]`(lines)`, with `files` (relative path, contents) written
    /// next to the config file and `env` added to the gateway's environment.
    fn start(lines: &str, files: &[(&str, &str)], env: &[(&str, &str)]) -> Fixture {
        let echo = Backend::spawn("echo");
        let dir = ConfigDir::new(&auth_config(&echo, lines));
        for (name, contents) in files {
            dir.write_file(name, contents);
        }
        let gateway = Gateway::start_with_file_and_env(dir.path(), env);
        Fixture { gateway, echo, _dir: dir }
    }

    /// Provider `main` verifies with `key`'s public PEM, in `keys/public.pem` named by a path relative to the config.
    fn public_key(key: &SigningKey, extra: &str) -> Fixture {
        let lines =
            format!("algorithms: [{}]\npublic_key: keys/public.pem\nrealm: {REALM}\n{extra}", key.algorithm_name());
        Fixture::start(&lines, &[("keys/public.pem", &key.public_pem())], &[])
    }

    /// Provider `main` verifies HMAC tokens with `key`'s secret, passed in [`SECRET_ENV`].
    fn secret(key: &SigningKey, extra: &str) -> Fixture {
        let secret = std::str::from_utf8(key.secret().expect("an HMAC key")).expect("generated secrets are text");
        let lines =
            format!("algorithms: [{}]\nsecret_env: {SECRET_ENV}\nrealm: {REALM}\n{extra}", key.algorithm_name());
        Fixture::start(&lines, &[], &[(SECRET_ENV, secret)])
    }

    /// Provider `main` takes its keys from `jwks`, accepting `algorithms` (e.g. `"RS256, ES256"`).
    fn jwks(jwks: &JwksServer, algorithms: &str, extra: &str) -> Fixture {
        Fixture::jwks_with_env(jwks, algorithms, extra, &[])
    }

    fn jwks_with_env(jwks: &JwksServer, algorithms: &str, extra: &str, env: &[(&str, &str)]) -> Fixture {
        let lines = format!("algorithms: [{algorithms}]\njwks_url: {}\nrealm: {REALM}\n{extra}", jwks.url());
        Fixture::start(&lines, &[], env)
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        client::get_with(self.gateway.addr(), path, headers).await
    }

    /// `GET path` with `Authorization: Bearer <token>`.
    async fn bearer(&self, path: &str, token: &str) -> Reply {
        self.get(path, &[("authorization", &format!("Bearer {token}"))]).await
    }

    /// `GET path` with one `Authorization` header holding exactly `value` (any bytes but CR/LF/NUL).
    async fn authorization_bytes(&self, path: &str, value: &[u8]) -> Reply {
        let value = HeaderValue::from_bytes(value).unwrap_or_else(|e| panic!("header value {value:?}: {e}"));
        let request = client::request("GET", path).header("authorization", value).body(client::empty()).unwrap();
        client::send(self.gateway.addr(), request).await
    }

    /// Sends `token` to `path` until it is accepted (200), within [`TIMEOUT`]. Replies on the way must
    /// be one of `allowed` (status, error code): keys may not be there yet, anything else fails.
    async fn poll_until_accepted(&self, path: &str, token: &str, allowed: &[(u16, &str)]) -> Reply {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let reply = self.bearer(path, token).await;
            if reply.status == 200 {
                return reply;
            }
            let code = reply.json()["error"].as_str().unwrap_or_default().to_owned();
            assert!(
                allowed.iter().any(|(status, allowed_code)| reply.status == *status && code == *allowed_code),
                "while waiting for the token to be accepted: {} {}",
                reply.status,
                reply.text()
            );
            assert!(Instant::now() < deadline, "token not accepted within {TIMEOUT:?}; last: {}", reply.text());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Tokens and assertions
// ---------------------------------------------------------------------------------------------------

/// Valid claims for ten minutes: iss, aud, sub `user-1`, iat = nbf = now, exp.
fn valid_claims() -> Value {
    claims(ISSUER, AUDIENCE, "user-1", Duration::from_secs(600))
}

/// [`valid_claims`] with `changes` applied (`null` removes a claim).
fn claims_with(changes: Value) -> Value {
    let mut claims = valid_claims();
    for (name, value) in changes.as_object().expect("changes is an object") {
        match value {
            Value::Null => {
                claims.as_object_mut().unwrap().remove(name);
            }
            value => claims[name] = value.clone(),
        }
    }
    claims
}

fn signature_of(token: &str) -> &str {
    token.rsplit_once('.').map_or("", |(_, signature)| signature)
}

/// `token` with one character in the middle of its signature changed.
fn tamper_signature(token: &str) -> String {
    let (signed, signature) = token.rsplit_once('.').expect("a compact JWS");
    let mut bytes = signature.as_bytes().to_vec();
    let middle = bytes.len() / 2;
    bytes[middle] = if bytes[middle] == b'A' { b'B' } else { b'A' };
    format!("{signed}.{}", String::from_utf8(bytes).unwrap())
}

/// A 200 from the echo that received `Authorization` exactly as sent.
fn assert_reached_upstream(reply: &Reply, authorization: &str, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    assert_eq!(
        reply.echoed().header_all("authorization"),
        [authorization],
        "{what}: Authorization must be byte-identical"
    );
}

/// The WWW-Authenticate challenge of an error reply, asserting it is a Bearer challenge for [`REALM`]
/// with `error="<code>"` and an `error_description`.
fn assert_challenge(reply: &Reply, code: &str, what: &str) -> String {
    let challenge = reply.header("www-authenticate").unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
    assert!(challenge.contains(&format!("realm=\"{REALM}\"")), "{what}: {challenge}");
    assert!(challenge.contains(&format!("error=\"{code}\"")), "{what}: {challenge}");
    assert!(challenge.contains("error_description=\""), "{what}: {challenge}");
    challenge.to_owned()
}

/// 401 `invalid_token` with its challenge.
fn assert_invalid_token(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.text());
    reply.assert_error(401, "invalid_token");
    assert_challenge(reply, "invalid_token", what);
}

/// 401 `invalid_request` with its challenge (and never a 4xx/5xx of another kind).
fn assert_invalid_request(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.text());
    reply.assert_error(401, "invalid_request");
    assert_challenge(reply, "invalid_request", what);
}

/// 401 `missing_token` with the bare challenge `Bearer realm="R"` (RFC 6750 section 3.1).
fn assert_missing_token(reply: &Reply, realm: &str, what: &str) {
    assert_eq!(reply.status, 401, "{what}: {}", reply.text());
    reply.assert_error(401, "missing_token");
    assert_eq!(reply.header("www-authenticate"), Some(format!("Bearer realm=\"{realm}\"").as_str()), "{what}");
}

/// 403 `insufficient_scope` with its challenge; returns the challenge.
fn assert_insufficient_scope(reply: &Reply, what: &str) -> String {
    assert_eq!(reply.status, 403, "{what}: {}", reply.text());
    reply.assert_error(403, "insufficient_scope");
    assert_challenge(reply, "insufficient_scope", what)
}

// ---------------------------------------------------------------------------------------------------
// Valid tokens, per algorithm and key source
// ---------------------------------------------------------------------------------------------------

/// A fresh token from `key` passes on a required and an optional route with the scheme in any case,
/// and the upstream gets the Authorization header byte for byte.
async fn assert_valid_tokens_pass(fixture: &Fixture, key: &SigningKey, source: &str) {
    let token = key.sign(&valid_claims());
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let authorization = format!("{scheme} {token}");
        for path in ["/account/orders", "/catalog/items"] {
            let reply = fixture.get(path, &[("authorization", &authorization)]).await;
            assert_reached_upstream(
                &reply,
                &authorization,
                &format!("{} from {source}, `{scheme}`, {path}", key.algorithm_name()),
            );
        }
    }
}

#[tokio::test]
async fn auth_hs256_valid_token_reaches_upstream_with_authorization_unchanged() {
    let key = SigningKey::generate(Algorithm::HS256, "hs");
    let fixture = Fixture::secret(&key, "");
    assert_valid_tokens_pass(&fixture, &key, "secret_env").await;
}

/// A fresh `algorithm` key's tokens pass with the key as `public_key` and served by a JWKS.
async fn assert_public_key_and_jwks_pass(algorithm: Algorithm, kid: &str) {
    let key = SigningKey::generate(algorithm, kid);
    assert_valid_tokens_pass(&Fixture::public_key(&key, ""), &key, "public_key").await;
    let jwks = JwksServer::start(&[&key]);
    let fixture = Fixture::jwks(&jwks, &key.algorithm_name(), "");
    fixture.poll_until_accepted("/account", &key.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;
    assert_valid_tokens_pass(&fixture, &key, "jwks_url").await;
}

#[tokio::test]
async fn auth_rs256_valid_token_reaches_upstream_from_public_key_and_jwks() {
    assert_public_key_and_jwks_pass(Algorithm::RS256, "rsa-1").await;
}

#[tokio::test]
async fn auth_es256_valid_token_reaches_upstream_from_public_key_and_jwks() {
    assert_public_key_and_jwks_pass(Algorithm::ES256, "ec-1").await;
}

#[tokio::test]
async fn auth_eddsa_valid_token_reaches_upstream_from_public_key_and_jwks() {
    assert_public_key_and_jwks_pass(Algorithm::EdDSA, "ed-1").await;
}

// ---------------------------------------------------------------------------------------------------
// Claims: time, issuer, audience, required claims
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_expired_token_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let past = now() - 3600;
    let token = key.sign(&claims_with(json!({ "iat": past, "nbf": past, "exp": now() - 120 })));
    assert_invalid_token(&fixture.bearer("/account", &token).await, "exp 120 s ago (leeway 30 s)");
}

#[tokio::test]
async fn auth_not_yet_valid_token_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let token = key.sign(&claims_with(json!({ "nbf": now() + 120 })));
    assert_invalid_token(&fixture.bearer("/account", &token).await, "nbf 120 s ahead (leeway 30 s)");
}

#[tokio::test]
async fn auth_token_issued_in_the_future_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let token = key.sign(&claims_with(json!({ "iat": now() + 120 })));
    assert_invalid_token(&fixture.bearer("/account", &token).await, "iat 120 s ahead (leeway 30 s)");
    // Not a NumericDate (RFC 7519 section 4.1.6), so no telling when it was issued.
    let token = key.sign(&claims_with(json!({ "iat": (now() + 120).to_string() })));
    assert_invalid_token(&fixture.bearer("/account", &token).await, "iat as a string");
}

#[tokio::test]
async fn auth_times_within_the_leeway_are_accepted() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let now = now();
    for (what, changes) in [
        ("exp 5 s ago", json!({ "iat": now - 600, "nbf": now - 600, "exp": now - 5 })),
        ("nbf 5 s ahead", json!({ "nbf": now + 5 })),
        ("iat 5 s ahead", json!({ "iat": now + 5 })),
    ] {
        let token = key.sign(&claims_with(changes));
        let reply = fixture.bearer("/account", &token).await;
        assert_reached_upstream(&reply, &format!("Bearer {token}"), what);
    }
}

#[tokio::test]
async fn auth_wrong_issuer_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    for issuer in ["https://evil.test", "https://auth.test/", "HTTPS://AUTH.TEST", ""] {
        let token = key.sign(&claims_with(json!({ "iss": issuer })));
        assert_invalid_token(&fixture.bearer("/account", &token).await, &format!("iss {issuer:?}"));
    }
    // RFC 7519: one issuer, a string; a list that names ours as well is not ours.
    let token = key.sign(&claims_with(json!({ "iss": ["https://evil.test", ISSUER] })));
    assert_invalid_token(&fixture.bearer("/account", &token).await, "iss as a list");
}

#[tokio::test]
async fn auth_token_with_critical_header_extensions_is_invalid_token() {
    // RFC 7515 section 4.1.11: `crit` names extensions the recipient must understand; none are.
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let mut header = token::Header::new(Algorithm::ES256);
    header.kid = Some("ec".into());
    header.crit = Some(vec!["exp".into()]);
    let token = key.sign_with_header(&header, &valid_claims());
    assert_invalid_token(&fixture.bearer("/account", &token).await, "crit");
    assert_eq!(fixture.bearer("/account", &key.sign(&valid_claims())).await.status, 200, "without crit");
}

#[tokio::test]
async fn auth_wrong_audience_is_invalid_token_and_an_audience_list_containing_ours_passes() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    for audience in [json!("other"), json!("shopping"), json!(["other", "admin"]), json!([])] {
        let token = key.sign(&claims_with(json!({ "aud": audience })));
        assert_invalid_token(&fixture.bearer("/account", &token).await, &format!("aud {audience}"));
    }
    let token = key.sign(&claims_with(json!({ "aud": ["other", AUDIENCE] })));
    assert_reached_upstream(
        &fixture.bearer("/account", &token).await,
        &format!("Bearer {token}"),
        "aud list with ours",
    );
}

#[tokio::test]
async fn auth_token_without_exp_iss_or_aud_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    for claim in ["exp", "iss", "aud"] {
        let token = key.sign(&claims_with(json!({ claim: null })));
        assert_invalid_token(&fixture.bearer("/account", &token).await, &format!("no `{claim}`"));
    }
}

#[tokio::test]
async fn auth_required_claims_missing_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "required_claims: [sub, tenant]");
    for (what, changes) in [("no sub", json!({ "sub": null, "tenant": "acme" })), ("no tenant", json!({}))] {
        let token = key.sign(&claims_with(changes));
        assert_invalid_token(&fixture.bearer("/account", &token).await, what);
    }
    let token = key.sign(&claims_with(json!({ "tenant": "acme" })));
    assert_reached_upstream(&fixture.bearer("/account", &token).await, &format!("Bearer {token}"), "sub and tenant");
}

// ---------------------------------------------------------------------------------------------------
// Signatures and algorithms
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_tampered_token_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let token = key.sign(&valid_claims());
    assert_invalid_token(
        &fixture.bearer("/account", &tamper_signature(&token)).await,
        "one signature character changed",
    );

    // The signature of a real token over different claims.
    let (_, payload_and_signature) = token.split_once('.').unwrap();
    let (_, signature) = payload_and_signature.split_once('.').unwrap();
    let header = token.split('.').next().unwrap();
    let forged = format!("{header}.{}.{signature}", segment(&claims_with(json!({ "sub": "admin" }))));
    assert_invalid_token(&fixture.bearer("/account", &forged).await, "claims changed under a real signature");

    assert_reached_upstream(
        &fixture.bearer("/account", &token).await,
        &format!("Bearer {token}"),
        "the untouched token",
    );
}

#[tokio::test]
async fn auth_token_signed_by_another_key_with_the_same_kid_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::RS256, "shared-kid");
    let impostor = key.regenerate("shared-kid");
    let jwks = JwksServer::start(&[&key]);
    let fixture = Fixture::jwks(&jwks, "RS256", "");
    let genuine = key.sign(&valid_claims());
    fixture.poll_until_accepted("/account", &genuine, &[(503, "auth_unavailable")]).await;

    assert_invalid_token(
        &fixture.bearer("/account", &impostor.sign(&valid_claims())).await,
        "JWKS, same kid, other key",
    );
    let fixture = Fixture::public_key(&key, "");
    assert_invalid_token(&fixture.bearer("/account", &impostor.sign(&valid_claims())).await, "public_key, other key");
}

#[tokio::test]
async fn auth_alg_none_is_invalid_token() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let payload = segment(&valid_claims());
    let genuine = key.sign(&valid_claims());
    let headers = [
        json!({ "alg": "none", "typ": "JWT" }),
        json!({ "alg": "none", "typ": "JWT", "kid": "ec" }),
        json!({ "alg": "None", "typ": "JWT" }),
        json!({ "alg": "NONE" }),
    ];
    // With a real signature attached (made over another header): still no.
    for header in &headers {
        let with_signature = format!("{}.{payload}.{}", segment(header), signature_of(&genuine));
        assert_invalid_token(&fixture.bearer("/account", &with_signature).await, &format!("{header}, some signature"));
    }
    // The unsecured JWT of RFC 7519 section 6.1: an empty third part. The contract lists `none` under
    // invalid_token (it is three dot-separated parts, the last one empty).
    for header in &headers {
        let unsigned = format!("{}.{payload}.", segment(header));
        assert_invalid_token(&fixture.bearer("/account", &unsigned).await, &format!("{header}, empty signature"));
    }
}

#[tokio::test]
async fn auth_algorithm_outside_the_allowlist_is_invalid_token() {
    let rsa = SigningKey::generate(Algorithm::RS256, "rsa");
    let ec = SigningKey::generate(Algorithm::ES256, "ec");
    let jwks = JwksServer::start(&[&rsa, &ec]);
    let fixture = Fixture::jwks(&jwks, "RS256", "");
    fixture.poll_until_accepted("/account", &rsa.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;
    assert_invalid_token(
        &fixture.bearer("/account", &ec.sign(&valid_claims())).await,
        "ES256 key published, not allowed",
    );
}

#[tokio::test]
async fn auth_jwks_with_rsa_ec_and_eddsa_keys_accepts_each_family_and_no_confusion_between_them() {
    let rsa = SigningKey::generate(Algorithm::RS256, "rsa");
    let ec = SigningKey::generate(Algorithm::ES256, "ec");
    let ed = SigningKey::generate(Algorithm::EdDSA, "ed");
    let jwks = JwksServer::start(&[&rsa, &ec, &ed]);
    let fixture = Fixture::jwks(&jwks, "RS256, ES256, EdDSA", "");
    fixture.poll_until_accepted("/account", &rsa.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;
    for key in [&rsa, &ec, &ed] {
        assert_valid_tokens_pass(&fixture, key, "a JWKS of three families").await;
    }
    // Signed by the EC key but naming the RSA one: its algorithm does not fit that key.
    let mut header = token::Header::new(Algorithm::ES256);
    header.kid = Some("rsa".into());
    let crossed = ec.sign_with_header(&header, &valid_claims());
    assert_invalid_token(&fixture.bearer("/account", &crossed).await, "ES256 token naming the RSA key");
}

#[tokio::test]
async fn auth_hs256_signed_with_the_rsa_public_key_is_invalid_token() {
    // The classic key confusion: the public key's bytes used as an HMAC secret.
    let key = SigningKey::generate(Algorithm::RS256, "rsa");
    let fixture = Fixture::public_key(&key, "");
    let pem = key.public_pem();
    for (what, secret) in [("PEM as written", pem.as_str()), ("PEM trimmed", pem.trim_end())] {
        for kid in ["rsa", "other"] {
            let forged = SigningKey::hmac(Algorithm::HS256, kid, secret).sign(&valid_claims());
            assert_invalid_token(
                &fixture.bearer("/account", &forged).await,
                &format!("HS256 with the {what}, kid {kid}"),
            );
        }
    }
    let genuine = key.sign(&valid_claims());
    assert_reached_upstream(
        &fixture.bearer("/account", &genuine).await,
        &format!("Bearer {genuine}"),
        "the RS256 token",
    );
}

#[test]
fn auth_check_rejects_hmac_algorithms_with_an_rsa_public_key() {
    let key = SigningKey::generate(Algorithm::RS256, "rsa");
    let echo_url = "http://127.0.0.1:9"; // never contacted by `gateway check`
    let config = |algorithms: &str| {
        let body = format!(
            "jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      \
             algorithms: [{algorithms}]\n      public_key: keys/public.pem\nupstreams:\n  echo:\n    endpoints: [\"{echo_url}\"]\n\
             routes:\n  - name: account\n    upstream: echo\n    auth: {{ provider: main }}\n"
        );
        format!("{}{body}", e2e::LISTENERS)
    };
    let dir = ConfigDir::new(&config("RS256"));
    dir.write_file("keys/public.pem", &key.public_pem());
    let valid = gateway_check(dir.path());
    let stderr = String::from_utf8_lossy(&valid.stderr);
    assert_eq!(valid.status.code(), Some(0), "the RS256 config must be valid; stderr:\n{stderr}");

    for algorithms in ["RS256, HS256", "HS256"] {
        dir.write_in_place(&config(algorithms));
        let invalid = gateway_check(dir.path());
        let stderr = String::from_utf8_lossy(&invalid.stderr);
        assert_eq!(invalid.status.code(), Some(1), "algorithms [{algorithms}] with an RSA key; stderr:\n{stderr}");
        assert!(stderr.contains("algorithms"), "the error must name `algorithms`; stderr:\n{stderr}");
    }
}

// ---------------------------------------------------------------------------------------------------
// JWKS: rotation, outages, kid floods
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_jwks_unknown_kid_after_rotation_refetches_once_and_is_accepted() {
    let old = SigningKey::generate(Algorithm::ES256, "2026-01");
    let jwks = JwksServer::start(&[&old]);
    let fixture = Fixture::jwks(&jwks, "ES256", "min_cache_age: 1s");
    let old_token = old.sign(&valid_claims());
    fixture.poll_until_accepted("/account", &old_token, &[(503, "auth_unavailable")]).await;

    let new = SigningKey::generate(Algorithm::ES256, "2026-02");
    jwks.set_keys(&[&new]);
    let before = jwks.fetches();
    let new_token = new.sign(&valid_claims());
    // Within the cooldown since the last fetch the new kid is still unknown (401); then one refetch.
    fixture.poll_until_accepted("/account", &new_token, &[(401, "invalid_token")]).await;
    assert_eq!(jwks.fetches(), before + 1, "the unknown kid must cause exactly one refetch");
    for _ in 0..3 {
        let reply = fixture.bearer("/account", &new.sign(&valid_claims())).await;
        assert_eq!(reply.status, 200, "a known kid: {}", reply.text());
    }
    assert_eq!(jwks.fetches(), before + 1, "a known kid needs no fetch");

    // The old key is gone from the set: its token (verified and cached before) no longer passes.
    assert_invalid_token(&fixture.bearer("/account", &old_token).await, "token of the rotated-out key");
}

#[tokio::test]
async fn auth_jwks_endpoint_down_keeps_verifying_new_tokens_with_cached_keys() {
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]);
    let fixture = Fixture::jwks(&jwks, "ES256", "min_cache_age: 1s");
    fixture.poll_until_accepted("/account", &key.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;

    jwks.go_down().await;
    // New tokens (never seen, so not in the verified-token cache) signed by the cached key.
    let fresh = key.sign(&claims_with(json!({ "sub": "user-2", "jti": "down-1" })));
    assert_reached_upstream(&fixture.bearer("/account", &fresh).await, &format!("Bearer {fresh}"), "while down");

    let stranger = SigningKey::generate(Algorithm::ES256, "not-published");
    assert_invalid_token(&fixture.bearer("/account", &stranger.sign(&valid_claims())).await, "unknown kid while down");

    let after_failed_refetch = key.sign(&claims_with(json!({ "sub": "user-3", "jti": "down-2" })));
    let reply = fixture.bearer("/account", &after_failed_refetch).await;
    assert_reached_upstream(&reply, &format!("Bearer {after_failed_refetch}"), "after a failed refetch");
}

/// Sends `count` tokens at once, each naming a `kid` no issuer ever published; each must be refused.
async fn send_made_up_kids(fixture: &Fixture, count: usize, what: &str) {
    let attacker = SigningKey::generate(Algorithm::ES256, "attacker");
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let tokens: Vec<String> =
        (0..count).map(|i| attacker.with_kid(&format!("made-up-{stamp:x}-{i}")).sign(&valid_claims())).collect();
    let replies = join_all(tokens.iter().map(|token| fixture.bearer("/account", token))).await;
    for (i, reply) in replies.iter().enumerate() {
        assert_invalid_token(reply, &format!("{what} {i}"));
    }
}

#[tokio::test]
async fn auth_jwks_flood_of_unknown_kids_refetches_at_most_once_per_cooldown() {
    const FLOOD: usize = 50;
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]);
    let fixture = Fixture::jwks(&jwks, "ES256", "min_cache_age: 60s");
    fixture.poll_until_accepted("/account", &key.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;

    let before = jwks.fetches();
    send_made_up_kids(&fixture, FLOOD, "flood token").await;
    let refetches = jwks.fetches() - before;
    assert!(refetches <= 1, "{FLOOD} unknown kids within the cooldown caused {refetches} refetches");

    let reply = fixture.bearer("/account", &key.sign(&valid_claims())).await;
    assert_eq!(reply.status, 200, "the real key still works after the flood: {}", reply.text());
}

#[tokio::test]
async fn auth_jwks_unknown_kids_during_a_slow_fetch_wait_for_it_instead_of_fetching_in_turn() {
    const CONCURRENT: usize = 6;
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]);
    let fixture = Fixture::jwks(&jwks, "ES256", "min_cache_age: 1s");
    fixture.poll_until_accepted("/account", &key.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;

    // Each fetch now outlasts the 1s cooldown, yet ends within the gateway's 5s fetch timeout.
    jwks.set_delay(Duration::from_secs(3));
    // Let the cooldown since the startup fetch run out, so the first unknown kid does refetch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = jwks.fetches();
    send_made_up_kids(&fixture, CONCURRENT, "unknown kid during a slow fetch").await;
    // The first request fetches; the others arrive while that fetch is in flight and wait for it.
    let refetches = jwks.fetches() - before;
    assert_eq!(refetches, 1, "{CONCURRENT} concurrent unknown kids, fetches slower than the cooldown");
}

#[tokio::test]
async fn auth_jwks_max_age_from_an_unknown_kid_fetch_reschedules_the_refresh() {
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]);
    // Without a max-age the next refresh would be an hour away.
    let fixture = Fixture::jwks(&jwks, "ES256", "min_cache_age: 1s\nrefresh_interval: 1h");
    fixture.poll_until_accepted("/account", &key.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;

    jwks.set_cache_control("max-age=1");
    let stranger = SigningKey::generate(Algorithm::ES256, "not-published");
    let token = stranger.sign(&valid_claims());
    // Past the cooldown the unknown kid fetches, and learns max-age=1 (the floor, min_cache_age).
    let fetched = jwks.fetches();
    eventually("an unknown kid to fetch", || async {
        assert_invalid_token(&fixture.bearer("/account", &token).await, "unknown kid");
        jwks.fetches() > fetched
    })
    .await;
    // From then on the background refresh follows it, with no request asking.
    let after = jwks.fetches();
    eventually("a refresh a second later", || async { jwks.fetches() >= after + 2 }).await;
}

#[tokio::test]
async fn auth_jwks_fetch_for_an_unknown_kid_outlives_the_client_that_asked() {
    let (old, new) = (SigningKey::generate(Algorithm::ES256, "k1"), SigningKey::generate(Algorithm::ES256, "k2"));
    let jwks = JwksServer::start(&[&old]);
    let fixture = Fixture::jwks(&jwks, "ES256", "min_cache_age: 1s\nrefresh_interval: 1h");
    fixture.poll_until_accepted("/account", &old.sign(&valid_claims()), &[(503, "auth_unavailable")]).await;

    jwks.set_keys(&[&old, &new]);
    jwks.set_delay(Duration::from_secs(2));
    // Let the cooldown since the startup fetch run out, so the new kid does fetch.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let token = new.sign(&valid_claims());
    let asked = tokio::time::timeout(Duration::from_millis(300), fixture.bearer("/account", &token)).await;
    assert!(asked.is_err(), "the client gave up before the slow fetch ended");
    // The fetch it started still ends, and brings the new key.
    eventually("the new key loaded", || async { jwt_status(&fixture).await["keys"] == 2 }).await;
}

#[tokio::test]
async fn auth_jwks_down_at_startup_is_503_until_the_endpoint_comes_up() {
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::down(&token::jwks(&[&key]));
    let fixture = Fixture::jwks(&jwks, "ES256", "min_cache_age: 1s");
    let token = key.sign(&valid_claims());

    let reply = fixture.bearer("/account", &token).await;
    reply.assert_error(503, "auth_unavailable");
    let retry_after = reply.header("retry-after").unwrap_or_else(|| panic!("no Retry-After: {:?}", reply.headers));
    assert!(!retry_after.trim().is_empty(), "empty Retry-After");
    assert_eq!(reply.header("www-authenticate"), None, "a 503 is not a challenge");
    assert_eq!(fixture.echo.stats().await.requests, 0, "nothing reaches the upstream without keys");
    // Operators can see why: no keys, and the last fetch failure.
    let status = jwt_status(&fixture).await;
    assert_eq!(status["keys"], Value::Null, "{status}");
    assert!(status["last_failure"]["error"].as_str().is_some_and(|e| !e.is_empty()), "{status}");

    jwks.come_back();
    let reply = fixture.poll_until_accepted("/account", &token, &[(503, "auth_unavailable")]).await;
    assert_reached_upstream(&reply, &format!("Bearer {token}"), "after the endpoint came up");
    assert!(jwks.fetches() >= 1);
    let status = jwt_status(&fixture).await;
    assert_eq!(status["keys"], 1, "{status}");
    assert!(status["last_success"].is_string(), "{status}");
}

/// Provider `main`'s JWKS state from `GET /admin/jwt`.
async fn jwt_status(fixture: &Fixture) -> Value {
    let reply = client::get(fixture.gateway.admin_addr(), "/admin/jwt").await;
    assert_eq!(reply.status, 200, "GET /admin/jwt: {}", reply.text());
    reply.json()["providers"]["main"]["keys"]["jwks"].clone()
}

#[tokio::test]
async fn auth_jwks_over_https_verified_against_jwks_ca_only() {
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]);
    let ca = TestCa::new("internal-idp-ca");
    let tls = TlsUpstream::start(&ca.issue(&["127.0.0.1"]), jwks.addr()).await;
    let url = format!("https://{}{}", tls.addr, e2e::jwks::JWKS_PATH);
    let token = key.sign(&valid_claims());

    let trusting = Fixture::start(
        &format!("algorithms: [ES256]\njwks_url: {url}\njwks_ca: idp-ca.pem\nrealm: {REALM}"),
        &[("idp-ca.pem", &ca.cert_pem)],
        &[],
    );
    trusting.poll_until_accepted("/account", &token, &[(503, "auth_unavailable")]).await;

    // Without the CA the issuer's certificate is unknown: no keys, however long it tries.
    let default_roots = Fixture::start(&format!("algorithms: [ES256]\njwks_url: {url}\nrealm: {REALM}"), &[], &[]);
    let has_failure = |status: &Value| status["last_failure"]["error"].is_string();
    let status = fetch_until("a fetch failure reported", || jwt_status(&default_roots), has_failure, Value::to_string);
    let failure = status.await["last_failure"]["error"].as_str().unwrap_or_default().to_owned();
    assert_eq!(jwt_status(&default_roots).await["keys"], Value::Null, "{failure}");
    default_roots.bearer("/account", &token).await.assert_error(503, "auth_unavailable");
}

// ---------------------------------------------------------------------------------------------------
// Required and optional routes, challenges
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_missing_token_on_a_required_route_is_401_with_a_bare_challenge() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    assert_missing_token(&fixture.get("/account", &[]).await, REALM, "no Authorization");
    let basic = [("authorization", "Basic dXNlcjpwYXNz")];
    assert_missing_token(&fixture.get("/account", &basic).await, REALM, "Basic scheme");
    assert_missing_token(&fixture.get("/cart", &[]).await, REALM, "no Authorization on a route with a rule");
    assert_eq!(fixture.echo.stats().await.requests, 0, "rejected requests must not reach the upstream");
}

#[tokio::test]
async fn auth_realm_defaults_to_the_provider_name() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let lines = "algorithms: [ES256]\npublic_key: keys/public.pem";
    let fixture = Fixture::start(lines, &[("keys/public.pem", &key.public_pem())], &[]);
    assert_missing_token(&fixture.get("/account", &[]).await, "main", "no realm configured");
}

#[tokio::test]
async fn auth_optional_route_passes_without_a_token_and_rejects_a_bad_one() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");

    let reply = fixture.get("/catalog/items", &[]).await;
    assert_eq!(reply.status, 200, "no token on an optional route: {}", reply.text());
    assert_eq!(reply.echoed().header("authorization"), None);

    let expired = key.sign(&claims_with(json!({ "iat": now() - 7200, "nbf": now() - 7200, "exp": now() - 3600 })));
    assert_invalid_token(&fixture.bearer("/catalog/items", &expired).await, "expired token on an optional route");
    let stranger = SigningKey::generate(Algorithm::ES256, "ec").sign(&valid_claims());
    assert_invalid_token(&fixture.bearer("/catalog/items", &stranger).await, "foreign token on an optional route");
    assert_invalid_request(&fixture.get("/catalog/items", &[("authorization", "Bearer")]).await, "`Bearer` alone");

    let token = key.sign(&valid_claims());
    assert_reached_upstream(&fixture.bearer("/catalog/items", &token).await, &format!("Bearer {token}"), "valid token");
}

#[tokio::test]
async fn auth_invalid_token_challenge_names_realm_error_and_description() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let token = tamper_signature(&key.sign(&valid_claims()));
    let reply = fixture.bearer("/account", &token).await;
    let json = reply.assert_error(401, "invalid_token");
    let challenge = assert_challenge(&reply, "invalid_token", "tampered token");
    assert!(challenge.starts_with(&format!("Bearer realm=\"{REALM}\", error=\"invalid_token\"")), "{challenge}");
    assert!(
        !challenge.contains(&token) && !challenge.contains(signature_of(&token)),
        "the token is echoed: {challenge}"
    );
    assert!(!json.to_string().contains(signature_of(&token)), "the token is echoed in the body: {json}");
}

// ---------------------------------------------------------------------------------------------------
// Claim rules
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_scope_rule_passes_with_the_scope_as_string_or_array() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    for scope in [json!("cart:write"), json!("cart:read cart:write"), json!(["cart:read", "cart:write"])] {
        let token = key.sign(&claims_with(json!({ "scope": scope })));
        assert_reached_upstream(
            &fixture.bearer("/cart", &token).await,
            &format!("Bearer {token}"),
            &format!("scope {scope}"),
        );
    }
}

#[tokio::test]
async fn auth_scope_rule_failing_is_403_insufficient_scope() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    for scope in [json!("cart:read"), json!("cart:writer"), json!(["cart:read"]), json!([]), json!(""), Value::Null] {
        let token = key.sign(&claims_with(json!({ "scope": scope })));
        let challenge = assert_insufficient_scope(&fixture.bearer("/cart", &token).await, &format!("scope {scope}"));
        assert!(challenge.contains("scope=\"cart:write\""), "the challenge must name the needed scope: {challenge}");
    }
    assert_eq!(fixture.echo.stats().await.requests, 0, "forbidden requests must not reach the upstream");
}

#[tokio::test]
async fn auth_claim_rule_on_another_claim_passes_or_is_403_without_scope() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    for roles in [json!(["admin"]), json!("editor admin"), json!(["editor", "admin"])] {
        let token = key.sign(&claims_with(json!({ "roles": roles })));
        assert_reached_upstream(
            &fixture.bearer("/staff", &token).await,
            &format!("Bearer {token}"),
            &format!("roles {roles}"),
        );
    }
    for roles in [json!(["editor"]), json!("administrator"), Value::Null] {
        let token = key.sign(&claims_with(json!({ "roles": roles, "scope": "admin" })));
        let challenge = assert_insufficient_scope(&fixture.bearer("/staff", &token).await, &format!("roles {roles}"));
        assert!(!challenge.contains("scope=\""), "a rule on `roles` must not name a scope: {challenge}");
    }
}

// ---------------------------------------------------------------------------------------------------
// Identity headers
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_spoofed_identity_headers_never_reach_the_upstream_on_any_route() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let authorization = format!("Bearer {}", key.sign(&valid_claims()));
    let spoofed =
        [("X-User-Id", "1"), ("X-User-Role", "admin"), ("x-user-role", "root"), ("X-User-Email", "ceo@x.test")];
    let cases = [
        ("/account", true, "required auth, valid token"),
        ("/catalog", true, "optional auth, valid token"),
        ("/catalog", false, "optional auth, no token"),
        ("/open", false, "no auth"),
        ("/open", true, "no auth, a token anyway"),
    ];
    for (path, with_token, what) in cases {
        let mut headers = spoofed.to_vec();
        if with_token {
            headers.push(("authorization", &authorization));
        }
        let reply = fixture.get(path, &headers).await;
        assert_eq!(reply.status, 200, "{what}: {}", reply.text());
        let echoed = reply.echoed();
        let identity: Vec<_> = echoed.headers.iter().filter(|(name, _)| name.starts_with("x-user-")).collect();
        assert!(identity.is_empty(), "{what}: identity headers reached the upstream: {identity:?}");
        if with_token {
            assert_eq!(echoed.header_all("authorization"), [authorization.as_str()], "{what}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Malformed Authorization headers: 401 invalid_request, never a 500
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_bearer_without_a_token_is_invalid_request() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    for value in ["Bearer", "Bearer ", "Bearer    ", "bearer\t"] {
        for path in ["/account", "/catalog"] {
            assert_invalid_request(
                &fixture.get(path, &[("authorization", value)]).await,
                &format!("{value:?} on {path}"),
            );
        }
    }
}

#[tokio::test]
async fn auth_two_authorization_headers_are_invalid_request() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let first = format!("Bearer {}", key.sign(&valid_claims()));
    let second = format!("Bearer {}", key.sign(&claims_with(json!({ "sub": "user-2" }))));
    for path in ["/account", "/catalog"] {
        let reply = fixture.get(path, &[("authorization", &first), ("authorization", &second)]).await;
        assert_invalid_request(&reply, &format!("two valid tokens on {path}"));
        let reply = fixture.get(path, &[("authorization", &first), ("authorization", "Basic dXNlcjpwYXNz")]).await;
        assert_invalid_request(&reply, &format!("Bearer and Basic on {path}"));
    }
}

#[tokio::test]
async fn auth_non_ascii_authorization_is_invalid_request() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let token = key.sign(&valid_claims());
    let (head, tail) = token.split_at(token.len() / 2);
    let bearer: &[u8] = b"Bearer ";
    let values: [Vec<u8>; 3] = [
        [bearer, head.as_bytes(), "é".as_bytes(), tail.as_bytes()].concat(),
        [bearer, &[0xff, 0xfe, 0x80][..]].concat(),
        [bearer, token.as_bytes(), &[0xa0][..]].concat(),
    ];
    for value in &values {
        for path in ["/account", "/catalog"] {
            let reply = fixture.authorization_bytes(path, value).await;
            assert_invalid_request(&reply, &format!("{:?} on {path}", String::from_utf8_lossy(value)));
        }
    }
}

#[tokio::test]
async fn auth_oversized_token_is_invalid_request() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let token = key.sign(&claims_with(json!({ "padding": "x".repeat(10 * 1024) })));
    assert!(token.len() > 10 * 1024);
    for path in ["/account", "/catalog"] {
        assert_invalid_request(&fixture.bearer(path, &token).await, &format!("a {} byte token on {path}", token.len()));
    }
}

#[tokio::test]
async fn auth_token_without_three_parts_is_invalid_request() {
    let key = SigningKey::generate(Algorithm::ES256, "ec");
    let fixture = Fixture::public_key(&key, "");
    let token = key.sign(&valid_claims());
    let (two_parts, _) = token.rsplit_once('.').unwrap();
    let four_parts = format!("{token}.{}", signature_of(&token));
    for (what, value) in [("one part", "abc"), ("two parts", two_parts), ("four parts", &four_parts)] {
        for path in ["/account", "/catalog"] {
            assert_invalid_request(&fixture.bearer(path, value).await, &format!("{what} on {path}"));
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn auth_tokens_never_appear_in_the_gateway_logs() {
    let key = SigningKey::generate(Algorithm::ES256, "k1");
    let jwks = JwksServer::start(&[&key]);
    // Debug logging everywhere: a token must not leak at any level.
    let mut fixture = Fixture::jwks_with_env(&jwks, "ES256", "min_cache_age: 1s", &[("RUST_LOG", "debug")]);
    let good = key.sign(&valid_claims());
    fixture.poll_until_accepted("/account", &good, &[(503, "auth_unavailable")]).await;

    let past = now() - 7200;
    let stranger = SigningKey::generate(Algorithm::ES256, "unknown-kid");
    let tokens = [
        good.clone(),
        key.sign(&claims_with(json!({ "sub": "user-2" }))),
        key.sign(&claims_with(json!({ "iat": past, "nbf": past, "exp": past + 60 }))),
        key.sign(&claims_with(json!({ "aud": "other" }))),
        key.sign(&claims_with(json!({ "scope": "cart:read" }))),
        tamper_signature(&good),
        stranger.sign(&valid_claims()),
        format!("{}.{}.", segment(&json!({ "alg": "none" })), segment(&valid_claims())),
        format!("{good}.{}", signature_of(&good)),
        key.sign(&claims_with(json!({ "padding": "y".repeat(9 * 1024) }))),
    ];
    for token in &tokens {
        for path in ["/account", "/catalog", "/cart"] {
            let reply = fixture.bearer(path, token).await;
            assert!(reply.status.as_u16() < 500, "{path}: {} {}", reply.status, reply.text());
        }
    }

    // Stop the gateway and wait for its last line, so everything it logged is in.
    fixture.gateway.sigterm();
    fixture.gateway.wait_exit().await;
    e2e::eventually("the gateway's final log line", || async { fixture.gateway.stderr().contains("stopped") }).await;
    let logs = fixture.gateway.stderr();
    assert!(logs.contains("listening"), "the gateway logged nothing? stderr:\n{logs}");
    for token in &tokens {
        assert!(!logs.contains(token.as_str()), "a token appears in the logs:\n{token}\nstderr:\n{logs}");
        let signature = signature_of(token);
        if signature.len() >= 16 {
            assert!(!logs.contains(signature), "a token signature appears in the logs:\n{signature}\nstderr:\n{logs}");
        }
    }
}
