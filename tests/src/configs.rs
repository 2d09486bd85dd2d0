//! Config files for the gateway: YAML builders, temp files, and [`ConfigDir`], a private directory
//! whose config file can be changed the ways ops tooling changes it (in place, rename, ConfigMap swap).

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::process::Backend;

/// Writes `contents` to a new file in the system temp dir and returns its path (unique per call).
pub fn write_temp(prefix: &str, ext: &str, contents: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("e2e-{prefix}-{}-{n}.{ext}", std::process::id()));
    std::fs::write(&path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    path
}

/// The listener (`public`) and admin block every test config starts with, both on port 0.
pub const LISTENERS: &str = "\
listeners:
  - name: public
    address: 127.0.0.1:0
admin:
  address: 127.0.0.1:0
";

/// [`LISTENERS`] followed by `body`, where each `${name}` is replaced by the URL of the backend of
/// that name (`http://127.0.0.1:PORT`). Panics if a placeholder is left over.
pub fn config(body: &str, backends: &[&Backend]) -> String {
    let mut text = format!("{LISTENERS}{body}");
    for backend in backends {
        text = text.replace(&format!("${{{}}}", backend.name), &backend.url());
    }
    assert!(!text.contains("${"), "unreplaced placeholder in config:\n{text}");
    text
}

/// A config with one upstream `echo` (the given backend) and one route `all` matching everything.
/// `server` is the body of the `server:` block (empty for none), `route` extra keys of the route; both
/// as YAML lines without indentation.
pub fn one_route_config(backend: &Backend, server: &str, route: &str) -> String {
    let mut text = LISTENERS.to_owned();
    if !server.trim().is_empty() {
        text.push_str("server:\n");
        text.push_str(&indent(server, 2));
    }
    text.push_str(&format!("upstreams:\n  echo:\n    endpoints: [{}]\n", backend.url()));
    text.push_str("routes:\n  - name: all\n    upstream: echo\n");
    text.push_str(&indent(route, 4));
    text
}

fn indent(lines: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    lines.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{pad}{}\n", l.trim_end())).collect()
}
/// The version the gateway reports for a config file: FNV-1a 64 of its bytes, 16 lowercase hex digits.
pub fn config_version(contents: &str) -> String {
    let hash = contents
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3));
    format!("{hash:016x}")
}

/// A private directory holding one gateway config file `config.yaml`, removed (recursively) on drop.
///
/// The gateway watches its config file's directory, so each test gets its own: files other tests
/// write into the shared temp dir never reach its watcher.
pub struct ConfigDir {
    dir: PathBuf,
    file: PathBuf,
    /// Numbers temp files and ConfigMap data directories.
    generation: AtomicUsize,
}

impl ConfigDir {
    /// A directory with `config.yaml`, a regular file holding `yaml`.
    pub fn new(yaml: &str) -> ConfigDir {
        let config_dir = ConfigDir::empty();
        write(&config_dir.file, yaml);
        config_dir
    }

    /// A directory laid out like a mounted Kubernetes ConfigMap: `..2026_0/config.yaml` holds `yaml`,
    /// `..data -> ..2026_0`, and `config.yaml -> ..data/config.yaml`. Change it with
    /// [`ConfigDir::swap_configmap`].
    pub fn configmap(yaml: &str) -> ConfigDir {
        let config_dir = ConfigDir::empty();
        let data = config_dir.new_data_dir(yaml);
        link(&data, &config_dir.dir.join("..data"));
        link(Path::new("..data/config.yaml"), &config_dir.file);
        config_dir
    }

    fn empty() -> ConfigDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("e2e-config-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let file = dir.join("config.yaml");
        ConfigDir { dir, file, generation: AtomicUsize::new(0) }
    }

    /// The config file (`<dir>/config.yaml`), the path to give the gateway.
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// The config file's path as text (how the gateway names it in errors and `/admin/config`).
    pub fn path_text(&self) -> &str {
        self.file.to_str().unwrap_or_else(|| panic!("non-UTF-8 temp path {}", self.file.display()))
    }

    /// Writes `contents` to `name` (a relative path, parent directories created) next to the config
    /// file, e.g. a key file the config names relative to itself. Returns the file's full path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.join(name);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("creating {}: {e}", parent.display()));
        }
        write(&path, contents);
        path
    }

    /// Truncates the file and writes `yaml` into it, like an editor saving in place.
    pub fn write_in_place(&self, yaml: &str) {
        write(&self.file, yaml);
    }

    /// Writes `yaml` to a temp file in the same directory and renames it over the config file, like
    /// editors and deploy tools that replace files atomically.
    pub fn replace(&self, yaml: &str) {
        let temp = self.dir.join(format!(".config.yaml.tmp{}", self.next_generation()));
        write(&temp, yaml);
        std::fs::rename(&temp, &self.file)
            .unwrap_or_else(|e| panic!("renaming {} over {}: {e}", temp.display(), self.file.display()));
    }

    /// The kubelet's ConfigMap update: a new `..2026_N/config.yaml`, a symlink `..data_tmp -> ..2026_N`
    /// renamed over `..data` (the one atomic step), then the old data directory removed.
    pub fn swap_configmap(&self, yaml: &str) {
        let data_link = self.dir.join("..data");
        let old = std::fs::read_link(&data_link)
            .unwrap_or_else(|e| panic!("{} is not a ConfigMap-style directory: {e}", self.dir.display()));
        let data = self.new_data_dir(yaml);
        let temp_link = self.dir.join("..data_tmp");
        link(&data, &temp_link);
        std::fs::rename(&temp_link, &data_link)
            .unwrap_or_else(|e| panic!("renaming {} over {}: {e}", temp_link.display(), data_link.display()));
        let old = self.dir.join(old);
        std::fs::remove_dir_all(&old).unwrap_or_else(|e| panic!("removing {}: {e}", old.display()));
    }

    /// Creates `..2026_N/config.yaml` holding `yaml`; returns `..2026_N` (relative, as kubelet links it).
    fn new_data_dir(&self, yaml: &str) -> PathBuf {
        let name = PathBuf::from(format!("..2026_{}", self.next_generation()));
        let dir = self.dir.join(&name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        write(&dir.join("config.yaml"), yaml);
        name
    }

    fn next_generation(&self) -> usize {
        self.generation.fetch_add(1, Ordering::Relaxed)
    }
}

impl Drop for ConfigDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write(path: &Path, contents: &str) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// Creates the symlink `link -> target` (`target` as given, usually relative to the link's directory).
fn link(target: &Path, link: &Path) {
    symlink(target, link).unwrap_or_else(|e| panic!("linking {} -> {}: {e}", link.display(), target.display()));
}
