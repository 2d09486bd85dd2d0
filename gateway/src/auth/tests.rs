use std::time::Duration;

use http::header::AUTHORIZATION;
use http::HeaderValue;
use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::{json, Value};

use super::*;
use crate::config::{JwtProvider, Secret};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

fn provider_config() -> JwtProvider {
    JwtProvider {
        name: "main".into(),
        issuer: "https://auth.test".into(),
        audiences: vec!["shop".into(), "admin".into()],
        algorithms: vec![Algorithm::HS256],
        keys: JwtKeys::Secret(Secret { env: "TEST".into(), value: SECRET.into() }),
        leeway: Duration::from_secs(30),
        required_claims: vec!["sub".into()],
        realm: "shop".into(),
    }
}

fn provider() -> Arc<Provider> {
    Provider::build(&provider_config(), None).unwrap()
}

fn claims(changes: Value) -> Value {
    let now = unix_now();
    let mut claims = json!({"iss": "https://auth.test", "aud": "shop", "sub": "u1", "iat": now, "exp": now + 300});
    for (key, value) in changes.as_object().unwrap() {
        match value {
            Value::Null => claims.as_object_mut().unwrap().remove(key),
            _ => claims.as_object_mut().unwrap().insert(key.clone(), value.clone()),
        };
    }
    claims
}

fn sign(claims: &Value, algorithm: Algorithm, secret: &[u8]) -> String {
    encode(&Header::new(algorithm), claims, &EncodingKey::from_secret(secret)).unwrap()
}

fn token(changes: Value) -> String {
    sign(&claims(changes), Algorithm::HS256, SECRET)
}

async fn description(token: &str) -> String {
    match provider().verify(token).await {
        Err(AuthError::Invalid(why)) => why.into_owned(),
        other => panic!("expected an invalid token, got {other:?}"),
    }
}

#[tokio::test]
async fn verify_valid_token_claims_returned() {
    let claims = provider().verify(&token(json!({}))).await.unwrap();
    assert_eq!(claims["sub"], "u1");
}

#[tokio::test]
async fn verify_repeat_token_served_from_cache() {
    let provider = provider();
    let token = token(json!({}));
    let first = provider.verify(&token).await.unwrap();
    let second = provider.verify(&token).await.unwrap();
    assert!(Arc::ptr_eq(&first, &second));
}

#[tokio::test]
async fn verify_audience_array_with_one_accepted_passes() {
    provider().verify(&token(json!({"aud": ["other", "admin"]}))).await.unwrap();
}

#[tokio::test]
async fn verify_expired_within_leeway_passes_beyond_refused() {
    let now = unix_now();
    provider().verify(&token(json!({"exp": now - 10}))).await.unwrap();
    assert_eq!(description(&token(json!({"exp": now - 100}))).await, "the token has expired");
}

#[tokio::test]
async fn verify_not_yet_valid_refused() {
    let nbf = unix_now() + 100;
    assert!(description(&token(json!({"nbf": nbf}))).await.contains("not valid yet"));
}

#[tokio::test]
async fn verify_issued_in_future_refused() {
    let iat = unix_now() + 100;
    assert!(description(&token(json!({"iat": iat}))).await.contains("issued in the future"));
}

#[tokio::test]
async fn verify_wrong_issuer_or_audience_refused() {
    assert!(description(&token(json!({"iss": "https://evil.test"}))).await.contains("issuer"));
    assert!(description(&token(json!({"aud": "other"}))).await.contains("audience"));
}

#[tokio::test]
async fn verify_missing_standard_or_required_claims_refused() {
    for claim in ["exp", "iss", "aud", "sub"] {
        let why = description(&token(json!({ claim: null }))).await;
        assert!(why.contains(&format!("lacks the required claim `{claim}`")), "{claim}: {why}");
    }
}

#[tokio::test]
async fn verify_claims_of_the_wrong_type_are_said_to_be_so() {
    for (claim, value) in [("exp", json!("soon")), ("exp", json!(true)), ("aud", json!(5))] {
        let why = description(&token(json!({ claim: value }))).await;
        assert_eq!(why, format!("the `{claim}` claim has the wrong type"), "{claim}: {value}");
    }
}

#[tokio::test]
async fn verify_bad_signature_or_other_algorithm_refused() {
    assert_eq!(
        description(&sign(&claims(json!({})), Algorithm::HS256, b"another secret of thirty-two bytes!")).await,
        "the signature does not match"
    );
    assert!(description(&sign(&claims(json!({})), Algorithm::HS384, SECRET)).await.contains("not accepted"));
}

#[tokio::test]
async fn verify_unsigned_token_refused() {
    // {"alg":"none","typ":"JWT"}, the payload of a valid token, no signature.
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let valid = token(json!({}));
    let payload = valid.split('.').nth(1).unwrap();
    let unsigned = format!("{header}.{payload}.");
    assert!(matches!(provider().verify(&unsigned).await, Err(AuthError::Invalid(_))));
}

/// A payload that names `scope` twice: serde writes a map's entries as given.
struct DuplicateScope;

impl serde::Serialize for DuplicateScope {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let claims = claims(json!({}));
        let mut map = serializer.serialize_map(None)?;
        for (name, value) in claims.as_object().unwrap() {
            map.serialize_entry(name, value)?;
        }
        map.serialize_entry("scope", "user")?;
        map.serialize_entry("scope", "admin")?;
        map.end()
    }
}

#[tokio::test]
async fn verify_claim_named_twice_refused() {
    // Valid but for the duplicate: taking the last `scope` would pass it.
    let token = encode(&Header::new(Algorithm::HS256), &DuplicateScope, &EncodingKey::from_secret(SECRET)).unwrap();
    assert_eq!(description(&token).await, "the token names a claim twice");
}

fn route(optional: bool, require: &[(&str, &[&str])]) -> RouteAuth {
    let require = (require.iter())
        .map(|(claim, values)| ClaimRule {
            claim: claim.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
        })
        .collect();
    RouteAuth::new(provider(), optional, require)
}

fn bearer(token: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(AUTHORIZATION, HeaderValue::from_str(&format!("Bearer {token}")).unwrap());
    headers
}

#[tokio::test]
async fn check_without_token_required_refused_optional_passes() {
    let refused = route(false, &[]).check(&HeaderMap::new()).await.unwrap_err();
    assert_eq!(refused.error, AuthError::Missing);
    assert_eq!(&*refused.realm, "shop");
    route(true, &[]).check(&HeaderMap::new()).await.unwrap();
}

#[tokio::test]
async fn check_optional_with_bad_token_refused() {
    let refused = route(true, &[]).check(&bearer(&token(json!({"aud": "other"})))).await.unwrap_err();
    assert!(matches!(refused.error, AuthError::Invalid(_)));
}

#[tokio::test]
async fn check_scope_rule_string_or_array_claim() {
    let rule = route(false, &[("scope", &["cart:write", "cart:read"])]);
    rule.check(&bearer(&token(json!({"scope": "cart:read profile cart:write"})))).await.unwrap();
    rule.check(&bearer(&token(json!({"scope": ["cart:write", "cart:read"]})))).await.unwrap();
    let refused = rule.check(&bearer(&token(json!({"scope": "cart:read"})))).await.unwrap_err();
    assert!(matches!(refused.error, AuthError::InsufficientClaims(ref why) if why.contains("cart:write")));
    assert_eq!(refused.scope.as_deref(), Some("cart:write cart:read"));
}

#[tokio::test]
async fn check_role_rule_missing_claim_refused_without_scope() {
    let refused = route(false, &[("role", &["admin"])]).check(&bearer(&token(json!({})))).await.unwrap_err();
    assert!(matches!(refused.error, AuthError::InsufficientClaims(_)));
    assert_eq!(refused.scope, None);
}

#[test]
fn build_same_config_reused_changed_config_rebuilt() {
    let before = provider();
    assert!(Arc::ptr_eq(&before, &Provider::build(&provider_config(), Some(&before)).unwrap()));
    let changed = JwtProvider { audiences: vec!["other".into()], ..provider_config() };
    assert!(!Arc::ptr_eq(&before, &Provider::build(&changed, Some(&before)).unwrap()));
}
