//! The gateway process: `gateway run` (with its announced listeners, signals and admin endpoints)
//! and the one-shot `gateway check` / invalid `gateway run` commands.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::binaries::{binary, run_bounded};
use crate::configs::{write_temp, ConfigDir};
use crate::process::{parse_addr, Proc};
use crate::{client, TIMEOUT};

/// A running `gateway run --config <file>`. Killed on drop; a config file it wrote itself
/// ([`Gateway::start`]) is removed then too.
pub struct Gateway {
    proc: Proc,
    config: PathBuf,
    owns_config: bool,
    listeners: HashMap<String, SocketAddr>,
    admin: Option<SocketAddr>,
}

impl Gateway {
    /// Writes `yaml` to a temporary file, starts the gateway on it and waits for `ready`.
    /// Panics with the gateway's stderr if it exits or is not ready within [`TIMEOUT`].
    pub fn start(yaml: &str) -> Gateway {
        Gateway::try_start(yaml).unwrap_or_else(|message| panic!("{message}"))
    }

    /// Like [`Gateway::start`], but returns the failure (exit status, stdout and stderr) as text.
    pub fn try_start(yaml: &str) -> Result<Gateway, String> {
        let config = write_temp("gateway", "yaml", yaml);
        Gateway::spawn(config, true, &[])
    }

    /// Like [`Gateway::start`], with extra environment variables for the gateway process (e.g. the
    /// variable a JWT provider's `secret_env` names).
    pub fn start_with_env(yaml: &str, env: &[(&str, &str)]) -> Gateway {
        let config = write_temp("gateway", "yaml", yaml);
        Gateway::spawn(config, true, env).unwrap_or_else(|message| panic!("{message}"))
    }

    /// Starts the gateway on an existing config file, passing `path` exactly as given (the gateway
    /// watches that file's directory, and reports the path in `/admin/config` and in its errors).
    /// The file is left in place on drop. Panics like [`Gateway::start`].
    pub fn start_with_file(path: &Path) -> Gateway {
        Gateway::start_with_file_and_env(path, &[])
    }

    /// [`Gateway::start_with_file`] with extra environment variables for the gateway process.
    pub fn start_with_file_and_env(path: &Path, env: &[(&str, &str)]) -> Gateway {
        Gateway::spawn(path.to_owned(), false, env).unwrap_or_else(|message| panic!("{message}"))
    }

    /// Like [`Gateway::start`], with the open file limit set by the shell's `ulimit` with
    /// `limit` (`-Sn 300` lowers the soft one, `-n 300` both) first; the shell then `exec`s the
    /// gateway, which keeps its pid.
    pub fn start_with_ulimit(yaml: &str, limit: &str) -> Gateway {
        let config = write_temp("gateway", "yaml", yaml);
        let mut command = Command::new("sh");
        command.arg("-c").arg(format!("ulimit {limit} && exec \"$0\" \"$@\"")).arg(binary("gateway"));
        Gateway::spawn_command(command, config, true).unwrap_or_else(|message| panic!("{message}"))
    }

    fn spawn(config: PathBuf, owns_config: bool, env: &[(&str, &str)]) -> Result<Gateway, String> {
        let mut command = Command::new(binary("gateway"));
        command.envs(env.iter().copied());
        Gateway::spawn_command(command, config, owns_config)
    }

    /// Runs `command` with `run --config <config>` appended and waits for `ready`.
    fn spawn_command(mut command: Command, config: PathBuf, owns_config: bool) -> Result<Gateway, String> {
        command.arg("run").arg("--config").arg(&config);
        let proc = Proc::spawn(format!("gateway ({})", config.display()), command);
        let mut gateway = Gateway { proc, config, owns_config, listeners: HashMap::new(), admin: None };
        loop {
            let line = gateway.proc.next_line()?;
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.as_slice() {
                ["ready"] => return Ok(gateway),
                ["listening", "admin", addr] => gateway.admin = Some(parse_addr(addr, &line)),
                ["listening", name, addr] => {
                    gateway.listeners.insert((*name).to_owned(), parse_addr(addr, &line));
                }
                _ => return Err(gateway.proc.failure(&format!("printed unexpected line {line:?} before `ready`"))),
            }
        }
    }

    /// Address of the listener named `name`.
    pub fn listener(&self, name: &str) -> SocketAddr {
        match self.listeners.get(name) {
            Some(addr) => *addr,
            None => panic!("the gateway announced no listener `{name}`; it has {:?}", self.listeners),
        }
    }

    /// Address of the listener named `public` (the one [`config`] declares).
    pub fn addr(&self) -> SocketAddr {
        self.listener("public")
    }

    /// Address of the admin listener.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.unwrap_or_else(|| panic!("the gateway announced no admin listener"))
    }

    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Everything the gateway wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr.text()
    }

    /// Everything the gateway wrote to stdout so far, start-up lines included.
    pub fn stdout(&self) -> String {
        self.proc.stdout.text()
    }

    /// The config file path, as passed to `--config`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Sends SIGTERM (through `kill -TERM`, since this workspace forbids `unsafe`).
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends SIGHUP: reload the config file.
    pub fn sighup(&self) {
        self.signal("HUP");
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill").arg(format!("-{name}")).arg(self.pid().to_string()).status();
        assert!(matches!(status, Ok(s) if s.success()), "kill -{name} {} failed: {status:?}", self.pid());
    }

    /// `GET /admin/config` on the admin listener as JSON; panics (with the body) unless it is a 200
    /// with a JSON object.
    pub async fn admin_config(&self) -> Value {
        let reply = client::get(self.admin_addr(), "/admin/config").await;
        assert_eq!(reply.status, 200, "GET /admin/config: {}", reply.text());
        let json = reply.json();
        assert!(json.is_object(), "GET /admin/config is not a JSON object: {json}");
        json
    }

    /// Polls `/admin/config` every 20 ms until `condition` holds and returns that document; panics
    /// naming `what`, with the last document seen, after [`TIMEOUT`].
    pub async fn admin_config_until(&self, what: &str, condition: impl FnMut(&Value) -> bool) -> Value {
        let what = format!("/admin/config to show {what}");
        crate::fetch_until(&what, || self.admin_config(), condition, |json| format!("{json:#}")).await
    }

    /// Waits until `/admin/config` reports `version` as the active config and returns the document.
    pub async fn wait_for_version(&self, version: &str) -> Value {
        self.admin_config_until(&format!("version {version}"), |json| json["version"] == version).await
    }

    /// Waits until `/admin/config` counts more than `failed` failed reloads and returns the document.
    pub async fn wait_for_failed_reloads_over(&self, failed: u64) -> Value {
        self.admin_config_until(&format!("more than {failed} failed reloads"), |json| {
            json["reloads"]["failed"].as_u64().is_some_and(|n| n > failed)
        })
        .await
    }

    /// The exit status if the process has exited.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.proc.child.try_wait().ok().flatten()
    }

    /// Waits (up to [`TIMEOUT`]) for the process to exit; panics with its stderr if it does not.
    pub async fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            if Instant::now() > deadline {
                panic!("{}", self.proc.failure(&format!("did not exit within {TIMEOUT:?}")));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak resident set size so far (`VmHWM` of `/proc/<pid>/status`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let path = format!("/proc/{}/status", self.pid());
        let status = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap_or_else(|| panic!("no VmHWM in {path}"));
        let kib: u64 = line.trim_start_matches("VmHWM:").trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        kib * 1024
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.owns_config {
            let _ = std::fs::remove_file(&self.config);
        }
    }
}

/// Runs `gateway check --config <path>` to completion.
pub fn gateway_check(path: &Path) -> Output {
    gateway_command(&["check", "--config"], path)
}

/// Runs `gateway run --config <path>` for a config that must be rejected (it would serve otherwise;
/// a bounded wait kills it and panics).
pub fn gateway_run_invalid(path: &Path) -> Output {
    gateway_command(&["run", "--config"], path)
}

fn gateway_command(args: &[&str], path: &Path) -> Output {
    let mut command = Command::new(binary("gateway"));
    command.args(args).arg(path);
    let (status, stdout, stderr) = run_bounded(&mut command, TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    Output { status, stdout: stdout.into_bytes(), stderr: stderr.into_bytes() }
}

/// Asserts every problem line `gateway check` prints for the files as they are now appears, exactly,
/// in `last_reload.error`.
pub fn assert_error_has_every_check_line(json: &Value, dir: &ConfigDir) {
    let error = json["last_reload"]["error"].as_str().unwrap_or_else(|| panic!("no last_reload.error in {json:#}"));
    let check = gateway_check(dir.path());
    let stderr = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(1), "gateway check on the same files; stderr:\n{stderr}");
    let problems: Vec<&str> = stderr.lines().filter(|l| l.starts_with(dir.path_text())).collect();
    assert!(!problems.is_empty(), "gateway check printed no problem line; stderr:\n{stderr}");
    for problem in problems {
        assert!(
            error.lines().any(|l| l == problem),
            "`gateway check` line {problem:?} missing from the error:\n{error}"
        );
    }
}
