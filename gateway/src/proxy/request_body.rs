//! The body the gateway sends upstream.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Limited;
use hyper::body::Incoming;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body, streamed and capped at the route's limit; or none, for a request sent again
/// (only requests without a body are).
#[derive(Debug)]
pub enum UpstreamRequestBody {
    Client(Limited<Incoming>),
    Empty,
}

impl UpstreamRequestBody {
    pub fn capped(body: Incoming, limit: u64) -> UpstreamRequestBody {
        UpstreamRequestBody::Client(Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)))
    }
}

/// The same request with no body: what goes again when the first attempt provably did no harm.
/// Only called for requests that have none.
pub fn copy_without_body(request: &Request<UpstreamRequestBody>) -> Request<UpstreamRequestBody> {
    let mut copy = Request::new(UpstreamRequestBody::Empty);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    copy
}

impl Body for UpstreamRequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamRequestBody::Client(body) => Pin::new(body).poll_frame(cx),
            UpstreamRequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamRequestBody::Client(body) => body.is_end_stream(),
            UpstreamRequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamRequestBody::Client(body) => body.size_hint(),
            UpstreamRequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
