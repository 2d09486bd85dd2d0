//! Servers on port 0, a small HTTP client, a JWKS server the test controls, and token helpers.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use backends::auth::{self, Settings, Users};
use backends::jwt_check::Verifier;
use backends::token::{claims, jwks, Algorithm, SigningKey};
use backends::{cart, product};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

pub const ISSUER: &str = "http://auth.test";
pub const AUDIENCE: &str = "shop";

pub fn demo_users_path() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/demo-users.json"))
}

pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Sends one request. `headers` may include `authorization`; a body is sent as JSON unless a
/// `content-type` is among `headers`.
pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Reply {
    // No pooling: a server restarted on the same port must get a fresh connection.
    let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(0).build_http::<Full<Bytes>>();
    let mut request = Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    if body.is_some() && !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
        request = request.header("content-type", "application/json");
    }
    let request = request.body(Full::new(Bytes::from(body.unwrap_or("").to_owned()))).unwrap();
    let response = client.request(request).await.unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes().to_vec();
    Reply { status, headers, body }
}

/// A request carrying `Authorization: Bearer <token>`.
pub async fn call(method: &str, url: &str, token: &str, body: Option<&str>) -> Reply {
    send(method, url, &[("authorization", &format!("Bearer {token}"))], body).await
}

pub async fn bind() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

pub fn auth_settings() -> Settings {
    Settings {
        issuer: ISSUER.to_owned(),
        audience: AUDIENCE.to_owned(),
        users: Users::load(&demo_users_path()).unwrap(),
        token_lifetime: Duration::from_secs(300),
    }
}

/// Auth on `listener`; aborting the handle stops it and frees the port.
pub fn start_auth_on(listener: TcpListener) -> JoinHandle<std::io::Result<()>> {
    tokio::spawn(auth::serve(listener, auth_settings()))
}

pub async fn start_auth() -> SocketAddr {
    let (listener, addr) = bind().await;
    start_auth_on(listener);
    addr
}

pub fn jwks_url(addr: SocketAddr) -> String {
    format!("http://{addr}/.well-known/jwks.json")
}

pub fn verifier(realm: &str, jwks_url: &str, cooldown: Duration) -> Verifier {
    Verifier::with_cooldown(realm, ISSUER, AUDIENCE, jwks_url, cooldown).unwrap()
}

pub async fn start_product(jwks_url: &str, cooldown: Duration) -> SocketAddr {
    let (listener, addr) = bind().await;
    tokio::spawn(product::serve(listener, verifier("product", jwks_url, cooldown)));
    addr
}

pub async fn start_cart(jwks_url: &str) -> SocketAddr {
    let (listener, addr) = bind().await;
    tokio::spawn(cart::serve(listener, verifier("cart", jwks_url, Duration::from_secs(30))));
    addr
}

/// Auth, product and cart wired together.
pub struct Shop {
    pub auth: SocketAddr,
    pub product: SocketAddr,
    pub cart: SocketAddr,
}

impl Shop {
    pub async fn start() -> Shop {
        let auth = start_auth().await;
        let product = start_product(&jwks_url(auth), Duration::from_secs(30)).await;
        let cart = start_cart(&jwks_url(auth)).await;
        Shop { auth, product, cart }
    }

    pub fn product_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.product)
    }

    pub fn cart_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.cart)
    }

    pub async fn token(&self, username: &str) -> String {
        login(self.auth, username).await
    }
}

/// A token from auth at `addr` for a demo user.
pub async fn login(addr: SocketAddr, username: &str) -> String {
    let body = json!({ "username": username, "password": format!("{username}-demo-password") }).to_string();
    let reply = send("POST", &format!("http://{addr}/token"), &[], Some(&body)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    reply.json()["access_token"].as_str().unwrap().to_owned()
}

/// A JWKS endpoint under the test's control: it serves `keys`, counts fetches, and answers 500
/// while `failing` is set.
#[derive(Clone, Default)]
pub struct TestJwks {
    pub document: Arc<Mutex<Value>>,
    pub fetches: Arc<AtomicUsize>,
    pub failing: Arc<AtomicBool>,
}

impl TestJwks {
    pub async fn start(keys: &[&SigningKey]) -> (TestJwks, SocketAddr) {
        let (listener, addr) = bind().await;
        (TestJwks::start_on(listener, keys), addr)
    }

    pub fn start_on(listener: TcpListener, keys: &[&SigningKey]) -> TestJwks {
        let jwks = TestJwks { document: Arc::new(Mutex::new(jwks(keys))), ..TestJwks::default() };
        let app = Router::new().route("/.well-known/jwks.json", get(serve_jwks)).with_state(jwks.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
        jwks
    }

    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

async fn serve_jwks(State(jwks): State<TestJwks>) -> Response {
    jwks.fetches.fetch_add(1, Ordering::SeqCst);
    if jwks.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    Json(jwks.document.lock().unwrap().clone()).into_response()
}

pub fn es256(kid: &str) -> SigningKey {
    SigningKey::generate(Algorithm::ES256, kid)
}

/// Valid claims for `sub` with `scope`.
pub fn claims_for(sub: &str, scope: &str) -> Value {
    let mut claims = claims(ISSUER, AUDIENCE, sub, Duration::from_secs(300));
    claims["scope"] = json!(scope);
    claims
}

/// Polls `check` until it returns true, for up to 10 seconds.
pub async fn eventually<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    for _ in 0..500 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("not within 10 s: {what}");
}
