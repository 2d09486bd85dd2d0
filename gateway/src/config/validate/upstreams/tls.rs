//! An upstream's `tls:` block and its endpoints' schemes: the CA file is read and parsed here, so
//! `gateway check` and a reload report a bad file at its line in the YAML.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use serde_saphyr::{Location, Spanned};

use super::super::Report;
use crate::config::model::{CaBundle, Endpoint, UpstreamTls};
use crate::config::raw::RawUpstreamTls;

/// The upstream's TLS settings: `Some` exactly when its endpoints are `https://` (defaults when
/// there is no `tls:` block). `located` gives the YAML path and position of each of `endpoints`.
pub(super) fn upstream_tls(
    report: &mut Report<'_>,
    name: &str,
    raw: Option<&Spanned<RawUpstreamTls>>,
    endpoints: &[Endpoint],
    located: &[(String, Location)],
    path: &str,
) -> Option<UpstreamTls> {
    let tls_path = format!("{path}.tls");
    let settings = raw.map(|raw| settings(report, name, &raw.value, &tls_path));
    let https = endpoints.first().map(|first| first.uri.scheme_str() == Some("https"))?;
    let mut mixed = false;
    for (endpoint, (endpoint_path, at)) in endpoints.iter().zip(located).skip(1) {
        if (endpoint.uri.scheme_str() == Some("https")) != https {
            mixed = true;
            report.error(*at, endpoint_path, format!("upstream {name:?} mixes http:// and https:// endpoints")).hint(
                "use one scheme for every endpoint of an upstream (split it into two upstreams if you need both): \
                     a mix would send part of its traffic unencrypted",
            );
        }
    }
    match (https, raw) {
        (false, Some(raw)) if !mixed => {
            report
                .error(
                    raw.referenced,
                    &tls_path,
                    format!("upstream {name:?} has a `tls:` block but no https:// endpoint to apply it to"),
                )
                .hint("write the endpoints as https://HOST:PORT, or remove the `tls:` block");
            None
        }
        (false, _) => None,
        (true, _) => settings.unwrap_or(Some(UpstreamTls { ca: None, server_name: None, insecure_skip_verify: false })),
    }
}

/// The block's own settings; `None` when one of them is wrong (after recording why).
fn settings(report: &mut Report<'_>, name: &str, raw: &RawUpstreamTls, path: &str) -> Option<UpstreamTls> {
    let insecure = raw.insecure_skip_verify.as_ref().filter(|insecure| insecure.value);
    if let Some(insecure) = insecure {
        // A warning at every load (check, start, reload), so it cannot be forgotten in a config.
        report
            .warn(
                insecure.referenced,
                &format!("{path}.insecure_skip_verify"),
                format!("the certificates of upstream {name:?} are not verified: anyone on the network path can impersonate it"),
            )
            .hint("set `ca:` to the CA that signed the upstream's certificate instead");
    }
    let mut ok = true;
    let ca = match (&raw.ca, insecure) {
        (Some(ca), Some(_)) => {
            report
                .error(ca.referenced, &format!("{path}.ca"), "`ca` has no effect with `insecure_skip_verify: true`")
                .hint("remove `insecure_skip_verify` to verify against this CA, or remove `ca`");
            ok = false;
            None
        }
        (Some(ca), None) => {
            let bundle = ca_bundle(report, ca, &format!("{path}.ca"));
            ok &= bundle.is_some();
            bundle
        }
        (None, _) => None,
    };
    let server_name = raw.server_name.as_ref().and_then(|raw| match ServerName::try_from(raw.value.as_str()) {
        Ok(name) => Some(name.to_owned()),
        Err(_) => {
            report
                .error(
                    raw.referenced,
                    &format!("{path}.server_name"),
                    format!("server_name {:?} is not a valid DNS name or IP address", raw.value),
                )
                .hint("write the name the upstream's certificate is issued for, e.g. `api.internal`");
            ok = false;
            None
        }
    });
    ok.then_some(UpstreamTls { ca, server_name, insecure_skip_verify: insecure.is_some() })
}

/// Reads a PEM file of one or more CA certificates and parses each as a trust anchor.
pub(in crate::config::validate) fn ca_bundle(
    report: &mut Report<'_>,
    raw: &Spanned<String>,
    path: &str,
) -> Option<CaBundle> {
    let file = crate::config::resolve(report.file, &raw.value);
    let mut fail = |message: String, hint: &str| {
        report.error(raw.referenced, path, message).hint(hint);
        None
    };
    let bytes = match std::fs::read(&file) {
        Ok(bytes) => bytes,
        Err(error) => {
            return fail(
                format!("cannot read CA file {}: {error}", file.display()),
                "relative paths are relative to the config file's directory",
            )
        }
    };
    let pem_hint = "the file must hold one or more PEM blocks `-----BEGIN CERTIFICATE-----` of the CA certificates";
    let certs: Vec<CertificateDer<'static>> = match CertificateDer::pem_slice_iter(&bytes).collect() {
        Ok(certs) => certs,
        Err(error) => return fail(format!("{}: not a PEM certificate file: {error}", file.display()), pem_hint),
    };
    if certs.is_empty() {
        return fail(format!("{}: no certificate in the file", file.display()), pem_hint);
    }
    let mut roots = Vec::with_capacity(certs.len());
    for (i, cert) in certs.iter().enumerate() {
        match webpki::anchor_from_trusted_cert(cert) {
            Ok(anchor) => roots.push(anchor.to_owned()),
            Err(error) => {
                return fail(
                    format!("{}: certificate {} cannot be used as a CA: {error}", file.display(), i + 1),
                    "check that the file holds X.509 certificates in PEM",
                )
            }
        }
    }
    Some(CaBundle { path: file, roots, pem: bytes })
}

#[cfg(test)]
mod tests;
