//! TLS to `https://` upstreams: the rustls client config and the connector built from an
//! upstream's validated `tls:` settings.
//!
//! Every config is built with the aws-lc-rs provider explicitly (as on the listener side), so a
//! second provider in the dependency graph can never make rustls pick one at run time. Upstreams
//! speak HTTP/1.1, so ALPN offers `http/1.1` only. SNI and the name verified are the endpoint's
//! host (an IP address is checked against the certificate's IP SANs and sent without SNI), or the
//! upstream's `server_name` when set.

use std::sync::Arc;

use hyper_rustls::{DefaultServerNameResolver, FixedServerNameResolver, HttpsConnector, ResolveServerName};
use hyper_util::client::legacy::connect::HttpConnector;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{VerifierBuilderError, WebPkiServerVerifier};
use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::{ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::config::{CaBundle, UpstreamTls};

/// Why an upstream's TLS client could not be set up (never expected with the built-in provider).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsSetupError {
    #[error("no TLS 1.2/1.3 support in the crypto provider: {0}")]
    Versions(#[source] rustls::Error),
    #[error("cannot build the certificate verifier: {0}")]
    Verifier(#[source] VerifierBuilderError),
}

/// An HTTPS-only connector for the upstream `name`: plain `http://` URIs are refused, so nothing
/// meant for this upstream can leave unencrypted.
pub(crate) fn connector(
    name: &Arc<str>,
    tls: &UpstreamTls,
    http: HttpConnector,
) -> Result<HttpsConnector<HttpConnector>, TlsSetupError> {
    let resolver: Arc<dyn ResolveServerName + Send + Sync> = match &tls.server_name {
        Some(server_name) => Arc::new(FixedServerNameResolver::new(server_name.clone())),
        None => Arc::new(DefaultServerNameResolver::default()),
    };
    Ok(HttpsConnector::new(http, client_config(name, tls)?, true, resolver))
}

/// A connector for requests the gateway makes on its own behalf (JWKS fetches): `https://` is
/// verified against `ca` or else the webpki roots, `http://` is allowed (validation warns unless
/// loopback).
pub(crate) fn fetch_connector(
    name: &Arc<str>,
    http: HttpConnector,
    ca: Option<&CaBundle>,
) -> Result<HttpsConnector<HttpConnector>, TlsSetupError> {
    let tls = UpstreamTls { ca: ca.cloned(), server_name: None, insecure_skip_verify: false };
    Ok(HttpsConnector::new(http, client_config(name, &tls)?, false, Arc::new(DefaultServerNameResolver::default())))
}

/// The rustls config of one upstream, shared by every worker's connector (and so its session cache).
fn client_config(name: &Arc<str>, tls: &UpstreamTls) -> Result<Arc<ClientConfig>, TlsSetupError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if tls.insecure_skip_verify {
        Arc::new(AcceptAnyCertificate { provider: provider.clone() })
    } else {
        let roots = match &tls.ca {
            Some(ca) => RootCertStore { roots: ca.roots.clone() },
            None => RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() },
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(TlsSetupError::Verifier)?;
        Arc::new(LoggedVerifier { upstream: name.clone(), inner: webpki })
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsSetupError::Versions)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The webpki verifier, logging why a certificate was rejected: the client only gets a 502
/// `upstream_connect_error`, and the reason must be findable without leaking it to clients.
#[derive(Debug)]
struct LoggedVerifier {
    upstream: Arc<str>,
    inner: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for LoggedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now);
        if let Err(error) = &verified {
            tracing::warn!(
                upstream = &*self.upstream,
                server_name = &*server_name.to_str(),
                %error,
                "upstream certificate rejected"
            );
        }
        verified
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn root_hint_subjects(&self) -> Option<&[DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// `insecure_skip_verify: true`: any certificate is accepted, but the handshake signatures are
/// still checked, so the connection is encrypted to whoever holds the presented certificate's key.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls(insecure_skip_verify: bool) -> UpstreamTls {
        UpstreamTls { ca: None, server_name: None, insecure_skip_verify }
    }

    #[test]
    fn client_config_offers_http1_only() {
        let config = client_config(&Arc::from("u"), &tls(false)).unwrap();
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        assert!(config.enable_sni);
    }

    #[test]
    fn client_config_insecure_builds() {
        assert!(client_config(&Arc::from("u"), &tls(true)).is_ok());
    }
}
