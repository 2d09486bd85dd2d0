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
use hyper::upgrade::OnUpgrade;
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
        let (to_client, closed_cleanly) = match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                // Either side alone sees every byte; both are limited so that the tunnel is still
                // timed once one side has ended its half and is no longer read.
                let mut client = IdleLimit::new(TokioIo::new(client), idle_timeout);
                let mut upstream = IdleLimit::new(TokioIo::new(upstream), idle_timeout);
                let copied = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                // Counted as written, not from the copy's result: a tunnel that ends in an error
                // (a reset, `idle_timeout`) carried bytes too.
                let to_client = client.written;
                match copied {
                    Ok((to_upstream, _)) => {
                        tracing::debug!(request_id, to_upstream, to_client, "upgraded connection closed");
                        (to_client, true)
                    }
                    Err(error) => {
                        tracing::debug!(request_id, %error, to_client, "upgraded connection ended with an error");
                        (to_client, false)
                    }
                }
            }
            Err(error) => {
                tracing::debug!(request_id, %error, "protocol upgrade failed");
                (0, false)
            }
        };
        if let Ok(mut record) = record.await {
            record.sent(to_client);
            if closed_cleanly {
                record.completed();
            }
        }
    });
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
