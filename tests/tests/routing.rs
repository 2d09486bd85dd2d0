//! Route selection (most specific wins, file order breaks ties) and path rewriting.

use e2e::client::{self, empty, request};
use e2e::{config, one_route_config, raw, Backend, Gateway};

/// Routes listed so that file order alone would often pick the wrong one: the table below only passes if
/// the gateway ranks by specificity. `tie-first` / `tie-second` have equal specificity and overlap
/// without shadowing each other (different header names), so both requests with both headers go to
/// the first in file order.
const PRECEDENCE_ROUTES: &str = r#"
upstreams:
  fallback: { endpoints: ["${fallback}"] }
  api: { endpoints: ["${api}"] }
  api_users: { endpoints: ["${api_users}"] }
  exact: { endpoints: ["${exact}"] }
  methods: { endpoints: ["${methods}"] }
  headers: { endpoints: ["${headers}"] }
  headers_two: { endpoints: ["${headers_two}"] }
  host_exact: { endpoints: ["${host_exact}"] }
  wild_short: { endpoints: ["${wild_short}"] }
  wild_long: { endpoints: ["${wild_long}"] }
  tie_first: { endpoints: ["${tie_first}"] }
  tie_second: { endpoints: ["${tie_second}"] }
routes:
  - name: fallback
    upstream: fallback
  - name: api
    match: { path_prefix: /api }
    upstream: api
  - name: headers
    match: { path_prefix: /api/users, headers: { x-version: "2" } }
    upstream: headers
  - name: headers-two
    match: { path_prefix: /api/users, headers: { x-version: "2", x-beta: "yes" } }
    upstream: headers_two
  - name: methods
    match: { path_prefix: /api/users, methods: [POST, PUT] }
    upstream: methods
  - name: api-users
    match: { path_prefix: /api/users }
    upstream: api_users
  - name: api-users-me
    match: { path: /api/users/me }
    upstream: exact
  - name: wild-short
    match: { host: "*.example.com" }
    upstream: wild_short
  - name: wild-long
    match: { host: "*.eu.example.com" }
    upstream: wild_long
  - name: host-exact
    match: { host: api.example.com, path_prefix: /api }
    upstream: host_exact
  - name: tie-first
    match: { path_prefix: /tie, headers: { x-a: "1" } }
    upstream: tie_first
  - name: tie-second
    match: { path_prefix: /tie, headers: { x-b: "1" } }
    upstream: tie_second
"#;

/// (method, host, path, headers, backend that must answer).
type Row = (&'static str, &'static str, &'static str, &'static [(&'static str, &'static str)], &'static str);

const PRECEDENCE_TABLE: &[Row] = &[
    ("GET", "gw.test", "/", &[], "fallback"),
    ("GET", "gw.test", "/anything/else", &[], "fallback"),
    ("GET", "gw.test", "/api", &[], "api"),
    ("GET", "gw.test", "/api/", &[], "api"),
    ("GET", "gw.test", "/api?q=1", &[], "api"),
    ("GET", "gw.test", "/api/orders", &[], "api"),
    ("GET", "gw.test", "/apix", &[], "fallback"),
    ("GET", "gw.test", "/api/usersx", &[], "api"),
    ("GET", "gw.test", "/api/users", &[], "api_users"),
    ("GET", "gw.test", "/api/users/42", &[], "api_users"),
    ("GET", "gw.test", "/api/users/me", &[], "exact"),
    ("GET", "gw.test", "/api/users/me?x=1", &[], "exact"),
    ("GET", "gw.test", "/api/users/me/more", &[], "api_users"),
    ("POST", "gw.test", "/api/users/42", &[], "methods"),
    ("PUT", "gw.test", "/api/users", &[], "methods"),
    ("DELETE", "gw.test", "/api/users/42", &[], "api_users"),
    ("POST", "gw.test", "/api/users/me", &[], "exact"),
    ("GET", "gw.test", "/api/users/42", &[("x-version", "2")], "headers"),
    ("GET", "gw.test", "/api/users/42", &[("x-version", "3")], "api_users"),
    ("GET", "gw.test", "/api/users/42", &[("x-version", "2"), ("x-beta", "yes")], "headers_two"),
    ("GET", "gw.test", "/api/users/42", &[("x-beta", "yes")], "api_users"),
    ("POST", "gw.test", "/api/users/42", &[("x-version", "2"), ("x-beta", "yes")], "methods"),
    ("GET", "gw.test", "/api/orders", &[("x-version", "2")], "api"),
    ("GET", "api.example.com", "/api/users/me", &[], "host_exact"),
    ("POST", "api.example.com", "/api/users/42", &[], "host_exact"),
    ("GET", "API.Example.COM:8080", "/api/x", &[], "host_exact"),
    ("GET", "api.example.com", "/other", &[], "wild_short"),
    ("GET", "api.example.com", "/apix", &[], "wild_short"),
    ("GET", "a.eu.example.com", "/api/users/me", &[], "wild_long"),
    ("GET", "x.y.eu.example.com", "/", &[], "wild_long"),
    ("GET", "a.us.example.com", "/", &[], "wild_short"),
    ("GET", "eu.example.com", "/", &[], "wild_short"),
    ("GET", "example.com", "/", &[], "fallback"),
    ("GET", "notexample.com", "/", &[], "fallback"),
    ("GET", "gw.test", "/tie", &[("x-a", "1"), ("x-b", "1")], "tie_first"),
    ("GET", "gw.test", "/tie/x", &[("x-b", "1"), ("x-a", "1")], "tie_first"),
    ("GET", "gw.test", "/tie", &[("x-a", "1")], "tie_first"),
    ("GET", "gw.test", "/tie", &[("x-b", "1")], "tie_second"),
    ("GET", "gw.test", "/tie", &[], "fallback"),
    // A header named in `Connection` goes no further than the gateway: no condition holds on it.
    ("GET", "gw.test", "/tie", &[("x-a", "1"), ("connection", "x-a")], "fallback"),
    ("GET", "gw.test", "/tie", &[("x-a", "1"), ("x-b", "1"), ("connection", "x-a")], "tie_second"),
];

#[tokio::test]
async fn routing_precedence_table_picks_most_specific_route() {
    let names = [
        "fallback",
        "api",
        "api_users",
        "exact",
        "methods",
        "headers",
        "headers_two",
        "host_exact",
        "wild_short",
        "wild_long",
        "tie_first",
        "tie_second",
    ];
    let backends: Vec<Backend> = names.iter().map(|name| Backend::spawn(name)).collect();
    let gateway = Gateway::start(&config(PRECEDENCE_ROUTES, &backends.iter().collect::<Vec<_>>()));

    let mut mismatches = Vec::new();
    for (method, host, path, headers, expected) in PRECEDENCE_TABLE {
        let mut builder = request(method, path).header("host", *host);
        for (name, value) in *headers {
            builder = builder.header(*name, *value);
        }
        let reply = client::send(gateway.addr(), builder.body(empty()).unwrap()).await;
        let got = reply
            .header("x-backend")
            .map_or_else(|| format!("<status {}: {}>", reply.status, reply.text()), str::to_owned);
        if got != *expected {
            mismatches.push(format!("{method} {host} {path} {headers:?}: expected {expected}, got {got}"));
        } else {
            assert_eq!(reply.echoed().path, *path, "path forwarded unchanged");
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} rows wrong:\n{}",
        mismatches.len(),
        PRECEDENCE_TABLE.len(),
        mismatches.join("\n")
    );
}

#[tokio::test]
async fn routing_no_matching_route_returns_404_no_route_json() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "match: { path_prefix: /api }"));

    for path in ["/apix", "/", "/ap", "/other/api"] {
        let reply = client::get(gateway.addr(), path).await;
        reply.assert_error(404, "no_route");
    }
    assert_eq!(echo.stats().await.requests, 0, "nothing reaches the upstream");
}

#[tokio::test]
async fn routing_prefix_is_segment_aware() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "match: { path_prefix: /api }"));

    for path in ["/api", "/api/", "/api/x/y", "/api?x=1"] {
        let reply = client::get(gateway.addr(), path).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        assert_eq!(reply.echoed().path, path);
    }
    for path in ["/apix", "/api-v2", "/api.json"] {
        client::get(gateway.addr(), path).await.assert_error(404, "no_route");
    }
}

#[tokio::test]
async fn routing_strip_prefix_forwards_rest_of_path_with_query() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "match: { path_prefix: /api }\nstrip_prefix: true"));

    let cases =
        [("/api/x", "/x"), ("/api/x/y?q=1&r=2", "/x/y?q=1&r=2"), ("/api", "/"), ("/api?q=1", "/?q=1"), ("/api/", "/")];
    for (sent, expected) in cases {
        let reply = client::get(gateway.addr(), sent).await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.text());
        assert_eq!(reply.echoed().path, expected, "for {sent}");
    }
}

#[tokio::test]
async fn routing_rewrite_prefix_replaces_prefix_with_query() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "match: { path_prefix: /api }\nrewrite_prefix: /v2"));

    let cases =
        [("/api/x", "/v2/x"), ("/api/x/y?q=1&r=2", "/v2/x/y?q=1&r=2"), ("/api", "/v2"), ("/api?q=1", "/v2?q=1")];
    for (sent, expected) in cases {
        let reply = client::get(gateway.addr(), sent).await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.text());
        assert_eq!(reply.echoed().path, expected, "for {sent}");
    }
}

#[tokio::test]
async fn routing_dot_segments_return_400_bad_request() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));

    for path in ["/a/../b", "/a/./b", "/..", "/a/%2e%2e/b", "/a/%2E/b"] {
        client::get(gateway.addr(), path).await.assert_error(400, "bad_request");
    }
    assert_eq!(echo.stats().await.requests, 0, "nothing reaches the upstream");
}

/// `/admin` to one upstream, everything else to another.
fn admin_and_public_config(admin: &Backend, public: &Backend) -> String {
    config(
        r#"
upstreams:
  admin: { endpoints: ["${admin}"] }
  public: { endpoints: ["${public}"] }
routes:
  - { name: admin, match: { path_prefix: /admin }, upstream: admin }
  - { name: public, upstream: public }
"#,
        &[admin, public],
    )
}

#[tokio::test]
async fn routing_dot_segments_upstreams_would_see_return_400() {
    let (admin, public) = (Backend::spawn("admin"), Backend::spawn("public"));
    let gateway = Gateway::start(&admin_and_public_config(&admin, &public));
    // Each is /pub/../admin to some upstream server (an encoded or back slash taken as `/`, a
    // servlet container dropping `;` parameters): routed as public, served as admin.
    let paths = ["/pub/..%2fadmin", "/pub/%2e%2e%2fadmin", "/pub/..;/admin", "/pub/..\\admin", "/pub/%2e%2e%5cadmin"];
    // And a raw backslash, which is `/` to those servers: `/\admin` is `//admin`, so `/admin`.
    for path in paths.into_iter().chain(["/\\admin/x"]) {
        let reply = raw::exchange(
            gateway.addr(),
            format!("GET {path} HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await;
        let reply = raw::parse(&reply).unwrap_or_else(|| panic!("{path}: no response"));
        assert_eq!(reply.status, 400, "{path}: {reply:?}");
    }
    assert_eq!(public.stats().await.requests + admin.stats().await.requests, 0, "nothing reaches an upstream");
}

#[tokio::test]
async fn routing_other_spellings_of_a_path_are_routed_and_forwarded_as_that_path() {
    let (admin, public) = (Backend::spawn("admin"), Backend::spawn("public"));
    let gateway = Gateway::start(&admin_and_public_config(&admin, &public));
    // RFC 3986 section 6.2.2.2: `%61` is `a`. `//` merged as nginx does. Either way the admin
    // route's checks apply, and its upstream gets the one spelling.
    for (sent, forwarded) in [("/%61dmin/x", "/admin/x"), ("//admin/x?q=%61", "/admin/x?q=%61"), ("/adm%69n", "/admin")]
    {
        let reply = client::get(gateway.addr(), sent).await;
        assert_eq!(reply.status, 200, "{sent}: {}", reply.text());
        let echoed = reply.echoed();
        assert_eq!((echoed.backend.as_str(), echoed.path.as_str()), ("admin", forwarded), "{sent}");
    }
    // Reserved characters stay encoded.
    let echoed = client::get(gateway.addr(), "/files/a%3Fb%20c").await.echoed();
    assert_eq!((echoed.backend.as_str(), echoed.path.as_str()), ("public", "/files/a%3Fb%20c"));
}

#[tokio::test]
async fn routing_paths_an_upstream_would_decode_into_another_route_return_400() {
    let (admin, public) = (Backend::spawn("admin"), Backend::spawn("public"));
    let gateway = Gateway::start(&admin_and_public_config(&admin, &public));
    // Decoded once, the first two are `/%61dmin/x`, which an upstream decodes again into
    // `/admin/x`; the next are `/admin/x` to servers that decode an encoded slash.
    for path in ["/%6%31dmin/x", "/%%36%31dmin/x", "/admin%2Fx", "/admin%2fx", "/admin%5Cx", "/a%zz"] {
        let reply = client::get(gateway.addr(), path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
    }
    assert_eq!(public.stats().await.requests + admin.stats().await.requests, 0, "nothing reaches an upstream");
}

#[tokio::test]
async fn routing_encoded_slashes_served_on_routes_that_allow_them() {
    let (projects, public) = (Backend::spawn("projects"), Backend::spawn("public"));
    let yaml = config(
        r#"
upstreams:
  projects: { endpoints: ["${projects}"] }
  public: { endpoints: ["${public}"] }
routes:
  - { name: projects, match: { path_prefix: /projects }, upstream: projects, allow_encoded_slashes: true }
  - { name: public, upstream: public }
"#,
        &[&projects, &public],
    );
    let gateway = Gateway::start(&yaml);
    let echoed = client::get(gateway.addr(), "/projects/group%2Fname").await.echoed();
    assert_eq!((echoed.backend.as_str(), echoed.path.as_str()), ("projects", "/projects/group%2Fname"));
    assert_eq!(client::get(gateway.addr(), "/files/a%2Fb").await.status, 400, "only where allowed");
}

#[tokio::test]
async fn routing_path_parameters_that_would_change_the_route_return_400() {
    let (admin, public) = (Backend::spawn("admin"), Backend::spawn("public"));
    let gateway = Gateway::start(&admin_and_public_config(&admin, &public));
    // A servlet container drops `;` parameters: each of these is /admin there, /public's here.
    for path in ["/admin;x/y", "/admin;jsessionid=1", "/;x/admin/y", "/%61dmin;x/y"] {
        let reply = client::get(gateway.addr(), path).await;
        assert_eq!(reply.status, 400, "{path}: {}", reply.text());
    }
    assert_eq!(public.stats().await.requests + admin.stats().await.requests, 0, "nothing reaches an upstream");
    // Parameters that leave the route as it is travel on untouched.
    for (path, backend) in [("/admin/x;v=1/y", "admin"), ("/files;v=1/a", "public"), ("/admin/x;v=1", "admin")] {
        let echoed = client::get(gateway.addr(), path).await.echoed();
        assert_eq!((echoed.backend.as_str(), echoed.path.as_str()), (backend, path));
    }
}

#[tokio::test]
async fn routing_round_robin_spreads_requests_evenly_across_endpoints() {
    let (a, b) = (Backend::spawn("a"), Backend::spawn("b"));
    let yaml = config(
        r#"
upstreams:
  pair: { endpoints: ["${a}", "${b}"], load_balancing: round_robin }
routes:
  - { name: all, upstream: pair }
"#,
        &[&a, &b],
    );
    let gateway = Gateway::start(&yaml);

    let mut served = Vec::new();
    for _ in 0..6 {
        let reply = client::get(gateway.addr(), "/").await;
        served.push(reply.echoed().backend);
    }
    let count = |name: &str| served.iter().filter(|s| *s == name).count();
    assert_eq!((count("a"), count("b")), (3, 3), "served by {served:?}");
}

/// A lower-case method is another method by RFC 9110, so `get` would pass a route's
/// `methods: [GET]` to the catch-all, where a backend that upper-cases it (Django, Flask) serves
/// it as GET: refused with 400 before routing. CONNECT opens no tunnel here: 405.
#[tokio::test]
async fn routing_lower_case_methods_and_connect_refused_before_routing() {
    let (echo, reads) = (Backend::spawn("echo"), Backend::spawn("reads"));
    let gateway = Gateway::start(&config(
        r#"
upstreams:
  echo: { endpoints: ["${echo}"] }
  reads: { endpoints: ["${reads}"] }
routes:
  - { name: all, upstream: echo }
  - { name: reads, match: { path_prefix: /admin, methods: [GET] }, upstream: reads }
"#,
        &[&echo, &reads],
    ));
    for (request, status) in [
        (&b"get /admin/x HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n"[..], 400),
        (b"trace /x HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n", 400),
        (b"Post /x HTTP/1.1\r\nhost: gw.test\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", 400),
        (b"CONNECT /x HTTP/1.1\r\nhost: gw.test\r\nconnection: close\r\n\r\n", 405),
        (b"CONNECT gw.test:443 HTTP/1.1\r\nhost: gw.test:443\r\nconnection: close\r\n\r\n", 405),
    ] {
        let reply = raw::parse(&raw::exchange(gateway.addr(), request).await);
        let reply = reply.unwrap_or_else(|| panic!("{}: no response", String::from_utf8_lossy(request)));
        assert_eq!(reply.status, status, "{}: {reply:?}", String::from_utf8_lossy(request));
    }
    assert_eq!((echo.stats().await.requests, reads.stats().await.requests), (0, 0), "a refused request went on");
    assert_eq!(client::get(gateway.addr(), "/admin/x").await.echoed().backend, "reads");
}

/// TRACE would have the upstream echo the request back, cookies and tokens included: refused with
/// 405 unless the route names it in `methods`.
#[tokio::test]
async fn routing_trace_refused_unless_the_route_lists_it() {
    let (echo, tracing) = (Backend::spawn("echo"), Backend::spawn("tracing"));
    let gateway = Gateway::start(&config(
        r#"
upstreams:
  echo: { endpoints: ["${echo}"] }
  tracing: { endpoints: ["${tracing}"] }
routes:
  - { name: all, upstream: echo }
  - { name: traced, match: { path_prefix: /traced, methods: [TRACE] }, upstream: tracing }
"#,
        &[&echo, &tracing],
    ));
    let trace = |path: &str| request("TRACE", path).header("cookie", "session=secret").body(empty()).unwrap();
    client::send(gateway.addr(), trace("/anything")).await.assert_error(405, "method_not_allowed");
    assert_eq!(echo.stats().await.requests, 0, "the refused TRACE reached the upstream");
    assert_eq!(client::send(gateway.addr(), trace("/traced")).await.status, 200, "a route that lists TRACE");
    assert_eq!(tracing.stats().await.requests, 1);
}
