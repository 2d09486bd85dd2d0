//! Child processes for the bench: spawn with a kill-on-drop guard, read their announcements,
//! and measure them through /proc (CPU ticks, peak RSS, children).

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

/// A running child process; dropped = SIGTERM, then SIGKILL after a grace period.
///
/// `also_kill` lists processes the child spawned itself (nginx workers): they are killed
/// too if they outlive the child.
#[derive(Debug)]
pub struct ProcGuard {
    /// Short name used in messages.
    pub name: String,
    child: Child,
    stdout_lines: Option<mpsc::Receiver<String>>,
    stderr_path: PathBuf,
    /// Extra pids to SIGKILL on drop if still alive after the child is gone.
    pub also_kill: Vec<u32>,
}

impl ProcGuard {
    /// Spawns `cmd` with stdout piped (read line by line on a thread) and stderr appended to
    /// `stderr_path`.
    pub fn spawn(name: &str, mut cmd: Command, stderr_path: &Path) -> anyhow::Result<ProcGuard> {
        let stderr = fs::File::create(stderr_path).with_context(|| format!("creating {}", stderr_path.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(stderr));
        let mut child = cmd.spawn().with_context(|| format!("starting {name}: {cmd:?}"))?;
        let stdout_lines = child.stdout.take().map(|stdout| {
            let (tx, rx) = mpsc::channel();
            // Keeps draining stdout for the child's whole life so it never blocks on a full pipe.
            let _ = thread::Builder::new().name(format!("{name}-stdout")).spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            rx
        });
        Ok(ProcGuard {
            name: name.to_owned(),
            child,
            stdout_lines,
            stderr_path: stderr_path.to_owned(),
            also_kill: Vec::new(),
        })
    }

    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout lines until `want` returns `Some`, the child exits, or `timeout` passes.
    pub fn wait_for_line<T>(
        &mut self,
        timeout: Duration,
        mut want: impl FnMut(&str) -> Option<T>,
    ) -> anyhow::Result<T> {
        let deadline = Instant::now() + timeout;
        let Some(lines) = self.stdout_lines.as_ref() else {
            bail!("{}: stdout is not captured", self.name);
        };
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    if let Some(found) = want(&line) {
                        return Ok(found);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) if Instant::now() < deadline => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!("{} did not announce itself within {timeout:?}{}", self.name, self.stderr_tail())
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().map(|s| s.to_string()).unwrap_or_default();
                    bail!("{} closed stdout ({status}){}", self.name, self.stderr_tail())
                }
            }
        }
    }

    /// Fails with the tail of stderr if the child has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => bail!("{} exited ({status}){}", self.name, self.stderr_tail()),
            Err(e) => bail!("{}: {e}", self.name),
        }
    }

    /// The last lines of the child's stderr file, formatted for an error message.
    pub fn stderr_tail(&self) -> String {
        tail_of(&self.stderr_path, 20)
    }
}

/// Catches SIGINT, SIGTERM and SIGHUP from now on and sets the flag returned when one comes: a
/// bench that waits synchronously checks it in its loops and returns, so that its guards stop
/// the children and remove the temp dir.
pub fn stop_on_signals() -> anyhow::Result<Arc<AtomicBool>> {
    use tokio::signal::unix::{signal, SignalKind};
    let stop = Arc::new(AtomicBool::new(false));
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build()?;
    // Caught from here on, not from when the thread below first runs.
    let mut signals = runtime
        .block_on(async { [SignalKind::interrupt(), SignalKind::terminate(), SignalKind::hangup()].map(signal) });
    if let Some(Err(e)) = signals.iter().find(|s| s.is_err()) {
        bail!("catching signals: {e}");
    }
    let set = Arc::clone(&stop);
    thread::Builder::new().name("signals".to_owned()).spawn(move || {
        runtime.block_on(async {
            if let [Ok(int), Ok(term), Ok(hup)] = &mut signals {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                    _ = hup.recv() => {}
                }
            }
        });
        set.store(true, Ordering::Relaxed);
    })?;
    Ok(stop)
}

/// This program's name (`loadbench`, `reloadbench`), for messages.
pub fn program() -> String {
    let arg0 = std::env::args_os().next().unwrap_or_default();
    Path::new(&arg0).file_name().map_or_else(|| "bench".to_owned(), |name| name.to_string_lossy().into_owned())
}

/// The program `name` in a directory of PATH.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|p| p.is_file())
}

/// The last `n` lines of a file, as "\n--- path (last lines) ---\n..." or "" if empty.
pub fn tail_of(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = lines[lines.len().saturating_sub(n)..].join("\n");
    format!("\n--- {} (last lines) ---\n{tail}", path.display())
}

impl Drop for ProcGuard {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            kill_all(&self.also_kill);
            return;
        }
        // SIGTERM first so the gateway drains and nginx stops its workers; std only has SIGKILL.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                kill_all(&self.also_kill);
                return;
            }
            thread::sleep(Duration::from_millis(20));
        }
        eprintln!("loadbench: {} ignored SIGTERM for 3 s; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_all(&self.also_kill);
    }
}

fn kill_all(pids: &[u32]) {
    let alive: Vec<String> =
        pids.iter().filter(|pid| Path::new(&format!("/proc/{pid}")).exists()).map(u32::to_string).collect();
    if !alive.is_empty() {
        let _ = Command::new("kill").arg("-KILL").args(&alive).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// A directory removed (recursively) on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    /// Creates `$TMPDIR/loadbench-<pid>-<nanos>` with mode 0755, so that nginx workers, which
    /// drop to `nobody` when started as root, can use the temp paths inside it.
    pub fn new(keep: bool) -> anyhow::Result<TempDir> {
        use std::os::unix::fs::PermissionsExt as _;
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let path = std::env::temp_dir().join(format!("loadbench-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        Ok(TempDir { path, keep })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("{}: kept {}", program(), self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Fields of /proc/<pid>/stat that the bench uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Parent process id.
    pub ppid: u32,
    /// User + system CPU time in clock ticks (all threads of the process).
    pub cpu_ticks: u64,
}

/// Parses the text of /proc/<pid>/stat. The command name (field 2) may contain spaces and
/// parentheses, so fields are counted from the last ')'.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): ppid is field 4, utime 14, stime 15 (proc(5)).
    let field = |n: usize| fields.get(n - 3).copied();
    Some(Stat {
        ppid: field(4)?.parse().ok()?,
        cpu_ticks: field(14)?.parse::<u64>().ok()? + field(15)?.parse::<u64>().ok()?,
    })
}

/// Reads /proc/<pid>/stat.
pub fn stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Reads /proc/<pid>/stat: `None` when the process is gone, an error when it could not be read
/// (out of file descriptors, say), which must not pass for zero CPU.
fn stat_of(pid: u32) -> anyhow::Result<Option<Stat>> {
    let path = format!("/proc/{pid}/stat");
    match fs::read_to_string(&path) {
        Ok(text) => parse_stat(&text).map(Some).with_context(|| format!("{path}: unexpected contents")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {path}")),
    }
}

/// Proportional set size in KiB: resident memory, with each page shared between processes (an
/// nginx master and its workers, say) divided among them, so a sum over processes counts it once.
/// `None` when the process is gone or the kernel has no smaps_rollup (before Linux 4.14).
pub fn pss_kib(pid: u32) -> Option<u64> {
    let rollup = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    rollup.lines().find_map(|l| l.strip_prefix("Pss:"))?.trim().trim_end_matches("kB").trim().parse().ok()
}

/// The soft limit on open files of this process (which its children inherit).
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Pids whose parent is `parent` (nginx workers of a master).
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent))
        .collect();
    pids.sort_unstable();
    pids
}

/// Threads of `pid` whose name (as /proc shows it, at most 15 bytes) is one of `names`.
pub fn count_threads(pid: u32, names: &[&str]) -> usize {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|name| names.contains(&name.trim_end()))
        .count()
}

/// Names of the gateway's worker threads as /proc shows them (at most 15 bytes): its own
/// `gateway-worker-N` (one current-thread runtime per core), or tokio's multi-thread workers
/// (`tokio-rt-worker` now, `tokio-runtime-worker` in older versions).
pub const WORKER_THREAD_NAMES: [&str; 3] = ["gateway-worker-", "tokio-rt-worker", "tokio-runtime-w"];

/// Clock ticks per second for /proc CPU times (`getconf CLK_TCK`; 100 on every common Linux).
pub fn clock_ticks_per_sec() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// Busy CPU ticks of the whole machine (all CPUs), from the aggregate line of /proc/stat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    /// user + nice + system: time charged to processes (ours or anyone's).
    pub tasks: u64,
    /// irq + softirq: interrupt work charged to no process (for loopback TCP, mostly the
    /// packet processing of the bench's own connections).
    pub irq: u64,
    /// steal: time the hypervisor ran something else while this VM had work (0 on bare metal).
    pub steal: u64,
}

/// Reads the aggregate `cpu` line of /proc/stat.
pub fn machine_ticks() -> anyhow::Result<MachineTicks> {
    let text = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    text.lines().next().and_then(parse_machine_ticks).context("/proc/stat: unexpected contents")
}

/// Parses the aggregate `cpu ...` line of /proc/stat (fields per proc(5)).
pub fn parse_machine_ticks(line: &str) -> Option<MachineTicks> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = fields.map(|f| f.parse().ok()).collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let at = |i: usize| v.get(i).copied();
    Some(MachineTicks { tasks: at(0)? + at(1)? + at(2)?, irq: at(5)? + at(6)?, steal: at(7).unwrap_or(0) })
}

/// CPU ticks summed over `pids`; a pid that vanished counts 0 and is reported in the flag.
pub fn cpu_ticks(pids: &[u32]) -> anyhow::Result<(u64, bool)> {
    let mut all_present = true;
    let mut total = 0;
    for &pid in pids {
        match stat_of(pid)? {
            Some(s) => total += s.cpu_ticks,
            None => all_present = false,
        }
    }
    Ok((total, all_present))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_stat_name_with_spaces_and_parens_reads_fields_after_last_paren() {
        let text = "1234 (we ird) (x)) S 77 1234 1234 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 1000 1000 100";
        assert_eq!(parse_stat(text), Some(Stat { ppid: 77, cpu_ticks: 281 }));
    }

    #[test]
    fn parse_stat_truncated_none() {
        assert_eq!(parse_stat("1 (a) S 2 3"), None);
    }

    #[test]
    fn parse_machine_ticks_skips_idle_and_iowait_and_keeps_steal_apart() {
        let line = "cpu  100 5 50 9000 40 3 7 2 0 0";
        assert_eq!(parse_machine_ticks(line), Some(MachineTicks { tasks: 100 + 5 + 50, irq: 3 + 7, steal: 2 }));
        // Kernels before 2.6.11 have no steal field.
        assert_eq!(
            parse_machine_ticks("cpu  100 5 50 9000 40 3 7"),
            Some(MachineTicks { tasks: 155, irq: 10, steal: 0 })
        );
        assert_eq!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn count_threads_finds_named_thread() {
        let (started_tx, started_rx) = mpsc::channel::<()>();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let t = thread::Builder::new()
            .name("cnt-probe".into())
            .spawn(move || {
                let _ = started_tx.send(());
                stop_rx.recv()
            })
            .expect("spawn");
        started_rx.recv().expect("thread started");
        assert_eq!(count_threads(std::process::id(), &["cnt-probe"]), 1);
        drop(stop_tx);
        let _ = t.join();
    }

    #[test]
    fn stat_self_has_parent() {
        let me = stat(std::process::id()).expect("own stat");
        assert!(me.ppid > 0);
        assert!(pss_kib(std::process::id()).is_some_and(|kib| kib > 0));
        assert!(open_files_limit().is_some_and(|n| n > 0));
    }

    #[test]
    fn cpu_ticks_of_a_gone_process_is_flagged_not_an_error() {
        let mut child = Command::new("true").spawn().expect("spawn true");
        let gone = child.id();
        child.wait().expect("wait");
        let (_, present) = cpu_ticks(&[std::process::id(), gone]).expect("readable");
        assert!(!present);
        assert!(cpu_ticks(&[std::process::id()]).expect("readable").1);
    }
}
