//! Upstream TLS validation through the whole pipeline, as `gateway check` renders it.

use std::path::PathBuf;

use crate::config::{parse, referenced_files, Severity};

/// One https upstream; `{TLS}` is replaced by the test's `tls:` line (or nothing).
const CONFIG: &str = "
listeners:
  - { name: public, address: 127.0.0.1:0 }
upstreams:
  secure:
    endpoints: [ENDPOINTS]
{TLS}
routes:
  - { name: all, upstream: secure }
";

fn config(endpoints: &str, tls: &str) -> String {
    CONFIG.replace("ENDPOINTS", endpoints).replace("{TLS}", tls)
}

fn errors(text: &str) -> String {
    match parse("gw.yaml", text) {
        Ok(_) => String::from("<valid>"),
        Err(problems) => problems.to_string(),
    }
}

/// A directory under the system temp dir, unique to the test, holding a self-signed CA `ca.crt`.
fn dir_with_ca(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gateway-upstream-tls-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["ca.test".to_owned()]).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(dir.join("ca.crt"), params.self_signed(&key).unwrap().pem()).unwrap();
    dir
}

#[test]
fn https_endpoint_without_tls_block_verified_against_default_roots() {
    let loaded = parse("gw.yaml", &config("https://api.example.com, https://10.0.0.1:8443", "")).unwrap();
    let upstream = &loaded.config.upstreams[0];
    assert_eq!(upstream.endpoints[0].uri, "https://api.example.com");
    let tls = upstream.tls.as_ref().unwrap();
    assert!(tls.ca.is_none() && tls.server_name.is_none() && !tls.insecure_skip_verify);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn http_endpoints_have_no_tls() {
    let loaded = parse("gw.yaml", &config("http://127.0.0.1:9001", "")).unwrap();
    assert_eq!(loaded.config.upstreams[0].tls, None);
}

#[test]
fn ca_and_server_name_read_relative_to_config_file() {
    let dir = dir_with_ca("ca-ok");
    let label = dir.join("gw.yaml").display().to_string();
    let text = config("https://10.0.0.1:8443", "    tls: { ca: ca.crt, server_name: api.internal }");
    let loaded = parse(&label, &text).unwrap_or_else(|problems| panic!("{problems}"));
    let tls = loaded.config.upstreams[0].tls.clone().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let ca = tls.ca.unwrap();
    assert_eq!((ca.path, ca.roots.len()), (dir.join("ca.crt"), 1));
    assert_eq!(tls.server_name.unwrap().to_str(), "api.internal");
}

#[test]
fn ca_unreadable_rejected_with_location() {
    let text = config("https://10.0.0.1:8443", "    tls: { ca: /nonexistent/ca.crt }");
    assert_eq!(
        errors(&text),
        "gw.yaml:7:16: upstreams.secure.tls.ca: cannot read CA file /nonexistent/ca.crt: No such file or directory (os error 2)\n  hint: relative paths are relative to the config file's directory"
    );
}

#[test]
fn ca_without_certificates_rejected() {
    let dir = dir_with_ca("ca-empty");
    std::fs::write(dir.join("empty.crt"), "not a certificate\n").unwrap();
    let label = dir.join("gw.yaml").display().to_string();
    let result = parse(&label, &config("https://10.0.0.1:8443", "    tls: { ca: empty.crt }"));
    std::fs::remove_dir_all(&dir).unwrap();
    let out = result.unwrap_err().to_string();
    assert!(
        out.contains("upstreams.secure.tls.ca: ") && out.contains("empty.crt: no certificate in the file"),
        "{out}"
    );
}

#[test]
fn tls_block_without_https_endpoints_rejected() {
    let text = config("http://127.0.0.1:9001", "    tls: { server_name: api.internal }");
    assert_eq!(
        errors(&text),
        "gw.yaml:7:10: upstreams.secure.tls: upstream \"secure\" has a `tls:` block but no https:// endpoint to apply it to\n  hint: write the endpoints as https://HOST:PORT, or remove the `tls:` block"
    );
}

#[test]
fn mixed_schemes_rejected_at_odd_endpoint() {
    let out = errors(&config("https://10.0.0.1:8443, http://10.0.0.2:8080", ""));
    assert!(
        out.starts_with(
            "gw.yaml:6:40: upstreams.secure.endpoints[1]: upstream \"secure\" mixes http:// and https:// endpoints"
        ),
        "{out}"
    );
}

#[test]
fn insecure_skip_verify_warned_with_location() {
    let loaded = parse("gw.yaml", &config("https://10.0.0.1:8443", "    tls: { insecure_skip_verify: true }")).unwrap();
    assert!(loaded.config.upstreams[0].tls.as_ref().unwrap().insecure_skip_verify);
    let warnings: Vec<String> = loaded.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        warnings,
        ["gw.yaml:7:34: upstreams.secure.tls.insecure_skip_verify: warning: the certificates of upstream \"secure\" are not verified: anyone on the network path can impersonate it\n  hint: set `ca:` to the CA that signed the upstream's certificate instead"]
    );
    assert_eq!(loaded.warnings[0].severity, Severity::Warning);
}

#[test]
fn insecure_skip_verify_false_no_warning() {
    let loaded =
        parse("gw.yaml", &config("https://10.0.0.1:8443", "    tls: { insecure_skip_verify: false }")).unwrap();
    assert!(!loaded.config.upstreams[0].tls.as_ref().unwrap().insecure_skip_verify);
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
}

#[test]
fn insecure_skip_verify_with_ca_rejected() {
    let text = config("https://10.0.0.1:8443", "    tls: { ca: ca.crt, insecure_skip_verify: true }");
    assert!(errors(&text).contains("upstreams.secure.tls.ca: `ca` has no effect with `insecure_skip_verify: true`"));
}

#[test]
fn server_name_invalid_rejected() {
    let text = config("https://10.0.0.1:8443", "    tls: { server_name: \"not a name\" }");
    assert!(
        errors(&text).contains("upstreams.secure.tls.server_name: server_name \"not a name\" is not a valid DNS name"),
        "{}",
        errors(&text)
    );
}

#[test]
fn unknown_tls_key_rejected() {
    let text = config("https://10.0.0.1:8443", "    tls: { insecure: true }");
    assert!(errors(&text).contains("unknown key `insecure`"), "{}", errors(&text));
}

#[test]
fn referenced_files_include_upstream_ca() {
    let text = config("https://10.0.0.1:8443", "    tls: { ca: certs/upstream-ca.pem }");
    assert_eq!(referenced_files("/etc/gw/gw.yaml", &text), [PathBuf::from("/etc/gw/certs/upstream-ca.pem")]);
}

#[test]
fn referenced_files_malformed_upstreams_keep_listener_files() {
    let text = "listeners:\n  - { name: a, address: 127.0.0.1:0, tls: { certificates: [{ cert: a.crt, key: a.key }] } }\nupstreams: [1, 2]\n";
    assert_eq!(referenced_files("/gw/gw.yaml", text), [PathBuf::from("/gw/a.crt"), PathBuf::from("/gw/a.key")]);
}
