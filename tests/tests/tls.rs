//! TLS termination: protocol versions, SNI certificate choice, ALPN (HTTP/2 and HTTP/1.1 over TLS),
//! certificate hot reload from disk (rotation under load, broken files), the handshake timeout and
//! the accept loop, and `gateway check` on certificate problems.
//!
//! Each test makes its own CA and leaves with rcgen and writes them beside the config in a
//! [`ConfigDir`] (the config names them relative to its own directory). Clients trust only that CA.
//! Waits go through `/admin/config` or repeated handshakes; no test asserts how long anything takes.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use e2e::client::Reply;
use e2e::tls::{self, Https1, Leaf, TestCa, TlsClient, TLS12, TLS13};
use e2e::{gateway_check, gateway_run_invalid, Backend, ConfigDir, Gateway, TIMEOUT};
use rustls::{AlertDescription, ProtocolVersion};
use serde_json::Value;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Clients making new connections during a certificate rotation.
const ROTATION_CLIENTS: usize = 4;

/// Requests the rotation clients complete before the rotation, and again after the new certificate
/// shows up, so both certificates are seen under load.
const ROTATION_REQUESTS_EACH_SIDE: u64 = 40;

/// Column of the value in a `        - cert: a.crt` line (and `          key: a.key` is 16).
const CERT_VALUE_COLUMN: usize = 17;
const KEY_VALUE_COLUMN: usize = 16;

// ---------------------------------------------------------------------------------------------------
// Configs and fixtures
// ---------------------------------------------------------------------------------------------------

/// One certificate entry of the listener: files `<stem>.crt` / `<stem>.key` beside the config.
struct Entry<'a> {
    stem: &'a str,
    leaf: &'a Leaf,
    default: bool,
}

fn entry<'a>(stem: &'a str, leaf: &'a Leaf) -> Entry<'a> {
    Entry { stem, leaf, default: false }
}

fn default_entry<'a>(stem: &'a str, leaf: &'a Leaf) -> Entry<'a> {
    Entry { stem, leaf, default: true }
}

/// A `public` TLS listener with `entries` (each written as `- cert: <stem>.crt` / `key: <stem>.key`
/// lines), `tls_extra` keys of the `tls:` block and `server` keys (both unindented YAML lines), the
/// admin listener, and every request to `backend`.
fn tls_config(backend: &Backend, entries: &[Entry<'_>], tls_extra: &str, server: &str) -> String {
    let stems: Vec<(&str, bool)> = entries.iter().map(|e| (e.stem, e.default)).collect();
    tls_config_for(backend, &stems, tls_extra, server)
}

/// [`tls_config`] for certificate files written some other way: `(stem, default)` per entry.
fn tls_config_for(backend: &Backend, stems: &[(&str, bool)], tls_extra: &str, server: &str) -> String {
    let mut yaml =
        String::from("listeners:\n  - name: public\n    address: 127.0.0.1:0\n    tls:\n      certificates:\n");
    for (stem, default) in stems {
        yaml.push_str(&format!("        - cert: {stem}.crt\n          key: {stem}.key\n"));
        if *default {
            yaml.push_str("          default: true\n");
        }
    }
    for line in tls_extra.lines().filter(|l| !l.trim().is_empty()) {
        yaml.push_str(&format!("      {}\n", line.trim()));
    }
    yaml.push_str("admin:\n  address: 127.0.0.1:0\n");
    if !server.trim().is_empty() {
        yaml.push_str("server:\n");
        for line in server.lines().filter(|l| !l.trim().is_empty()) {
            yaml.push_str(&format!("  {}\n", line.trim()));
        }
    }
    yaml.push_str(&format!(
        "upstreams:\n  echo:\n    endpoints: [{}]\nroutes:\n  - name: all\n    upstream: echo\n",
        backend.url()
    ));
    yaml
}

/// A gateway with a TLS listener, its config directory, the CA its certificates chain to, and the
/// echo backend behind it. Fields drop in declaration order: the gateway before its files.
struct Site {
    gateway: Gateway,
    dir: ConfigDir,
    ca: TestCa,
    _backend: Backend,
}

impl Site {
    /// Writes the config and each entry's files into a new [`ConfigDir`], then starts the gateway.
    fn start(ca: TestCa, backend: Backend, entries: &[Entry<'_>], tls_extra: &str, server: &str) -> Site {
        let dir = ConfigDir::new(&tls_config(&backend, entries, tls_extra, server));
        for entry in entries {
            entry.leaf.write(config_dir(&dir), entry.stem);
        }
        let gateway = Gateway::start_with_file(dir.path());
        Site { gateway, dir, ca, _backend: backend }
    }

    /// A client trusting the site's CA (TLS 1.2 and 1.3, no ALPN, SNI, name checked).
    fn client(&self) -> TlsClient {
        TlsClient::new(&self.ca)
    }

    fn files(&self) -> &Path {
        config_dir(&self.dir)
    }
}

/// The directory holding `dir`'s config file (where the certificates go).
fn config_dir(dir: &ConfigDir) -> &Path {
    dir.path().parent().unwrap_or_else(|| panic!("{} has no parent directory", dir.path().display()))
}

/// 1-based number of the line of `text` equal to `line` after its indentation; panics if there is
/// not exactly one.
fn line_number(text: &str, line: &str) -> usize {
    let found: Vec<usize> =
        text.lines().enumerate().filter(|(_, l)| l.trim_start() == line).map(|(i, _)| i + 1).collect();
    assert_eq!(found.len(), 1, "expected exactly one line {line:?} in:\n{text}");
    found[0]
}

// ---------------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------------

/// Asserts `reply` is the echo's 200 for a request that came in over TLS for `host`.
fn assert_echo_over_https(reply: &Reply, host: &str, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    let echoed = reply.echoed();
    assert_eq!(echoed.header_all("x-forwarded-proto"), ["https"], "{what}: {echoed:?}");
    assert_eq!(echoed.header_all("x-forwarded-host"), [host], "{what}: {echoed:?}");
    assert_eq!(
        echoed.header_all("forwarded"),
        [format!(r#"for=127.0.0.1;host="{host}";proto=https"#)],
        "{what}: {echoed:?}"
    );
}

/// Asserts `served` is `expected`, naming what it is otherwise.
fn assert_served(served: &rustls::pki_types::CertificateDer<'_>, expected: &Leaf, candidates: &[&Leaf], what: &str) {
    assert!(
        *served == expected.der,
        "{what}: expected the certificate for {:?}, the gateway served {}",
        expected.names,
        tls::describe(served, candidates)
    );
}

/// Asserts the last reload failed without changing `version`, with an error line for the YAML entry
/// at `(line, column)` and `yaml_path` that mentions `file_name`.
fn assert_cert_reload_failed(
    json: &Value,
    dir: &ConfigDir,
    version: &Value,
    (at, yaml_path, file_name): ((usize, usize), &str, &str),
) {
    assert_eq!(json["version"], *version, "a failed reload changed the active version: {json:#}");
    let last = &json["last_reload"];
    assert_eq!(last["ok"], false, "last_reload.ok in {json:#}");
    assert_eq!(last["trigger"], "file", "last_reload.trigger in {json:#}");
    let error = last["error"].as_str().unwrap_or_else(|| panic!("no last_reload.error in {json:#}"));
    let expected = format!("{}:{}:{}: {yaml_path}: ", dir.path_text(), at.0, at.1);
    assert!(
        error.lines().any(|l| l.starts_with(&expected) && l.contains(file_name)),
        "no line starting {expected:?} and mentioning {file_name:?} in the error:\n{error}"
    );
}

/// Asserts `/admin/config`, read once the new certificate has been served, records the successful
/// file-triggered reload that brought it; returns the document. `version` describes the active
/// config, so the report must be in place by the time the new snapshot serves a handshake.
async fn assert_reload_recorded(gateway: &Gateway) -> Value {
    let json = gateway.admin_config().await;
    let last = &json["last_reload"];
    assert!(
        last["ok"] == true && last["trigger"] == "file",
        "the new certificate is being served, but /admin/config does not report a successful file reload: {json:#}"
    );
    json
}

/// Asserts every problem line `gateway check` prints for the files as they are now appears, exactly,
/// in `last_reload.error`.
fn assert_error_has_every_check_line(json: &Value, dir: &ConfigDir) {
    let error = json["last_reload"]["error"].as_str().unwrap_or_else(|| panic!("no last_reload.error in {json:#}"));
    let check = gateway_check(dir.path());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "gateway check on the same files; stderr:\n{stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with(dir.path_text())).collect();
    assert!(!problems.is_empty(), "gateway check printed no problem line; stderr:\n{stderr}");
    for problem in problems {
        assert!(
            error.lines().any(|l| l == problem),
            "`gateway check` line {problem:?} missing from the error:\n{error}"
        );
    }
}

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
        Https1::start(stream, "a.test").await.unwrap_or_else(|e| panic!("HTTP/1.1 over TLS: {e:#}")).get("/v").await;
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
        let mut connection = Https1::start(stream, "a.test").await.unwrap_or_else(|e| panic!("HTTP/1.1: {e:#}"));
        // Two requests: the connection stays usable (keep-alive over TLS).
        for path in ["/one", "/two"] {
            let reply = connection.get(path).await;
            assert_echo_over_https(&reply, "a.test", &format!("GET {path} with ALPN offer {offer:?}"));
            assert_eq!(reply.echoed().path, path);
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Certificate reload
// ---------------------------------------------------------------------------------------------------

/// What the rotation clients saw.
#[derive(Default)]
struct RotationReport {
    old: u64,
    new: u64,
    failures: Vec<String>,
}

/// A client making a new TLS connection (full handshake) for every request until `stop`.
async fn rotation_client(
    id: usize,
    addr: std::net::SocketAddr,
    client: TlsClient,
    (old, new): (Leaf, Leaf),
    done: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> RotationReport {
    let mut report = RotationReport::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let path = format!("/rotate/{id}/{n}");
        match tls::try_get(&client, addr, "a.test", &path).await {
            Ok((negotiated, reply)) if reply.status == 200 && reply.echoed().path == path => {
                if negotiated.served == old.der {
                    report.old += 1;
                } else if negotiated.served == new.der {
                    report.new += 1;
                } else {
                    report
                        .failures
                        .push(format!("{path}: served {}", tls::describe(&negotiated.served, &[&old, &new])));
                }
            }
            Ok((_, reply)) => report.failures.push(format!("{path}: status {}: {}", reply.status, reply.text())),
            Err(e) => report.failures.push(format!("{path}: {e:#}")),
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    report
}

async fn wait_for_requests(done: &AtomicU64, at_least: u64) {
    e2e::eventually(&format!("{at_least} requests by the rotation clients"), || async {
        done.load(Ordering::Relaxed) >= at_least
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cert_rotated_on_disk_under_new_connections_zero_failures_new_cert_served() {
    let ca = TestCa::new("rotation CA");
    let (old, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &old)], "", "");
    let addr = site.gateway.addr();
    let before = site.gateway.admin_config().await;

    // A keep-alive connection opened before the rotation must be left alone by it.
    let stream = site.client().connect(addr, "a.test").await;
    assert_served(&tls::negotiated(&stream).served, &old, &[&old, &new], "before the rotation");
    let mut held = Https1::start(stream, "a.test").await.unwrap_or_else(|e| panic!("HTTP/1.1: {e:#}"));
    assert_echo_over_https(&held.get("/held/before").await, "a.test", "on the held connection");

    let (done, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let clients: Vec<_> = (0..ROTATION_CLIENTS)
        .map(|id| {
            let leaves = (old.clone(), new.clone());
            tokio::spawn(rotation_client(id, addr, site.client(), leaves, Arc::clone(&done), Arc::clone(&stop)))
        })
        .collect();
    wait_for_requests(&done, ROTATION_REQUESTS_EACH_SIDE).await;

    new.replace(site.files(), "a");

    let probe = site.client();
    e2e::eventually("a new handshake to get the new certificate", || async {
        probe.handshake(addr, "a.test").await.served == new.der
    })
    .await;
    wait_for_requests(&done, done.load(Ordering::Relaxed) + ROTATION_REQUESTS_EACH_SIDE).await;
    stop.store(true, Ordering::Relaxed);
    let mut report = RotationReport::default();
    for client in clients {
        let seen = tokio::time::timeout(TIMEOUT, client)
            .await
            .unwrap_or_else(|_| panic!("a rotation client did not stop within {TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("a rotation client panicked: {e}"));
        report.old += seen.old;
        report.new += seen.new;
        report.failures.extend(seen.failures);
    }
    eprintln!("rotation: {} with the old certificate, {} with the new one", report.old, report.new);

    assert!(report.failures.is_empty(), "{} requests failed:\n{}", report.failures.len(), report.failures.join("\n"));
    assert!(report.old > 0 && report.new > 0, "old {} / new {}: both should have been served", report.old, report.new);
    // The pre-rotation connection is untouched, and new handshakes stay on the new certificate.
    assert_echo_over_https(&held.get("/held/after").await, "a.test", "on the held connection after the rotation");
    assert_served(&probe.handshake(addr, "a.test").await.served, &new, &[&old, &new], "after the rotation");

    let json = assert_reload_recorded(&site.gateway).await;
    assert_ne!(json["version"], before["version"], "the version covers the certificate files: {json:#}");
    // Key and certificate were renamed microseconds apart: one debounced reload, never a half-rotated pair.
    assert_eq!(json["reloads"], serde_json::json!({"ok": 1, "failed": 0}), "{json:#}");
}

#[tokio::test]
async fn cert_broken_on_disk_keeps_old_serving_and_reports_location() {
    let ca = TestCa::new("broken CA");
    let (old, other, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &old)], "", "");
    let (addr, all) = (site.gateway.addr(), [&old, &other, &new]);
    let yaml = std::fs::read_to_string(site.dir.path()).unwrap_or_else(|e| panic!("reading the config: {e}"));
    let cert_at = (line_number(&yaml, "- cert: a.crt"), CERT_VALUE_COLUMN);
    let key_at = (line_number(&yaml, "key: a.key"), KEY_VALUE_COLUMN);
    let active = site.gateway.admin_config().await["version"].clone();

    // Not PEM at all.
    tls::replace_file(site.files(), "a.crt", b"this is not a certificate\n");
    let json = site.gateway.wait_for_failed_reloads_over(0).await;
    let cert_entry = (cert_at, "listeners[0].tls.certificates[0].cert", "a.crt");
    assert_cert_reload_failed(&json, &site.dir, &active, cert_entry);
    assert_error_has_every_check_line(&json, &site.dir);
    let (negotiated, reply) =
        tls::try_get(&site.client(), addr, "a.test", "/still").await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_served(&negotiated.served, &old, &all, "while a.crt is not PEM");
    assert_echo_over_https(&reply, "a.test", "while a.crt is not PEM");

    // A valid certificate whose key is not the one in a.key.
    tls::replace_file(site.files(), "a.crt", other.cert_pem.as_bytes());
    let json = site.gateway.wait_for_failed_reloads_over(1).await;
    let key_entry = (key_at, "listeners[0].tls.certificates[0].key", "a.key");
    assert_cert_reload_failed(&json, &site.dir, &active, key_entry);
    let negotiated = site.client().handshake(addr, "a.test").await;
    assert_served(&negotiated.served, &old, &all, "while a.crt does not match a.key");

    // The certificate file gone altogether.
    std::fs::remove_file(site.files().join("a.crt")).unwrap_or_else(|e| panic!("removing a.crt: {e}"));
    let json = site.gateway.wait_for_failed_reloads_over(2).await;
    let cert_entry = (cert_at, "listeners[0].tls.certificates[0].cert", "a.crt");
    assert_cert_reload_failed(&json, &site.dir, &active, cert_entry);
    let negotiated = site.client().handshake(addr, "a.test").await;
    assert_served(&negotiated.served, &old, &all, "while a.crt is missing");

    // A matching pair again: it takes over.
    new.replace(site.files(), "a");
    let json = site
        .gateway
        .admin_config_until("a successful reload of the repaired pair", |json| json["last_reload"]["ok"] == true)
        .await;
    assert_ne!(json["version"], active, "{json:#}");
    assert_eq!(json["reloads"]["failed"], 3, "{json:#}");
    let (negotiated, reply) =
        tls::try_get(&site.client(), addr, "a.test", "/new").await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_served(&negotiated.served, &new, &all, "after repairing the pair");
    assert_echo_over_https(&reply, "a.test", "after repairing the pair");
}

#[tokio::test]
async fn cert_in_subdirectory_rotated_new_cert_served() {
    let ca = TestCa::new("subdirectory CA");
    let (old, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    // Outside the config file's own directory: only a watch on the certificate's directory sees it.
    let site = Site::start(ca, Backend::spawn("A"), &[entry("tls/a", &old)], "", "");
    let addr = site.gateway.addr();
    let (negotiated, reply) =
        tls::try_get(&site.client(), addr, "a.test", "/sub").await.unwrap_or_else(|e| panic!("{e:#}"));
    assert_served(&negotiated.served, &old, &[&old, &new], "tls/a.crt relative to the config's directory");
    assert_echo_over_https(&reply, "a.test", "GET /sub");

    new.replace(&site.files().join("tls"), "a");

    let probe = site.client();
    e2e::eventually("a new handshake to get the new certificate from tls/", || async {
        probe.handshake(addr, "a.test").await.served == new.der
    })
    .await;
    assert_reload_recorded(&site.gateway).await;
}

#[tokio::test]
async fn cert_rewritten_in_place_new_cert_served() {
    let ca = TestCa::new("in place CA");
    let (old, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &old)], "", "");
    let addr = site.gateway.addr();

    // Truncate + write, like an editor or `cp` over the old files (no rename).
    new.write(site.files(), "a");

    let probe = site.client();
    e2e::eventually("a new handshake to get the rewritten certificate", || async {
        probe.handshake(addr, "a.test").await.served == new.der
    })
    .await;
    assert_reload_recorded(&site.gateway).await;
}

/// Lays out `secret/` like a mounted Kubernetes TLS Secret holding `leaf`: `..<generation>/tls.crt` and
/// `tls.key`, `..data -> ..<generation>`, and `tls.crt -> ..data/tls.crt` (same for the key). A later
/// call swaps `..data` atomically (a new link renamed over it), as the kubelet does.
fn mount_secret(secret: &Path, leaf: &Leaf, generation: usize) {
    use std::os::unix::fs::symlink;
    let data = format!("..2026_{generation}");
    leaf.write(&secret.join(&data), "tls");
    let temp = secret.join("..data_tmp");
    symlink(&data, &temp).unwrap_or_else(|e| panic!("linking {}: {e}", temp.display()));
    std::fs::rename(&temp, secret.join("..data")).unwrap_or_else(|e| panic!("swapping ..data: {e}"));
    for name in ["tls.crt", "tls.key"] {
        let link = secret.join(name);
        if link.symlink_metadata().is_err() {
            symlink(format!("..data/{name}"), &link).unwrap_or_else(|e| panic!("linking {}: {e}", link.display()));
        }
    }
}

#[tokio::test]
async fn cert_kubernetes_secret_symlink_swap_new_cert_served() {
    let ca = TestCa::new("secret CA");
    let (old, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let backend = Backend::spawn("A");
    let dir = ConfigDir::new(&tls_config_for(&backend, &[("secret/tls", false)], "", ""));
    let secret = config_dir(&dir).join("secret");
    mount_secret(&secret, &old, 0);
    let gateway = Gateway::start_with_file(dir.path());
    let (addr, client) = (gateway.addr(), TlsClient::new(&ca));
    assert_served(&client.handshake(addr, "a.test").await.served, &old, &[&old, &new], "through the symlinks");

    mount_secret(&secret, &new, 1);

    e2e::eventually("a new handshake to get the certificate behind the swapped ..data", || async {
        client.handshake(addr, "a.test").await.served == new.der
    })
    .await;
    assert_reload_recorded(&gateway).await;
}

#[tokio::test]
async fn config_reload_adding_certificate_serves_it_by_sni() {
    let ca = TestCa::new("config reload CA");
    let (a, b) = (ca.issue(&["a.test"]), ca.issue(&["b.test"]));
    let backend = Backend::spawn("A");
    let with_b = tls_config(&backend, &[entry("a", &a), entry("b", &b)], "", "");
    let site = Site::start(ca, backend, &[entry("a", &a)], "", "");
    let addr = site.gateway.addr();
    let negotiated = site.client().any_name().handshake(addr, "b.test").await;
    assert_served(&negotiated.served, &a, &[&a, &b], "b.test before b is configured (the only certificate)");

    b.write(site.files(), "b");
    site.dir.replace(&with_b);

    let json =
        site.gateway.admin_config_until("a successful reload adding b", |json| json["last_reload"]["ok"] == true).await;
    assert_eq!(json["reloads"], serde_json::json!({"ok": 1, "failed": 0}), "{json:#}");
    for (host, expected) in [("a.test", &a), ("b.test", &b)] {
        let (negotiated, reply) =
            tls::try_get(&site.client(), addr, host, "/both").await.unwrap_or_else(|e| panic!("as {host}: {e:#}"));
        assert_served(&negotiated.served, expected, &[&a, &b], &format!("SNI {host} after the reload"));
        assert_echo_over_https(&reply, host, &format!("GET /both as {host}"));
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

// ---------------------------------------------------------------------------------------------------
// Client certificates, HSTS, redirect to HTTPS
// ---------------------------------------------------------------------------------------------------

/// A site whose TLS listener verifies client certificates against `clients` (written as
/// `clients.crt` beside the config before the gateway starts, since validation reads it).
fn site_with_client_auth(clients: &TestCa, required: bool) -> Site {
    let ca = TestCa::new("Server CA");
    let a = ca.issue(&["a.test"]);
    let backend = Backend::spawn("A");
    let extra = format!("client_auth: {{ ca: clients.crt, required: {required} }}");
    let dir = ConfigDir::new(&tls_config(&backend, &[entry("a", &a)], &extra, ""));
    a.write(config_dir(&dir), "a");
    std::fs::write(config_dir(&dir).join("clients.crt"), &clients.cert_pem)
        .unwrap_or_else(|e| panic!("writing clients.crt: {e}"));
    let gateway = Gateway::start_with_file(dir.path());
    Site { gateway, dir, ca, _backend: backend }
}

#[tokio::test]
async fn client_auth_required_refuses_missing_and_untrusted_certificates() {
    let clients = TestCa::new("Client CA");
    let site = site_with_client_auth(&clients, true);
    let addr = site.gateway.addr();

    let trusted = clients.issue_client("client-1");
    let (_, reply) = tls::try_get(&site.client().client_cert(&trusted), addr, "a.test", "/mtls")
        .await
        .unwrap_or_else(|e| panic!("a trusted client certificate was refused: {e:#}"));
    assert_eq!(reply.status, 200);

    // TLS 1.3 clients finish their side before the server checks: the refusal shows on first use.
    let missing = tls::try_get(&site.client(), addr, "a.test", "/mtls").await;
    assert!(missing.is_err(), "a client without a certificate was served: {missing:?}");
    let stranger = TestCa::new("Other CA").issue_client("stranger");
    let untrusted = tls::try_get(&site.client().client_cert(&stranger), addr, "a.test", "/mtls").await;
    assert!(untrusted.is_err(), "a certificate from another CA was accepted: {untrusted:?}");
}

#[tokio::test]
async fn client_auth_optional_serves_anonymous_clients_but_refuses_untrusted_certificates() {
    let clients = TestCa::new("Client CA");
    let site = site_with_client_auth(&clients, false);
    let addr = site.gateway.addr();

    let (_, reply) = tls::try_get(&site.client(), addr, "a.test", "/anonymous")
        .await
        .unwrap_or_else(|e| panic!("an anonymous client was refused with required: false: {e:#}"));
    assert_eq!(reply.status, 200);
    let stranger = TestCa::new("Other CA").issue_client("stranger");
    let untrusted = tls::try_get(&site.client().client_cert(&stranger), addr, "a.test", "/anonymous").await;
    assert!(untrusted.is_err(), "a certificate from another CA was accepted: {untrusted:?}");
}

#[tokio::test]
async fn hsts_header_on_every_https_response() {
    let ca = TestCa::new("HSTS CA");
    let a = ca.issue(&["a.test"]);
    let hsts = "hsts: { max_age: 8760h, include_subdomains: true, preload: true }";
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &a)], hsts, "");
    let (_, proxied) = tls::try_get(&site.client(), site.gateway.addr(), "a.test", "/x").await.unwrap();
    // A rejection the gateway answers itself carries it too.
    let (_, rejected) = tls::try_get(&site.client(), site.gateway.addr(), "a.test", "/x/%2e%2e/y").await.unwrap();
    assert_eq!((proxied.status.as_u16(), rejected.status.as_u16()), (200, 400));
    for reply in [&proxied, &rejected] {
        assert_eq!(reply.header("strict-transport-security"), Some("max-age=31536000; includeSubDomains; preload"));
    }
}

#[tokio::test]
async fn redirect_https_answers_308_to_the_same_url_over_https() {
    let backend = Backend::spawn("A");
    let yaml = format!(
        "listeners:\n  - name: public\n    address: 127.0.0.1:0\n    redirect_https: {{ port: 8443 }}\n\
         admin:\n  address: 127.0.0.1:0\nupstreams:\n  echo:\n    endpoints: [{}]\n\
         routes:\n  - name: all\n    upstream: echo\n",
        backend.url()
    );
    let gateway = Gateway::start(&yaml);
    let reply = e2e::client::get_with(gateway.addr(), "/a/b?x=1", &[("host", "shop.test:8080")]).await;
    assert_eq!(reply.status, 308, "{}", reply.text());
    assert_eq!(reply.header("location"), Some("https://shop.test:8443/a/b?x=1"));
    assert_eq!(backend.stats().await.requests, 0, "a redirected request must not reach the upstream");
}
