//! Micro-benchmarks of the in-process rate-limit decision (`LocalLimiter::check`, what a route
//! with a limit pays per request when the gateway has no `redis`): one hot key, and keys rotating
//! over 10,000 clients. Budgets are large enough that nothing is ever limited.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use gateway::limit::LocalLimiter;

/// Distinct clients in the rotating case.
const CLIENTS: usize = 10_000;

/// The hot key's budget, as in the load bench: a billion per minute. Criterion calls it tens of
/// millions of times, well inside the burst.
const HOT_REQUESTS: u32 = 1_000_000_000;
const HOT_WINDOW: Duration = Duration::from_secs(60);

/// The rotating keys' budget. Its refill period (`WINDOW / REQUESTS` = 86 ms) is longer than a pass
/// over all the keys (about a millisecond), so every key still has spent budget when the limiter
/// sweeps and the map keeps all 10,000: with the hot key's 60 ns period every bucket would be full
/// again by its next check, swept, and inserted again. A few thousand calls per key stay far below
/// the budget.
const REQUESTS: u32 = 1_000_000;
const WINDOW: Duration = Duration::from_secs(24 * 60 * 60);

/// The keys the gateway builds for `key: client_ip`.
fn client_keys() -> Vec<String> {
    (0..CLIENTS).map(|i| format!("ip:10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff)).collect()
}

fn rate_limit(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limit");

    let limiter = LocalLimiter::new(HOT_REQUESTS, HOT_WINDOW);
    group.bench_function("local/hot_key", |b| {
        b.iter(|| {
            let decision = limiter.check(black_box("ip:203.0.113.7"));
            assert!(decision.allowed, "limited: the budget is too small for the bench");
            decision
        })
    });

    let keys = client_keys();
    let limiter = LocalLimiter::new(REQUESTS, WINDOW);
    let mut next = 0;
    group.bench_function("local/10k_keys", |b| {
        b.iter(|| {
            next = (next + 1) % CLIENTS;
            let decision = limiter.check(black_box(&keys[next]));
            assert!(decision.allowed, "limited: the budget is too small for the bench");
            decision
        })
    });
    assert_eq!(limiter.keys(), CLIENTS, "keys were swept: the refill period is shorter than a pass over them");
    group.finish();
}

criterion_group!(benches, rate_limit);
criterion_main!(benches);
