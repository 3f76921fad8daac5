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
use servercore::tls::rustls::pki_types::ServerName;
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
    /// Server address. Give it more than once to spread the sessions over several servers,
    /// round-robin (chat: servers sharing one room with `--cluster`; the run then also
    /// checks that every session got every sender's messages, across the servers).
    #[arg(long, value_parser = parse_target, required = true)]
    pub addr: Vec<Target>,
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
    /// host of each `--addr`; an IP address is a valid name).
    #[arg(long, value_name = "NAME", requires = "tls")]
    pub tls_server_name: Option<String>,
    /// Speak WebSocket (PROTOCOL.md section 6) to a server's `--ws-addr`: binary messages,
    /// each carrying whole packets (echo: each message one binary message). With `--tls`:
    /// wss. The report adds the upgrades.
    #[arg(long)]
    pub ws: bool,
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

impl Target {
    /// The `Host` header of a WebSocket upgrade: the host as written, with the port.
    pub fn host_header(&self) -> String {
        host_header(&self.host, self.addr.port())
    }
}

/// `host:port`, with an IPv6 address in brackets.
pub fn host_header(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The TLS options of `dummy-client`, checked and loaded. The plan's server name is the
/// first `--addr`'s (or `--tls-server-name`); see [`tls_names`] for the others.
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
        None => target_tls_name(&args.addr[0])?,
    };
    Ok(TlsPlan { trust, server_name })
}

/// The TLS server name of a target: its host as written.
fn target_tls_name(t: &Target) -> Result<ServerName<'static>, String> {
    servercore::tls::server_name(&t.host).map_err(|e| {
        format!(
            "the host of --addr {} is no valid TLS server name ({e}); give --tls-server-name",
            t.host
        )
    })
}

/// With TLS and no `--tls-server-name`, each address's own host is the name its server's
/// certificate must be valid for.
fn tls_names(args: &DummyArgs) -> Result<Vec<Option<ServerName<'static>>>, String> {
    args.addr
        .iter()
        .map(|t| match args.tls && args.tls_server_name.is_none() {
            true => target_tls_name(t).map(Some),
            false => Ok(None),
        })
        .collect()
}

/// Options of one load run, for the CLI and the demo.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Where the sessions go: one client service per endpoint.
    pub endpoints: Vec<Endpoint>,
    /// Chat: at the end, check that every session got every sender's messages up to the
    /// last one the sender got back itself (runs over several servers sharing a room, where
    /// the delivery between the servers is what is tested; see `chat::check_complete`).
    pub check_complete: bool,
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

impl LoadPlan {
    /// Sessions that speak WebSocket.
    pub fn ws_sessions(&self) -> usize {
        self.endpoints.iter().filter(|e| e.ws_host.is_some()).map(|e| e.sessions).sum()
    }
}

/// A server address of a load run, and how many of the sessions go there, how.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// Sessions to this address (the plan's `sessions` is the sum over the endpoints).
    pub sessions: usize,
    /// Speak WebSocket: the `Host` header of the upgrade requests.
    pub ws_host: Option<String>,
    /// With TLS: the name the certificate must be valid for (default: the plan's).
    pub tls_name: Option<ServerName<'static>>,
}

/// `total` sessions over `n` addresses, round-robin: session `k` goes to address `k % n`.
pub fn round_robin(total: usize, n: usize) -> Vec<usize> {
    (0..n).map(|i| total / n + usize::from(i < total % n)).collect()
}

pub fn run(args: DummyArgs) -> Result<ExitCode, String> {
    if !(args.secs.is_finite() && args.secs > 0.0) {
        return Err(format!("--secs must be a positive number of seconds, got {}", args.secs));
    }
    let tls = if args.tls { Some(tls_plan(&args)?) } else { None };
    let sessions = args.sessions as usize;
    if sessions < args.addr.len() {
        return Err(format!(
            "--sessions {sessions} is fewer than the {} addresses of --addr: each needs one",
            args.addr.len()
        ));
    }
    let endpoints = args
        .addr
        .iter()
        .zip(round_robin(sessions, args.addr.len()))
        .zip(tls_names(&args)?)
        .map(|((t, sessions), tls_name)| Endpoint {
            addr: t.addr,
            sessions,
            ws_host: args.ws.then(|| t.host_header()),
            tls_name,
        })
        .collect();
    let plan = LoadPlan {
        endpoints,
        check_complete: args.addr.len() > 1,
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

/// Runs over several servers: once own messages are back, how long deliveries must have
/// stopped coming before the sessions' views are compared (messages from other servers
/// arrive after the sender's own copy), and the longest wait for that.
const SETTLE_QUIET: Duration = Duration::from_millis(300);
const SETTLE_MAX: Duration = Duration::from_secs(5);

/// The client services of a load run: one per endpoint (a server address and its
/// transport: plain or TLS TCP, WebSocket), all feeding the same [`LoadStats`].
pub struct Fleet {
    groups: Vec<Group>,
    tls: bool,
}

struct Group {
    clients: ClientService,
    /// Sessions this group opens in all.
    sessions: usize,
    /// Sessions opened so far (ramp).
    opened: usize,
    ws: bool,
    addr: SocketAddr,
}

impl Fleet {
    /// Sessions holding a slot now, over all groups.
    pub fn session_count(&self) -> usize {
        self.groups.iter().map(|g| g.clients.session_count()).sum()
    }

    /// The groups' counters, summed.
    pub fn stats(&self) -> ServiceStats {
        self.groups.iter().map(|g| g.clients.stats()).fold(ServiceStats::default(), add_stats)
    }

    /// Sessions open: past their TCP connect, TLS handshake and WebSocket upgrade, as
    /// the transport of each group has them.
    fn connected(&self) -> u64 {
        self.groups.iter().map(|g| connected_of(&g.clients.stats(), self.tls, g.ws)).sum()
    }

    /// Sessions that will never open.
    fn failed(&self) -> u64 {
        self.groups.iter().map(|g| failed_of(&g.clients.stats(), self.tls, g.ws)).sum()
    }

    /// Opens more sessions until `step / steps` of each group's are open.
    fn open_up_to(&mut self, step: usize, steps: usize) {
        for g in &mut self.groups {
            let due = g.sessions * step / steps;
            g.clients.connect(due - g.opened);
            g.opened = due;
        }
    }

    fn shutdown(self, timeout: Duration) -> std::io::Result<()> {
        let mut result = Ok(());
        for g in self.groups {
            if let Err(e) = g.clients.shutdown(timeout) {
                result = Err(e);
            }
        }
        result
    }
}

/// Counters of two services added up.
fn add_stats(a: ServiceStats, b: ServiceStats) -> ServiceStats {
    ServiceStats {
        sessions: a.sessions + b.sessions,
        accepted: a.accepted + b.accepted,
        rejected: a.rejected + b.rejected,
        connected: a.connected + b.connected,
        connect_failures: a.connect_failures + b.connect_failures,
        disconnected: a.disconnected + b.disconnected,
        disconnected_with_error: a.disconnected_with_error + b.disconnected_with_error,
        aborted: a.aborted + b.aborted,
        tls_handshakes: a.tls_handshakes + b.tls_handshakes,
        tls_handshake_failures: a.tls_handshake_failures + b.tls_handshake_failures,
        ws_upgrades: a.ws_upgrades + b.ws_upgrades,
        ws_upgrade_failures: a.ws_upgrade_failures + b.ws_upgrade_failures,
        failed_workers: a.failed_workers + b.failed_workers,
    }
}

/// Connects the sessions, runs the workload for the planned time, and reports.
pub fn run_load(plan: &LoadPlan) -> Result<Report, String> {
    if plan.mode == Mode::Chat {
        check_chat_size(plan.size)?;
    }
    let stats = Arc::new(LoadStats::default());
    let check_complete = plan.check_complete && plan.mode == Mode::Chat;
    stats.keep_finals.store(check_complete, Ordering::Relaxed);
    let ramping = !plan.ramp.is_zero();
    let tls_on = plan.tls.is_some();
    let connect_start = Instant::now();
    let ws_sessions = plan.ws_sessions();
    let any_ws = ws_sessions > 0;
    let mut fleet = Fleet { groups: Vec::new(), tls: tls_on };
    for endpoint in &plan.endpoints {
        if endpoint.sessions == 0 {
            continue;
        }
        match start_group(plan, &stats, endpoint, ramping) {
            Ok(group) => fleet.groups.push(group),
            Err(e) => {
                let _ = fleet.shutdown(Duration::from_millis(100));
                return Err(format!("dummy client failed to start: {e}"));
            }
        }
    }
    let backend = fleet.groups[0].clients.backend();

    if ramping {
        // Connect in steps of 10 ms spread over the ramp.
        let steps = (plan.ramp.as_millis() / 10).max(1) as usize;
        let start = Instant::now();
        for step in 1..=steps {
            fleet.open_up_to(step, steps);
            let next = start + plan.ramp.mul_f64(step as f64 / steps as f64);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    }
    // Wait until every session has connected or failed (bounded by the connect timeout and
    // the handshake timeouts that follow it). With TLS or WebSocket a session is connected
    // once its handshakes are done, and a failed handshake is not a connect failure.
    let mut wait = Duration::from_secs(15);
    if tls_on {
        wait += servercore::SessionConfig::default().tls_handshake_timeout;
    }
    if any_ws {
        wait += servercore::ws::WsConfig::default().handshake_timeout;
    }
    let connect_deadline = Instant::now() + wait;
    loop {
        if fleet.connected() + fleet.failed() >= plan.sessions as u64 {
            break;
        }
        if Instant::now() > connect_deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let connected = fleet.connected();
    if connected == 0 {
        note_handshake_failures(&stats, &fleet);
        let why = stats.first_error().unwrap_or_else(|| "no session connected".into());
        let addrs: Vec<String> = fleet.groups.iter().map(|g| g.addr.to_string()).collect();
        let addrs = addrs.join(" and ");
        let _ = fleet.shutdown(Duration::from_millis(100));
        return Err(match (tls_on, any_ws) {
            (true, true) => {
                format!("no wss (WebSocket over TLS) session could be opened with {addrs}: {why}")
            }
            (false, true) => format!("no WebSocket session could be opened with {addrs}: {why}"),
            (true, false) => format!("no TLS session could be opened with {addrs}: {why}"),
            (false, false) => format!("cannot reach the server at {addrs}: {why}"),
        });
    }

    let run = report::Progress::run(plan, &stats, &fleet);
    let elapsed = run.elapsed;
    stats.stopping.store(true, Ordering::Release);
    // No new messages from here. Let the ones in flight come back: they are not counted in
    // the window but still checked; any that never return show as `in_flight_at_end`.
    let drain_deadline = Instant::now() + DRAIN;
    while stats.in_flight.load(Ordering::Relaxed) > 0 && Instant::now() < drain_deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    let in_flight_at_end = stats.in_flight.load(Ordering::Relaxed).max(0) as u64;
    if check_complete {
        settle(&stats);
    }
    let final_stats = fleet.stats();
    let connected = fleet.connected();
    note_handshake_failures(&stats, &fleet);
    fleet.shutdown(Duration::from_secs(2)).map_err(|e| format!("client shutdown failed: {e}"))?;
    if check_complete {
        // Every session has ended and left its view in `stats.finals`.
        chat::check_complete(&stats);
    }
    let tls_report = tls_on.then(|| {
        report::TlsReport::new(&stats.handshakes, &final_stats, connect_start, ws_sessions > 0)
    });
    let ws_report = any_ws.then_some(report::WsReport {
        sessions: ws_sessions,
        upgrades: final_stats.ws_upgrades,
        failures: final_stats.ws_upgrade_failures,
    });
    Ok(Report::new(
        plan,
        backend,
        &stats,
        connected,
        elapsed,
        run.counted,
        in_flight_at_end,
        tls_report,
        ws_report,
    ))
}

/// Waits until no delivery has come for [`SETTLE_QUIET`] (at most [`SETTLE_MAX`]).
fn settle(stats: &LoadStats) {
    let deadline = Instant::now() + SETTLE_MAX;
    let mut last = stats.messages.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let now = stats.messages.load(Ordering::Relaxed);
        if now != last {
            (last, quiet_since) = (now, Instant::now());
        } else if quiet_since.elapsed() >= SETTLE_QUIET {
            return;
        }
    }
}

/// Starts the client service of one endpoint.
fn start_group(
    plan: &LoadPlan,
    stats: &Arc<LoadStats>,
    endpoint: &Endpoint,
    ramping: bool,
) -> std::io::Result<Group> {
    let (addr, sessions) = (endpoint.addr, endpoint.sessions);
    let mut builder = ClientService::builder(addr)
        .sessions(if ramping { 0 } else { sessions })
        .backend(BackendChoice::Auto)
        .diagnostics(crate::diagnostics_from_env())
        .connect_timeout(Duration::from_secs(10));
    if let Some(w) = plan.workers {
        builder = builder.workers(w);
    }
    if let Some(t) = &plan.tls {
        let config = tls::client_config(t, stats.clone()).map_err(std::io::Error::other)?;
        let name = endpoint.tls_name.clone().unwrap_or_else(|| t.server_name.clone());
        builder = builder.tls(config, name);
    }
    if let Some(host) = &endpoint.ws_host {
        builder = builder.websocket(servercore::ws::WsConfig {
            host: host.clone(),
            path: "/".into(),
            ..Default::default()
        });
    }
    let (size, depth, pace) = (plan.size, plan.depth, plan.rate.map(pace::Pace::new));
    let tls_on = plan.tls.is_some();
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
            // Open loop: the rate sets the pace, whatever the receivers do (see
            // `chat::lag_limit`); no pause.
            let lag_limit = match pace {
                Some(_) => u64::MAX,
                None => chat::lag_limit(plan.sessions, depth, size),
            };
            builder.start(move || {
                chat::ChatClient::new(stats.clone(), size, depth, lag_limit, pace, watch())
            })
        }
    }?;
    Ok(Group {
        clients,
        sessions,
        opened: if ramping { 0 } else { sessions },
        ws: endpoint.ws_host.is_some(),
        addr,
    })
}

/// Sessions open: past every handshake of the transport (`connected` counts TCP
/// connects; with WebSocket over TLS both counters count finished sessions).
fn connected_of(s: &ServiceStats, tls: bool, ws: bool) -> u64 {
    if ws {
        s.ws_upgrades
    } else if tls {
        s.tls_handshakes
    } else {
        s.connected
    }
}

/// Sessions that will never open: failed connects, failed TLS handshakes, failed upgrades.
fn failed_of(s: &ServiceStats, tls: bool, ws: bool) -> u64 {
    let mut n = s.connect_failures;
    if tls {
        n += s.tls_handshake_failures;
    }
    if ws {
        n += s.ws_upgrade_failures;
    }
    n
}

/// Failed handshakes and upgrades reach no session callback: records an error for them,
/// unless the certificate verifier already recorded a more precise one.
fn note_handshake_failures(stats: &LoadStats, fleet: &Fleet) {
    for g in &fleet.groups {
        let s = g.clients.stats();
        if fleet.tls && s.tls_handshake_failures > 0 {
            stats.error(format!(
                "TLS handshakes with {} failed: {} (is it a TLS server? RUST_LOG=debug shows why)",
                g.addr, s.tls_handshake_failures
            ));
        }
        if g.ws && s.ws_upgrade_failures > 0 {
            stats.error(format!(
                "WebSocket upgrades with {} failed: {} (is it a WebSocket listener, --ws-addr? \
                 RUST_LOG=debug shows why)",
                g.addr, s.ws_upgrade_failures
            ));
        }
    }
}
