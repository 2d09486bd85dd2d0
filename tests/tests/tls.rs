//! TLS termination: protocol versions, SNI certificate choice, ALPN (HTTP/2 and HTTP/1.1 over TLS),
//! the handshake timeout and the accept loop, `gateway certs dev`, and `gateway check` on
//! certificate problems. Certificate reload is in tls_certs.rs, client certificates, HSTS and the
//! HTTPS redirect in tls_policies.rs.
//!
//! Each test makes its own CA and leaves with rcgen and writes them beside the config in a
//! [`ConfigDir`] (the config names them relative to its own directory). Clients trust only that CA.
//! Waits go through `/admin/config` or repeated handshakes; no test asserts how long anything takes.

use e2e::client::{Connection, Reply};
use e2e::tls::{self, Leaf, TestCa, TlsClient, TLS12, TLS13};
use e2e::tls_site::*;
use e2e::{gateway_check, gateway_run_invalid, Backend, ConfigDir, Gateway};
use rustls::{AlertDescription, ProtocolVersion};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------------------
// Versions
// ---------------------------------------------------------------------------------------------------

/// Handshakes offering only `version`, then a request over the connection.
async fn handshake_with_only(version: &'static rustls::SupportedProtocolVersion) -> (tls::Negotiated, Reply) {
    let ca = TestCa::new("versions CA");
    let a = ca.issue(&["a.test"]);
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "", "");
    let client = site.client().versions(&[version]);
    let stream = client.connect(site.gateway.addr(), "a.test").await;
    let negotiated = tls::negotiated(&stream);
    let reply =
        Connection::over(stream, "a.test").await.unwrap_or_else(|e| panic!("HTTP/1.1 over TLS: {e:#}")).get("/v").await;
    assert_served(&negotiated.served, &a, &[&a], "the only certificate");
    (negotiated, reply)
}

#[tokio::test]
async fn tls12_only_client_negotiates_tls12_and_is_served() {
    let (negotiated, reply) = handshake_with_only(&TLS12).await;
    assert_eq!(negotiated.version, ProtocolVersion::TLSv1_2);
    assert_echo_over_https(&reply, "a.test", "GET /v over TLS 1.2");
}

#[tokio::test]
async fn tls13_only_client_negotiates_tls13_and_is_served() {
    let (negotiated, reply) = handshake_with_only(&TLS13).await;
    assert_eq!(negotiated.version, ProtocolVersion::TLSv1_3);
    assert_echo_over_https(&reply, "a.test", "GET /v over TLS 1.3");
}

#[tokio::test]
async fn tls_client_offering_both_versions_gets_tls13() {
    let ca = TestCa::new("versions CA");
    let a = ca.issue(&["a.test"]);
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "", "");
    let negotiated = site.client().handshake(site.gateway.addr(), "a.test").await;
    assert_eq!(negotiated.version, ProtocolVersion::TLSv1_3);
}

#[tokio::test]
async fn tls_min_version_13_refuses_tls12_only_client_with_protocol_version_alert() {
    let ca = TestCa::new("min version CA");
    let a = ca.issue(&["a.test"]);
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "min_version: \"1.3\"", "");

    let refused = site.client().versions(&[&TLS12]).try_connect(site.gateway.addr(), "a.test").await;
    let error = match refused {
        Ok(stream) => panic!("a TLS 1.2-only client got through: {:?}", tls::negotiated(&stream).version),
        Err(error) => error,
    };
    assert!(
        matches!(tls::rustls_error(&error), Some(rustls::Error::AlertReceived(AlertDescription::ProtocolVersion))),
        "expected a protocol_version alert, got: {error:#}"
    );

    let negotiated = site.client().handshake(site.gateway.addr(), "a.test").await;
    assert_eq!(negotiated.version, ProtocolVersion::TLSv1_3, "a client offering 1.2 and 1.3 on a 1.3-only listener");
}

#[tokio::test]
async fn tls_legacy_client_hello_tls10_tls11_refused_with_protocol_version_alert() {
    let ca = TestCa::new("legacy CA");
    let a = ca.issue(&["a.test"]);
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "", "");
    for (version, name) in [(0x0301, "TLS 1.0"), (0x0302, "TLS 1.1")] {
        let answer = e2e::raw::exchange(site.gateway.addr(), &tls::legacy_client_hello(version)).await;
        // RFC 8446 appendix D.2 / RFC 5246 appendix E.1: fatal (2) protocol_version (70).
        assert_eq!(tls::alert(&answer), Some((2, 70)), "answer to a {name} ClientHello: {answer:02x?}");
    }
    // The refusals left the listener working.
    site.client().handshake(site.gateway.addr(), "a.test").await;
}

// ---------------------------------------------------------------------------------------------------
// SNI
// ---------------------------------------------------------------------------------------------------

/// Certificates for `a.test` (first), `b.test` (the default) and `*.wild.test`.
struct ThreeNames {
    site: Site,
    a: Leaf,
    b: Leaf,
    wild: Leaf,
}

fn three_names(default_b: bool) -> ThreeNames {
    let ca = TestCa::new("SNI CA");
    let (a, b, wild) = (ca.issue(&["a.test"]), ca.issue(&["b.test"]), ca.issue(&["*.wild.test"]));
    let b_entry = if default_b { default_entry("b", &b) } else { entry("b", &b) };
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a), b_entry, entry("wild", &wild)], "", "");
    ThreeNames { site, a, b, wild }
}

#[tokio::test]
async fn sni_each_hostname_gets_its_certificate() {
    let names = three_names(true);
    let (site, all) = (&names.site, [&names.a, &names.b, &names.wild]);
    for (host, expected) in [("a.test", &names.a), ("b.test", &names.b), ("x.wild.test", &names.wild)] {
        let (negotiated, reply) = tls::try_get(&site.client(), site.gateway.addr(), host, "/sni")
            .await
            .unwrap_or_else(|e| panic!("GET /sni as {host}: {e:#}"));
        assert_served(&negotiated.served, expected, &all, &format!("SNI {host}"));
        assert_echo_over_https(&reply, host, &format!("GET /sni as {host}"));
    }
}

#[tokio::test]
async fn sni_mixed_case_name_gets_its_certificate() {
    let names = three_names(true);
    let (site, all) = (&names.site, [&names.a, &names.b, &names.wild]);
    // RFC 6066 section 3 / RFC 4343: host names compare case-insensitively.
    for (host, expected) in [("A.Test", &names.a), ("X.WILD.test", &names.wild)] {
        let negotiated = site.client().handshake(site.gateway.addr(), host).await;
        assert_served(&negotiated.served, expected, &all, &format!("SNI {host}"));
    }
}

#[tokio::test]
async fn sni_absent_gets_default_certificate() {
    let names = three_names(true);
    let site = &names.site;
    // The client checks the certificate for b.test but does not say so: only the default can satisfy it.
    let negotiated = site.client().without_sni().any_name().handshake(site.gateway.addr(), "b.test").await;
    assert_served(&negotiated.served, &names.b, &[&names.a, &names.b, &names.wild], "no SNI");
}

#[tokio::test]
async fn sni_unknown_name_gets_default_certificate() {
    let names = three_names(true);
    let site = &names.site;
    let all = [&names.a, &names.b, &names.wild];
    // `wild.test` itself is not covered by `*.wild.test` (a wildcard matches exactly one label).
    for host in ["unknown.test", "wild.test", "deep.x.wild.test"] {
        let negotiated = site.client().any_name().handshake(site.gateway.addr(), host).await;
        assert_served(&negotiated.served, &names.b, &all, &format!("unknown SNI {host}"));
    }
}

#[tokio::test]
async fn sni_absent_without_default_flag_gets_first_certificate() {
    let names = three_names(false);
    let site = &names.site;
    let negotiated = site.client().without_sni().any_name().handshake(site.gateway.addr(), "a.test").await;
    assert_served(&negotiated.served, &names.a, &[&names.a, &names.b, &names.wild], "no SNI, no default flag");
}

// ---------------------------------------------------------------------------------------------------
// ALPN
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn alpn_h2_negotiated_and_http2_request_reaches_echo_as_https() {
    let ca = TestCa::new("ALPN CA");
    let a = ca.issue(&["a.test"]);
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "", "");
    let stream = site.client().alpn(&["h2", "http/1.1"]).connect(site.gateway.addr(), "a.test").await;
    assert_eq!(tls::negotiated(&stream).alpn.as_deref(), Some("h2"));

    let reply =
        tls::get_h2(stream, "a.test", "/over/h2?x=1").await.unwrap_or_else(|e| panic!("HTTP/2 over TLS: {e:#}"));
    assert_echo_over_https(&reply, "a.test", "GET over HTTP/2");
    assert_eq!(reply.echoed().path, "/over/h2?x=1");
    assert_eq!(reply.header("x-backend"), Some("A"));
    assert!(reply.header("x-request-id").is_some_and(e2e::is_uuid_v7), "x-request-id: {:?}", reply.headers);
}

#[tokio::test]
async fn alpn_http11_only_client_negotiates_http11_and_is_served() {
    let ca = TestCa::new("ALPN CA");
    let a = ca.issue(&["a.test"]);
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "", "");
    for (offer, expected) in [(&["http/1.1"][..], Some("http/1.1")), (&[][..], None)] {
        let stream = site.client().alpn(offer).connect(site.gateway.addr(), "a.test").await;
        assert_eq!(tls::negotiated(&stream).alpn.as_deref(), expected, "ALPN offer {offer:?}");
        let mut connection = Connection::over(stream, "a.test").await.unwrap_or_else(|e| panic!("HTTP/1.1: {e:#}"));
        // Two requests: the connection stays usable (keep-alive over TLS).
        for path in ["/one", "/two"] {
            let reply = connection.get(path).await;
            assert_echo_over_https(&reply, "a.test", &format!("GET {path} with ALPN offer {offer:?}"));
            assert_eq!(reply.echoed().path, path);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Handshake timeout and the accept loop
// ---------------------------------------------------------------------------------------------------

/// Connections that never finish a handshake: silent ones, and one that sent only the first bytes
/// of a record header.
async fn stalled_connections(addr: std::net::SocketAddr, silent: usize) -> Vec<TcpStream> {
    let mut stalled = Vec::new();
    for _ in 0..silent {
        stalled.push(e2e::raw::connect(addr).await);
    }
    let mut partial = e2e::raw::connect(addr).await;
    partial.write_all(&[0x16, 0x03, 0x01]).await.unwrap_or_else(|e| panic!("writing a partial record header: {e}"));
    stalled.push(partial);
    stalled
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_stalled_clients_do_not_block_other_clients() {
    let ca = TestCa::new("stall CA");
    let a = ca.issue(&["a.test"]);
    // A handshake timeout far beyond the test: the stalled connections stay open throughout.
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "handshake_timeout: 5m", "");
    let addr = site.gateway.addr();
    // More stalled connections than the gateway has workers (one per core), each accepted first.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let stalled = stalled_connections(addr, 2 * cores + 2).await;
    let garbage = e2e::raw::exchange(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    assert!(
        !String::from_utf8_lossy(&garbage).contains("200 OK"),
        "plain HTTP on the TLS port was served: {garbage:?}"
    );

    for n in 0..10 {
        let path = format!("/meanwhile/{n}");
        let (_, reply) = tls::try_get(&site.client(), addr, "a.test", &path)
            .await
            .unwrap_or_else(|e| panic!("GET {path} while {} connections stall their handshakes: {e:#}", stalled.len()));
        assert_echo_over_https(&reply, "a.test", &path);
    }
    for (i, stream) in stalled.iter().enumerate() {
        let mut byte = [0u8; 1];
        match stream.try_read(&mut byte) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!("stalled connection {i} should still be open and silent, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn handshake_stalled_client_cut_off_after_handshake_timeout() {
    let ca = TestCa::new("timeout CA");
    let a = ca.issue(&["a.test"]);
    // Header and idle timeouts far beyond the handshake timeout: only the latter can close them.
    let server = "header_read_timeout: 5m\nidle_timeout: 5m";
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "handshake_timeout: 1s", server);
    let addr = site.gateway.addr();
    let mut stalled = stalled_connections(addr, 1).await;
    let mut partial = stalled.pop().unwrap_or_else(|| panic!("no partial connection"));
    let mut silent = stalled.pop().unwrap_or_else(|| panic!("no silent connection"));

    // read_until_close panics if the gateway keeps them open past TIMEOUT (30 times the handshake timeout).
    assert_eq!(e2e::raw::read_until_close(&mut silent).await, b"", "the silent client was sent something");
    e2e::raw::read_until_close(&mut partial).await;
    let (_, reply) = tls::try_get(&site.client(), addr, "a.test", "/after").await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_echo_over_https(&reply, "a.test", "after the cut-offs");
}

/// The value of `gateway_tls_handshake_failures_total{reason}` in a `/metrics` text (0 if absent).
fn handshake_failures(metrics: &str, reason: &str) -> f64 {
    let series = format!("gateway_tls_handshake_failures_total{{reason=\"{reason}\"}} ");
    let value = metrics.lines().find_map(|line| line.strip_prefix(&series));
    value.and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

#[tokio::test]
async fn handshake_failures_counted_in_metrics_by_reason() {
    let ca = TestCa::new("failures CA");
    let a = ca.issue(&["a.test"]);
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], "handshake_timeout: 1s", "");
    let addr = site.gateway.addr();
    // Plain HTTP on the TLS port: a handshake that fails at once.
    e2e::raw::exchange(addr, b"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n").await;
    // A client that sends nothing: cut off by handshake_timeout.
    let mut silent = e2e::raw::connect(addr).await;
    e2e::raw::read_until_close(&mut silent).await;
    let admin = site.gateway.admin_addr();
    let metrics = e2e::fetch_until(
        "/metrics to count the failed and the timed-out handshake",
        || async move { e2e::client::get(admin, "/metrics").await.text() },
        |text| handshake_failures(text, "error") >= 1.0 && handshake_failures(text, "timeout") >= 1.0,
        String::clone,
    )
    .await;
    // The served handshakes of `Site::start` and of the test are not failures.
    let (_, reply) = tls::try_get(&site.client(), addr, "a.test", "/ok").await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_echo_over_https(&reply, "a.test", "after the failures");
    let after = e2e::client::get(admin, "/metrics").await.text();
    for reason in ["error", "timeout"] {
        assert_eq!(handshake_failures(&after, reason), handshake_failures(&metrics, reason), "{reason}: {after}");
    }
}

// ---------------------------------------------------------------------------------------------------
// gateway certs dev
// ---------------------------------------------------------------------------------------------------

#[tokio::test]
async fn certs_dev_files_served_and_trusted_for_localhost_and_loopback_ips() {
    let backend = Backend::spawn("A");
    let dir = ConfigDir::new(&tls_config_for(&backend, &[("localhost", false)], "", ""));
    let out = config_dir(&dir);
    let generated = std::process::Command::new(e2e::binary("gateway"))
        .args(["certs", "dev", "--out"])
        .arg(out)
        .output()
        .unwrap_or_else(|e| panic!("running gateway certs dev: {e}"));
    let stderr = String::from_utf8_lossy(&generated.stderr);
    assert_eq!(generated.status.code(), Some(0), "gateway certs dev; stderr:\n{stderr}");
    for name in ["ca.crt", "ca.key", "localhost.crt", "localhost.key"] {
        assert!(out.join(name).is_file(), "gateway certs dev did not write {name}");
    }

    let gateway = Gateway::start_with_file(dir.path());
    let client = TlsClient::trusting_pem_file(&out.join("ca.crt"));
    // 127.0.0.1 as the name: rustls verifies the IP address SAN (and sends no SNI for it).
    for name in ["localhost", "127.0.0.1"] {
        let (negotiated, reply) = tls::try_get(&client, gateway.addr(), name, "/dev")
            .await
            .unwrap_or_else(|e| panic!("GET /dev as {name} trusting only the dev CA: {e:#}"));
        assert_eq!(negotiated.version, ProtocolVersion::TLSv1_3, "as {name}");
        assert_echo_over_https(&reply, name, &format!("GET /dev as {name}"));
    }
}

// ---------------------------------------------------------------------------------------------------
// gateway check
// ---------------------------------------------------------------------------------------------------

/// `gateway check` on a config whose `a` entry has `a_cert` / `a_key` contents (`None`: no file).
fn check_with_files(a_cert: Option<&str>, a_key: Option<&str>) -> (std::process::Output, ConfigDir, String) {
    let backend = Backend::spawn("A");
    let yaml = tls_config_for(&backend, &[("a", false)], "", "");
    let dir = ConfigDir::new(&yaml);
    for (name, contents) in [("a.crt", a_cert), ("a.key", a_key)] {
        if let Some(contents) = contents {
            std::fs::write(config_dir(&dir).join(name), contents).unwrap_or_else(|e| panic!("writing {name}: {e}"));
        }
    }
    (gateway_check(dir.path()), dir, yaml)
}

/// Asserts exit 1 and a problem line starting `FILE:LINE:COL: yaml_path: ` that mentions `mention`.
fn assert_check_problem(
    output: &std::process::Output,
    dir: &ConfigDir,
    at: (usize, usize),
    yaml_path: &str,
    mention: &str,
) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "gateway check; stderr:\n{stderr}");
    let prefix = format!("{}:{}:{}: {yaml_path}: ", dir.path_text(), at.0, at.1);
    assert!(
        stderr.lines().any(|l| l.starts_with(&prefix) && l.contains(mention)),
        "no line starting {prefix:?} and mentioning {mention:?}; stderr:\n{stderr}"
    );
}

#[test]
fn check_tls_valid_files_exit_0() {
    let ca = TestCa::new("check CA");
    let leaf = ca.issue(&["a.test"]);
    let (output, _dir, _) = check_with_files(Some(&leaf.cert_pem), Some(&leaf.key_pem));
    let (stdout, stderr) = (String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert_eq!(output.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn check_tls_missing_cert_file_exits_1_with_location() {
    let ca = TestCa::new("check CA");
    let leaf = ca.issue(&["a.test"]);
    let (output, dir, yaml) = check_with_files(None, Some(&leaf.key_pem));
    let at = (line_number(&yaml, "- cert: a.crt"), CERT_VALUE_COLUMN);
    assert_check_problem(&output, &dir, at, "listeners[0].tls.certificates[0].cert", "a.crt");
}

#[test]
fn check_tls_key_not_matching_cert_exits_1_with_location() {
    let ca = TestCa::new("check CA");
    let (leaf, other) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let (output, dir, yaml) = check_with_files(Some(&leaf.cert_pem), Some(&other.key_pem));
    let at = (line_number(&yaml, "key: a.key"), KEY_VALUE_COLUMN);
    assert_check_problem(&output, &dir, at, "listeners[0].tls.certificates[0].key", "a.key");
}

#[test]
fn check_tls_key_file_not_pem_exits_1_with_location() {
    let ca = TestCa::new("check CA");
    let leaf = ca.issue(&["a.test"]);
    let (output, dir, yaml) = check_with_files(Some(&leaf.cert_pem), Some("not a key\n"));
    let at = (line_number(&yaml, "key: a.key"), KEY_VALUE_COLUMN);
    assert_check_problem(&output, &dir, at, "listeners[0].tls.certificates[0].key", "a.key");
}

#[test]
fn run_tls_missing_cert_file_exits_1_with_location_without_serving() {
    let backend = Backend::spawn("A");
    let yaml = tls_config_for(&backend, &[("a", false)], "", "");
    let dir = ConfigDir::new(&yaml);
    let output = gateway_run_invalid(dir.path());
    let at = (line_number(&yaml, "- cert: a.crt"), CERT_VALUE_COLUMN);
    assert_check_problem(&output, &dir, at, "listeners[0].tls.certificates[0].cert", "a.crt");
    assert!(!String::from_utf8_lossy(&output.stdout).contains("ready"), "it must not serve");
}
