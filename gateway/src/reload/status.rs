//! What `/admin/config` reports: the active config's version and the last reload attempt.

use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

use crate::timefmt::rfc3339;

/// Identifies a config file's exact content: FNV-1a 64 of its bytes, as 16 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Version(String);

impl Version {
    /// The version of a config file that refers to no other file.
    pub fn of(bytes: &[u8]) -> Version {
        Fnv::default().write(bytes).version()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// FNV-1a 64, fed in parts: a config file's bytes, then those of the files it refers to.
#[derive(Debug, Clone, Copy)]
pub(super) struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub(super) fn write(mut self, bytes: &[u8]) -> Fnv {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }

    pub(super) fn version(self) -> Version {
        Version(format!("{:016x}", self.0))
    }
}

/// What started a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Trigger {
    /// The config file's directory changed.
    File,
    Sighup,
}

#[derive(Debug, Clone, Serialize)]
struct Attempt {
    at: String,
    trigger: Trigger,
    ok: bool,
    version: Option<Version>,
    error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
struct Counts {
    ok: u64,
    failed: u64,
}

#[derive(Debug, Clone, Serialize)]
struct Report {
    version: Version,
    source: String,
    loaded_at: String,
    restart_required: Vec<String>,
    last_reload: Option<Attempt>,
    reloads: Counts,
}

/// Shared between the reloader, which writes it, and the admin listener, which reads it.
#[derive(Debug)]
pub struct Status(Mutex<Report>);

impl Status {
    pub(super) fn new(source: String, version: Version) -> Status {
        Status(Mutex::new(Report {
            version,
            source,
            loaded_at: rfc3339(SystemTime::now()),
            restart_required: Vec::new(),
            last_reload: None,
            reloads: Counts { ok: 0, failed: 0 },
        }))
    }

    /// Runs `swap` (which puts the new snapshot in service) and records it, under the report's lock:
    /// whoever reads the report after the swap sees the new version, never the old one.
    pub(super) fn apply(&self, trigger: Trigger, version: Version, restart_required: Vec<String>, swap: impl FnOnce()) {
        let mut report = match self.0.lock() {
            Ok(report) => report,
            Err(poisoned) => poisoned.into_inner(),
        };
        swap();
        let now = rfc3339(SystemTime::now());
        report.last_reload =
            Some(Attempt { at: now.clone(), trigger, ok: true, version: Some(version.clone()), error: None });
        report.version = version;
        report.loaded_at = now;
        report.restart_required = restart_required;
        report.reloads.ok += 1;
        crate::metrics::global().reload(true);
    }

    /// The file is again identical to the serving config after a failed attempt: nothing to apply,
    /// but the last attempt's error no longer describes the file.
    pub(super) fn in_sync(&self, trigger: Trigger, version: Version) {
        if let Ok(mut report) = self.0.lock() {
            let at = rfc3339(SystemTime::now());
            report.last_reload = Some(Attempt { at, trigger, ok: true, version: Some(version), error: None });
        }
    }

    pub(super) fn failed(&self, trigger: Trigger, version: Option<Version>, error: String) {
        if let Ok(mut report) = self.0.lock() {
            let at = rfc3339(SystemTime::now());
            report.last_reload = Some(Attempt { at, trigger, ok: false, version, error: Some(error) });
            report.reloads.failed += 1;
        }
        crate::metrics::global().reload(false);
    }

    /// The report as pretty JSON, for `/admin/config`.
    pub fn to_json(&self) -> String {
        let report = match self.0.lock() {
            Ok(report) => report.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        };
        serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_fnv1a_of_the_bytes() {
        assert_eq!(Version::of(b"").as_str(), "cbf29ce484222325");
        assert_eq!(Version::of(b"a").as_str(), "af63dc4c8601ec8c");
        assert_ne!(Version::of(b"routes: []"), Version::of(b"routes: [] "));
    }
}
