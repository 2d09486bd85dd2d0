//! A real `redis-server` on a free loopback port, for the shared rate-limit tests: started, stopped
//! and restarted on the same port, with a minimal RESP client to inspect it.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use crate::process::Proc;
use crate::TIMEOUT;

/// How often a free port is tried when another process takes the one picked first.
const START_ATTEMPTS: usize = 3;

/// Longest a single PING (connect, write, read) may take while waiting for the server.
const PING_TIMEOUT: Duration = Duration::from_millis(500);

/// A running `redis-server --port P --bind 127.0.0.1 --save "" --appendonly no` (nothing persisted:
/// a restart comes back empty). Killed on drop.
pub struct RedisServer {
    port: u16,
    /// `--requirepass`, when started with one.
    password: Option<String>,
    /// A TLS port beside the plain one, and the certificate and key it serves.
    tls: Option<Tls>,
    /// The cluster bus port of a node started by [`RedisCluster::start`].
    cluster_port: Option<u16>,
    proc: Option<Proc>,
}

#[derive(Clone)]
struct Tls {
    port: u16,
    cert: PathBuf,
    key: PathBuf,
}

impl RedisServer {
    /// Starts a server on a free loopback port and waits (up to [`TIMEOUT`]) until it answers PING.
    ///
    /// # Panics
    /// If `redis-server` is not on `PATH` (with how to install it), or it does not come up; the
    /// message then holds what it printed.
    pub fn start() -> RedisServer {
        RedisServer::start_with(None, None, false)
    }

    /// Like [`RedisServer::start`], for a server that requires `password` (`--requirepass`).
    /// [`RedisServer::command`] does not authenticate, so it cannot be used on this one.
    pub fn with_password(password: &str) -> RedisServer {
        RedisServer::start_with(Some(password.to_owned()), None, false)
    }

    /// Like [`RedisServer::start`], also serving TLS (`--tls-port`, no client certificates) with
    /// the PEM certificate and key files given; [`RedisServer::tls_url`] names that port.
    pub fn with_tls(cert: &Path, key: &Path) -> RedisServer {
        RedisServer::start_with(None, Some((cert, key)), false)
    }

    fn start_with(password: Option<String>, tls_files: Option<(&Path, &Path)>, cluster: bool) -> RedisServer {
        let binary = redis_server_binary();
        let mut last_failure = String::new();
        for _ in 0..START_ATTEMPTS {
            let port = crate::closed_port_addr().port();
            let tls = tls_files.map(|(cert, key)| Tls {
                port: crate::closed_port_addr().port(),
                cert: cert.to_owned(),
                key: key.to_owned(),
            });
            let cluster_port = cluster.then(|| crate::closed_port_addr().port());
            match spawn_and_wait(&binary, port, password.as_deref(), tls.as_ref(), cluster_port) {
                Ok(proc) => return RedisServer { port, password, tls, cluster_port, proc: Some(proc) },
                // Most likely the port was taken between picking it and the server binding it.
                Err(failure) => last_failure = failure,
            }
        }
        panic!("redis-server did not start in {START_ATTEMPTS} attempts; last:\n{last_failure}");
    }

    /// `redis://[:password@]127.0.0.1:P`, the gateway's `redis.url`.
    pub fn url(&self) -> String {
        match &self.password {
            Some(password) => format!("redis://:{password}@{}", self.addr()),
            None => format!("redis://{}", self.addr()),
        }
    }

    /// `rediss://127.0.0.1:T`, the TLS port of a server started [`RedisServer::with_tls`].
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().unwrap_or_else(|| panic!("this redis-server was not started with TLS"));
        format!("rediss://127.0.0.1:{}", tls.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:P`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// True while the server process runs (between [`RedisServer::start`] or
    /// [`RedisServer::restart`] and [`RedisServer::stop`]).
    pub fn is_running(&self) -> bool {
        self.proc.is_some()
    }

    /// Kills the server (SIGKILL, like a crash or a lost host) and waits for it to exit. Clients'
    /// connections are reset; the port is free afterwards.
    pub fn stop(&mut self) {
        // Proc's drop kills and reaps the child.
        self.proc = None;
    }

    /// Starts the server again on the same port (stopping it first if it runs) and waits until it
    /// answers PING. It comes back with no keys.
    ///
    /// # Panics
    /// If it does not come up within [`TIMEOUT`] (say, another process took the port meanwhile).
    pub fn restart(&mut self) {
        self.stop();
        let binary = redis_server_binary();
        let proc = spawn_and_wait(&binary, self.port, self.password.as_deref(), self.tls.as_ref(), self.cluster_port)
            .unwrap_or_else(|failure| panic!("redis-server did not restart on port {}:\n{failure}", self.port));
        self.proc = Some(proc);
    }

    /// Sends one command (each argument a bulk string) on a new connection and returns its reply:
    /// the text of a simple string (`+OK` -> `OK`) or integer (`:3` -> `3`), a bulk string's content,
    /// or `nil`. Panics on an error reply, an array reply, or no reply within [`TIMEOUT`].
    pub fn command(&self, args: &[&str]) -> String {
        let what = args.join(" ");
        let mut stream = connect(self.addr(), TIMEOUT).unwrap_or_else(|e| panic!("redis {what}: connecting: {e}"));
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).unwrap_or_else(|e| panic!("redis {what}: writing: {e}"));
        read_reply(&mut BufReader::new(stream)).unwrap_or_else(|e| panic!("redis {what}: {e}"))
    }

    /// How many keys the database holds (`DBSIZE`).
    pub fn key_count(&self) -> u64 {
        let reply = self.command(&["DBSIZE"]);
        reply.parse().unwrap_or_else(|e| panic!("DBSIZE answered {reply:?}: {e}"))
    }

    /// Removes every key (`FLUSHALL`).
    pub fn flush_all(&self) {
        let reply = self.command(&["FLUSHALL"]);
        assert_eq!(reply, "OK", "FLUSHALL answered {reply:?}");
    }
}

/// A Redis Cluster of three masters (no replicas) on free loopback ports, the 16,384 slots split
/// as `redis-cli --cluster create` splits them: 0-5460, 5461-10922, 10923-16383. Killed on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the nodes, gives each its slots, introduces them, and waits (up to [`TIMEOUT`])
    /// until every node says `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..3).map(|_| RedisServer::start_with(None, None, true)).collect();
        for (node, (first, last)) in nodes.iter().zip([(0, 5460), (5461, 10922), (10923, 16383)]) {
            let reply = node.command(&["CLUSTER", "ADDSLOTSRANGE", &first.to_string(), &last.to_string()]);
            assert_eq!(reply, "OK", "CLUSTER ADDSLOTSRANGE answered {reply:?}");
        }
        for other in &nodes[1..] {
            let bus = other.cluster_port.map(|port| port.to_string()).unwrap_or_default();
            let reply = nodes[0].command(&["CLUSTER", "MEET", "127.0.0.1", &other.port.to_string(), &bus]);
            assert_eq!(reply, "OK", "CLUSTER MEET answered {reply:?}");
        }
        let deadline = Instant::now() + TIMEOUT;
        while !nodes.iter().all(|node| node.command(&["CLUSTER", "INFO"]).contains("cluster_state:ok")) {
            assert!(Instant::now() < deadline, "the Redis Cluster was not ready within {TIMEOUT:?}");
            thread::sleep(Duration::from_millis(50));
        }
        RedisCluster { nodes }
    }

    /// `redis://127.0.0.1:P` of the first node, the gateway's `redis.url` with `cluster: true`.
    pub fn url(&self) -> String {
        self.nodes[0].url()
    }

    /// How many keys each node holds, in slot order.
    pub fn key_counts(&self) -> Vec<u64> {
        self.nodes.iter().map(RedisServer::key_count).collect()
    }

    /// Kills node `index` (0 to 2, in slot order), as [`RedisServer::stop`] does.
    pub fn stop_node(&mut self, index: usize) {
        self.nodes[index].stop();
    }
}

/// Finds `redis-server` on `PATH`, or panics saying how to install it.
fn redis_server_binary() -> PathBuf {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).map(|dir| dir.join("redis-server")).find(|p| is_executable(p)));
    match found.flatten() {
        Some(path) => path,
        None => panic!("redis-server not found on PATH: install it (Debian: apt-get install redis-server)"),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Spawns the server on `port` and waits until it answers PING; on failure it is killed and the
/// error holds its output.
fn spawn_and_wait(
    binary: &Path,
    port: u16,
    password: Option<&str>,
    tls: Option<&Tls>,
    cluster_port: Option<u16>,
) -> Result<Proc, String> {
    let mut command = Command::new(binary);
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        // Whatever it might write lands in the temp dir, never in the source tree.
        .args(["--dir", &std::env::temp_dir().to_string_lossy()]);
    if let Some(password) = password {
        command.args(["--requirepass", password]);
    }
    if let Some(cluster_port) = cluster_port {
        // A node's state file; one left by an earlier run on this port would restore that cluster.
        let nodes = std::env::temp_dir().join(format!("e2e-redis-nodes-{port}.conf"));
        let _ = std::fs::remove_file(&nodes);
        command.args(["--cluster-enabled", "yes", "--cluster-port", &cluster_port.to_string()]);
        command.arg("--cluster-config-file").arg(&nodes);
    }
    if let Some(tls) = tls {
        command.args(["--tls-port", &tls.port.to_string(), "--tls-auth-clients", "no"]);
        command.arg("--tls-cert-file").arg(&tls.cert).arg("--tls-key-file").arg(&tls.key);
    }
    let mut proc = Proc::spawn(format!("redis-server (port {port})"), command);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(Some(_)) = proc.child.try_wait() {
            // Let the reader threads catch its last words.
            thread::sleep(Duration::from_millis(50));
            return Err(proc.failure("exited before answering PING"));
        }
        if ping(addr) {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            return Err(proc.failure(&format!("did not answer PING within {TIMEOUT:?}")));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// True if a server at `addr` answers `PING` like Redis: `+PONG`, or `-NOAUTH` when it requires a
/// password.
fn ping(addr: SocketAddr) -> bool {
    let Ok(mut stream) = connect(addr, PING_TIMEOUT) else { return false };
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).is_ok() && (line.trim_end() == "+PONG" || line.starts_with("-NOAUTH"))
}

fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    Ok(stream)
}

/// Reads one RESP reply that is not an array.
fn read_reply(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    reader.read_line(&mut line).map_err(|e| format!("reading the reply: {e}"))?;
    let line = line.trim_end_matches("\r\n");
    let (kind, rest) = line.split_at(line.len().min(1));
    match kind {
        "+" | ":" => Ok(rest.to_owned()),
        "-" => Err(format!("error reply: {rest}")),
        "$" if rest == "-1" => Ok("nil".to_owned()),
        "$" => {
            let length: usize = rest.parse().map_err(|e| format!("bad bulk length {rest:?}: {e}"))?;
            let mut bytes = vec![0; length + 2];
            reader.read_exact(&mut bytes).map_err(|e| format!("reading a bulk string: {e}"))?;
            bytes.truncate(length);
            Ok(String::from_utf8_lossy(&bytes).into_owned())
        }
        _ => Err(format!("unsupported reply {line:?} (arrays are not read by this helper)")),
    }
}
