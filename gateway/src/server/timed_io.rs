//! Client connection timeouts hyper does not give us in the form we need.
//!
//! hyper's own `header_read_timeout` also runs while a keep-alive connection is idle and closes
//! without a response. Here the two are separate: a connection with nothing in flight and no bytes
//! waiting is closed after `idle_timeout`; once a new request head has started to arrive it must be
//! complete within `header_read_timeout`, or the client gets `408 Request Timeout` and the
//! connection is closed (slow-loris protection). A client that takes nothing of what is written
//! to it for `idle_timeout` is disconnected too: otherwise a client that stops reading a
//! response would hold its upstream connection for ever. On HTTP/2 that client may keep the
//! socket busy (PINGs) while it keeps a stream's window shut, so the responses themselves are
//! watched: one left waiting on the client for `idle_timeout` closes the connection. An idle
//! HTTP/2 connection is asked to close gracefully (GOAWAY) before its socket is.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use self::control_frames::ControlFlood;
use self::control_frames::ControlFrames;
use super::connections::Open;
use crate::stall::StallTimer;

mod control_frames;

/// A request head that did not arrive within `header_read_timeout` (answered 408).
#[derive(Debug, thiserror::Error)]
#[error("request head not received in time")]
pub(super) struct HeadTimedOut;

/// How long an idle HTTP/2 connection asked to close has to answer the PING after the GOAWAY, at
/// most: a round trip, with room for slow networks.
const GOAWAY_GRACE: Duration = Duration::from_secs(5);

const CLIENT_TOOK_NOTHING: &str = "the client took nothing of the response for idle_timeout";

const REQUEST_TIMEOUT_RESPONSE: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\nconnection: close\r\ncontent-length: 0\r\n\r\n";

/// Requests in flight on one connection, shared by the connection's IO and its service.
#[derive(Debug)]
pub(crate) struct Activity {
    in_flight: AtomicU32,
    /// Requests started so far: tells a deadline armed in an earlier idle period from a current one.
    started: AtomicU64,
    /// When the last request in flight ended: the connection has been idle since.
    ended_at: Mutex<Option<Instant>>,
    /// When the connection was accepted: idle since then until a request ends.
    accepted_at: Instant,
    /// Ticks of the busy timer (at least `idle_timeout` apart) so far.
    ticks: AtomicU32,
    /// Response bodies that handed over a piece and have not been asked for the next one since,
    /// by the tick (mod 3) they began waiting in. One counted two ticks ago has waited at least
    /// `idle_timeout`: nothing of its response was taken for that long.
    waiting_on_client: [AtomicU32; 3],
    /// The IO asks the connection's task to close gracefully (see [`TimedIo::poll_deadline`]), or
    /// a client resets too many streams early (see [`Activity::early_reset`]).
    close_asked: AtomicBool,
    /// HTTP/2 streams the client reset early so far.
    early_resets: AtomicU64,
    /// The connection was closed for a flood of HTTP/2 control frames (see `control_frames`).
    control_flood: AtomicBool,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            in_flight: AtomicU32::new(0),
            started: AtomicU64::new(0),
            ended_at: Mutex::new(None),
            accepted_at: Instant::now(),
            ticks: AtomicU32::new(0),
            waiting_on_client: Default::default(),
            close_asked: AtomicBool::new(false),
            early_resets: AtomicU64::new(0),
            control_flood: AtomicBool::new(false),
        }
    }
}

impl Activity {
    /// Marks a request as in flight until the guard is dropped (when its response body is done).
    pub(crate) fn start_request(self: &Arc<Self>) -> RequestGuard {
        self.started.fetch_add(1, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestGuard(self.clone())
    }

    /// Whether the IO has asked the connection to close gracefully.
    /// Whether the IO closed the connection for a flood of HTTP/2 control frames.
    pub(crate) fn control_flood(&self) -> bool {
        self.control_flood.load(Ordering::Relaxed)
    }

    pub(crate) fn close_asked(&self) -> bool {
        self.close_asked.load(Ordering::Relaxed)
    }

    /// Counts an HTTP/2 stream its client reset early. True when that makes `at_least` such resets
    /// and half or more of the connection's streams, the first time: the connection is then asked
    /// to close, which it does at its next wake (the client's next frame, or a response).
    pub(crate) fn early_reset(&self, at_least: u64) -> bool {
        let early = self.early_resets.fetch_add(1, Ordering::Relaxed) + 1;
        early >= at_least && early * 2 >= self.started.load(Ordering::Relaxed) && self.ask_to_close()
    }

    /// Asks for a graceful close; false if that was asked before.
    fn ask_to_close(&self) -> bool {
        !self.close_asked.swap(true, Ordering::Relaxed)
    }

    fn state(&self) -> (bool, u64) {
        (self.in_flight.load(Ordering::Acquire) > 0, self.started.load(Ordering::Relaxed))
    }

    fn ended_at(&self) -> Option<Instant> {
        *self.ended_at.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Moves the busy timer on one tick; true when a response body has waited on the client
    /// since two ticks ago.
    fn tick(&self) -> bool {
        let tick = self.ticks.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        self.waiting_on_client[(tick as usize + 1) % 3].load(Ordering::Relaxed) > 0
    }
}

#[derive(Debug)]
pub(crate) struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    /// The response body handed over a piece: until the next is asked for, it waits on the
    /// client (on HTTP/2, on the window the client opens). Returns what to end the wait with.
    pub(crate) fn waiting_on_client(&self) -> ClientWait {
        let slot = self.0.ticks.load(Ordering::Relaxed) as usize % 3;
        self.0.waiting_on_client[slot].fetch_add(1, Ordering::Relaxed);
        ClientWait { slot }
    }

    /// The body was asked for its next piece, or dropped.
    pub(crate) fn client_took(&self, wait: ClientWait) {
        self.0.waiting_on_client[wait.slot].fetch_sub(1, Ordering::Relaxed);
    }

    /// The request switched the connection to another protocol (a WebSocket): no HTTP request
    /// follows, so the connection stays busy for good and neither the idle nor the header-read
    /// timeout applies to what the client sends next. The tunnel times itself.
    pub(crate) fn upgraded(&self) {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.ended_at.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }
}

/// A response body's wait on its client, begun by [`RequestGuard::waiting_on_client`].
#[derive(Debug)]
pub(crate) struct ClientWait {
    slot: usize,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub header_read: Duration,
    pub idle: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Unknown,
    Http1,
    /// HTTP/2 frames are not request heads: only the idle timeout applies.
    Http2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    Idle,
    Head,
}

/// An IO stream that enforces the idle and header-read timeouts of one client connection.
#[derive(Debug)]
pub(crate) struct TimedIo<S> {
    inner: S,
    activity: Arc<Activity>,
    timeouts: Timeouts,
    protocol: Protocol,
    /// What is being waited for, the `started` count when that wait began, and its deadline.
    armed: Option<(Wait, u64)>,
    deadline: Instant,
    /// Registered once and then mostly left alone: moved earlier only when a deadline needs it,
    /// moved on when it fires before `deadline` or while a request is in flight. In the common case
    /// a request's head arrives in one read and the timer wheel is not touched.
    timer: Pin<Box<Sleep>>,
    /// Runs while a write waits for the client to take bytes.
    write_stall: StallTimer,
    /// When the busy timer last ticked (see [`Activity::tick`]).
    ticked_at: Instant,
    /// Once an idle HTTP/2 connection was asked to close: no idle wait ends before this, so
    /// what the client sends meanwhile (the PING's answer, a request that crossed the GOAWAY)
    /// does not cut the grace short.
    grace_until: Option<Instant>,
    /// The connection's place under `server.max_connections`: freed when the socket closes, with
    /// hyper's connection or, after an upgrade, with the tunnel that took the socket over.
    open: Option<Open>,
    /// HTTP/2 only: what the client's frames cost without being requests.
    control_frames: Option<ControlFrames>,
}

impl<S> TimedIo<S> {
    pub(crate) fn new(inner: S, activity: Arc<Activity>, timeouts: Timeouts) -> TimedIo<S> {
        TimedIo {
            inner,
            activity,
            timeouts,
            protocol: Protocol::Unknown,
            armed: None,
            deadline: Instant::now() + timeouts.idle,
            timer: Box::pin(tokio::time::sleep(timeouts.idle)),
            write_stall: StallTimer::new(timeouts.idle),
            ticked_at: Instant::now(),
            grace_until: None,
            open: None,
            control_frames: None,
        }
    }

    /// Holds `open` for as long as the socket lives.
    pub(crate) fn counted(mut self, open: Open) -> TimedIo<S> {
        self.open = Some(open);
        self
    }

    /// Starts waiting for `wait`; the timer itself is registered by `poll_deadline` if needed. An
    /// idle wait counts from the end of the last request, a head's from now.
    fn arm(&mut self, wait: Wait, epoch: u64) {
        self.deadline = match wait {
            // Not from the last bytes read: HTTP/2 PINGs and SETTINGS do not make a connection busy.
            Wait::Idle => {
                let idle_since = self.activity.ended_at().unwrap_or(self.activity.accepted_at);
                (idle_since + self.timeouts.idle).max(self.grace_until.unwrap_or(idle_since))
            }
            Wait::Head => Instant::now() + self.timeouts.header_read,
        };
        self.armed = Some((wait, epoch));
    }

    fn on_bytes_read(&mut self, bytes: &[u8]) -> Result<(), ControlFlood> {
        if self.protocol == Protocol::Unknown {
            // The HTTP/2 connection preface starts "PRI * HTTP/2.0"; no HTTP/1 method is "PRI".
            self.protocol = if bytes.starts_with(b"PRI ") { Protocol::Http2 } else { Protocol::Http1 };
            if self.protocol == Protocol::Http2 {
                self.control_frames = Some(ControlFrames::new());
            }
        }
        if let Some(frames) = &mut self.control_frames {
            frames.read(bytes).inspect_err(|_| self.activity.control_flood.store(true, Ordering::Relaxed))?;
        }
        let (busy, epoch) = self.activity.state();
        if busy {
            self.armed = None;
            return Ok(());
        }
        match self.protocol {
            Protocol::Http1 if self.armed != Some((Wait::Head, epoch)) => self.arm(Wait::Head, epoch),
            Protocol::Http1 => {}
            Protocol::Http2 | Protocol::Unknown => self.arm(Wait::Idle, epoch),
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TimedIo<S> {
    /// Called when the socket has nothing to read: has the current wait run out?
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let (busy, epoch) = self.activity.state();
        if busy {
            self.armed = None;
            return self.poll_while_busy(cx);
        }
        let wait = match self.armed {
            Some((wait, armed_at)) if armed_at == epoch => wait,
            _ => {
                self.arm(Wait::Idle, epoch);
                Wait::Idle
            }
        };
        if self.timer.deadline() > self.deadline {
            self.timer.as_mut().reset(self.deadline);
        }
        loop {
            ready!(self.timer.as_mut().poll(cx));
            let now = Instant::now();
            if now < self.deadline {
                // Fired for an earlier wait: sleep on until the current deadline.
                self.timer.as_mut().reset(self.deadline);
            } else if wait == Wait::Idle && self.protocol == Protocol::Http2 && self.activity.ask_to_close() {
                // The connection's task sees the ask once this read returns, and hyper sends GOAWAY
                // and a PING, closing when the PING is answered. A client that does not answer is
                // closed when the grace ends.
                self.deadline = now + GOAWAY_GRACE.min(self.timeouts.idle);
                self.grace_until = Some(self.deadline);
                self.timer.as_mut().reset(self.deadline);
            } else {
                break;
            }
        }
        match wait {
            // End of stream: hyper closes an idle connection quietly.
            Wait::Idle => Poll::Ready(Ok(())),
            Wait::Head => {
                // Best effort: the socket buffer is empty on a stalled connection, so this rarely waits.
                let _ = Pin::new(&mut self.inner).poll_write(cx, REQUEST_TIMEOUT_RESPONSE);
                Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, HeadTimedOut)))
            }
        }
    }

    /// Nothing is timed while a request is in flight, but the timer stays registered, firing at
    /// most every `idle_timeout`: hyper may not read again after a response ends, and waking this
    /// reader when the last request ends would cost every request one more poll of the
    /// connection's task. So the timer is what brings the reader back to start the idle wait,
    /// which counts from that end. Its ticks also find a response left waiting on the client
    /// (HTTP/2 reads all the time, so they come; an HTTP/1.1 write that waits has its own timer).
    fn poll_while_busy(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.timer.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            self.timer.as_mut().reset(now + self.timeouts.idle);
            // The timer may have been set for an earlier idle wait: ticks stay `idle_timeout` apart.
            if now >= self.ticked_at + self.timeouts.idle {
                self.ticked_at = now;
                if self.activity.tick() {
                    return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, CLIENT_TOOK_NOTHING)));
                }
            }
        }
        Poll::Pending
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TimedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let read = &buf.filled()[before..];
                if !read.is_empty() {
                    this.on_bytes_read(read).map_err(io::Error::other)?;
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => this.poll_deadline(cx),
        }
    }
}

impl<S> TimedIo<S> {
    /// A write (or flush) that would wait fails once the client has taken nothing for
    /// `idle_timeout`; hyper then closes the connection.
    fn watch_write<T>(&mut self, cx: &mut Context<'_>, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => match self.write_stall.poll_expired(cx) {
                Poll::Ready(()) => Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, CLIENT_TOOK_NOTHING))),
                Poll::Pending => Poll::Pending,
            },
            ready => {
                self.write_stall.progressed();
                ready
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TimedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch_write(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch_write(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
