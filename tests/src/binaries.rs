//! Locating the `gateway` and `echo` executables: one `cargo build` per test process (or a prebuilt
//! directory), with cargo's own artifact messages as the source of truth for their paths.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::workspace_root;

/// Upper bound for the one `cargo build` per test process (a cold build on 2 cores takes minutes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Path of a workspace binary (`gateway` or `echo`), built once per test process.
///
/// Runs `cargo build -p gateway -p backends --bins --message-format=json` from the workspace root, with
/// the profile the tests were built with, and takes each executable's path from cargo's own artifact
/// messages, so `CARGO_TARGET_DIR`, `build.target-dir` and `build.build-dir` all work. `cargo test` and
/// `cargo nextest run` release cargo's build-directory lock before running test binaries, so this
/// nested build does not deadlock; if another build holds the lock it simply waits for it.
///
/// `E2E_BIN_DIR=<dir>` skips the build and takes the binaries from `<dir>` (for prebuilt runs); a
/// relative `<dir>` is taken from the workspace root.
/// Panics with cargo's output when the build fails or a binary is missing.
pub fn binary(name: &str) -> PathBuf {
    static BINARIES: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    let binaries = match BINARIES.get_or_init(locate_or_build) {
        Ok(binaries) => binaries,
        Err(message) => panic!("{message}"),
    };
    match binaries.get(name) {
        Some(path) if path.is_file() => path.clone(),
        Some(path) => panic!("binary `{name}` was reported at {} but that file does not exist", path.display()),
        None => panic!("no binary `{name}` among the built ones: {binaries:?}"),
    }
}

fn locate_or_build() -> Result<HashMap<String, PathBuf>, String> {
    if let Some(dir) = std::env::var_os("E2E_BIN_DIR") {
        let dir = prebuilt_dir(Path::new(&dir));
        return Ok(["gateway", "echo", "auth", "product", "cart"]
            .iter()
            .map(|name| (name.to_string(), dir.join(name)))
            .collect());
    }
    build_binaries()
}

/// Where `E2E_BIN_DIR` points: cargo runs each test binary in its package's directory, but the
/// README's `E2E_BIN_DIR=target/pgo` is written from the workspace root.
fn prebuilt_dir(dir: &Path) -> PathBuf {
    workspace_root().join(dir)
}

/// The cargo profile this test binary was built with, from its location `<dir>/<profile>/deps/<test>`.
fn current_profile() -> String {
    let exe = std::env::current_exe().ok();
    let deps = exe.as_deref().and_then(Path::parent);
    match deps.filter(|d| d.ends_with("deps")).and_then(Path::parent).and_then(Path::file_name) {
        Some(name) => name.to_string_lossy().into_owned(),
        None => "debug".to_owned(),
    }
}

fn build_binaries() -> Result<HashMap<String, PathBuf>, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command.current_dir(workspace_root()).args([
        "build",
        "-p",
        "gateway",
        "-p",
        "backends",
        "--bins",
        "--message-format=json-render-diagnostics",
    ]);
    match current_profile().as_str() {
        "debug" => {}
        "release" => {
            command.arg("--release");
        }
        other => {
            command.args(["--profile", other]);
        }
    }
    let described = format!("{command:?}");
    let (status, stdout, stderr) = run_bounded(&mut command, BUILD_TIMEOUT)?;
    if !status.success() {
        return Err(format!("building the binaries failed ({status}): {described}\n{stderr}"));
    }
    let mut binaries = HashMap::new();
    for message in stdout.lines().filter_map(|line| serde_json::from_str::<Value>(line).ok()) {
        if message["reason"] != "compiler-artifact" {
            continue;
        }
        if let (Some(name), Some(exe)) = (message["target"]["name"].as_str(), message["executable"].as_str()) {
            binaries.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    if binaries.contains_key("gateway") && binaries.contains_key("echo") {
        Ok(binaries)
    } else {
        Err(format!("{described} succeeded but did not report both `gateway` and `echo`: {binaries:?}\n{stderr}"))
    }
}

/// Runs `command` to completion with its output captured; past `timeout` it is killed and the
/// error holds what it printed.
pub(crate) fn run_bounded(command: &mut Command, timeout: Duration) -> Result<(ExitStatus, String, String), String> {
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {described}: {e}"))?;
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{described} did not finish within {timeout:?}\nstdout:\n{}\nstderr:\n{}",
                    stdout.wait(),
                    stderr.wait()
                ));
            }
            Ok(None) => thread::sleep(Duration::from_millis(10)),
            Err(e) => return Err(format!("waiting for {described}: {e}")),
        }
    };
    Ok((status, stdout.wait(), stderr.wait()))
}

/// A pipe read to its end on a background thread, so the child never blocks on a full pipe.
struct Drain(thread::JoinHandle<String>);

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> Drain {
    Drain(thread::spawn(move || {
        let mut text = Vec::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_end(&mut text);
        }
        String::from_utf8_lossy(&text).into_owned()
    }))
}

impl Drain {
    fn wait(self) -> String {
        self.0.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prebuilt_dir_is_relative_to_the_workspace_root() {
        assert_eq!(prebuilt_dir(Path::new("target/pgo")), workspace_root().join("target").join("pgo"));
        assert!(workspace_root().join("Cargo.lock").is_file(), "{}", workspace_root().display());
        assert_eq!(prebuilt_dir(Path::new("/opt/gateway/bin")), Path::new("/opt/gateway/bin"));
    }
}
