//! What starts a reload: changes to the config file or the certificate files it names
//! (debounced), and SIGHUP.
//!
//! Directories are watched, not files: editors that write a temporary file and rename it, and
//! Kubernetes ConfigMaps that swap a `..data` symlink, replace a file rather than write it. For each
//! followed file the watcher watches:
//! - the directory of the file and of each path its symlinks lead to in turn (a config linked into a
//!   release directory is edited there), filtering events by those file names;
//! - best effort, the parent of each of those directories, so that a directory replaced by rename
//!   (`mv conf.new conf`) or a repointed directory symlink is noticed.
//!
//! inotify watches an inode, not a path. So after every reload, file- or SIGHUP-triggered, the paths
//! are resolved again: a directory whose path now leads to another inode (dev, ino), or that an event
//! named itself (moved, removed, replaced: the watcher may have dropped it), is watched afresh, and one
//! no longer needed is unwatched.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
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
/// Symlinks followed from one file, as Linux's path lookup allows (a loop stops here).
const MAX_SYMLINK_HOPS: usize = 40;

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

/// A directory's identity (device, inode): what a watch is on, whatever path led to it.
type Inode = (u64, u64);

/// The watcher and the directories it watches.
#[derive(Debug)]
struct Followed {
    watcher: RecommendedWatcher,
    /// Each watched directory and the path it was watched by (which still led to it when last checked).
    watched: HashMap<Inode, PathBuf>,
    filter: Arc<Mutex<Filter>>,
}

/// Which events are changes: set by [`follow`], read by the watcher's callback.
#[derive(Debug, Default)]
struct Filter {
    /// The followed files' names (and the files their symlinks lead to), in any watched directory.
    names: HashSet<OsString>,
    /// The directories to watch. An event naming one of them means it was moved, removed or
    /// replaced, and the watcher may have dropped its watch.
    dirs: HashSet<PathBuf>,
    /// Those of `dirs` an event named since the last [`follow`]: they are watched afresh.
    touched: HashSet<PathBuf>,
}

impl Filter {
    /// Whether a change to `path` is a change to a followed file; notes a directory named itself.
    fn is_ours(&mut self, path: &Path) -> bool {
        if self.dirs.contains(path) {
            self.touched.insert(path.to_owned());
            return true;
        }
        // A followed file itself, or a ConfigMap's `..data` / `..2026_...` entries; not its neighbours.
        path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("..") || self.names.contains(name))
    }
}

/// Starts reloading on changes to the config file or the certificates it names, and on SIGHUP.
/// Call it inside the tokio runtime.
pub fn watch(reloader: Arc<Reloader>) -> Result<Watching, WatchError> {
    let filter: Arc<Mutex<Filter>> = Arc::default();
    let (changed, changes) = mpsc::channel(1);
    let callback_filter = filter.clone();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        let Ok(event) = event else { return };
        // Reading the file (ours included) must not look like a change.
        let is_write = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) => false,
            _ => true,
        };
        if !is_write {
            return;
        }
        let Ok(mut filter) = callback_filter.lock() else { return };
        let mut is_ours = false;
        for path in &event.paths {
            // Every path is looked at (not just up to the first of ours), so each directory named is noted.
            is_ours |= filter.is_ours(path);
        }
        drop(filter);
        if is_ours {
            // A full channel already holds a pending change: nothing is lost.
            let _ = changed.try_send(());
        }
    })
    .map_err(|source| WatchError::Files { dir: PathBuf::from("."), source })?;
    let followed = Arc::new(Mutex::new(Followed { watcher, watched: HashMap::new(), filter }));
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

/// Brings the watches up to date with the files the reloader follows (a reload may name new ones,
/// repoint a symlink, or find a directory replaced). A directory that is missing is not watched
/// (the watch on its parent notices it coming back); one that exists but cannot be watched is an
/// error, unless it is only a parent.
fn follow(followed: &Mutex<Followed>, reloader: &Reloader) -> Result<(), WatchError> {
    let Ok(mut followed) = followed.lock() else { return Ok(()) };
    let followed = &mut *followed;
    let mut names = HashSet::new();
    // Each directory to watch, and whether failing to watch it is an error.
    let mut dirs = Vec::new();
    for file in reloader.watched_files() {
        for path in symlink_chain(file) {
            names.extend(path.file_name().map(|name| name.to_os_string()));
            let Some(dir) = path.parent() else { continue };
            if let (Some(_), Some(parent)) = (dir.file_name(), dir.parent()) {
                dirs.push((parent.to_path_buf(), false));
            }
            dirs.push((dir.to_path_buf(), true));
        }
    }
    let touched = match followed.filter.lock() {
        Ok(mut filter) => {
            filter.names = names;
            filter.dirs = dirs.iter().map(|(dir, _)| dir.clone()).collect();
            std::mem::take(&mut filter.touched)
        }
        Err(_) => HashSet::new(),
    };

    // What each path leads to now; the first path to an inode is the one it is watched by.
    let mut wanted: HashMap<Inode, (PathBuf, bool)> = HashMap::new();
    for (dir, required) in dirs {
        if let Ok(metadata) = std::fs::metadata(&dir) {
            wanted.entry((metadata.dev(), metadata.ino())).or_insert((dir, false)).1 |= required;
        }
    }
    // Unwatch before watching: a path that now leads to another inode is watched again by the same
    // path. (The watcher drops the watches below a directory it sees go, hence `starts_with`.)
    let watcher = &mut followed.watcher;
    followed.watched.retain(|inode, path| {
        let keep =
            wanted.get(inode).is_some_and(|(dir, _)| dir == path) && !touched.iter().any(|gone| path.starts_with(gone));
        if !keep {
            // It may be gone already (a removed directory's watch ends with it).
            let _ = watcher.unwatch(path);
        }
        keep
    });
    let mut error = None;
    for (inode, (dir, required)) in wanted {
        if followed.watched.contains_key(&inode) {
            continue;
        }
        match followed.watcher.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => {
                followed.watched.insert(inode, dir);
            }
            Err(source) if required => {
                error.get_or_insert(WatchError::Files { dir, source });
            }
            Err(source) => {
                tracing::debug!(dir = %dir.display(), %source, "cannot watch: if a directory in it is replaced, send SIGHUP");
            }
        }
    }
    error.map_or(Ok(()), Err)
}

/// `file`, then each path its symlinks lead to in turn: a change to any of them changes what is
/// read from `file`. Absolute, as the watcher reports paths (a directory named by an event is
/// recognised by its path).
fn symlink_chain(file: PathBuf) -> Vec<PathBuf> {
    let mut chain = vec![std::path::absolute(&file).unwrap_or(file)];
    for _ in 0..MAX_SYMLINK_HOPS {
        let Some(link) = chain.last() else { break };
        let Ok(target) = std::fs::read_link(link) else { break };
        // A relative target is relative to the link's directory (`join` keeps an absolute one as is).
        chain.push(link.parent().unwrap_or(Path::new(".")).join(target));
    }
    chain
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;

    use super::symlink_chain;

    #[test]
    fn reload_symlink_chain_lists_each_hop_and_stops_at_a_loop() {
        let dir = std::env::temp_dir().join(format!("gateway-reload-chain-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        std::fs::create_dir_all(dir.join("releases/v7")).unwrap();
        std::fs::write(dir.join("releases/v7/gateway.yaml"), "").unwrap();
        symlink("../releases/v7/gateway.yaml", dir.join("etc/next.yaml")).unwrap();
        symlink(dir.join("etc/next.yaml"), dir.join("etc/gateway.yaml")).unwrap();
        symlink("loop.yaml", dir.join("etc/loop.yaml")).unwrap();

        let chain = symlink_chain(dir.join("etc/gateway.yaml"));
        let expected =
            [dir.join("etc/gateway.yaml"), dir.join("etc/next.yaml"), dir.join("etc/../releases/v7/gateway.yaml")];
        assert_eq!(chain, expected);
        let relative = symlink_chain(PathBuf::from("gateway.yaml"));
        assert_eq!(relative, [std::env::current_dir().unwrap().join("gateway.yaml")]);
        assert_eq!(symlink_chain(dir.join("etc/loop.yaml")).len(), super::MAX_SYMLINK_HOPS + 1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
