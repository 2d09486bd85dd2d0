//! Micro-benchmarks of a route's token check: `Provider::verify` on a token it has not seen
//! (signature and claims checked, then cached) and on the same token again (a SHA-256 and a
//! cache lookup), for RS256, ES256 and HS256.

use std::future::Future;
use std::hint::black_box;
use std::path::Path;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use backends::token::{claims, Algorithm, SigningKey};
use benches::jwt::{AUDIENCE, ISSUER};
use benches::procs::TempDir;
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use gateway::auth::Provider;
use gateway::config::{JwtKeys, JwtProvider, Secret};

/// A key, the provider config that trusts it, and a token it signed.
struct Case {
    name: &'static str,
    config: JwtProvider,
    token: String,
}

/// Providers loaded from a config file, as the gateway loads them: the public keys as PEM files
/// next to it. HS256 reuses the RS256 provider with a secret in place of the key, since
/// `secret_env` would mean changing this process's environment.
fn cases(dir: &Path) -> Vec<Case> {
    let rs256 = SigningKey::generate(Algorithm::RS256, "rs");
    let es256 = SigningKey::generate(Algorithm::ES256, "es");
    let hs256 = SigningKey::generate(Algorithm::HS256, "hs");
    std::fs::write(dir.join("rs256.pem"), rs256.public_pem()).unwrap();
    std::fs::write(dir.join("es256.pem"), es256.public_pem()).unwrap();
    let provider = |name: &str, alg: &str| {
        format!("    {name}: {{ issuer: {ISSUER}, audiences: [{AUDIENCE}], algorithms: [{alg}], public_key: {name}.pem }}\n")
    };
    let yaml = format!(
        "listeners: [{{ name: bench, address: 127.0.0.1:0 }}]\njwt:\n  providers:\n{}{}\
         upstreams: {{ echo: {{ endpoints: [http://127.0.0.1:9] }} }}\nroutes: [{{ name: all, upstream: echo }}]\n",
        provider("rs256", "RS256"),
        provider("es256", "ES256")
    );
    let file = dir.join("gateway.yaml");
    std::fs::write(&file, yaml).unwrap();
    let providers = gateway::config::load(&file).unwrap().config.jwt_providers;
    let hs256_config = JwtProvider {
        name: "hs256".to_owned(),
        algorithms: vec![Algorithm::HS256],
        keys: JwtKeys::Secret(Secret { env: "UNUSED".to_owned(), value: Arc::from(hs256.secret().unwrap()) }),
        ..providers[0].clone()
    };
    let token = |key: &SigningKey| key.sign(&claims(ISSUER, AUDIENCE, "user-1", Duration::from_secs(3600)));
    vec![
        Case { name: "RS256", token: token(&rs256), config: providers[0].clone() },
        Case { name: "ES256", token: token(&es256), config: providers[1].clone() },
        Case { name: "HS256", token: token(&hs256), config: hs256_config },
    ]
}

/// Polls `future` once. With a key from the config, `verify` never waits, so this measures
/// verification alone, without a runtime's `block_on` around it; it panics if that changes.
fn now<F: Future>(future: F) -> F::Output {
    match pin!(future).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("verify waited: not a fixed key"),
    }
}

fn jwt_verify(c: &mut Criterion) {
    let dir = TempDir::new(false).unwrap();
    let mut group = c.benchmark_group("jwt_verify");
    group.sample_size(30).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    for case in cases(dir.path()) {
        // A fresh provider per verification: its cache is empty, so every call checks the signature.
        group.bench_function(BenchmarkId::new("cold", case.name), |b| {
            b.iter_batched_ref(
                || Provider::build(&case.config, None).unwrap(),
                |provider| now(provider.verify(black_box(&case.token))).unwrap(),
                BatchSize::SmallInput,
            )
        });
        let provider = Provider::build(&case.config, None).unwrap();
        now(provider.verify(&case.token)).unwrap();
        group.bench_function(BenchmarkId::new("cached", case.name), |b| {
            b.iter(|| now(provider.verify(black_box(&case.token))).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, jwt_verify);
criterion_main!(benches);
