//! One client connection: TLS handshake, timeouts, HTTP/1.1 or HTTP/2, and the per-request service.

use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::drain::{self, Draining};
use super::timed_io::{Activity, ClientWait, RequestGuard, TimedIo, Timeouts};
use crate::config;
use crate::proxy::{self, ProxyBody};
use crate::runtime::Runtime;
use crate::throttle::Throttle;

/// The HTTP/1.1 + HTTP/2 server for one connection, with the client-side limits applied.
fn http_server(server: &config::Server) -> auto::Builder<BoxingExecutor> {
    let mut builder = auto::Builder::new(BoxingExecutor);
    builder
        .http1()
        // TimedIo owns the header and idle timeouts (hyper's would close without a 408).
        .header_read_timeout(None)
        // The read buffer bounds the request head: a larger head gets 431.
        .max_buf_size(server.max_header_size.max(config::defaults::MIN_HEADER_SIZE))
        .max_headers(server.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(server.max_header_size).unwrap_or(u32::MAX));
    builder
}

/// Spawns each HTTP/2 stream's task with its future boxed. The future holds the whole request
/// path, kilobytes, and tokio's spawn moves it several times on the way into the task; moving a
/// box moves a pointer, for one more allocation.
#[derive(Debug, Clone, Copy)]
struct BoxingExecutor;

impl<F> hyper::rt::Executor<F> for BoxingExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(Box::pin(future));
    }
}

/// Serves one accepted connection until it closes or the drain ends it. On a TLS
/// listener the handshake runs here, in the connection's own task, never in the accept loop.
/// `open` counts it against `server.max_connections` until the socket closes.
pub(super) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    listener: Arc<str>,
    runtime: Runtime,
    draining: Draining,
    open: super::connections::Open,
) {
    // Small responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let Some(settings) = runtime.load().listeners.get(&*listener).cloned() else {
        tracing::debug!(%listener, "listener not in the current config; closing the connection");
        return;
    };
    let Some(acceptor) = &settings.tls else {
        let connection = proxy::Connection { peer, proto: "http", redirect_https: settings.redirect_https, hsts: None };
        return serve_http(stream, connection, runtime, draining, open).await;
    };
    let handshake = tokio_rustls::TlsAcceptor::from(acceptor.config.clone()).accept(stream);
    match tokio::time::timeout(acceptor.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => {
            let connection =
                proxy::Connection { peer, proto: "https", redirect_https: None, hsts: acceptor.hsts.clone() };
            serve_http(stream, connection, runtime, draining, open).await;
        }
        Ok(Err(error)) => {
            crate::metrics::global().tls_handshake_failed(false);
            tracing::debug!(%peer, %listener, %error, "TLS handshake failed");
        }
        Err(_elapsed) => {
            crate::metrics::global().tls_handshake_failed(true);
            tracing::debug!(%peer, %listener, "TLS handshake timed out");
        }
    }
}

async fn serve_http<S>(
    stream: S,
    connection: proxy::Connection,
    runtime: Runtime,
    mut draining: Draining,
    open: super::connections::Open,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Limits come from the snapshot current at accept time, so a reload applies to new connections.
    let (server, timeouts) = {
        let snapshot = runtime.load();
        let timeouts =
            Timeouts { header_read: snapshot.server.header_read_timeout, idle: snapshot.server.idle_timeout };
        (http_server(&snapshot.server), timeouts)
    };
    let activity = Arc::new(Activity::default());
    let io = TokioIo::new(TimedIo::new(stream, activity.clone(), timeouts).counted(open));
    let peer = connection.peer;
    let idle = activity.clone();
    let service = service_fn(move |request| {
        // One snapshot for the whole request, loaded once.
        let snapshot = runtime.load_full();
        let guard = activity.start_request();
        let connection = connection.clone();
        let http1 = request.version() <= http::Version::HTTP_11;
        let early =
            (!http1).then(|| EarlyReset { activity: activity.clone(), started: Instant::now(), done: false, peer });
        async move {
            let mut response = proxy::handle(snapshot, connection, request).await;
            if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                guard.upgraded();
            } else if http1 && super::draining() {
                // hyper closes the connection after this answer, and the client knows not to reuse it.
                response.headers_mut().insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok::<_, Infallible>(response.map(|body| Tracked { body, guard, waiting: None, early }))
        }
    });
    let mut connection = pin!(server.serve_connection_with_upgrades(io, service));
    let mut drain_started = pin!(draining.started());
    let (mut closing, mut registered) = (false, false);
    let served = poll_fn(|cx| loop {
        if let Poll::Ready(served) = connection.as_mut().poll(cx) {
            return Poll::Ready(served);
        }
        // Asked to close by the drain, or by the IO once an HTTP/2 connection has idled out: hyper
        // closes an idle connection at once, and an HTTP/2 one after GOAWAY. The drain's future
        // is polled once to be woken by it, then again only once it has begun.
        let drain = !registered || drain::begun();
        registered = true;
        if closing || !((drain && drain_started.as_mut().poll(cx).is_ready()) || idle.close_asked()) {
            return Poll::Pending;
        }
        connection.as_mut().graceful_shutdown();
        closing = true;
    })
    .await;
    if let Err(error) = served {
        // h2 keeps only the text of the read error it closed the connection for: the IO says.
        if idle.control_flood() {
            crate::metrics::global().client_rejected("control_flood");
            static WARNED: Throttle = Throttle::new(Duration::from_secs(10));
            if WARNED.allows() {
                tracing::warn!(%peer, "an HTTP/2 client flooded PINGs, SETTINGS, PRIORITY or empty DATA frames; closed its connection (logged once in 10 s at most)");
            }
        } else if let Some(reason) = rejection(&*error) {
            crate::metrics::global().client_rejected(reason);
        }
        tracing::debug!(%peer, %error, "client connection ended with an error");
    }
}

/// Why hyper refused a request head itself (answering 400, 431 or 408 before the gateway saw a
/// request), if it did: these never reach the access log, so the metrics count them.
fn rejection(error: &(dyn std::error::Error + 'static)) -> Option<&'static str> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>() {
            if hyper.is_parse_too_large() {
                return Some("head_too_large");
            }
            if hyper.is_parse() {
                return Some("malformed");
            }
        }
        // The 408 is `TimedIo`'s (hyper's own header timer is not used; see there).
        let io = error.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref);
        if io.is_some_and(|inner| inner.is::<super::timed_io::HeadTimedOut>()) {
            return Some("head_timeout");
        }
        current = error.source();
    }
    None
}

/// Resets within this long of a stream's start count as early.
const EARLY_RESET_WINDOW: Duration = Duration::from_secs(1);
/// Early resets a connection may have before it is closed, if they are half its streams or more.
const EARLY_RESETS_TO_CLOSE: u64 = 100;

/// An HTTP/2 stream whose client may reset it before its response is complete. Each such reset
/// costs an upstream request, and on an HTTP/1.1 upstream the connection it was on: a client
/// opening and resetting streams in a loop ("rapid reset", CVE-2023-44487, with a pause long
/// enough that h2's own limit, on streams reset before they are accepted, never sees them) has
/// the gateway open and close upstream connections as fast as it sends frames. As Envoy does, a
/// connection on which [`EARLY_RESETS_TO_CLOSE`] or more streams were reset within
/// [`EARLY_RESET_WINDOW`] of their start, half or more of all its streams, is closed (GOAWAY).
#[derive(Debug)]
struct EarlyReset {
    activity: Arc<Activity>,
    started: Instant,
    /// The response ended, or failed on the gateway's or the upstream's side.
    done: bool,
    peer: SocketAddr,
}

impl Drop for EarlyReset {
    fn drop(&mut self) {
        // A drain cuts streams off too: those are the gateway's doing.
        if self.done || drain::begun() || self.started.elapsed() >= EARLY_RESET_WINDOW {
            return;
        }
        if self.activity.early_reset(EARLY_RESETS_TO_CLOSE) {
            crate::metrics::global().client_rejected("rapid_reset");
            static WARNED: Throttle = Throttle::new(Duration::from_secs(10));
            if WARNED.allows() {
                tracing::warn!(peer = %self.peer, "an HTTP/2 client reset most of its streams right after opening them; closing its connection (logged once in 10 s at most)");
            }
        }
    }
}

/// A response body that keeps its request counted as in flight until it has been sent, and
/// tells the connection while a piece it handed over waits on the client.
#[derive(Debug)]
struct Tracked {
    body: ProxyBody,
    guard: RequestGuard,
    waiting: Option<ClientWait>,
    /// HTTP/2 only.
    early: Option<EarlyReset>,
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = <ProxyBody as Body>::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if let Some(wait) = this.waiting.take() {
            this.guard.client_took(wait);
        }
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(Some(Ok(_)))) && !this.body.is_end_stream() {
            this.waiting = Some(this.guard.waiting_on_client());
        }
        // Ended, or failed on this side: not the client's doing.
        if let (Poll::Ready(None | Some(Err(_))), Some(early)) = (&polled, &mut this.early) {
            early.done = true;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(wait) = self.waiting.take() {
            self.guard.client_took(wait);
        }
        // hyper drops a body without polling it once it says it has ended (an empty one).
        if let Some(early) = &mut self.early {
            early.done |= self.body.is_end_stream();
        }
    }
}
