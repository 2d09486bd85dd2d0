//! Upstreams with `https://` endpoints: certificates verified against a configured CA (or the
//! webpki roots), SNI from the endpoint host or `server_name`, `insecure_skip_verify`, and a
//! rejected certificate turned into 502 `upstream_connect_error` with the reason in the log only.

use e2e::tls::TestCa;
use e2e::upstream_tls::TlsUpstream;
use e2e::{client, config, eventually, write_temp, Backend, ConfigDir, Gateway};

/// One route to upstream `secure` with the given endpoint and `tls:` flow mapping (or none).
fn secure_config(endpoint: &str, tls: Option<&str>) -> String {
    let tls = tls.map(|tls| format!(", tls: {tls}")).unwrap_or_default();
    config(
        &format!(
            "upstreams:\n  secure: {{ endpoints: [\"{endpoint}\"]{tls} }}\nroutes:\n  - {{ name: all, upstream: secure }}\n"
        ),
        &[],
    )
}

#[tokio::test]
async fn upstream_tls_custom_ca_proxied_with_endpoint_host_as_sni() {
    let echo = Backend::spawn("tls-echo");
    let ca = TestCa::new("upstream test CA");
    let upstream = TlsUpstream::start(&ca.issue(&["localhost"]), echo.addr).await;
    let ca_file = write_temp("upstream-ca", "crt", &ca.cert_pem);
    let endpoint = format!("https://localhost:{}", upstream.addr.port());
    let gateway = Gateway::start(&secure_config(&endpoint, Some(&format!("{{ ca: \"{}\" }}", ca_file.display()))));

    // One client connection: it stays on one gateway worker, whose pool the upstream connection joins.
    let mut connection = client::Connection::connect(gateway.addr()).await;
    let reply = connection.get("/hello?x=1").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let echoed = reply.echoed();
    assert_eq!((echoed.backend.as_str(), echoed.path.as_str()), ("tls-echo", "/hello?x=1"));
    assert_eq!(upstream.server_names(), [Some("localhost".to_owned())]);
    // The pooled TLS connection is reused: no second handshake.
    assert_eq!(connection.get("/again").await.status, 200);
    assert_eq!(upstream.server_names().len(), 1);
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn upstream_tls_certificate_from_other_ca_returns_502_and_logs_reason() {
    let echo = Backend::spawn("tls-echo");
    let (trusted, other) = (TestCa::new("trusted CA"), TestCa::new("other CA"));
    let upstream = TlsUpstream::start(&other.issue(&["localhost"]), echo.addr).await;
    let ca_file = write_temp("upstream-ca", "crt", &trusted.cert_pem);
    let endpoint = format!("https://localhost:{}", upstream.addr.port());
    let gateway = Gateway::start(&secure_config(&endpoint, Some(&format!("{{ ca: \"{}\" }}", ca_file.display()))));

    let reply = client::get(gateway.addr(), "/x").await;
    let body = reply.assert_error(502, "upstream_connect_error");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(!message.contains("certificate") && !message.contains("localhost"), "leaks the reason: {message}");
    assert!(upstream.server_names().is_empty(), "the handshake must not complete");
    eventually("the gateway logs why the certificate was rejected", || async {
        let stderr = gateway.stderr();
        stderr.contains("upstream certificate rejected") && stderr.contains("UnknownIssuer")
    })
    .await;
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn upstream_tls_without_ca_uses_webpki_roots_rejecting_private_ca() {
    let echo = Backend::spawn("tls-echo");
    let ca = TestCa::new("private CA");
    let upstream = TlsUpstream::start(&ca.issue(&["localhost"]), echo.addr).await;
    let gateway = Gateway::start(&secure_config(&format!("https://localhost:{}", upstream.addr.port()), None));

    client::get(gateway.addr(), "/x").await.assert_error(502, "upstream_connect_error");
}

#[tokio::test]
async fn upstream_tls_insecure_skip_verify_accepts_unknown_ca_and_warns() {
    let echo = Backend::spawn("tls-echo");
    let ca = TestCa::new("unknown CA");
    let upstream = TlsUpstream::start(&ca.issue(&["localhost"]), echo.addr).await;
    let endpoint = format!("https://localhost:{}", upstream.addr.port());
    let gateway = Gateway::start(&secure_config(&endpoint, Some("{ insecure_skip_verify: true }")));

    let reply = client::get(gateway.addr(), "/insecure").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echoed().path, "/insecure");
    assert_eq!(upstream.server_names(), [Some("localhost".to_owned())]);
    eventually("the gateway warns that the upstream is not verified", || async {
        gateway.stderr().contains("upstreams.secure.tls.insecure_skip_verify")
    })
    .await;
}

#[tokio::test]
async fn upstream_tls_ip_endpoint_verified_against_ip_san_without_sni() {
    let echo = Backend::spawn("tls-echo");
    let ca = TestCa::new("upstream test CA");
    let ca_file = write_temp("upstream-ca", "crt", &ca.cert_pem);
    let tls = format!("{{ ca: \"{}\" }}", ca_file.display());
    let with_ip = TlsUpstream::start(&ca.issue(&["127.0.0.1"]), echo.addr).await;
    let dns_only = TlsUpstream::start(&ca.issue(&["localhost"]), echo.addr).await;
    let yaml = config(
        &format!(
            "upstreams:
  ip: {{ endpoints: [\"https://{}\"], tls: {tls} }}
  dns: {{ endpoints: [\"https://{}\"], tls: {tls} }}
routes:
  - {{ name: ip, match: {{ path_prefix: /ip }}, upstream: ip }}
  - {{ name: dns, match: {{ path_prefix: /dns }}, upstream: dns }}
",
            with_ip.addr, dns_only.addr
        ),
        &[],
    );
    let gateway = Gateway::start(&yaml);

    let reply = client::get(gateway.addr(), "/ip").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    // RFC 6066 section 3: SNI carries host names only, never an IP address.
    assert_eq!(with_ip.server_names(), [None]);
    client::get(gateway.addr(), "/dns").await.assert_error(502, "upstream_connect_error");
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn upstream_tls_server_name_overrides_sni_and_verified_name() {
    let echo = Backend::spawn("tls-echo");
    let ca = TestCa::new("upstream test CA");
    let upstream = TlsUpstream::start(&ca.issue(&["api.internal"]), echo.addr).await;
    let ca_file = write_temp("upstream-ca", "crt", &ca.cert_pem);
    let tls = format!("{{ ca: \"{}\", server_name: api.internal }}", ca_file.display());
    let gateway = Gateway::start(&secure_config(&format!("https://{}", upstream.addr), Some(&tls)));

    let reply = client::get(gateway.addr(), "/named").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(upstream.server_names(), [Some("api.internal".to_owned())]);
    let _ = std::fs::remove_file(ca_file);
}

/// Starts the gateway on a config in its own directory whose upstream trusts `upstream-ca.crt`
/// (beside the config, holding `ca`), in front of `upstream`.
fn start_trusting_file(ca: &TestCa, upstream: &TlsUpstream) -> (ConfigDir, Gateway) {
    let config_dir = ConfigDir::new("");
    ca.write(ca_dir(&config_dir), "upstream-ca.crt");
    config_dir.write_in_place(&secure_config(
        &format!("https://localhost:{}", upstream.addr.port()),
        Some("{ ca: upstream-ca.crt }"),
    ));
    let gateway = Gateway::start_with_file(config_dir.path());
    (config_dir, gateway)
}

fn ca_dir(config_dir: &ConfigDir) -> &std::path::Path {
    config_dir.path().parent().unwrap_or_else(|| panic!("config file without a directory"))
}

/// Writes `ca` beside the config and renames it over `upstream-ca.crt`, as certificate tooling does.
fn replace_ca(config_dir: &ConfigDir, ca: &TestCa) {
    let dir = ca_dir(config_dir);
    let temp = ca.write(dir, ".upstream-ca.crt.tmp");
    std::fs::rename(&temp, dir.join("upstream-ca.crt")).unwrap_or_else(|e| panic!("renaming the new CA: {e}"));
}

/// Starts trusting an old CA while the upstream's certificate is from a new one (502), replaces
/// the CA file, optionally sends SIGHUP, and waits until the new CA is trusted.
async fn ca_file_replaced_then_trusted(sighup: bool) {
    let echo = Backend::spawn("tls-echo");
    let (old_ca, new_ca) = (TestCa::new("old CA"), TestCa::new("new CA"));
    let upstream = TlsUpstream::start(&new_ca.issue(&["localhost"]), echo.addr).await;
    let (config_dir, gateway) = start_trusting_file(&old_ca, &upstream);
    client::get(gateway.addr(), "/before").await.assert_error(502, "upstream_connect_error");

    // Same YAML, new CA bytes: a new config version, so the upstream gets new TLS clients.
    replace_ca(&config_dir, &new_ca);
    if sighup {
        gateway.sighup();
    }
    eventually("the new CA is trusted", || async { client::get(gateway.addr(), "/after").await.status == 200 }).await;
}

#[tokio::test]
async fn upstream_tls_ca_file_replaced_then_sighup_trusts_new_ca() {
    ca_file_replaced_then_trusted(true).await;
}

#[tokio::test]
async fn upstream_tls_ca_file_replaced_reloads_without_signal() {
    ca_file_replaced_then_trusted(false).await;
}

/// With TLS 1.3 an upstream that wants a client certificate says no with an alert to the first
/// request, after the gateway's side of the handshake has ended: still a failed connect, so the
/// endpoint leaves the rotation instead of failing its share of requests for ever.
#[tokio::test]
async fn upstream_tls_handshake_refused_after_it_ended_counts_as_a_failed_connect() {
    let echo = Backend::spawn("tls-echo");
    let (ca, clients) = (TestCa::new("upstream test CA"), TestCa::new("client CA"));
    let good = TlsUpstream::start(&ca.issue(&["localhost"]), echo.addr).await;
    let picky = TlsUpstream::start_requiring_client_certificate(&ca.issue(&["localhost"]), echo.addr, &clients).await;
    let ca_file = write_temp("upstream-ca", "crt", &ca.cert_pem);
    let yaml = config(
        &format!(
            "upstreams:\n  secure: {{ endpoints: [\"https://localhost:{}\", \"https://localhost:{}\"], \
             tls: {{ ca: \"{}\" }} }}\nroutes:\n  - {{ name: all, upstream: secure }}\n",
            picky.addr.port(),
            good.addr.port(),
            ca_file.display()
        ),
        &[],
    );
    let gateway = Gateway::start(&yaml);
    let mut statuses = Vec::new();
    for i in 0..6 {
        let reply = client::get(gateway.addr(), &format!("/item/{i}")).await;
        if reply.status != 200 {
            reply.assert_error(502, "upstream_connect_error");
        }
        statuses.push(reply.status.as_u16());
    }
    // The request that met the refusal fails (it was sent); the endpoint then leaves the rotation.
    assert!(statuses.iter().filter(|&&s| s != 200).count() <= 1, "{statuses:?}");
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let ejected = format!(
        "gateway_upstream_endpoint_ejections_total{{endpoint=\"localhost:{}\",upstream=\"secure\"}} 1",
        picky.addr.port()
    );
    assert!(metrics.lines().any(|l| l == ejected), "{metrics}");
    let _ = std::fs::remove_file(ca_file);
}

#[tokio::test]
async fn upstream_tls_handshake_that_never_comes_counts_as_a_failed_connect() {
    // A TLS terminator that accepts TCP and then hangs: connect_timeout bounds its handshake too,
    // so the request goes to the other endpoint instead of waiting out the route's timeout.
    let echo = Backend::spawn("tls-echo");
    let ca = TestCa::new("upstream test CA");
    let good = TlsUpstream::start(&ca.issue(&["localhost"]), echo.addr).await;
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let _held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let ca_file = write_temp("upstream-ca", "crt", &ca.cert_pem);
    let yaml = config(
        &format!(
            "upstreams:\n  secure: {{ endpoints: [\"https://localhost:{silent_port}\", \"https://localhost:{}\"], \
             connect_timeout: 1s, request_timeout: 20s, tls: {{ ca: \"{}\" }} }}\nroutes:\n  - {{ name: all, upstream: secure }}\n",
            good.addr.port(),
            ca_file.display()
        ),
        &[],
    );
    let gateway = Gateway::start(&yaml);
    for i in 0..4 {
        let reply = client::get(gateway.addr(), &format!("/item/{i}")).await;
        assert_eq!(reply.status, 200, "request {i}: {}", reply.text());
    }
    let metrics = client::get(gateway.admin_addr(), "/metrics").await.text();
    let ejected = format!(
        "gateway_upstream_endpoint_ejections_total{{endpoint=\"localhost:{silent_port}\",upstream=\"secure\"}} 1"
    );
    assert!(metrics.lines().any(|l| l == ejected), "{metrics}");
    let _ = std::fs::remove_file(ca_file);
}
