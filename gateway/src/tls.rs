//! TLS termination: rustls server configs built from a listener's validated `tls:` block.
//!
//! Every config is built with the aws-lc-rs provider explicitly, so a second provider elsewhere in
//! the dependency graph can never make rustls pick one at run time (and panic). Certificates are
//! chosen by SNI against their SAN names, wildcards included; the default serves everything else.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::HeaderValue;
use rustls::crypto::aws_lc_rs;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::config::{Certificate, Hsts, ListenerTls, TlsVersion};

/// What a TLS listener's connections need: the rustls config, how long a handshake may take, and
/// the `Strict-Transport-Security` value its responses carry.
#[derive(Debug)]
pub struct Acceptor {
    pub config: Arc<ServerConfig>,
    pub handshake_timeout: Duration,
    pub hsts: Option<HeaderValue>,
}

/// Builds the acceptor for a listener: TLS 1.2+ (or 1.3 only), ALPN h2 then http/1.1, session
/// resumption by tickets and by a session cache.
pub fn acceptor(tls: &ListenerTls) -> Result<Acceptor, rustls::Error> {
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::V1_2 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V1_3 => &[&rustls::version::TLS13],
    };
    let resolver = SniResolver { certificates: tls.certificates.clone(), default: tls.default_certificate };
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let builder = match &tls.client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let mut roots = RootCertStore::empty();
            for root in &auth.roots {
                roots.add(root.clone())?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if auth.required { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|e| rustls::Error::General(e.to_string()))?)
        }
    };
    let mut config = builder.with_cert_resolver(Arc::new(resolver));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if let Some(ticketer) = ticketer() {
        config.ticketer = ticketer;
    }
    Ok(Acceptor {
        config: Arc::new(config),
        handshake_timeout: tls.handshake_timeout,
        hsts: tls.hsts.as_ref().map(hsts),
    })
}

/// `max-age=31536000; includeSubDomains; preload` (RFC 6797 section 6.1).
fn hsts(hsts: &Hsts) -> HeaderValue {
    let mut value = format!("max-age={}", hsts.max_age.as_secs());
    if hsts.include_subdomains {
        value.push_str("; includeSubDomains");
    }
    if hsts.preload {
        value.push_str("; preload");
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("max-age=0"))
}

/// One ticket key for the whole process, so tickets survive a reload (rustls rotates the key).
fn ticketer() -> Option<Arc<dyn rustls::server::ProducesTickets>> {
    static TICKETER: OnceLock<Option<Arc<dyn rustls::server::ProducesTickets>>> = OnceLock::new();
    TICKETER
        .get_or_init(|| match aws_lc_rs::Ticketer::new() {
            Ok(ticketer) => Some(ticketer),
            Err(error) => {
                tracing::warn!(%error, "TLS session tickets unavailable; resumption uses the session cache only");
                None
            }
        })
        .clone()
}

#[derive(Debug)]
struct SniResolver {
    certificates: Vec<Certificate>,
    default: usize,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let by_name = hello.server_name().and_then(|name| self.certificates.iter().find(|c| c.covers(name)));
        by_name.or_else(|| self.certificates.get(self.default)).map(|c| c.certified.clone())
    }
}
