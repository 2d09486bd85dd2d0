//! A listener's `tls:` block: certificate and key files are read, decoded and checked to match
//! here, so `gateway check` and a reload report a bad file at its line in the YAML.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::crypto::aws_lc_rs::sign::any_supported_type;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_saphyr::Spanned;

use super::{duration, expiry, Report};
use crate::config::model::{
    defaults, Certificate, ClientAuth, HostMatch, Hsts, Listener, ListenerTls, Route, TlsVersion,
};
use crate::config::raw::{RawCertificate, RawListener, RawListenerTls};

pub(super) fn listener_tls(report: &mut Report<'_>, raw: &RawListenerTls, path: &str) -> Option<ListenerTls> {
    let certs_path = format!("{path}.certificates");
    if raw.certificates.value.is_empty() {
        report
            .error(raw.certificates.referenced, &certs_path, "a TLS listener needs at least one certificate")
            .hint("add `- { cert: server.crt, key: server.key }` (`gateway certs dev --out certs/` makes dev ones)");
    }
    let defaults_marked: Vec<usize> = (raw.certificates.value.iter().enumerate())
        .filter(|(_, c)| c.default.as_ref().is_some_and(|d| d.value))
        .map(|(i, _)| i)
        .collect();
    if let [_, second, ..] = defaults_marked.as_slice() {
        let at = raw.certificates.value[*second].default.as_ref().map_or(raw.certificates.referenced, |d| d.referenced);
        report
            .error(at, &format!("{certs_path}[{second}].default"), "only one certificate can be the default")
            .hint("keep `default: true` on one certificate");
    }
    let certificates: Vec<Certificate> = (raw.certificates.value.iter().enumerate())
        .filter_map(|(i, c)| certificate(report, c, &format!("{certs_path}[{i}]")))
        .collect();
    let min_version = match raw.min_version.as_ref().map(|v| (v, v.value.as_str())) {
        None | Some((_, "1.2")) => TlsVersion::V1_2,
        Some((_, "1.3")) => TlsVersion::V1_3,
        Some((raw, other)) => {
            report
                .error(raw.referenced, &format!("{path}.min_version"), format!("unknown TLS version {other:?}"))
                .hint("write \"1.2\" or \"1.3\" (in quotes); older versions are not offered at all");
            TlsVersion::V1_2
        }
    };
    let handshake_timeout = duration(
        report,
        raw.handshake_timeout.as_ref(),
        &format!("{path}.handshake_timeout"),
        defaults::TLS_HANDSHAKE_TIMEOUT,
    );
    let hsts = raw.hsts.as_ref().map(|hsts| Hsts {
        max_age: duration(report, Some(&hsts.max_age), &format!("{path}.hsts.max_age"), Duration::ZERO),
        include_subdomains: hsts.include_subdomains.unwrap_or(false),
        preload: hsts.preload.unwrap_or(false),
    });
    let client_auth = match &raw.client_auth {
        Some(auth) => {
            let ca_path = crate::config::resolve(report.file, &auth.ca.value);
            let roots = read_chain(report, &auth.ca, &ca_path, &format!("{path}.client_auth.ca"))?;
            Some(ClientAuth { ca_path, roots, required: auth.required.unwrap_or(true) })
        }
        None => None,
    };
    (certificates.len() == raw.certificates.value.len() && !certificates.is_empty()).then(|| ListenerTls {
        certificates,
        default_certificate: defaults_marked.first().copied().unwrap_or(0),
        min_version,
        handshake_timeout,
        hsts,
        client_auth,
    })
}

fn certificate(report: &mut Report<'_>, raw: &RawCertificate, path: &str) -> Option<Certificate> {
    let cert_path = crate::config::resolve(report.file, &raw.cert.value);
    let key_path = crate::config::resolve(report.file, &raw.key.value);
    let chain = read_chain(report, &raw.cert, &cert_path, &format!("{path}.cert"));
    let key = read_key(report, &raw.key, &key_path, &format!("{path}.key"));
    let (chain, key) = (chain?, key?);
    let signing_key = match any_supported_type(&key) {
        Ok(signing_key) => signing_key,
        Err(error) => {
            report
                .error(
                    raw.key.referenced,
                    &format!("{path}.key"),
                    format!("{}: unusable private key: {error}", key_path.display()),
                )
                .hint("use an RSA (2048 bits or more), ECDSA (P-256, P-384 or P-521) or Ed25519 key");
            return None;
        }
    };
    let certified = CertifiedKey::new(chain, signing_key);
    if let Err(error) = certified.keys_match() {
        report
            .error(
                raw.key.referenced,
                &format!("{path}.key"),
                format!("{} does not match the certificate in {}: {error}", key_path.display(), cert_path.display()),
            )
            .hint("pair each certificate with the private key it was issued for");
        return None;
    }
    warn_if_expiring(report, raw, &certified, &cert_path, path);
    Some(Certificate { cert_path, key_path, certified: Arc::new(certified) })
}

/// Clients refuse an expired certificate, or one not valid yet; the gateway still serves it, so
/// this is a warning, given early while there is time to renew.
fn warn_if_expiring(report: &mut Report<'_>, raw: &RawCertificate, certified: &CertifiedKey, file: &Path, path: &str) {
    const SOON: Duration = Duration::from_secs(14 * 24 * 3600);
    let Some(validity) = certified.end_entity_cert().ok().and_then(|leaf| expiry::validity(leaf)) else { return };
    let now = SystemTime::now();
    if validity.not_before > now {
        let when = crate::timefmt::rfc3339(validity.not_before);
        report
            .warn(raw.cert.referenced, &format!("{path}.cert"), format!("{} is not valid until {when}", file.display()))
            .hint("clients refuse it until then: check the issuer's clock and this machine's");
        return;
    }
    let when = crate::timefmt::rfc3339(validity.not_after);
    match validity.not_after.duration_since(now) {
        Err(_) => {
            report
                .warn(raw.cert.referenced, &format!("{path}.cert"), format!("{} expired on {when}", file.display()))
                .hint("renew it: clients refuse an expired certificate");
        }
        Ok(left) if left < SOON => {
            report
                .warn(raw.cert.referenced, &format!("{path}.cert"), format!("{} expires on {when}", file.display()))
                .hint("renew it soon; replacing the files reloads it without a restart");
        }
        Ok(_) => {}
    }
}

fn read_chain(
    report: &mut Report<'_>,
    raw: &Spanned<String>,
    file: &PathBuf,
    path: &str,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = read(report, raw, file, path, "certificate")?;
    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match chain {
        Ok(chain) if !chain.is_empty() => Some(chain),
        Ok(_) => {
            report
                .error(raw.referenced, path, format!("{}: no certificate in the file", file.display()))
                .hint("the file must hold PEM blocks `-----BEGIN CERTIFICATE-----`, the server's first");
            None
        }
        Err(error) => {
            let error = pem_error(&error);
            report.error(raw.referenced, path, format!("{}: not a PEM certificate chain: {error}", file.display()));
            None
        }
    }
}

fn read_key(
    report: &mut Report<'_>,
    raw: &Spanned<String>,
    file: &PathBuf,
    path: &str,
) -> Option<PrivateKeyDer<'static>> {
    let bytes = read(report, raw, file, path, "private key")?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Some(key),
        Err(error) => {
            report
                .error(
                    raw.referenced,
                    path,
                    format!("{}: no usable private key: {}", file.display(), pem_error(&error)),
                )
                .hint("expected a PEM `PRIVATE KEY` (PKCS#8), `RSA PRIVATE KEY` (PKCS#1) or `EC PRIVATE KEY` (SEC1)");
            None
        }
    }
}

/// A PEM error as text: the parser shows the lines it quotes as byte lists (`[67, 69, ...]`).
fn pem_error(error: &rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match error {
        Error::MissingSectionEnd { end_marker } => {
            format!("no `-----END {}-----` line (is the file cut short?)", String::from_utf8_lossy(end_marker))
        }
        Error::IllegalSectionStart { line } => format!("malformed line `{}`", String::from_utf8_lossy(line)),
        other => other.to_string(),
    }
}

pub(super) fn read(
    report: &mut Report<'_>,
    raw: &Spanned<String>,
    file: &PathBuf,
    path: &str,
    what: &str,
) -> Option<Vec<u8>> {
    match std::fs::read(file) {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            report
                .error(raw.referenced, path, format!("cannot read {what} file {}: {error}", file.display()))
                .hint("relative paths are relative to the config file's directory");
            None
        }
    }
}

/// Warns about certificates that cover none of the hosts routes are written for: likely a leftover,
/// or a certificate for the wrong names. Says nothing when some route takes any host, since every
/// certificate can serve that one.
pub(super) fn host_coverage(report: &mut Report<'_>, raw: &[RawListener], listeners: &[Listener], routes: &[Route]) {
    if routes.iter().any(|route| route.matcher.host.is_none()) {
        return;
    }
    let hosts: Vec<String> = (routes.iter())
        .filter_map(|route| match &route.matcher.host {
            Some(HostMatch::Exact(host)) => Some(host.clone()),
            // Any one label under the wildcard stands for all of them.
            Some(HostMatch::Suffix(suffix)) => Some(format!("x{suffix}")),
            None => None,
        })
        .collect();
    for listener in listeners {
        let Some(tls) = &listener.tls else { continue };
        let Some((i, raw_listener)) = raw.iter().enumerate().find(|(_, r)| r.name.value == listener.name) else {
            continue;
        };
        let Some(raw_tls) = &raw_listener.tls else { continue };
        for (j, (certificate, raw_certificate)) in tls.certificates.iter().zip(&raw_tls.certificates.value).enumerate()
        {
            if !hosts.iter().any(|host| certificate.covers(host)) {
                report
                    .warn(
                        raw_certificate.cert.referenced,
                        &format!("listeners[{i}].tls.certificates[{j}].cert"),
                        format!(
                            "{} covers none of the hosts routes match ({})",
                            certificate.cert_path.display(),
                            hosts.join(", ")
                        ),
                    )
                    .hint("check the certificate's names; clients it would serve get a name mismatch");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;

    #[test]
    fn pem_errors_quote_lines_as_text() {
        let cut_short = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        let Some(Err(error)) = CertificateDer::pem_slice_iter(cut_short).next() else { panic!("no error") };
        assert_eq!(super::pem_error(&error), "no `-----END CERTIFICATE-----` line (is the file cut short?)");
    }
}
