use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const TIMEOUTS: Timeouts = Timeouts { header_read: Duration::from_secs(2), idle: Duration::from_secs(10) };

fn pair() -> (tokio::io::DuplexStream, TimedIo<tokio::io::DuplexStream>, Arc<Activity>) {
    let (client, server) = tokio::io::duplex(4096);
    let activity = Arc::new(Activity::default());
    (client, TimedIo::new(server, activity.clone(), TIMEOUTS), activity)
}

#[tokio::test(start_paused = true)]
async fn idle_connection_reads_end_of_stream_after_idle_timeout() {
    let (_client, mut io, _) = pair();
    let start = Instant::now();
    let n = io.read(&mut [0u8; 16]).await.unwrap();
    assert_eq!(n, 0);
    assert_eq!(start.elapsed(), TIMEOUTS.idle);
}

#[tokio::test(start_paused = true)]
async fn partial_head_gets_408_after_header_read_timeout() {
    let (mut client, mut io, _) = pair();
    client.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    assert!(io.read(&mut buf).await.unwrap() > 0);
    let start = Instant::now();
    let err = io.read(&mut buf).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), TIMEOUTS.header_read);
    let mut response = vec![0u8; REQUEST_TIMEOUT_RESPONSE.len()];
    client.read_exact(&mut response).await.unwrap();
    assert!(response.starts_with(b"HTTP/1.1 408 "));
}

#[tokio::test(start_paused = true)]
async fn request_in_flight_is_never_timed_out() {
    let (_client, mut io, activity) = pair();
    let guard = activity.start_request();
    let waited = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut [0u8; 16])).await;
    assert!(waited.is_err(), "a connection with a request in flight must not be closed");
    drop(guard);
}

#[tokio::test(start_paused = true)]
async fn upgraded_connection_is_never_timed_out_after_its_request_ends() {
    let (mut client, mut io, activity) = pair();
    let guard = activity.start_request();
    guard.upgraded();
    drop(guard);
    // WebSocket frames, not a request head: no 408, however long the frame takes to complete.
    client.write_all(b"\x81\x05hel").await.unwrap();
    assert!(io.read(&mut [0u8; 64]).await.unwrap() > 0);
    let waited = tokio::time::timeout(Duration::from_secs(3600), io.read(&mut [0u8; 16])).await;
    assert!(waited.is_err(), "the tunnel applies its own idle limit; HTTP's timeouts must not");
}

#[tokio::test(start_paused = true)]
async fn head_deadline_from_an_earlier_request_does_not_fire_later() {
    let (mut client, mut io, activity) = pair();
    client.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    assert!(io.read(&mut [0u8; 64]).await.unwrap() > 0);
    // The head completed and a request ran long past the header deadline.
    let guard = activity.start_request();
    tokio::time::sleep(TIMEOUTS.header_read * 3).await;
    drop(guard);
    // Now idle: the close must come from the idle timeout, quietly.
    let start = Instant::now();
    assert_eq!(io.read(&mut [0u8; 16]).await.unwrap(), 0);
    assert_eq!(start.elapsed(), TIMEOUTS.idle);
}

/// No 408 for HTTP/2: at the idle timeout the connection is asked to close (GOAWAY), and the
/// read ends once the grace for that has run out too.
#[tokio::test(start_paused = true)]
async fn idle_http2_connection_is_asked_to_close_then_ended_after_the_grace() {
    let (mut client, mut io, activity) = pair();
    client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(io.read(&mut [0u8; 64]).await.unwrap() > 0);
    let start = Instant::now();
    let mut read = tokio::spawn(async move { io.read(&mut [0u8; 16]).await });
    tokio::time::sleep(TIMEOUTS.idle - Duration::from_millis(1)).await;
    assert!(!activity.close_asked(), "asked to close before the idle timeout");
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert!(activity.close_asked(), "not asked to close at the idle timeout");
    assert!(tokio::time::timeout(Duration::from_millis(1), &mut read).await.is_err(), "ended without a grace");
    assert_eq!(read.await.unwrap().unwrap(), 0);
    assert_eq!(start.elapsed(), TIMEOUTS.idle + GOAWAY_GRACE);
}

/// What the client sends during the grace (the PING's answer, a request that crossed the GOAWAY)
/// does not end it early: hyper closes once the streams are done, or the grace ends.
#[tokio::test(start_paused = true)]
async fn idle_http2_connection_keeps_its_grace_when_the_client_sends_more() {
    let (mut client, mut io, activity) = pair();
    client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    assert!(io.read(&mut [0u8; 64]).await.unwrap() > 0);
    let start = Instant::now();
    let read = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        let first = io.read(&mut buf).await.unwrap();
        (first, io.read(&mut buf).await.unwrap(), Instant::now())
    });
    tokio::time::sleep(TIMEOUTS.idle + Duration::from_millis(2)).await;
    assert!(activity.close_asked());
    client.write_all(b"ping answer").await.unwrap();
    let (first, second, ended) = read.await.unwrap();
    assert_eq!((first, second), (11, 0));
    assert_eq!(ended - start, TIMEOUTS.idle + GOAWAY_GRACE, "the grace was cut short");
}

/// The reader parks while a request is in flight and is not polled again by anyone else; the
/// connection must still close `idle_timeout` after the request ends, however long it ran.
async fn reader_parked_while_busy_closes_idle_timeout_after_the_end(request_runs: Duration) {
    let (_client, mut io, activity) = pair();
    let guard = activity.start_request();
    let read = tokio::spawn(async move { io.read(&mut [0u8; 16]).await.map(|n| (n, Instant::now())) });
    tokio::time::sleep(request_runs).await;
    let ended = Instant::now();
    drop(guard);
    let read = tokio::time::timeout(Duration::from_secs(3600), read).await;
    let (n, closed_at) = read.expect("the connection was never closed").unwrap().unwrap();
    assert_eq!(n, 0);
    assert_eq!(closed_at - ended, TIMEOUTS.idle);
}

#[tokio::test(start_paused = true)]
async fn reader_parked_during_a_short_request_closes_idle_timeout_after_its_end() {
    reader_parked_while_busy_closes_idle_timeout_after_the_end(TIMEOUTS.idle / 2).await;
}

#[tokio::test(start_paused = true)]
async fn reader_parked_during_a_request_longer_than_idle_timeout_closes_idle_timeout_after_its_end() {
    reader_parked_while_busy_closes_idle_timeout_after_the_end(TIMEOUTS.idle * 5 / 2).await;
}

#[tokio::test(start_paused = true)]
async fn client_taking_nothing_of_a_response_is_cut_off_after_idle_timeout() {
    let (_client, mut io, activity) = pair();
    let _guard = activity.start_request();
    let start = Instant::now();
    // Twice what the pipe holds: the second half waits for a client that never reads.
    let err = io.write_all(&[b'x'; 8192]).await.unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    assert_eq!(start.elapsed(), TIMEOUTS.idle);
}

#[tokio::test(start_paused = true)]
async fn client_reading_slowly_but_steadily_is_never_cut_off() {
    let (mut client, mut io, activity) = pair();
    let _guard = activity.start_request();
    let reader = tokio::spawn(async move {
        let mut total = 0;
        let mut buf = [0u8; 1024];
        loop {
            // Each read comes well within idle_timeout of the last, though the whole takes longer.
            tokio::time::sleep(TIMEOUTS.idle / 2).await;
            match client.read(&mut buf).await.unwrap() {
                0 => return total,
                n => total += n,
            }
        }
    });
    io.write_all(&[b'x'; 16 * 1024]).await.unwrap();
    io.shutdown().await.unwrap();
    assert_eq!(reader.await.unwrap(), 16 * 1024);
}

#[tokio::test(start_paused = true)]
async fn http2_frames_without_a_request_do_not_keep_the_connection_open() {
    let (mut client, mut io, activity) = pair();
    let start = Instant::now();
    client.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    // A PING's worth of bytes every second for longer than idle_timeout, never a request: asked
    // to close (GOAWAY) at the idle timeout, closed when the grace ends.
    let pings = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if client.write_all(b"12345678").await.is_err() {
                return;
            }
        }
    });
    let mut buf = [0u8; 64];
    while io.read(&mut buf).await.unwrap() > 0 {}
    assert!(activity.close_asked());
    assert_eq!(start.elapsed(), TIMEOUTS.idle + GOAWAY_GRACE, "idle since it was accepted");
    pings.abort();
}

#[tokio::test(start_paused = true)]
async fn response_waiting_on_the_client_for_idle_timeout_ends_the_connection() {
    let (_client, mut io, activity) = pair();
    let guard = activity.start_request();
    let wait = guard.waiting_on_client();
    let start = Instant::now();
    let read = tokio::time::timeout(10 * TIMEOUTS.idle, io.read(&mut [0u8; 16])).await;
    let err = read.expect("still open after 10 idle timeouts").unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    let waited = start.elapsed();
    assert!(waited >= TIMEOUTS.idle && waited <= 3 * TIMEOUTS.idle, "closed after {waited:?}");
    guard.client_took(wait);
}

#[tokio::test(start_paused = true)]
async fn response_the_client_keeps_taking_is_never_timed_out() {
    let (_client, mut io, activity) = pair();
    let guard = activity.start_request();
    let reading = async {
        // Each piece is taken within a second of being handed over.
        loop {
            let wait = guard.waiting_on_client();
            tokio::time::sleep(Duration::from_secs(1)).await;
            guard.client_took(wait);
        }
    };
    let mut buf = [0u8; 16];
    tokio::select! {
        read = io.read(&mut buf) => panic!("the connection ended: {read:?}"),
        () = reading => {}
        () = tokio::time::sleep(Duration::from_secs(3600)) => {}
    }
}
