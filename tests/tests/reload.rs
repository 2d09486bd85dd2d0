//! Hot reload of the config file: triggers (in-place write, rename, ConfigMap symlink swap, SIGHUP),
//! layouts (symlinks into other directories, a directory replaced by rename), all-or-nothing under
//! load, `/admin/config`, connection-pool carry-over and listener changes.
//!
//! Each gateway runs on a [`ConfigDir`] of its own (it watches the config file's directory). Waits go
//! through `/admin/config` (the active version is the FNV-1a hash of the file). The few sleeps only
//! pace a writer or leave room for a wrong extra reload to show; no test asserts how long a reload
//! takes: `benches/src/bin/reloadbench.rs` measures that.

use std::path::{Path, PathBuf};
use std::time::Duration;

use e2e::client::{self, Connection, Reply};
use e2e::load::{Load, LoadReport};
use e2e::{closed_port_addr, config, config_version, Backend, ConfigDir, Gateway, LISTENERS, TIMEOUT};
use serde_json::Value;

/// Concurrent client tasks in the load tests, each on its own keep-alive connection.
const CLIENTS: usize = 8;

/// Valid reloads in the alternation test.
const RELOADS: usize = 50;

// ---------------------------------------------------------------------------------------------------
// Configs
// ---------------------------------------------------------------------------------------------------

/// Two upstreams `a` (backend `A`) and `b` (backend `B`); every request goes to `upstream`.
fn all_to(upstream: &str, a: &Backend, b: &Backend) -> String {
    let body = format!(
        r#"
upstreams:
  a: {{ endpoints: ["${{A}}"] }}
  b: {{ endpoints: ["${{B}}"] }}
routes:
  - name: all
    upstream: {upstream}
"#
    );
    config(&body, &[a, b])
}

/// One upstream named `upstream` with `backend` as its only endpoint, and a catch-all route to it.
fn only(upstream: &str, backend: &Backend) -> String {
    let body = format!(
        "\nupstreams:\n  {upstream}: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: all, upstream: {upstream} }}\n",
        backend.url()
    );
    config(&body, &[])
}

/// Like [`all_to`] but the list of `b`'s endpoints is never closed: a YAML syntax error. Returns the
/// text and the 1-based line on which the parser trips (`routes:`, whose `:` is illegal inside the
/// flow sequence; the same shape as fixture `syntax_unclosed_bracket`).
fn syntax_broken(a: &Backend, b: &Backend) -> (String, usize) {
    let yaml = format!(
        "{LISTENERS}upstreams:\n  a: {{ endpoints: [\"{}\"] }}\n  b:\n    endpoints: [{}\nroutes:\n  - name: all\n    upstream: a\n",
        a.url(),
        b.url()
    );
    let line = line_of(&yaml, "routes:");
    (yaml, line)
}

/// Like [`all_to`] but the route names an upstream that does not exist. Returns the text and the
/// line of the bad `upstream:` value (its column is 15).
fn unknown_upstream(a: &Backend, b: &Backend) -> (String, usize) {
    let yaml = all_to("nope", a, b);
    let line = line_of(&yaml, "    upstream: nope");
    (yaml, line)
}

/// Routes `/old` to `A`, and with `with_new` also `/new` to `B`.
fn old_and_new(a: &Backend, b: &Backend, with_new: bool) -> String {
    let mut body = String::from(
        r#"
upstreams:
  a: { endpoints: ["${A}"] }
  b: { endpoints: ["${B}"] }
routes:
  - name: old
    match: { path_prefix: /old }
    upstream: a
"#,
    );
    if with_new {
        body.push_str("  - name: new\n    match: { path_prefix: /new }\n    upstream: b\n");
    }
    config(&body, &[a, b])
}

/// One upstream `a` with explicit pool settings, a catch-all route to it, and an unrelated route
/// `extra` matching `extra_path` (also to `a`).
fn pooled(a: &Backend, max_idle_per_host: u32, extra_path: &str) -> String {
    let body = format!(
        r#"
upstreams:
  a:
    endpoints: ["${{A}}"]
    pool: {{ idle_timeout: 90s, max_idle_per_host: {max_idle_per_host} }}
routes:
  - name: all
    upstream: a
  - name: extra
    match: {{ path_prefix: {extra_path} }}
    upstream: a
"#
    );
    config(&body, &[a])
}

/// A `public` listener at `listen`, the admin on port 0, and `/old` (plus `/new` with `with_new`) to `A`.
fn on_listener(listen: &str, a: &Backend, with_new: bool) -> String {
    let mut yaml = format!(
        "listeners:\n  - name: public\n    address: {listen}\nadmin:\n  address: 127.0.0.1:0\n\
         upstreams:\n  a: {{ endpoints: [\"{}\"] }}\n\
         routes:\n  - name: old\n    match: {{ path_prefix: /old }}\n    upstream: a\n",
        a.url()
    );
    if with_new {
        yaml.push_str("  - name: new\n    match: { path_prefix: /new }\n    upstream: a\n");
    }
    yaml
}

/// Routes `/r0` .. `/r11` to `A`, and with `with_r99` also `/r99` to `B`.
fn many_routes(a: &Backend, b: &Backend, with_r99: bool) -> String {
    let mut body =
        String::from("\nupstreams:\n  a: { endpoints: [\"${A}\"] }\n  b: { endpoints: [\"${B}\"] }\nroutes:\n");
    for i in 0..12 {
        body.push_str(&format!("  - {{ name: r{i}, match: {{ path: /r{i} }}, upstream: a }}\n"));
    }
    body.push_str(if with_r99 { "  - { name: r99, match: { path: /r99 }, upstream: b }\n" } else { "" });
    config(&body, &[a, b])
}

/// 1-based number of the first line of `text` that starts with `prefix`.
fn line_of(text: &str, prefix: &str) -> usize {
    text.lines().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line {prefix:?} in:\n{text}")) + 1
}

// ---------------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------------

/// `2026-11-21T15:20:00Z` or with a fraction (`...00.123Z`): RFC 3339 in UTC.
fn is_rfc3339_utc(text: &str) -> bool {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| b.get(range).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let fixed = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    let rest = &text[19.min(text.len())..];
    let fraction_ok = match rest.strip_prefix('.') {
        Some(fraction) => fraction.len() >= 2 && fraction[..fraction.len() - 1].bytes().all(|d| d.is_ascii_digit()),
        None => rest == "Z",
    };
    fixed && fraction_ok && rest.ends_with('Z')
}

/// Asserts the shape every `/admin/config` document has, whatever happened before.
fn assert_admin_config_shape(json: &Value, source: &str) {
    let version = json["version"].as_str().unwrap_or_else(|| panic!("no string `version` in {json:#}"));
    assert!(
        version.len() == 16 && version.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)),
        "`version` is not 16 lowercase hex digits in {json:#}"
    );
    assert_eq!(json["source"], source, "`source` is the config path as given, in {json:#}");
    let loaded_at = json["loaded_at"].as_str().unwrap_or_default();
    assert!(is_rfc3339_utc(loaded_at), "`loaded_at` is not RFC 3339 UTC in {json:#}");
    assert!(json["restart_required"].is_array(), "`restart_required` is not a list in {json:#}");
    assert!(json["reloads"]["ok"].is_u64() && json["reloads"]["failed"].is_u64(), "bad `reloads` in {json:#}");
    let last = &json["last_reload"];
    if !last.is_null() {
        assert!(is_rfc3339_utc(last["at"].as_str().unwrap_or_default()), "`last_reload.at` in {json:#}");
        assert!(last["trigger"] == "file" || last["trigger"] == "sighup", "`last_reload.trigger` in {json:#}");
        assert!(last["ok"].is_boolean(), "`last_reload.ok` in {json:#}");
        // null only when there was no file to hash (it could not be read).
        let version_ok = last["version"].is_string() || (last["ok"] == false && last["version"].is_null());
        assert!(version_ok, "`last_reload.version` in {json:#}");
        assert_eq!(last["ok"] == true, last["error"].is_null(), "`error` must be null exactly when ok, in {json:#}");
    }
}

/// Asserts a successful file-triggered reload to `yaml` is the last one recorded.
fn assert_last_reload_ok(json: &Value, yaml: &str, trigger: &str) {
    let version = config_version(yaml);
    assert_eq!(json["version"], version.as_str(), "active version in {json:#}");
    let last = &json["last_reload"];
    assert_eq!(last["ok"], true, "last_reload.ok in {json:#}");
    assert_eq!(last["trigger"], trigger, "last_reload.trigger in {json:#}");
    assert_eq!(last["version"], version.as_str(), "last_reload.version in {json:#}");
    assert!(last["error"].is_null(), "last_reload.error in {json:#}");
}

/// Asserts that the last reload (of `broken`) failed with an error naming `file:line:col` and the
/// `message`, that it left `active` in place, and that the error carries every problem line
/// `gateway check` prints for the same file (which still holds `broken`).
fn assert_last_reload_failed(json: &Value, dir: &ConfigDir, broken: &str, active: &str, location: &str, message: &str) {
    assert_eq!(json["version"], config_version(active).as_str(), "a failed reload changed the version: {json:#}");
    let last = &json["last_reload"];
    assert_eq!(last["ok"], false, "last_reload.ok in {json:#}");
    assert_eq!(last["trigger"], "file", "last_reload.trigger in {json:#}");
    assert_eq!(last["version"], config_version(broken).as_str(), "last_reload.version is the file tried: {json:#}");
    let error = last["error"].as_str().unwrap_or_else(|| panic!("no error text in {json:#}"));
    let expected = format!("{}:{location}: {message}", dir.path_text());
    assert!(error.lines().any(|l| l.starts_with(&expected)), "no line starting {expected:?} in the error:\n{error}");

    e2e::assert_error_has_every_check_line(json, dir);
}

/// Asserts `reply` is the echo of `backend` answering a request through the gateway.
fn assert_from(reply: &Reply, backend: &str, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {}", reply.text());
    assert_eq!(reply.echoed().backend, backend, "{what}: {}", reply.text());
}

/// Asserts the backends received exactly the requests that were answered (the load's plus `probes`
/// sent one by one): none lost, none sent twice (say, retried over a connection a reload closed).
async fn assert_each_request_reached_one_backend_once(report: &LoadReport, probes: u64, a: &Backend, b: &Backend) {
    let received = a.stats().await.requests + b.stats().await.requests;
    assert_eq!(received, report.total() + probes, "requests the backends received vs answered ones");
}

/// The echo's connection count, read over `stats` (one keep-alive connection, so reading it does not
/// itself add a connection).
async fn connections_accepted(stats: &mut Connection) -> u64 {
    let json = stats.get("/stats").await.json();
    json["connections_accepted"].as_u64().unwrap_or_else(|| panic!("no connections_accepted in /stats: {json}"))
}

// ---------------------------------------------------------------------------------------------------
// Under load
// ---------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_under_load_zero_failures() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let configs = [all_to("a", &a, &b), all_to("b", &a, &b)];
    let dir = ConfigDir::new(&configs[0]);
    let gateway = Gateway::start_with_file(dir.path());
    let initial = gateway.admin_config().await;
    assert_admin_config_shape(&initial, dir.path_text());
    assert_eq!(initial["version"], config_version(&configs[0]).as_str(), "version at start: {initial:#}");
    assert!(initial["last_reload"].is_null(), "no reload attempted yet: {initial:#}");
    assert_eq!(initial["reloads"], serde_json::json!({"ok": 0, "failed": 0}), "{initial:#}");

    let load = Load::start(gateway.addr(), CLIENTS, &["A", "B"]);
    for i in 1..=RELOADS {
        let (yaml, backend) = (&configs[i % 2], ["A", "B"][i % 2]);
        dir.replace(yaml);
        let json = gateway.wait_for_version(&config_version(yaml)).await;
        assert_admin_config_shape(&json, dir.path_text());
        assert_last_reload_ok(&json, yaml, "file");
        // Once /admin/config shows the version, every new request uses it.
        assert_from(&client::get(gateway.addr(), "/probe").await, backend, &format!("after reload {i}"));
    }
    let report = load.stop().await;

    report.assert_no_failures();
    assert_each_request_reached_one_backend_once(&report, RELOADS as u64, &a, &b).await;
    for backend in ["A", "B"] {
        assert!(
            report.by_backend.get(backend).is_some_and(|&n| n > 0),
            "{backend} never answered: {:?}",
            report.by_backend
        );
    }
    let json = gateway.admin_config().await;
    assert_eq!(json["reloads"], serde_json::json!({"ok": RELOADS, "failed": 0}), "{json:#}");
    assert_eq!(json["restart_required"], serde_json::json!([]), "nothing needs a restart: {json:#}");
    let logged = gateway.stderr().lines().filter(|l| l.contains("config reloaded")).count();
    assert_eq!(logged, RELOADS, "one `config reloaded` line per reload; stderr:\n{}", gateway.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reload_invalid_configs_keep_old_config_serving() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let configs = [all_to("a", &a, &b), all_to("b", &a, &b)];
    let (syntax, syntax_line) = syntax_broken(&a, &b);
    let (semantic, semantic_line) = unknown_upstream(&a, &b);
    let dir = ConfigDir::new(&configs[0]);
    let gateway = Gateway::start_with_file(dir.path());

    let load = Load::start(gateway.addr(), CLIENTS, &["A", "B"]);
    let rounds = 5;
    for round in 1..=rounds {
        let (active, backend) = (&configs[round % 2], ["A", "B"][round % 2]);
        dir.replace(active);
        gateway.wait_for_version(&config_version(active)).await;

        let broken_files = [
            (&syntax, format!("{syntax_line}:7"), "YAML syntax error"),
            (&semantic, format!("{semantic_line}:15"), "routes[0].upstream: unknown upstream \"nope\""),
        ];
        for (broken, location, message) in broken_files {
            let failed = gateway.admin_config().await["reloads"]["failed"].as_u64().unwrap_or_default();
            dir.replace(broken);
            let json = gateway.wait_for_failed_reloads_over(failed).await;
            assert_admin_config_shape(&json, dir.path_text());
            assert_last_reload_failed(&json, &dir, broken, active, &location, message);
            let what = format!("round {round}, after {message}");
            assert_from(&client::get(gateway.addr(), "/probe").await, backend, &what);
        }
    }
    let report = load.stop().await;

    report.assert_no_failures();
    assert!(report.total() > 0, "the load sent nothing");
    assert_each_request_reached_one_backend_once(&report, 2 * rounds as u64, &a, &b).await;
    let json = gateway.admin_config().await;
    assert_eq!(json["reloads"], serde_json::json!({"ok": rounds, "failed": 2 * rounds}), "{json:#}");
}

// ---------------------------------------------------------------------------------------------------
// Triggers
// ---------------------------------------------------------------------------------------------------

/// Starts a gateway on `dir` (holding [`old_and_new`] without `/new`), applies `change` (which must
/// make the file hold `old_and_new(.., true)`), and checks that `/new` goes to `B` afterwards, on
/// a connection opened before the reload as well as on a new one, and that `/admin/config` and the
/// log record one successful file-triggered reload.
async fn assert_change_applies_new_route(dir: &ConfigDir, new: &str, change: impl FnOnce()) {
    let gateway = Gateway::start_with_file(dir.path());
    let mut before_reload = Connection::connect(gateway.addr()).await;
    assert_from(&before_reload.get("/old").await, "A", "/old before the reload");
    client::get(gateway.addr(), "/new").await.assert_error(404, "no_route");

    change();

    let json = gateway.wait_for_version(&config_version(new)).await;
    assert_admin_config_shape(&json, dir.path_text());
    assert_last_reload_ok(&json, new, "file");
    assert_eq!(json["reloads"], serde_json::json!({"ok": 1, "failed": 0}), "{json:#}");
    assert_from(&client::get(gateway.addr(), "/new/x").await, "B", "/new on a new connection");
    assert_from(&before_reload.get("/new/x").await, "B", "/new on a connection opened before the reload");
    assert_from(&before_reload.get("/old").await, "A", "/old after the reload");
    let stderr = gateway.stderr();
    assert_eq!(stderr.lines().filter(|l| l.contains("config reloaded")).count(), 1, "stderr:\n{stderr}");
}

/// A config generator that names routes and upstreams anew on each reload must not grow /metrics
/// for ever: the series of names a reload drops go with them.
#[tokio::test]
async fn reload_drops_the_series_of_names_the_config_no_longer_has() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let version = |n: u32, backend: &Backend| {
        let body = format!(
            "\nupstreams:\n  up-v{n}: {{ endpoints: [\"{}\"] }}\nroutes:\n  - {{ name: route-v{n}, upstream: up-v{n} }}\n",
            backend.url()
        );
        config(&body, &[])
    };
    let (first, second) = (version(1, &a), version(2, &b));
    let dir = ConfigDir::new(&first);
    let gateway = Gateway::start_with_file(dir.path());
    assert_from(&client::get(gateway.addr(), "/x").await, "A", "before the reload");
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    assert!(metrics.contains(r#"route="route-v1""#) && metrics.contains(r#"upstream="up-v1""#), "{metrics}");

    dir.replace(&second);
    gateway.wait_for_version(&config_version(&second)).await;
    assert_from(&client::get(gateway.addr(), "/x").await, "B", "after the reload");
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    assert!(metrics.contains(r#"route="route-v2""#) && metrics.contains(r#"upstream="up-v2""#), "{metrics}");
    let stale: Vec<&str> = metrics.lines().filter(|l| l.contains("-v1\"")).collect();
    assert!(stale.is_empty(), "series of names the config no longer has: {stale:#?}");
}

#[tokio::test]
async fn reload_in_place_write_applies_new_route() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (old, new) = (old_and_new(&a, &b, false), old_and_new(&a, &b, true));
    let dir = ConfigDir::new(&old);
    assert_change_applies_new_route(&dir, &new, || dir.write_in_place(&new)).await;
}

#[tokio::test]
async fn reload_rename_over_file_applies_new_route() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (old, new) = (old_and_new(&a, &b, false), old_and_new(&a, &b, true));
    let dir = ConfigDir::new(&old);
    assert_change_applies_new_route(&dir, &new, || dir.replace(&new)).await;
}

#[tokio::test]
async fn reload_configmap_symlink_swap_applies_new_route() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (old, new) = (old_and_new(&a, &b, false), old_and_new(&a, &b, true));
    let dir = ConfigDir::configmap(&old);
    assert_change_applies_new_route(&dir, &new, || dir.swap_configmap(&new)).await;
}

#[tokio::test]
async fn reload_sighup_unchanged_content_reloads_ok() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let yaml = old_and_new(&a, &b, true);
    let dir = ConfigDir::new(&yaml);
    let gateway = Gateway::start_with_file(dir.path());
    let before = gateway.admin_config().await;
    assert!(before["last_reload"].is_null(), "no reload attempted yet: {before:#}");

    gateway.sighup();

    let json = gateway.admin_config_until("one successful reload", |json| json["reloads"]["ok"] == 1).await;
    assert_admin_config_shape(&json, dir.path_text());
    assert_last_reload_ok(&json, &yaml, "sighup");
    assert_eq!(json["reloads"]["failed"], 0, "{json:#}");
    assert_from(&client::get(gateway.addr(), "/new").await, "B", "/new after SIGHUP");
    assert_from(&client::get(gateway.addr(), "/old").await, "A", "/old after SIGHUP");
}

#[tokio::test]
async fn reload_identical_content_write_is_not_a_reload() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (old, new) = (old_and_new(&a, &b, false), old_and_new(&a, &b, true));
    let dir = ConfigDir::new(&old);
    let gateway = Gateway::start_with_file(dir.path());

    dir.write_in_place(&old);
    // Not a timing assertion: this only keeps the next change out of the same debounce window, so
    // that a reload of the identical file (the bug) would be counted separately. Shorter is harmless.
    tokio::time::sleep(Duration::from_millis(600)).await;
    dir.replace(&new);

    let json = gateway.wait_for_version(&config_version(&new)).await;
    assert_eq!(json["reloads"], serde_json::json!({"ok": 1, "failed": 0}), "the identical write counted: {json:#}");
    assert_last_reload_ok(&json, &new, "file");
}

#[tokio::test]
async fn reload_burst_of_in_place_writes_applies_last_without_failures() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let dir = ConfigDir::new(&all_to("a", &a, &b));
    let gateway = Gateway::start_with_file(dir.path());

    // Like a tool writing a file in several steps: every intermediate state is a change event.
    let versions: Vec<String> =
        (0..20).map(|i| format!("{}# write {i}\n", all_to(["a", "b"][i % 2], &a, &b))).collect();
    for yaml in &versions {
        dir.write_in_place(yaml);
    }

    let last = &versions[versions.len() - 1];
    let json = gateway.wait_for_version(&config_version(last)).await;
    assert_eq!(json["reloads"]["failed"], 0, "a write in the burst was read half-done: {json:#}");
    assert_last_reload_ok(&json, last, "file");
    assert_from(&client::get(gateway.addr(), "/").await, "B", "after the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_slow_in_place_write_applies_only_the_complete_file() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (old, new) = (many_routes(&a, &b, false), many_routes(&a, &b, true));
    let dir = ConfigDir::new(&old);
    let gateway = Gateway::start_with_file(dir.path());

    // A writer that rewrites the file in place one line at a time, 20 ms apart: never quiet for a
    // debounce period (~150 ms) until it is done, so nothing should be read before the end. The
    // 7x margin is the only timing this test relies on; it asserts no time.
    let path = dir.path().to_owned();
    let lines: Vec<String> = new.lines().map(|l| format!("{l}\n")).collect();
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write as _;
        let mut file = std::fs::File::create(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for line in lines {
            file.write_all(line.as_bytes()).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    // Meanwhile /r11, a route in the file before and after, must keep answering.
    let mut probes = Vec::new();
    while !writer.is_finished() {
        let reply = client::get(gateway.addr(), "/r11").await;
        probes.push(reply.status.as_u16());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    writer.await.unwrap_or_else(|e| panic!("the writer panicked: {e}"));

    let json = gateway.wait_for_version(&config_version(&new)).await;
    let missing = probes.iter().filter(|&&status| status != 200).count();
    assert_eq!(
        missing,
        0,
        "/r11 failed {missing} of {} times during the write: {probes:?}\n/admin/config: {json:#}",
        probes.len()
    );
    assert_eq!(
        json["reloads"],
        serde_json::json!({"ok": 1, "failed": 0}),
        "partly written files were read (the debounce should wait for a quiet period): {json:#}"
    );
    assert_from(&client::get(gateway.addr(), "/r99").await, "B", "the route added by the write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_in_flight_request_finishes_on_its_snapshot() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (only_a, only_b) = (only("a", &a), only("b", &b));
    let dir = ConfigDir::new(&only_a);
    let gateway = Gateway::start_with_file(dir.path());
    let mut connection = Connection::connect(gateway.addr()).await;
    let in_flight = tokio::spawn(async move {
        let reply = connection.get("/slow/1500").await;
        (connection, reply)
    });
    e2e::eventually("/slow/1500 to reach A", || async { a.stats().await.requests > 0 }).await;

    // The new config removes upstream `a` altogether.
    dir.replace(&only_b);
    gateway.wait_for_version(&config_version(&only_b)).await;
    assert_from(&client::get(gateway.addr(), "/").await, "B", "a new request after the reload");

    let (mut connection, reply) =
        tokio::time::timeout(TIMEOUT, in_flight).await.expect("in-flight request hung").expect("request task panicked");
    assert_from(&reply, "A", "the request in flight during the reload");
    assert_eq!(reply.echoed().path, "/slow/1500");
    assert_from(&connection.get("/").await, "B", "the next request on the same connection");
}

#[tokio::test]
async fn reload_websocket_upgraded_before_survives_route_removal() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (to_a, to_b) = (only("a", &a), only("b", &b));
    let dir = ConfigDir::new(&to_a);
    let gateway = Gateway::start_with_file(dir.path());
    let (mut socket, response) = tokio_tungstenite::connect_async(format!("ws://{}/ws", gateway.addr()))
        .await
        .unwrap_or_else(|e| panic!("upgrade via the gateway: {e}"));
    assert_eq!(response.status(), 101);

    // The new config routes everything to `b` and no longer has upstream `a`.
    dir.replace(&to_b);
    gateway.wait_for_version(&config_version(&to_b)).await;
    assert_from(&client::get(gateway.addr(), "/").await, "B", "a new request after the reload");

    let exchange = async {
        for text in ["after the reload", "and again"] {
            socket.send(Message::text(text)).await.unwrap_or_else(|e| panic!("sending on the upgraded socket: {e}"));
            let echoed = loop {
                match socket.next().await {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(echoed)) => break echoed,
                    other => panic!("the upgraded connection broke across the reload: {other:?}"),
                }
            };
            assert_eq!(echoed, Message::text(text));
        }
    };
    tokio::time::timeout(TIMEOUT, exchange).await.expect("WebSocket exchange did not finish in time");
}

#[tokio::test]
async fn reload_deleted_config_file_fails_once_keeps_serving() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let (old, new) = (old_and_new(&a, &b, false), old_and_new(&a, &b, true));
    let dir = ConfigDir::new(&old);
    let gateway = Gateway::start_with_file(dir.path());

    std::fs::remove_file(dir.path()).unwrap_or_else(|e| panic!("removing {}: {e}", dir.path().display()));

    let json = gateway.wait_for_failed_reloads_over(0).await;
    assert_admin_config_shape(&json, dir.path_text());
    assert_eq!(json["version"], config_version(&old).as_str(), "{json:#}");
    let error = json["last_reload"]["error"].as_str().unwrap_or_default();
    assert!(error.contains(dir.path_text()), "the error should name the file: {json:#}");
    assert_from(&client::get(gateway.addr(), "/old").await, "A", "while the file is missing");
    // Not a timing assertion: a window in which repeated attempts on one deletion (the bug) would
    // show up in the count. A correct gateway passes however long this is.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let json = gateway.admin_config().await;
    assert_eq!(json["reloads"]["failed"], 1, "one deletion, one failed reload: {json:#}");

    dir.replace(&new);
    let json = gateway.wait_for_version(&config_version(&new)).await;
    assert_last_reload_ok(&json, &new, "file");
    assert_from(&client::get(gateway.addr(), "/new").await, "B", "after the file came back");
}

// ---------------------------------------------------------------------------------------------------
// Layouts: symlinks into other directories, directories replaced
// ---------------------------------------------------------------------------------------------------

/// The directory of `root`'s own `config.yaml`, under which a test lays out its files.
fn base_of(root: &ConfigDir) -> PathBuf {
    root.path().parent().unwrap_or_else(|| panic!("{} has no directory", root.path_text())).to_owned()
}

/// Creates the symlink `link -> target` (`target` relative to the link's directory), and the
/// link's directory if need be.
fn symlink(target: &str, link: &Path) {
    if let Some(dir) = link.parent() {
        std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    }
    std::os::unix::fs::symlink(target, link).unwrap_or_else(|e| panic!("linking {} -> {target}: {e}", link.display()));
}

fn rename(from: &Path, to: &Path) {
    std::fs::rename(from, to).unwrap_or_else(|e| panic!("renaming {} to {}: {e}", from.display(), to.display()));
}

/// Truncates `file` and writes `contents` into it, like an editor saving in place.
fn write_in_place(file: &Path, contents: &str) {
    std::fs::write(file, contents).unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
}

/// Writes `contents` to a temp file next to `file` and renames it over `file`.
fn rename_over(file: &Path, contents: &str) {
    let temp = file.with_file_name(".rename_over.tmp");
    write_in_place(&temp, contents);
    rename(&temp, file);
}

/// Waits until `yaml` serves, then checks that a file event (not SIGHUP) applied it and that
/// requests go to `backend`.
async fn assert_applied(gateway: &Gateway, yaml: &str, backend: &str, what: &str) {
    let version = config_version(yaml);
    let json =
        gateway.admin_config_until(&format!("{what}: version {version}"), |json| json["version"] == version).await;
    assert_last_reload_ok(&json, yaml, "file");
    assert_from(&client::get(gateway.addr(), "/").await, backend, what);
}

/// `etc/gw/gateway.yaml -> ../../releases/v7/gateway.yaml`, as ansible, stow or a git checkout lay
/// a config out: it is edited in the release directory, which the link's directory never hears of.
#[tokio::test]
async fn reload_config_symlinked_into_another_directory_follows_its_target() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let step = |upstream: &str, n: usize| format!("{}# step {n}\n", all_to(upstream, &a, &b));
    let root = ConfigDir::new("# not used: the gateway runs on etc/gw/gateway.yaml\n");
    let v7 = root.write_file("releases/v7/gateway.yaml", &step("a", 0));
    let link = base_of(&root).join("etc/gw/gateway.yaml");
    symlink("../../releases/v7/gateway.yaml", &link);
    let gateway = Gateway::start_with_file(&link);
    assert_eq!(gateway.admin_config().await["version"], config_version(&step("a", 0)).as_str());

    write_in_place(&v7, &step("b", 1));
    assert_applied(&gateway, &step("b", 1), "B", "the target written in place").await;
    rename_over(&v7, &step("a", 2));
    assert_applied(&gateway, &step("a", 2), "A", "a file renamed over the target").await;

    // The next release: the link is replaced by one to releases/v8, then the new target is edited.
    let v8 = root.write_file("releases/v8/gateway.yaml", &step("b", 3));
    let new_link = link.with_file_name(".gateway.yaml.new");
    symlink("../../releases/v8/gateway.yaml", &new_link);
    rename(&new_link, &link);
    assert_applied(&gateway, &step("b", 3), "B", "the link repointed to releases/v8").await;
    write_in_place(&v8, &step("a", 4));
    assert_applied(&gateway, &step("a", 4), "A", "the new target written in place").await;

    let json = gateway.admin_config().await;
    assert_admin_config_shape(&json, &link.display().to_string());
    assert_eq!(json["reloads"], serde_json::json!({"ok": 4, "failed": 0}), "{json:#}");
}

/// A file the config names (here a JWT public key) that is a symlink into another directory:
/// replacing the target is a change, as replacing the file itself is.
#[tokio::test]
async fn reload_key_file_symlinked_into_another_directory_follows_its_target() {
    use backends::token::{claims, Algorithm, SigningKey};

    let echo = Backend::spawn("echo");
    let body = r#"
jwt:
  providers:
    main: { issuer: https://auth.test, audiences: [shop], algorithms: [ES256], public_key: keys/jwt.pem }
upstreams:
  echo: { endpoints: ["${echo}"] }
routes:
  - { name: all, upstream: echo, auth: { provider: main } }
"#;
    let (old_key, new_key) = (SigningKey::generate(Algorithm::ES256, "a"), SigningKey::generate(Algorithm::ES256, "b"));
    let root = ConfigDir::new(&config(body, &[&echo]));
    let target = root.write_file("vault/jwt.pem", &old_key.public_pem());
    symlink("../vault/jwt.pem", &base_of(&root).join("keys/jwt.pem"));
    let gateway = Gateway::start_with_file(root.path());
    let addr = gateway.addr();
    let call = |key: &SigningKey| {
        let token = key.sign(&claims("https://auth.test", "shop", "u1", Duration::from_secs(600)));
        async move { client::get_with(addr, "/", &[("authorization", &format!("Bearer {token}"))]).await }
    };
    assert_eq!(call(&old_key).await.status, 200, "the key the gateway started with");
    let before = gateway.admin_config().await["version"].clone();

    rename_over(&target, &new_key.public_pem());

    let json = gateway.admin_config_until("a reload for the new key", |json| json["version"] != before).await;
    assert_eq!(json["last_reload"]["trigger"], "file", "{json:#}");
    assert_eq!(call(&new_key).await.status, 200, "the key now at the link's target");
    call(&old_key).await.assert_error(401, "invalid_token");
}

/// The config's directory is replaced by rename, as deploy scripts swap a whole directory
/// (`mv conf conf.old; mv conf.new conf`): the new directory's config applies, and so do later edits
/// in it, with no SIGHUP. Also when a reload runs while there is no `conf` at all.
#[tokio::test]
async fn reload_config_directory_replaced_by_rename_is_followed() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let step = |upstream: &str, n: usize| format!("{}# step {n}\n", all_to(upstream, &a, &b));
    let root = ConfigDir::new("# not used: the gateway runs on conf/config.yaml\n");
    let base = base_of(&root);
    let file = root.write_file("conf/config.yaml", &step("a", 0));
    let gateway = Gateway::start_with_file(&file);

    root.write_file("conf.new/config.yaml", &step("b", 1));
    rename(&base.join("conf"), &base.join("conf.old"));
    rename(&base.join("conf.new"), &base.join("conf"));
    assert_applied(&gateway, &step("b", 1), "B", "conf replaced by conf.new").await;
    write_in_place(&file, &step("a", 2));
    assert_applied(&gateway, &step("a", 2), "A", "the file in the new conf written in place").await;

    // Again, slowly: a reload in between finds no config (it fails; the config serving stays).
    root.write_file("conf.new/config.yaml", &step("b", 3));
    let failed = gateway.admin_config().await["reloads"]["failed"].as_u64().unwrap_or_default();
    rename(&base.join("conf"), &base.join("conf.older"));
    let json = gateway.wait_for_failed_reloads_over(failed).await;
    assert_eq!(json["version"], config_version(&step("a", 2)).as_str(), "while there is no conf: {json:#}");
    rename(&base.join("conf.new"), &base.join("conf"));
    assert_applied(&gateway, &step("b", 3), "B", "conf.new renamed to conf after a reload found none").await;
    rename_over(&file, &step("a", 4));
    assert_applied(&gateway, &step("a", 4), "A", "a file renamed over the one in the new conf").await;

    // Moved away and straight back: the same directory, but its watch may have gone with the move.
    rename(&base.join("conf"), &base.join("conf.away"));
    rename(&base.join("conf.away"), &base.join("conf"));
    write_in_place(&file, &step("b", 5));
    assert_applied(&gateway, &step("b", 5), "B", "the file written after conf came back").await;

    assert_eq!(gateway.admin_config().await["reloads"]["ok"], 5);
}

/// A directory symlink further up the path is repointed (`app/current -> releases/v2`, the config
/// at `app/current/conf/config.yaml`): no watched directory sees that, so it takes a SIGHUP, after
/// which edits in the new directory apply by themselves.
#[tokio::test]
async fn reload_sighup_follows_a_directory_symlink_repointed_further_up() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let step = |upstream: &str, n: usize| format!("{}# step {n}\n", all_to(upstream, &a, &b));
    let root = ConfigDir::new("# not used: the gateway runs on app/current/conf/config.yaml\n");
    let base = base_of(&root);
    root.write_file("releases/v1/conf/config.yaml", &step("a", 0));
    let v2 = root.write_file("releases/v2/conf/config.yaml", &step("b", 1));
    symlink("../releases/v1", &base.join("app/current"));
    let gateway = Gateway::start_with_file(&base.join("app/current/conf/config.yaml"));

    symlink("../releases/v2", &base.join("app/current.new"));
    rename(&base.join("app/current.new"), &base.join("app/current"));
    gateway.sighup();
    let version = config_version(&step("b", 1));
    let json = gateway.admin_config_until("the SIGHUP reload of releases/v2", |json| json["version"] == version).await;
    assert_last_reload_ok(&json, &step("b", 1), "sighup");

    write_in_place(&v2, &step("a", 2));
    assert_applied(&gateway, &step("a", 2), "A", "the file in releases/v2 written in place").await;
}

// ---------------------------------------------------------------------------------------------------
// Carry-over and restart-only changes
// ---------------------------------------------------------------------------------------------------

/// On one client connection (one gateway worker, one pool): a request, a reload from `first` to
/// `second`, another request. Returns how many connections the echo accepted in between.
async fn upstream_connections_across_reload(a: &Backend, first: &str, second: &str) -> u64 {
    let dir = ConfigDir::new(first);
    let gateway = Gateway::start_with_file(dir.path());
    let mut downstream = Connection::connect(gateway.addr()).await;
    let mut stats = Connection::connect(a.addr).await;
    assert_from(&downstream.get("/before").await, "A", "before the reload");
    let before = connections_accepted(&mut stats).await;

    dir.replace(second);
    let json = gateway.wait_for_version(&config_version(second)).await;
    assert_last_reload_ok(&json, second, "file");

    assert_from(&downstream.get("/after").await, "A", "after the reload");
    connections_accepted(&mut stats).await - before
}

#[tokio::test]
async fn carry_over_unchanged_upstream_reuses_pooled_connection() {
    let a = Backend::spawn("A");
    let (first, second) = (pooled(&a, 8, "/one"), pooled(&a, 8, "/two"));
    let opened = upstream_connections_across_reload(&a, &first, &second).await;
    assert_eq!(opened, 0, "a reload that did not touch upstream `a` opened new connections to it");
}

#[tokio::test]
async fn carry_over_added_endpoint_keeps_pooled_connection_to_remaining_one() {
    let (a, b) = (Backend::spawn("A"), Backend::spawn("B"));
    let first =
        config("\nupstreams:\n  pair: { endpoints: [\"${A}\"] }\nroutes:\n  - { name: all, upstream: pair }\n", &[&a]);
    let second = config(
        "\nupstreams:\n  pair: { endpoints: [\"${A}\", \"${B}\"], load_balancing: round_robin }\nroutes:\n  - { name: all, upstream: pair }\n",
        &[&a, &b],
    );
    let dir = ConfigDir::new(&first);
    let gateway = Gateway::start_with_file(dir.path());
    let mut downstream = Connection::connect(gateway.addr()).await;
    let mut stats = Connection::connect(a.addr).await;
    assert_from(&downstream.get("/before").await, "A", "before the reload");
    let before = connections_accepted(&mut stats).await;

    dir.replace(&second);
    gateway.wait_for_version(&config_version(&second)).await;

    // Round robin over two endpoints: two requests reach both.
    let mut served = Vec::new();
    for path in ["/after/1", "/after/2"] {
        served.push(downstream.get(path).await.echoed().backend);
    }
    served.sort();
    assert_eq!(served, ["A", "B"], "after adding endpoint B");
    let opened = connections_accepted(&mut stats).await - before;
    assert_eq!(opened, 0, "endpoint A stayed in upstream `pair`; its pooled connection should be reused");
}

#[tokio::test]
async fn carry_over_changed_pool_settings_opens_new_connection() {
    let a = Backend::spawn("A");
    let (first, second) = (pooled(&a, 8, "/one"), pooled(&a, 16, "/one"));
    let opened = upstream_connections_across_reload(&a, &first, &second).await;
    assert_eq!(opened, 1, "upstream `a` with new pool settings should use a new pool (one new connection)");
}

#[tokio::test]
async fn reload_listener_change_reported_rest_applied() {
    let a = Backend::spawn("A");
    let old = on_listener("127.0.0.1:0", &a, false);
    let moved_to = closed_port_addr();
    let new = on_listener(&moved_to.to_string(), &a, true);
    let dir = ConfigDir::new(&old);
    let gateway = Gateway::start_with_file(dir.path());
    assert_eq!(gateway.admin_config().await["restart_required"], serde_json::json!([]));

    dir.replace(&new);

    let json = gateway.wait_for_version(&config_version(&new)).await;
    assert_last_reload_ok(&json, &new, "file");
    let reasons = json["restart_required"].as_array().unwrap_or_else(|| panic!("no restart_required in {json:#}"));
    assert!(
        reasons.iter().any(|r| r.as_str().is_some_and(|r| r.starts_with("listener changes need a restart"))),
        "restart_required should name the listener change: {json:#}"
    );
    assert_from(&client::get(gateway.addr(), "/new").await, "A", "the new route, on the old listener");
    assert_from(&client::get(gateway.addr(), "/old").await, "A", "the old route, on the old listener");
    let refused = tokio::net::TcpStream::connect(moved_to).await;
    assert!(refused.is_err(), "the gateway started listening on {moved_to} without a restart");
    let stderr = gateway.stderr();
    let warned = stderr.lines().any(|l| l.contains("WARN") && l.contains("listener changes need a restart"));
    assert!(warned, "no warning about the listener change; stderr:\n{stderr}");

    // Back to what is running: nothing needs a restart any more.
    let reverted = format!("{old}# reverted\n");
    dir.replace(&reverted);
    let json = gateway.wait_for_version(&config_version(&reverted)).await;
    assert_eq!(json["restart_required"], serde_json::json!([]), "after reverting the listener: {json:#}");
}

#[tokio::test]
async fn reload_renamed_listener_keeps_serving_until_the_restart() {
    // The socket was bound under its old name; new connections on it must not find it gone.
    let a = Backend::spawn("A");
    let old = on_listener("127.0.0.1:0", &a, false);
    let renamed = on_listener("127.0.0.1:0", &a, true).replace("name: public", "name: web");
    let dir = ConfigDir::new(&old);
    let gateway = Gateway::start_with_file(dir.path());

    dir.replace(&renamed);

    let json = gateway.wait_for_version(&config_version(&renamed)).await;
    assert_last_reload_ok(&json, &renamed, "file");
    assert!(json["restart_required"].to_string().contains("listener changes need a restart"), "{json:#}");
    for path in ["/new", "/old"] {
        assert_from(&client::get(gateway.addr(), path).await, "A", &format!("{path} on a new connection"));
    }
}

#[tokio::test]
async fn reload_admin_address_change_reported_rest_applied() {
    let a = Backend::spawn("A");
    let old = on_listener("127.0.0.1:0", &a, false);
    let moved_to = closed_port_addr();
    let new = on_listener("127.0.0.1:0", &a, true)
        .replace("admin:\n  address: 127.0.0.1:0", &format!("admin:\n  address: {moved_to}"));
    assert_ne!(new, on_listener("127.0.0.1:0", &a, true), "the admin address was not replaced");
    let dir = ConfigDir::new(&old);
    let gateway = Gateway::start_with_file(dir.path());

    dir.replace(&new);

    let json = gateway.wait_for_version(&config_version(&new)).await;
    assert_last_reload_ok(&json, &new, "file");
    let reasons = json["restart_required"].as_array().unwrap_or_else(|| panic!("no restart_required in {json:#}"));
    assert!(
        reasons.iter().any(|r| r.as_str().is_some_and(|r| r.contains("admin") && r.contains("need a restart"))),
        "restart_required should name the admin listener change: {json:#}"
    );
    assert_from(&client::get(gateway.addr(), "/new").await, "A", "the new route");
    assert!(tokio::net::TcpStream::connect(moved_to).await.is_err(), "the admin moved to {moved_to} without a restart");
}
