//! The response body the gateway sends: an upstream's streamed body or a small local one.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::record::Record;
use crate::stall::StallTimer;
use crate::upstream::{InFlight, Lease};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Streams an upstream body through untouched, holding the endpoint's in-flight slot until it ends,
/// and runs the record phase (metrics, access log) when it is dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _in_flight: Option<InFlight>,
    /// The connection the body arrives on: driven as the body is read, pooled once it has ended.
    lease: Option<Lease>,
    /// Dropped with the body: that records the request (metrics, access log).
    record: Option<Record>,
}

#[derive(Debug)]
enum Kind {
    /// The timer limits how long the upstream may keep the body waiting for its next piece.
    Upstream(Incoming, StallTimer),
    Full(Option<Bytes>),
    /// The `101` of an upgrade: no body; the record goes to the tunnel, which keeps it (and its
    /// log line) until the tunnel closes.
    Tunnel(Option<tokio::sync::oneshot::Sender<Record>>),
}

/// The upstream left the response body waiting longer than the route's timeout.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent nothing more of the response body for {0:?}")]
pub struct BodyTimeout(Duration);

impl ProxyBody {
    /// `stall_limit`: the longest the upstream may keep the body waiting for its next piece.
    pub fn upstream(body: Incoming, in_flight: InFlight, lease: Option<Lease>, stall_limit: Duration) -> ProxyBody {
        let mut body = ProxyBody::new(Kind::Upstream(body, StallTimer::new(stall_limit)), Some(in_flight));
        body.lease = lease;
        body.release_if_ended();
        body
    }

    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::new(Kind::Full(Some(bytes)), None)
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::new(Kind::Full(None), None)
    }

    /// The body of a `101`: its record is handed to the tunnel through `record_to`.
    pub(super) fn tunnel(record_to: tokio::sync::oneshot::Sender<Record>) -> ProxyBody {
        ProxyBody::new(Kind::Tunnel(Some(record_to)), None)
    }

    fn new(kind: Kind, in_flight: Option<InFlight>) -> ProxyBody {
        ProxyBody { kind, _in_flight: in_flight, lease: None, record: None }
    }

    /// Once the body has been read to the end (hyper polls no further then), its connection can
    /// take the next request.
    fn release_if_ended(&mut self) {
        if self.kind.is_end_stream() {
            self.release();
        }
    }

    fn release(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release();
        }
    }

    /// Records the request when this body is dropped; an empty body has ended already.
    pub(super) fn record(&mut self, mut record: Record) {
        if let Kind::Tunnel(record_to) = &mut self.kind {
            record.count_now();
            let Some(tunnel) = record_to.take() else { return };
            // The tunnel is gone already: the line is written here, with the body.
            if let Err(record) = tunnel.send(record) {
                self.record = Some(record);
            }
            return;
        }
        if self.is_end_stream() {
            record.completed();
        }
        self.record = Some(record);
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(body, stall) => match poll_upstream(body, this.lease.as_mut(), cx) {
                Poll::Pending => match stall.poll_expired(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(stall.limit()).into()))),
                    Poll::Pending => Poll::Pending,
                },
                Poll::Ready(polled) => {
                    stall.progressed();
                    Poll::Ready(polled.map(|frame| frame.map_err(BoxError::from)))
                }
            },
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Tunnel(_) => Poll::Ready(None),
        };
        if let Some(record) = &mut this.record {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    record.sent(frame.data_ref().map_or(0, |data| data.remaining() as u64));
                    // hyper stops polling once `is_end_stream` says so, and after trailers, which
                    // only ever come last.
                    if this.kind.is_end_stream() || frame.is_trailers() {
                        record.completed();
                    }
                }
                Poll::Ready(None) => record.completed(),
                Poll::Ready(Some(Err(error))) if error.is::<BodyTimeout>() => record.upstream_body_timed_out(),
                Poll::Ready(Some(Err(error))) => record.upstream_body_broke(error.as_ref()),
                Poll::Pending => {}
            }
        }
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) => this.release_if_ended(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.kind.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body, _) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Tunnel(_) => SizeHint::with_exact(0),
        }
    }
}

/// The upstream body's next piece, through the connection it arrives on while that is held.
fn poll_upstream(
    body: &mut Incoming,
    lease: Option<&mut Lease>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
    match lease {
        Some(lease) => lease.poll_body(body, cx),
        None => Pin::new(body).poll_frame(cx),
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Upstream(body, _) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Tunnel(_) => true,
        }
    }
}
