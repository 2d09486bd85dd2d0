//! The cart service: one in-memory cart per caller, keyed by the verified token's `sub` and by
//! nothing else (no header can pick whose cart it is). Every route needs the scope `cart`.
//!
//! Routes:
//! - `GET /cart`: `{"owner": sub, "items": [{"product_id", "quantity"}, ...]}` by product id
//!   (empty for a new caller).
//! - `PUT /cart/items/{product_id}` with `{"quantity": n}` (1 to 100): sets the quantity; answers
//!   the cart.
//! - `DELETE /cart/items/{product_id}`: 204, or 404 when the cart lacks it.
//! - `DELETE /cart`: 204, the cart emptied.
//! - `GET /healthz`: `ok`, no token needed.
//!
//! Memory is bounded: 100 distinct items per cart, 100,000 non-empty carts, product ids of 1 to
//! 64 characters of `A-Z a-z 0-9 . _ -`, bodies of 4 KiB. Product ids are not checked against the
//! catalog: the services share no state.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{FromRef, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;

use crate::api::{self, ApiError, JsonBody, PathParam};
use crate::jwt_check::{Caller, Verifier};

const SCOPE: &str = "cart";
const BODY_LIMIT: usize = 4 * 1024;
const MAX_ITEMS: usize = 100;
const MAX_CARTS: usize = 100_000;
const MAX_QUANTITY: u32 = 100;
const MAX_PRODUCT_ID: usize = 64;

#[derive(Clone)]
struct Shop {
    verifier: Verifier,
    carts: Arc<Mutex<Carts>>,
}

impl FromRef<Shop> for Verifier {
    fn from_ref(shop: &Shop) -> Verifier {
        shop.verifier.clone()
    }
}

/// Non-empty carts by owner; a cart emptied is dropped, so it holds no memory.
struct Carts {
    by_owner: HashMap<String, Cart>,
    max_carts: usize,
    max_items: usize,
}

/// Quantities by product id.
type Cart = BTreeMap<String, u32>;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetQuantity {
    quantity: i64,
}

/// The cart router, with no carts yet.
pub fn app(verifier: Verifier) -> Router {
    let carts = Arc::new(Mutex::new(Carts::new(MAX_CARTS, MAX_ITEMS)));
    let routes = Router::new()
        .route("/cart", get(show).delete(empty))
        .route("/cart/items/{product_id}", delete(remove_item).put(set_item));
    api::finish(routes, BODY_LIMIT).with_state(Shop { verifier, carts })
}

/// Serves the cart service on `listener` until the process ends.
pub async fn serve(listener: TcpListener, verifier: Verifier) -> io::Result<()> {
    crate::service::run(listener, app(verifier), std::future::pending()).await
}

impl Shop {
    fn carts(&self) -> MutexGuard<'_, Carts> {
        // Every change is one map call: a panic elsewhere cannot leave a cart half-changed.
        self.carts.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn show(caller: Caller, State(shop): State<Shop>) -> Result<Response, ApiError> {
    caller.require(SCOPE)?;
    let carts = shop.carts();
    Ok(Json(view(&caller.sub, carts.by_owner.get(&caller.sub))).into_response())
}

async fn set_item(
    caller: Caller,
    State(shop): State<Shop>,
    PathParam(product_id): PathParam,
    body: Result<JsonBody<SetQuantity>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(SCOPE)?;
    check_product_id(&product_id)?;
    let quantity = u32::try_from(body?.0.quantity).ok().filter(|q| (1..=MAX_QUANTITY).contains(q));
    let quantity = quantity.ok_or_else(|| ApiError::InvalidField {
        field: "quantity",
        problem: format!("must be an integer from 1 to {MAX_QUANTITY}"),
    })?;
    let mut carts = shop.carts();
    let cart = carts.set(&caller.sub, product_id, quantity)?;
    Ok(Json(view(&caller.sub, Some(cart))).into_response())
}

async fn remove_item(
    caller: Caller,
    State(shop): State<Shop>,
    PathParam(product_id): PathParam,
) -> Result<Response, ApiError> {
    caller.require(SCOPE)?;
    check_product_id(&product_id)?;
    shop.carts().remove(&caller.sub, &product_id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn empty(caller: Caller, State(shop): State<Shop>) -> Result<Response, ApiError> {
    caller.require(SCOPE)?;
    shop.carts().by_owner.remove(&caller.sub);
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl Carts {
    fn new(max_carts: usize, max_items: usize) -> Carts {
        Carts { by_owner: HashMap::new(), max_carts, max_items }
    }

    /// Sets a quantity, within the bounds on carts and on items per cart.
    fn set(&mut self, owner: &str, product_id: String, quantity: u32) -> Result<&Cart, ApiError> {
        if !self.by_owner.contains_key(owner) && self.by_owner.len() >= self.max_carts {
            return Err(ApiError::OutOfCapacity(format!(
                "the service holds {} carts, the most it can; try again later",
                self.max_carts
            )));
        }
        let max_items = self.max_items;
        let cart = self.by_owner.entry(owner.to_owned()).or_default();
        if !cart.contains_key(&product_id) && cart.len() >= max_items {
            return Err(ApiError::LimitReached(format!(
                "the cart holds {max_items} different items, the most it can; remove one first"
            )));
        }
        cart.insert(product_id, quantity);
        Ok(cart)
    }

    fn remove(&mut self, owner: &str, product_id: &str) -> Result<(), ApiError> {
        let cart = self.by_owner.get_mut(owner);
        if cart.and_then(|cart| cart.remove(product_id)).is_none() {
            return Err(ApiError::NotFound(format!("the cart holds no `{product_id}`")));
        }
        if self.by_owner.get(owner).is_some_and(Cart::is_empty) {
            self.by_owner.remove(owner);
        }
        Ok(())
    }
}

fn check_product_id(product_id: &str) -> Result<(), ApiError> {
    let valid = (1..=MAX_PRODUCT_ID).contains(&product_id.len())
        && product_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if valid {
        Ok(())
    } else {
        Err(ApiError::InvalidField {
            field: "product_id",
            problem: format!("must be 1 to {MAX_PRODUCT_ID} characters of A-Z, a-z, 0-9, '.', '_' and '-'"),
        })
    }
}

fn view(owner: &str, cart: Option<&Cart>) -> Value {
    let items: Vec<Value> = cart
        .into_iter()
        .flatten()
        .map(|(product_id, quantity)| json!({ "product_id": product_id, "quantity": quantity }))
        .collect();
    json!({ "owner": owner, "items": items })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carts_past_the_most_carts_refused_for_new_owners_only() {
        let mut carts = Carts::new(2, 10);
        carts.set("a", "x".into(), 1).unwrap();
        carts.set("b", "x".into(), 1).unwrap();
        assert!(matches!(carts.set("c", "x".into(), 1), Err(ApiError::OutOfCapacity(_))));
        assert!(!carts.by_owner.contains_key("c"), "a refused owner leaves no empty cart behind");
        carts.set("a", "y".into(), 2).unwrap();
        carts.remove("b", "x").unwrap();
        carts.set("c", "x".into(), 1).expect("an emptied cart frees its place");
    }

    #[test]
    fn carts_remove_absent_item_is_not_found() {
        let mut carts = Carts::new(2, 10);
        assert!(matches!(carts.remove("a", "x"), Err(ApiError::NotFound(_))));
        carts.set("a", "x".into(), 1).unwrap();
        assert!(matches!(carts.remove("a", "y"), Err(ApiError::NotFound(_))));
        assert_eq!(carts.by_owner["a"].len(), 1);
    }

    #[test]
    fn check_product_id_bounds() {
        assert!(check_product_id("sku-1.A_b").is_ok());
        assert!(check_product_id(&"x".repeat(64)).is_ok());
        for bad in ["", "a b", "a/b", "é", &"x".repeat(65)] {
            assert!(check_product_id(bad).is_err(), "{bad:?}");
        }
    }
}
