//! The JSON access log: one line per request, queued without blocking and written by one thread.
//!
//! The request path formats a line and hands it to a bounded queue (`try_send`); a dedicated
//! writer thread waits for a line, lets the queue fill for [`LINGER`], then writes and flushes
//! everything queued. A quiet gateway's lines appear within `LINGER`; a busy one wakes the writer
//! and writes once per batch, not once per line. A full queue drops the line and counts it: a
//! slow disk never slows a request.
//!
//! Dropping a log never waits for its writer either: a reload that moves the log can drop the old
//! one on a worker thread, mid-traffic. The writer writes out what it holds on its own, and the
//! process waits for every such writer once, at exit ([`finish`]).

use std::fmt::{self, Write as _};
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Version};

use crate::{text, timefmt};

/// Lines the queue holds before new ones are dropped (about 2 MiB of typical lines).
const QUEUE_CAPACITY: usize = 8192;
/// The writer's buffer: large enough that a burst is written in few system calls.
const WRITE_BUFFER: usize = 64 * 1024;
/// How long the writer lets lines gather after the first of a batch arrives. Senders never wake
/// a writer that is lingering, which is what keeps the log's cost per request low.
const LINGER: Duration = Duration::from_millis(10);
/// How long [`finish`] waits at exit for writers to write out what is queued. A log on a pipe
/// nobody reads (the stdout of a stalled log shipper) would otherwise hold the process forever.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Room for a typical line (about 400 bytes), so formatting allocates once.
const LINE_CAPACITY: usize = 512;

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// A running access log: a bounded queue and one writer thread. Cloning shares it.
///
/// Dropping the last clone closes the queue and returns at once; the writer thread writes and
/// flushes every queued line, then ends. [`finish`] waits for that at exit.
#[derive(Clone)]
pub struct AccessLog {
    shared: Arc<Shared>,
}

/// One request, as the access log line records it. Borrowed so nothing is copied unless the
/// log is on.
#[derive(Debug, Clone, Copy)]
pub struct Entry<'a> {
    /// When the request arrived.
    pub time: SystemTime,
    pub request_id: &'a str,
    /// The W3C trace id the upstream request carried (the client's, or one the gateway started).
    pub trace_id: Option<&'a str>,
    pub client_ip: IpAddr,
    pub method: &'a Method,
    pub host: Option<&'a str>,
    /// The path only: the query string may hold secrets and is never logged (anything from a
    /// `?` on is cut off here too).
    pub path: &'a str,
    /// Logged as `"HTTP/1.1"`, `"HTTP/2.0"`...
    pub protocol: Version,
    pub tls: bool,
    pub status: u16,
    pub route: Option<&'a str>,
    pub upstream: Option<&'a str>,
    /// The `host:port` the request went to.
    pub endpoint: Option<&'a str>,
    /// The gateway's error code (`rate_limited`, `no_route`...) when it answered itself.
    pub error: Option<&'a str>,
    /// From arrival to the last byte of the response body sent (or the client gone).
    pub duration: Duration,
    /// Until the upstream's response head arrived.
    pub upstream_duration: Option<Duration>,
    /// Response body bytes handed to the connection.
    pub bytes_sent: u64,
    /// False when the client went away before the body ended.
    pub completed: bool,
    pub user_agent: Option<&'a str>,
}

/// State shared by every clone; dropping it stops the writer thread.
struct Shared {
    target: Target,
    /// `None` only while dropping, so the channel disconnects before the join.
    sender: Option<SyncSender<String>>,
    dropped: AtomicU64,
    reopen: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

/// Writers of logs whose handles are all dropped, still writing out their queues: what [`finish`]
/// waits for.
static CLOSING: Mutex<Vec<Closing>> = Mutex::new(Vec::new());

struct Closing {
    target: Target,
    writer: JoinHandle<()>,
}

impl AccessLog {
    /// Opens the target (files: created if missing, appended to, parent must exist) and starts
    /// the writer thread (named "access-log"). Errors say which file and why.
    pub fn open(target: &Target) -> io::Result<AccessLog> {
        Self::open_with_capacity(target, QUEUE_CAPACITY)
    }

    fn open_with_capacity(target: &Target, capacity: usize) -> io::Result<AccessLog> {
        Self::start(target, capacity, None)
    }

    /// `gate`: tests hold the writer back until they send on (or drop) its sender.
    fn start(target: &Target, capacity: usize, gate: Option<Receiver<()>>) -> io::Result<AccessLog> {
        let sink = open_sink(target)?;
        let (sender, receiver) = mpsc::sync_channel::<String>(capacity);
        let reopen = Arc::new(AtomicBool::new(false));
        let mut writer = Writer { target: target.clone(), sink, reopen: reopen.clone(), failing: false };
        let handle = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || {
                if let Some(gate) = gate {
                    // Either a message or a disconnect opens the gate.
                    let _ = gate.recv();
                }
                writer.run(&receiver);
            })
            .map_err(|err| io::Error::new(err.kind(), format!("starting the access log writer thread: {err}")))?;
        Ok(AccessLog {
            shared: Arc::new(Shared {
                target: target.clone(),
                sender: Some(sender),
                dropped: AtomicU64::new(0),
                reopen,
                writer: Some(handle),
            }),
        })
    }

    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// Formats one line and queues it without blocking (the request path calls this). When the
    /// queue is full (the writer cannot keep up) the line is dropped and counted, never blocking
    /// a request.
    pub fn log(&self, entry: &Entry<'_>) {
        let Some(sender) = &self.shared.sender else { return };
        match sender.try_send(format_line(entry)) {
            Ok(()) => {}
            // Disconnected means the writer thread is gone (it only ends once every handle is
            // dropped, so in practice never): the line is lost all the same.
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.shared.dropped.fetch_add(1, Ordering::Relaxed);
                crate::metrics::global().access_log_line_dropped();
            }
        }
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Reopens a file target (for logrotate's `postrotate` via SIGHUP); no-op for stdout.
    /// Asynchronous: the writer thread reopens the file before its next write.
    pub fn reopen(&self) {
        if matches!(self.shared.target, Target::File(_)) {
            self.shared.reopen.store(true, Ordering::Release);
        }
    }
}

impl fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccessLog").field("target", &self.shared.target).field("dropped", &self.dropped()).finish()
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Disconnect so the writer drains the queue, flushes and returns; it does so on its own.
        drop(self.sender.take());
        if let Some(writer) = self.writer.take() {
            let mut closing = closing();
            closing.retain(|closed| !closed.writer.is_finished());
            closing.push(Closing { target: self.target.clone(), writer });
        }
    }
}

/// Waits, up to `limit` in all, for the writers of dropped logs to write out and flush what they
/// hold. Call it at exit, after the last handle is dropped: the process would otherwise end with
/// lines still queued. A writer still blocked at the limit (a pipe nobody reads) is left behind
/// with a warning naming its target.
pub fn finish(limit: Duration) {
    wait_for_writers(limit, |_| true);
}

/// [`finish`] for the writers whose target `wanted` picks; returns how many were left behind.
fn wait_for_writers(limit: Duration, wanted: impl Fn(&Target) -> bool) -> usize {
    let waiting: Vec<Closing> = {
        let mut closing = closing();
        let (waiting, others) = std::mem::take(&mut *closing).into_iter().partition(|closed| wanted(&closed.target));
        *closing = others;
        waiting
    };
    let deadline = Instant::now() + limit;
    let mut left_behind = 0;
    for Closing { target, writer } in waiting {
        while !writer.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if writer.is_finished() {
            // The writer does not panic; if it somehow did, there is nothing left to flush.
            let _ = writer.join();
        } else {
            left_behind += 1;
            tracing::warn!(
                target_file = %TargetName(&target),
                "access log: still blocked writing after {limit:?}; the lines it holds may be lost"
            );
        }
    }
    left_behind
}

/// The list behind [`CLOSING`]; a panic while it was held cannot leave it inconsistent.
fn closing() -> MutexGuard<'static, Vec<Closing>> {
    CLOSING.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The writer thread's state.
struct Writer {
    target: Target,
    sink: BufWriter<Box<dyn Write + Send>>,
    reopen: Arc<AtomicBool>,
    /// Set after the first write error is reported; cleared by a reopen, so one failing disk
    /// produces one warning per file opening, not one per line.
    failing: bool,
}

impl Writer {
    fn run(&mut self, receiver: &Receiver<String>) {
        // Until every sender is gone: wait for a line, let more gather, write the batch.
        while let Ok(first) = receiver.recv() {
            std::thread::sleep(LINGER);
            self.write(&first);
            let disconnected = loop {
                match receiver.try_recv() {
                    Ok(line) => self.write(&line),
                    Err(TryRecvError::Empty) => break false,
                    Err(TryRecvError::Disconnected) => break true,
                }
            };
            self.flush();
            if disconnected {
                return;
            }
        }
        self.flush();
    }

    fn write(&mut self, line: &str) {
        if self.reopen.load(Ordering::Relaxed) && self.reopen.swap(false, Ordering::Acquire) {
            self.reopen_file();
        }
        if let Err(err) = self.sink.write_all(line.as_bytes()) {
            self.report("writing", &err);
        }
    }

    fn flush(&mut self) {
        if let Err(err) = self.sink.flush() {
            self.report("flushing", &err);
        }
    }

    /// Opens the path afresh (logrotate moved the old file away); on failure keeps writing to
    /// the old file rather than losing lines.
    fn reopen_file(&mut self) {
        match open_sink(&self.target) {
            Ok(sink) => {
                self.flush();
                self.sink = sink;
                self.failing = false;
            }
            Err(err) => tracing::warn!(error = %err, "access log: reopen failed; still writing to the old file"),
        }
    }

    fn report(&mut self, action: &str, err: &io::Error) {
        if !self.failing {
            self.failing = true;
            tracing::warn!(
                target_file = %TargetName(&self.target),
                error = %err,
                "access log: {action} failed; lines are being lost (reported once until the next reopen)"
            );
        }
    }
}

/// Displays a target as its path, or `stdout`.
struct TargetName<'a>(&'a Target);

impl fmt::Display for TargetName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Target::Stdout => f.write_str("stdout"),
            Target::File(path) => path.display().fmt(f),
        }
    }
}

fn open_sink(target: &Target) -> io::Result<BufWriter<Box<dyn Write + Send>>> {
    let sink: Box<dyn Write + Send> = match target {
        Target::Stdout => Box::new(io::stdout()),
        Target::File(path) => Box::new(open_file(path)?),
    };
    Ok(BufWriter::with_capacity(WRITE_BUFFER, sink))
}

fn open_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|err| io::Error::new(err.kind(), format!("access log {}: {err}", path.display())))
}

/// One JSON object and its newline; keys in a fixed order, absent options omitted.
fn format_line(entry: &Entry<'_>) -> String {
    let mut out = String::with_capacity(LINE_CAPACITY);
    out.push_str("{\"time\":\"");
    push_time(&mut out, entry.time);
    out.push_str("\",\"request_id\":");
    text::push_json_string(&mut out, entry.request_id);
    push_opt_str(&mut out, "trace_id", entry.trace_id);
    // Addresses are digits, hex, `.` and `:`: nothing to escape.
    out.push_str(",\"client_ip\":\"");
    text::push_ip(&mut out, entry.client_ip);
    out.push_str("\",\"method\":");
    text::push_json_string(&mut out, entry.method.as_str());
    push_opt_str(&mut out, "host", entry.host);
    out.push_str(",\"path\":");
    text::push_json_string(&mut out, entry.path.split_once('?').map_or(entry.path, |(path, _query)| path));
    out.push_str(",\"protocol\":\"");
    push_version(&mut out, entry.protocol);
    out.push_str(if entry.tls { "\",\"tls\":true,\"status\":" } else { "\",\"tls\":false,\"status\":" });
    text::push_u64(&mut out, u64::from(entry.status));
    push_opt_str(&mut out, "route", entry.route);
    push_opt_str(&mut out, "upstream", entry.upstream);
    push_opt_str(&mut out, "endpoint", entry.endpoint);
    push_opt_str(&mut out, "error", entry.error);
    out.push_str(",\"duration_ms\":");
    push_millis(&mut out, entry.duration);
    if let Some(upstream) = entry.upstream_duration {
        out.push_str(",\"upstream_ms\":");
        push_millis(&mut out, upstream);
    }
    out.push_str(",\"bytes_sent\":");
    text::push_u64(&mut out, entry.bytes_sent);
    out.push_str(if entry.completed { ",\"completed\":true" } else { ",\"completed\":false" });
    push_opt_str(&mut out, "user_agent", entry.user_agent);
    out.push_str("}\n");
    out
}

/// `2026-11-21T17:45:05.123Z`, the same text as [`timefmt::rfc3339`] without its allocation.
fn push_time(out: &mut String, time: SystemTime) {
    let since_epoch = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since_epoch.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = timefmt::civil_from_days(i64::try_from(days).unwrap_or(i64::MAX / 2));
    let year = u64::try_from(year).unwrap_or(0);
    for (value, width, then) in [
        (year, 4, '-'),
        (u64::from(month), 2, '-'),
        (u64::from(day), 2, 'T'),
        (rem / 3_600, 2, ':'),
        (rem % 3_600 / 60, 2, ':'),
        (rem % 60, 2, '.'),
        (u64::from(since_epoch.subsec_millis()), 3, 'Z'),
    ] {
        text::push_padded(out, value, width);
        out.push(then);
    }
}

/// Milliseconds with exactly three decimals (truncated to the microsecond), from integers so
/// no float rounding shows (`1.000`, not `1.0` or `0.9999999`).
fn push_millis(out: &mut String, duration: Duration) {
    let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
    text::push_u64(out, micros / 1_000);
    out.push('.');
    text::push_padded(out, micros % 1_000, 3);
}

fn push_version(out: &mut String, version: Version) {
    let text = match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_11 => "HTTP/1.1",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        // `Version` is non-exhaustive; its Debug text is the same `HTTP/x.y` form.
        other => {
            let _ = write!(out, "{other:?}");
            return;
        }
    };
    out.push_str(text);
}

fn push_opt_str(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        out.push_str(",\"");
        out.push_str(key);
        out.push_str("\":");
        text::push_json_string(out, value);
    }
}

#[cfg(test)]
mod tests;
