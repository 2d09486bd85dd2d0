//! Auth: tokens for the right password only, the same answer for every wrong login, JSON errors.

use backends::auth::Users;
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};

use crate::support::*;

#[tokio::test]
async fn token_right_password_gets_es256_token_verifiable_with_the_jwks() {
    let auth = start_auth().await;
    let reply = send(
        "POST",
        &format!("http://{auth}/token"),
        &[],
        Some(r#"{"username": "alice", "password": "alice-demo-password"}"#),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let body = reply.json();
    assert_eq!(
        (&body["token_type"], &body["expires_in"], &body["scope"]),
        (&json!("Bearer"), &json!(300), &json!("cart products:read"))
    );
    let token = body["access_token"].as_str().unwrap();

    let keys = send("GET", &jwks_url(auth), &[], None).await;
    assert_eq!(keys.status, 200);
    assert_eq!(keys.header("cache-control"), Some("max-age=300"));
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&keys.body).unwrap();
    let header = decode_header(token).unwrap();
    assert_eq!(header.alg, Algorithm::ES256);
    let jwk = set.find(header.kid.as_deref().unwrap()).expect("the token's kid is in the JWKS");
    assert!(jwk.common.key_id.as_deref().unwrap().bytes().all(|b| b.is_ascii_hexdigit()));
    let mut validation = Validation::new(Algorithm::ES256);
    validation.set_issuer(&[ISSUER]);
    validation.set_audience(&[AUDIENCE]);
    let claims = decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &validation).unwrap().claims;
    assert_eq!((&claims["sub"], &claims["scope"]), (&json!("alice"), &json!("cart products:read")));
    let (iat, exp) = (claims["iat"].as_u64().unwrap(), claims["exp"].as_u64().unwrap());
    assert_eq!(exp - iat, 300);
    assert_eq!(claims["jti"].as_str().unwrap().len(), 32);

    let again = login(auth, "alice").await;
    let jti =
        |t: &str| decode::<Value>(t, &DecodingKey::from_jwk(jwk).unwrap(), &validation).unwrap().claims["jti"].clone();
    assert_ne!(jti(token), jti(&again), "jti is random");
}

#[tokio::test]
async fn token_wrong_password_and_unknown_user_get_the_same_401() {
    let auth = start_auth().await;
    let url = format!("http://{auth}/token");
    let wrong_password =
        send("POST", &url, &[], Some(r#"{"username": "alice", "password": "admin-demo-password"}"#)).await;
    let unknown_user =
        send("POST", &url, &[], Some(r#"{"username": "mallory", "password": "alice-demo-password"}"#)).await;
    let empty = send("POST", &url, &[], Some(r#"{"username": "", "password": ""}"#)).await;
    for reply in [&wrong_password, &unknown_user, &empty] {
        assert_eq!(reply.status, 401);
        assert_eq!(reply.json()["error"], "invalid_credentials");
    }
    assert_eq!(wrong_password.body, unknown_user.body);
    assert_eq!(wrong_password.body, empty.body);
}

#[tokio::test]
async fn token_bad_bodies_get_json_errors() {
    let auth = start_auth().await;
    let url = format!("http://{auth}/token");
    let json = "application/json";
    let cases = [
        (json, "{\"username\": ".to_owned(), 400, "invalid_json"),
        (json, r#"{"username": "alice"}"#.to_owned(), 422, "invalid_body"),
        (json, r#"{"username": "alice", "password": "x", "admin": true}"#.to_owned(), 422, "invalid_body"),
        ("text/plain", r#"{"username": "a", "password": "b"}"#.to_owned(), 415, "unsupported_media_type"),
        (json, format!(r#"{{"username": "alice", "password": "{}"}}"#, "x".repeat(5000)), 413, "body_too_large"),
    ];
    for (content_type, body, status, error) in cases {
        let reply = send("POST", &url, &[("content-type", content_type)], Some(&body)).await;
        assert_eq!(reply.status, status, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["error"], error, "{json}");
        assert!(!json["message"].as_str().unwrap().is_empty());
    }
    let missing = send("POST", &url, &[], Some(r#"{"username": "alice"}"#)).await.json();
    assert!(missing["message"].as_str().unwrap().contains("password"), "{missing}");
    let too_large = send("POST", &url, &[], Some(&"x".repeat(5000))).await.json();
    assert!(too_large["message"].as_str().unwrap().contains("4096"), "{too_large}");
}

#[tokio::test]
async fn every_service_healthz_ok_without_token_and_json_for_unknown_routes() {
    let shop = Shop::start().await;
    for addr in [shop.auth, shop.product, shop.cart] {
        let health = send("GET", &format!("http://{addr}/healthz"), &[], None).await;
        assert_eq!((health.status, health.text().as_str()), (200, "ok"));
        let unknown = send("GET", &format!("http://{addr}/nope"), &[], None).await;
        assert_eq!((unknown.status, &unknown.json()["error"]), (404, &json!("not_found")));
    }
    let wrong_method = send("PATCH", &format!("http://{}/token", shop.auth), &[], None).await;
    assert_eq!((wrong_method.status, &wrong_method.json()["error"]), (405, &json!("method_not_allowed")));
    assert_eq!(wrong_method.header("allow"), Some("POST"));
}

#[test]
fn demo_users_file_is_valid() {
    let users = Users::load(&demo_users_path()).unwrap();
    assert_eq!(users.len(), 2);
}
