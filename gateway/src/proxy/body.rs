//! The response body the gateway sends: an upstream's streamed body or a small local one.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;

use crate::upstream::InFlight;

/// Streams an upstream body through untouched, holding the endpoint's in-flight slot until it ends.
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _in_flight: Option<InFlight>,
}

#[derive(Debug)]
enum Kind {
    Upstream(Incoming),
    Full(Option<Bytes>),
}

impl ProxyBody {
    pub fn upstream(body: Incoming, in_flight: InFlight) -> ProxyBody {
        ProxyBody { kind: Kind::Upstream(body), _in_flight: Some(in_flight) }
    }

    pub fn full(bytes: Bytes) -> ProxyBody {
        ProxyBody { kind: Kind::Full(Some(bytes)), _in_flight: None }
    }

    pub fn empty() -> ProxyBody {
        ProxyBody { kind: Kind::Full(None), _in_flight: None }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match &mut self.get_mut().kind {
            Kind::Upstream(body) => Pin::new(body).poll_frame(cx),
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
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
