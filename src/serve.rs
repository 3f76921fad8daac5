//! The sample servers: start, print the readiness line, serve until SIGINT/SIGTERM.

use crate::metrics_http::Health;
use crate::samples::chat::ChatSession;
use crate::samples::echo::EchoSession;
use clap::Args;
use servercore::cluster::{Cluster, ClusterConfig};
use servercore::sys::TerminationSignals;
use servercore::tls::rustls::ServerConfig;
use servercore::{BackendChoice, Room, ServerService};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// Options shared by the sample servers; `PORT` is the default port.
#[derive(Args, Debug, Clone)]
pub struct ServerArgs<const PORT: u16> {
    /// Address to listen on.
    #[arg(long, default_value_t = SocketAddr::from(([127, 0, 0, 1], PORT)), value_parser = crate::parse_addr)]
    pub addr: SocketAddr,
    /// Worker threads (default: available cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub workers: Option<u16>,
    /// Most sessions at once.
    #[arg(long, default_value_t = 100_000)]
    pub max_sessions: usize,
    /// Seconds given to queued sends at shutdown.
    #[arg(long, default_value_t = 5)]
    pub shutdown_secs: u64,
    /// Serve metrics in Prometheus text format on this address (e.g. 127.0.0.1:9100).
    #[arg(long, value_parser = crate::parse_addr)]
    pub metrics: Option<SocketAddr>,
    /// PEM certificate chain, leaf first. With it `--addr` speaks TLS only (PROTOCOL.md
    /// section 5); needs `--tls-key`.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert` (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Also listen for WebSocket connections here (PROTOCOL.md section 6; wss with
    /// `--tls-cert`), served by the same workers and, for chat, the same room. `GET /` on
    /// it returns the browser chat page.
    #[arg(long, value_name = "ADDR", value_parser = crate::parse_addr)]
    pub ws_addr: Option<SocketAddr>,
}

/// The TLS configuration of `--tls-cert`/`--tls-key`, if given. Loaded before anything
/// starts, so that a bad file stops the server with an error naming it.
fn tls_config<const P: u16>(args: &ServerArgs<P>) -> Result<Option<Arc<ServerConfig>>, String> {
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else {
        return Ok(None); // clap makes the two flags go together
    };
    let certs = servercore::tls::load_certs(cert).map_err(|e| format!("--tls-cert: {e}"))?;
    let key_der = servercore::tls::load_private_key(key).map_err(|e| format!("--tls-key: {e}"))?;
    let config = servercore::tls::server_config(certs, key_der).map_err(|e| {
        format!("--tls-cert {} with --tls-key {}: {e}", cert.display(), key.display())
    })?;
    Ok(Some(config))
}

/// Starts the metrics endpoint if asked for (before the server, so its workers register),
/// with the probes of `health`.
fn start_metrics<const P: u16>(args: &ServerArgs<P>, health: &Arc<Health>) -> Result<(), String> {
    if let Some(addr) = args.metrics {
        let bound = crate::metrics_http::serve(addr, health.clone())?;
        eprintln!("metrics on http://{bound}/metrics");
    }
    Ok(())
}

/// The server's builder, and whether it speaks TLS.
pub fn builder<const P: u16>(
    args: &ServerArgs<P>,
) -> Result<(servercore::service::ServerBuilder, bool), String> {
    let tls = tls_config(args)?;
    let mut b = ServerService::builder(args.addr)
        .max_sessions(args.max_sessions)
        .backend(BackendChoice::Auto)
        .diagnostics(crate::diagnostics_from_env());
    if let Some(w) = args.workers {
        b = b.workers(w.into());
    }
    let with_tls = tls.is_some();
    if let Some(config) = tls {
        b = b.tls(config);
    }
    if let Some(ws_addr) = args.ws_addr {
        b = b.websocket(ws_addr, crate::page::ws_config());
    }
    Ok((b, with_tls))
}

/// Prints the readiness lines of PROTOCOL.md section 4 (the TCP listener's, then the
/// WebSocket listener's, if any) and flushes them.
pub fn print_ready(server: &ServerService, tls: bool) {
    use std::io::Write;
    let line = |addr: SocketAddr, websocket: bool| {
        format!(
            "listening on {addr} (backend: {}, workers: {}{}{})",
            server.backend(),
            server.workers(),
            if tls { ", tls" } else { "" },
            if websocket { ", websocket" } else { "" }
        )
    };
    let mut text = line(server.local_addr(), false);
    text.push('\n');
    if let Some(ws) = server.websocket_addr() {
        text.push_str(&line(ws, true));
        text.push('\n');
    }
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Waits for SIGINT/SIGTERM, then shuts the server down gracefully (not ready from the
/// signal on).
pub fn serve_until_signal(
    server: ServerService,
    signals: TerminationSignals,
    shutdown_secs: u64,
    health: &Health,
) -> Result<ExitCode, String> {
    let sig = signals.wait().map_err(|e| format!("waiting for signals failed: {e}"))?;
    eprintln!("{sig} received: shutting down");
    health.stopping();
    let stats = server.stats();
    server
        .shutdown(Duration::from_secs(shutdown_secs))
        .map_err(|e| format!("shutdown failed: {e}"))?;
    eprintln!("served {} sessions ({} rejected over the cap)", stats.accepted, stats.rejected);
    Ok(ExitCode::SUCCESS)
}

pub fn run_echo(args: ServerArgs<7000>, signals: TerminationSignals) -> Result<ExitCode, String> {
    let (builder, tls) = builder(&args)?;
    let health = Arc::new(Health::default());
    start_metrics(&args, &health)?;
    let server = builder
        .start(EchoSession::default)
        .map_err(|e| format!("echo server failed to start: {e}"))?;
    // Listening from here: ready before the readiness line tells anyone.
    health.serving(|| Ok(()));
    print_ready(&server, tls);
    serve_until_signal(server, signals, args.shutdown_secs, &health)
}

/// `chat-server` options: the common ones plus the packet size limit.
#[derive(Args, Debug, Clone)]
pub struct ChatArgs {
    #[command(flatten)]
    pub server: ServerArgs<7100>,
    /// Largest packet accepted, header included (4..=65535).
    #[arg(long, default_value_t = servercore::packet::DEFAULT_MAX_PACKET_SIZE as u32,
          value_parser = clap::value_parser!(u32).range(4..=65535))]
    pub max_packet: u32,
    /// Longest time (ms) a worker gathers input after fanning a broadcast out, so that
    /// more messages share each send (0: never; see `SessionConfig::broadcast_gather_max`).
    #[arg(long, default_value_t = default_gather_ms())]
    pub broadcast_gather_ms: u64,
    /// Share the chat room with every chat server on this NATS (`nats://HOST:PORT`): a
    /// message reaches the members on every server (per-sender order, at most once). The
    /// server starts and serves locally even while NATS is unreachable; needs `--node`.
    #[arg(long, value_name = "URL", requires = "node")]
    pub cluster: Option<String>,
    /// This server's name in the cluster, unique among the servers on that NATS (letters,
    /// digits, `-`, `_`; no `.`, `*`, `>` or spaces); needs `--cluster`.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    pub node: Option<String>,
    /// Benchmark/load option: spread the sessions over N rooms instead of one, the n-th
    /// session accepted (counting from 0) joining room n mod N. A C_CHAT then reaches every
    /// session of the sender's room, the sender included; the wire protocol is unchanged.
    /// Default 1: every session in one room. Not with `--cluster` (one shared room).
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = parse_rooms)]
    pub rooms: u32,
}

/// Most rooms `--rooms` takes.
const MAX_ROOMS: u32 = 100_000;

/// `--rooms N`: 1 ..= [`MAX_ROOMS`], with a message a person can act on.
fn parse_rooms(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("expected a number of rooms, got {s:?}"))?;
    if !(1..=MAX_ROOMS).contains(&n) {
        return Err(format!(
            "a chat server needs at least 1 room and takes at most {MAX_ROOMS}, got {n}"
        ));
    }
    Ok(n)
}

fn default_gather_ms() -> u64 {
    servercore::SessionConfig::default().broadcast_gather_max.as_millis() as u64
}

/// The cluster of `--cluster`/`--node`, started (it returns at once, NATS reachable or
/// not: the link keeps trying in the background and logs it).
fn start_cluster(args: &ChatArgs) -> Result<Option<Cluster>, String> {
    let (Some(url), Some(node)) = (&args.cluster, &args.node) else {
        return Ok(None); // clap makes the two flags go together
    };
    let cluster = Cluster::start(ClusterConfig::new(url, node))
        .map_err(|e| format!("--cluster {url} --node {node}: {e}"))?;
    eprintln!("cluster node {node}: the chat room spans every chat server on NATS at {url}");
    Ok(Some(cluster))
}

pub fn run_chat(args: ChatArgs, signals: TerminationSignals) -> Result<ExitCode, String> {
    if args.cluster.is_some() && args.rooms > 1 {
        return Err(format!(
            "--rooms {} cannot be used with --cluster: a cluster shares one chat room \
             (PROTOCOL.md section 7); leave out --rooms",
            args.rooms
        ));
    }
    let (builder, tls) = builder(&args.server)?;
    let health = Arc::new(Health::default());
    // The metrics recorder first: the cluster registers its metrics when it starts.
    start_metrics(&args.server, &health)?;
    let cluster = start_cluster(&args)?.map(Arc::new);
    let rooms = match &cluster {
        Some(c) => vec![c.room("chat").map_err(|e| format!("cluster room: {e}"))?],
        None => (0..args.rooms).map(|_| Room::new()).collect(),
    };
    if args.rooms > 1 {
        eprintln!(
            "{} chat rooms: the n-th session accepted joins room n mod {}",
            args.rooms, args.rooms
        );
    }
    let config = servercore::SessionConfig {
        broadcast_gather_max: Duration::from_millis(args.broadcast_gather_ms),
        ..Default::default()
    };
    let server = match builder
        .session_config(config)
        .start(ChatSession::factory_in_rooms(rooms, args.max_packet as usize))
    {
        Ok(server) => server,
        Err(e) => {
            if let Some(c) = cluster.and_then(Arc::into_inner) {
                let _ = c.shutdown(Duration::from_secs(1));
            }
            return Err(format!("chat server failed to start: {e}"));
        }
    };
    // Listening from here: the probe knows before the readiness line tells anyone.
    match &cluster {
        Some(c) => {
            let (c, url) = (c.clone(), args.cluster.clone().unwrap_or_default());
            health.serving(move || {
                if c.is_up() {
                    Ok(())
                } else {
                    Err(format!("cluster node {}: link to NATS at {url} is down", c.node()))
                }
            });
        }
        None => health.serving(|| Ok(())),
    }
    print_ready(&server, tls);
    let result = serve_until_signal(server, signals, args.server.shutdown_secs, &health);
    // After the server: its last broadcasts still go out. `health.stopping()` drops the
    // readiness check's reference, so this one is the last.
    health.stopping();
    if let Some(c) = cluster.and_then(Arc::into_inner) {
        let (node, s) = (c.node().to_string(), c.stats());
        c.shutdown(Duration::from_secs(args.server.shutdown_secs))
            .map_err(|e| format!("cluster shutdown failed: {e}"))?;
        eprintln!(
            "cluster node {node}: published {}, received {}, dropped {} (link down or slow), \
             {} connects to NATS",
            s.published, s.received, s.dropped, s.connects
        );
    }
    result
}
