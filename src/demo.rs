//! `servercore demo`: a server and dummy clients in one process on loopback.

use crate::dummy::{self, LoadPlan, Mode};
use crate::samples::echo::EchoSession;
use clap::Args;
use servercore::{BackendChoice, ServerService};
use std::process::ExitCode;
use std::time::Duration;

/// `servercore demo` options.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Client sessions.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sessions: u32,
    /// Message size in bytes.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub size: u32,
    /// Server worker threads (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs { secs: 5.0, sessions: 100, size: 64, workers: None }
    }
}

pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    if !(args.secs.is_finite() && args.secs > 0.0) {
        return Err(format!("--secs must be a positive number of seconds, got {}", args.secs));
    }
    let mut b = ServerService::builder("127.0.0.1:0".parse().expect("valid address"))
        .backend(BackendChoice::Auto);
    if let Some(w) = args.workers {
        b = b.workers(w.into());
    }
    let server =
        b.start(EchoSession::default).map_err(|e| format!("demo server failed to start: {e}"))?;
    println!(
        "servercore demo: echo server on {} (backend: {}, workers: {}); {} client sessions for {} s",
        server.local_addr(),
        server.backend(),
        server.workers(),
        args.sessions,
        args.secs
    );
    let plan = LoadPlan {
        addr: server.local_addr(),
        mode: Mode::Echo,
        sessions: args.sessions as usize,
        size: args.size as usize,
        depth: 1,
        duration: Duration::from_secs_f64(args.secs),
        workers: None,
        progress: true,
    };
    let report = dummy::run_load(&plan);
    let stats = server.stats();
    server.shutdown(Duration::from_secs(2)).map_err(|e| format!("server shutdown failed: {e}"))?;
    let report = report?;
    print!("{}", report.to_text());
    println!(
        "  server    {} sessions accepted, {} disconnected with an error",
        stats.accepted, stats.disconnected_with_error
    );
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
