//! `servercore demo`: the chat server and dummy chat clients in one process on loopback,
//! with a live progress line, a summary table and (on a terminal) a latency sketch.

use crate::dummy::{self, Endpoint, LoadPlan, Mode, ProgressOut, Report, TlsPlan, Trust};
use crate::samples::chat::ChatSession;
use clap::Args;
use servercore::packet::{DEFAULT_MAX_PACKET_SIZE, HEADER_LEN};
use servercore::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use servercore::tls::rustls::ServerConfig;
use servercore::{BackendChoice, ServerService, ServiceStats};
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// `servercore demo` options.
#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub secs: f64,
    /// Client sessions, all in one chat room (each message goes to every one of them).
    #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub sessions: u32,
    /// Chat message payload size in bytes (24..=65531).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub size: u32,
    /// Server worker threads (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Speak TLS, with a self-signed certificate for `localhost` made at start and trusted
    /// by the clients (nothing is written to disk).
    #[arg(long)]
    pub tls: bool,
    /// The chat server's WebSocket listener (wss with `--tls`): the browser page is at
    /// `http://ADDR/` (printed at start; port 0 picks a free port).
    #[arg(long, value_name = "ADDR", default_value_t = default_ws_addr(), value_parser = crate::parse_addr)]
    pub ws_addr: SocketAddr,
    /// Of the client sessions, how many connect over WebSocket (the others over TCP), so
    /// that the room is mixed (default: a quarter).
    #[arg(long, value_name = "N")]
    pub ws_sessions: Option<u32>,
}

fn default_ws_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Default for DemoArgs {
    fn default() -> Self {
        DemoArgs {
            secs: 10.0,
            sessions: 200,
            size: 64,
            workers: None,
            tls: false,
            ws_addr: default_ws_addr(),
            ws_sessions: None,
        }
    }
}

/// The name the demo's certificate is made for, and the clients expect.
const DEMO_HOST: &str = "localhost";

/// A fresh self-signed certificate for [`DEMO_HOST`]: the server's configuration, and the
/// clients' plan trusting exactly that certificate (no `--tls-insecure` shortcut, so the demo
/// shows the full verification a real client does).
fn self_signed_tls() -> Result<(std::sync::Arc<ServerConfig>, TlsPlan), String> {
    let made = rcgen::generate_simple_self_signed(vec![DEMO_HOST.to_string()])
        .map_err(|e| format!("cannot make the demo's self-signed certificate: {e}"))?;
    let cert: CertificateDer<'static> = made.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
    let config = servercore::tls::server_config(vec![cert.clone()], key)
        .map_err(|e| format!("cannot use the demo's self-signed certificate: {e}"))?;
    let server_name = servercore::tls::server_name(DEMO_HOST).map_err(|e| e.to_string())?;
    Ok((config, TlsPlan { trust: Trust::Roots(vec![cert]), server_name }))
}

pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    if !(args.secs.is_finite() && args.secs > 0.0) {
        return Err(format!("--secs must be a positive number of seconds, got {}", args.secs));
    }
    let size = args.size as usize;
    dummy::check_chat_size(size)?;
    let ws_sessions = args.ws_sessions.unwrap_or(args.sessions / 4);
    if ws_sessions > args.sessions {
        return Err(format!(
            "--ws-sessions {ws_sessions} is more than the {} sessions of --sessions",
            args.sessions
        ));
    }
    let tty = std::io::stdout().is_terminal();
    let tls = if args.tls { Some(self_signed_tls()?) } else { None };
    let mut b = ServerService::builder("127.0.0.1:0".parse().expect("valid address"))
        .max_sessions(args.sessions as usize + 16)
        .backend(BackendChoice::Auto)
        .diagnostics(crate::diagnostics_from_env());
    if let Some(w) = args.workers {
        b = b.workers(w.into());
    }
    let (server_tls, client_tls) = tls.unzip();
    if let Some(config) = server_tls {
        b = b.tls(config);
    }
    let max_packet = DEFAULT_MAX_PACKET_SIZE.max(size + HEADER_LEN);
    let server = b
        .websocket(args.ws_addr, crate::page::ws_config())
        .start(ChatSession::factory(servercore::Room::new(), max_packet))
        .map_err(|e| format!("demo server failed to start: {e}"))?;
    let ws_addr = server.websocket_addr().expect("the demo server has a WebSocket listener");
    dummy::out(&format!(
        "servercore demo: chat server on {} (backend: {}, workers: {}{}); {} client sessions for {} s, {} B messages\n",
        server.local_addr(),
        server.backend(),
        server.workers(),
        if client_tls.is_some() { ", tls" } else { "" },
        args.sessions,
        args.secs,
        size
    ));
    dummy::out(&format!(
        "  every session is in one room and keeps one message in flight; each message goes to all {} sessions\n",
        args.sessions
    ));
    dummy::out(&format!(
        "  {} of them over WebSocket{} on {ws_addr}\n",
        ws_sessions,
        if client_tls.is_some() { " (wss)" } else { "" }
    ));
    // With TLS the certificate is for `localhost` and self-signed: the browser warns first.
    let (page, warning) = match client_tls {
        Some(_) => (
            format!("https://{}/", dummy::host_header(DEMO_HOST, ws_addr.port())),
            "; the certificate is self-signed: accept the browser's warning",
        ),
        None => (format!("http://{ws_addr}/"), ""),
    };
    dummy::out(&format!(
        "  open {page} in a browser to join the chat (for {} s, --secs for longer{warning})\n",
        args.secs
    ));
    let ws_sessions = ws_sessions as usize;
    let plan = LoadPlan {
        // One room, reached over TCP and over WebSocket.
        endpoints: vec![
            Endpoint {
                addr: server.local_addr(),
                sessions: args.sessions as usize - ws_sessions,
                ws_host: None,
                tls_name: None,
            },
            Endpoint {
                addr: ws_addr,
                sessions: ws_sessions,
                ws_host: Some(dummy::host_header(DEMO_HOST, ws_addr.port())),
                tls_name: None,
            },
        ],
        check_complete: false,
        mode: Mode::Chat,
        sessions: args.sessions as usize,
        size,
        depth: 1,
        duration: Duration::from_secs_f64(args.secs),
        workers: None,
        progress: if tty { ProgressOut::Stdout } else { ProgressOut::Lines },
        rate: None,
        ramp: Duration::ZERO,
        tls: client_tls,
    };
    let report = dummy::run_load(&plan);
    let stats = server.stats();
    let workers = server.workers();
    server.shutdown(Duration::from_secs(2)).map_err(|e| format!("server shutdown failed: {e}"))?;
    let report = report?;
    let mut text = summary(&report, &stats, workers);
    if tty && !report.percentiles.is_empty() {
        text.push_str("\nlatency of own messages (log scale)\n");
        text.push_str(&report.latency_sketch(40));
    }
    dummy::out(&text);
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// The summary table: one row per aspect, aligned.
fn summary(r: &Report, server: &ServiceStats, workers: usize) -> String {
    use std::fmt::Write as _;
    let mut rows: Vec<(&str, String)> = vec![
        (
            "clients",
            format!(
                "{}, {} B messages, depth {}, {:.1} s, backend {}",
                r.sessions_line(),
                r.size,
                r.depth,
                r.secs,
                r.backend
            ),
        ),
        (
            "delivered",
            format!(
                "{} S_CHAT, {:.0} msg/s, {:.2} MB/s received",
                r.messages,
                r.msgs_per_sec(),
                r.mb_per_sec()
            ),
        ),
        ("sent", format!("{} C_CHAT, {:.0} msg/s", r.sends, r.sends_per_sec())),
        (
            "latency",
            format!(
                "p50 {}, p99 {}, max {} (own message, sent to back through the room)",
                dummy::fmt_us(r.p50_us),
                dummy::fmt_us(r.p99_us),
                dummy::fmt_us(r.max_us)
            ),
        ),
        ("order", format!("gaps {}, duplicates {}", r.gaps, r.duplicates)),
    ];
    if let Some(t) = &r.tls {
        let [count, latency] = t.text_lines();
        rows.push(("tls", count));
        rows.push(("handshake", latency));
    }
    if let Some(w) = &r.ws {
        rows.push(("websocket", w.text_line()));
    }
    if r.foreign > 0 {
        rows.push(("foreign", format!("{} text messages from browsers (not checked)", r.foreign)));
    }
    rows.push((
        "server",
        format!(
            "{} sessions accepted, {} disconnected with an error, {} workers",
            server.accepted, server.disconnected_with_error, workers
        ),
    ));
    let mut s = String::from("\nsummary\n");
    for (k, v) in rows {
        let _ = writeln!(s, "  {k:<10}{v}");
    }
    let _ = writeln!(s, "  {}", r.errors_line());
    if let Some(e) = &r.first_error {
        let _ = writeln!(s, "  first error: {e}");
    }
    let _ = writeln!(s, "  result    {}", if r.ok() { "ok" } else { "FAILED" });
    s
}
