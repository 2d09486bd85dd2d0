use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;

use super::*;

/// A unique directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let unique = format!(
            "gateway-access-log-{name}-{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
        );
        let dir = std::env::temp_dir().join(unique);
        std::fs::create_dir(&dir).unwrap();
        TempDir(dir)
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Drops `log`, the last handle, and waits for its writer as [`finish`] does at exit.
fn close(log: AccessLog) {
    let target = log.target().clone();
    drop(log);
    assert_eq!(wait_for_writers(CLOSE_WAIT, |t| *t == target), 0, "the writer of {target:?} was left behind");
}

fn format_line(entry: &Entry<'_>) -> String {
    let mut line = String::new();
    push_line(&mut line, entry);
    line
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

const GET: &Method = &Method::GET;

/// 2026-11-21T17:45:05.123Z
fn arrival() -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(1_795_283_105_123)
}

fn minimal() -> Entry<'static> {
    Entry {
        time: arrival(),
        request_id: "r1",
        trace_id: None,
        client_ip: IpAddr::V4(Ipv4Addr::new(1, 2, 3, 4)),
        method: GET,
        host: None,
        path: "/",
        protocol: Version::HTTP_11,
        tls: false,
        status: 404,
        route: None,
        upstream: None,
        endpoint: None,
        error: None,
        duration: Duration::from_micros(250),
        upstream_duration: None,
        bytes_sent: 0,
        completed: true,
        user_agent: None,
    }
}

fn full() -> Entry<'static> {
    Entry {
        time: arrival(),
        request_id: "0af7651916cd43dd",
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
        client_ip: IpAddr::V6(Ipv6Addr::LOCALHOST),
        method: &Method::POST,
        host: Some("api.example.com"),
        path: "/orders/42",
        protocol: Version::HTTP_2,
        tls: true,
        status: 502,
        route: Some("api"),
        upstream: Some("echo"),
        endpoint: Some("127.0.0.1:9001"),
        error: Some("upstream_unavailable"),
        duration: Duration::from_nanos(1_234_567),
        upstream_duration: Some(Duration::from_millis(2)),
        bytes_sent: 123,
        completed: false,
        user_agent: Some("curl/8.5.0"),
    }
}

#[test]
fn format_line_full_entry_has_every_key_in_order() {
    assert_eq!(
        format_line(&full()),
        concat!(
            r#"{"time":"2026-11-21T17:45:05.123Z","request_id":"0af7651916cd43dd","#,
            r#""trace_id":"4bf92f3577b34da6a3ce929d0e0e4736","client_ip":"::1","#,
            r#""method":"POST","host":"api.example.com","path":"/orders/42","protocol":"HTTP/2.0","tls":true,"#,
            r#""status":502,"route":"api","upstream":"echo","endpoint":"127.0.0.1:9001","#,
            r#""error":"upstream_unavailable","duration_ms":1.234,"upstream_ms":2.000,"bytes_sent":123,"#,
            r#""completed":false,"user_agent":"curl/8.5.0"}"#,
            "\n"
        )
    );
}

#[test]
fn format_line_minimal_entry_omits_absent_options() {
    assert_eq!(
        format_line(&minimal()),
        concat!(
            r#"{"time":"2026-11-21T17:45:05.123Z","request_id":"r1","client_ip":"1.2.3.4","method":"GET","#,
            r#""path":"/","protocol":"HTTP/1.1","tls":false,"status":404,"duration_ms":0.250,"bytes_sent":0,"#,
            r#""completed":true}"#,
            "\n"
        )
    );
}

#[test]
fn format_line_time_matches_timefmt_rfc3339() {
    for time in [UNIX_EPOCH, arrival(), UNIX_EPOCH + Duration::from_millis(951_782_400_123)] {
        let line = format_line(&Entry { time, ..minimal() });
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["time"], timefmt::rfc3339(time));
    }
}

#[test]
fn format_line_protocols_are_named_like_http_versions() {
    for (version, text) in [
        (Version::HTTP_09, "HTTP/0.9"),
        (Version::HTTP_10, "HTTP/1.0"),
        (Version::HTTP_11, "HTTP/1.1"),
        (Version::HTTP_2, "HTTP/2.0"),
        (Version::HTTP_3, "HTTP/3.0"),
    ] {
        let line = format_line(&Entry { protocol: version, ..minimal() });
        assert!(line.contains(&format!(r#""protocol":"{text}""#)), "{line}");
    }
}

#[test]
fn format_line_durations_have_three_decimals() {
    for (duration, text) in [
        (Duration::ZERO, "0.000"),
        (Duration::from_nanos(999), "0.000"),
        (Duration::from_micros(1), "0.001"),
        (Duration::from_secs(1), "1000.000"),
        (Duration::from_micros(61_234_567), "61234.567"),
    ] {
        let line = format_line(&Entry { duration, upstream_duration: Some(duration), ..minimal() });
        assert!(line.contains(&format!(r#""duration_ms":{text},"upstream_ms":{text},"#)), "{line}");
    }
}

#[test]
fn format_line_escapes_quotes_backslashes_and_control_characters() {
    let entry = Entry {
        host: Some("evil\"host\\"),
        path: "/a\"b\\c\nd\te\u{0}f\u{1f}g\u{7f}",
        user_agent: Some("Mozilla \"5.0\"\r\n{\"injected\":true}"),
        ..minimal()
    };
    let line = format_line(&entry);
    assert!(line.contains(r#""host":"evil\"host\\""#), "{line}");
    assert!(line.contains(r#""path":"/a\"b\\c\u000ad\u0009e\u0000f\u001fg"#), "{line}");
    assert!(line.contains(r#""user_agent":"Mozilla \"5.0\"\u000d\u000a{\"injected\":true}""#), "{line}");
    // One line, and it parses back to the original strings.
    assert_eq!(line.matches('\n').count(), 1);
    assert!(line.ends_with('\n'));
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["host"], entry.host.unwrap());
    assert_eq!(value["path"], entry.path);
    assert_eq!(value["user_agent"], entry.user_agent.unwrap());
}

#[test]
fn format_line_non_ascii_passes_through_as_utf8() {
    let entry = Entry {
        host: Some("bücher.example"),
        path: "/café/日本語/😀",
        user_agent: Some("Navigateur “spécial” \u{2028}"),
        ..minimal()
    };
    let line = format_line(&entry);
    assert!(line.contains(r#""host":"bücher.example""#), "{line}");
    assert!(line.contains(r#""path":"/café/日本語/😀""#), "{line}");
    assert!(line.contains("\"user_agent\":\"Navigateur “spécial” \u{2028}\""), "{line}");
    let value: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(value["path"], entry.path);
    assert_eq!(value["user_agent"], entry.user_agent.unwrap());
}

#[test]
fn format_line_query_string_is_never_logged() {
    let line = format_line(&Entry { path: "/login?token=secret", ..minimal() });
    assert!(line.contains(r#""path":"/login","#), "{line}");
    assert!(!line.contains("secret"), "{line}");
}

#[test]
fn open_file_appends_across_opens() {
    let dir = TempDir::new("append");
    let path = dir.file("access.log");
    let target = Target::File(path.clone());
    let log = AccessLog::open(&target).unwrap();
    assert_eq!(log.target(), &target);
    log.log(&Entry { request_id: "first", ..minimal() });
    close(log);
    let log = AccessLog::open(&target).unwrap();
    log.log(&Entry { request_id: "second", ..minimal() });
    close(log);
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains(r#""request_id":"first""#));
    assert!(lines[1].contains(r#""request_id":"second""#));
}

#[test]
fn drop_of_all_handles_flushes_every_line() {
    let dir = TempDir::new("flush");
    let path = dir.file("access.log");
    let log = AccessLog::start(&Target::File(path.clone()), 2, QUEUE_BYTES, None).unwrap();
    let clone = log.clone();
    let writers: Vec<_> = (0..4)
        .map(|thread| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..500 {
                    let id = format!("t{thread}-{i}");
                    log.log(&Entry { request_id: &id, ..minimal() });
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    drop(log);
    clone.log(&Entry { request_id: "last", ..minimal() });
    let dropped = clone.dropped();
    close(clone);
    let lines = read_lines(&path);
    assert_eq!(lines.len() as u64 + dropped, 2_001);
    assert_eq!(dropped, 0, "4 MiB hold 2001 lines");
    assert!(lines.last().unwrap().contains(r#""request_id":"last""#));
    for line in &lines {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn reopen_after_rename_writes_to_a_new_file_at_the_path() {
    let dir = TempDir::new("reopen");
    let path = dir.file("access.log");
    let rotated = dir.file("access.log.1");
    let log = AccessLog::open(&Target::File(path.clone())).unwrap();
    log.log(&Entry { request_id: "before", ..minimal() });
    // The writer flushes when idle; wait until the line is on disk, as logrotate's rename would
    // find it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::fs::metadata(&path).unwrap().len() == 0 {
        assert!(std::time::Instant::now() < deadline, "the first line never reached the file");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::rename(&path, &rotated).unwrap();
    log.reopen();
    log.log(&Entry { request_id: "after", ..minimal() });
    close(log);
    let old = read_lines(&rotated);
    let new = read_lines(&path);
    assert_eq!(old.len(), 1, "{old:?}");
    assert!(old[0].contains(r#""request_id":"before""#));
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains(r#""request_id":"after""#));
}

#[test]
fn reopen_stdout_is_a_no_op() {
    let log = AccessLog::open(&Target::Stdout).unwrap();
    log.reopen();
    assert!(!log.shared.reopen.load(Ordering::Relaxed));
    assert_eq!(log.target(), &Target::Stdout);
}

#[test]
fn log_full_buffer_drops_and_counts() {
    let dir = TempDir::new("dropped");
    let path = dir.file("access.log");
    let (open_gate, gate) = mpsc::sync_channel(1);
    // Every line is as long as the first: the buffer takes four, as the fourth starts below the limit.
    let limit = 3 * format_line(&Entry { request_id: "r0", ..minimal() }).len() + 1;
    let log = AccessLog::start(&Target::File(path.clone()), 1, limit, Some(gate)).unwrap();
    let exported = || crate::metrics::global().render(&crate::metrics::Readings::default());
    let count = |text: &str| {
        let line = text.lines().find(|l| l.starts_with("gateway_access_log_dropped_lines_total "));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok()).unwrap_or_else(|| panic!("no count in {text}"))
    };
    let before = count(&exported());
    for i in 0..7 {
        let id = format!("r{i}");
        log.log(&Entry { request_id: &id, ..minimal() });
    }
    assert_eq!(log.dropped(), 3);
    // Other tests may drop lines meanwhile: at least these three.
    assert!(count(&exported()) >= before + 3, "{}", exported());
    open_gate.send(()).unwrap();
    close(log);
    let lines = read_lines(&path);
    assert_eq!(lines.len(), 4, "{lines:?}");
    for (i, line) in lines.iter().enumerate() {
        assert!(line.contains(&format!(r#""request_id":"r{i}""#)), "{line}");
    }
}

#[test]
fn lines_of_every_buffer_are_written_and_a_buffer_taken_fills_again() {
    let dir = TempDir::new("buffers");
    let path = dir.file("access.log");
    let log = AccessLog::start(&Target::File(path.clone()), 3, QUEUE_BYTES, None).unwrap();
    // Worker indexes pick the buffers; 4 wraps around to buffer 1.
    let writers: Vec<_> = (0..5)
        .map(|index| {
            let log = log.clone();
            std::thread::spawn(move || {
                worker::set_index(index);
                for i in 0..200 {
                    let id = format!("w{index}-{i}");
                    log.log(&Entry { request_id: &id, ..minimal() });
                    if i % 50 == 0 {
                        // Let the writer take the buffers mid-run, so lines land in taken ones.
                        std::thread::sleep(LINGER * 2);
                    }
                }
            })
        })
        .collect();
    for writer in writers {
        writer.join().unwrap();
    }
    assert_eq!(log.dropped(), 0);
    close(log);
    let mut ids: Vec<String> = read_lines(&path)
        .iter()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["request_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = (0..5).flat_map(|w| (0..200).map(move |i| format!("w{w}-{i}"))).collect();
    expected.sort();
    assert_eq!(ids, expected);
}

#[test]
fn a_quiet_log_writes_its_line_without_more_coming() {
    let dir = TempDir::new("quiet");
    let path = dir.file("access.log");
    let log = AccessLog::open(&Target::File(path.clone())).unwrap();
    for round in 0..3 {
        let id = format!("alone-{round}");
        log.log(&Entry { request_id: &id, ..minimal() });
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path).unwrap().contains(&id) {
            assert!(Instant::now() < deadline, "line {round} was never written while the log stayed open");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    close(log);
}

#[test]
fn open_file_in_missing_directory_fails_naming_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.file("no-such-dir").join("access.log");
    let err = AccessLog::open(&Target::File(path.clone())).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::NotFound);
    assert!(err.to_string().contains(&path.display().to_string()), "{err}");
}

#[cfg(target_os = "linux")]
#[test]
fn write_errors_do_not_stop_the_writer() {
    // Every write to /dev/full fails with ENOSPC: the writer reports once, keeps draining the
    // queue, and the final drop still returns.
    let log = AccessLog::open(&Target::File(PathBuf::from("/dev/full"))).unwrap();
    for _ in 0..1_000 {
        log.log(&minimal());
    }
    close(log);
}

#[cfg(target_os = "linux")]
#[test]
fn drop_returns_while_the_writer_is_blocked_and_finish_gives_up_on_it() {
    let dir = TempDir::new("blocked");
    let fifo = dir.file("access.pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status().expect("mkfifo (coreutils) runs");
    assert!(made.success(), "mkfifo {}", fifo.display());
    // Opening a FIFO waits for the other end: the reader opens while the log opens the writing end.
    let reader = std::thread::spawn({
        let fifo = fifo.clone();
        move || std::fs::File::open(fifo).unwrap()
    });
    let target = Target::File(fifo);
    let log = AccessLog::open(&target).unwrap();
    let mut reader = reader.join().unwrap();
    // Far more than the pipe's 64 KiB buffer: the writer blocks on a reader that never reads.
    for _ in 0..2_000 {
        log.log(&full());
    }
    // A reload can drop the last handle on a worker thread: that must not wait for the writer.
    drop(log);
    let writer_running =
        |target: &Target| closing().iter().any(|closed| closed.target == *target && !closed.writer.is_finished());
    assert!(writer_running(&target), "the drop returned only after the blocked writer ended");
    assert_eq!(wait_for_writers(Duration::from_millis(100), |t| *t == target), 1, "left behind");
    // Reading the pipe unblocks the writer, which then writes out every line and ends.
    let mut text = String::new();
    io::Read::read_to_string(&mut reader, &mut text).unwrap();
    assert_eq!(text.lines().count(), 2_000);
}
