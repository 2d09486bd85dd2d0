//! Micro-benchmarks of the per-request hot path (route matching, header processing) and of what a
//! reload costs (parse, validate and build a 1,000-route config).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use gateway::config::{HostMatch, PathMatch, Rewrite, Route, RouteMatch};
use gateway::proxy::{remove_hop_by_hop, request_id, set_forwarding, Client, Message};
use gateway::router::Router;
use gateway::runtime::Snapshot;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// `n` routes shaped like a real file: a few hosts, two-segment prefixes, some method constraints.
fn routes(n: usize) -> Vec<Route> {
    (0..n)
        .map(|i| Route {
            name: format!("route-{i}"),
            matcher: RouteMatch {
                host: (i % 4 == 0).then(|| HostMatch::Exact(format!("svc{}.example.com", i % 16))),
                path: PathMatch::Prefix(format!("/api/svc{i}")),
                methods: if i % 3 == 0 { vec![Method::GET, Method::HEAD] } else { Vec::new() },
                headers: Vec::new(),
            },
            upstream: "u".to_string(),
            rewrite: Rewrite::None,
            timeout: Some(Duration::from_secs(1)),
            preserve_host: true,
            allow_encoded_slashes: false,
            max_body_size: 1 << 20,
            auth: None,
            rate_limit: None,
        })
        .collect()
}

fn route_matching(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match");
    let headers = HeaderMap::new();
    for n in [10usize, 1000] {
        let table = routes(n);
        let router = Router::new(&table);
        // A hit deep in the table, with a longer path than the prefix, through a host that has routes.
        let path = format!("/api/svc{}/items/42", n - 1);
        group.bench_with_input(BenchmarkId::new("hit", n), &n, |b, _| {
            b.iter(|| router.find(black_box(Some("svc3.example.com")), black_box(&path), &Method::GET, &headers))
        });
        group.bench_with_input(BenchmarkId::new("miss", n), &n, |b, _| {
            b.iter(|| {
                router.find(black_box(Some("other.test")), black_box("/nothing/here/at/all"), &Method::GET, &headers)
            })
        });
    }
    group.finish();
}

fn typical_request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in [
        ("host", "api.example.com"),
        ("user-agent", "Mozilla/5.0 (X11; Linux x86_64) bench"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjMifQ.c2ln"),
        ("connection", "keep-alive"),
        ("x-request-id", "0f8fad5b-d9cb-469f-a165-70867728950e"),
        ("cookie", "session=abc; theme=dark"),
    ] {
        headers.insert(HeaderName::from_static(name), HeaderValue::from_static(value));
    }
    headers
}

fn header_processing(c: &mut Criterion) {
    let template = typical_request_headers();
    let host = HeaderValue::from_static("api.example.com");
    let client = Client { ip: "203.0.113.7".parse().unwrap(), trusted: false, proto: "http", host: Some(&host) };
    c.bench_function("request_headers", |b| {
        b.iter_batched_ref(
            || template.clone(),
            |headers| {
                let id = request_id(headers);
                remove_hop_by_hop(headers, Message::Request);
                set_forwarding(headers, client);
                headers.insert(HeaderName::from_static("x-request-id"), id);
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// A config file with `n` routes over 10 upstreams, in the shape ops teams write.
fn config_text(n: usize) -> String {
    let mut text = String::from("listeners: [{ name: public, address: 127.0.0.1:0 }]\nupstreams:\n");
    for u in 0..10 {
        text.push_str(&format!("  svc{u}: {{ endpoints: [http://127.0.0.1:{}], request_timeout: 5s }}\n", 9000 + u));
    }
    text.push_str("routes:\n");
    for i in 0..n {
        text.push_str(&format!(
            "  - name: route-{i}\n    match: {{ path_prefix: /api/svc{i}, methods: [GET, POST] }}\n    upstream: svc{}\n    strip_prefix: true\n",
            i % 10
        ));
    }
    text
}

fn config_reload(c: &mut Criterion) {
    let text = config_text(1000);
    c.bench_function("config_parse_validate_build/1000_routes", |b| {
        b.iter(|| {
            let loaded = gateway::config::parse("bench.yaml", black_box(&text)).unwrap();
            Snapshot::build(&loaded.config, 2, None).unwrap()
        })
    });
}

criterion_group!(benches, route_matching, header_processing, config_reload);
criterion_main!(benches);
