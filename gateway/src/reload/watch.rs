//! What starts a reload: changes to the config file or the certificate files it names
//! (debounced), and SIGHUP.
//!
//! Directories are watched, not files: editors that write a temporary file and rename it, and
//! Kubernetes ConfigMaps that swap a `..data` symlink, replace a file rather than write it.

use std::collections::HashSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::{Reloader, Trigger};

/// Editors, slow writers and ConfigMap swaps change the file in bursts: it is read once it has
/// been quiet this long, so a file still being written is not applied half done.
const QUIET: Duration = Duration::from_millis(150);
/// A file that never goes quiet is read after this long anyway (validation is the safety net).
const MAX_SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cannot watch {dir} for config changes: {source}")]
    Files { dir: PathBuf, source: notify::Error },
    #[error("cannot listen for SIGHUP: {0}")]
    Signal(std::io::Error),
}

/// Keeps the file watcher alive; dropping it stops file-triggered reloads.
#[derive(Debug)]
pub struct Watching {
    _files: Arc<Mutex<Followed>>,
}

/// The directories being watched and the file names in them that matter.
#[derive(Debug)]
struct Followed {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    names: Arc<Mutex<HashSet<OsString>>>,
}

/// Starts reloading on changes to the config file or the certificates it names, and on SIGHUP.
/// Call it inside the tokio runtime.
pub fn watch(reloader: Arc<Reloader>) -> Result<Watching, WatchError> {
    let names: Arc<Mutex<HashSet<OsString>>> = Arc::default();
    let (changed, changes) = mpsc::channel(1);
    let callback_names = names.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file (ours included) must not look like a change.
        let is_write = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        // A followed file itself, or a ConfigMap's `..data` / `..2026_...` entries; not its neighbours.
        let is_ours = event.paths.iter().filter_map(|path| path.file_name()).any(|name| {
            name.to_string_lossy().starts_with("..") || callback_names.lock().is_ok_and(|names| names.contains(name))
        });
        if is_write && is_ours {
            // A full channel already holds a pending change: nothing is lost.
            let _ = changed.try_send(());
        }
    })
    .map_err(|source| WatchError::Files { dir: PathBuf::from("."), source })?;
    let followed = Arc::new(Mutex::new(Followed { watcher, dirs: HashSet::new(), names }));
    follow(&followed, &reloader)?;

    #[cfg(unix)]
    {
        // Registered before returning, so a SIGHUP from here on reloads instead of killing us.
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(WatchError::Signal)?;
        let (reloader, followed) = (reloader.clone(), followed.clone());
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                run(&reloader, Trigger::Sighup, &followed).await;
            }
        });
    }
    tokio::spawn(on_file_changes(reloader, changes, followed.clone()));
    Ok(Watching { _files: followed })
}

/// Watches the directories of the files the reloader follows (a reload may name new ones).
fn follow(followed: &Mutex<Followed>, reloader: &Reloader) -> Result<(), WatchError> {
    let Ok(mut followed) = followed.lock() else { return Ok(()) };
    for file in reloader.watched_files() {
        let dir = match file.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !followed.dirs.contains(&dir) {
            followed
                .watcher
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|source| WatchError::Files { dir: dir.clone(), source })?;
            followed.dirs.insert(dir);
        }
        if let (Some(name), Ok(mut names)) = (file.file_name(), followed.names.lock()) {
            names.insert(name.to_os_string());
        }
    }
    Ok(())
}

async fn on_file_changes(reloader: Arc<Reloader>, mut changes: mpsc::Receiver<()>, followed: Arc<Mutex<Followed>>) {
    while changes.recv().await.is_some() {
        let first = tokio::time::Instant::now();
        while first.elapsed() < MAX_SETTLE {
            match tokio::time::timeout(QUIET, changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        run(&reloader, Trigger::File, &followed).await;
    }
}

async fn run(reloader: &Arc<Reloader>, trigger: Trigger, followed: &Arc<Mutex<Followed>>) {
    let task = reloader.clone();
    if tokio::task::spawn_blocking(move || task.reload(trigger)).await.is_err() {
        tracing::error!(?trigger, "the config reload task panicked; the previous config keeps serving");
    }
    if let Err(error) = follow(followed, reloader) {
        tracing::warn!(%error, "a file the config names cannot be watched; change it and send SIGHUP");
    }
}
