//! The response body the gateway sends: an upstream's streamed body or a small local one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use super::record::Record;
use crate::upstream::InFlight;

/// Streams an upstream body through untouched, holding the endpoint's in-flight slot until it ends,
/// and runs the record phase (metrics, access log) when it is dropped.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _in_flight: Option<InFlight>,
    record: Option<Record>,
    bytes_sent: u64,
    ended: bool,
}

#[derive(Debug)]
enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: Incoming, in_flight: InFlight) -> ProxyBody {
        ProxyBody::new(Kind::Upstream(body), Some(in_flight))
    }

    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody::new(Kind::Full(Some(bytes)), None)
    }

    pub fn empty() -> ProxyBody {
        ProxyBody::new(Kind::Full(None), None)
    }

    fn new(kind: Kind, in_flight: Option<InFlight>) -> ProxyBody {
        ProxyBody { kind, _in_flight: in_flight, record: None, bytes_sent: 0, ended: false }
    }

    /// Runs `record` when this body is dropped.
    pub(super) fn recorded(mut self, record: Record) -> ProxyBody {
        self.record = Some(record);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = match &mut this.kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                this.bytes_sent += frame.data_ref().map_or(0, |data| data.remaining() as u64);
            }
            Poll::Ready(None) => this.ended = true,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Upstream(body) => body.is_end_stream(),
            Kind::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Upstream(body) => body.size_hint(),
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        if let Some(record) = self.record.take() {
            // hyper stops polling once `is_end_stream` says so, so that counts as ended too.
            let completed = self.ended || self.is_end_stream();
            record.finish(self.bytes_sent, completed);
        }
    }
}
