use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

use super::Router;
use crate::config::{HostMatch, PathMatch, Rewrite, Route, RouteMatch};

fn route(name: &str, host: Option<&str>, path: &str, methods: &[&str], headers: &[(&str, &str)]) -> Route {
    let host = host.map(|h| match h.strip_prefix('*') {
        Some(suffix) => HostMatch::Suffix(suffix.to_string()),
        None => HostMatch::Exact(h.to_string()),
    });
    let path = match path.strip_prefix('=') {
        Some(exact) => PathMatch::Exact(exact.to_string()),
        None => PathMatch::Prefix(path.to_string()),
    };
    Route {
        name: name.to_string(),
        matcher: RouteMatch {
            host,
            path,
            methods: methods.iter().map(|m| Method::from_bytes(m.as_bytes()).unwrap()).collect(),
            headers: headers
                .iter()
                .map(|(n, v)| (HeaderName::from_bytes(n.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap()))
                .collect(),
        },
        upstream: "u".to_string(),
        rewrite: Rewrite::None,
        auth: None,
        rate_limit: None,
        timeout: Some(Duration::from_secs(1)),
        preserve_host: true,
        allow_encoded_slashes: false,
        max_body_size: 1024,
    }
}

fn table() -> Vec<Route> {
    vec![
        route("root", None, "/", &[], &[]),
        route("api", None, "/api", &[], &[]),
        route("api-v1", None, "/api/v1", &[], &[]),
        route("api-v1-users-exact", None, "=/api/v1/users", &[], &[]),
        route("api-post", None, "/api", &["POST"], &[]),
        route("api-canary", None, "/api", &[], &[("x-canary", "1")]),
        route("api-first", None, "/api/tie", &[], &[]),
        route("api-second", None, "/api/tie", &[], &[]),
        route("shop-any", Some("*.shop.test"), "/", &[], &[]),
        route("shop-eu", Some("*.eu.shop.test"), "/", &[], &[]),
        route("admin-host", Some("admin.shop.test"), "/", &[], &[]),
        route("admin-host-get", Some("admin.shop.test"), "/stats", &["GET"], &[]),
    ]
}

#[test]
fn find_precedence_table_most_specific_wins() {
    let routes = table();
    let router = Router::new(&routes);
    // (method, host, path, headers, expected route)
    type Case<'a> = (&'a str, Option<&'a str>, &'a str, &'a [(&'a str, &'a str)], &'a str);
    let cases: &[Case] = &[
        ("GET", None, "/", &[], "root"),
        ("GET", None, "/apix", &[], "root"),
        ("GET", None, "/api", &[], "api"),
        ("GET", None, "/api/", &[], "api"),
        ("GET", None, "/api/other", &[], "api"),
        ("GET", None, "/api/v1", &[], "api-v1"),
        ("GET", None, "/api/v1/x", &[], "api-v1"),
        ("GET", None, "/api/v1/users", &[], "api-v1-users-exact"),
        ("GET", None, "/api/v1/users/7", &[], "api-v1"),
        ("POST", None, "/api/x", &[], "api-post"),
        ("POST", None, "/api/x", &[("x-canary", "1")], "api-post"),
        ("GET", None, "/api/x", &[("x-canary", "1")], "api-canary"),
        ("GET", None, "/api/x", &[("x-canary", "2")], "api"),
        ("GET", None, "/api/tie", &[], "api-first"),
        ("GET", Some("www.shop.test"), "/api", &[], "shop-any"),
        ("GET", Some("WWW.Shop.Test:8080"), "/api", &[], "shop-any"),
        // A fully qualified name's trailing dot names the same host.
        ("GET", Some("admin.shop.test."), "/api", &[], "admin-host"),
        ("GET", Some("www.shop.test.:8080"), "/api", &[], "shop-any"),
        ("GET", Some("a.eu.shop.test"), "/", &[], "shop-eu"),
        ("GET", Some("shop.test"), "/api", &[], "api"),
        ("GET", Some("admin.shop.test"), "/api", &[], "admin-host"),
        ("GET", Some("admin.shop.test"), "/stats", &[], "admin-host-get"),
        ("POST", Some("admin.shop.test"), "/stats", &[], "admin-host"),
        ("GET", Some("other.test"), "/api/v1", &[], "api-v1"),
    ];
    for (method, host, path, headers, expected) in cases {
        let mut map = HeaderMap::new();
        for (n, v) in headers.iter() {
            map.insert(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let found = router.find(*host, path, &method, &map).map(|i| routes[i].name.as_str());
        assert_eq!(found, Some(*expected), "{method} host={host:?} path={path} headers={headers:?}");
    }
}

/// Upstreams may read any of a header's values, trimmed: a route gated on one must hold whichever
/// of them carries it, or `x-canary: 2` then `x-canary: 1` would reach the catch-all with a `1`.
#[test]
fn find_header_condition_holds_on_any_value_trimmed() {
    let routes = table();
    let router = Router::new(&routes);
    let find = |values: &[&'static str]| {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(HeaderName::from_static("x-canary"), HeaderValue::from_static(v));
        }
        router.find(None, "/api/x", &Method::GET, &map).map(|i| routes[i].name.as_str())
    };
    assert_eq!(find(&["1"]), Some("api-canary"));
    assert_eq!(find(&["2", "1"]), Some("api-canary"));
    assert_eq!(find(&[" 1"]), Some("api-canary"));
    assert_eq!(find(&["1\t"]), Some("api-canary"));
    assert_eq!(find(&["2", "3"]), Some("api"));
    assert_eq!(find(&["1, 2"]), Some("api"), "one value, not this one");
}

#[test]
fn find_without_catch_all_returns_none() {
    let routes = vec![route("api", None, "/api", &["GET"], &[])];
    let router = Router::new(&routes);
    assert_eq!(router.find(None, "/apix", &Method::GET, &HeaderMap::new()), None);
    assert_eq!(router.find(None, "/api", &Method::POST, &HeaderMap::new()), None);
    assert_eq!(router.find(None, "/", &Method::GET, &HeaderMap::new()), None);
    assert_eq!(router.find(None, "", &Method::GET, &HeaderMap::new()), None);
}

#[test]
fn find_paths_longer_than_every_prefix() {
    // Probes start at the longest prefix's length: at a segment boundary, or the one before it.
    let routes = vec![route("api", None, "/api", &[], &[]), route("root-exact", None, "=/", &[], &[])];
    let router = Router::new(&routes);
    let find = |path| router.find(None, path, &Method::GET, &HeaderMap::new());
    assert_eq!(find("/api/v1/users/7"), Some(0));
    assert_eq!(find("/api/"), Some(0));
    assert_eq!(find("/api"), Some(0));
    assert_eq!(find("/apix/y"), None);
    assert_eq!(find("/a/api"), None);
    assert_eq!(find("/ap"), None);
    assert_eq!(find("/\u{e9}\u{e9}/api"), None);
    assert_eq!(find("/"), Some(1));

    let only_root = vec![route("root", None, "/", &[], &[])];
    let router = Router::new(&only_root);
    assert_eq!(router.find(None, "/bytes/256", &Method::GET, &HeaderMap::new()), Some(0));
    assert_eq!(router.find(None, "/\u{e9}", &Method::GET, &HeaderMap::new()), Some(0));
}

#[test]
fn find_host_route_falls_back_to_any_host_when_its_paths_miss() {
    let routes = vec![route("host-api", Some("a.test"), "/api", &[], &[]), route("any", None, "/", &[], &[])];
    let router = Router::new(&routes);
    assert_eq!(router.find(Some("a.test"), "/other", &Method::GET, &HeaderMap::new()), Some(1));
    assert_eq!(router.find(Some("a.test"), "/api/x", &Method::GET, &HeaderMap::new()), Some(0));
}

#[test]
fn find_wildcard_does_not_match_bare_domain() {
    let routes = vec![route("wild", Some("*.shop.test"), "/", &[], &[])];
    let router = Router::new(&routes);
    assert_eq!(router.find(Some("shop.test"), "/", &Method::GET, &HeaderMap::new()), None);
    assert_eq!(router.find(Some("xshop.test"), "/", &Method::GET, &HeaderMap::new()), None);
    assert_eq!(router.find(Some("a.shop.test"), "/", &Method::GET, &HeaderMap::new()), Some(0));
}
