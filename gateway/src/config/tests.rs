//! Pipeline tests: the shipped example, validation cases, and the invalid-config fixtures.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

const MINIMAL: &str = "
listeners:
  - { name: public, address: 127.0.0.1:0 }
upstreams:
  echo: { endpoints: [http://127.0.0.1:9001] }
routes:
  - { name: all, upstream: echo }
";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Renders `parse` errors as `gateway check` prints them.
fn errors(text: &str) -> String {
    match parse("gw.yaml", text) {
        Ok(_) => String::from("<valid>"),
        Err(problems) => problems.to_string(),
    }
}

/// `MINIMAL` with its single route replaced by `routes`.
fn with_routes(routes: &str) -> String {
    MINIMAL.replace("  - { name: all, upstream: echo }\n", routes)
}

#[test]
fn shipped_example_loads_without_warnings() {
    let loaded = load(&workspace_root().join("config/gateway.yaml")).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let config = loaded.config;
    assert_eq!(
        config.listeners,
        [Listener {
            name: "public".into(),
            address: "127.0.0.1:8080".parse().unwrap(),
            tls: None,
            redirect_https: None
        }]
    );
    assert_eq!(config.admin, Some(Admin { address: "127.0.0.1:9100".parse().unwrap() }));
    assert_eq!(config.upstreams.len(), 1);
    assert_eq!(config.upstreams[0].endpoints[0].uri, "http://127.0.0.1:9001");
    assert!(config.routes.iter().all(|r| r.upstream == "echo"));
}

#[test]
fn minimal_config_fills_defaults() {
    let config = parse("gw.yaml", MINIMAL).unwrap().config;
    assert_eq!(config.server.max_header_size, defaults::MAX_HEADER_SIZE);
    assert_eq!(config.server.idle_timeout, defaults::IDLE_TIMEOUT);
    assert_eq!(config.shutdown.drain_timeout, defaults::DRAIN_TIMEOUT);
    assert_eq!(config.shutdown.accept_grace, Duration::ZERO, "no grace unless asked for");
    let upstream = &config.upstreams[0];
    assert_eq!(upstream.load_balancing, LoadBalancing::RoundRobin);
    assert_eq!(upstream.pool.max_idle_per_host, defaults::POOL_MAX_IDLE_PER_HOST);
    let passive_health = PassiveHealth { max_fails: 1, fail_timeout: Duration::from_secs(10) };
    assert_eq!(upstream.passive_health, passive_health, "nginx's max_fails and fail_timeout");
    let route = &config.routes[0];
    assert_eq!(route.matcher.path, PathMatch::Prefix("/".into()));
    assert_eq!(route.rewrite, Rewrite::None);
    assert!(route.preserve_host);
    assert_eq!(route.max_body_size, defaults::MAX_BODY_SIZE);
}

#[test]
fn route_fields_normalized_values() {
    let text = with_routes(
        "  - name: r
    match:
      host: API.Example.com
      path_prefix: /api/
      methods: [GET, POST, GET]
      headers: { X-Version: \"2\" }
    upstream: echo
    rewrite_prefix: /v2/
    timeout: 250ms
    max_body_size: 1KB
    preserve_host: false
  - name: w
    match: { host: \"*.example.com\", path: /exact/ }
    upstream: echo
    strip_prefix: true
",
    );
    let config = parse("gw.yaml", &text).unwrap().config;
    let r = &config.routes[0];
    assert_eq!(r.matcher.host, Some(HostMatch::Exact("api.example.com".into())));
    assert_eq!(r.matcher.path, PathMatch::Prefix("/api".into()));
    assert_eq!(r.matcher.methods, [http::Method::GET, http::Method::POST]);
    assert_eq!(r.matcher.headers[0].0.as_str(), "x-version");
    assert_eq!(r.rewrite, Rewrite::ReplacePrefix("/v2".into()));
    assert_eq!(r.timeout, Some(Duration::from_millis(250)));
    assert_eq!(r.max_body_size, 1000);
    assert!(!r.preserve_host);
    let w = &config.routes[1];
    assert_eq!(w.matcher.host, Some(HostMatch::Suffix(".example.com".into())));
    assert_eq!(w.matcher.path, PathMatch::Exact("/exact/".into()));
    assert_eq!(w.rewrite, Rewrite::StripPrefix);
}

#[test]
fn server_section_parsed_values() {
    let text = format!(
        "{MINIMAL}server:\n  max_header_size: 8KiB\n  max_headers: 7\n  trusted_proxies: [10.0.0.0/8, 10.1.2.3, \"::1\", 192.168.1.7/16]\n"
    );
    let server = parse("gw.yaml", &text).unwrap().config.server;
    assert_eq!(server.max_header_size, 8192);
    assert_eq!(server.max_headers, 7);
    let nets: Vec<String> = server.trusted_proxies.iter().map(ToString::to_string).collect();
    assert_eq!(nets, ["10.0.0.0/8", "10.1.2.3/32", "::1/128", "192.168.0.0/16"]);
    assert_eq!(server.max_connections, None, "derived from the file descriptor limit when left out");
}

#[test]
fn server_max_connections_at_least_one() {
    let parsed = |n: &str| parse("gw.yaml", &format!("{MINIMAL}server:\n  max_connections: {n}\n"));
    assert_eq!(parsed("500").unwrap().config.server.max_connections, Some(500));
    let error = parsed("0").unwrap_err().to_string();
    assert!(error.contains("server.max_connections: max_connections must be at least 1"), "{error}");
}

#[test]
fn endpoint_trailing_slash_and_default_port_accepted() {
    let text = MINIMAL.replace("http://127.0.0.1:9001", "http://backend.internal/");
    let config = parse("gw.yaml", &text).unwrap().config;
    assert_eq!(config.upstreams[0].endpoints[0].uri, "http://backend.internal");
}

#[test]
fn unused_upstream_warned_not_rejected() {
    let text = MINIMAL.replace("upstreams:\n", "upstreams:\n  spare: { endpoints: [http://127.0.0.1:9002] }\n");
    let loaded = parse("gw.yaml", &text).unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["gw.yaml:5:3: upstreams.spare: warning: upstream \"spare\" is not used by any route\n  hint: remove it, or point a route at it with `upstream: spare`"]
    );
}

#[test]
fn passive_health_on_a_lone_endpoint_warned() {
    let text = MINIMAL.replace("9001] }", "9001], passive_health: { max_fails: 3 } }");
    let loaded = parse("gw.yaml", &text).unwrap();
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["gw.yaml:5:63: upstreams.echo.passive_health: warning: passive_health does nothing with one endpoint\n  hint: a lone endpoint is always tried; to pause requests to a failing upstream, set `circuit_breaker`"]
    );
    let two = text.replace("9001]", "9001, http://127.0.0.1:9002]");
    assert!(parse("gw.yaml", &two).unwrap().warnings.is_empty());
}

#[test]
fn shadowed_route_by_method_superset_rejected() {
    let text = with_routes(
        "  - { name: a, match: { path_prefix: /x, methods: [GET, POST] }, upstream: echo }
  - { name: b, match: { path_prefix: /x, methods: [GET] }, upstream: echo }
",
    );
    assert!(
        errors(&text).contains("route \"b\" can never match: route \"a\" (routes[0], line 7)"),
        "{}",
        errors(&text)
    );
}

#[test]
fn more_specific_later_route_not_shadowed() {
    let text = with_routes(
        "  - { name: a, match: { path_prefix: /x }, upstream: echo }
  - { name: b, match: { path_prefix: /x/y }, upstream: echo }
  - { name: c, match: { path_prefix: /x, headers: { x-a: \"1\" } }, upstream: echo }
",
    );
    assert!(parse("gw.yaml", &text).is_ok(), "{}", errors(&text));
}

#[test]
fn listener_port_zero_duplicates_allowed() {
    let text = MINIMAL.replace(
        "  - { name: public, address: 127.0.0.1:0 }\n",
        "  - { name: a, address: 127.0.0.1:0 }\n  - { name: b, address: 127.0.0.1:0 }\nadmin: { address: 127.0.0.1:0 }\n",
    );
    assert!(parse("gw.yaml", &text).is_ok(), "{}", errors(&text));
}

#[test]
fn admin_address_clashing_with_listener_rejected() {
    let text = MINIMAL.replace("127.0.0.1:0", "127.0.0.1:8080") + "admin: { address: 0.0.0.0:8080 }\n";
    assert!(
        errors(&text).contains("admin.address: address 0.0.0.0:8080 overlaps listener \"public\""),
        "{}",
        errors(&text)
    );
}

#[test]
fn endpoint_with_credentials_rejected_without_echoing_password() {
    let text = MINIMAL.replace("http://127.0.0.1:9001", "http://user:s3cret@127.0.0.1:9001");
    let out = errors(&text);
    assert!(out.contains("must not contain credentials"), "{out}");
    assert!(!out.contains("s3cret"), "{out}");
}

#[test]
fn extension_method_accepted_close_typo_warned() {
    let text = with_routes("  - { name: a, match: { methods: [PURGE, POTS] }, upstream: echo }\n");
    let loaded = parse("gw.yaml", &text).unwrap();
    assert_eq!(loaded.config.routes[0].matcher.methods.len(), 2);
    assert_eq!(loaded.warnings.len(), 1);
    assert_eq!(loaded.warnings[0].hint.as_deref(), Some("did you mean `POST`? (extension methods are allowed)"));
}

#[test]
fn methods_that_requests_never_carry_rejected() {
    let text = with_routes("  - { name: a, match: { methods: [CONNECT, propfind] }, upstream: echo }\n");
    let out = errors(&text);
    assert!(
        out.contains("routes[0].match.methods[0]: method \"CONNECT\" can never match: CONNECT is never forwarded"),
        "{out}"
    );
    assert!(
        out.contains("routes[0].match.methods[1]: method \"propfind\" can never match: requests with lower-case"),
        "{out}"
    );
}

/// Routes no request can reach are errors, as shadowed ones are: a path spelled another way than
/// requests are routed by, a header condition with spaces around its value (request values are
/// trimmed), or one on a header removed before routing.
#[test]
fn conditions_that_requests_never_meet_rejected() {
    let text = with_routes(
        "  - { name: a, match: { path_prefix: \"/a//b\" }, upstream: echo }\n  - { name: b, match: { path: /%61pi }, upstream: echo }\n  - { name: c, match: { path: \"/x\\\\y\" }, upstream: echo }\n  - { name: d, match: { headers: { x-v: \" 2\" } }, upstream: echo }\n  - { name: e, match: { headers: { X_User_Id: \"1\" } }, upstream: echo }\n",
    );
    let out = errors(&text);
    for want in [
        "routes[0].match.path_prefix: path_prefix \"/a//b\" can never match: requests are routed by their path with `//` merged",
        "hint: write \"/a/b\"",
        "routes[1].match.path: path \"/%61pi\" can never match",
        "hint: write \"/api\"",
        "routes[2].match.path: path \"/x\\\\y\" can never match: requests with such a path get 400",
        "routes[3].match.headers.x-v: the value for header `x-v` has spaces around it",
        "routes[4].match.headers.X_User_Id: `X_User_Id` can never match: identity_headers removes `x-user-*`",
    ] {
        assert!(out.contains(want), "{want}\n---\n{out}");
    }
}

/// `strip_prefix` on a route whose prefix is `/` does nothing: allowed, warned about.
#[test]
fn strip_prefix_of_root_warned() {
    let text = with_routes(
        "  - { name: all, upstream: echo, strip_prefix: true }\n  - { name: api, match: { path_prefix: /api }, upstream: echo, strip_prefix: true }\n",
    );
    let loaded = parse("gw.yaml", &text).unwrap_or_else(|p| panic!("{p}"));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("routes[0].strip_prefix: warning: strip_prefix strips nothing"), "{warnings:?}");
}

#[test]
fn readme_reference_config_is_valid() {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let start = readme.find("```yaml\nlisteners:").expect("README has a reference config block") + "```yaml\n".len();
    let len = readme[start..].find("```").unwrap();
    let loaded = parse("README.md", &readme[start..start + len]).unwrap_or_else(|problems| panic!("{problems}"));
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

/// Trusting every address makes X-Forwarded-For the client's to write: allowed, warned about.
#[test]
fn trusted_proxies_trusting_everyone_warned() {
    let text = format!("{MINIMAL}server:\n  trusted_proxies: [10.0.0.0/8, 0.0.0.0/0, \"::/0\"]\n");
    let loaded = parse("gw.yaml", &text).unwrap_or_else(|p| panic!("{p}"));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    assert!(warnings[0].contains("server.trusted_proxies[1]: warning: 0.0.0.0/0 trusts every address"), "{warnings:?}");
    assert!(warnings[1].contains("server.trusted_proxies[2]: warning: ::/0 trusts every address"), "{warnings:?}");
}

#[test]
fn identity_headers_default_list_and_custom_list() {
    let base = "listeners: [{ name: p, address: 127.0.0.1:0 }]\nupstreams: { u: { endpoints: [http://127.0.0.1:9001] } }\nroutes: [{ name: r, upstream: u }]\n";
    let defaults = parse("a.yaml", base).unwrap().config.identity_headers;
    assert!(defaults.iter().any(|h| h == "x-user-*") && defaults.iter().any(|h| h == "x-auth-request-*"));
    assert_eq!(defaults.len(), 20);
    let custom =
        parse("a.yaml", &format!("{base}identity_headers: [X-Tenant, x-user-id]\n")).unwrap().config.identity_headers;
    assert_eq!(custom, ["x-tenant", "x-user-id"]);
    let problems = parse("a.yaml", &format!("{base}identity_headers: [\"bad header\"]\n")).unwrap_err().to_string();
    assert!(problems.contains("a.yaml:4:20: identity_headers[0]: \"bad header\" is not a header name"), "{problems}");
    // Headers the gateway and upstreams need for every request cannot be removed from every request.
    let problems =
        parse("a.yaml", &format!("{base}identity_headers: [x-user-id, Host, authorization, content-length]\n"))
            .unwrap_err()
            .to_string();
    for (index, column, name) in [(1, 31, "host"), (2, 37, "authorization"), (3, 52, "content-length")] {
        let want = format!("a.yaml:4:{column}: identity_headers[{index}]: `{name}` cannot be removed");
        assert!(problems.contains(&want), "{want} in {problems}");
    }
    // A trailing `*` stands for any ending, and may not take in those either.
    let custom = parse("a.yaml", &format!("{base}identity_headers: [x-tenant-*]\n")).unwrap().config.identity_headers;
    assert_eq!(custom, ["x-tenant-*"]);
    let problems =
        parse("a.yaml", &format!("{base}identity_headers: [\"co*\", \"*\", x-*-id]\n")).unwrap_err().to_string();
    for want in [
        "identity_headers[0]: `co*` takes in `content-length`, which cannot be removed",
        "identity_headers[1]: `*` takes in `host`, which cannot be removed",
        "identity_headers[2]: `x-*-id` may have a `*` only at its end",
    ] {
        assert!(problems.contains(want), "{want} in {problems}");
    }
}

#[test]
fn redis_cluster_needs_a_tcp_node() {
    let text = MINIMAL.replace("routes:", "redis: { url: \"unix:///run/redis.sock\", cluster: true }\nroutes:");
    let problems = parse("gw.yaml", &text).unwrap_err().to_string();
    assert!(problems.contains("redis.url: a Redis Cluster is reached over TCP"), "{problems}");
    let text = MINIMAL.replace("routes:", "redis: { url: redis://10.0.0.7:7000, cluster: true }\nroutes:");
    assert!(parse("gw.yaml", &text).unwrap().config.redis.is_some_and(|redis| redis.cluster));
}

#[test]
fn rate_limits_and_redis_parse_with_defaults() {
    let text = MINIMAL.replace(
        "routes:\n  - { name: all, upstream: echo }\n",
        "redis: { url: \"redis://:pw@127.0.0.1:6379/2\" }
rate_limits:
  per_ip: { requests: 20, window: 1m, key: client_ip }
  per_org: { requests: 5, window: 10s, key: jwt.org }
  everyone: { requests: 1000, window: 1s, key: global }
jwt:
  providers:
    main: { issuer: https://auth.test, audiences: [shop], algorithms: [RS256], jwks_url: http://127.0.0.1:1/jwks.json }
routes:
  - { name: a, match: { path_prefix: /a }, upstream: echo, rate_limit: per_ip }
  - { name: b, match: { path_prefix: /b }, upstream: echo, rate_limit: per_org, auth: { provider: main, optional: true } }
  - { name: c, upstream: echo, rate_limit: everyone }
",
    );
    let config = parse("gw.yaml", &text).unwrap().config;
    assert_eq!(
        config.redis,
        Some(Redis {
            url: "redis://:pw@127.0.0.1:6379/2".into(),
            ca: None,
            cluster: false,
            timeout: defaults::REDIS_TIMEOUT,
            connect_timeout: defaults::REDIS_CONNECT_TIMEOUT,
        })
    );
    assert_eq!(
        config.rate_limits,
        [
            RateLimit {
                name: "per_ip".into(),
                requests: 20,
                window: Duration::from_secs(60),
                key: RateLimitKey::ClientIp
            },
            RateLimit {
                name: "per_org".into(),
                requests: 5,
                window: Duration::from_secs(10),
                key: RateLimitKey::Claim("org".into())
            },
            RateLimit {
                name: "everyone".into(),
                requests: 1000,
                window: Duration::from_secs(1),
                key: RateLimitKey::Global
            },
        ]
    );
    let limits: Vec<Option<&str>> = config.routes.iter().map(|r| r.rate_limit.as_deref()).collect();
    assert_eq!(limits, [Some("per_ip"), Some("per_org"), Some("everyone")]);
}

mod files;
mod problems;
