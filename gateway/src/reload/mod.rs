//! Hot reload: re-read the config file, build a complete new snapshot off the request path, and
//! swap it in only if every stage passed. A failed reload changes nothing; the old snapshot keeps
//! serving and `/admin/config` shows why. Requests in flight finish on the snapshot they started on.

mod diff;
mod status;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use status::{Status, Trigger, Version};
pub use watch::{watch, WatchError, Watching};

use crate::config::{self, Config, LoadError, Loaded};
use crate::runtime::{Runtime, Snapshot};

/// Reads and checks the config file, returning it with the version of the exact bytes checked.
///
/// # Errors
///
/// As [`config::load`].
pub fn read(path: &Path) -> Result<(Loaded, Version), LoadError> {
    let bytes = std::fs::read(path).map_err(|source| LoadError::Unreadable { path: path.to_owned(), source })?;
    let version = Version::of(&bytes);
    let loaded = config::parse_bytes(&path.display().to_string(), bytes).map_err(LoadError::Invalid)?;
    Ok((loaded, version))
}

/// Applies config file changes to a running gateway.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    runtime: Runtime,
    workers: usize,
    /// The config the sockets were bound with: listener changes need a restart.
    running: Config,
    /// The config now serving and its version. Holding the lock serialises reloads.
    active: Mutex<Active>,
    status: Arc<Status>,
}

#[derive(Debug)]
struct Active {
    config: Config,
    version: Version,
    /// The last failure: a file event that would fail the same way is not retried or re-logged.
    failed: Option<Failure>,
}

#[derive(Debug, PartialEq, Eq)]
enum Failure {
    Unreadable,
    Rejected(Version),
}

impl Reloader {
    /// `config` and `version` are what `runtime` currently serves, from the file at `path`.
    pub fn new(path: PathBuf, config: Config, version: Version, runtime: Runtime, workers: usize) -> Reloader {
        let status = Arc::new(Status::new(path.display().to_string(), version.clone()));
        let active = Mutex::new(Active { config: config.clone(), version, failed: None });
        Reloader { path, runtime, workers, running: config, active, status }
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// One reload attempt. It reads the file and builds the new snapshot, so it blocks: call it
    /// from `spawn_blocking`. A file-triggered attempt does nothing when the file would fail as it
    /// last did, or holds the bytes already serving; SIGHUP always tries.
    pub fn reload(&self, trigger: Trigger) {
        let mut active = match self.active.lock() {
            Ok(active) => active,
            Err(poisoned) => poisoned.into_inner(),
        };
        let label = self.path.display().to_string();
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(_) if trigger == Trigger::File && active.failed == Some(Failure::Unreadable) => return,
            Err(error) => {
                let message = format!("cannot read config file {label}: {error}");
                tracing::warn!(
                    ?trigger,
                    "config reload failed, still serving version {}: {message}",
                    active.version.as_str()
                );
                self.status.failed(trigger, None, message);
                active.failed = Some(Failure::Unreadable);
                return;
            }
        };
        let version = Version::of(&bytes);
        if trigger == Trigger::File && version == active.version {
            if active.failed.take().is_some() {
                // The file is back to what is serving: the last error no longer describes it.
                self.status.in_sync(trigger, version);
            }
            return;
        }
        if trigger == Trigger::File && active.failed == Some(Failure::Rejected(version.clone())) {
            return;
        }
        let loaded = match config::parse_bytes(&label, bytes) {
            Ok(loaded) => loaded,
            Err(problems) => {
                tracing::warn!(
                    ?trigger,
                    version = version.as_str(),
                    "config reload rejected, still serving version {}:\n{problems}",
                    active.version.as_str()
                );
                self.status.failed(trigger, Some(version.clone()), problems.to_string());
                active.failed = Some(Failure::Rejected(version));
                return;
            }
        };
        for warning in &loaded.warnings {
            tracing::warn!("{warning}");
        }
        let snapshot = match Snapshot::build(&loaded.config, self.workers, Some(&self.runtime.load())) {
            Ok(snapshot) => snapshot,
            Err(error) => {
                tracing::warn!(?trigger, version = version.as_str(), %error, "config reload failed to build");
                self.status.failed(trigger, Some(version.clone()), error.to_string());
                active.failed = Some(Failure::Rejected(version));
                return;
            }
        };
        let restart_required = diff::restart_required(&self.running, &loaded.config);
        for reason in &restart_required {
            tracing::warn!("{reason}");
        }
        self.runtime.store(Arc::new(snapshot));
        tracing::info!(
            ?trigger,
            version = version.as_str(),
            changes = diff::summary(&active.config, &loaded.config),
            "config reloaded"
        );
        self.status.applied(trigger, version.clone(), restart_required);
        *active = Active { config: loaded.config, version, failed: None };
    }
}

#[cfg(test)]
mod tests;
