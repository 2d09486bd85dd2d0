//! How the load generator talks to a server: HTTP/1.1 or HTTP/2, over TCP or TLS 1.3, on
//! keep-alive connections or a new connection per request.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, Uri};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// The ALPN id of HTTP/2 over TLS (RFC 9113 section 3.2).
pub const ALPN_H2: &[u8] = b"h2";
/// The ALPN id of HTTP/1.1 (RFC 7301 section 6).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// The wire protocol of one scenario.
#[derive(Debug, Clone)]
pub struct Protocol {
    /// HTTP/2 (prior knowledge in cleartext, ALPN `h2` over TLS); else HTTP/1.1.
    pub http2: bool,
    /// Requests in flight on each connection: HTTP/2 streams; always 1 for HTTP/1.1.
    pub streams: usize,
    /// TLS to the server; `None` for cleartext.
    pub tls: Option<Tls>,
    /// A new connection (TCP + TLS handshake) for every request, closed after the response
    /// (HTTP/1.1 sends `Connection: close` so the server closes, as a browser-less client would).
    pub new_conn_per_request: bool,
}

impl Protocol {
    /// Cleartext HTTP/1.1 keep-alive, what every scenario used before TLS and HTTP/2.
    pub fn http1() -> Protocol {
        Protocol { http2: false, streams: 1, tls: None, new_conn_per_request: false }
    }

    /// Request loops sharing each connection.
    pub fn streams_per_connection(&self) -> usize {
        if self.http2 && !self.new_conn_per_request {
            self.streams.max(1)
        } else {
            1
        }
    }
}

/// A TLS client setup: the config (trust, versions, ALPN) and the SNI name to send.
#[derive(Debug, Clone)]
pub struct Tls {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
}

/// A client config for the bench: TLS 1.3 only, trusting only the PEM certificates in `ca`,
/// offering the one ALPN id `alpn`, and without session resumption, so that every new
/// connection pays for a full handshake.
pub fn tls_client_config(ca: &Path, alpn: &[u8]) -> anyhow::Result<Arc<ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))? {
        roots.add(cert.with_context(|| format!("parsing {}", ca.display()))?)?;
    }
    let mut config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The request every scenario sends: `GET path`. HTTP/1.1 uses the origin form and a `Host`
/// header; HTTP/2 needs the scheme and authority in the URI (its `:scheme` and `:authority`).
pub fn get_request(protocol: &Protocol, authority: &str, path: &str) -> anyhow::Result<Request<Empty<Bytes>>> {
    let mut req = Request::new(Empty::<Bytes>::new());
    if protocol.http2 {
        let scheme = if protocol.tls.is_some() { "https" } else { "http" };
        *req.uri_mut() = format!("{scheme}://{authority}{path}").parse::<Uri>()?;
        *req.version_mut() = http::Version::HTTP_2;
    } else {
        *req.uri_mut() = path.parse::<Uri>()?;
        req.headers_mut().insert(header::HOST, HeaderValue::from_str(authority)?);
        if protocol.new_conn_per_request {
            req.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    Ok(req)
}

/// The authority clients put in requests: the SNI name with the port over TLS, else the address.
pub fn authority(protocol: &Protocol, addr: SocketAddr) -> String {
    match &protocol.tls {
        Some(tls) => format!("{}:{}", tls.server_name.to_str(), addr.port()),
        None => addr.to_string(),
    }
}

/// One open connection, ready for requests.
pub enum Sender {
    H1(http1::SendRequest<Empty<Bytes>>),
    H2(http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    /// Another handle on the same connection (HTTP/2 only: streams multiplex).
    pub fn share(&self) -> Option<Sender> {
        match self {
            Sender::H1(_) => None,
            Sender::H2(s) => Some(Sender::H2(s.clone())),
        }
    }

    /// Waits until the connection can take a request; fails if it was closed.
    pub async fn ready(&mut self) -> hyper::Result<()> {
        match self {
            Sender::H1(s) => s.ready().await,
            Sender::H2(s) => s.ready().await,
        }
    }

    /// Sends `req`; resolves to the response head (the body is read by the caller).
    pub async fn send(&mut self, req: Request<Empty<Bytes>>) -> hyper::Result<Response<Incoming>> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

/// Opens a connection to `addr` as `protocol` says (TCP, then TLS, then the HTTP handshake).
pub async fn connect(addr: SocketAddr, protocol: &Protocol) -> Result<Sender, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_nodelay(true).map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let Some(tls) = &protocol.tls else {
        return http_handshake(tcp, protocol.http2).await;
    };
    let stream = TlsConnector::from(Arc::clone(&tls.config))
        .connect(tls.server_name.clone(), tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))?;
    let want = if protocol.http2 { ALPN_H2 } else { ALPN_HTTP1 };
    let got = stream.get_ref().1.alpn_protocol();
    if got != Some(want) {
        return Err(format!("server chose ALPN {:?}, wanted {:?}", got.map(String::from_utf8_lossy), want));
    }
    http_handshake(stream, protocol.http2).await
}

async fn http_handshake<S>(io: S, http2: bool) -> Result<Sender, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(io);
    // The connection futures drive the I/O; their errors surface on the sender side.
    let mut sender = if http2 {
        let (sender, conn) =
            http2::handshake(TokioExecutor::new(), io).await.map_err(|e| format!("HTTP/2 handshake: {e}"))?;
        tokio::spawn(conn);
        Sender::H2(sender)
    } else {
        let (sender, conn) = http1::handshake(io).await.map_err(|e| format!("HTTP/1.1 handshake: {e}"))?;
        tokio::spawn(conn);
        Sender::H1(sender)
    };
    sender.ready().await.map_err(|e| format!("connection not ready: {e}"))?;
    Ok(sender)
}

/// What a TLS handshake with `addr` negotiated, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384
/// X25519MLKEM768 ALPN h2`: printed once so the report says what was measured.
pub async fn describe_handshake(addr: SocketAddr, tls: &Tls) -> anyhow::Result<String> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    let stream = TlsConnector::from(Arc::clone(&tls.config))
        .connect(tls.server_name.clone(), tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    let conn = stream.get_ref().1;
    let show = |v: Option<String>| v.unwrap_or_else(|| "?".to_owned());
    Ok(format!(
        "{} {} {} ALPN {}",
        show(conn.protocol_version().map(|v| format!("{v:?}"))),
        show(conn.negotiated_cipher_suite().map(|s| format!("{:?}", s.suite()))),
        show(conn.negotiated_key_exchange_group().map(|g| format!("{:?}", g.name()))),
        show(conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls_protocol(http2: bool) -> Protocol {
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
        let tls = Tls { config: Arc::new(config), server_name: ServerName::try_from("localhost").expect("name") };
        Protocol { http2, tls: Some(tls), ..Protocol::http1() }
    }

    #[test]
    fn get_request_http1_origin_form_with_host() {
        let req = get_request(&Protocol::http1(), "127.0.0.1:80", "/a?b").expect("request");
        assert_eq!(req.uri(), "/a?b");
        assert_eq!(req.headers()[header::HOST], "127.0.0.1:80");
        assert!(req.headers().get(header::CONNECTION).is_none());
    }

    #[test]
    fn get_request_http1_new_conn_asks_server_to_close() {
        let protocol = Protocol { new_conn_per_request: true, ..Protocol::http1() };
        let req = get_request(&protocol, "localhost:443", "/").expect("request");
        assert_eq!(req.headers()[header::CONNECTION], "close");
    }

    #[test]
    fn get_request_http2_absolute_uri_without_host_header() {
        let plain = Protocol { http2: true, ..Protocol::http1() };
        let req = get_request(&plain, "127.0.0.1:80", "/x").expect("request");
        assert_eq!(req.uri(), "http://127.0.0.1:80/x");
        assert!(req.headers().get(header::HOST).is_none());
        let req = get_request(&tls_protocol(true), "localhost:443", "/x").expect("request");
        assert_eq!(req.uri(), "https://localhost:443/x");
    }

    #[test]
    fn authority_tls_uses_sni_name_and_port() {
        let addr: SocketAddr = "127.0.0.1:8443".parse().expect("addr");
        assert_eq!(authority(&tls_protocol(false), addr), "localhost:8443");
        assert_eq!(authority(&Protocol::http1(), addr), "127.0.0.1:8443");
    }

    #[test]
    fn streams_per_connection_only_for_keep_alive_http2() {
        let h2 = Protocol { http2: true, streams: 8, ..Protocol::http1() };
        assert_eq!(h2.streams_per_connection(), 8);
        assert_eq!(Protocol { new_conn_per_request: true, ..h2.clone() }.streams_per_connection(), 1);
        assert_eq!(Protocol { http2: false, ..h2 }.streams_per_connection(), 1);
    }

    #[test]
    fn tls_client_config_missing_ca_names_file() {
        let err = tls_client_config(Path::new("/nonexistent/ca.crt"), ALPN_H2).expect_err("missing file");
        assert!(format!("{err:#}").contains("/nonexistent/ca.crt"), "{err:#}");
    }
}
