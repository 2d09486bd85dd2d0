//! HTTP/1.1 protocol upgrades (WebSocket): once both sides switched, bytes are copied both ways.
//!
//! A tunnel is closed once no byte has crossed it either way for the server's `idle_timeout`, as
//! nginx's `proxy_read_timeout` does: a peer that vanished without a FIN would otherwise hold both
//! connections for ever. Clients that stay quiet longer send WebSocket pings.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use http::HeaderValue;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use tokio::sync::oneshot;

use super::record::Record;
use crate::stall::StallTimer;

/// Joins the client's and the upstream's upgraded connections in a background task. The request's
/// record comes through `record` once the `101` is on its way; it is kept until the tunnel closes,
/// so the access log line tells how long it was open and what it carried to the client.
pub(super) fn tunnel(
    client: OnUpgrade,
    upstream: OnUpgrade,
    idle_timeout: Duration,
    request_id: HeaderValue,
    record: oneshot::Receiver<Record>,
) {
    tokio::spawn(async move {
        let request_id = request_id.to_str().unwrap_or("");
        let mut session = Session { record, sides: None, closed: None };
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                // Either side alone sees every byte; both are limited so that the tunnel is still
                // timed once one side has ended its half and is no longer read.
                let client = IdleLimit::new(TokioIo::new(client), idle_timeout);
                let upstream = IdleLimit::new(TokioIo::new(upstream), idle_timeout);
                let (client, upstream) = session.sides.insert((client, upstream));
                let copied = tokio::io::copy_bidirectional(client, upstream).await;
                let to_client = client.written;
                session.closed = Some(match copied {
                    Ok((to_upstream, _)) => {
                        tracing::debug!(request_id, to_upstream, to_client, "upgraded connection closed");
                        true
                    }
                    Err(error) => {
                        tracing::debug!(request_id, %error, to_client, "upgraded connection ended with an error");
                        false
                    }
                });
            }
            Err(error) => {
                tracing::debug!(request_id, %error, "protocol upgrade failed");
                session.closed = Some(false);
            }
        }
    });
}

/// One upgraded connection of a tunnel.
type Side = IdleLimit<TokioIo<Upgraded>>;

/// A tunnel's record and what it carried, recorded when this is dropped: when the tunnel closes,
/// or when the worker's runtime drops the task at shutdown (tunnels are not drained), which
/// would otherwise log the record as it came, with nothing sent.
struct Session {
    record: oneshot::Receiver<Record>,
    /// The client's and the upstream's sides, once both upgraded.
    sides: Option<(Side, Side)>,
    /// Whether the tunnel closed cleanly; `None` while it is open.
    closed: Option<bool>,
}

impl Drop for Session {
    fn drop(&mut self) {
        // Sent before the client's side can upgrade; if it is not here, the body keeps and logs it.
        let Ok(mut record) = self.record.try_recv() else { return };
        // Counted as written, not from the copy's result: a tunnel that ends in an error (a reset,
        // `idle_timeout`, the shutdown) carried bytes too.
        record.sent(self.sides.as_ref().map_or(0, |(client, _)| client.written));
        match self.closed {
            Some(true) => record.completed(),
            Some(false) => {}
            None => record.cut_by_shutdown(),
        }
    }
}

/// One side of a tunnel: every byte either way passes through it, so it can tell when the tunnel
/// has been silent for `limit`. A read waiting that long fails with `TimedOut`; a byte either way
/// starts the wait anew.
struct IdleLimit<T> {
    inner: T,
    silence: StallTimer,
    /// Bytes written to `inner` so far.
    written: u64,
}

impl<T> IdleLimit<T> {
    fn new(inner: T, limit: Duration) -> IdleLimit<T> {
        IdleLimit { inner, silence: StallTimer::new(limit), written: 0 }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleLimit<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Pending => this
                .silence
                .poll_expired(cx)
                .map(|()| Err(io::Error::new(io::ErrorKind::TimedOut, "no byte either way for idle_timeout"))),
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.silence.progressed();
                }
                Poll::Ready(result)
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleLimit<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = ready!(Pin::new(&mut this.inner).poll_write(cx, buf));
        if let Ok(n @ 1..) = written {
            this.silence.progressed();
            this.written += n as u64;
        }
        Poll::Ready(written)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
