//! Certificate hot reload from disk: rotation under new connections, in-place rewrites,
//! subdirectories, Kubernetes secret symlink swaps, certificates added by a config reload, and broken
//! files that must keep the old certificate serving.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use e2e::client::Connection;
use e2e::tls::{self, Leaf, TestCa, TlsClient};
use e2e::tls_site::*;
use e2e::{Backend, ConfigDir, Gateway, TIMEOUT};

/// Clients making new connections during a certificate rotation.
const ROTATION_CLIENTS: usize = 4;

/// Requests the rotation clients complete before the rotation, and again after the new certificate
/// shows up, so both certificates are seen under load.
const ROTATION_REQUESTS_EACH_SIDE: u64 = 40;

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
    let mut held = Connection::over(stream, "a.test").await.unwrap_or_else(|e| panic!("HTTP/1.1: {e:#}"));
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
    e2e::assert_error_has_every_check_line(&json, &site.dir);
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

/// Clients refuse an expired certificate, or one not valid yet: a reload must not swap one in for
/// a valid one.
#[tokio::test]
async fn cert_expired_or_not_yet_valid_on_disk_is_not_applied_by_a_reload() {
    let ca = TestCa::new("expiry CA");
    let (old, new) = (ca.issue(&["a.test"]), ca.issue(&["a.test"]));
    let (expired, future) = (ca.issue_expired(&["a.test"]), ca.issue_not_yet_valid(&["a.test"]));
    let site = Site::start(ca, Backend::spawn("A"), &[entry("a", &old)], "", "");
    let (addr, all) = (site.gateway.addr(), [&old, &expired, &future, &new]);
    let active = site.gateway.admin_config().await["version"].clone();

    for (failed, bad, why) in [(0, &expired, "expired on 2020-01-01"), (1, &future, "is not valid until 2090-01-01")] {
        bad.replace(site.files(), "a");
        let json = site.gateway.wait_for_failed_reloads_over(failed).await;
        assert_eq!(json["version"], active, "a pair that {why} was applied: {json:#}");
        let error = json["last_reload"]["error"].as_str().unwrap_or_default();
        assert!(error.contains(&format!("a.crt {why}")), "last_reload.error in {json:#}");
        let negotiated = site.client().handshake(addr, "a.test").await;
        assert_served(&negotiated.served, &old, &all, &format!("while a.crt holds a certificate that {why}"));
    }

    new.replace(site.files(), "a");
    site.gateway
        .admin_config_until("a successful reload of a valid pair", |json| json["last_reload"]["ok"] == true)
        .await;
    let negotiated = site.client().handshake(addr, "a.test").await;
    assert_served(&negotiated.served, &new, &all, "after a valid pair replaced it");
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
