//! The demo shop as the quick start runs it: `config/quickstart.yaml` itself, its ports moved to
//! free ones, in front of the real `auth`, `product`, `cart` and `echo` processes.
//!
//! Zero trust end to end: the gateway checks each token and forwards it untouched, removes the
//! identity headers clients send, and the services check the token again, so a request that gets
//! past the gateway some other way is refused there too.

use std::path::PathBuf;

use backends::token::{claims, Algorithm, SigningKey};
use e2e::client::{self, Reply};
use e2e::{workspace_root, Backend, Gateway, Service};
use http::Request;
use serde_json::{json, Value};

/// quickstart.yaml's issuer: auth signs as it whatever port it listens on.
const ISSUER: &str = "http://127.0.0.1:9002";
const AUDIENCE: &str = "shop";

struct Shop {
    gateway: Gateway,
    auth: Service,
    product: Service,
    cart: Service,
    root: PathBuf,
    _echo: Backend,
}

impl Drop for Shop {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

impl Shop {
    fn start(test: &str) -> Shop {
        let users = workspace_root().join("config/demo-users.json");
        let users = users.to_str().unwrap_or_else(|| panic!("non-UTF-8 path {}", users.display()));
        let auth = Service::spawn("auth", &["--issuer", ISSUER, "--audience", AUDIENCE, "--users", users]);
        let jwks = format!("{}/.well-known/jwks.json", auth.url());
        let checked = ["--issuer", ISSUER, "--audience", AUDIENCE, "--jwks-url", &jwks];
        let product = Service::spawn("product", &checked);
        let cart = Service::spawn("cart", &checked);
        let echo = Backend::spawn("echo");

        let mut yaml = std::fs::read_to_string(workspace_root().join("config/quickstart.yaml"))
            .unwrap_or_else(|e| panic!("reading config/quickstart.yaml: {e}"));
        for (from, to) in [
            ("127.0.0.1:8080", "127.0.0.1:0".to_owned()),
            ("127.0.0.1:8443", "127.0.0.1:0".to_owned()),
            ("127.0.0.1:9100", "127.0.0.1:0".to_owned()),
            ("jwks_url: http://127.0.0.1:9002/", format!("jwks_url: {}/", auth.url())),
            ("[http://127.0.0.1:9002]", format!("[{}]", auth.url())),
            ("[http://127.0.0.1:9003]", format!("[{}]", product.url())),
            ("[http://127.0.0.1:9004]", format!("[{}]", cart.url())),
            ("[http://127.0.0.1:9001]", format!("[{}]", echo.url())),
        ] {
            assert!(yaml.contains(from), "config/quickstart.yaml no longer has {from:?}: update this test");
            yaml = yaml.replace(from, &to);
        }

        // The layout the quick start uses: config/ beside the certs/ `gateway certs dev` makes.
        let root = std::env::temp_dir().join(format!("e2e-shop-{test}-{}", std::process::id()));
        let config = root.join("config/quickstart.yaml");
        std::fs::create_dir_all(root.join("config")).unwrap_or_else(|e| panic!("creating {}: {e}", root.display()));
        std::fs::write(&config, yaml).unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
        let certs = std::process::Command::new(e2e::binary("gateway"))
            .args(["certs", "dev", "--out"])
            .arg(root.join("certs"))
            .output()
            .unwrap_or_else(|e| panic!("running gateway certs dev: {e}"));
        assert!(certs.status.success(), "gateway certs dev failed: {}", String::from_utf8_lossy(&certs.stderr));
        let gateway = Gateway::start_with_file(&config);
        Shop { gateway, auth, product, cart, root, _echo: echo }
    }

    /// A token from `POST /auth/token` through the gateway.
    async fn login(&self, username: &str) -> String {
        let reply = self.log_in(username, &format!("{username}-demo-password")).await;
        assert_eq!(reply.status, 200, "logging in as {username}: {}", reply.text());
        let body = reply.json();
        assert_eq!(body["token_type"], "Bearer", "{body}");
        body["access_token"].as_str().unwrap_or_else(|| panic!("no access_token in {body}")).to_owned()
    }

    async fn log_in(&self, username: &str, password: &str) -> Reply {
        let body = json!({ "username": username, "password": password });
        send(self.gateway.addr(), "POST", "/auth/token", None, &[], Some(body)).await
    }
}

/// `method path` to `addr` with an optional bearer token, extra headers and JSON body.
async fn send(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Value>,
) -> Reply {
    let mut request = client::request(method, path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request: Request<client::Body> = match body {
        Some(body) => request.header("content-type", "application/json").body(client::full(body.to_string())),
        None => request.body(client::empty()),
    }
    .unwrap_or_else(|e| panic!("bad request: {e}"));
    client::send(addr, request).await
}

#[tokio::test]
async fn log_in_browse_and_fill_a_cart_through_the_gateway() {
    let shop = Shop::start("flow");
    let token = shop.login("alice").await;

    let products = send(shop.gateway.addr(), "GET", "/products", Some(&token), &[], None).await;
    assert_eq!(products.status, 200, "{}", products.text());
    let products = products.json();
    let first = products["products"].get(0).unwrap_or_else(|| panic!("no products in {products}"));
    let id = first["id"].as_str().unwrap_or_else(|| panic!("no id in {first}"));
    let one = send(shop.gateway.addr(), "GET", &format!("/products/{id}"), Some(&token), &[], None).await;
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(one.json()["id"], id);

    let path = format!("/cart/items/{id}");
    let put = send(shop.gateway.addr(), "PUT", &path, Some(&token), &[], Some(json!({ "quantity": 2 }))).await;
    assert!(put.status.is_success(), "{} {}", put.status, put.text());
    let cart = send(shop.gateway.addr(), "GET", "/cart", Some(&token), &[], None).await;
    assert_eq!(cart.status, 200, "{}", cart.text());
    assert_eq!(cart.json(), json!({ "owner": "alice", "items": [{ "product_id": id, "quantity": 2 }] }));
    // The per-user budget of the cart route is announced.
    assert_eq!(cart.header("ratelimit-limit"), Some("60"), "{:?}", cart.headers);
}

#[tokio::test]
async fn who_the_caller_is_comes_from_the_token_never_from_a_header() {
    let shop = Shop::start("identity");
    let alice = shop.login("alice").await;
    let forged = [("x-user-id", "admin"), ("x-user-role", "admin")];

    // Through the gateway, which removes the headers, and straight to the cart, which ignores them.
    for addr in [shop.gateway.addr(), shop.cart.addr] {
        let cart = send(addr, "GET", "/cart", Some(&alice), &forged, None).await;
        assert_eq!(cart.status, 200, "{addr}: {}", cart.text());
        assert_eq!(cart.json()["owner"], "alice", "{addr}");
    }
    // A request that reaches the cart without the gateway and without a token gets nowhere.
    let direct = send(shop.cart.addr, "GET", "/cart", None, &[("x-user-id", "alice")], None).await;
    assert_eq!(direct.status, 401, "{}", direct.text());
    let challenge = direct.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer "), "{challenge:?}");
}

#[tokio::test]
async fn scopes_are_checked_by_the_gateway_and_again_by_the_service() {
    let shop = Shop::start("scopes");
    let (alice, admin) = (shop.login("alice").await, shop.login("admin").await);
    let new = json!({ "name": "Teapot", "price_cents": 1800, "stock": 3 });

    let refused = send(shop.gateway.addr(), "POST", "/products", Some(&alice), &[], Some(new.clone())).await;
    refused.assert_error(403, "insufficient_scope");
    let direct = send(shop.product.addr, "POST", "/products", Some(&alice), &[], Some(new.clone())).await;
    assert_eq!(direct.status, 403, "the product service must check the scope too: {}", direct.text());
    assert!(direct.header("www-authenticate").unwrap_or_default().contains("insufficient_scope"));

    let created = send(shop.gateway.addr(), "POST", "/products", Some(&admin), &[], Some(new)).await;
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().map(str::to_owned).unwrap_or_else(|| panic!("{}", created.text()));
    let read = send(shop.gateway.addr(), "GET", &format!("/products/{id}"), Some(&alice), &[], None).await;
    assert_eq!(read.json()["name"], "Teapot", "{}", read.text());
}

#[tokio::test]
async fn tokens_the_auth_service_did_not_sign_are_refused_at_both_layers() {
    let shop = Shop::start("forged");
    let jwks = client::get(shop.auth.addr, "/.well-known/jwks.json").await.json();
    let kid = jwks["keys"][0]["kid"].as_str().unwrap_or_else(|| panic!("no kid in {jwks}"));
    // Same kid, issuer and audience, another key: only the signature gives it away.
    let forger = SigningKey::generate(Algorithm::ES256, kid);
    let mut forged = claims(ISSUER, AUDIENCE, "alice", std::time::Duration::from_secs(300));
    forged["scope"] = json!("cart products:read products:write");
    let forged = forger.sign(&forged);

    let at_gateway = send(shop.gateway.addr(), "GET", "/cart", Some(&forged), &[], None).await;
    at_gateway.assert_error(401, "invalid_token");
    let at_cart = send(shop.cart.addr, "GET", "/cart", Some(&forged), &[], None).await;
    assert_eq!(at_cart.status, 401, "{}", at_cart.text());
    assert!(at_cart.header("www-authenticate").unwrap_or_default().contains("invalid_token"));
}

#[tokio::test]
async fn wrong_passwords_get_401_and_guessing_runs_into_the_login_budget() {
    let shop = Shop::start("logins");
    let wrong = shop.log_in("alice", "not-the-password").await;
    let unknown = shop.log_in("mallory", "not-the-password").await;
    assert_eq!(wrong.status, 401, "{}", wrong.text());
    assert_eq!((unknown.status, unknown.body.clone()), (wrong.status, wrong.body.clone()), "tells users apart");
    // quickstart.yaml's `logins` budget: 10 a minute per address, these two included.
    let mut statuses = Vec::new();
    for _ in 0..9 {
        statuses.push(shop.log_in("alice", "guess").await.status.as_u16());
    }
    assert_eq!(statuses[..8], [401; 8], "{statuses:?}");
    assert_eq!(statuses[8], 429, "{statuses:?}");
}
