//! Child processes (stdout lines forwarded, stderr captured, killed on drop) and the echo backend.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::binaries::binary;
use crate::{client, TIMEOUT};

/// Text a child wrote so far, appended by a reader thread.
#[derive(Clone, Default)]
pub(crate) struct Captured(Arc<Mutex<String>>);

impl Captured {
    fn push_line(&self, line: &str) {
        if let Ok(mut text) = self.0.lock() {
            text.push_str(line);
            text.push('\n');
        }
    }

    pub(crate) fn text(&self) -> String {
        self.0.lock().map(|t| t.clone()).unwrap_or_default()
    }
}

/// A spawned child whose stdout lines are forwarded to a channel and whose stderr is captured.
/// Killed (and reaped) on drop.
pub(crate) struct Proc {
    what: String,
    pub(crate) child: Child,
    pub(crate) stdout: Captured,
    pub(crate) stderr: Captured,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    pub(crate) fn spawn(what: String, mut command: Command) -> Proc {
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
    pub(crate) fn next_line(&mut self) -> Result<String, String> {
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

    pub(crate) fn failure(&mut self, what_happened: &str) -> String {
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
pub(crate) fn parse_addr(text: &str, line: &str) -> SocketAddr {
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

/// A running backend service (`auth`, `product`, `cart`) on a free loopback port. Killed on drop.
pub struct Service {
    pub addr: SocketAddr,
    proc: Proc,
}

impl Service {
    /// Starts `binary --listen 127.0.0.1:0 ARGS...` and waits for its `listening <addr>` line.
    pub fn spawn(name: &str, args: &[&str]) -> Service {
        let mut command = Command::new(binary(name));
        command.args(["--listen", "127.0.0.1:0"]).args(args);
        let (proc, addr) = spawn_listening(format!("`{name}` service"), command);
        Service { addr, proc }
    }

    /// `http://ip:port`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.proc.stderr.text()
    }
}

/// Spawns `command` and waits for the `listening <addr>` line every backend prints once bound.
fn spawn_listening(what: String, command: Command) -> (Proc, SocketAddr) {
    let mut proc = Proc::spawn(what, command);
    let line = proc.next_line().unwrap_or_else(|message| panic!("{message}"));
    let Some(addr) = line.strip_prefix("listening ") else {
        panic!("{}", proc.failure(&format!("printed {line:?} instead of `listening <addr>`")));
    };
    let addr = parse_addr(addr, &line);
    (proc, addr)
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
        Backend::spawn_on(name, SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// [`Backend::spawn`] on `addr` (port 0: any free port).
    pub fn spawn_on(name: &str, addr: SocketAddr) -> Backend {
        let mut command = Command::new(binary("echo"));
        command.args(["--listen", &addr.to_string(), "--name", name]);
        let (proc, addr) = spawn_listening(format!("echo backend `{name}`"), command);
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
