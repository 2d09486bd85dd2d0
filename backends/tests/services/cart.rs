//! Cart: carts keyed by the token's `sub` alone, quantities and bounds.

use serde_json::json;

use crate::support::*;

#[tokio::test]
async fn cart_owner_comes_from_the_token_never_from_x_user_headers() {
    let shop = Shop::start().await;
    let (alice, admin) = (shop.token("alice").await, shop.token("admin").await);
    let url = shop.cart_url("/cart/items/sku-1");
    let spoofed = [
        ("authorization", format!("Bearer {alice}")),
        ("x-user-id", "admin".to_owned()),
        ("x-user", "admin".to_owned()),
        ("x-user-sub", "admin".to_owned()),
    ];
    let headers: Vec<(&str, &str)> = spoofed.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let put = send("PUT", &url, &headers, Some(r#"{"quantity": 2}"#)).await;
    assert_eq!(put.status, 200, "{}", put.text());
    assert_eq!(put.json(), json!({"owner": "alice", "items": [{"product_id": "sku-1", "quantity": 2}]}));
    let got = send("GET", &shop.cart_url("/cart"), &headers, None).await.json();
    assert_eq!(got["owner"], "alice");

    let admins = call("GET", &shop.cart_url("/cart"), &admin, None).await.json();
    assert_eq!(admins, json!({"owner": "admin", "items": []}), "alice's item did not land in admin's cart");
    let with_bob = [("authorization", format!("Bearer {admin}")), ("x-user-id", "alice".to_owned())];
    let headers: Vec<(&str, &str)> = with_bob.iter().map(|(n, v)| (*n, v.as_str())).collect();
    assert_eq!(send("DELETE", &shop.cart_url("/cart"), &headers, None).await.status, 204);
    let alices = call("GET", &shop.cart_url("/cart"), &alice, None).await.json();
    assert_eq!(alices["items"].as_array().unwrap().len(), 1, "admin emptied only their own cart");

    let no_token = send("GET", &shop.cart_url("/cart"), &[("x-user-id", "alice")], None).await;
    assert_eq!(no_token.status, 401, "an identity header is no credential");
}

#[tokio::test]
async fn cart_items_set_replace_delete_and_empty() {
    let shop = Shop::start().await;
    let alice = shop.token("alice").await;
    let item = |id: &str| shop.cart_url(&format!("/cart/items/{id}"));
    assert_eq!(call("PUT", &item("b"), &alice, Some(r#"{"quantity": 1}"#)).await.status, 200);
    assert_eq!(call("PUT", &item("a"), &alice, Some(r#"{"quantity": 3}"#)).await.status, 200);
    let set = call("PUT", &item("b"), &alice, Some(r#"{"quantity": 100}"#)).await;
    assert_eq!(
        set.json()["items"],
        json!([{"product_id": "a", "quantity": 3}, {"product_id": "b", "quantity": 100}]),
        "quantities are set, not added"
    );
    assert_eq!(call("DELETE", &item("a"), &alice, None).await.status, 204);
    let absent = call("DELETE", &item("a"), &alice, None).await;
    assert_eq!((absent.status, &absent.json()["error"]), (404, &json!("not_found")));
    assert_eq!(call("DELETE", &shop.cart_url("/cart"), &alice, None).await.status, 204);
    assert_eq!(call("GET", &shop.cart_url("/cart"), &alice, None).await.json()["items"], json!([]));
}

#[tokio::test]
async fn cart_invalid_quantity_or_product_id_422_naming_the_field() {
    let shop = Shop::start().await;
    let alice = shop.token("alice").await;
    for body in [r#"{"quantity": 0}"#, r#"{"quantity": 101}"#, r#"{"quantity": -1}"#, r#"{"quantity": 5000000000}"#] {
        let reply = call("PUT", &shop.cart_url("/cart/items/sku-1"), &alice, Some(body)).await;
        assert_eq!(reply.status, 422, "{body}: {}", reply.text());
        assert_eq!(reply.json()["field"], "quantity", "{body}");
    }
    for body in [r#"{"quantity": "2"}"#, r#"{"quantity": 1.5}"#, r#"{}"#] {
        let reply = call("PUT", &shop.cart_url("/cart/items/sku-1"), &alice, Some(body)).await;
        assert_eq!((reply.status, &reply.json()["error"]), (422, &json!("invalid_body")), "{body}");
    }
    let long = "x".repeat(65);
    for id in [long.as_str(), "a%20b", "%C3%A9"] {
        let reply = call("PUT", &shop.cart_url(&format!("/cart/items/{id}")), &alice, Some(r#"{"quantity": 1}"#)).await;
        assert_eq!(reply.status, 422, "{id}: {}", reply.text());
        assert_eq!(reply.json()["field"], "product_id", "{id}");
    }
    let huge = format!(r#"{{"quantity": 1, "pad": "{}"}}"#, "x".repeat(5000));
    let too_large = call("PUT", &shop.cart_url("/cart/items/sku-1"), &alice, Some(&huge)).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(call("GET", &shop.cart_url("/cart"), &alice, None).await.json()["items"], json!([]));
}

#[tokio::test]
async fn cart_101st_distinct_item_refused_changes_still_allowed() {
    let shop = Shop::start().await;
    let alice = shop.token("alice").await;
    for i in 0..100 {
        let reply =
            call("PUT", &shop.cart_url(&format!("/cart/items/sku-{i}")), &alice, Some(r#"{"quantity": 1}"#)).await;
        assert_eq!(reply.status, 200, "item {i}: {}", reply.text());
    }
    let refused = call("PUT", &shop.cart_url("/cart/items/sku-100"), &alice, Some(r#"{"quantity": 1}"#)).await;
    assert_eq!(refused.status, 409, "{}", refused.text());
    assert_eq!(refused.json()["error"], "limit_reached");
    assert!(refused.json()["message"].as_str().unwrap().contains("100"));
    let change = call("PUT", &shop.cart_url("/cart/items/sku-7"), &alice, Some(r#"{"quantity": 9}"#)).await;
    assert_eq!(change.status, 200, "an item already there can change");
    assert_eq!(change.json()["items"].as_array().unwrap().len(), 100);
    let admin = shop.token("admin").await;
    assert_eq!(
        call("PUT", &shop.cart_url("/cart/items/sku-100"), &admin, Some(r#"{"quantity": 1}"#)).await.status,
        200
    );
}
