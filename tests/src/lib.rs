//! End-to-end test support: builds the binaries once, runs real `gateway` and `echo` processes on port 0,
//! and talks to them over real sockets (a small hyper client, raw TCP for malformed traffic).
//!
//! Every wait is bounded by [`TIMEOUT`] so a hung process fails the test with its stderr instead of
//! hanging the run. Nothing here asserts wall-clock time.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Upper bound for any single wait (process start, a response, a process exit). Generous on purpose:
/// it only turns a hang into a failure, it never measures speed.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Upper bound for the one `cargo build` per test process (a cold build on 2 cores takes minutes).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// The workspace root (parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest_dir.parent().unwrap_or(manifest_dir).to_path_buf()
}

// ---------------------------------------------------------------------------------------------------
// Binaries
// ---------------------------------------------------------------------------------------------------

/// Path of a workspace binary (`gateway` or `echo`), built once per test process.
///
/// Runs `cargo build -p gateway -p backends --bins --message-format=json` from the workspace root, with
/// the profile the tests were built with, and takes each executable's path from cargo's own artifact
/// messages, so `CARGO_TARGET_DIR`, `build.target-dir` and `build.build-dir` all work. `cargo test` and
/// `cargo nextest run` release cargo's build-directory lock before running test binaries, so this
/// nested build does not deadlock; if another build holds the lock it simply waits for it.
///
/// `E2E_BIN_DIR=<dir>` skips the build and uses `<dir>/gateway` and `<dir>/echo` (for prebuilt runs).
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
        let dir = PathBuf::from(dir);
        return Ok(["gateway", "echo"].iter().map(|name| (name.to_string(), dir.join(name))).collect());
    }
    build_binaries()
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
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("could not run {described}: {e}"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() > BUILD_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{described} did not finish within {BUILD_TIMEOUT:?}:\n{}", stderr.wait()));
            }
            Ok(None) => thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {described}: {e}")),
        }
    };
    let (stdout, stderr) = (stdout.wait(), stderr.wait());
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

// ---------------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------------

/// Text a child wrote so far, appended by a reader thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn push_line(&self, line: &str) {
        if let Ok(mut text) = self.0.lock() {
            text.push_str(line);
            text.push('\n');
        }
    }

    fn text(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// A spawned child whose stdout lines are forwarded to a channel and whose stderr is captured.
/// Killed (and reaped) on drop.
struct Proc {
    what: String,
    child: Child,
    stdout: Captured,
    stderr: Captured,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(what: String, mut command: Command) -> Proc {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("could not start {what} ({command:?}): {e}"));
        let (stdout, stderr) = (Captured::default(), Captured::default());
        let (sender, lines) = mpsc::channel();
        forward_lines(child.stdout.take(), stdout.clone(), Some(sender));
        forward_lines(child.stderr.take(), stderr.clone(), None);
        Proc { what, child, stdout, stderr, lines }
    }

    /// The next stdout line, or an error message (with stderr) if the process exits or `TIMEOUT` passes.
    fn next_line(&mut self) -> Result<String, String> {
        match self.lines.recv_timeout(TIMEOUT) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => Err(self.failure(&format!("no output line within {TIMEOUT:?}"))),
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed: the process is exiting; give it a moment so its status and stderr are complete.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
                    thread::sleep(Duration::from_millis(20));
                }
                thread::sleep(Duration::from_millis(50));
                Err(self.failure("closed stdout before it was ready"))
            }
        }
    }

    fn failure(&mut self, what_happened: &str) -> String {
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited with {status}"),
            _ => "still running".to_owned(),
        };
        format!(
            "{} {what_happened} ({status})\n--- stdout ---\n{}--- stderr ---\n{}",
            self.what,
            self.stdout.text(),
            self.stderr.text()
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if thread::panicking() {
            // Shown with the failing test's output: what the process said is usually the explanation.
            eprintln!(
                "--- {} stdout ---\n{}--- {} stderr ---\n{}",
                self.what,
                self.stdout.text(),
                self.what,
                self.stderr.text()
            );
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn forward_lines<R: Read + Send + 'static>(pipe: Option<R>, captured: Captured, sender: Option<mpsc::Sender<String>>) {
    let Some(pipe) = pipe else { return };
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            captured.push_line(&line);
            if let Some(sender) = &sender {
                // The receiver is gone once the owner stopped listening; keep draining the pipe anyway.
                let _ = sender.send(line);
            }
        }
    });
}

/// Parses `ip:port` from a `listening ...` line, panicking with the whole line when it does not parse.
fn parse_addr(text: &str, line: &str) -> SocketAddr {
    text.parse().unwrap_or_else(|e| panic!("bad address in line {line:?}: {e}"))
}

// ---------------------------------------------------------------------------------------------------
// Echo backend
// ---------------------------------------------------------------------------------------------------

/// A running `echo --name NAME` process on a free loopback port. Killed on drop.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    proc: Proc,
}

/// The echo's `/stats` counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EchoStats {
    pub connections_accepted: u64,
    /// Every request but `/stats` itself.
    pub requests: u64,
}

impl Backend {
    /// Starts an echo backend named `name` and waits for its `listening <addr>` line.
    pub fn spawn(name: &str) -> Backend {
        let mut command = Command::new(binary("echo"));
        command.args(["--listen", "127.0.0.1:0", "--name", name]);
        let mut proc = Proc::spawn(format!("echo backend `{name}`"), command);
        let line = proc.next_line().unwrap_or_else(|message| panic!("{message}"));
        let Some(addr) = line.strip_prefix("listening ") else {
            panic!("{}", proc.failure(&format!("printed {line:?} instead of `listening <addr>`")));
        };
        let addr = parse_addr(addr, &line);
        Backend { name: name.to_owned(), addr, proc }
    }

    /// `http://ip:port`, as an upstream endpoint.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its OS process id.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Reads `/stats` directly (not through the gateway).
    pub async fn stats(&self) -> EchoStats {
        let json = client::get(self.addr, "/stats").await.json();
        let field = |name: &str| json[name].as_u64().unwrap_or_else(|| panic!("no `{name}` in /stats: {json}"));
        EchoStats { connections_accepted: field("connections_accepted"), requests: field("requests") }
    }
}

// ---------------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------------

/// A running `gateway run --config <temp file>`. Killed on drop (its config file is removed).
pub struct Gateway {
    proc: Proc,
    config: PathBuf,
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
        let mut command = Command::new(binary("gateway"));
        command.arg("run").arg("--config").arg(&config);
        let proc = Proc::spawn(format!("gateway ({})", config.display()), command);
        let mut gateway = Gateway { proc, config, listeners: HashMap::new(), admin: None };
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

    /// Sends SIGTERM (through `kill -TERM`, since this workspace forbids `unsafe`).
    pub fn sigterm(&self) {
        let status = Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        assert!(matches!(status, Ok(s) if s.success()), "kill -TERM {} failed: {status:?}", self.pid());
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
        let _ = std::fs::remove_file(&self.config);
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
    let described = format!("{command:?}");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {described}: {e}"));
    let (stdout, stderr) = (drain(child.stdout.take()), drain(child.stderr.take()));
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{described} did not exit within {TIMEOUT:?}\nstdout:\n{}\nstderr:\n{}",
                stdout.wait(),
                stderr.wait()
            );
        }
        thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: stdout.wait().into_bytes(), stderr: stderr.wait().into_bytes() }
}

// ---------------------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------------------

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

/// A loopback address where nothing listens (bound on port 0, then closed).
pub fn closed_port_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("binding port 0: {e}"));
    listener.local_addr().unwrap_or_else(|e| panic!("local_addr: {e}"))
}

/// Polls `condition` every 20 ms until it holds; panics naming `what` after [`TIMEOUT`].
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + TIMEOUT;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out after {TIMEOUT:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// True for a UUID in canonical text form whose version nibble is 7.
pub fn is_uuid_v7(text: &str) -> bool {
    let groups: Vec<&str> = text.split('-').collect();
    let lengths: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    lengths == [8, 4, 4, 4, 12]
        && groups.iter().all(|g| g.bytes().all(|b| b.is_ascii_hexdigit()))
        && groups[2].starts_with('7')
}

/// Byte `i` of the echo's `/bytes/{n}` body.
pub fn pattern_byte(i: u64) -> u8 {
    (i % 251) as u8
}

// ---------------------------------------------------------------------------------------------------
// HTTP client
// ---------------------------------------------------------------------------------------------------

/// A small HTTP/1.1 client on hyper's connection API: one fresh connection per request, so tests
/// control exactly what is sent (the `host` header is added only when the request has none).
pub mod client {
    use std::io;
    use std::net::SocketAddr;

    use bytes::Bytes;
    use futures_util::Stream;
    use http::header::{HeaderMap, HOST};
    use http::{HeaderValue, Request, Response, StatusCode};
    use http_body_util::combinators::UnsyncBoxBody;
    use http_body_util::{BodyExt, Empty, Full, StreamBody};
    use hyper::body::{Frame, Incoming};
    use hyper_util::rt::TokioIo;
    use serde_json::Value;
    use tokio::net::TcpStream;

    use super::TIMEOUT;

    /// A request body: empty, whole, or streamed (sent chunked when no `content-length` is set).
    pub type Body = UnsyncBoxBody<Bytes, io::Error>;

    pub fn empty() -> Body {
        Empty::new().map_err(|never| match never {}).boxed_unsync()
    }

    pub fn full(bytes: impl Into<Bytes>) -> Body {
        Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
    }

    pub fn stream<S>(chunks: S) -> Body
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        use futures_util::StreamExt;
        StreamBody::new(chunks.map(|chunk| chunk.map(Frame::data))).boxed_unsync()
    }

    /// `Request::builder()` with method and path (origin-form target) set.
    pub fn request(method: &str, path: &str) -> http::request::Builder {
        Request::builder().method(method).uri(path)
    }

    /// A whole response.
    #[derive(Debug)]
    pub struct Reply {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: Bytes,
    }

    impl Reply {
        /// The first value of header `name`, if present and text.
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }

        /// The body as text (lossy).
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// The body as JSON; panics with status and body when it is not JSON.
        pub fn json(&self) -> Value {
            serde_json::from_slice(&self.body)
                .unwrap_or_else(|e| panic!("response {} is not JSON ({e}): {}", self.status, self.text()))
        }

        /// The echo's report of the request it received; panics with the response if it is not one.
        pub fn echoed(&self) -> Echoed {
            let json = self.json();
            let text = |key: &str| {
                json[key]
                    .as_str()
                    .unwrap_or_else(|| panic!("not an echo body (no `{key}`), status {}: {json}", self.status))
                    .to_owned()
            };
            let number =
                |key: &str| json[key].as_u64().unwrap_or_else(|| panic!("not an echo body (no `{key}`): {json}"));
            let headers = json["headers"]
                .as_array()
                .unwrap_or_else(|| panic!("not an echo body (no `headers`): {json}"))
                .iter()
                .map(|pair| {
                    (pair[0].as_str().unwrap_or_default().to_owned(), pair[1].as_str().unwrap_or_default().to_owned())
                })
                .collect();
            Echoed {
                backend: text("backend"),
                method: text("method"),
                path: text("path"),
                headers,
                body_bytes: number("body_bytes"),
                body_sum: number("body_sum"),
            }
        }

        /// Asserts a gateway error response: `status`, JSON content type, `error` code, a request id in
        /// the body equal to the `x-request-id` header. Returns the body.
        pub fn assert_error(&self, status: u16, code: &str) -> Value {
            assert_eq!(self.status.as_u16(), status, "status; body: {}", self.text());
            let content_type = self.header("content-type").unwrap_or_default();
            assert!(
                content_type.starts_with("application/json"),
                "content-type {content_type:?}; body: {}",
                self.text()
            );
            let json = self.json();
            assert_eq!(json["error"], code, "error code in {json}");
            assert!(json["message"].is_string(), "no message in {json}");
            let id = json["request_id"].as_str().unwrap_or_else(|| panic!("no request_id in {json}"));
            assert!(!id.is_empty(), "empty request_id in {json}");
            assert_eq!(self.header("x-request-id"), Some(id), "x-request-id header vs body");
            json
        }
    }

    /// The echo's JSON report of a request.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Echoed {
        pub backend: String,
        pub method: String,
        pub path: String,
        /// Every header as received, in order, repeats kept; names lowercase.
        pub headers: Vec<(String, String)>,
        pub body_bytes: u64,
        pub body_sum: u64,
    }

    impl Echoed {
        /// The first value of header `name` (lowercase).
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }

        /// Every value of header `name` (lowercase), in order.
        pub fn header_all(&self, name: &str) -> Vec<&str> {
            self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
        }
    }

    /// Sends `request` on a new connection and returns the response with its body still streaming.
    pub async fn open(addr: SocketAddr, mut request: Request<Body>) -> anyhow::Result<Response<Incoming>> {
        if !request.headers().contains_key(HOST) {
            request.headers_mut().insert(HOST, HeaderValue::from_str(&addr.to_string())?);
        }
        let stream = TcpStream::connect(addr).await?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        Ok(sender.send_request(request).await?)
    }

    /// Sends `request` and reads the whole response, within [`TIMEOUT`].
    pub async fn try_send(addr: SocketAddr, request: Request<Body>) -> anyhow::Result<Reply> {
        let exchange = async {
            let response = open(addr, request).await?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await?.to_bytes();
            anyhow::Ok(Reply { status: parts.status, headers: parts.headers, body })
        };
        tokio::time::timeout(TIMEOUT, exchange).await.map_err(|_| anyhow::anyhow!("no response within {TIMEOUT:?}"))?
    }

    /// Like [`try_send`], panicking on any error.
    pub async fn send(addr: SocketAddr, request: Request<Body>) -> Reply {
        let target = format!("{} {}", request.method(), request.uri());
        try_send(addr, request).await.unwrap_or_else(|e| panic!("{target} to {addr}: {e:#}"))
    }

    /// `GET path` with no extra headers.
    pub async fn get(addr: SocketAddr, path: &str) -> Reply {
        send(addr, request("GET", path).body(empty()).unwrap_or_else(|e| panic!("bad request: {e}"))).await
    }

    /// `GET path` with the given headers (a `host` among them replaces the default).
    pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut builder = request("GET", path);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        send(addr, builder.body(empty()).unwrap_or_else(|e| panic!("bad request: {e}"))).await
    }
}

// ---------------------------------------------------------------------------------------------------
// Raw TCP
// ---------------------------------------------------------------------------------------------------

/// Raw TCP helpers for traffic a well-behaved client would not send.
pub mod raw {
    use std::net::SocketAddr;

    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::TIMEOUT;

    /// A parsed HTTP/1.1 response.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct RawReply {
        pub status: u16,
        /// Names lowercase, in order.
        pub headers: Vec<(String, String)>,
        pub body: Vec<u8>,
    }

    impl RawReply {
        pub fn header(&self, name: &str) -> Option<&str> {
            self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
        }
    }

    pub async fn connect(addr: SocketAddr) -> TcpStream {
        match tokio::time::timeout(TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => panic!("connecting to {addr}: {e}"),
            Err(_) => panic!("connecting to {addr}: no answer within {TIMEOUT:?}"),
        }
    }

    /// Reads until the peer closes (or resets) the connection; panics if it stays open past [`TIMEOUT`].
    /// A reset after some bytes is treated as the end: the bytes that arrived are returned.
    pub async fn read_until_close(stream: &mut TcpStream) -> Vec<u8> {
        let mut bytes = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let reading = async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
        };
        if tokio::time::timeout(TIMEOUT, reading).await.is_err() {
            panic!("the peer did not close the connection within {TIMEOUT:?}");
        }
        bytes
    }

    /// Writes `request` (write errors ignored: the peer may answer and close early), then reads until
    /// the peer closes. Returns everything received.
    pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
        let mut stream = connect(addr).await;
        let _ = stream.write_all(request).await;
        read_until_close(&mut stream).await
    }

    /// Reads one response (head plus `content-length` or chunked body) from a connection that may stay
    /// open afterwards. If the peer closes or resets first, parses whatever arrived (a reset right after
    /// an early answer must not lose it). Panics if no response head arrived, or after [`TIMEOUT`].
    pub async fn read_response<R: AsyncRead + Unpin>(reader: &mut R) -> RawReply {
        let mut bytes = Vec::new();
        let reading = async {
            let mut buf = [0u8; 16 * 1024];
            loop {
                if let Some(reply) = parse_complete(&bytes) {
                    return Some(reply);
                }
                match reader.read(&mut buf).await {
                    Ok(0) | Err(_) => return parse(&bytes),
                    Ok(n) => bytes.extend_from_slice(&buf[..n]),
                }
            }
        };
        match tokio::time::timeout(TIMEOUT, reading).await {
            Ok(Some(reply)) => reply,
            Ok(None) => panic!("connection closed without a response; got {:?}", String::from_utf8_lossy(&bytes)),
            Err(_) => panic!("no complete response within {TIMEOUT:?}; got {:?}", String::from_utf8_lossy(&bytes)),
        }
    }

    /// Parses a response read until close; the body is whatever follows the head (dechunked if chunked).
    pub fn parse(bytes: &[u8]) -> Option<RawReply> {
        let (status, headers, body_start) = parse_head(bytes)?;
        let rest = &bytes[body_start..];
        let chunked = headers.iter().any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        let body =
            if chunked { dechunk(rest).map(|(body, _)| body).unwrap_or_else(|| rest.to_vec()) } else { rest.to_vec() };
        Some(RawReply { status, headers, body })
    }

    /// A complete response at the start of `bytes`, if one has fully arrived.
    fn parse_complete(bytes: &[u8]) -> Option<RawReply> {
        let (status, headers, body_start) = parse_head(bytes)?;
        let rest = &bytes[body_start..];
        let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let body = if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            dechunk(rest)?.0
        } else {
            let length: usize = header("content-length").map_or(Some(0), |v| v.parse().ok())?;
            rest.get(..length)?.to_vec()
        };
        Some(RawReply { status, headers, body })
    }

    /// Status, headers, and where the body starts.
    type Head = (u16, Vec<(String, String)>, usize);

    fn parse_head(bytes: &[u8]) -> Option<Head> {
        let end = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&bytes[..end]);
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers = lines
            .filter_map(|line| line.split_once(':'))
            .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
            .collect();
        Some((status, headers, end + 4))
    }

    /// Decodes a chunked body; returns it and the bytes consumed, or `None` if incomplete.
    fn dechunk(mut raw: &[u8]) -> Option<(Vec<u8>, usize)> {
        let total = raw.len();
        let mut body = Vec::new();
        loop {
            let eol = raw.windows(2).position(|w| w == b"\r\n")?;
            let size_text = String::from_utf8_lossy(&raw[..eol]);
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            raw = &raw[eol + 2..];
            if size == 0 {
                // Trailer lines, if any, up to the empty line that ends the message.
                loop {
                    let eol = raw.windows(2).position(|w| w == b"\r\n")?;
                    raw = &raw[eol + 2..];
                    if eol == 0 {
                        return Some((body, total - raw.len()));
                    }
                }
            }
            body.extend_from_slice(raw.get(..size)?);
            raw = raw.get(size + 2..)?;
        }
    }
}
