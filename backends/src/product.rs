//! The product service: an in-memory catalog, seeded with five products, that every request must
//! hold a valid token for (zero trust: reads too).
//!
//! Routes (`products:read` to read, `products:write` to change):
//! - `GET /products`: `{"products": [{"id", "name", "price_cents", "stock"}, ...]}` by id.
//! - `GET /products/{id}`: one product, or 404.
//! - `POST /products` with `{"name", "price_cents", "stock"}`: 201, `Location: /products/{id}`;
//!   the server picks the id (`p-<n>`).
//! - `PUT /products/{id}` with the same body: replaces the product (200), or 404.
//! - `DELETE /products/{id}`: 204, or 404.
//! - `GET /healthz`: `ok`, no token needed.
//!
//! Names are 1 to 200 characters (not blank, no control characters); `price_cents` and `stock`
//! are integers from 0 to 1,000,000,000 (so that totals stay exact, in JavaScript clients too). Bodies are capped at 16 KiB, the catalog at 10,000 products.

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use axum::extract::{FromRef, State};
use axum::http::header::LOCATION;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::api::{self, ApiError, JsonBody, PathParam};
use crate::jwt_check::{Caller, Verifier};

const READ: &str = "products:read";
const WRITE: &str = "products:write";
const BODY_LIMIT: usize = 16 * 1024;
const MAX_PRODUCTS: usize = 10_000;
const MAX_NAME_CHARS: usize = 200;
/// The most a price (in cents) or a stock may be: far inside 2^53, where JSON numbers stop being exact.
const MAX_AMOUNT: i64 = 1_000_000_000;

#[derive(Clone)]
struct Shop {
    verifier: Verifier,
    catalog: Arc<Mutex<Catalog>>,
}

impl FromRef<Shop> for Verifier {
    fn from_ref(shop: &Shop) -> Verifier {
        shop.verifier.clone()
    }
}

/// Products by number (`p-7` is number 7), so listing follows creation order.
struct Catalog {
    products: BTreeMap<u64, Fields>,
    next: u64,
    capacity: usize,
}

/// A product's fields, checked: what a request body turns into.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fields {
    name: String,
    price_cents: i64,
    stock: i64,
}

/// The product router over a freshly seeded catalog.
pub fn app(verifier: Verifier) -> Router {
    let catalog = Arc::new(Mutex::new(Catalog::seeded(MAX_PRODUCTS)));
    let routes = Router::new()
        .route("/products", get(list).post(create))
        .route("/products/{id}", get(show).put(replace).delete(remove));
    api::finish(routes, BODY_LIMIT).with_state(Shop { verifier, catalog })
}

/// Serves the product service on `listener` until the process ends.
pub async fn serve(listener: TcpListener, verifier: Verifier) -> io::Result<()> {
    crate::service::run(listener, app(verifier), std::future::pending()).await
}

impl Shop {
    fn catalog(&self) -> MutexGuard<'_, Catalog> {
        // A panic elsewhere cannot leave the catalog half-changed: every change is one map call.
        self.catalog.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

async fn list(caller: Caller, State(shop): State<Shop>) -> Result<Response, ApiError> {
    caller.require(READ)?;
    let catalog = shop.catalog();
    let products: Vec<_> = catalog.products.iter().map(|(&n, fields)| view(n, fields)).collect();
    Ok(Json(json!({ "products": products })).into_response())
}

async fn show(caller: Caller, State(shop): State<Shop>, PathParam(id): PathParam) -> Result<Response, ApiError> {
    caller.require(READ)?;
    let catalog = shop.catalog();
    let (n, fields) = catalog.find(&id)?;
    Ok(Json(view(n, fields)).into_response())
}

async fn create(
    caller: Caller,
    State(shop): State<Shop>,
    body: Result<JsonBody<Fields>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(WRITE)?;
    let fields = checked(body?.0)?;
    let n = shop.catalog().insert(fields.clone())?;
    tracing::debug!(id = id_of(n), by = caller.sub, "product created");
    Ok((StatusCode::CREATED, [(LOCATION, format!("/products/{}", id_of(n)))], Json(view(n, &fields))).into_response())
}

async fn replace(
    caller: Caller,
    State(shop): State<Shop>,
    PathParam(id): PathParam,
    body: Result<JsonBody<Fields>, ApiError>,
) -> Result<Response, ApiError> {
    caller.require(WRITE)?;
    let fields = checked(body?.0)?;
    let mut catalog = shop.catalog();
    let (n, _) = catalog.find(&id)?;
    catalog.products.insert(n, fields.clone());
    Ok(Json(view(n, &fields)).into_response())
}

async fn remove(caller: Caller, State(shop): State<Shop>, PathParam(id): PathParam) -> Result<Response, ApiError> {
    caller.require(WRITE)?;
    let mut catalog = shop.catalog();
    let (n, _) = catalog.find(&id)?;
    catalog.products.remove(&n);
    Ok(StatusCode::NO_CONTENT.into_response())
}

impl Catalog {
    fn seeded(capacity: usize) -> Catalog {
        let seed = [
            ("Espresso beans, 1 kg", 2490, 40),
            ("Burr grinder", 12900, 8),
            ("Pour-over kettle", 5450, 15),
            ("Ceramic mug", 1200, 120),
            ("Paper filters, 100 pack", 590, 300),
        ];
        let mut catalog = Catalog { products: BTreeMap::new(), next: 1, capacity };
        for (name, price_cents, stock) in seed {
            // Five products fit any capacity the service is built with.
            let _ = catalog.insert(Fields { name: name.to_owned(), price_cents, stock });
        }
        catalog
    }

    fn find(&self, id: &str) -> Result<(u64, &Fields), ApiError> {
        let not_found = || ApiError::NotFound(format!("no product with id `{id}`"));
        let n = id.strip_prefix("p-").and_then(|n| n.parse::<u64>().ok()).ok_or_else(not_found)?;
        // `p-07` is not `p-7`: ids are compared as the server wrote them.
        if id_of(n) != id {
            return Err(not_found());
        }
        self.products.get(&n).map(|fields| (n, fields)).ok_or_else(not_found)
    }

    fn insert(&mut self, fields: Fields) -> Result<u64, ApiError> {
        if self.products.len() >= self.capacity {
            return Err(ApiError::OutOfCapacity(format!(
                "the catalog holds {} products, the most it can; delete some first",
                self.capacity
            )));
        }
        let n = self.next;
        self.next += 1;
        self.products.insert(n, fields);
        Ok(n)
    }
}

fn id_of(n: u64) -> String {
    format!("p-{n}")
}

fn view(n: u64, fields: &Fields) -> serde_json::Value {
    json!({ "id": id_of(n), "name": fields.name, "price_cents": fields.price_cents, "stock": fields.stock })
}

/// `fields` if every value is within bounds; else a 422 naming the first field that is not.
fn checked(fields: Fields) -> Result<Fields, ApiError> {
    let invalid = |field, problem: &str| Err(ApiError::InvalidField { field, problem: problem.to_owned() });
    if fields.name.trim().is_empty() {
        return invalid("name", "must not be empty or blank");
    }
    if fields.name.chars().count() > MAX_NAME_CHARS {
        return invalid("name", "must be at most 200 characters");
    }
    if fields.name.chars().any(char::is_control) {
        return invalid("name", "must not contain control characters");
    }
    if !(0..=MAX_AMOUNT).contains(&fields.price_cents) {
        return invalid("price_cents", "must be from 0 to 1000000000");
    }
    if !(0..=MAX_AMOUNT).contains(&fields.stock) {
        return invalid("stock", "must be from 0 to 1000000000");
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(name: &str, price_cents: i64, stock: i64) -> Fields {
        Fields { name: name.to_owned(), price_cents, stock }
    }

    #[test]
    fn catalog_full_refuses_insert_until_one_is_deleted() {
        let mut catalog = Catalog::seeded(6);
        assert_eq!(catalog.insert(fields("sixth", 1, 1)).unwrap(), 6);
        assert!(matches!(catalog.insert(fields("seventh", 1, 1)), Err(ApiError::OutOfCapacity(_))));
        catalog.products.remove(&1);
        assert_eq!(catalog.insert(fields("seventh", 1, 1)).unwrap(), 7, "ids are never reused");
    }

    #[test]
    fn catalog_find_takes_canonical_ids_only() {
        let catalog = Catalog::seeded(10);
        assert_eq!(catalog.find("p-3").unwrap().0, 3);
        for id in ["p-03", "p-+3", "3", "p-", "p-9", "P-3"] {
            assert!(matches!(catalog.find(id), Err(ApiError::NotFound(_))), "{id}");
        }
    }

    #[test]
    fn checked_names_the_field_out_of_bounds() {
        let field_of = |f: Fields| match checked(f) {
            Err(ApiError::InvalidField { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field_of(fields("  ", 1, 1)), "name");
        assert_eq!(field_of(fields(&"x".repeat(201), 1, 1)), "name");
        assert_eq!(field_of(fields("a\nb", 1, 1)), "name");
        assert_eq!(field_of(fields("ok", -1, 1)), "price_cents");
        assert_eq!(field_of(fields("ok", 1, -1)), "stock");
        assert_eq!(field_of(fields("ok", i64::MAX, 1)), "price_cents");
        assert_eq!(field_of(fields("ok", 1, MAX_AMOUNT + 1)), "stock");
        assert!(checked(fields("ok", MAX_AMOUNT, MAX_AMOUNT)).is_ok());
        assert!(checked(fields(&"é".repeat(200), 0, 0)).is_ok(), "200 characters, more bytes");
    }
}
