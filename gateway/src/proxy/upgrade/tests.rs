use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::*;

const LIMIT: Duration = Duration::from_secs(10);

#[tokio::test(start_paused = true)]
async fn a_silent_tunnel_fails_its_read_after_the_limit() {
    let (inner, _peer) = duplex(64);
    let start = Instant::now();
    let mut tunnel = IdleLimit::new(inner, LIMIT);
    let error = tunnel.read(&mut [0; 8]).await.expect_err("a read of a silent tunnel ends");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), LIMIT);
}

#[tokio::test(start_paused = true)]
async fn a_byte_read_starts_the_limit_again() {
    let (inner, mut peer) = duplex(64);
    let start = Instant::now();
    let mut tunnel = IdleLimit::new(inner, LIMIT);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(6)).await;
        peer.write_all(b"x").await.unwrap();
        // Held open, silent, until the tunnel gives up.
        std::future::pending::<()>().await;
    });
    let mut buf = [0; 8];
    assert_eq!(tunnel.read(&mut buf).await.unwrap(), 1);
    let error = tunnel.read(&mut buf).await.expect_err("silent after the byte");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_secs(16));
}

#[tokio::test(start_paused = true)]
async fn a_byte_written_starts_the_limit_again() {
    // The upstream talks, the client only listens (a server push): the tunnel is not idle.
    let (inner, _peer) = duplex(64);
    let start = Instant::now();
    let mut tunnel = IdleLimit::new(inner, LIMIT);
    tokio::time::sleep(Duration::from_secs(6)).await;
    tunnel.write_all(b"x").await.unwrap();
    let error = tunnel.read(&mut [0; 8]).await.expect_err("silent after the byte");
    assert_eq!(error.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), Duration::from_secs(16));
}

#[tokio::test(start_paused = true)]
async fn the_end_of_the_stream_passes_through() {
    let (inner, peer) = duplex(64);
    let mut tunnel = IdleLimit::new(inner, LIMIT);
    drop(peer);
    assert_eq!(tunnel.read(&mut [0; 8]).await.unwrap(), 0);
}
