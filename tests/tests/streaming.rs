//! Bodies stream both ways: 50 MiB up and down arrive intact while the gateway's peak memory stays far
//! below the body size (a buffering gateway would need at least the whole body). An upload that
//! keeps coming is not cut by the route's timeout, however long it takes.

use bytes::Bytes;
use e2e::client::{self, empty, request};
use e2e::{one_route_config, pattern_byte, Backend, Gateway};
use http_body_util::BodyExt;

const BODY: u64 = 50 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// How much the gateway's peak RSS may grow while the body passes through: buffering the body
/// would grow it by the whole body, streaming by a few buffers. Growth, not the absolute peak:
/// the allocator's per-thread arenas are already in the baseline taken once the gateway is up.
const MAX_RSS_GROWTH: u64 = BODY / 3;

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[tokio::test]
async fn streaming_upload_50mib_chunked_arrives_intact_with_low_gateway_rss() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "max_body_size: 100MiB"));
    let rss_before = gateway.peak_rss_bytes();

    let chunk: Bytes = (0..CHUNK).map(|i| (i * 7 % 256) as u8).collect::<Vec<u8>>().into();
    let chunk_sum: u64 = chunk.iter().map(|&b| u64::from(b)).sum();
    let count = BODY / CHUNK as u64;
    // No content-length: hyper sends the stream chunked, one 64 KiB chunk at a time.
    let chunks = futures_util::stream::iter((0..count).map(move |_| Ok(chunk.clone())));
    let reply = client::send(gateway.addr(), request("PUT", "/upload").body(client::stream(chunks)).unwrap()).await;

    assert_eq!(reply.status, 200, "{}", reply.text());
    let echoed = reply.echoed();
    assert_eq!(echoed.body_bytes, BODY);
    assert_eq!(echoed.body_sum, chunk_sum * count);
    let peak = gateway.peak_rss_bytes();
    eprintln!("gateway peak RSS {} (before the upload: {})", mib(peak), mib(rss_before));
    assert!(
        peak.saturating_sub(rss_before) < MAX_RSS_GROWTH,
        "gateway peak RSS {} (before: {}) for a {} upload: the body was buffered",
        mib(peak),
        mib(rss_before),
        mib(BODY)
    );
}

#[tokio::test]
async fn streaming_download_50mib_arrives_intact_with_low_gateway_rss() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    let rss_before = gateway.peak_rss_bytes();

    let download = async {
        let response = client::open(gateway.addr(), request("GET", &format!("/bytes/{BODY}")).body(empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let length = response.headers().get("content-length").and_then(|v| v.to_str().ok()).map(str::to_owned);
        assert_eq!(length, Some(BODY.to_string()));
        let mut body = response.into_body();
        let mut offset = 0u64;
        // Checked frame by frame: this test does not buffer the body either.
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap_or_else(|e| panic!("body error after {offset} bytes: {e}"));
            if let Ok(data) = frame.into_data() {
                if let Some(i) = data.iter().enumerate().position(|(i, &b)| b != pattern_byte(offset + i as u64)) {
                    panic!("byte {} is wrong", offset + i as u64);
                }
                offset += data.len() as u64;
            }
        }
        offset
    };
    let received = tokio::time::timeout(e2e::TIMEOUT, download).await.expect("download did not finish in time");

    assert_eq!(received, BODY);
    let peak = gateway.peak_rss_bytes();
    eprintln!("gateway peak RSS {} (before the download: {})", mib(peak), mib(rss_before));
    assert!(
        peak.saturating_sub(rss_before) < MAX_RSS_GROWTH,
        "gateway peak RSS {} (before: {}) for a {} download: the body was buffered",
        mib(peak),
        mib(rss_before),
        mib(BODY)
    );
}

#[tokio::test]
async fn streaming_upload_longer_than_the_route_timeout_passes_while_it_keeps_coming() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", "timeout: 1s"));
    // Eight pieces, one every 400 ms: 3.2 s in all, each piece well within the 1 s timeout.
    let pieces = futures_util::stream::unfold(0u8, |i| async move {
        if i == 8 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(400)).await;
        Some((Ok(Bytes::from(vec![i; 100])), i + 1))
    });
    let reply = client::send(gateway.addr(), request("PUT", "/upload").body(client::stream(pieces)).unwrap()).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.echoed().body_bytes, 800);
}

#[tokio::test]
async fn streaming_http2_upload_reset_with_no_error_never_reaches_the_upstream_as_whole() {
    use tokio::io::AsyncReadExt;
    // An upstream that reads one chunked request to its last chunk, or until the gateway hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap();
    let (head_seen, head_arrived) = tokio::sync::oneshot::channel();
    let received = tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.unwrap();
        let (mut bytes, mut buf, mut head_seen) = (Vec::new(), [0u8; 4096], Some(head_seen));
        while !bytes.ends_with(b"\r\n0\r\n\r\n") {
            let Ok(n @ 1..) = stream.read(&mut buf).await else { break };
            bytes.extend_from_slice(&buf[..n]);
            if bytes.windows(4).any(|w| w == b"\r\n\r\n") {
                head_seen.take().map(|seen| seen.send(()));
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    });
    let yaml = format!(
        "\nupstreams:\n  raw: {{ endpoints: [\"http://{upstream}\"] }}\nroutes:\n  - {{ name: all, upstream: raw }}\n"
    );
    let gateway = Gateway::start(&e2e::config(&yaml, &[]));

    let (_response, mut upload) = e2e::raw::h2_upload(gateway.addr(), "/upload", None, b"first piece").await;
    tokio::time::timeout(e2e::TIMEOUT, head_arrived).await.unwrap().unwrap();
    upload.send_reset(h2::Reason::NO_ERROR);
    let received = tokio::time::timeout(e2e::TIMEOUT, received).await.unwrap().unwrap();
    assert!(received.contains("first piece"), "the body was under way: {received:?}");
    assert!(!received.ends_with("\r\n0\r\n\r\n"), "a cut-off body was ended as if complete: {received:?}");
}

/// A GET body too (Elasticsearch's search takes one): hyper would send a GET body of unknown
/// length as none at all unless told it is chunked.
#[tokio::test]
async fn streaming_http2_upload_ended_by_the_client_arrives_whole() {
    let echo = Backend::spawn("echo");
    let gateway = Gateway::start(&one_route_config(&echo, "", ""));
    for (method, content_length) in
        [(http::Method::POST, None), (http::Method::POST, Some(21)), (http::Method::GET, None)]
    {
        let (response, mut upload) =
            e2e::raw::h2_upload_with(method, gateway.addr(), "/upload", content_length, b"first piece").await;
        upload.send_data(Bytes::from_static(b", the end"), false).unwrap();
        upload.send_data(Bytes::from_static(b"!"), true).unwrap();
        let response = tokio::time::timeout(e2e::TIMEOUT, response).await.unwrap().unwrap();
        assert_eq!(response.status(), 200, "content-length {content_length:?}");
        let (_, mut body) = response.into_parts();
        let mut bytes = Vec::new();
        while let Some(chunk) = body.data().await {
            bytes.extend_from_slice(&chunk.unwrap());
        }
        let echoed: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(echoed["body_bytes"], 21, "content-length {content_length:?}: {echoed}");
    }
    // The same over HTTP/1.1 with chunks.
    let request = b"GET /search HTTP/1.1\r\nhost: gw.test\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
                    b\r\nfirst piece\r\n9\r\n, the end\r\n1\r\n!\r\n0\r\n\r\n";
    let reply = e2e::raw::parse(&e2e::raw::exchange(gateway.addr(), request).await).expect("a response");
    let echoed: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
    assert_eq!(echoed["body_bytes"], 21, "a chunked GET body: {echoed}");
}
