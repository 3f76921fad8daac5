//! The dummy client (the seed's `DummyClient`): many sessions through `ClientService`
//! that load a server, verify every byte, and report throughput and latency.

mod chat;
mod echo;
mod pace;
mod report;
mod stats;
mod tls;

pub use report::{fmt_us, ProgressOut, Report};
pub use stats::LoadStats;
pub use tls::{TlsPlan, Trust};

use clap::{Args, ValueEnum};
use servercore::{BackendChoice, ClientService, ServiceStats};
use std::net::SocketAddr;
use std::path::PathBuf;
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
    #[arg(long, value_parser = parse_target)]
    pub addr: Target,
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
    /// Speak TLS (PROTOCOL.md section 5), trusting `--tls-ca` or, with `--tls-insecure`,
    /// any certificate. The report adds handshakes/s and handshake latency.
    #[arg(long)]
    pub tls: bool,
    /// PEM file of the certificates to trust: the server's CA, or its self-signed
    /// certificate.
    #[arg(long, value_name = "FILE", requires = "tls", conflicts_with = "tls_insecure")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate (the handshake signatures are still checked): for
    /// tests against a server whose certificate is at hand nowhere else.
    #[arg(long, requires = "tls")]
    pub tls_insecure: bool,
    /// The name the server's certificate must be valid for, also sent as SNI (default: the
    /// host of `--addr`; an IP address is a valid name).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
}

/// `--addr`: the address to connect to, and the host as written, the default TLS server
/// name (resolving `localhost:7000` to 127.0.0.1 must not make the client expect a
/// certificate for 127.0.0.1).
#[derive(Debug, Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub host: String,
}

fn parse_target(s: &str) -> Result<Target, String> {
    let addr = crate::parse_addr(s)?;
    let host = s.rsplit_once(':').map_or(s, |(host, _port)| host);
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    Ok(Target { addr, host: host.to_string() })
}

/// The TLS options of `dummy-client`, checked and loaded.
fn tls_plan(args: &DummyArgs) -> Result<TlsPlan, String> {
    let trust = match (&args.tls_ca, args.tls_insecure) {
        (Some(path), _) => {
            Trust::Roots(servercore::tls::load_certs(path).map_err(|e| format!("--tls-ca: {e}"))?)
        }
        (None, true) => Trust::Insecure,
        (None, false) => {
            return Err("--tls needs --tls-ca FILE (the server's CA or self-signed certificate, \
                        PEM) or --tls-insecure (accept any certificate, for tests)"
                .into())
        }
    };
    let server_name = match &args.tls_server_name {
        Some(name) => {
            servercore::tls::server_name(name).map_err(|e| format!("--tls-server-name: {e}"))?
        }
        None => servercore::tls::server_name(&args.addr.host).map_err(|e| {
            format!("the host of --addr is no valid TLS server name ({e}); give --tls-server-name")
        })?,
    };
    Ok(TlsPlan { trust, server_name })
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
    /// Speak TLS, and how.
    pub tls: Option<TlsPlan>,
}

pub fn run(args: DummyArgs) -> Result<ExitCode, String> {
    if !(args.secs.is_finite() && args.secs > 0.0) {
        return Err(format!("--secs must be a positive number of seconds, got {}", args.secs));
    }
    let tls = if args.tls { Some(tls_plan(&args)?) } else { None };
    let plan = LoadPlan {
        addr: args.addr.addr,
        mode: args.mode,
        sessions: args.sessions as usize,
        size: args.size as usize,
        depth: args.depth as usize,
        duration: Duration::from_secs_f64(args.secs),
        workers: args.workers.map(usize::from),
        progress: if args.json { ProgressOut::Off } else { ProgressOut::Stderr },
        rate: args.rate,
        ramp: Duration::from_secs_f64(args.ramp_secs.max(0.0)),
        tls,
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
    let tls_on = plan.tls.is_some();
    let connect_start = Instant::now();
    let mut builder = ClientService::builder(plan.addr)
        .sessions(if ramping { 0 } else { plan.sessions })
        .backend(BackendChoice::Auto)
        .diagnostics(crate::diagnostics_from_env())
        .connect_timeout(Duration::from_secs(10));
    if let Some(w) = plan.workers {
        builder = builder.workers(w);
    }
    if let Some(t) = &plan.tls {
        builder = builder.tls(tls::client_config(t, stats.clone())?, t.server_name.clone());
    }
    let (size, depth) = (plan.size, plan.depth);
    let watch = {
        let stats = stats.clone();
        move || tls::HandshakeWatch::new(stats.clone(), tls_on)
    };
    let clients = match plan.mode {
        Mode::Echo => {
            let stats = stats.clone();
            builder.start(move || echo::EchoLoad::new(stats.clone(), size, depth, pace, watch()))
        }
        Mode::Chat => {
            let stats = stats.clone();
            let lag_limit = chat::lag_limit(plan.sessions, depth, size);
            builder.start(move || {
                chat::ChatClient::new(stats.clone(), size, depth, lag_limit, pace, watch())
            })
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
    // Wait until every session has connected or failed (bounded by the connect timeout and,
    // with TLS, the handshake timeout that follows it). With TLS a session is connected
    // once its handshake is done, and a failed handshake is not a connect failure.
    let mut wait = Duration::from_secs(15);
    if tls_on {
        wait += servercore::SessionConfig::default().tls_handshake_timeout;
    }
    let connect_deadline = Instant::now() + wait;
    loop {
        let s = clients.stats();
        if connected_of(&s, tls_on) + failed_of(&s, tls_on) >= plan.sessions as u64 {
            break;
        }
        if Instant::now() > connect_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let connected = connected_of(&clients.stats(), tls_on);
    if connected == 0 {
        if tls_on {
            note_handshake_failures(&stats, &clients.stats(), plan.addr);
        }
        let why = stats.first_error().unwrap_or_else(|| "no session connected".into());
        let _ = clients.shutdown(Duration::from_millis(100));
        return Err(if tls_on {
            format!("no TLS session could be opened with {}: {why}", plan.addr)
        } else {
            format!("cannot reach the server at {}: {why}", plan.addr)
        });
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
    let tls_report = tls_on.then(|| {
        note_handshake_failures(&stats, &final_stats, plan.addr);
        report::TlsReport::new(&stats.handshakes, &final_stats, connect_start)
    });
    Ok(Report::new(
        plan,
        backend,
        &stats,
        final_stats,
        elapsed,
        run.counted,
        in_flight_at_end,
        tls_report,
    ))
}

/// Sessions connected: with TLS, those whose handshake is done (`connected` counts TCP
/// connects).
fn connected_of(s: &ServiceStats, tls: bool) -> u64 {
    if tls {
        s.tls_handshakes
    } else {
        s.connected
    }
}

/// Sessions that will never connect: failed connects and, with TLS, failed handshakes.
fn failed_of(s: &ServiceStats, tls: bool) -> u64 {
    if tls {
        s.connect_failures + s.tls_handshake_failures
    } else {
        s.connect_failures
    }
}

/// Failed handshakes reach no session callback: records an error for them, unless the
/// certificate verifier already recorded a more precise one.
fn note_handshake_failures(stats: &LoadStats, service: &ServiceStats, addr: SocketAddr) {
    if service.tls_handshake_failures > 0 {
        stats.error(format!(
            "TLS handshakes with {addr} failed: {} (is it a TLS server? RUST_LOG=debug shows why)",
            service.tls_handshake_failures
        ));
    }
}
