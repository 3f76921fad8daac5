//! The dummy client (the seed's `DummyClient`): many sessions through `ClientService`
//! that load a server, verify every byte, and report throughput and latency.

mod chat;
mod echo;
mod pace;
mod report;
mod stats;

pub use report::{fmt_us, ProgressOut, Report};
pub use stats::LoadStats;

use clap::{Args, ValueEnum};
use servercore::{BackendChoice, ClientService};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the sessions do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Raw echo (PROTOCOL.md 1): send, wait for the same bytes back, verify.
    Echo,
    /// Chat room (PROTOCOL.md 2 and 3): each session keeps `--depth` of its own C_CHAT
    /// messages in flight (the next goes out when its own comes back through the room) and
    /// checks every S_CHAT from every sender for corruption, gaps and duplicates. The
    /// payload (`--size` bytes, at least 24) carries sender, sequence number and send time.
    Chat,
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
    /// Message size in bytes (chat: payload bytes per packet, 24..=65531).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub size: u32,
    /// Messages in flight per session.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub depth: u32,
    /// Seconds to measure after the sessions are connected.
    #[arg(long, default_value_t = 5.0)]
    pub secs: f64,
    /// Worker threads of the client (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Open loop: each session sends this many messages per second (at most `--depth` in
    /// flight), whatever the replies do. Default: closed loop (send when one comes back).
    #[arg(long)]
    pub rate: Option<f64>,
    /// Connect the sessions gradually over this many seconds (the measurement starts once
    /// all are connected).
    #[arg(long, default_value_t = 0.0)]
    pub ramp_secs: f64,
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
    pub progress: ProgressOut,
    /// Messages per second per session (open loop), or closed loop.
    pub rate: Option<f64>,
    /// Seconds over which sessions connect.
    pub ramp: Duration,
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
        progress: if args.json { ProgressOut::Off } else { ProgressOut::Stderr },
        rate: args.rate,
        ramp: Duration::from_secs_f64(args.ramp_secs.max(0.0)),
    };
    if let Some(r) = plan.rate {
        if !(r.is_finite() && r > 0.0) {
            return Err(format!(
                "--rate must be a positive number of messages per second, got {r}"
            ));
        }
    }
    if !args.ramp_secs.is_finite() || args.ramp_secs < 0.0 {
        return Err(format!("--ramp-secs must be zero or more seconds, got {}", args.ramp_secs));
    }
    if plan.mode == Mode::Chat {
        check_chat_size(plan.size)?;
        let default_max = servercore::packet::DEFAULT_MAX_PACKET_SIZE;
        if plan.size + servercore::packet::HEADER_LEN > default_max {
            eprintln!(
                "warning: {}-byte packets are above chat-server's default --max-packet {default_max}; \
                 start the server with --max-packet {} or more",
                plan.size + servercore::packet::HEADER_LEN,
                plan.size + servercore::packet::HEADER_LEN
            );
        }
    }
    let report = run_load(&plan)?;
    if args.json {
        out(&format!("{}\n", report.to_json()));
    } else {
        out(&report.to_text());
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Writes `text` to stdout and flushes; a closed stdout (`| head`) is not worth a panic.
pub fn out(text: &str) {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    let _ = o.write_all(text.as_bytes());
    let _ = o.flush();
}

/// Chat payloads hold a 24-byte header and fit one packet.
pub fn check_chat_size(size: usize) -> Result<(), String> {
    if size < chat::HEADER {
        return Err(format!(
            "--size must be at least {} bytes in chat mode (sender id, sequence number and \
             send time take {}), got {size}",
            chat::HEADER,
            chat::HEADER
        ));
    }
    if size > chat::MAX_PAYLOAD {
        return Err(format!(
            "--size must be at most {} bytes in chat mode (a packet, 4-byte header included, \
             is at most 65535 bytes), got {size}",
            chat::MAX_PAYLOAD
        ));
    }
    Ok(())
}

/// Longest wait, once the run stops, for own chat messages still in flight to come back.
const DRAIN: Duration = Duration::from_secs(2);

/// Connects the sessions, runs the workload for the planned time, and reports.
pub fn run_load(plan: &LoadPlan) -> Result<Report, String> {
    if plan.mode == Mode::Chat {
        check_chat_size(plan.size)?;
    }
    let stats = Arc::new(LoadStats::default());
    let ramping = !plan.ramp.is_zero();
    let pace = plan.rate.map(pace::Pace::new);
    let mut builder = ClientService::builder(plan.addr)
        .sessions(if ramping { 0 } else { plan.sessions })
        .backend(BackendChoice::Auto)
        .diagnostics(crate::diagnostics_from_env())
        .connect_timeout(Duration::from_secs(10));
    if let Some(w) = plan.workers {
        builder = builder.workers(w);
    }
    let clients = match plan.mode {
        Mode::Echo => {
            let (stats, size, depth) = (stats.clone(), plan.size, plan.depth);
            builder.start(move || echo::EchoLoad::new(stats.clone(), size, depth, pace))
        }
        Mode::Chat => {
            let (stats, size, depth) = (stats.clone(), plan.size, plan.depth);
            let lag_limit = chat::lag_limit(plan.sessions, depth, size);
            builder
                .start(move || chat::ChatClient::new(stats.clone(), size, depth, lag_limit, pace))
        }
    }
    .map_err(|e| format!("dummy client failed to start: {e}"))?;
    let backend = clients.backend();

    if ramping {
        // Connect in steps of 10 ms spread over the ramp.
        let steps = (plan.ramp.as_millis() / 10).max(1) as usize;
        let start = Instant::now();
        let mut opened = 0;
        for step in 1..=steps {
            let due = plan.sessions * step / steps;
            clients.connect(due - opened);
            opened = due;
            let next = start + plan.ramp.mul_f64(step as f64 / steps as f64);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
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
    stats.stopping.store(true, Ordering::Release);
    // No new messages from here. Let the ones in flight come back: they are not counted in
    // the window but still checked; any that never return show as `in_flight_at_end`.
    let drain_deadline = Instant::now() + DRAIN;
    while stats.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let in_flight_at_end = stats.in_flight.load(Ordering::Relaxed).max(0) as u64;
    let final_stats = clients.stats();
    clients.shutdown(Duration::from_secs(2)).map_err(|e| format!("client shutdown failed: {e}"))?;
    Ok(Report::new(plan, backend, &stats, final_stats, elapsed, run.counted, in_flight_at_end))
}
