//! HTTPS upstreams for tests: a TLS terminator in front of an echo backend that records the SNI of
//! every handshake it completes (certificates come from [`crate::tls::TestCa`]).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use rustls::crypto::aws_lc_rs;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::ServerConfig;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::tls::{Leaf, TestCa};

/// A TLS server on a loopback port 0 that forwards each connection's plaintext to `backend` (an echo).
/// Stopped on drop.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    server_names: Arc<Mutex<Vec<Option<String>>>>,
    task: JoinHandle<()>,
}

impl TlsUpstream {
    /// Serves `cert` (TLS 1.2 and 1.3, ALPN `http/1.1`) in front of `backend`.
    pub async fn start(cert: &Leaf, backend: SocketAddr) -> TlsUpstream {
        TlsUpstream::serve(cert, backend, None).await
    }

    /// Like [`TlsUpstream::start`], over TLS 1.3 only, and refusing clients without a certificate
    /// from `clients`: the refusal comes after the client's side of the handshake has ended.
    pub async fn start_requiring_client_certificate(cert: &Leaf, backend: SocketAddr, clients: &TestCa) -> TlsUpstream {
        TlsUpstream::serve(cert, backend, Some(clients)).await
    }

    async fn serve(cert: &Leaf, backend: SocketAddr, clients: Option<&TestCa>) -> TlsUpstream {
        let chain = vec![CertificateDer::from_pem_slice(cert.cert_pem.as_bytes())
            .unwrap_or_else(|e| panic!("parsing the server certificate: {e}"))];
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
            .unwrap_or_else(|e| panic!("parsing the server key: {e}"));
        let provider = Arc::new(aws_lc_rs::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone());
        let builder = match clients {
            None => builder.with_safe_default_protocol_versions(),
            Some(_) => builder.with_protocol_versions(&[&rustls::version::TLS13]),
        }
        .unwrap_or_else(|e| panic!("choosing the upstream's TLS versions: {e}"));
        let builder = match clients {
            None => builder.with_no_client_auth(),
            Some(clients) => {
                let mut roots = rustls::RootCertStore::empty();
                roots.add(clients.der.clone()).unwrap_or_else(|e| panic!("adding the client CA: {e}"));
                let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .build()
                    .unwrap_or_else(|e| panic!("building the client certificate verifier: {e}"));
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config =
            builder.with_single_cert(chain, key).unwrap_or_else(|e| panic!("building the upstream's TLS config: {e}"));
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| panic!("binding port 0: {e}"));
        let addr = listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"));
        let server_names = Arc::new(Mutex::new(Vec::new()));
        let seen = server_names.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, seen) = (acceptor.clone(), seen.clone());
                tokio::spawn(async move {
                    // A failed handshake (the gateway rejecting the certificate) just ends this connection.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let sni = tls.get_ref().1.server_name().map(str::to_owned);
                    seen.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(sni);
                    let Ok(mut plain) = TcpStream::connect(backend).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsUpstream { addr, server_names, task }
    }

    /// The SNI of every completed handshake so far, in order (`None`: the client sent none).
    pub fn server_names(&self) -> Vec<Option<String>> {
        self.server_names.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }
}

impl Drop for TlsUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}
