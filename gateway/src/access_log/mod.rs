//! The JSON access log: one line per request, buffered without blocking and written by one thread.
//!
//! The request path formats its line straight into a buffer of its worker's own (a mutex no other
//! worker takes), with no allocation or hand-off per line. A dedicated writer thread is woken by
//! the first line into an empty buffer, lets lines gather for [`LINGER`], then takes every
//! buffer whole and writes and flushes them. A quiet gateway's lines appear within `LINGER`; a
//! busy one writes once per batch, not once per line. A full buffer drops the line and counts it:
//! a slow disk never slows a request. Within a batch, lines are grouped by worker, so lines of
//! requests that ended a few milliseconds apart on different workers may swap places.
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
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::{Method, Version};

use crate::{text, timefmt, worker};

/// Bytes of lines the buffers hold together before new lines are dropped (about 10,000 typical
/// lines), split between the workers' buffers, each given at least [`MIN_BUFFER_BYTES`].
const QUEUE_BYTES: usize = 4 * 1024 * 1024;
const MIN_BUFFER_BYTES: usize = 256 * 1024;
/// The writer's buffer: large enough that a burst is written in few system calls.
const WRITE_BUFFER: usize = 64 * 1024;
/// How long the writer lets lines gather after the first of a batch arrives. Only the first line
/// into an empty buffer wakes the writer, which is what keeps the log's cost per request low.
const LINGER: Duration = Duration::from_millis(10);
/// How long [`finish`] waits at exit for writers to write out what is queued. A log on a pipe
/// nobody reads (the stdout of a stalled log shipper) would otherwise hold the process forever.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Where lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File(PathBuf),
}

/// A running access log: the workers' buffers and one writer thread. Cloning shares it.
///
/// Dropping the last clone closes the log and returns at once; the writer thread writes and
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
    queue: Arc<Queue>,
    dropped: AtomicU64,
    reopen: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
}

/// The lines waiting for the writer.
struct Queue {
    /// One per worker ([`worker::index`]), so workers never wait for each other.
    buffers: Box<[Mutex<String>]>,
    /// Bytes one buffer may hold; past it lines are dropped.
    buffer_limit: usize,
    /// A line went into an empty buffer since the writer last took the buffers.
    pending: AtomicBool,
    /// Every handle is gone: the writer takes the buffers once more and ends.
    closed: AtomicBool,
}

impl Queue {
    fn buffer(&self) -> MutexGuard<'_, String> {
        lock(&self.buffers[worker::index() % self.buffers.len()])
    }
}

/// A poisoned buffer is still whole lines: formatting one never panics halfway.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
        let buffers = worker::count();
        Self::start(target, buffers, (QUEUE_BYTES / buffers).max(MIN_BUFFER_BYTES), None)
    }

    /// `gate`: tests hold the writer back until they send on (or drop) its sender.
    fn start(
        target: &Target,
        buffers: usize,
        buffer_limit: usize,
        gate: Option<Receiver<()>>,
    ) -> io::Result<AccessLog> {
        let sink = open_sink(target)?;
        let queue = Arc::new(Queue {
            buffers: (0..buffers.max(1)).map(|_| Mutex::default()).collect(),
            buffer_limit,
            pending: AtomicBool::new(false),
            closed: AtomicBool::new(false),
        });
        let reopen = Arc::new(AtomicBool::new(false));
        let mut writer = Writer { target: target.clone(), sink, reopen: reopen.clone(), failing: false };
        let handle = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn({
                let queue = queue.clone();
                move || {
                    if let Some(gate) = gate {
                        // Either a message or a disconnect opens the gate.
                        let _ = gate.recv();
                    }
                    writer.run(&queue);
                }
            })
            .map_err(|err| io::Error::new(err.kind(), format!("starting the access log writer thread: {err}")))?;
        Ok(AccessLog {
            shared: Arc::new(Shared {
                target: target.clone(),
                queue,
                dropped: AtomicU64::new(0),
                reopen,
                writer: Some(handle),
            }),
        })
    }

    pub fn target(&self) -> &Target {
        &self.shared.target
    }

    /// Formats one line into the calling worker's buffer without blocking (the request path calls
    /// this). When the buffer is full (the writer cannot keep up) the line is dropped and counted,
    /// never blocking a request.
    pub fn log(&self, entry: &Entry<'_>) {
        let queue = &self.shared.queue;
        let mut buffer = queue.buffer();
        if buffer.len() >= queue.buffer_limit {
            drop(buffer);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            crate::metrics::global().access_log_line_dropped();
            return;
        }
        let first = buffer.is_empty();
        push_line(&mut buffer, entry);
        drop(buffer);
        // Only the first line of a batch wakes the writer; it takes every buffer when it runs.
        if first && !queue.pending.swap(true, Ordering::AcqRel) {
            if let Some(writer) = &self.shared.writer {
                writer.thread().unpark();
            }
        }
    }

    /// Lines dropped so far because a buffer was full.
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
        // The writer takes the buffers once more, flushes and returns; it does so on its own.
        self.queue.closed.store(true, Ordering::Release);
        if let Some(writer) = self.writer.take() {
            writer.thread().unpark();
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
    lock(&CLOSING)
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
    fn run(&mut self, queue: &Queue) {
        let mut batch = String::new();
        loop {
            while !queue.pending.load(Ordering::Acquire) && !queue.closed.load(Ordering::Acquire) {
                std::thread::park();
            }
            let closed = queue.closed.load(Ordering::Acquire);
            if !closed {
                std::thread::sleep(LINGER);
            }
            // Cleared before the buffers are taken: a line that lands in one already taken wakes
            // the writer again, and one that lands in one not yet taken is taken with it.
            queue.pending.store(false, Ordering::Release);
            if self.reopen.load(Ordering::Relaxed) && self.reopen.swap(false, Ordering::Acquire) {
                self.reopen_file();
            }
            for buffer in &queue.buffers {
                std::mem::swap(&mut *lock(buffer), &mut batch);
                if let Err(err) = self.sink.write_all(batch.as_bytes()) {
                    self.report("writing", &err);
                }
                batch.clear();
            }
            self.flush();
            if closed {
                return;
            }
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

/// Appends one JSON object and its newline; keys in a fixed order, absent options omitted.
fn push_line(out: &mut String, entry: &Entry<'_>) {
    out.push_str("{\"time\":\"");
    push_time(out, entry.time);
    out.push_str("\",\"request_id\":");
    text::push_json_string(out, entry.request_id);
    push_opt_str(out, ",\"trace_id\":", entry.trace_id);
    // Addresses are digits, hex, `.` and `:`: nothing to escape.
    out.push_str(",\"client_ip\":\"");
    text::push_ip(out, entry.client_ip);
    out.push_str("\",\"method\":");
    text::push_json_string(out, entry.method.as_str());
    push_opt_str(out, ",\"host\":", entry.host);
    out.push_str(",\"path\":");
    text::push_json_string(out, entry.path.split_once('?').map_or(entry.path, |(path, _query)| path));
    out.push_str(",\"protocol\":\"");
    push_version(out, entry.protocol);
    out.push_str(if entry.tls { "\",\"tls\":true,\"status\":" } else { "\",\"tls\":false,\"status\":" });
    text::push_u64(out, u64::from(entry.status));
    push_opt_str(out, ",\"route\":", entry.route);
    push_opt_str(out, ",\"upstream\":", entry.upstream);
    push_opt_str(out, ",\"endpoint\":", entry.endpoint);
    push_opt_str(out, ",\"error\":", entry.error);
    out.push_str(",\"duration_ms\":");
    push_millis(out, entry.duration);
    if let Some(upstream) = entry.upstream_duration {
        out.push_str(",\"upstream_ms\":");
        push_millis(out, upstream);
    }
    out.push_str(",\"bytes_sent\":");
    text::push_u64(out, entry.bytes_sent);
    out.push_str(if entry.completed { ",\"completed\":true" } else { ",\"completed\":false" });
    push_opt_str(out, ",\"user_agent\":", entry.user_agent);
    out.push_str("}\n");
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

/// `key` is the whole `,"name":` that comes before the value.
fn push_opt_str(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(value) = value {
        out.push_str(key);
        text::push_json_string(out, value);
    }
}

#[cfg(test)]
mod tests;
