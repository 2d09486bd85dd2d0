//! The body the gateway sends upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{LengthLimitError, Limited};
use hyper::body::Incoming;
use tokio::time::Instant;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The client's body, streamed and capped at the route's limit; or none, for a request sent again
/// (only requests without a body are).
#[derive(Debug)]
pub enum UpstreamRequestBody {
    Client { body: Limited<Incoming>, progress: Option<BodyProgress> },
    Empty,
}

/// Failed reading the client's body (it ended early, was reset or was malformed): the client's
/// doing, never the upstream's, so the breaker must not count it.
#[derive(Debug, thiserror::Error)]
#[error("reading the client's request body: {0}")]
pub struct ClientBodyError(#[source] BoxError);

/// Where a body being sent stands: whose wait it is, and when its last piece (or its end) came.
/// The route's timeout counts anew from that moment, as it does between pieces of a response
/// body: an upload that keeps coming is never cut, whatever its length.
#[derive(Debug, Clone)]
pub struct BodyProgress(Arc<Progress>);

#[derive(Debug)]
struct Progress {
    state: AtomicU8,
    timeout: Duration,
    started: Instant,
    /// Since `started`, in nanoseconds.
    last_piece: AtomicU64,
    /// Where reporting the end stands, for HTTP/2 (see [`HOLDING`]).
    end: AtomicU8,
}

const SENDING: u8 = 0;
const WAITING_FOR_CLIENT: u8 = 1;
const ENDED: u8 = 2;

/// `Progress::end` over HTTP/1.1: the end is reported as it comes.
const NOT_HELD: u8 = 0;
/// `Progress::end` over HTTP/2, before the end came. hyper ends a body that the client reset with
/// NO_ERROR as if it were complete (hyperium/hyper#3681), so its end is held back until the task
/// is next polled from outside: in between, hyper's server looks for a reset of the stream and
/// drops this request if it finds one, so a cut-off upload never reaches the upstream (nor counts
/// against it) as a whole one. Not a plain wake-up: the upstream connection's driver would repeat
/// this poll at once.
const HOLDING: u8 = 1;
/// The end came and is held back.
const HELD: u8 = 2;
/// The task was polled again: the end may be reported.
const RELEASED: u8 = 3;

impl BodyProgress {
    fn new(timeout: Duration, http2: bool) -> BodyProgress {
        let started = Instant::now();
        BodyProgress(Arc::new(Progress {
            end: AtomicU8::new(if http2 { HOLDING } else { NOT_HELD }),
            state: AtomicU8::new(SENDING),
            timeout,
            started,
            last_piece: AtomicU64::new(0),
        }))
    }

    /// True when the body has not ended and the last poll waited for the client to send more
    /// (not for the upstream to take more).
    pub fn waiting_for_client(&self) -> bool {
        self.0.state.load(Ordering::Relaxed) == WAITING_FOR_CLIENT
    }

    /// When the response head is due: the route's timeout after the body's last piece or end.
    pub fn deadline(&self) -> Instant {
        self.0.started + Duration::from_nanos(self.0.last_piece.load(Ordering::Relaxed)) + self.0.timeout
    }

    fn set(&self, state: u8) {
        self.0.state.store(state, Ordering::Relaxed);
        if state != WAITING_FOR_CLIENT {
            let since = u64::try_from(self.0.started.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.0.last_piece.store(since, Ordering::Relaxed);
        }
    }
}

impl UpstreamRequestBody {
    /// `timeout`: the route's, which counts anew from each piece of the body; `http2`: whether
    /// the client sent it over HTTP/2.
    pub fn capped(body: Incoming, limit: u64, timeout: Duration, http2: bool) -> UpstreamRequestBody {
        // Requests without a body (most) skip the bookkeeping and its allocation.
        let progress = (!body.is_end_stream()).then(|| BodyProgress::new(timeout, http2));
        UpstreamRequestBody::Client { body: Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX)), progress }
    }

    pub fn progress(&self) -> Option<&BodyProgress> {
        match self {
            UpstreamRequestBody::Client { progress, .. } => progress.as_ref(),
            UpstreamRequestBody::Empty => None,
        }
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
        let (body, progress) = match self.get_mut() {
            UpstreamRequestBody::Client { body, progress } => (body, progress),
            UpstreamRequestBody::Empty => return Poll::Ready(None),
        };
        match progress.as_ref().map(|p| p.0.end.load(Ordering::Relaxed)) {
            Some(HELD) => return Poll::Pending,
            Some(RELEASED) => return Poll::Ready(None),
            _ => {}
        }
        let polled = match Pin::new(&mut *body).poll_frame(cx) {
            // Trailers end the body here, unsent: nothing checks them, so they could tell an
            // upstream who the caller is (an identity header) as well as any header could.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() => Poll::Ready(None),
            polled => polled,
        };
        if let Some(progress) = progress {
            progress.set(match &polled {
                Poll::Pending => WAITING_FOR_CLIENT,
                Poll::Ready(None) => ENDED,
                Poll::Ready(Some(_)) if body.is_end_stream() => ENDED,
                Poll::Ready(Some(_)) => SENDING,
            });
        }
        if let (Poll::Ready(None), Some(progress)) = (&polled, progress.as_ref()) {
            if progress.0.end.load(Ordering::Relaxed) == HOLDING {
                progress.0.end.store(HELD, Ordering::Relaxed);
                let (progress, waker) = (progress.clone(), cx.waker().clone());
                // Runs once this task has returned from its poll (each worker runs one thread).
                tokio::spawn(async move {
                    progress.0.end.store(RELEASED, Ordering::Relaxed);
                    waker.wake();
                });
                return Poll::Pending;
            }
        }
        Poll::Ready(match ready!(polled) {
            Some(Err(error)) if !error.is::<LengthLimitError>() => Some(Err(Box::new(ClientBodyError(error)))),
            other => other,
        })
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamRequestBody::Client { body, progress } => {
                match progress.as_ref().map(|p| p.0.end.load(Ordering::Relaxed)) {
                    Some(HOLDING | HELD) => false,
                    Some(RELEASED) => true,
                    _ => body.is_end_stream(),
                }
            }
            UpstreamRequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamRequestBody::Client { body, .. } => body.size_hint(),
            UpstreamRequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}
