//! What starts a reload: changes in the config file's directory (debounced), and SIGHUP.
//!
//! The directory is watched, not the file: editors that write a temporary file and rename it,
//! and Kubernetes ConfigMaps that swap a `..data` symlink, replace the file rather than write it.

use std::path::PathBuf;
use std::sync::Arc;
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
    _files: RecommendedWatcher,
}

/// Starts reloading on file changes and on SIGHUP. Call it inside the tokio runtime.
pub fn watch(reloader: Arc<Reloader>) -> Result<Watching, WatchError> {
    #[cfg(unix)]
    {
        // Registered before returning, so a SIGHUP from here on reloads instead of killing us.
        let mut hangups =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).map_err(WatchError::Signal)?;
        let reloader = reloader.clone();
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                run(&reloader, Trigger::Sighup).await;
            }
        });
    }

    let dir = match reloader.path().parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = reloader.path().file_name().map(|name| name.to_os_string());
    let (changed, changes) = mpsc::channel(1);
    let mut files = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file (ours included) must not look like a change.
        let is_write = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        // The config file itself, or a ConfigMap's `..data` / `..2026_...` entries; not its neighbours.
        let is_ours = event
            .paths
            .iter()
            .filter_map(|path| path.file_name())
            .any(|name| Some(name) == file_name.as_deref() || name.to_string_lossy().starts_with(".."));
        if is_write && is_ours {
            // A full channel already holds a pending change: nothing is lost.
            let _ = changed.try_send(());
        }
    })
    .map_err(|source| WatchError::Files { dir: dir.clone(), source })?;
    files.watch(&dir, RecursiveMode::NonRecursive).map_err(|source| WatchError::Files { dir, source })?;
    tokio::spawn(on_file_changes(reloader, changes));
    Ok(Watching { _files: files })
}

async fn on_file_changes(reloader: Arc<Reloader>, mut changes: mpsc::Receiver<()>) {
    while changes.recv().await.is_some() {
        let first = tokio::time::Instant::now();
        while first.elapsed() < MAX_SETTLE {
            match tokio::time::timeout(QUIET, changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        run(&reloader, Trigger::File).await;
    }
}

async fn run(reloader: &Arc<Reloader>, trigger: Trigger) {
    let reloader = reloader.clone();
    if tokio::task::spawn_blocking(move || reloader.reload(trigger)).await.is_err() {
        tracing::error!(?trigger, "the config reload task panicked; the previous config keeps serving");
    }
}
