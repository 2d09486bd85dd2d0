//! TLS listener policies: client certificates (required and optional), HSTS, and the plain
//! listener's redirect to HTTPS.

use e2e::tls::{self, TestCa};
use e2e::tls_site::*;
use e2e::{Backend, ConfigDir, Gateway};

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

    // The Host checks of a proxying listener apply: no redirect to a URL the Host would bend.
    for hosts in ["host: a.test\r\nhost: evil.test\r\n", "host: evil.test/x?\r\n"] {
        let request = format!("GET /a HTTP/1.1\r\n{hosts}connection: close\r\n\r\n");
        let reply = e2e::raw::parse(&e2e::raw::exchange(gateway.addr(), request.as_bytes()).await);
        assert_eq!(reply.map(|r| r.status), Some(400), "{hosts:?}");
    }
}
