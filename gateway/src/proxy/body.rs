//! The response body the gateway sends: an upstream's streamed body or a small local one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::record::Record;
use crate::upstream::{InFlight, Lease};

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
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: Incoming, in_flight: InFlight, lease: Option<Lease>) -> ProxyBody {
        let mut body = ProxyBody::new(Kind::Upstream(body), Some(in_flight));
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
    pub(super) fn recorded(mut self, mut record: Record) -> ProxyBody {
        if self.is_end_stream() {
            record.completed();
        }
        self.record = Some(record);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        if let Some(lease) = &mut this.lease {
            lease.poll_drive(cx);
        }
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        if let Some(record) = &mut this.record {
            match &polled {
                Poll::Ready(Some(Ok(frame))) => {
                    record.sent(frame.data_ref().map_or(0, |data| data.remaining() as u64));
                    // hyper stops polling once `is_end_stream` says so.
                    if this.kind.is_end_stream() {
                        record.completed();
                    }
                }
                Poll::Ready(None) => record.completed(),
                _ => {}
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
            Kind::Upstream(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Kind {
    fn is_end_stream(&self) -> bool {
        match self {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }
}
