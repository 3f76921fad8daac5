//! One round: wait for a quiet machine, start the server, load it, measure, stop it; re-run
//! when other processes disturbed it.

use super::churn_round::churn_round;
use super::dummy_round::dummy_round;
use super::servers::RunningServer;
use super::Env;
use crate::procfs;
use crate::report::Sample;
use crate::workloads::{Load, Server, Workload};
use std::time::{Duration, Instant};

/// CPU (in cores) used by the whole machine over `over`.
fn machine_busy_cores(over: Duration) -> f64 {
    let tck = procfs::clock_ticks_per_sec();
    let a = procfs::machine_ticks().unwrap_or_default().busy;
    let t = Instant::now();
    std::thread::sleep(over);
    let b = procfs::machine_ticks().unwrap_or_default().busy;
    b.saturating_sub(a) as f64 / tck / t.elapsed().as_secs_f64()
}

/// Waits until other processes leave the machine (nearly) idle, for at most
/// `env.quiet_wait`; returns how busy it still was when the wait ended.
fn wait_for_quiet(env: &Env) -> f64 {
    let start = Instant::now();
    let mut said = false;
    loop {
        let busy = machine_busy_cores(Duration::from_millis(500));
        if busy <= env.allowed_foreign() || start.elapsed() >= env.quiet_wait {
            if said {
                eprintln!(
                    "  .. machine quiet after {:.0} s (busy {busy:.2} cores)",
                    start.elapsed().as_secs_f64()
                );
            }
            return busy;
        }
        if !said {
            eprintln!("  .. waiting for other processes to quiet down ({busy:.2} cores busy)");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A workload's rounds: `rounds` rounds of each server in turn (A B A B ..), each logged as
/// it ends; the samples per server.
pub(super) fn run_rounds(
    env: &Env,
    w: &Workload,
    servers: &[Server],
    rounds: u32,
) -> Vec<Vec<Result<Sample, String>>> {
    let mut samples: Vec<Vec<Result<Sample, String>>> = vec![Vec::new(); servers.len()];
    for round in 1..=rounds {
        for (i, &server) in servers.iter().enumerate() {
            let result = run_round(env, w, server);
            match &result {
                Ok(s) => eprintln!(
                    "[{}] round {round}/{rounds} {}: {}",
                    w.key,
                    server.label_in(w),
                    s.brief(w.load)
                ),
                Err(e) => {
                    eprintln!(
                        "[{}] round {round}/{rounds} {}: FAILED: {e}",
                        w.key,
                        server.label_in(w)
                    )
                }
            }
            samples[i].push(result);
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    samples
}

/// One round, re-run (twice at most) when other processes disturbed it.
fn run_round(env: &Env, w: &Workload, server: Server) -> Result<Sample, String> {
    let mut attempt = 0;
    loop {
        wait_for_quiet(env);
        let sample = run_round_once(env, w, server)?;
        if sample.besides.foreign <= env.allowed_foreign() || attempt == 2 {
            return Ok(sample);
        }
        attempt += 1;
        eprintln!(
            "  .. {} round disturbed: other processes used {:.2} cores; running it again",
            server.label_in(w),
            sample.besides.foreign
        );
    }
}

/// One round: start the server, load it, measure, stop it.
fn run_round_once(env: &Env, w: &Workload, server: Server) -> Result<Sample, String> {
    let (server_cores, load_cores) = env.cores_for(server);
    let srv = RunningServer::start(env, w, server, &server_cores)?;
    std::thread::sleep(Duration::from_millis(200));
    let result = match w.load {
        Load::Churn { wave } => churn_round(env, &srv, wave, None, &load_cores),
        Load::Handshake { wave } => {
            let tls = env.tls.as_ref().ok_or("no TLS certificate")?;
            churn_round(env, &srv, wave, Some(tls), &load_cores)
        }
        _ => dummy_round(env, &srv, w, &load_cores),
    };
    let result = result.map_err(|e| format!("{e}; server log: {}", srv.log_tail()));
    srv.stop();
    result
}
