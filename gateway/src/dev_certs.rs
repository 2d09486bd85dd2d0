//! Development certificates: a local CA and a `localhost` / `127.0.0.1` / `::1` leaf it signs (`gateway certs dev`).
//!
//! The CA is name-constrained to exactly those names, so trusting `ca.crt` in a browser or system store
//! cannot be abused for any other site even if `ca.key` leaks. Keys are ECDSA P-256, written as PKCS#8
//! PEM with mode 0600. Every file is written to a temp file and renamed into place, so a gateway that
//! watches the directory never reads half a file.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose, GeneralSubtree, IsCa, Issuer,
    KeyPair, KeyUsagePurpose, NameConstraints,
};

/// The names the leaf certificate is valid for.
pub const LEAF_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// How long the CA is valid.
const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// How long the leaf is valid: 825 days, the longest lifetime Apple platforms accept for a TLS server
/// certificate, even one issued by a locally trusted CA.
const LEAF_VALIDITY: Duration = Duration::from_secs(825 * 24 * 3600);

/// Backdating of `notBefore`, so a client whose clock is a little behind still accepts the certificates.
const BACKDATE: Duration = Duration::from_secs(24 * 3600);

/// Paths of the files [`write_dev_certs`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCerts {
    /// The CA certificate (PEM): what clients trust.
    pub ca_cert: PathBuf,
    /// The CA private key (PKCS#8 PEM, mode 0600).
    pub ca_key: PathBuf,
    /// The leaf certificate for [`LEAF_NAMES`] (PEM, the leaf only).
    pub cert: PathBuf,
    /// The leaf private key (PKCS#8 PEM, mode 0600).
    pub key: PathBuf,
}

/// Why the development certificates could not be written.
#[derive(Debug, thiserror::Error)]
pub enum DevCertsError {
    #[error("creating directory {}: {source}", path.display())]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("generating the {what}: {source}")]
    Generate { what: &'static str, source: rcgen::Error },
    #[error("writing {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// Writes `ca.crt`, `ca.key`, `localhost.crt` and `localhost.key` into `out` (created if missing),
/// replacing files of the same names. A new CA is generated on every call.
pub fn write_dev_certs(out: &Path) -> Result<DevCerts, DevCertsError> {
    fs::create_dir_all(out).map_err(|source| DevCertsError::CreateDir { path: out.to_owned(), source })?;
    let now = SystemTime::now();

    let ca_key = generate_key("CA key")?;
    let ca_params = ca_params(now);
    let ca_cert =
        ca_params.self_signed(&ca_key).map_err(|source| DevCertsError::Generate { what: "CA certificate", source })?;
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf_key = generate_key("leaf key")?;
    let leaf_cert = leaf_params(now)?
        .signed_by(&leaf_key, &issuer)
        .map_err(|source| DevCertsError::Generate { what: "leaf certificate", source })?;

    let certs = DevCerts {
        ca_cert: out.join("ca.crt"),
        ca_key: out.join("ca.key"),
        cert: out.join("localhost.crt"),
        key: out.join("localhost.key"),
    };
    // Keys first: a watcher that sees the new certificate finds its key already in place.
    write_file(&certs.ca_key, &ca_key_pem, 0o600)?;
    write_file(&certs.key, &leaf_key.serialize_pem(), 0o600)?;
    write_file(&certs.ca_cert, &ca_cert.pem(), 0o644)?;
    write_file(&certs.cert, &leaf_cert.pem(), 0o644)?;
    Ok(certs)
}

fn generate_key(what: &'static str) -> Result<KeyPair, DevCertsError> {
    KeyPair::generate().map_err(|source| DevCertsError::Generate { what, source })
}

fn ca_params(now: SystemTime) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::OrganizationName, "gateway development");
    params.distinguished_name.push(DnType::CommonName, "gateway development CA");
    // pathLenConstraint 0: the CA signs leaves only, never another CA (RFC 5280 section 4.2.1.9).
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    // RFC 5280 section 4.2.1.10: every name below this CA must fall inside these subtrees.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: vec![
            GeneralSubtree::DnsName("localhost".to_owned()),
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(IpAddr::V4(Ipv4Addr::LOCALHOST), 32)),
            GeneralSubtree::IpAddress(CidrSubnet::from_addr_prefix(IpAddr::V6(Ipv6Addr::LOCALHOST), 128)),
        ],
        excluded_subtrees: Vec::new(),
    });
    set_validity(&mut params, now, CA_VALIDITY);
    params
}

fn leaf_params(now: SystemTime) -> Result<CertificateParams, DevCertsError> {
    let names: Vec<String> = LEAF_NAMES.iter().map(|name| (*name).to_owned()).collect();
    let mut params =
        CertificateParams::new(names).map_err(|source| DevCertsError::Generate { what: "leaf names", source })?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, now, LEAF_VALIDITY);
    Ok(params)
}

/// Valid from [`BACKDATE`] before `now` for `validity` after it, both rounded down to the UTC day
/// (certificate validity needs no finer grain).
fn set_validity(params: &mut CertificateParams, now: SystemTime, validity: Duration) {
    let (year, month, day) = utc_day(now.checked_sub(BACKDATE).unwrap_or(now));
    params.not_before = rcgen::date_time_ymd(year, month, day);
    let (year, month, day) = utc_day(now + validity);
    params.not_after = rcgen::date_time_ymd(year, month, day);
}

fn utc_day(time: SystemTime) -> (i32, u8, u8) {
    let days = time.duration_since(UNIX_EPOCH).map_or(0, |since| since.as_secs() / 86_400);
    let (year, month, day) = crate::timefmt::civil_from_days(days as i64);
    (year as i32, month as u8, day as u8)
}

/// Writes `contents` to a temp file beside `path` with `mode`, then renames it over `path`.
fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), DevCertsError> {
    let error = |source| DevCertsError::Write { path: path.to_owned(), source };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temp = path.with_file_name(format!(".{name}.tmp{}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&temp)?;
        file.write_all(contents.as_bytes())?;
        file.sync_all()?;
        // `mode` applies only when the file is created; a leftover temp file keeps its own.
        fs::set_permissions(&temp, std::os::unix::fs::PermissionsExt::from_mode(mode))?;
        fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written.map_err(error)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use rustls::client::danger::ServerCertVerifier;
    use rustls::client::WebPkiServerVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{CertificateError, RootCertStore};

    use super::*;

    /// A fresh, not yet existing directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir().join(format!("gateway-dev-certs-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn cert_der(path: &Path) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// Verifies `leaf` for `name` the way a rustls client trusting only `ca` does.
    fn verify(ca: &Path, leaf: &CertificateDer<'_>, name: &str) -> Result<(), rustls::Error> {
        let mut roots = RootCertStore::empty();
        roots.add(cert_der(ca)).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let name = ServerName::try_from(name.to_owned()).unwrap();
        verifier.verify_server_cert(leaf, &[], &name, &[], UnixTime::now()).map(|_| ())
    }

    #[test]
    fn write_dev_certs_missing_dir_created_with_four_files() {
        let temp = TempDir::new();
        let out = temp.0.join("nested/certs");
        let certs = write_dev_certs(&out).unwrap();
        assert_eq!(
            certs,
            DevCerts {
                ca_cert: out.join("ca.crt"),
                ca_key: out.join("ca.key"),
                cert: out.join("localhost.crt"),
                key: out.join("localhost.key"),
            }
        );
        let mut names: Vec<String> =
            fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "ca.key", "localhost.crt", "localhost.key"], "no temp files left behind");
    }

    #[test]
    fn write_dev_certs_keys_0600_certs_0644() {
        let temp = TempDir::new();
        let certs = write_dev_certs(&temp.0).unwrap();
        let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&certs.ca_key), 0o600);
        assert_eq!(mode(&certs.key), 0o600);
        assert_eq!(mode(&certs.ca_cert), 0o644);
        assert_eq!(mode(&certs.cert), 0o644);
    }

    #[test]
    fn write_dev_certs_keys_pkcs8_pem() {
        let temp = TempDir::new();
        let certs = write_dev_certs(&temp.0).unwrap();
        for path in [&certs.ca_key, &certs.key] {
            let key = PrivateKeyDer::from_pem_file(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(matches!(key, PrivateKeyDer::Pkcs8(_)), "{} is not PKCS#8", path.display());
        }
    }

    #[test]
    fn write_dev_certs_leaf_verifies_against_ca_for_each_name() {
        let temp = TempDir::new();
        let certs = write_dev_certs(&temp.0).unwrap();
        let leaf = cert_der(&certs.cert);
        for name in LEAF_NAMES {
            verify(&certs.ca_cert, &leaf, name).unwrap_or_else(|e| panic!("leaf for {name}: {e}"));
        }
    }

    #[test]
    fn write_dev_certs_leaf_other_name_not_valid() {
        let temp = TempDir::new();
        let certs = write_dev_certs(&temp.0).unwrap();
        let error = verify(&certs.ca_cert, &cert_der(&certs.cert), "example.com").unwrap_err();
        assert!(
            matches!(
                error,
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }
                )
            ),
            "{error:?}"
        );
    }

    #[test]
    fn write_dev_certs_ca_cannot_sign_for_other_names() {
        let temp = TempDir::new();
        let certs = write_dev_certs(&temp.0).unwrap();
        // Someone holding ca.key signs a leaf for a public name: clients must refuse it.
        let ca_key = KeyPair::from_pem(&fs::read_to_string(&certs.ca_key).unwrap()).unwrap();
        let issuer = Issuer::new(ca_params(SystemTime::now()), ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["example.com".to_owned()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        let forged = params.signed_by(&key, &issuer).unwrap();
        let error = verify(&certs.ca_cert, forged.der(), "example.com").unwrap_err();
        // rustls carries webpki's reason as an opaque `Other` error: its Debug text names it.
        assert!(
            matches!(error, rustls::Error::InvalidCertificate(CertificateError::Other(_)))
                && format!("{error:?}").contains("NameConstraintViolation"),
            "{error:?}"
        );
        // The same construction for an allowed name does verify, so the refusal above is the constraint.
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.use_authority_key_identifier_extension = true;
        let allowed = params.signed_by(&key, &issuer).unwrap();
        verify(&certs.ca_cert, allowed.der(), "localhost").unwrap();
    }

    #[test]
    fn write_dev_certs_second_run_replaces_ca() {
        let temp = TempDir::new();
        let first = write_dev_certs(&temp.0).unwrap();
        let first_ca = fs::read(&first.ca_cert).unwrap();
        let second = write_dev_certs(&temp.0).unwrap();
        assert_ne!(fs::read(&second.ca_cert).unwrap(), first_ca, "a new CA on every run");
        verify(&second.ca_cert, &cert_der(&second.cert), "localhost").unwrap();
    }

    #[test]
    fn write_dev_certs_out_is_a_file_create_dir_error() {
        let temp = TempDir::new();
        fs::create_dir_all(&temp.0).unwrap();
        let file = temp.0.join("not-a-dir");
        fs::write(&file, "x").unwrap();
        let error = write_dev_certs(&file).unwrap_err();
        assert!(matches!(&error, DevCertsError::CreateDir { path, .. } if *path == file), "{error:?}");
        assert!(error.to_string().starts_with(&format!("creating directory {}: ", file.display())), "{error}");
    }
}
