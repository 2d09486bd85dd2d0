use std::sync::Arc;

use arc_swap::ArcSwap;
use http::{HeaderMap, Method};

use super::*;

const BASE: &str = "listeners: [{ name: public, address: 127.0.0.1:0 }]
upstreams:
  a: { endpoints: [http://127.0.0.1:9001] }
  b: { endpoints: [http://127.0.0.1:9002, http://127.0.0.1:9003] }
routes:
  - { name: to-a, match: { path_prefix: /a }, upstream: a }
  - { name: to-b, match: { path_prefix: /b }, upstream: b }
";

struct Fixture {
    dir: PathBuf,
    reloader: Reloader,
    runtime: Runtime,
}

impl Fixture {
    fn new(name: &str) -> Fixture {
        let dir = std::env::temp_dir().join(format!("gateway-reload-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.yaml");
        std::fs::write(&path, BASE).unwrap();
        let (loaded, version) = read(&path).unwrap();
        let runtime: Runtime = Arc::new(ArcSwap::from_pointee(Snapshot::build(&loaded.config, 2, None).unwrap()));
        let reloader = Reloader::new(path, loaded.config, version, runtime.clone(), 2);
        Fixture { dir, reloader, runtime }
    }

    fn write(&self, text: &str) {
        std::fs::write(self.reloader.path(), text).unwrap();
    }

    fn routes(&self) -> Vec<String> {
        self.runtime.load().routes.iter().map(|r| r.name.to_string()).collect()
    }

    fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.reloader.status().to_json()).unwrap()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn reload_valid_change_swaps_snapshot_and_reports_it() {
    let f = Fixture::new("valid");
    let changed = BASE.replace("path_prefix: /b", "path_prefix: /bee");
    f.write(&changed);
    f.reloader.reload(Trigger::File);
    let snapshot = f.runtime.load();
    assert_eq!(snapshot.router.find(None, "/bee/1", &Method::GET, &HeaderMap::new()), Some(1));
    let status = f.status();
    assert_eq!(status["version"], Version::of(changed.as_bytes()).as_str());
    assert_eq!(status["last_reload"]["ok"], true);
    assert_eq!(status["last_reload"]["trigger"], "file");
    assert_eq!(status["reloads"]["ok"], 1);
}

#[test]
fn reload_invalid_file_keeps_old_snapshot_and_reports_located_error() {
    let f = Fixture::new("invalid");
    let before = f.runtime.load_full();
    f.write(&BASE.replace("upstream: b", "upstream: bb"));
    f.reloader.reload(Trigger::File);
    assert!(Arc::ptr_eq(&before, &f.runtime.load_full()), "a rejected config must not be swapped in");
    let status = f.status();
    assert_eq!(status["version"], Version::of(BASE.as_bytes()).as_str());
    assert_eq!(status["last_reload"]["ok"], false);
    let error = status["last_reload"]["error"].as_str().unwrap();
    assert!(error.contains("gateway.yaml:7:") && error.contains("unknown upstream \"bb\""), "{error}");
}

#[test]
fn reload_same_bytes_is_skipped_for_file_events_but_not_for_sighup() {
    let f = Fixture::new("same");
    let before = f.runtime.load_full();
    f.reloader.reload(Trigger::File);
    assert!(Arc::ptr_eq(&before, &f.runtime.load_full()));
    assert!(f.status()["last_reload"].is_null());
    f.reloader.reload(Trigger::Sighup);
    assert_eq!(f.status()["last_reload"]["trigger"], "sighup");
    assert_eq!(f.status()["last_reload"]["ok"], true);
}

#[test]
fn reload_rejected_bytes_are_not_retried_by_file_events() {
    let f = Fixture::new("rejected");
    f.write("routes: [");
    f.reloader.reload(Trigger::File);
    f.reloader.reload(Trigger::File);
    assert_eq!(f.status()["reloads"]["failed"], 1);
    f.write(BASE);
    f.reloader.reload(Trigger::File);
    assert_eq!(f.status()["reloads"]["failed"], 1, "the serving bytes again: nothing to do");
}

#[test]
fn reload_carries_over_unchanged_upstreams_and_remaining_endpoints() {
    let f = Fixture::new("carry");
    let before = f.runtime.load_full();
    // Upstream a untouched; upstream b loses one endpoint; a route changes.
    f.write(&BASE.replace(", http://127.0.0.1:9003", "").replace("path_prefix: /a", "path_prefix: /aa"));
    f.reloader.reload(Trigger::File);
    let after = f.runtime.load_full();
    assert_eq!(f.routes(), ["to-a", "to-b"]);
    assert!(Arc::ptr_eq(&before.upstreams["a"], &after.upstreams["a"]), "unchanged upstream must be kept whole");
    assert!(!Arc::ptr_eq(&before.upstreams["b"], &after.upstreams["b"]));
    assert!(
        after.upstreams["b"].shares_state_with(&before.upstreams["b"]),
        "pools and the remaining endpoint carry over"
    );
}

#[test]
fn reload_listener_change_applies_the_rest_and_reports_restart_required() {
    let f = Fixture::new("listener");
    f.write(&BASE.replace("127.0.0.1:0", "127.0.0.1:8081").replace("path_prefix: /a", "path_prefix: /aa"));
    f.reloader.reload(Trigger::File);
    let snapshot = f.runtime.load();
    assert_eq!(snapshot.router.find(None, "/aa", &Method::GET, &HeaderMap::new()), Some(0));
    let status = f.status();
    let reasons = status["restart_required"].as_array().unwrap();
    assert_eq!(reasons.len(), 1);
    assert!(reasons[0].as_str().unwrap().starts_with("listener changes need a restart"), "{reasons:?}");
}

#[test]
fn reload_missing_file_fails_once_then_recovers_when_restored() {
    let f = Fixture::new("missing");
    std::fs::remove_file(f.reloader.path()).unwrap();
    f.reloader.reload(Trigger::File);
    f.reloader.reload(Trigger::File);
    let status = f.status();
    assert_eq!(status["reloads"]["failed"], 1, "an unreadable file is reported once, not per event");
    assert!(status["last_reload"]["error"].as_str().unwrap().starts_with("cannot read config file"));
    f.write(BASE);
    f.reloader.reload(Trigger::File);
    let status = f.status();
    assert_eq!(status["last_reload"]["ok"], true, "the file matches what serves again: {status}");
    assert!(status["last_reload"]["error"].is_null());
}
