//! The driver: builds servercore, then for every workload starts each server in turn (A B A B
//! ..) pinned to its core, loads it from another core, measures, and prints the table.

mod besides;
mod capabilities;
mod churn_round;
mod cluster;
mod cluster_probe;
mod dummy_round;
mod round;
mod servers;
mod tls_cert;

use crate::report::{self, Outcome};
use crate::sys::CoreSet;
use crate::workloads::{servers_for, workloads, Load, Server, Workload, IO_URING};
use crate::{procfs, sys};
use capabilities::Missing;
use clap::Args;
use round::run_rounds;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tls_cert::TlsCert;

/// `servercore-bench run` options.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Smoke run: 1 round of 1 s per server and workload (unless --rounds/--secs say otherwise).
    #[arg(long)]
    pub quick: bool,
    /// Rounds per server and workload (default 5; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// Seconds of load per round (default 3; 1 with --quick).
    #[arg(long)]
    pub secs: Option<f64>,
    /// Also write the report (markdown) to this file.
    #[arg(long)]
    pub markdown_out: Option<PathBuf>,
    /// Also write the ratio chart (SVG: servercore / each reference, a bar per workload) to
    /// this file (default with --markdown-out F: F with extension .svg). The report links it
    /// below its header: by file name when beside F, else as given (for BENCHMARKS.md, from
    /// the workspace root: docs/bench-ratios.svg).
    #[arg(long)]
    pub chart_out: Option<PathBuf>,
    /// Only these workloads (comma-separated keys: echo-64-d1, echo-64-d16, echo-1k, chat-100,
    /// chat-1000, memory, churn; open loop: latency-chat-100, latency-chat-1000-10rooms; TLS: tls-echo-64-d1, tls-echo-1k, tls-chat-100,
    /// tls-chat-1000, tls-handshake, tls-memory; WebSocket: ws-echo-64-d1, ws-chat-100,
    /// ws-chat-1000, ws-memory; cluster: cluster-chat).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Leave out the TLS workloads (issue 13).
    #[arg(long)]
    pub no_tls: bool,
    /// Leave out the WebSocket workloads (issue 14).
    #[arg(long)]
    pub no_ws: bool,
    /// Leave out the cluster workload (issue 15).
    #[arg(long)]
    pub no_cluster: bool,
    /// Leave out the bare io_uring echo loop (`servercore-bench bare-echo`, issue 16) from
    /// the echo workloads.
    #[arg(long)]
    pub no_bare: bool,
    /// Leave out the servercore rows with 2 workers (the scale target).
    #[arg(long)]
    pub no_scale: bool,
    /// Leave out the rows that switch one io_uring technique off (before/after figures).
    #[arg(long)]
    pub no_ablation: bool,
    /// The servercore binary (default: `<workspace>/target/release/servercore`, built first).
    #[arg(long)]
    pub servercore_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p servercore-cli` first.
    #[arg(long)]
    pub no_build: bool,
    /// Another servercore binary (an earlier build) to measure as one more io_uring row in
    /// the same alternation: a before/after of a change, from one run.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// Before each round, wait up to this many seconds for other processes to leave the
    /// machine idle (a round is also re-run, twice at most, when other processes took more
    /// than --busy-cores during it).
    #[arg(long, default_value_t = 900.0)]
    pub quiet_wait: f64,
    /// CPU (in cores) that other processes may use during a round before it counts as
    /// disturbed.
    #[arg(long, default_value_t = 0.05)]
    pub busy_cores: f64,
}

/// Paths and facts the rounds need.
struct Env {
    servercore: PathBuf,
    baseline: Option<PathBuf>,
    me: PathBuf,
    logs: PathBuf,
    cores: usize,
    secs: f64,
    quiet_wait: Duration,
    busy_cores: f64,
    /// The certificate of the TLS workloads, when any is selected.
    tls: Option<TlsCert>,
}

impl Env {
    /// CPU (cores) other processes may use during a round: --busy-cores, plus what CPU time
    /// sampled in clock ticks (4 counters, each +-1 tick) can show over a window of nothing.
    fn allowed_foreign(&self) -> f64 {
        self.busy_cores + 4.0 / procfs::clock_ticks_per_sec() / (self.secs * 0.8)
    }

    /// Server on cores 0..workers; load on the next core, or the last one when there is none.
    fn cores_for(&self, server: Server) -> (CoreSet, CoreSet) {
        let w = (server.workers() as usize).min(self.cores).max(1);
        let server_cores: Vec<usize> = (0..w).collect();
        let load = if self.cores > w { w } else { self.cores - 1 };
        (CoreSet::new(&server_cores), CoreSet::new(&[load]))
    }
}

pub fn run(args: RunArgs) -> Result<(), String> {
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 });
    let secs = args.secs.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    if !(secs.is_finite() && secs >= 0.5) {
        return Err(format!("--secs must be at least 0.5, got {secs}"));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("bench crate has no parent directory")?
        .to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let servercore = args
        .servercore_bin
        .clone()
        .unwrap_or_else(|| target_dir.join("release").join("servercore"));
    if !args.no_build && args.servercore_bin.is_none() {
        build_servercore(&root, &servercore)?;
    }
    if !servercore.exists() {
        return Err(format!("servercore binary not found at {}", servercore.display()));
    }
    // Children of the driver run this very binary through /proc/self/exe, which stays valid
    // even if cargo replaces the file on disk during the run.
    let me = PathBuf::from("/proc/self/exe");
    let logs = target_dir.join("servercore-bench");
    fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    let header_bin = servercore.clone();
    let servercore = snapshot(&logs, &servercore)?;
    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let cores = sys::online_cores();
    let quiet_wait = Duration::from_secs_f64(args.quiet_wait.max(0.0));
    let baseline = copy_baseline(&logs, args.baseline_bin.as_deref())?;
    let busy_cores = args.busy_cores;

    let selected = select_workloads(&args)?;
    let tls = if selected.iter().any(|w| w.tls) { Some(TlsCert::generate()?) } else { None };
    let env = Env { servercore, baseline, me, logs, cores, secs, quiet_wait, busy_cores, tls };
    let missing = Missing::of(&env.servercore);
    if nofile < 10_000 + 100 && selected.iter().any(|w| matches!(w.load, Load::Memory { .. })) {
        eprintln!("warning: open-file limit is {nofile}; the memory workload needs ~10,100");
    }

    // The driver itself sleeps through the measurements; keep it off the server's core.
    let (_, load_core) = env.cores_for(IO_URING);
    let _ = load_core.pin_current_thread();

    let header =
        report::Header::collect(&root, &header_bin, rounds, secs, cores, env.allowed_foreign());
    eprintln!("{}", header.render());
    let mut outcomes: Vec<Outcome> = Vec::new();
    for w in &selected {
        let mut servers = servers_for(
            w,
            !args.no_scale,
            !args.no_ablation,
            env.baseline.is_some(),
            !args.no_bare,
        );
        if let Some(why) = missing.unavailable(w, &mut servers) {
            outcomes.push(Outcome::unavailable(w.clone(), why));
            continue;
        }
        let samples = run_rounds(&env, w, &servers, rounds);
        outcomes.push(Outcome::measured(w.clone(), servers, samples));
    }
    write_report(&args, header, &outcomes)
}

/// Copies `servercore` into `logs`, and returns the copy's path.
fn snapshot(logs: &Path, servercore: &Path) -> Result<PathBuf, String> {
    // Run a copy, so that a rebuild during the run (say, by someone working on servercore)
    // cannot mix two builds in one table.
    let snapshot = logs.join("servercore");
    let _ = fs::remove_file(&snapshot);
    fs::copy(servercore, &snapshot).map_err(|e| {
        format!("cannot copy {} to {}: {e}", servercore.display(), snapshot.display())
    })?;
    Ok(snapshot)
}

/// The `--baseline-bin` build, copied into `logs` (as `snapshot` does with servercore).
fn copy_baseline(logs: &Path, baseline_bin: Option<&Path>) -> Result<Option<PathBuf>, String> {
    let baseline = match baseline_bin {
        Some(path) => {
            let copy = logs.join("servercore-baseline");
            let _ = fs::remove_file(&copy);
            fs::copy(path, &copy)
                .map_err(|e| format!("cannot copy baseline {}: {e}", path.display()))?;
            Some(copy)
        }
        None => None,
    };
    Ok(baseline)
}

/// The workloads of `--only` (all when empty), less those `--no-tls`, `--no-ws` and
/// `--no-cluster` leave out.
fn select_workloads(args: &RunArgs) -> Result<Vec<Workload>, String> {
    let all = workloads();
    let selected: Vec<Workload> = if args.only.is_empty() {
        all
    } else {
        for k in &args.only {
            if !all.iter().any(|w| w.key == k) {
                let keys: Vec<&str> = all.iter().map(|w| w.key).collect();
                return Err(format!("unknown workload {k:?}; known: {}", keys.join(", ")));
            }
        }
        all.into_iter().filter(|w| args.only.iter().any(|k| k == w.key)).collect()
    };
    // --no-tls, --no-ws and --no-cluster leave out those workloads, unless --only names
    // them.
    let selected: Vec<Workload> = if args.only.is_empty() {
        selected
            .into_iter()
            .filter(|w| !(args.no_tls && w.tls))
            .filter(|w| !(args.no_ws && w.ws))
            .filter(|w| !(args.no_cluster && matches!(w.load, Load::Cluster { .. })))
            .collect()
    } else {
        selected
    };
    Ok(selected)
}

/// Prints the report, writes it (`--markdown-out`) and the chart (`--chart-out`).
fn write_report(
    args: &RunArgs,
    header: report::Header,
    outcomes: &[Outcome],
) -> Result<(), String> {
    let mut header = header;
    header.finished = report::utc_now();
    let (chart, md) = (args.chart_out.as_deref(), args.markdown_out.as_deref());
    header.chart = crate::chart::write(chart, md, &header, outcomes);
    let text = report::render(&header, outcomes);
    println!("{text}");
    if let Some(path) = &args.markdown_out {
        fs::write(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `cargo build --release -p servercore-cli`, so that the benchmark measures the current code.
fn build_servercore(root: &Path, bin: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building servercore: cargo build --release -p servercore-cli");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "servercore-cli"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else if bin.exists() {
        eprintln!(
            "warning: building servercore failed ({status}); benchmarking the existing binary {}",
            bin.display()
        );
        Ok(())
    } else {
        Err(format!("building servercore failed ({status}) and there is no binary to use"))
    }
}
