//! The process's own resource use under the names every Prometheus client library gives it
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes` ...), so existing dashboards and
//! alerts work unchanged. Read from `/proc` when `/metrics` is scraped, never on the request path;
//! where `/proc` is missing (not Linux) the series stay at zero.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus::{Counter, Gauge, IntGauge, Registry};

/// `/proc` reports CPU times in USER_HZ, which is 100 on every architecture the gateway builds for.
const TICKS_PER_SECOND: f64 = 100.0;

pub(super) struct ProcessMetrics {
    cpu_seconds: Counter,
    resident_bytes: IntGauge,
    virtual_bytes: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    threads: IntGauge,
    start_time: Gauge,
}

/// What `/proc/self/stat` says, in the units exported.
#[derive(Debug, PartialEq)]
struct Stat {
    cpu_seconds: f64,
    threads: i64,
    /// Since boot.
    start_seconds: f64,
    virtual_bytes: i64,
}

impl ProcessMetrics {
    pub(super) fn register(registry: &Registry) -> ProcessMetrics {
        let (cpu, start) = ("process_cpu_seconds_total", "process_start_time_seconds");
        let cpu_seconds = Counter::new(cpu, "User and system CPU time spent, in seconds.")
            .unwrap_or_else(|e| super::misdefined(cpu, &e));
        super::register(registry, cpu, Box::new(cpu_seconds.clone()));
        let start_time = Gauge::new(start, "Start time, in seconds since the Unix epoch.")
            .unwrap_or_else(|e| super::misdefined(start, &e));
        super::register(registry, start, Box::new(start_time.clone()));
        let gauge = |name, help| super::gauge(registry, name, help);
        ProcessMetrics {
            cpu_seconds,
            resident_bytes: gauge("process_resident_memory_bytes", "Resident memory, in bytes."),
            virtual_bytes: gauge("process_virtual_memory_bytes", "Virtual memory, in bytes."),
            open_fds: gauge("process_open_fds", "Open file descriptors."),
            max_fds: gauge("process_max_fds", "Most file descriptors the process may open."),
            threads: gauge("process_threads", "Operating system threads."),
            start_time,
        }
    }

    /// Reads `/proc` afresh; what cannot be read keeps its last value.
    pub(super) fn update(&self) {
        if let Some(stat) = fs::read_to_string("/proc/self/stat").ok().as_deref().and_then(parse_stat) {
            // A counter only goes up: add what was spent since the last scrape.
            let spent = stat.cpu_seconds - self.cpu_seconds.get();
            if spent > 0.0 {
                self.cpu_seconds.inc_by(spent);
            }
            self.threads.set(stat.threads);
            self.virtual_bytes.set(stat.virtual_bytes);
            let boot = fs::read_to_string("/proc/stat").ok().as_deref().and_then(boot_time);
            if let Some(boot) = boot {
                self.start_time.set(boot + stat.start_seconds);
            }
        }
        let status = fs::read_to_string("/proc/self/status").ok();
        if let Some(kib) = status.as_deref().and_then(|s| field(s, "VmRSS:")) {
            self.resident_bytes.set(kib.saturating_mul(1024));
        }
        if let Ok(fds) = fs::read_dir("/proc/self/fd") {
            self.open_fds.set(i64::try_from(fds.count()).unwrap_or(i64::MAX));
        }
        if let Some(max) = fs::read_to_string("/proc/self/limits").ok().as_deref().and_then(max_open_files) {
            self.max_fds.set(max);
        }
    }
}

/// Fields of `/proc/self/stat` after the command name, which may itself hold spaces and `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, after_name) = text.rsplit_once(')')?;
    // Field 3 (state) is the first here: field n is at n - 3.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let number = |n: usize| fields.get(n - 3)?.parse::<i64>().ok();
    let ticks = |n: usize| number(n).map(|t| t as f64 / TICKS_PER_SECOND);
    Some(Stat {
        cpu_seconds: ticks(14)? + ticks(15)?,
        threads: number(20)?,
        start_seconds: ticks(22)?,
        virtual_bytes: number(23)?,
    })
}

/// `btime` of `/proc/stat`: when the machine booted, in seconds since the Unix epoch.
fn boot_time(text: &str) -> Option<f64> {
    let seconds = text.lines().find_map(|line| line.strip_prefix("btime "))?.trim().parse::<u64>().ok()?;
    // A sanity check against a garbled file: boot was in the past.
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    (seconds <= now).then_some(seconds as f64)
}

/// The number after `name` on its line of `/proc/self/status` (`VmRSS:   1234 kB`).
fn field(text: &str, name: &str) -> Option<i64> {
    text.lines().find_map(|line| line.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
}

/// The soft limit on open files from `/proc/self/limits`.
fn max_open_files(text: &str) -> Option<i64> {
    let line = text.lines().find_map(|line| line.strip_prefix("Max open files"))?;
    line.split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_reads_cpu_threads_start_and_memory_past_an_awkward_name() {
        let text = "4242 (gate way) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 7 0 12345 \
                    104857600 2560 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1 0 0 0 0 0\n";
        let stat = parse_stat(text).unwrap();
        assert_eq!(stat, Stat { cpu_seconds: 3.0, threads: 7, start_seconds: 123.45, virtual_bytes: 104_857_600 });
        assert_eq!(parse_stat("4242 (cut short) S 1"), None);
    }

    #[test]
    fn status_limits_and_boot_time_fields() {
        assert_eq!(field("Name:\tgateway\nVmRSS:\t   34512 kB\nThreads:\t3\n", "VmRSS:"), Some(34_512));
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1048576              1048576              files\n";
        assert_eq!(max_open_files(limits), Some(1_048_576));
        assert_eq!(boot_time("cpu  1 2 3\nbtime 1795000000\nprocesses 9\n"), Some(1_795_000_000.0));
        assert_eq!(boot_time("btime 99999999999\n"), None, "a boot in the future is garbage");
    }

    #[test]
    fn update_reads_this_process() {
        let metrics = ProcessMetrics::register(&Registry::new());
        metrics.update();
        assert!(metrics.resident_bytes.get() > 0);
        assert!(metrics.open_fds.get() > 0);
        assert!(metrics.threads.get() > 0);
        assert!(metrics.start_time.get() > 1.0e9);
    }
}
