//! The dummy client (the seed's `DummyClient`): many sessions through `ClientService`
//! that load a server, verify every byte, and report throughput and latency.

mod echo;
mod report;
mod stats;

pub use report::Report;
pub use stats::LoadStats;

use clap::{Args, ValueEnum};
use servercore::{BackendChoice, ClientService};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the sessions do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Raw echo (PROTOCOL.md 1): send, wait for the same bytes back, verify.
    Echo,
}

/// `servercore dummy-client` options.
#[derive(Args, Debug, Clone)]
pub struct DummyArgs {
    /// Server address.
    #[arg(long, value_parser = crate::parse_addr)]
    pub addr: SocketAddr,
    /// Workload.
    #[arg(long, value_enum, default_value_t = Mode::Echo)]
    pub mode: Mode,
    /// Concurrent sessions.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub sessions: u32,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub size: u32,
    /// Messages in flight per session.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub depth: u32,
    /// Seconds to run after the sessions are connected.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Worker threads of the client (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Print the report as one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of one load run, for the CLI and the demo.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    pub addr: SocketAddr,
    pub mode: Mode,
    pub sessions: usize,
    pub size: usize,
    pub depth: usize,
    pub duration: Duration,
    pub workers: Option<usize>,
    pub progress: bool,
}

pub fn run(args: DummyArgs) -> Result<ExitCode, String> {
    if !(args.secs.is_finite() && args.secs > 0.0) {
        return Err(format!("--secs must be a positive number of seconds, got {}", args.secs));
    }
    let plan = LoadPlan {
        addr: args.addr,
        mode: args.mode,
        sessions: args.sessions as usize,
        size: args.size as usize,
        depth: args.depth as usize,
        duration: Duration::from_secs_f64(args.secs),
        workers: args.workers.map(usize::from),
        progress: !args.json,
    };
    let report = run_load(&plan)?;
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Connects the sessions, runs the workload for the planned time, and reports.
pub fn run_load(plan: &LoadPlan) -> Result<Report, String> {
    let stats = Arc::new(LoadStats::default());
    let mut builder = ClientService::builder(plan.addr)
        .sessions(plan.sessions)
        .backend(BackendChoice::Auto)
        .connect_timeout(Duration::from_secs(10));
    if let Some(w) = plan.workers {
        builder = builder.workers(w);
    }
    let clients = match plan.mode {
        Mode::Echo => {
            let (stats, size, depth) = (stats.clone(), plan.size, plan.depth);
            builder.start(move || echo::EchoLoad::new(stats.clone(), size, depth))
        }
    }
    .map_err(|e| format!("dummy client failed to start: {e}"))?;
    let backend = clients.backend();

    // Wait until every session has connected or failed (bounded by the connect timeout).
    let connect_deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let s = clients.stats();
        if s.connected + s.connect_failures >= plan.sessions as u64 {
            break;
        }
        if Instant::now() > connect_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let connected = clients.stats().connected;
    if connected == 0 {
        let why = stats.first_error().unwrap_or_else(|| "no session connected".into());
        let _ = clients.shutdown(Duration::from_millis(100));
        return Err(format!("cannot reach the server at {}: {why}", plan.addr));
    }

    let run = report::Progress::run(plan, &stats, &clients);
    let elapsed = run.elapsed;
    stats.stopping.store(true, std::sync::atomic::Ordering::Release);
    let final_stats = clients.stats();
    clients.shutdown(Duration::from_secs(2)).map_err(|e| format!("client shutdown failed: {e}"))?;
    Ok(Report::new(plan, backend, &stats, final_stats, elapsed, run.counted))
}
