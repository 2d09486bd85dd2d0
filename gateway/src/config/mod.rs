//! Loading the gateway's YAML config: file -> raw -> validated [`Config`].
//!
//! The pipeline, in order:
//!
//! 1. **file**: [`load`] reads the file as UTF-8 (an unreadable file is [`LoadError::Unreadable`]).
//! 2. **raw** (`raw.rs`): serde-saphyr deserializes the text into structs that mirror the YAML
//!    exactly and reject unknown keys. Values checked later keep their line and column
//!    (`Spanned`). serde stops at the first error here (bad syntax, wrong type, unknown or missing
//!    key); `yaml_error.rs` turns it into one [`Problem`], with a did-you-mean for unknown keys.
//! 3. **validated** (`validate/`): every semantic rule is checked and *every* problem collected,
//!    each with its file:line:col, YAML path (`routes[2].upstream`) and a hint. Defaults are filled
//!    in from [`model::defaults`]. The result is a [`Config`] the proxy can trust, or [`Problems`].
//!
//! A valid config can still carry warnings (an upstream no route uses, a duplicate endpoint):
//! they come back next to the config in [`Loaded`]. When the config is invalid, only errors are
//! reported: fix those first.
//!
//! The proxy builds its runtime snapshot from [`Config`] alone; nothing outside this module sees
//! the raw YAML types.

pub mod model;
mod problem;
mod raw;
mod suggest;
mod units;
mod validate;
mod yaml_error;

#[cfg(test)]
mod tests;

use std::io;
use std::path::{Path, PathBuf};

pub use model::*;
pub use problem::{Problem, Problems, Severity};

/// A valid config and the warnings found while checking it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: Config,
    /// Non-fatal findings, in file order; each has `Severity::Warning`.
    pub warnings: Vec<Problem>,
}

/// Why [`load`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read (`gateway check` exits 2).
    #[error("cannot read config file {}: {source}", path.display())]
    Unreadable { path: PathBuf, source: io::Error },
    /// The file was read but is not a valid config (`gateway check` exits 1). Displays one
    /// problem per line.
    #[error("{0}")]
    Invalid(Problems),
}

/// Reads and checks the config file at `path`; problems are labelled with `path` as given.
///
/// # Errors
///
/// [`LoadError::Unreadable`] when the file cannot be read, [`LoadError::Invalid`] with every
/// problem found when it is not a valid config (a file that is not UTF-8 included).
pub fn load(path: &Path) -> Result<Loaded, LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Unreadable { path: path.to_owned(), source })?;
    parse_bytes(&path.display().to_string(), bytes).map_err(LoadError::Invalid)
}

/// Checks a config file's bytes, already read (hot reload hashes exactly what it checks).
///
/// # Errors
///
/// As [`parse`], plus a problem at the first byte that is not UTF-8.
pub fn parse_bytes(file_label: &str, bytes: Vec<u8>) -> Result<Loaded, Problems> {
    match String::from_utf8(bytes) {
        Ok(text) => parse(file_label, &text),
        Err(e) => Err(not_utf8(file_label, e.as_bytes(), e.utf8_error().valid_up_to())),
    }
}

/// Checks config `text`; `file_label` is what problems name as their file.
///
/// # Errors
///
/// Every error found, sorted by position: one for a YAML syntax or shape error (serde stops at
/// the first), or all semantic errors at once.
pub fn parse(file_label: &str, text: &str) -> Result<Loaded, Problems> {
    let raw: raw::RawConfig =
        serde_saphyr::from_str(text).map_err(|e| Problems::one(yaml_error::to_problem(file_label, text, &e)))?;
    let (config, warnings) = validate::validate(file_label, &raw)?;
    Ok(Loaded { config, warnings })
}

/// The files a config text refers to (certificates, keys, CA files), resolved as validation resolves
/// them. Best effort: text that is not YAML refers to nothing.
pub fn referenced_files(file_label: &str, text: &str) -> Vec<PathBuf> {
    let refs: raw::RawFileRefs = serde_saphyr::from_str(text).unwrap_or_default();
    // Each section parsed on its own, so a malformed one cannot hide another's files.
    let upstream_refs: raw::RawUpstreamFileRefs = serde_saphyr::from_str(text).unwrap_or_default();
    let jwt_refs: raw::RawJwtFileRefs = serde_saphyr::from_str(text).unwrap_or_default();
    let redis_refs: raw::RawRedisFileRefs = serde_saphyr::from_str(text).unwrap_or_default();
    let tls = refs.listeners.iter().filter_map(|l| l.tls.as_ref());
    let certificates =
        tls.clone().flat_map(|tls| &tls.certificates).flat_map(|c| [c.cert.as_deref(), c.key.as_deref()]);
    let client_cas = tls.map(|tls| tls.client_auth.as_ref().and_then(|auth| auth.ca.as_deref()));
    let upstream_cas = (upstream_refs.upstreams.iter().flat_map(|map| &map.0))
        .map(|(_, upstream)| upstream.tls.as_ref().and_then(|tls| tls.ca.as_deref()));
    let public_keys = (jwt_refs.jwt.iter().flat_map(|jwt| &jwt.providers).flat_map(|map| &map.0))
        .flat_map(|(_, provider)| [provider.public_key.as_deref(), provider.jwks_ca.as_deref()]);
    let redis_ca = redis_refs.redis.and_then(|redis| redis.ca);
    let files = certificates.chain(client_cas).chain(upstream_cas).chain(public_keys).flatten();
    let files = files.chain(redis_ca.as_deref());
    files.map(|file| resolve(file_label, file)).collect()
}

/// A path from the config, relative to the config file's directory unless absolute.
pub(crate) fn resolve(file_label: &str, file: &str) -> PathBuf {
    Path::new(file_label).parent().unwrap_or(Path::new("")).join(file)
}

/// A problem pointing at the first byte that is not UTF-8.
fn not_utf8(label: &str, bytes: &[u8], valid_up_to: usize) -> Problems {
    let valid = bytes.get(..valid_up_to).unwrap_or_default();
    let line = valid.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let column = String::from_utf8_lossy(valid.get(line_start..).unwrap_or_default()).chars().count() + 1;
    let problem = Problem::new(Severity::Error, label, (line, column), None, "the file is not valid UTF-8")
        .with_hint(Some("save the file as UTF-8".to_owned()));
    Problems::one(problem)
}
