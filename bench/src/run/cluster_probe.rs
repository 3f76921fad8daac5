//! The cluster round's latency probe (`servercore-bench cluster-probe`): starting it, and
//! reading what it measured.

use super::servers::{tail, RunningServer};
use super::Env;
use crate::json;
use crate::report::ProbeLatency;
use crate::sys::CoreSet;
use crate::workloads::PROBE_RATE;
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

/// The latency probe of a cluster round, running.
pub(super) struct RunningProbe {
    pub(super) child: Child,
    log: PathBuf,
}

/// What a cluster round's probe measured.
pub(super) struct ProbeOutcome {
    pub(super) latency: ProbeLatency,
    pub(super) sent_per_sec: f64,
    pub(super) received_per_sec: f64,
    pub(super) errors: u64,
    pub(super) first_error: Option<String>,
}

/// `servercore-bench cluster-probe` with one session per node (the single server's
/// address twice), on the load's core, for the round's `secs`.
pub(super) fn start_probe(
    env: &Env,
    srv: &RunningServer,
    cores: &CoreSet,
) -> Result<RunningProbe, String> {
    let mut cmd = Command::new(&env.me);
    cmd.arg0("servercore-bench").arg("cluster-probe");
    let addrs =
        if srv.load_addrs.len() >= 2 { srv.load_addrs.clone() } else { vec![srv.addr, srv.addr] };
    for a in &addrs {
        cmd.args(["--addr", &a.to_string()]);
    }
    cmd.args(["--rate", &PROBE_RATE.to_string(), "--secs", &env.secs.to_string()]);
    let log = env.logs.join("probe.log");
    let log_file =
        File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    cores.apply(&mut cmd);
    let child = cmd.spawn().map_err(|e| format!("cannot start cluster-probe: {e}"))?;
    Ok(RunningProbe { child, log })
}

pub(super) fn finish_probe(p: RunningProbe) -> Result<ProbeOutcome, String> {
    let out = p.child.wait_with_output().map_err(|e| format!("waiting for cluster-probe: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Err(format!("cluster-probe ({}) printed no JSON: {}", out.status, tail(&p.log)));
    };
    let num = |k: &str| json::number(line, k);
    let part = |k: &str, q: &str| json::object(line, k).and_then(|o| json::number(o, q));
    Ok(ProbeOutcome {
        latency: ProbeLatency {
            local_p50_us: part("local", "p50_us").unwrap_or(f64::NAN),
            local_p99_us: part("local", "p99_us").unwrap_or(f64::NAN),
            cross_p50_us: part("cross", "p50_us").unwrap_or(f64::NAN),
            cross_p99_us: part("cross", "p99_us").unwrap_or(f64::NAN),
        },
        sent_per_sec: num("sent_per_sec").unwrap_or(0.0),
        received_per_sec: num("received_per_sec").unwrap_or(0.0),
        errors: num("errors").unwrap_or(0.0) as u64,
        first_error: json::string(line, "first_error"),
    })
}
