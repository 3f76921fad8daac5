//! The churn rounds: connect, echo one byte, close (over TLS: a full handshake each).

use super::besides::Others;
use super::servers::{tail, RunningServer};
use super::tls_cert::TlsCert;
use super::Env;
use crate::json;
use crate::report::Sample;
use crate::sys::{self, CoreSet};
use std::fs::File;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Churn: `servercore-bench churn-client` (TLS handshakes: `tls-churn-client`) is the load;
/// the server's CPU is sampled right before and right after it.
pub(super) fn churn_round(
    env: &Env,
    srv: &RunningServer,
    wave: u32,
    tls: Option<&TlsCert>,
    cores: &CoreSet,
) -> Result<Sample, String> {
    let mut cmd = Command::new(&env.me);
    cmd.arg0("servercore-bench")
        .arg(if tls.is_some() { "tls-churn-client" } else { "churn-client" })
        .args(["--addr", &srv.addr.to_string(), "--wave", &wave.to_string()])
        .args(["--secs", &env.secs.to_string()]);
    if tls.is_some() {
        // The client does not verify the certificate (the lightest load); SNI names it.
        cmd.args(["--tls-server-name", TlsCert::NAME]);
    }
    let log = env.logs.join("client.log");
    let log_file =
        File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    cores.apply(&mut cmd);
    // The client's CPU: what this process's reaped children used, before and after it.
    let others0 = Others::sample(sys::reaped_children_cpu_secs());
    let (c0, w0) = (srv.cpu_secs()?, Instant::now());
    let out = cmd.output().map_err(|e| format!("cannot run churn-client: {e}"))?;
    let (c1, w1) = (srv.cpu_secs()?, Instant::now());
    let others1 = Others::sample(sys::reaped_children_cpu_secs());
    let besides = others1.since(&others0, c1 - c0, (w1 - w0).as_secs_f64());
    let peak = srv.memory()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Err(format!("churn-client ({}) printed no JSON: {}", out.status, tail(&log)));
    };
    let num = |k: &str| json::number(line, k);
    let cycles = num("cycles").unwrap_or(0.0);
    let rate = num("cycles_per_sec").unwrap_or(0.0);
    Ok(Sample {
        rate,
        p50_us: num("p50_us").unwrap_or(f64::NAN),
        p99_us: num("p99_us").unwrap_or(f64::NAN),
        p999_us: f64::NAN,
        cpu_per_unit_us: if cycles > 0.0 { (c1 - c0) / cycles * 1e6 } else { f64::NAN },
        server_cpu_util: (c1 - c0) / (w1 - w0).as_secs_f64().max(1e-9),
        server_cpu_parts: Vec::new(),
        load_cpu_util: (others1.client - others0.client) / (w1 - w0).as_secs_f64().max(1e-9),
        peak_rss_kib: peak.hwm_kib,
        rss_per_session_kib: None,
        errors: num("errors").unwrap_or(0.0) as u64,
        first_error: json::string(line, "first_error"),
        client_backend: None,
        besides,
        probe: None,
    })
}
