//! The server processes of a round: starting one pinned to its cores, waiting for its
//! readiness line, reading its CPU time and memory, stopping it.

use super::tls_cert::TlsCert;
use super::Env;
use crate::procfs;
use crate::sys::{self, CoreSet};
use crate::workloads::{Server, Workload};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The servercore switches that turn a technique off: never inherited by a full row.
pub(super) const SWITCHES: [&str; 3] = [
    "SERVERCORE_NO_ROOM_COALESCE",
    "SERVERCORE_URING_NO_DEFER_TASKRUN",
    "SERVERCORE_URING_NO_BUFRING",
];

/// `--tls-cert FILE --tls-key FILE`, for a TLS workload's server.
fn tls_server_args(cmd: &mut Command, tls: Option<&TlsCert>) {
    if let Some(t) = tls {
        cmd.arg("--tls-cert").arg(&t.cert).arg("--tls-key").arg(&t.key);
    }
}

/// A server process; killed when dropped. The cluster workload's server is three: the
/// first node is this one, the second node and nats-server are its `others`.
pub(super) struct RunningServer {
    pub(super) child: Child,
    pub(super) pid: u32,
    /// Where the load connects: the WebSocket listener in a WebSocket workload.
    pub(super) addr: SocketAddr,
    /// Every address the load connects to, `addr` first (a cluster: one per node).
    pub(super) load_addrs: Vec<SocketAddr>,
    pub(super) log: PathBuf,
    /// Processes whose CPU and memory count as the server's too; stopped after this one,
    /// in order.
    pub(super) others: Vec<RunningServer>,
}

impl RunningServer {
    /// A started process whose address is not known yet (read from its output next).
    pub(super) fn spawned(child: Child, pid: u32, log: PathBuf) -> Self {
        RunningServer {
            child,
            pid,
            addr: "0.0.0.0:0".parse().unwrap(),
            load_addrs: Vec::new(),
            log,
            others: Vec::new(),
        }
    }

    pub(super) fn start(
        env: &Env,
        w: &Workload,
        server: Server,
        cores: &CoreSet,
    ) -> Result<Self, String> {
        let chat = w.load.is_chat();
        let tls = if w.tls { Some(env.tls.as_ref().ok_or("no TLS certificate")?) } else { None };
        let ws_args = |c: &mut Command| {
            if w.ws {
                c.args(["--ws-addr", "127.0.0.1:0"]);
            }
        };
        // Both chat servers take `--rooms N` (session n in room n mod N); left out for one
        // room, so that a one-room row runs any build.
        let rooms_args = |c: &mut Command| {
            if chat && w.load.rooms() > 1 {
                c.args(["--rooms", &w.load.rooms().to_string()]);
            }
        };
        let cmd = match server {
            Server::Baseline => {
                let bin = env.baseline.as_ref().ok_or("no baseline binary")?;
                let mut c = Command::new(bin);
                c.arg(if chat { "chat-server" } else { "echo-server" })
                    .args(["--addr", "127.0.0.1:0", "--workers", "1"])
                    .env("SERVERCORE_BACKEND", "io_uring");
                for name in SWITCHES {
                    c.env_remove(name);
                }
                tls_server_args(&mut c, tls);
                ws_args(&mut c);
                rooms_args(&mut c);
                c
            }
            Server::Servercore { backend, workers, without } => {
                let mut c = Command::new(&env.servercore);
                c.arg(if chat { "chat-server" } else { "echo-server" })
                    .args(["--addr", "127.0.0.1:0", "--workers", &workers.to_string()])
                    .env("SERVERCORE_BACKEND", backend);
                for name in SWITCHES {
                    c.env_remove(name);
                }
                if let Some(a) = without {
                    c.args(a.args(chat)).envs(a.env().iter().copied());
                }
                tls_server_args(&mut c, tls);
                ws_args(&mut c);
                rooms_args(&mut c);
                c
            }
            Server::Tokio => {
                let mut c = Command::new(&env.me);
                let name = match (chat, tls.is_some(), w.ws) {
                    (false, false, false) => "tokio-echo",
                    (true, false, false) => "tokio-chat",
                    (false, true, _) => "tokio-tls-echo",
                    (true, true, _) => "tokio-tls-chat",
                    (false, false, true) => "tokio-ws-echo",
                    (true, false, true) => "tokio-ws-chat",
                };
                c.arg0("servercore-bench").arg(name).args(["--addr", "127.0.0.1:0"]);
                tls_server_args(&mut c, tls);
                rooms_args(&mut c);
                c
            }
            Server::Bare => {
                let mut c = Command::new(&env.me);
                c.arg0("servercore-bench").args(["bare-echo", "--addr", "127.0.0.1:0"]);
                c
            }
            Server::Cluster => return Self::start_cluster(env, cores),
        };
        let started = Self::spawn(env, cmd, &server.label_in(w), "server.log", w.ws, cores)?;
        if let Server::Servercore { backend, .. } = server {
            let line = &started.ready_line;
            if !line.contains(&format!("backend: {backend}")) {
                return Err(format!("asked for backend {backend}, server says: {line}"));
            }
        }
        // "listening on ADDR (backend: B, workers: N, tls)"
        if w.tls && !started.ready_line.contains(", tls") {
            return Err(format!("asked for TLS, server says: {}", started.ready_line));
        }
        Ok(started.running)
    }

    /// Starts `cmd` (pinned to `cores`, standard error to `log_name`) and waits for its
    /// readiness line: the WebSocket listener's with `ws`, else the first.
    pub(super) fn spawn(
        env: &Env,
        mut cmd: Command,
        label: &str,
        log_name: &str,
        ws: bool,
        cores: &CoreSet,
    ) -> Result<Started, String> {
        let log = env.logs.join(log_name);
        let log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
        cores.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {label}: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Every readiness line (one per listener), then nothing: the rest is drained.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening on ") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut running = RunningServer::spawned(child, pid, log);
        // "listening on 127.0.0.1:PORT (backend: B, workers: N[, tls][, websocket])"
        let deadline = Instant::now() + Duration::from_secs(15);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                return Err(format!(
                    "{label} printed no {}readiness line; its log: {}",
                    if ws { "WebSocket " } else { "" },
                    running.log_tail()
                ));
            };
            if line.trim_end().ends_with("websocket)") == ws {
                break line;
            }
        };
        let addr_text = line["listening on ".len()..].split_whitespace().next().unwrap_or("");
        running.addr = addr_text
            .parse()
            .map_err(|e| format!("bad address in readiness line {line:?}: {e}"))?;
        running.load_addrs = vec![running.addr];
        Ok(Started { running, ready_line: line })
    }

    /// CPU seconds so far of each process: this one first, then `others`.
    pub(super) fn cpu_secs_each(&self) -> Result<Vec<f64>, String> {
        let mut v = vec![cpu_secs(self.pid)?];
        for o in &self.others {
            v.push(cpu_secs(o.pid)?);
        }
        Ok(v)
    }

    /// CPU seconds so far, all processes together.
    pub(super) fn cpu_secs(&self) -> Result<f64, String> {
        Ok(self.cpu_secs_each()?.iter().sum())
    }

    /// Memory of all processes together.
    pub(super) fn memory(&self) -> Result<procfs::Memory, String> {
        let mut m = memory(self.pid)?;
        for o in &self.others {
            let n = memory(o.pid)?;
            m.rss_kib += n.rss_kib;
            m.hwm_kib += n.hwm_kib;
        }
        Ok(m)
    }

    pub(super) fn log_tail(&self) -> String {
        let mut t = tail(&self.log);
        for o in &self.others {
            let name = o.log.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            t = format!("{t}; {name}: {}", tail(&o.log));
        }
        t
    }

    pub(super) fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        sys::signal(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server just started, with its readiness line.
pub(super) struct Started {
    pub(super) running: RunningServer,
    pub(super) ready_line: String,
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The last lines of a log file, for error messages.
pub(super) fn tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(5);
    let t = lines[from..].join(" | ");
    if t.is_empty() {
        "(empty)".into()
    } else {
        t
    }
}

fn cpu_secs(pid: u32) -> Result<f64, String> {
    procfs::cpu_ticks(pid)
        .map(|t| t as f64 / procfs::clock_ticks_per_sec())
        .map_err(|e| format!("reading server CPU time: {e}"))
}

fn memory(pid: u32) -> Result<procfs::Memory, String> {
    procfs::memory(pid).map_err(|e| format!("reading server memory: {e}"))
}
