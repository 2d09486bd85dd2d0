//! Hot reload: re-read the config file, build a complete new snapshot off the request path, and
//! swap it in only if every stage passed. A failed reload changes nothing; the old snapshot keeps
//! serving and `/admin/config` shows why. Requests in flight finish on the snapshot they started on.

mod diff;
mod status;
mod watch;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use status::Fnv;
pub use status::{Status, Trigger, Version};
pub use watch::{watch, WatchError, Watching};

use crate::config::{self, Config, LoadError, Loaded};
use crate::runtime::{Runtime, Snapshot};

/// Reads and checks the config file, returning it with the version of exactly what was checked.
///
/// # Errors
///
/// As [`config::load`].
pub fn read(path: &Path) -> Result<(Loaded, Version), LoadError> {
    let read = read_files(path).map_err(|source| LoadError::Unreadable { path: path.to_owned(), source })?;
    let loaded = config::parse_bytes(&path.display().to_string(), read.bytes).map_err(LoadError::Invalid)?;
    Ok((loaded, read.version))
}

/// A config file's bytes, and a version covering them and every file they refer to (certificates
/// and keys), so replacing a certificate is a change even when the YAML is not.
struct ReadFiles {
    bytes: Vec<u8>,
    version: Version,
    referenced: Vec<PathBuf>,
}

fn read_files(path: &Path) -> std::io::Result<ReadFiles> {
    let bytes = std::fs::read(path)?;
    let referenced = std::str::from_utf8(&bytes)
        .map(|text| config::referenced_files(&path.display().to_string(), text))
        .unwrap_or_default();
    let mut hash = Fnv::default().write(&bytes);
    for file in &referenced {
        hash = hash.write(file.as_os_str().as_encoded_bytes());
        hash = match std::fs::read(file) {
            Ok(contents) => hash.write(&[1]).write(&contents),
            Err(_) => hash.write(&[0]),
        };
    }
    Ok(ReadFiles { bytes, version: hash.version(), referenced })
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
    /// The config file and the files it referred to when last read: what the watcher follows.
    watched: Mutex<Vec<PathBuf>>,
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
        // The same list every reload computes: certificates, keys and CA files of every section.
        let referenced = read_files(&path).map(|read| read.referenced).unwrap_or_default();
        let watched = std::iter::once(path.clone()).chain(referenced).collect();
        Reloader { path, runtime, workers, running: config, active, status, watched: Mutex::new(watched) }
    }

    pub fn status(&self) -> Arc<Status> {
        self.status.clone()
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The config file and the certificate and key files it refers to.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        match self.watched.lock() {
            Ok(watched) => watched.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// One reload attempt. It reads the file and builds the new snapshot, so it blocks: call it
    /// from `spawn_blocking`. A file-triggered attempt does nothing when the file would fail as it
    /// last did, or holds the bytes already serving; SIGHUP always tries (and reopens the access log).
    pub fn reload(&self, trigger: Trigger) {
        if trigger == Trigger::Sighup {
            // logrotate's `postrotate` convention: SIGHUP makes the gateway write to a new file.
            if let Some(log) = &self.runtime.load().access_log {
                log.reopen();
            }
        }
        let mut active = match self.active.lock() {
            Ok(active) => active,
            Err(poisoned) => poisoned.into_inner(),
        };
        let label = self.path.display().to_string();
        let read = match read_files(&self.path) {
            Ok(read) => read,
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
        if let Ok(mut watched) = self.watched.lock() {
            *watched = std::iter::once(self.path.clone()).chain(read.referenced.iter().cloned()).collect();
        }
        let (bytes, version) = (read.bytes, read.version);
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
        if let Some(message) = refused_certificate(&label, &active.config, &loaded.config) {
            tracing::warn!(
                ?trigger,
                version = version.as_str(),
                "config reload rejected, still serving version {}: {message}",
                active.version.as_str()
            );
            self.status.failed(trigger, Some(version.clone()), message);
            active.failed = Some(Failure::Rejected(version));
            return;
        }
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
        for reason in
            restart_required.iter().chain(&diff::protocol_switches(&self.running, &active.config, &loaded.config))
        {
            tracing::warn!("{reason}");
        }
        self.status.apply(trigger, version.clone(), restart_required, || self.runtime.store(Arc::new(snapshot)));
        crate::metrics::global().retain(&live_names(&loaded.config));
        tracing::info!(
            ?trigger,
            version = version.as_str(),
            changes = diff::summary(&self.running, &active.config, &loaded.config),
            "config reloaded"
        );
        *active = Active { config: loaded.config, version, failed: None };
    }
}

/// The names `config` labels metrics with.
fn live_names(config: &Config) -> crate::metrics::LiveNames<'_> {
    let authorities = |upstream: &config::model::Upstream| {
        upstream.endpoints.iter().filter_map(|e| Some(e.uri.authority()?.as_str().to_owned())).collect()
    };
    crate::metrics::LiveNames {
        routes: config.routes.iter().map(|r| r.name.as_str()).collect(),
        upstreams: config.upstreams.iter().map(|u| (u.name.as_str(), authorities(u))).collect(),
        rate_limits: config.rate_limits.iter().map(|l| l.name.as_str()).collect(),
        providers: config.jwt_providers.iter().map(|p| p.name.as_str()).collect(),
    }
}

/// A certificate clients refuse, expired or not valid yet, that the new config would bring in: one
/// not served already (a renewal gone wrong, an old file copied back, an issuer's clock ahead). The
/// reload is refused and the served one kept, while it still can be. At start such a certificate is
/// only a warning: there is nothing better to serve.
fn refused_certificate(label: &str, running: &Config, new: &Config) -> Option<String> {
    let served: Vec<_> = certificates(running).map(|(_, certificate)| certificate).collect();
    let now = std::time::SystemTime::now();
    certificates(new).filter(|(_, certificate)| !served.contains(certificate)).find_map(|(listener, certificate)| {
        let validity = certificate.validity()?;
        let file = certificate.cert_path.display();
        let why = if validity.not_after < now {
            format!("{file} expired on {}", crate::timefmt::rfc3339(validity.not_after))
        } else if validity.not_before > now {
            let when = crate::timefmt::rfc3339(validity.not_before);
            format!("{file} is not valid until {when} (change the file or send SIGHUP from then on)")
        } else {
            return None;
        };
        Some(format!("{label}: listener {listener:?}: {why}; a reload never brings in a certificate clients refuse"))
    })
}

/// Every listener certificate, with its listener's name.
fn certificates(config: &Config) -> impl Iterator<Item = (&str, &config::model::Certificate)> {
    let tls = config.listeners.iter().filter_map(|listener| Some((listener.name.as_str(), listener.tls.as_ref()?)));
    tls.flat_map(|(name, tls)| tls.certificates.iter().map(move |certificate| (name, certificate)))
}

#[cfg(test)]
mod tests;
