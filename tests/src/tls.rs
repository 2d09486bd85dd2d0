//! TLS for the end-to-end tests: a throwaway CA issuing leaf certificates (rcgen) written beside a
//! config, rustls clients that trust it (chosen versions, ALPN, SNI), and HTTP/1.1 and HTTP/2
//! requests over TLS (hyper).
//!
//! Every rustls config is built with the aws-lc-rs provider explicitly. A client builds a fresh
//! `ClientConfig` per connection, so it never resumes a session: each handshake shows the certificate
//! the gateway serves right now.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, ProtocolVersion, RootCertStore, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::client::Reply;
use crate::TIMEOUT;

pub use rustls::version::{TLS12, TLS13};
pub use rustls::SupportedProtocolVersion;

/// The one crypto provider of every rustls config here.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(aws_lc_rs::default_provider())
}

// ---------------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------------

/// A certificate authority made for one test. Its certificate is what [`TlsClient`]s trust.
pub struct TestCa {
    pub cert_pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl TestCa {
    /// A new CA (ECDSA P-256) named `name`.
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("generating a CA key: {e}"));
        let cert = params.self_signed(&key).unwrap_or_else(|e| panic!("self-signing the CA {name}: {e}"));
        TestCa { cert_pem: cert.pem(), der: cert.der().clone(), issuer: Issuer::new(params, key) }
    }

    /// Writes the CA certificate (PEM) to `dir/<file>` and returns the path.
    pub fn write(&self, dir: &Path, file: &str) -> PathBuf {
        let path = dir.join(file);
        std::fs::write(&path, &self.cert_pem).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }

    /// A client certificate (extended key usage clientAuth) for `name`.
    pub fn issue_client(&self, name: &str) -> Leaf {
        self.issue_for(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A leaf certificate with a new key for `names` (DNS names, `*.` wildcards or IP addresses).
    pub fn issue(&self, names: &[&str]) -> Leaf {
        self.issue_for(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// Like [`TestCa::issue`], valid through 2019 only: expired.
    pub fn issue_expired(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, ExtendedKeyUsagePurpose::ServerAuth, |params| {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        })
    }

    /// Like [`TestCa::issue`], valid from 2090 only: not valid yet.
    pub fn issue_not_yet_valid(&self, names: &[&str]) -> Leaf {
        self.issue_with(names, ExtendedKeyUsagePurpose::ServerAuth, |params| {
            params.not_before = rcgen::date_time_ymd(2090, 1, 1);
            params.not_after = rcgen::date_time_ymd(2091, 1, 1);
        })
    }

    fn issue_for(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        self.issue_with(names, usage, |_| {})
    }

    fn issue_with(
        &self,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let owned: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params =
            CertificateParams::new(owned.clone()).unwrap_or_else(|e| panic!("bad certificate names {names:?}: {e}"));
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        adjust(&mut params);
        let key = KeyPair::generate().unwrap_or_else(|e| panic!("generating a leaf key: {e}"));
        let cert = params.signed_by(&key, &self.issuer).unwrap_or_else(|e| panic!("signing a leaf for {names:?}: {e}"));
        Leaf { names: owned, cert_pem: cert.pem(), key_pem: key.serialize_pem(), der: cert.der().clone() }
    }
}

/// A leaf certificate and its private key (PKCS#8 PEM).
#[derive(Clone)]
pub struct Leaf {
    pub names: Vec<String>,
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl Leaf {
    /// Writes `<stem>.crt` and `<stem>.key` into `dir` (`stem` may name a subdirectory, which is
    /// created); returns their paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join(format!("{stem}.crt")), dir.join(format!("{stem}.key")));
        if let Some(parent) = cert.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        write(&cert, self.cert_pem.as_bytes());
        write(&key, self.key_pem.as_bytes());
        (cert, key)
    }

    /// Replaces `<stem>.key`, then `<stem>.crt` in `dir` the way cert tooling does: each written to a
    /// temp file in `dir` and renamed over the old one.
    pub fn replace(&self, dir: &Path, stem: &str) {
        replace_file(dir, &format!("{stem}.key"), self.key_pem.as_bytes());
        replace_file(dir, &format!("{stem}.crt"), self.cert_pem.as_bytes());
    }
}

impl fmt::Debug for Leaf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Leaf{:?}", self.names)
    }
}

/// Which of `leaves` `served` is, for messages: its names, or a note that it is none of them.
pub fn describe(served: &CertificateDer<'_>, leaves: &[&Leaf]) -> String {
    match leaves.iter().find(|leaf| leaf.der == *served) {
        Some(leaf) => format!("the certificate for {:?}", leaf.names),
        None => format!("a certificate that is none of {leaves:?} ({} DER bytes)", served.len()),
    }
}

/// Writes `contents` to a temp file in `dir` and renames it to `dir/name`.
pub fn replace_file(dir: &Path, name: &str, contents: &[u8]) {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let temp = dir.join(format!(".{name}.tmp{}", COUNTER.fetch_add(1, Ordering::Relaxed)));
    write(&temp, contents);
    let path = dir.join(name);
    std::fs::rename(&temp, &path)
        .unwrap_or_else(|e| panic!("renaming {} over {}: {e}", temp.display(), path.display()));
}

fn write(path: &Path, contents: &[u8]) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------------

/// How a [`TlsClient`] connects: which protocol versions and ALPN protocols it offers, whether it sends
/// SNI, and whether it checks the server name (it always checks the chain up to the CA).
#[derive(Clone)]
pub struct TlsClient {
    roots: Arc<RootCertStore>,
    versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<Vec<u8>>,
    sni: bool,
    check_name: bool,
    /// The certificate and key to present when the server asks for one.
    client_cert: Option<Leaf>,
}

/// What a handshake settled on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub version: ProtocolVersion,
    /// The ALPN protocol, if one was agreed.
    pub alpn: Option<String>,
    /// The leaf certificate the server presented.
    pub served: CertificateDer<'static>,
}

impl TlsClient {
    /// Trusts `ca` only; offers TLS 1.2 and 1.3, no ALPN; sends SNI; checks the server name.
    pub fn new(ca: &TestCa) -> TlsClient {
        TlsClient::trusting(ca.der.clone())
    }

    /// Like [`TlsClient::new`], trusting the CA certificate in PEM file `path`.
    pub fn trusting_pem_file(path: &Path) -> TlsClient {
        let ca = CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        TlsClient::trusting(ca)
    }

    fn trusting(ca: CertificateDer<'static>) -> TlsClient {
        let mut roots = RootCertStore::empty();
        roots.add(ca).unwrap_or_else(|e| panic!("adding a CA to a root store: {e}"));
        TlsClient {
            roots: Arc::new(roots),
            versions: vec![&TLS12, &TLS13],
            alpn: Vec::new(),
            sni: true,
            check_name: true,
            client_cert: None,
        }
    }

    /// Offers exactly `versions`.
    pub fn versions(mut self, versions: &[&'static SupportedProtocolVersion]) -> TlsClient {
        self.versions = versions.to_vec();
        self
    }

    /// Offers `protocols` by ALPN, in that order of preference.
    pub fn alpn(mut self, protocols: &[&str]) -> TlsClient {
        self.alpn = protocols.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }

    /// Sends no SNI extension.
    pub fn without_sni(mut self) -> TlsClient {
        self.sni = false;
        self
    }

    /// Accepts a certificate for any name as long as it chains to the CA: for observing which
    /// certificate a server picks when it is not the one for the requested name.
    /// Presents `leaf` (see [`TestCa::issue_client`]) when the server asks for a client certificate.
    pub fn client_cert(mut self, leaf: &Leaf) -> TlsClient {
        self.client_cert = Some(leaf.clone());
        self
    }

    pub fn any_name(mut self) -> TlsClient {
        self.check_name = false;
        self
    }

    fn config(&self) -> Arc<ClientConfig> {
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::clone(&self.roots), provider())
            .build()
            .unwrap_or_else(|e| panic!("building a certificate verifier: {e}"));
        let verifier = CaVerifier { webpki, check_name: self.check_name };
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&self.versions)
            .unwrap_or_else(|e| panic!("TLS versions {:?}: {e}", self.versions))
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let mut config = match &self.client_cert {
            None => config.with_no_client_auth(),
            Some(leaf) => {
                let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes())
                    .unwrap_or_else(|e| panic!("reading a client key: {e}"));
                config
                    .with_client_auth_cert(vec![leaf.der.clone()], key)
                    .unwrap_or_else(|e| panic!("setting the client certificate: {e}"))
            }
        };
        config.alpn_protocols = self.alpn.clone();
        config.enable_sni = self.sni;
        Arc::new(config)
    }

    /// Connects to `addr` and completes a handshake for `server_name` (sent as SNI unless
    /// [`TlsClient::without_sni`]), within [`TIMEOUT`].
    pub async fn try_connect(&self, addr: SocketAddr, server_name: &str) -> anyhow::Result<TlsStream<TcpStream>> {
        let name = ServerName::try_from(server_name.to_owned())?;
        let connector = TlsConnector::from(self.config());
        let connecting = async {
            let tcp = TcpStream::connect(addr).await?;
            anyhow::Ok(connector.connect(name, tcp).await?)
        };
        tokio::time::timeout(TIMEOUT, connecting)
            .await
            .map_err(|_| anyhow::anyhow!("TLS handshake with {addr} ({server_name}): no answer within {TIMEOUT:?}"))?
    }

    /// Like [`TlsClient::try_connect`], panicking on any error.
    pub async fn connect(&self, addr: SocketAddr, server_name: &str) -> TlsStream<TcpStream> {
        self.try_connect(addr, server_name)
            .await
            .unwrap_or_else(|e| panic!("TLS handshake with {addr} as {server_name:?}: {e:#}"))
    }

    /// Connects, and returns what the handshake settled on (the connection is closed).
    pub async fn handshake(&self, addr: SocketAddr, server_name: &str) -> Negotiated {
        negotiated(&self.connect(addr, server_name).await)
    }
}

/// What `stream`'s handshake settled on.
pub fn negotiated(stream: &TlsStream<TcpStream>) -> Negotiated {
    let (_, session) = stream.get_ref();
    let version = session.protocol_version().unwrap_or_else(|| panic!("handshake done but no protocol version"));
    let alpn = session.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned());
    let served = session
        .peer_certificates()
        .and_then(|chain| chain.first())
        .unwrap_or_else(|| panic!("the server presented no certificate"))
        .clone();
    Negotiated { version, alpn, served }
}

/// The rustls error behind a failed [`TlsClient::try_connect`], if it was one.
pub fn rustls_error(error: &anyhow::Error) -> Option<&rustls::Error> {
    let io = error.downcast_ref::<std::io::Error>()?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// webpki verification against the test CA; with `check_name` false, a certificate for another
/// name is accepted (the chain and the handshake signatures are still checked).
#[derive(Debug)]
struct CaVerifier {
    webpki: Arc<WebPkiServerVerifier>,
    check_name: bool,
}

impl ServerCertVerifier for CaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            // webpki checks the chain before the name: a name error means the chain was fine.
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

// ---------------------------------------------------------------------------------------------------
// HTTP over TLS
// ---------------------------------------------------------------------------------------------------

/// `GET https://<authority><path>` over HTTP/2 on a handshaken stream (which must have agreed on
/// `h2`), within [`TIMEOUT`].
pub async fn get_h2(stream: TlsStream<TcpStream>, authority: &str, path: &str) -> anyhow::Result<Reply> {
    let exchange = async {
        let (mut sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = Request::get(format!("https://{authority}{path}")).body(Empty::<Bytes>::new())?;
        let response = sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        anyhow::Ok(Reply { status: parts.status, headers: parts.headers, body })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| anyhow::anyhow!("no HTTP/2 response within {TIMEOUT:?}"))?
}

/// A new connection, a handshake for `server_name`, and `GET path` over HTTP/1.1 with
/// `Host: server_name`. Returns the handshake's outcome and the response.
pub async fn try_get(
    client: &TlsClient,
    addr: SocketAddr,
    server_name: &str,
    path: &str,
) -> anyhow::Result<(Negotiated, Reply)> {
    let stream = client.try_connect(addr, server_name).await?;
    let negotiated = negotiated(&stream);
    let mut connection = crate::client::Connection::over(stream, server_name).await?;
    let request = crate::client::request("GET", path).body(crate::client::empty())?;
    Ok((negotiated, connection.try_send(request).await?))
}

// ---------------------------------------------------------------------------------------------------
// Raw records
// ---------------------------------------------------------------------------------------------------

/// A ClientHello record offering only `version` (e.g. `0x0302` for TLS 1.1) and no
/// `supported_versions` extension, as a TLS 1.0/1.1-only client sends (RFC 4346 section 7.4.1.2).
/// It carries `signature_algorithms` and `supported_groups` so that a TLS 1.2+ server gets as far as
/// the version decision (rustls refuses a hello without `signature_algorithms` with
/// `handshake_failure` before looking at the version).
pub fn legacy_client_hello(version: u16) -> Vec<u8> {
    let [major, minor] = version.to_be_bytes();
    let mut body = vec![major, minor];
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0xc0, 0x13, 0x00, 0x2f]); // ECDHE_RSA_AES_128_CBC_SHA, RSA_AES_128_CBC_SHA
    body.extend_from_slice(&[0x01, 0x00]); // compression: null only
    let extensions: [(u16, &[u8]); 3] = [
        (0x000d, &[0x00, 0x06, 0x04, 0x03, 0x08, 0x04, 0x04, 0x01]), // signature_algorithms
        (0x000a, &[0x00, 0x04, 0x00, 0x1d, 0x00, 0x17]),             // supported_groups: x25519, secp256r1
        (0x000b, &[0x01, 0x00]),                                     // ec_point_formats: uncompressed
    ];
    let mut encoded = Vec::new();
    for (kind, data) in extensions {
        encoded.extend_from_slice(&kind.to_be_bytes());
        encoded.extend_from_slice(&(data.len() as u16).to_be_bytes());
        encoded.extend_from_slice(data);
    }
    body.extend_from_slice(&(encoded.len() as u16).to_be_bytes());
    body.extend_from_slice(&encoded);
    let mut handshake = vec![0x01]; // client_hello
    handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01]; // handshake record, record-layer version TLS 1.0
    record.extend_from_slice(&(handshake.len() as u16).to_be_bytes());
    record.extend_from_slice(&handshake);
    record
}

/// The (level, description) of the alert record at the start of `bytes`, if it is one
/// (RFC 8446 section 6: content type 21, two-byte body).
pub fn alert(bytes: &[u8]) -> Option<(u8, u8)> {
    match bytes {
        [0x15, 0x03, _, 0x00, 0x02, level, description, ..] => Some((*level, *description)),
        _ => None,
    }
}
