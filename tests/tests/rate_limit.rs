//! Rate limits (`rate_limits`, a route's `rate_limit`, optional `redis`): budgets per client
//! address, per token claim and global; the `RateLimit-*` headers and the 429 answer; budgets
//! shared by routes and, through a real `redis-server`, by gateway instances; the in-process
//! fallback while Redis is unreachable and the reconnect afterwards; `/admin/ratelimit`; reloads.
//!
//! Windows are 60 s (the shortest the contract calls safe from timing flakiness): every budget in
//! here is spent within a few seconds, so it is effectively `requests` for the test's duration.
//! Waits go through `/admin/ratelimit`, bounded by [`TIMEOUT`]; nothing asserts wall-clock time.

use std::time::Duration;

use backends::token::{claims, Algorithm, SigningKey};
use e2e::client::{self, Reply};
use e2e::redis::{RedisCluster, RedisServer};
use e2e::{closed_port_addr, config, config_version, fetch_until, Backend, ConfigDir, Gateway};
use futures_util::future::join_all;
use serde_json::Value;

/// Every limit's window, as written in the configs and reported by `/admin/ratelimit`.
const WINDOW: &str = "60s";
/// The longest `RateLimit-Reset` / `Retry-After` a 60 s window can report: with a sliding-window
/// counter, requests counted in the current fixed window weigh on until the end of the next one.
const MAX_WAIT_SECS: u64 = 2 * 60;

const ISSUER: &str = "https://auth.test";
const AUDIENCE: &str = "shop";
/// The variable `secret_env` names in the JWT configs.
const SECRET_ENV: &str = "E2E_JWT_SECRET";

/// The route every config has next to its limited ones: no `rate_limit`.
const OPEN_ROUTE: &str = "  - { name: open, match: { path_prefix: /open }, upstream: echo }\n";

// ---------------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------------

/// `head` (top-level blocks such as `redis:`, `rate_limits:`, `jwt:`), one upstream `echo` and
/// `routes` (the list items, indented two spaces).
fn gateway_config(echo: &Backend, head: &str, routes: &str) -> String {
    config(&format!("{head}upstreams:\n  echo: {{ endpoints: [\"${{echo}}\"] }}\nroutes:\n{routes}"), &[echo])
}

/// A `rate_limits:` block; each entry is `(name, requests, key)`, all with [`WINDOW`].
fn limits(entries: &[(&str, u32, &str)]) -> String {
    let mut block = String::from("rate_limits:\n");
    for (name, requests, key) in entries {
        block.push_str(&format!("  {name}: {{ requests: {requests}, window: {WINDOW}, key: {key} }}\n"));
    }
    block
}

/// A `redis:` block pointing at `url`. The decision timeout is raised from its 100 ms default: these
/// tests run in parallel on debug builds, and a slow answer would make a shared-counting test count
/// in-process instead (the fallback has its own tests, where Redis is down, unreachable or silent).
fn redis_block(url: &str) -> String {
    format!("redis:\n  url: {url}\n  timeout: 2s\n")
}

/// A route `name` for `path_prefix` to `echo` drawing from `limit`.
fn limited_route(name: &str, path_prefix: &str, limit: &str) -> String {
    format!("  - {{ name: {name}, match: {{ path_prefix: {path_prefix} }}, upstream: echo, rate_limit: {limit} }}\n")
}

/// One limit `shared` (`requests`, key `key`), route `limited` (`/limited`) drawing from it, and
/// [`OPEN_ROUTE`]; counted in Redis at `redis_url` when given.
fn one_limit_config(echo: &Backend, requests: u32, key: &str, redis_url: Option<&str>) -> String {
    let head = format!("{}{}", redis_url.map(redis_block).unwrap_or_default(), limits(&[("shared", requests, key)]));
    gateway_config(echo, &head, &format!("{}{OPEN_ROUTE}", limited_route("limited", "/limited", "shared")))
}

/// Provider `main` (HS256, secret in [`SECRET_ENV`]) and the `rate_limits:` block of `entries`.
fn jwt_head(entries: &[(&str, u32, &str)]) -> String {
    format!(
        "jwt:\n  providers:\n    main:\n      issuer: {ISSUER}\n      audiences: [{AUDIENCE}]\n      \
         algorithms: [HS256]\n      secret_env: {SECRET_ENV}\n{}",
        limits(entries)
    )
}

/// [`jwt_head`] with limit `per_user` (`requests` by `jwt.sub`), `/cart` (token required) and
/// `/catalog` (token optional) both drawing from it.
fn jwt_config(echo: &Backend, requests: u32) -> String {
    let routes = "  - { name: cart, match: { path_prefix: /cart }, upstream: echo, auth: { provider: main }, \
                  rate_limit: per_user }\n  \
                  - { name: catalog, match: { path_prefix: /catalog }, upstream: echo, \
                  auth: { provider: main, optional: true }, rate_limit: per_user }\n";
    gateway_config(echo, &jwt_head(&[("per_user", requests, "jwt.sub")]), routes)
}

/// A gateway on `yaml` with `key`'s secret in its environment.
fn start_with_secret(yaml: &str, key: &SigningKey) -> Gateway {
    let secret = std::str::from_utf8(key.secret().expect("an HMAC key")).expect("generated secrets are text");
    Gateway::start_with_env(yaml, &[(SECRET_ENV, secret)])
}

/// A gateway on [`jwt_config`] with `key`'s secret in its environment.
fn start_jwt_gateway(echo: &Backend, key: &SigningKey, requests: u32) -> Gateway {
    start_with_secret(&jwt_config(echo, requests), key)
}

/// A valid token for `subject`, five minutes long.
fn token_for(key: &SigningKey, subject: &str) -> String {
    key.sign(&claims(ISSUER, AUDIENCE, subject, Duration::from_secs(300)))
}

// ---------------------------------------------------------------------------------------------------
// Requests and checks
// ---------------------------------------------------------------------------------------------------

async fn get(gateway: &Gateway, path: &str) -> Reply {
    client::get(gateway.addr(), path).await
}

async fn get_bearer(gateway: &Gateway, path: &str, token: &str) -> Reply {
    client::get_with(gateway.addr(), path, &[("authorization", &format!("Bearer {token}"))]).await
}

/// Header `name` as a non-negative integer; panics (with the response) when missing or not one.
fn integer_header(reply: &Reply, name: &str, what: &str) -> u64 {
    let value = reply.header(name).unwrap_or_else(|| panic!("{what}: no {name} header; {reply:?}"));
    value.parse().unwrap_or_else(|e| panic!("{what}: {name}: {value:?} is not an integer ({e}); {reply:?}"))
}

/// Asserts `reply` is the echo's 200 with `RateLimit-Limit: limit`, `RateLimit-Remaining: remaining`
/// and an integer `RateLimit-Reset` of at most two windows.
fn assert_allowed(reply: &Reply, limit: u32, remaining: u32, what: &str) {
    assert_eq!(reply.status, 200, "{what}: body {}", reply.text());
    reply.echoed();
    assert_eq!(integer_header(reply, "ratelimit-limit", what), u64::from(limit), "{what}: RateLimit-Limit");
    assert_eq!(integer_header(reply, "ratelimit-remaining", what), u64::from(remaining), "{what}: RateLimit-Remaining");
    let reset = integer_header(reply, "ratelimit-reset", what);
    assert!(reset <= MAX_WAIT_SECS, "{what}: RateLimit-Reset {reset} is longer than two windows");
    assert!(reply.header("retry-after").is_none(), "{what}: Retry-After on an allowed request; {reply:?}");
}

/// The `RateLimit-Remaining` of an allowed reply from the echo (asserting the rest like
/// [`assert_allowed`], with `limit`).
fn allowed_remaining(reply: &Reply, limit: u32, what: &str) -> u32 {
    assert_eq!(reply.status, 200, "{what}: body {}", reply.text());
    let remaining = integer_header(reply, "ratelimit-remaining", what);
    let remaining = u32::try_from(remaining).unwrap_or_else(|_| panic!("{what}: RateLimit-Remaining {remaining}"));
    assert_allowed(reply, limit, remaining, what);
    remaining
}

/// Asserts `reply` is the gateway's 429 `rate_limited` error with `Retry-After` (>= 1, at most two
/// windows), `RateLimit-Limit: limit`, `RateLimit-Remaining: 0` and an integer `RateLimit-Reset`.
fn assert_denied(reply: &Reply, limit: u32, what: &str) {
    reply.assert_error(429, "rate_limited");
    let retry_after = integer_header(reply, "retry-after", what);
    assert!((1..=MAX_WAIT_SECS).contains(&retry_after), "{what}: Retry-After {retry_after} not in 1..={MAX_WAIT_SECS}");
    assert_eq!(integer_header(reply, "ratelimit-limit", what), u64::from(limit), "{what}: RateLimit-Limit");
    assert_eq!(integer_header(reply, "ratelimit-remaining", what), 0, "{what}: RateLimit-Remaining");
    let reset = integer_header(reply, "ratelimit-reset", what);
    assert!(reset <= MAX_WAIT_SECS, "{what}: RateLimit-Reset {reset} is longer than two windows");
}

/// Asserts `reply` is the echo's 200 without any rate-limit header.
fn assert_unlimited(reply: &Reply, what: &str) {
    assert_eq!(reply.status, 200, "{what}: body {}", reply.text());
    reply.echoed();
    for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after"] {
        assert!(reply.header(name).is_none(), "{what}: unexpected {name} header; {reply:?}");
    }
}

/// Sends `count` requests for `path` one after another; each must be allowed with `limit` and the
/// next `RateLimit-Remaining` counting down from `first_remaining`.
async fn spend(gateway: &Gateway, path: &str, limit: u32, first_remaining: u32, count: u32, what: &str) {
    for i in 0..count {
        let remaining = first_remaining - i;
        assert_allowed(&get(gateway, path).await, limit, remaining, &format!("{what}, request {}", i + 1));
    }
}

// ---------------------------------------------------------------------------------------------------
// /admin/ratelimit
// ---------------------------------------------------------------------------------------------------

/// `GET /admin/ratelimit` as JSON; panics (with the body) unless it is a 200 with a JSON object.
async fn admin_ratelimit(gateway: &Gateway) -> Value {
    let reply = client::get(gateway.admin_addr(), "/admin/ratelimit").await;
    assert_eq!(reply.status, 200, "GET /admin/ratelimit: {}", reply.text());
    let json = reply.json();
    assert!(json.is_object(), "GET /admin/ratelimit is not a JSON object: {json}");
    json
}

/// Polls `/admin/ratelimit` until `condition` holds and returns that document; panics naming
/// `what`, with the last document, after [`TIMEOUT`].
async fn admin_ratelimit_until(gateway: &Gateway, what: &str, condition: impl Fn(&Value) -> bool) -> Value {
    let what = format!("/admin/ratelimit to show {what}");
    fetch_until(&what, || admin_ratelimit(gateway), condition, |json| format!("{json:#}")).await
}

/// Waits until `/admin/ratelimit` reports Redis at `url` as connected (with no error).
async fn wait_redis_connected(gateway: &Gateway, url: &str) -> Value {
    let json =
        admin_ratelimit_until(gateway, "redis.connected = true", |json| json["redis"]["connected"] == true).await;
    assert_eq!(json["redis"]["url"], url, "redis.url in {json:#}");
    assert!(json["redis"]["last_error"].is_null(), "redis.last_error while connected in {json:#}");
    json
}

/// Waits until `/admin/ratelimit` reports Redis at `url` as not connected, with the reason.
async fn wait_redis_disconnected(gateway: &Gateway, url: &str) -> Value {
    let json = admin_ratelimit_until(gateway, "redis.connected = false with a last_error", |json| {
        json["redis"]["connected"] == false && json["redis"]["last_error"].as_str().is_some_and(|e| !e.is_empty())
    })
    .await;
    assert_eq!(json["redis"]["url"], url, "redis.url in {json:#}");
    json
}

/// The entry for limit `name` in a `/admin/ratelimit` document.
fn admin_limit<'a>(json: &'a Value, name: &str) -> &'a Value {
    let limits = json["limits"].as_array().unwrap_or_else(|| panic!("no `limits` list in {json:#}"));
    limits.iter().find(|l| l["name"] == name).unwrap_or_else(|| panic!("no limit `{name}` in {json:#}"))
}

/// Asserts limit `name` is listed with `requests`, [`WINDOW`], `key` and an integer `local_keys`;
/// returns `local_keys`.
fn assert_admin_limit(json: &Value, name: &str, requests: u32, key: &str) -> u64 {
    let limit = admin_limit(json, name);
    assert_eq!(limit["requests"], requests, "limit `{name}` requests in {json:#}");
    assert_eq!(limit["window"], WINDOW, "limit `{name}` window in {json:#}");
    assert_eq!(limit["key"], key, "limit `{name}` key in {json:#}");
    limit["local_keys"].as_u64().unwrap_or_else(|| panic!("limit `{name}` local_keys is not an integer in {json:#}"))
}

// ---------------------------------------------------------------------------------------------------
// In-process
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_client_ip_over_budget_429_and_upstream_sees_only_budget() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_limit_config(&echo, 3, "client_ip", None));

    spend(&gateway, "/limited/x", 3, 2, 3, "within the budget").await;
    for i in 1..=2 {
        assert_denied(&get(&gateway, "/limited/x").await, 3, &format!("over the budget, request {i}"));
    }
    assert_eq!(echo.stats().await.requests, 3, "the upstream saw more than the budget");

    assert_unlimited(&get(&gateway, "/open/x").await, "the route without a limit");
    assert_eq!(echo.stats().await.requests, 4, "the unlimited request reached the upstream");
}

#[tokio::test]
async fn rate_limit_admin_without_redis_reports_null_redis_and_limits() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_limit_config(&echo, 3, "client_ip", None));

    let before = admin_ratelimit(&gateway).await;
    assert!(before["redis"].is_null(), "no redis configured, in {before:#}");
    assert_eq!(before["limits"].as_array().map(Vec::len), Some(1), "one limit configured, in {before:#}");
    assert_eq!(assert_admin_limit(&before, "shared", 3, "client_ip"), 0, "local_keys before any request");

    spend(&gateway, "/limited", 3, 2, 1, "one request").await;
    let after = admin_ratelimit(&gateway).await;
    assert!(assert_admin_limit(&after, "shared", 3, "client_ip") >= 1, "local_keys after a request, in {after:#}");
}

#[tokio::test]
async fn rate_limit_jwt_sub_users_have_separate_budgets() {
    let echo = Backend::spawn("echo");
    let key = SigningKey::generate(Algorithm::HS256, "hs");
    let gateway = start_jwt_gateway(&echo, &key, 2);
    let (alice, bob) = (token_for(&key, "alice"), token_for(&key, "bob"));
    assert_admin_limit(&admin_ratelimit(&gateway).await, "per_user", 2, "jwt.sub");

    for remaining in [1, 0] {
        assert_allowed(&get_bearer(&gateway, "/cart", &alice).await, 2, remaining, "alice within her budget");
    }
    assert_denied(&get_bearer(&gateway, "/cart", &alice).await, 2, "alice over her budget");

    for remaining in [1, 0] {
        assert_allowed(&get_bearer(&gateway, "/cart", &bob).await, 2, remaining, "bob after alice spent hers");
    }
    assert_denied(&get_bearer(&gateway, "/cart", &bob).await, 2, "bob over his budget");
    assert_eq!(echo.stats().await.requests, 4, "requests that reached the upstream");
}

#[tokio::test]
async fn rate_limit_by_client_ip_counts_requests_whose_token_fails_too() {
    // Checked before the token: a flood of forged tokens from one address is limited like any other.
    let echo = Backend::spawn("echo");
    let key = SigningKey::generate(Algorithm::HS256, "hs");
    let route = "  - { name: cart, match: { path_prefix: /cart }, upstream: echo, auth: { provider: main }, \
                 rate_limit: per_ip }\n";
    let gateway = start_with_secret(&gateway_config(&echo, &jwt_head(&[("per_ip", 2, "client_ip")]), route), &key);
    let forged = SigningKey::generate(Algorithm::HS256, "hs");
    for i in 0..2 {
        let reply = get_bearer(&gateway, "/cart", &token_for(&forged, "mallory")).await;
        assert_eq!(reply.status, 401, "forged token {i}: {}", reply.text());
    }
    assert_denied(&get_bearer(&gateway, "/cart", &token_for(&forged, "mallory")).await, 2, "forged token 2");
    assert_denied(&get_bearer(&gateway, "/cart", &token_for(&key, "alice")).await, 2, "the address's budget is spent");
    assert_eq!(echo.stats().await.requests, 0);
}

#[tokio::test]
async fn rate_limit_optional_auth_without_token_counts_per_client_ip() {
    let echo = Backend::spawn("echo");
    let key = SigningKey::generate(Algorithm::HS256, "hs");
    let gateway = start_jwt_gateway(&echo, &key, 2);

    for remaining in [1, 0] {
        assert_allowed(&get(&gateway, "/catalog").await, 2, remaining, "anonymous within the address's budget");
    }
    assert_denied(&get(&gateway, "/catalog").await, 2, "anonymous over the address's budget");

    let carol = token_for(&key, "carol");
    assert_allowed(&get_bearer(&gateway, "/catalog", &carol).await, 2, 1, "carol, from the same address");
    assert_allowed(&get_bearer(&gateway, "/cart", &carol).await, 2, 0, "carol on the other route of the limit");
    assert_denied(&get_bearer(&gateway, "/catalog", &carol).await, 2, "carol over her budget");
}

#[tokio::test]
async fn rate_limit_two_routes_one_limit_share_budget() {
    let echo = Backend::spawn("echo");
    let routes = [
        limited_route("a", "/a", "shared"),
        limited_route("b", "/b", "shared"),
        limited_route("c", "/c", "other"),
        OPEN_ROUTE.to_owned(),
    ]
    .concat();
    let head = limits(&[("shared", 4, "client_ip"), ("other", 4, "client_ip")]);
    let gateway = Gateway::start(&gateway_config(&echo, &head, &routes));

    spend(&gateway, "/a", 4, 3, 2, "route a").await;
    spend(&gateway, "/b", 4, 1, 2, "route b after route a").await;
    assert_denied(&get(&gateway, "/a").await, 4, "route a, budget spent");
    assert_denied(&get(&gateway, "/b").await, 4, "route b, budget spent");

    // Same shape, same key value, different limit: its own budget.
    spend(&gateway, "/c", 4, 3, 1, "route c (limit `other`)").await;
    assert_eq!(echo.stats().await.requests, 5, "requests that reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_concurrent_requests_allow_exactly_budget() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_limit_config(&echo, 5, "client_ip", None));

    // One connection each, so they spread over the gateway's workers.
    let replies = join_all((0..20).map(|_| get(&gateway, "/limited"))).await;

    assert_exact_budget(&replies, 5, "20 concurrent requests");
    assert_eq!(echo.stats().await.requests, 5, "requests that reached the upstream");
}

/// Asserts `replies` hold exactly `limit` allowed ones (with `RateLimit-Remaining` `limit - 1` down
/// to 0, each once) and denials for the rest.
fn assert_exact_budget(replies: &[Reply], limit: u32, what: &str) {
    let mut remaining: Vec<u32> = Vec::new();
    for (i, reply) in replies.iter().enumerate() {
        let what = format!("{what}, reply {i}");
        if reply.status == 429 {
            assert_denied(reply, limit, &what);
        } else {
            remaining.push(allowed_remaining(reply, limit, &what));
        }
    }
    remaining.sort_unstable();
    assert_eq!(remaining, (0..limit).collect::<Vec<_>>(), "{what}: RateLimit-Remaining of the allowed replies");
}

// ---------------------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn rate_limit_redis_two_gateways_share_budget() {
    let redis = RedisServer::start();
    let echo = Backend::spawn("echo");
    let yaml = one_limit_config(&echo, 5, "global", Some(&redis.url()));
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    let json = wait_redis_connected(&a, &redis.url()).await;
    assert_admin_limit(&json, "shared", 5, "global");
    wait_redis_connected(&b, &redis.url()).await;

    spend(&a, "/limited", 5, 4, 3, "gateway A").await;
    spend(&b, "/limited", 5, 1, 2, "gateway B after A").await;
    assert_denied(&get(&a, "/limited").await, 5, "gateway A, shared budget spent");
    assert_denied(&get(&b, "/limited").await, 5, "gateway B, shared budget spent");

    assert_eq!(echo.stats().await.requests, 5, "requests that reached the upstream");
    assert!(counters(&redis) > 0, "the counts are not in Redis: it holds no counter");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_redis_concurrent_requests_across_gateways_allow_exactly_budget() {
    let redis = RedisServer::start();
    let echo = Backend::spawn("echo");
    let yaml = one_limit_config(&echo, 6, "client_ip", Some(&redis.url()));
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    wait_redis_connected(&a, &redis.url()).await;
    wait_redis_connected(&b, &redis.url()).await;

    let replies = join_all((0..24).map(|i| get(if i % 2 == 0 { &a } else { &b }, "/limited"))).await;

    assert_exact_budget(&replies, 6, "24 concurrent requests over two gateways");
    assert_eq!(echo.stats().await.requests, 6, "requests that reached the upstream");
}

/// `rediss://`: counted in Redis over TLS, the server verified against `redis.ca`. A server the
/// gateway cannot verify is an outage that says why, and the in-process limiter decides meanwhile.
#[tokio::test]
async fn rate_limit_redis_over_tls_counts_in_redis_and_refuses_an_unverified_server() {
    let files = ConfigDir::new("");
    let ca = e2e::tls::TestCa::new("e2e redis CA");
    let ca_file = ca.write(files.path().parent().expect("a config dir"), "redis-ca.crt");
    let (cert, key) = ca.issue(&["127.0.0.1"]).write(files.path().parent().expect("a config dir"), "redis");
    let redis = RedisServer::with_tls(&cert, &key);
    let echo = Backend::spawn("echo");
    let url = redis.tls_url();
    let head = format!(
        "redis:\n  url: {url}\n  ca: {}\n  timeout: 2s\n{}",
        ca_file.display(),
        limits(&[("shared", 3, "global")])
    );
    let routes = format!("{}{OPEN_ROUTE}", limited_route("limited", "/limited", "shared"));
    let gateway = Gateway::start(&gateway_config(&echo, &head, &routes));
    wait_redis_connected(&gateway, &url).await;
    spend(&gateway, "/limited", 3, 2, 3, "over TLS").await;
    assert_denied(&get(&gateway, "/limited").await, 3, "over TLS, budget spent");
    assert!(counters(&redis) > 0, "the counts are not in Redis: it holds no counter");

    // Without `ca` the server's certificate is checked against the Mozilla roots, and fails.
    let head = format!("redis:\n  url: {url}\n  timeout: 2s\n{}", limits(&[("shared", 3, "global")]));
    let untrusting = Gateway::start(&gateway_config(&echo, &head, &routes));
    let json = wait_redis_disconnected(&untrusting, &url).await;
    let error = json["redis"]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("invalid peer certificate: UnknownIssuer"), "last_error should say why: {json:#}");
    assert_eq!(get(&untrusting, "/limited").await.status, 200, "decided in-process meanwhile");
}

/// `cluster: true`: counted in a Redis Cluster, one budget shared by two gateways. The limits'
/// counters hash to slots on each of the three nodes (`four` on the first, `two` the second, `one`
/// the third), and requests for all three go at once, so batches span nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_redis_cluster_budgets_span_nodes_and_are_shared_exactly() {
    let cluster = RedisCluster::start();
    let echo = Backend::spawn("echo");
    let names = ["four", "two", "one"];
    let head = format!(
        "redis:\n  url: {}\n  cluster: true\n  timeout: 2s\n{}",
        cluster.url(),
        limits(&names.map(|name| (name, 4, "global")))
    );
    let routes: String = names.iter().map(|name| limited_route(name, &format!("/{name}"), name)).collect();
    let yaml = gateway_config(&echo, &head, &routes);
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    wait_redis_connected(&a, &cluster.url()).await;
    wait_redis_connected(&b, &cluster.url()).await;

    let asks = (0..36).map(|i| get(if i % 2 == 0 { &a } else { &b }, ["/four", "/two", "/one"][i % 3]));
    let mut by_limit: [Vec<Reply>; 3] = Default::default();
    for (i, reply) in join_all(asks).await.into_iter().enumerate() {
        by_limit[i % 3].push(reply);
    }
    for (replies, name) in by_limit.iter().zip(names) {
        assert_exact_budget(replies, 4, &format!("12 concurrent requests for limit {name} over two gateways"));
    }
    assert_eq!(echo.stats().await.requests, 12, "requests that reached the upstream");
    let counts = cluster.key_counts();
    assert!(counts.iter().all(|&keys| keys > 0), "counters on every node, keys per node: {counts:?}");
}

/// A cluster node that is down fails only its own keys' calls: those are decided in-process, and
/// the budgets on the other nodes stay shared in Redis (a new cluster connection would need every
/// node, so the one there is kept).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limit_redis_cluster_node_down_leaves_the_other_nodes_counting() {
    let mut cluster = RedisCluster::start();
    let echo = Backend::spawn("echo");
    // `four` counts on the first node (which `url` names), `two` on the second; the probe's key
    // is on the third.
    let head = format!(
        "redis:\n  url: {}\n  cluster: true\n  timeout: 2s\n{}",
        cluster.url(),
        limits(&[("four", 4, "global"), ("two", 4, "global")])
    );
    let routes = format!("{}{}", limited_route("four", "/four", "four"), limited_route("two", "/two", "two"));
    let yaml = gateway_config(&echo, &head, &routes);
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    wait_redis_connected(&a, &cluster.url()).await;
    wait_redis_connected(&b, &cluster.url()).await;

    cluster.stop_node(1);
    // As many failed calls in a row as drop a connection to one server.
    for i in 0..3 {
        assert_eq!(get(&a, "/two").await.status, 200, "request {i} for the down node's key, decided in-process");
    }
    let replies = join_all((0..12).map(|i| get(if i % 2 == 0 { &a } else { &b }, "/four"))).await;
    assert_exact_budget(&replies, 4, "12 concurrent requests over two gateways, one node down");
    let json = admin_ratelimit(&a).await;
    assert_eq!(json["redis"]["connected"], true, "{json:#}");
}

/// How many counters `redis` holds: its keys but the gateways' probe (`gw:rl:probe`, kept while
/// they are connected).
fn counters(redis: &RedisServer) -> u64 {
    // The probe first: it may appear between the two, never disappear.
    let probe: u64 = redis.command(&["EXISTS", "gw:rl:probe"]).parse().unwrap_or(0);
    redis.key_count().saturating_sub(probe)
}

/// Redis at `redis`, limit `shared` (4 per client address) on `/limited`: two gateways, both
/// connected, and the echo behind them.
async fn two_gateways_on(redis: &RedisServer) -> (Gateway, Gateway, Backend) {
    let echo = Backend::spawn("echo");
    let yaml = one_limit_config(&echo, 4, "client_ip", Some(&redis.url()));
    let (a, b) = (Gateway::start(&yaml), Gateway::start(&yaml));
    wait_redis_connected(&a, &redis.url()).await;
    wait_redis_connected(&b, &redis.url()).await;
    (a, b, echo)
}

#[tokio::test]
async fn rate_limit_redis_stopped_counts_in_process_then_reconnects_and_shares() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (a, b, echo) = two_gateways_on(&redis).await;

    redis.stop();
    // Every request is answered, by each instance's in-process limit with the same budget: never a 5xx.
    spend(&a, "/limited", 4, 3, 4, "gateway A, Redis down").await;
    assert_denied(&get(&a, "/limited").await, 4, "gateway A, Redis down, in-process budget spent");
    wait_redis_disconnected(&a, &url).await;
    spend(&b, "/limited", 4, 3, 1, "gateway B, Redis down (its own in-process budget)").await;
    wait_redis_disconnected(&b, &url).await;
    assert_eq!(echo.stats().await.requests, 5, "requests that reached the upstream while Redis was down");

    redis.restart();
    wait_redis_connected(&a, &url).await;
    wait_redis_connected(&b, &url).await;
    // Counted in (the restarted, empty) Redis again: A's in-process spending is not what decides,
    // and B sees A's requests.
    spend(&a, "/limited", 4, 3, 3, "gateway A, Redis back").await;
    spend(&b, "/limited", 4, 0, 1, "gateway B after A, Redis back").await;
    assert_denied(&get(&b, "/limited").await, 4, "gateway B, shared budget spent");
    assert_denied(&get(&a, "/limited").await, 4, "gateway A, shared budget spent");
    assert_eq!(echo.stats().await.requests, 9, "requests that reached the upstream");
    assert!(counters(&redis) > 0, "the counts are not in Redis: it holds no counter");
}

/// A gateway that has no traffic while Redis is down notices the outage by itself (a PING every
/// second), so it never reports `connected` on a dead connection: once `/admin/ratelimit` says
/// connected again, its requests are counted in Redis.
#[tokio::test]
async fn rate_limit_redis_outage_idle_gateway_counts_in_redis_once_connected() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let (a, b, _echo) = two_gateways_on(&redis).await;

    redis.stop();
    spend(&a, "/limited", 4, 3, 1, "gateway A, Redis down").await;
    wait_redis_disconnected(&a, &url).await;
    wait_redis_disconnected(&b, &url).await;
    redis.restart();
    wait_redis_connected(&a, &url).await;
    wait_redis_connected(&b, &url).await;

    spend(&a, "/limited", 4, 3, 3, "gateway A, Redis back").await;
    spend(&b, "/limited", 4, 0, 1, "gateway B (idle during the outage) after A, Redis back").await;
    assert_denied(&get(&b, "/limited").await, 4, "gateway B, shared budget spent");
}

#[tokio::test]
async fn rate_limit_redis_unreachable_at_start_limits_in_process() {
    let echo = Backend::spawn("echo");
    let url = format!("redis://{}", closed_port_addr());
    let gateway = Gateway::start(&one_limit_config(&echo, 3, "client_ip", Some(&url)));

    assert_eq!(client::get(gateway.admin_addr(), "/readyz").await.status, 200, "/readyz without Redis");
    spend(&gateway, "/limited", 3, 2, 3, "Redis unreachable").await;
    assert_denied(&get(&gateway, "/limited").await, 3, "Redis unreachable, in-process budget spent");
    assert_eq!(echo.stats().await.requests, 3, "requests that reached the upstream");
    assert_unlimited(&get(&gateway, "/open").await, "the route without a limit");

    let json = wait_redis_disconnected(&gateway, &url).await;
    assert_admin_limit(&json, "shared", 3, "client_ip");
}

#[tokio::test]
async fn rate_limit_redis_silent_server_limits_in_process() {
    // Accepts connections (the kernel completes the handshake) but never answers a command.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding port 0: {e}"));
    let addr = silent.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
    let echo = Backend::spawn("echo");
    // The default decision timeout (100 ms): each request waits that long at most, then the
    // in-process limit decides.
    let head = format!("redis:\n  url: redis://{addr}\n{}", limits(&[("shared", 3, "client_ip")]));
    let routes = format!("{}{OPEN_ROUTE}", limited_route("limited", "/limited", "shared"));
    let gateway = Gateway::start(&gateway_config(&echo, &head, &routes));

    assert_eq!(client::get(gateway.admin_addr(), "/readyz").await.status, 200, "/readyz with a silent Redis");
    spend(&gateway, "/limited", 3, 2, 3, "Redis silent").await;
    assert_denied(&get(&gateway, "/limited").await, 3, "Redis silent, in-process budget spent");
    assert_eq!(echo.stats().await.requests, 3, "requests that reached the upstream");
    drop(silent);
}

/// The gateway's log lines from the Redis store at `level` (`WARN`, `INFO`).
fn redis_log_lines(gateway: &Gateway, level: &str) -> Vec<String> {
    let stderr = gateway.stderr();
    let lines = stderr.lines().filter(|line| line.contains(&format!(" {level} ")) && line.contains("limit::redis"));
    lines.map(str::to_owned).collect()
}

/// Asserts the Redis store logged exactly one warning, naming `code`, and returns it. Waits for
/// the first: the connection task logs the outage just after `/admin` shows it.
async fn assert_one_redis_warning(gateway: &Gateway, code: &str) -> String {
    e2e::eventually("the Redis outage warning", || async { !redis_log_lines(gateway, "WARN").is_empty() }).await;
    let warnings = redis_log_lines(gateway, "WARN");
    assert_eq!(warnings.len(), 1, "one warning for the outage; stderr:\n{}", gateway.stderr());
    assert!(warnings[0].contains(code), "the warning names {code}: {}", warnings[0]);
    warnings[0].clone()
}

/// Waits until `/admin/ratelimit` reports the outage with `code` in `last_error`, and asserts
/// `/metrics` agrees.
async fn wait_redis_refusing(gateway: &Gateway, url: &str, code: &str) {
    let json = wait_redis_disconnected(gateway, url).await;
    let last_error = json["redis"]["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains(code), "last_error names {code} in {json:#}");
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    assert!(metrics.lines().any(|line| line == "gateway_redis_connected 0"), "{metrics}");
}

/// A Redis that answers every call with an error (here a read-only replica) cannot count: an
/// outage like an unreachable one, warned once and shown, not a silent fallback on every request.
#[tokio::test]
async fn rate_limit_redis_read_only_replica_is_a_reported_outage() {
    let redis = RedisServer::start();
    let url = redis.url();
    let (a, _b, echo) = two_gateways_on(&redis).await;
    let nowhere = closed_port_addr().port().to_string();
    assert_eq!(redis.command(&["REPLICAOF", "127.0.0.1", &nowhere]), "OK");

    spend(&a, "/limited", 4, 3, 4, "gateway A, Redis read-only").await;
    assert_denied(&get(&a, "/limited").await, 4, "gateway A, Redis read-only, in-process budget spent");
    wait_redis_refusing(&a, &url, "READONLY").await;
    assert_eq!(echo.stats().await.requests, 4, "requests that reached the upstream");

    assert_eq!(redis.command(&["REPLICAOF", "NO", "ONE"]), "OK");
    wait_redis_connected(&a, &url).await;
    assert_one_redis_warning(&a, "READONLY").await;
    // The recovery is logged once: the first connect and this one (read as the log catches up).
    let connects = || redis_log_lines(&a, "INFO").iter().filter(|l| l.contains("connected to Redis")).count();
    e2e::eventually("the recovery logged", || async { connects() >= 2 }).await;
    assert_eq!(connects(), 2, "stderr:\n{}", a.stderr());
}

/// Without the password the server requires, the gateway never reports Redis connected and warns
/// once: it used to flap between `connected to Redis` and `lost the connection ... NOAUTH`.
#[tokio::test]
async fn rate_limit_redis_without_required_password_warns_once_and_never_connects() {
    let redis = RedisServer::with_password("needed-pw");
    let echo = Backend::spawn("echo");
    let url = format!("redis://{}", redis.addr());
    let gateway = Gateway::start(&one_limit_config(&echo, 3, "client_ip", Some(&url)));

    wait_redis_refusing(&gateway, &url, "NOAUTH").await;
    spend(&gateway, "/limited", 3, 2, 3, "Redis refuses").await;
    assert_denied(&get(&gateway, "/limited").await, 3, "Redis refuses, in-process budget spent");
    admin_ratelimit_until(&gateway, "4 decisions in-process", |json| {
        admin_limit(json, "shared")["fallback_decisions"] == 4
    })
    .await;
    wait_redis_refusing(&gateway, &url, "NOAUTH").await;
    assert!(redis_log_lines(&gateway, "INFO").is_empty(), "never connected; stderr:\n{}", gateway.stderr());
    assert_one_redis_warning(&gateway, "NOAUTH").await;
}

/// [`jwt_head`] counted in Redis at `url`: limit `per_user` (`requests` by `jwt.sub`) on `/cart`.
fn jwt_redis_config(echo: &Backend, url: &str, requests: u32) -> String {
    let head = format!("{}{}", redis_block(url), jwt_head(&[("per_user", requests, "jwt.sub")]));
    let route = "  - { name: cart, match: { path_prefix: /cart }, upstream: echo, auth: { provider: main }, \
                 rate_limit: per_user }\n";
    gateway_config(echo, &head, route)
}

/// A Redis that counts but refuses the expiries after (an ACL without PEXPIRE) is reported once
/// and shown, not warned about once per call while `last_error` stays empty.
#[tokio::test]
async fn rate_limit_redis_refusing_expiries_is_one_warned_outage() {
    let redis = RedisServer::start();
    let url = redis.url();
    let echo = Backend::spawn("echo");
    let key = SigningKey::generate(Algorithm::HS256, "hs");
    let gateway = start_with_secret(&jwt_redis_config(&echo, &url, 5), &key);
    wait_redis_connected(&gateway, &url).await;
    assert_eq!(redis.command(&["ACL", "SETUSER", "default", "-pexpire"]), "OK");

    // Each user's first request creates a counter, whose expiry is refused.
    for user in 0..20 {
        let token = token_for(&key, &format!("user-{user}"));
        assert_allowed(&get_bearer(&gateway, "/cart", &token).await, 5, 4, &format!("user {user}"));
    }
    wait_redis_refusing(&gateway, &url, "NOPERM").await;
    assert_one_redis_warning(&gateway, "NOPERM").await;

    assert_eq!(redis.command(&["ACL", "SETUSER", "default", "+pexpire"]), "OK");
    wait_redis_connected(&gateway, &url).await;
    assert_eq!(echo.stats().await.requests, 20, "requests that reached the upstream");
}

// ---------------------------------------------------------------------------------------------------
// Reload
// ---------------------------------------------------------------------------------------------------

/// [`one_limit_config`] (client address, in-process) with the unlimited route at `open_path`.
fn reload_config(echo: &Backend, requests: u32, open_path: &str) -> String {
    let routes = format!(
        "{}  - {{ name: open, match: {{ path_prefix: {open_path} }}, upstream: echo }}\n",
        limited_route("limited", "/limited", "shared")
    );
    gateway_config(echo, &limits(&[("shared", requests, "client_ip")]), &routes)
}

#[tokio::test]
async fn rate_limit_reload_other_route_changed_keeps_spent_budget() {
    let echo = Backend::spawn("echo");
    let dir = ConfigDir::new(&reload_config(&echo, 3, "/open"));
    let gateway = Gateway::start_with_file(dir.path());
    spend(&gateway, "/limited", 3, 2, 3, "before the reload").await;
    assert_denied(&get(&gateway, "/limited").await, 3, "before the reload, budget spent");

    let changed = reload_config(&echo, 3, "/elsewhere");
    dir.replace(&changed);
    gateway.wait_for_version(&config_version(&changed)).await;

    assert_unlimited(&get(&gateway, "/elsewhere").await, "the changed route, after the reload");
    assert_denied(&get(&gateway, "/limited").await, 3, "after a reload that left the limit unchanged");
    assert_eq!(echo.stats().await.requests, 4, "requests that reached the upstream");
}

#[tokio::test]
async fn rate_limit_reload_raised_requests_applies_new_budget() {
    let echo = Backend::spawn("echo");
    let dir = ConfigDir::new(&reload_config(&echo, 2, "/open"));
    let gateway = Gateway::start_with_file(dir.path());
    spend(&gateway, "/limited", 2, 1, 2, "before the reload").await;
    assert_denied(&get(&gateway, "/limited").await, 2, "before the reload, budget spent");

    let raised = reload_config(&echo, 5, "/open");
    dir.replace(&raised);
    gateway.wait_for_version(&config_version(&raised)).await;
    assert_admin_limit(&admin_ratelimit(&gateway).await, "shared", 5, "client_ip");

    // The new budget applies at once; whether the two requests spent before count against it is
    // the gateway's choice (3 or 5 left), but the remainder counts down to 0 and then denies.
    let first = allowed_remaining(&get(&gateway, "/limited").await, 5, "first request after the reload");
    assert!((2..=4).contains(&first), "RateLimit-Remaining {first} after raising the budget from 2 to 5");
    for remaining in (0..first).rev() {
        assert_allowed(&get(&gateway, "/limited").await, 5, remaining, "after the reload");
    }
    assert_denied(&get(&gateway, "/limited").await, 5, "after the reload, new budget spent");
    assert_eq!(echo.stats().await.requests, 2 + u64::from(first) + 1, "requests that reached the upstream");
}
