//! HTTP/1.1 protocol upgrades (WebSocket): once both sides switched, bytes are copied both ways.

use http::HeaderValue;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// Joins the client's and the upstream's upgraded connections in a background task.
pub(super) fn tunnel(client: OnUpgrade, upstream: OnUpgrade, request_id: HeaderValue) {
    tokio::spawn(async move {
        match tokio::try_join!(client, upstream) {
            Ok((client, upstream)) => {
                let (mut client, mut upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                match tokio::io::copy_bidirectional(&mut client, &mut upstream).await {
                    Ok((to_upstream, to_client)) => {
                        tracing::debug!(
                            request_id = request_id.to_str().unwrap_or(""),
                            to_upstream,
                            to_client,
                            "upgraded connection closed"
                        )
                    }
                    Err(error) => {
                        tracing::debug!(request_id = request_id.to_str().unwrap_or(""), %error, "upgraded connection ended with an error")
                    }
                }
            }
            Err(error) => {
                tracing::debug!(request_id = request_id.to_str().unwrap_or(""), %error, "protocol upgrade failed")
            }
        }
    });
}
