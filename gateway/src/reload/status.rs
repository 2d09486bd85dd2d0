//! What `/admin/config` reports: the active config's version and the last reload attempt.

use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

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

    pub(super) fn applied(&self, trigger: Trigger, version: Version, restart_required: Vec<String>) {
        if let Ok(mut report) = self.0.lock() {
            let now = rfc3339(SystemTime::now());
            report.last_reload =
                Some(Attempt { at: now.clone(), trigger, ok: true, version: Some(version.clone()), error: None });
            report.version = version;
            report.loaded_at = now;
            report.restart_required = restart_required;
            report.reloads.ok += 1;
        }
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

/// `2026-11-21T15:20:00.123Z`: UTC, millisecond precision.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_millis(951_782_400_123)), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_274_399)), "2026-11-21T15:19:59.000Z");
    }

    #[test]
    fn version_is_fnv1a_of_the_bytes() {
        assert_eq!(Version::of(b"").as_str(), "cbf29ce484222325");
        assert_eq!(Version::of(b"a").as_str(), "af63dc4c8601ec8c");
        assert_ne!(Version::of(b"routes: []"), Version::of(b"routes: [] "));
    }
}
