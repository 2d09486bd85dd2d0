//! Sections that refer to files: listener certificates, JWT public keys, Redis's CA.

use super::*;

/// A config in a new temp dir with a TLS listener whose certificate is for `cert_name`, and
/// `routes` (YAML flow items).
fn tls_config_with_routes(cert_name: &str, routes: &str) -> (PathBuf, String) {
    tls_config_with(cert_name, routes, |_| {})
}

fn tls_config_with(
    cert_name: &str,
    routes: &str,
    adjust: impl FnOnce(&mut rcgen::CertificateParams),
) -> (PathBuf, String) {
    let dir =
        std::env::temp_dir().join(format!("gateway-config-tls-{}-{cert_name}-{}", std::process::id(), routes.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec![cert_name.to_string()]).unwrap();
    adjust(&mut params);
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("s.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("s.key"), key.serialize_pem()).unwrap();
    let text = format!(
        "listeners: [{{ name: s, address: 127.0.0.1:0, tls: {{ certificates: [{{ cert: s.crt, key: s.key }}] }} }}]\n\
         upstreams: {{ u: {{ endpoints: [http://127.0.0.1:9001] }} }}\nroutes: [{routes}]\n"
    );
    (dir.join("gateway.yaml"), text)
}

/// Clients refuse an expired certificate and one not valid yet: served all the same at start
/// (there is nothing better), but warned about.
#[test]
fn tls_certificate_expired_or_not_yet_valid_warned() {
    let routes = "{ name: all, upstream: u }";
    for (name, from, until, want) in [
        ("old.test", 2019, 2020, "s.crt expired on 2020-01-01"),
        ("future.test", 2090, 2091, "s.crt is not valid until 2090-01-01"),
    ] {
        let (path, text) = tls_config_with(name, routes, |params| {
            params.not_before = rcgen::date_time_ymd(from, 1, 1);
            params.not_after = rcgen::date_time_ymd(until, 1, 1);
        });
        let loaded = parse(&path.display().to_string(), &text).unwrap_or_else(|p| panic!("{p}"));
        let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
        assert!(warnings.iter().any(|w| w.contains(want)), "{want} in {warnings:?}");
    }
}

#[test]
fn tls_certificate_covering_no_route_host_warns_only_when_every_route_names_a_host() {
    let (path, text) = tls_config_with_routes("a.test", "{ name: b, upstream: u, match: { host: b.test } }");
    let loaded = parse(&path.display().to_string(), &text).unwrap_or_else(|p| panic!("{p}"));
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("covers none of the hosts routes match (b.test)"), "{warnings:?}");

    let (path, text) = tls_config_with_routes(
        "a.test",
        "{ name: b, upstream: u, match: { host: b.test } }, { name: all, upstream: u }",
    );
    let loaded = parse(&path.display().to_string(), &text).unwrap_or_else(|p| panic!("{p}"));
    assert!(loaded.warnings.is_empty(), "a catch-all route can be served by any certificate: {:?}", loaded.warnings);

    let (path, text) = tls_config_with_routes("*.shop.test", "{ name: w, upstream: u, match: { host: a.shop.test } }");
    let loaded = parse(&path.display().to_string(), &text).unwrap_or_else(|p| panic!("{p}"));
    assert!(loaded.warnings.is_empty(), "a wildcard certificate covers a.shop.test: {:?}", loaded.warnings);
}

/// A config with one provider whose key is `public_key: jwt.pem`, an EC key written next to it.
fn jwt_config_dir(algorithms: &str) -> (PathBuf, String) {
    // One directory per call: tests run in parallel and each writes its own key.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("gateway-config-jwt-{}-{call}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    std::fs::write(dir.join("jwt.pem"), key.public_key_pem()).unwrap();
    let text = with_routes(
        "  - { name: all, upstream: echo, auth: { provider: main }, require: { scope: [a, b] } }\n",
    ) + &format!(
        "jwt:\n  providers:\n    main: {{ issuer: https://i, audiences: [shop], algorithms: {algorithms}, public_key: jwt.pem }}\n"
    );
    let path = dir.join("gw.yaml");
    std::fs::write(&path, &text).unwrap();
    (path, text)
}

#[test]
fn jwt_public_key_provider_loads_with_defaults() {
    let (path, _) = jwt_config_dir("[ES256]");
    let config = load(&path).unwrap().config;
    let provider = &config.jwt_providers[0];
    assert_eq!(provider.algorithms, [jsonwebtoken::Algorithm::ES256]);
    assert_eq!(provider.leeway, defaults::JWT_LEEWAY);
    assert_eq!(provider.realm, "main");
    assert!(matches!(&provider.keys, JwtKeys::PublicKey(key) if key.family == jsonwebtoken::AlgorithmFamily::Ec));
    let auth = config.routes[0].auth.as_ref().unwrap();
    assert_eq!((auth.provider.as_str(), auth.optional), ("main", false));
    assert_eq!(auth.require, [ClaimRule { claim: "scope".into(), values: vec!["a".into(), "b".into()] }]);
}

#[test]
fn jwt_public_key_with_hmac_or_other_family_refused() {
    let (path, _) = jwt_config_dir("[RS256, HS256]");
    let LoadError::Invalid(problems) = load(&path).unwrap_err() else { panic!("expected Invalid") };
    let text = problems.to_string();
    assert!(
        text.contains("algorithms[0]: algorithm RS256 does not fit") && text.contains("the public key is EC"),
        "{text}"
    );
    assert!(text.contains("algorithms[1]: algorithm HS256 does not fit") && text.contains("HMAC"), "{text}");
}

#[test]
fn jwt_public_key_is_a_referenced_file() {
    let (path, text) = jwt_config_dir("[ES256]");
    let label = path.display().to_string();
    assert!(referenced_files(&label, &text).contains(&path.parent().unwrap().join("jwt.pem")));
}

#[test]
fn redis_ca_is_a_referenced_file() {
    let text = "redis: { url: rediss://redis.internal:6380, ca: certs/redis-ca.pem }\n";
    assert_eq!(referenced_files("/etc/gw/gw.yaml", text), [PathBuf::from("/etc/gw/certs/redis-ca.pem")]);
}
