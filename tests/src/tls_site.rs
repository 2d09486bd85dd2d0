//! Fixtures shared by the TLS end-to-end tests: a gateway with a TLS listener whose certificates
//! sit beside its config (a [`Site`]), config builders, and checks on what it served and reported.

use serde_json::Value;

use crate::client::Reply;
use crate::tls::{self, Leaf, TestCa, TlsClient};
use crate::{Backend, ConfigDir, Gateway};
use std::path::Path;

/// Column of the value in a `        - cert: a.crt` line (and `          key: a.key` is 16).
pub const CERT_VALUE_COLUMN: usize = 17;
pub const KEY_VALUE_COLUMN: usize = 16;

// ---------------------------------------------------------------------------------------------------
// Configs and fixtures
// ---------------------------------------------------------------------------------------------------

/// One certificate entry of the listener: files `<stem>.crt` / `<stem>.key` beside the config.
pub struct Entry<'a> {
    pub stem: &'a str,
    pub leaf: &'a Leaf,
    pub default: bool,
}

pub fn entry<'a>(stem: &'a str, leaf: &'a Leaf) -> Entry<'a> {
    Entry { stem, leaf, default: false }
}

pub fn default_entry<'a>(stem: &'a str, leaf: &'a Leaf) -> Entry<'a> {
    Entry { stem, leaf, default: true }
}

/// A `public` TLS listener with `entries` (each written as `- cert: <stem>.crt` / `key: <stem>.key`
/// lines), `tls_extra` keys of the `tls:` block and `server` keys (both unindented YAML lines), the
/// admin listener, and every request to `backend`.
pub fn tls_config(backend: &Backend, entries: &[Entry<'_>], tls_extra: &str, server: &str) -> String {
    let stems: Vec<(&str, bool)> = entries.iter().map(|e| (e.stem, e.default)).collect();
    tls_config_for(backend, &stems, tls_extra, server)
}

/// [`tls_config`] for certificate files written some other way: `(stem, default)` per entry.
pub fn tls_config_for(backend: &Backend, stems: &[(&str, bool)], tls_extra: &str, server: &str) -> String {
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
pub struct Site {
    pub gateway: Gateway,
    pub dir: ConfigDir,
    pub ca: TestCa,
    pub _backend: Backend,
}

impl Site {
    /// Writes the config and each entry's files into a new [`ConfigDir`], then starts the gateway.
    pub fn start(ca: TestCa, backend: Backend, entries: &[Entry<'_>], tls_extra: &str, server: &str) -> Site {
        let dir = ConfigDir::new(&tls_config(&backend, entries, tls_extra, server));
        for entry in entries {
            entry.leaf.write(config_dir(&dir), entry.stem);
        }
        let gateway = Gateway::start_with_file(dir.path());
        Site { gateway, dir, ca, _backend: backend }
    }

    /// A client trusting the site's CA (TLS 1.2 and 1.3, no ALPN, SNI, name checked).
    pub fn client(&self) -> TlsClient {
        TlsClient::new(&self.ca)
    }

    pub fn files(&self) -> &Path {
        config_dir(&self.dir)
    }
}

/// The directory holding `dir`'s config file (where the certificates go).
pub fn config_dir(dir: &ConfigDir) -> &Path {
    dir.path().parent().unwrap_or_else(|| panic!("{} has no parent directory", dir.path().display()))
}

/// 1-based number of the line of `text` equal to `line` after its indentation; panics if there is
/// not exactly one.
pub fn line_number(text: &str, line: &str) -> usize {
    let found: Vec<usize> =
        text.lines().enumerate().filter(|(_, l)| l.trim_start() == line).map(|(i, _)| i + 1).collect();
    assert_eq!(found.len(), 1, "expected exactly one line {line:?} in:\n{text}");
    found[0]
}

// ---------------------------------------------------------------------------------------------------
// Checks
// ---------------------------------------------------------------------------------------------------

/// Asserts `reply` is the echo's 200 for a request that came in over TLS for `host`.
pub fn assert_echo_over_https(reply: &Reply, host: &str, what: &str) {
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
pub fn assert_served(
    served: &rustls::pki_types::CertificateDer<'_>,
    expected: &Leaf,
    candidates: &[&Leaf],
    what: &str,
) {
    assert!(
        *served == expected.der,
        "{what}: expected the certificate for {:?}, the gateway served {}",
        expected.names,
        tls::describe(served, candidates)
    );
}

/// Asserts the last reload failed without changing `version`, with an error line for the YAML entry
/// at `(line, column)` and `yaml_path` that mentions `file_name`.
pub fn assert_cert_reload_failed(
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
pub async fn assert_reload_recorded(gateway: &Gateway) -> Value {
    let json = gateway.admin_config().await;
    let last = &json["last_reload"];
    assert!(
        last["ok"] == true && last["trigger"] == "file",
        "the new certificate is being served, but /admin/config does not report a successful file reload: {json:#}"
    );
    json
}
