//! The rounds whose load is `servercore dummy-client`: echo, chat, open-loop chat, memory
//! and cluster.

use super::besides::{process_cpu_secs, Others};
use super::cluster_probe::{finish_probe, start_probe};
use super::servers::{tail, RunningServer, SWITCHES};
use super::tls_cert::TlsCert;
use super::Env;
use crate::report::Sample;
use crate::sys::CoreSet;
use crate::workloads::{Load, Workload};
use crate::{json, procfs};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Seconds a TLS or WebSocket round's dummy-client runs beyond `secs`: the driver sees the
/// sessions done with their handshakes a little after the client starts its window (see
/// `dummy_round`).
const TLS_EXTRA_SECS: f64 = 1.0;

/// Most messages in flight per session in the open-loop rows: far above what 20 msg/s at
/// millisecond latencies needs, so that the rate alone sets the pace.
const OPEN_LOOP_DEPTH: u32 = 16;

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Echo, chat, memory and cluster rounds: `servercore dummy-client` is the load.
///
/// The server's CPU time is sampled inside the client's measurement window (which starts
/// once every session is connected and lasts `secs`), leaving a margin at both ends, so that
/// connecting and closing the sessions is not charged to the messages.
///
/// Over TLS a session is connected once its handshake is done, which for thousands of
/// sessions takes a while after their TCP connections are established; the window then
/// starts once every session on the server's port has received data segments past its
/// handshake (`procfs::established_and_past_segs_on_port`), and the client runs
/// `TLS_EXTRA_SECS` longer so that its own window still covers the driver's. The same for
/// WebSocket, whose upgrade request is the first data segment.
///
/// Cluster workload: the dummy-client gets every node's address (sessions alternate
/// between them), the server's CPU is that of all its processes, and the latency probe
/// (`servercore-bench cluster-probe`, on the load's core) runs through the window.
pub(super) fn dummy_round(
    env: &Env,
    srv: &RunningServer,
    w: &Workload,
    cores: &CoreSet,
) -> Result<Sample, String> {
    let load = w.load;
    let base = srv.memory()?;
    let shape = client_shape(load);
    let sessions = shape.sessions;
    let tls = if w.tls { Some(env.tls.as_ref().ok_or("no TLS certificate")?) } else { None };
    let (mut client, log) = spawn_client(env, srv, w, tls, &shape, cores)?;
    let t_conn = wait_connected(&mut client, &log, srv, w, tls.is_some(), sessions)?;
    let probe = match load {
        Load::Cluster { .. } => Some(start_probe(env, srv, cores)?),
        _ => None,
    };
    let margin = Duration::from_secs_f64((env.secs * 0.1).clamp(0.05, 0.5));
    let window_end = t_conn + Duration::from_secs_f64(env.secs) - margin;
    let client_pid = client.id();
    let probe_pid = probe.as_ref().map(|p| p.child.id());
    // The load's CPU: the dummy-client's, and the probe's.
    let load_cpu = || process_cpu_secs(client_pid) + probe_pid.map_or(0.0, process_cpu_secs);
    sleep_until(t_conn + margin);
    let (c0, w0) = (srv.cpu_secs_each()?, Instant::now());
    let others0 = Others::sample(load_cpu());
    sleep_until(window_end);
    let (c1, w1) = (srv.cpu_secs_each()?, Instant::now());
    let others1 = Others::sample(load_cpu());
    let loaded = srv.memory()?;
    let probe = match probe {
        Some(p) => Some(finish_probe(p)?),
        None => None,
    };
    let out = client.wait_with_output().map_err(|e| format!("waiting for dummy-client: {e}"))?;
    let peak = srv.memory()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Err(format!("dummy-client ({}) printed no JSON: {}", out.status, tail(&log)));
    };
    if tls.is_some() && json::object(line, "tls").is_none() {
        return Err(format!("dummy-client reported no \"tls\" object: {line}"));
    }
    if w.ws && json::object(line, "websocket").is_none() {
        return Err(format!("dummy-client reported no \"websocket\" object: {line}"));
    }
    let num = |k: &str| json::number(line, k);
    // A chat client's messages are deliveries (every S_CHAT received); prefer the explicit
    // field if the client has one.
    let mut rate = num("deliveries_per_sec")
        .or_else(|| num("msgs_per_sec"))
        .ok_or_else(|| format!("no msgs_per_sec in {line}"))?;
    let wall = (w1 - w0).as_secs_f64().max(1e-9);
    let parts: Vec<f64> = c1.iter().zip(&c0).map(|(b, a)| (b - a) / wall).collect();
    let server_cpu_rate: f64 = parts.iter().sum();
    let rss_per_session = matches!(load, Load::Memory { .. })
        .then(|| loaded.rss_kib.saturating_sub(base.rss_kib) as f64 / sessions as f64);
    let mut errors = num("errors").unwrap_or(0.0) as u64;
    let mut first_error = json::string(line, "first_error");
    if let Some(p) = &probe {
        // The server's deliveries besides the dummy-client's: what the probe's sessions
        // received, and the probe's messages to every dummy session (which the dummy-client
        // counts as foreign, not as deliveries).
        rate += p.received_per_sec + p.sent_per_sec * f64::from(sessions);
        if p.errors > 0 {
            errors += p.errors;
            if first_error.is_none() {
                first_error = Some(format!("probe: {}", p.first_error.as_deref().unwrap_or("?")));
            }
        }
    }
    Ok(Sample {
        rate,
        p50_us: num("p50_us").unwrap_or(f64::NAN),
        p99_us: num("p99_us").unwrap_or(f64::NAN),
        // The dummy-client's JSON has no p99.9 yet: NaN ("-") until it has.
        p999_us: num("p999_us").or_else(|| num("p99_9_us")).unwrap_or(f64::NAN),
        cpu_per_unit_us: if rate > 0.0 { server_cpu_rate / rate * 1e6 } else { f64::NAN },
        server_cpu_util: server_cpu_rate,
        server_cpu_parts: parts,
        load_cpu_util: (others1.client - others0.client) / wall,
        peak_rss_kib: peak.hwm_kib,
        rss_per_session_kib: rss_per_session,
        errors,
        first_error,
        client_backend: json::string(line, "backend"),
        besides: others1.since(&others0, c1.iter().sum::<f64>() - c0.iter().sum::<f64>(), wall),
        probe: probe.map(|p| p.latency),
    })
}

/// What the dummy-client runs: `--mode`, `--sessions`, `--size` and `--depth`.
struct ClientShape {
    mode: &'static str,
    sessions: u32,
    size: u32,
    depth: u32,
}

/// The dummy-client's shape for `load`.
fn client_shape(load: Load) -> ClientShape {
    let (mode, sessions, size, depth) = match load {
        Load::Echo { sessions, size, depth } => ("echo", sessions, size, depth),
        Load::Chat { sessions, size } | Load::Cluster { sessions, size } => {
            ("chat", sessions, size, 1)
        }
        // Open loop: `OPEN_LOOP_DEPTH` in flight at most, so that the rate, not the replies,
        // sets the pace.
        Load::OpenChat { sessions, size, .. } => ("chat", sessions, size, OPEN_LOOP_DEPTH),
        Load::Memory { sessions, size } => ("echo", sessions, size, 1),
        Load::Churn { .. } | Load::Handshake { .. } => unreachable!("churn has its own round"),
    };
    ClientShape { mode, sessions, size, depth }
}

/// Starts the dummy-client against `srv` (its standard error to `client.log`), pinned to
/// `cores`.
fn spawn_client(
    env: &Env,
    srv: &RunningServer,
    w: &Workload,
    tls: Option<&TlsCert>,
    shape: &ClientShape,
    cores: &CoreSet,
) -> Result<(Child, PathBuf), String> {
    let load = w.load;
    let ClientShape { mode, sessions, size, depth } = *shape;
    let handshakes = tls.is_some() || w.ws;
    let client_secs = if handshakes { env.secs + TLS_EXTRA_SECS } else { env.secs };
    let mut cmd = Command::new(&env.servercore);
    cmd.arg("dummy-client");
    for addr in &srv.load_addrs {
        cmd.args(["--addr", &addr.to_string()]);
    }
    cmd.args(["--mode", mode])
        .args(["--sessions", &sessions.to_string(), "--size", &size.to_string()])
        .args(["--secs", &client_secs.to_string(), "--json", "--workers", "1"])
        .args(["--depth", &depth.to_string()])
        .env_remove("SERVERCORE_BACKEND");
    if let Some(t) = tls {
        cmd.arg("--tls").arg("--tls-ca").arg(&t.cert);
        cmd.args(["--tls-server-name", TlsCert::NAME]);
    }
    if w.ws {
        cmd.arg("--ws");
    }
    if let Load::OpenChat { rate, .. } = load {
        cmd.args(["--rate", &rate.to_string()]);
    }
    for name in SWITCHES {
        cmd.env_remove(name);
    }
    let log = env.logs.join("client.log");
    let log_file =
        File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    cores.apply(&mut cmd);
    let client = cmd.spawn().map_err(|e| format!("cannot start dummy-client: {e}"))?;
    Ok((client, log))
}

/// Waits until every session is established on the server's ports (over TLS: and has
/// received data segments past its handshake; over WebSocket: past its upgrade request);
/// returns when.
fn wait_connected(
    client: &mut Child,
    log: &Path,
    srv: &RunningServer,
    w: &Workload,
    tls: bool,
    sessions: u32,
) -> Result<Instant, String> {
    let handshakes = tls || w.ws;
    let mut ports: Vec<u16> = srv.load_addrs.iter().map(|a| a.port()).collect();
    ports.dedup();
    let past_segs = if tls { 3 } else { 2 };
    let poll = if sessions > 2000 { 50 } else { 5 };
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    let t_conn = loop {
        if let Ok(Some(status)) = client.try_wait() {
            return Err(format!("dummy-client exited early ({status}): {}", tail(log)));
        }
        let mut n = 0;
        for &port in &ports {
            n += if handshakes {
                procfs::established_and_past_segs_on_port(port, past_segs)
                    .map_err(|e| format!("reading TCP socket information (sock_diag): {e}"))?
                    .1
            } else {
                procfs::established_on_port(port)
                    .map_err(|e| format!("reading /proc/net/tcp: {e}"))?
            };
        }
        if n >= sessions as usize {
            break Instant::now();
        }
        if Instant::now() > connect_deadline {
            let _ = client.kill();
            let _ = client.wait();
            let what = match (tls, w.ws) {
                (true, _) => "past their TLS handshake",
                (false, true) => "past their WebSocket upgrade",
                (false, false) => "connected",
            };
            return Err(format!("only {n} of {sessions} sessions {what} after 30 s"));
        }
        std::thread::sleep(Duration::from_millis(poll));
    };
    Ok(t_conn)
}
