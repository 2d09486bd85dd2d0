//! The shared JWT check, seen through product and cart: what it refuses and how, and how it
//! fetches keys (first use, rotation, cooldown, failures).

use std::time::Duration;

use backends::token::{segment, Algorithm, Header, SigningKey};
use serde_json::json;

use crate::support::*;

/// Product and cart on a JWKS publishing `key` (kid `k1`).
async fn services_trusting(key: &SigningKey) -> (String, String) {
    let (_jwks, addr) = TestJwks::start(&[key]).await;
    let product = start_product(&jwks_url(addr), Duration::from_secs(30)).await;
    let cart = start_cart(&jwks_url(addr)).await;
    (format!("http://{product}/products"), format!("http://{cart}/cart"))
}

/// Asserts a 401 `invalid_token` whose description contains `why`, and that the token is not echoed.
async fn assert_invalid(url: &str, realm: &str, token: &str, why: &str) {
    let reply = call("GET", url, token, None).await;
    assert_eq!(reply.status, 401, "{why}: {}", reply.text());
    assert_eq!(reply.json()["error"], "invalid_token", "{why}");
    let challenge = reply.header("www-authenticate").unwrap();
    let expected = format!("Bearer realm=\"{realm}\", error=\"invalid_token\", error_description=\"");
    assert!(challenge.starts_with(&expected), "{why}: {challenge}");
    assert!(challenge.contains(why), "{why}: {challenge}");
    assert!(!reply.text().contains(token) && !challenge.contains(token), "the token is echoed");
}

#[tokio::test]
async fn no_token_or_another_scheme_401_challenge_without_error() {
    let key = es256("k1");
    let (products, cart) = services_trusting(&key).await;
    for (url, realm) in [(&products, "product"), (&cart, "cart")] {
        for headers in [&[][..], &[("authorization", "Basic YWxpY2U6cHc=")][..]] {
            let reply = send("GET", url, headers, None).await;
            assert_eq!(reply.status, 401, "{}", reply.text());
            assert_eq!(reply.header("www-authenticate"), Some(format!("Bearer realm=\"{realm}\"").as_str()));
            assert_eq!(reply.json()["error"], "missing_token");
        }
    }
}

#[tokio::test]
async fn bad_tokens_401_invalid_token_with_the_reason() {
    let key = es256("k1");
    let (products, cart) = services_trusting(&key).await;
    let good = claims_for("alice", "cart products:read");
    assert_eq!(call("GET", &products, &key.sign(&good), None).await.status, 200, "the good token passes");

    let with = |name: &str, value: serde_json::Value| {
        let mut claims = good.clone();
        claims[name] = value;
        key.sign(&claims)
    };
    let without = |name: &str| {
        let mut claims = good.clone();
        claims.as_object_mut().unwrap().remove(name);
        key.sign(&claims)
    };
    let now = backends::token::now();
    let no_kid = key.sign_with_header(&Header::new(Algorithm::ES256), &good);
    let hs256 = SigningKey::generate(Algorithm::HS256, "k1").sign(&good);
    let unsigned = format!("{}.{}.", segment(&json!({"alg": "none", "kid": "k1"})), segment(&good));
    let cases = [
        (key.regenerate("k1").sign(&good), "signature does not verify"),
        (with("exp", json!(now - 120)), "expired"),
        (with("aud", json!("another-shop")), "audience (aud)"),
        (with("iss", json!("http://evil.test")), "issuer (iss)"),
        (without("exp"), "no expiry (exp)"),
        (without("sub"), "subject (sub) must be a non-empty string"),
        (with("sub", json!("")), "subject (sub) must be a non-empty string"),
        (with("sub", json!(42)), "subject (sub) must be a non-empty string"),
        (with("scope", json!(["cart"])), "scope must be a string"),
        (hs256, "must be signed with ES256"),
        (no_kid, "no key id (kid)"),
        (unsigned, "header is malformed"),
        (es256("k2").sign(&good), "signing key (kid) is unknown"),
        ("not-a-jwt".to_owned(), "header is malformed"),
    ];
    for (token, why) in &cases {
        assert_invalid(&products, "product", token, why).await;
    }
    assert_invalid(&cart, "cart", &with("aud", json!("another-shop")), "audience (aud)").await;
}

#[tokio::test]
async fn expiry_within_the_leeway_still_accepted() {
    let key = es256("k1");
    let (products, _) = services_trusting(&key).await;
    let mut claims = claims_for("alice", "products:read");
    claims["exp"] = json!(backends::token::now() - 5);
    assert_eq!(call("GET", &products, &key.sign(&claims), None).await.status, 200);
}

#[tokio::test]
async fn missing_scope_403_insufficient_scope_naming_it() {
    let key = es256("k1");
    let (products, cart) = services_trusting(&key).await;
    let reader = key.sign(&claims_for("alice", "products:read"));
    let reply = call("POST", &products, &reader, Some(r#"{"name": "x", "price_cents": 1, "stock": 1}"#)).await;
    assert_eq!(reply.status, 403, "{}", reply.text());
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="product", error="insufficient_scope", scope="products:write""#)
    );
    assert_eq!(reply.json()["error"], "insufficient_scope");

    // The scope check comes before the body is looked at.
    let reply = call("POST", &products, &reader, Some("not json")).await;
    assert_eq!(reply.status, 403, "{}", reply.text());

    let reply = call("GET", &cart, &reader, None).await;
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.header("www-authenticate"),
        Some(r#"Bearer realm="cart", error="insufficient_scope", scope="cart""#)
    );

    // Scope words are whole words: `products:readonly` or `cart:x` grant nothing.
    let lookalike = key.sign(&claims_for("alice", "products:readonly cart:x"));
    assert_eq!(call("GET", &products, &lookalike, None).await.status, 403);
    assert_eq!(call("GET", &cart, &lookalike, None).await.status, 403);
}

#[tokio::test]
async fn auth_restarted_with_a_new_key_product_accepts_its_tokens_after_refetch() {
    let (listener, auth) = bind().await;
    let first_auth = start_auth_on(listener);
    let product = start_product(&jwks_url(auth), Duration::from_millis(100)).await;
    let products = format!("http://{product}/products");
    let old = login(auth, "alice").await;
    assert_eq!(call("GET", &products, &old, None).await.status, 200);

    first_auth.abort();
    let _ = first_auth.await;
    start_auth_on(tokio::net::TcpListener::bind(auth).await.unwrap());
    let new = login(auth, "alice").await;
    eventually("product accepts the new key's token", || async {
        call("GET", &products, &new, None).await.status == 200
    })
    .await;
    assert_invalid(&products, "product", &old, "signing key (kid) is unknown").await;
}

#[tokio::test]
async fn unknown_kids_within_the_cooldown_cause_no_fetch() {
    let key = es256("k1");
    let (jwks, addr) = TestJwks::start(&[&key]).await;
    let product = start_product(&jwks_url(addr), Duration::from_secs(30)).await;
    let products = format!("http://{product}/products");
    assert_eq!(jwks.fetches(), 0, "nothing is fetched before the first token");
    assert_eq!(call("GET", &products, &key.sign(&claims_for("a", "products:read")), None).await.status, 200);
    assert_eq!(jwks.fetches(), 1);
    for i in 0..20 {
        let made_up = es256(&format!("random-{i}")).sign(&claims_for("a", "products:read"));
        assert_eq!(call("GET", &products, &made_up, None).await.status, 401);
    }
    assert_eq!(jwks.fetches(), 1, "the cooldown holds the fetches back");
}

#[tokio::test]
async fn unknown_kids_past_the_cooldown_refetch_and_a_failed_fetch_keeps_the_keys() {
    let key = es256("k1");
    let (jwks, addr) = TestJwks::start(&[&key]).await;
    let product = start_product(&jwks_url(addr), Duration::ZERO).await;
    let products = format!("http://{product}/products");
    let good = key.sign(&claims_for("a", "products:read"));
    assert_eq!(call("GET", &products, &good, None).await.status, 200);
    let made_up = es256("k2").sign(&claims_for("a", "products:read"));
    for _ in 0..3 {
        assert_eq!(call("GET", &products, &made_up, None).await.status, 401);
    }
    assert_eq!(jwks.fetches(), 4, "without a cooldown, every unknown kid fetches");

    jwks.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(call("GET", &products, &made_up, None).await.status, 401);
    assert_eq!(jwks.fetches(), 5);
    assert_eq!(call("GET", &products, &good, None).await.status, 200, "the keys held survive a failed fetch");
}

/// An issuer that was down when the first token came is fetched again within seconds once it is
/// back, not after the cooldown: with an hour's cooldown, this only passes by the retry.
#[tokio::test]
async fn an_issuer_back_from_an_outage_is_fetched_again_before_the_cooldown() {
    let key = es256("k1");
    let (jwks, addr) = TestJwks::start(&[&key]).await;
    jwks.failing.store(true, std::sync::atomic::Ordering::SeqCst);
    let product = start_product(&jwks_url(addr), Duration::from_secs(3600)).await;
    let products = format!("http://{product}/products");
    let token = key.sign(&claims_for("a", "products:read"));
    assert_eq!(call("GET", &products, &token, None).await.status, 503);

    jwks.failing.store(false, std::sync::atomic::Ordering::SeqCst);
    eventually("product fetches the keys again", || async { call("GET", &products, &token, None).await.status == 200 })
        .await;
    // Once fetched, the cooldown holds again.
    let made_up = es256("k2").sign(&claims_for("a", "products:read"));
    let fetches = jwks.fetches();
    assert_eq!(call("GET", &products, &made_up, None).await.status, 401);
    assert_eq!(jwks.fetches(), fetches, "a fetch within the cooldown");
}

#[tokio::test]
async fn product_started_before_its_issuer_fetches_keys_once_it_is_up() {
    let (listener, addr) = bind().await;
    drop(listener);
    let product = start_product(&jwks_url(addr), Duration::ZERO).await;
    let products = format!("http://{product}/products");
    let key = es256("k1");
    let token = key.sign(&claims_for("a", "products:read"));
    let reply = call("GET", &products, &token, None).await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert_eq!(reply.json()["error"], "keys_unavailable");
    assert!(reply.header("www-authenticate").is_none());

    TestJwks::start_on(tokio::net::TcpListener::bind(addr).await.unwrap(), &[&key]);
    assert_eq!(call("GET", &products, &token, None).await.status, 200);
}

#[test]
fn verifier_refuses_https_and_bad_settings() {
    use backends::jwt_check::Verifier;
    let error = |realm, url| Verifier::new(realm, ISSUER, AUDIENCE, url).err().unwrap().to_string();
    assert!(error("product", "https://auth.test/jwks").contains("not http://"));
    assert!(error("product", "/.well-known/jwks.json").contains("not http://"));
    assert!(error("product", "http://a b").contains("not a valid URL"));
    assert!(error("pro\"duct", "http://auth.test/jwks").contains("realm"));
    assert!(Verifier::new("product", "", AUDIENCE, "http://auth.test/jwks").is_err());
}
