//! Product: the catalog's routes with tokens from the real auth service.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn catalog_read_with_alice_write_with_admin() {
    let shop = Shop::start().await;
    let (alice, admin) = (shop.token("alice").await, shop.token("admin").await);

    let list = call("GET", &shop.product_url("/products"), &alice, None).await;
    assert_eq!(list.status, 200, "{}", list.text());
    let products = list.json()["products"].as_array().unwrap().clone();
    assert_eq!(products.len(), 5);
    assert_eq!(products[0]["id"], "p-1");
    assert!(products.iter().all(|p| p["price_cents"].is_i64() && p["stock"].is_i64() && p["name"].is_string()));
    let one = call("GET", &shop.product_url("/products/p-2"), &alice, None).await;
    assert_eq!((one.status, one.json()), (200, products[1].clone()));

    let created = call(
        "POST",
        &shop.product_url("/products"),
        &admin,
        Some(r#"{"name": "Milk jug", "price_cents": 1890, "stock": 0}"#),
    )
    .await;
    assert_eq!(created.status, 201, "{}", created.text());
    assert_eq!(created.header("location"), Some("/products/p-6"));
    assert_eq!(created.json(), json!({"id": "p-6", "name": "Milk jug", "price_cents": 1890, "stock": 0}));
    let fetched = call("GET", &shop.product_url("/products/p-6"), &alice, None).await;
    assert_eq!(fetched.json()["name"], "Milk jug");

    let replaced = call(
        "PUT",
        &shop.product_url("/products/p-6"),
        &admin,
        Some(r#"{"name": "Milk jug, steel", "price_cents": 2190, "stock": 4}"#),
    )
    .await;
    assert_eq!(replaced.status, 200, "{}", replaced.text());
    assert_eq!(call("GET", &shop.product_url("/products/p-6"), &alice, None).await.json()["stock"], 4);

    let deleted = call("DELETE", &shop.product_url("/products/p-6"), &admin, None).await;
    assert_eq!((deleted.status, deleted.body.len()), (204, 0));
    for (method, body) in
        [("GET", None), ("DELETE", None), ("PUT", Some(r#"{"name": "x", "price_cents": 1, "stock": 1}"#))]
    {
        let gone = call(method, &shop.product_url("/products/p-6"), &admin, body).await;
        assert_eq!((gone.status, &gone.json()["error"]), (404, &json!("not_found")), "{method}");
    }
    assert_eq!(call("DELETE", &shop.product_url("/products/p-6"), &alice, None).await.status, 403);
}

#[tokio::test]
async fn catalog_invalid_input_422_naming_the_field() {
    let shop = Shop::start().await;
    let admin = shop.token("admin").await;
    let long_name = format!(r#"{{"name": "{}", "price_cents": 1, "stock": 1}}"#, "x".repeat(201));
    let cases = [
        (r#"{"name": "", "price_cents": 1, "stock": 1}"#, "name"),
        (long_name.as_str(), "name"),
        (r#"{"name": "ok", "price_cents": -1, "stock": 1}"#, "price_cents"),
        (r#"{"name": "ok", "price_cents": 1, "stock": -5}"#, "stock"),
    ];
    for (body, field) in cases {
        let reply = call("POST", &shop.product_url("/products"), &admin, Some(body)).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text());
        let json = reply.json();
        assert_eq!((&json["error"], &json["field"]), (&json!("invalid_field"), &json!(field)), "{body}");
        let put = call("PUT", &shop.product_url("/products/p-1"), &admin, Some(body)).await;
        assert_eq!(put.status, 422, "PUT {body}");
    }
    let shape_cases = [
        (r#"{"name": "ok", "price_cents": 1.5, "stock": 1}"#, "price_cents"),
        (r#"{"name": "ok", "price_cents": 1}"#, "stock"),
        (r#"{"name": "ok", "price_cents": 1, "stock": 1, "id": "p-9"}"#, "id"),
    ];
    for (body, field) in shape_cases {
        let reply = call("POST", &shop.product_url("/products"), &admin, Some(body)).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text());
        assert!(reply.json()["message"].as_str().unwrap().contains(field), "{body}: {}", reply.text());
    }
    let syntax = call("POST", &shop.product_url("/products"), &admin, Some("{")).await;
    assert_eq!((syntax.status, &syntax.json()["error"]), (400, &json!("invalid_json")));
    let huge = format!(r#"{{"name": "{}", "price_cents": 1, "stock": 1}}"#, "x".repeat(17 * 1024));
    let too_large = call("POST", &shop.product_url("/products"), &admin, Some(&huge)).await;
    assert_eq!((too_large.status, &too_large.json()["error"]), (413, &json!("body_too_large")));
    let list = call("GET", &shop.product_url("/products"), &admin, None).await.json();
    assert_eq!(list["products"].as_array().unwrap().len(), 5, "nothing invalid was stored");
}
