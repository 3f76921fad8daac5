//! The cluster workload's server: nats-server and two chat server nodes attached to it.

use super::servers::{RunningServer, SWITCHES};
use super::Env;
use crate::procfs;
use crate::sys::CoreSet;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The NATS server of the cluster workload.
pub(super) const NATS_SERVER: &str = "nats-server";

impl RunningServer {
    /// nats-server, then two 1-worker io_uring chat servers attached to it (`--cluster
    /// nats://.. --node a|b`), all on `cores`; returns once both nodes' links to NATS are
    /// connected.
    pub(super) fn start_cluster(env: &Env, cores: &CoreSet) -> Result<Self, String> {
        let nats = Self::spawn_nats(env, cores)?;
        let url = format!("nats://{}", nats.addr);
        let mut nodes = Vec::new();
        for (node, log) in [("a", "server.log"), ("b", "server-b.log")] {
            let mut c = Command::new(&env.servercore);
            c.args(["chat-server", "--addr", "127.0.0.1:0", "--workers", "1"])
                .args(["--cluster", &url, "--node", node])
                .env("SERVERCORE_BACKEND", "io_uring");
            for name in SWITCHES {
                c.env_remove(name);
            }
            let label = format!("cluster node {node}");
            let started = Self::spawn(env, c, &label, log, false, cores)?;
            if !started.ready_line.contains("backend: io_uring") {
                return Err(format!("asked for io_uring, {label} says: {}", started.ready_line));
            }
            nodes.push(started.running);
        }
        // Both nodes' links to NATS connected (a node's readiness line is about its
        // listener; its link may come up just after).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let links = procfs::established_on_port(nats.addr.port())
                .map_err(|e| format!("reading TCP socket information: {e}"))?;
            if links >= 2 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {links} of 2 nodes connected to nats-server after 10 s; node a: {}; \
                     node b: {}",
                    nodes[0].log_tail(),
                    nodes[1].log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let b = nodes.pop().ok_or("no node b")?;
        let mut a = nodes.pop().ok_or("no node a")?;
        a.load_addrs = vec![a.addr, b.addr];
        a.others = vec![b, nats];
        Ok(a)
    }

    /// `nats-server -a 127.0.0.1 -p -1` (a free port), pinned to `cores`; its log (standard
    /// error) goes to `nats.log`; returns once it says it is ready.
    fn spawn_nats(env: &Env, cores: &CoreSet) -> Result<Self, String> {
        let log = env.logs.join("nats.log");
        let mut log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(NATS_SERVER);
        cmd.args(["-a", "127.0.0.1", "-p", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cores.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {NATS_SERVER}: {e}"))?;
        let pid = child.id();
        let stderr = child.stderr.take().ok_or("no nats-server stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut addr = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if addr.is_none() {
                    addr = nats_client_addr(&line);
                }
                if line.contains("Server is ready") {
                    if let Some(a) = addr.take() {
                        let _ = tx.send(a);
                    }
                }
            }
        });
        let mut running = RunningServer::spawned(child, pid, log);
        running.addr = rx.recv_timeout(Duration::from_secs(15)).map_err(|_| {
            format!("{NATS_SERVER} did not say it is ready; its log: {}", running.log_tail())
        })?;
        Ok(running)
    }
}

/// The client address in nats-server's line "Listening for client connections on
/// 127.0.0.1:PORT".
fn nats_client_addr(line: &str) -> Option<SocketAddr> {
    const SAYS: &str = "Listening for client connections on ";
    let at = line.find(SAYS)? + SAYS.len();
    line[at..].split_whitespace().next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_readiness() {
        let line = "[4242] 2026/11/30 08:00:00.000000 [INF] Listening for client connections on \
                    127.0.0.1:41234";
        assert_eq!(nats_client_addr(line), Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(nats_client_addr("[4242] [INF] Server is ready"), None);
    }
}
