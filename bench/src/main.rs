//! `servercore-bench`: servercore side by side with tokio reference servers (issue 5).
//!
//! ```text
//! cargo run --release -p servercore-bench            # the full run (builds servercore first)
//! cargo run --release -p servercore-bench -- --quick # a smoke run: 1 round of 1 s each
//! ```
//! The same binary also is the tokio reference servers (`tokio-echo`, `tokio-chat`, over
//! tokio-rustls `tokio-tls-echo`, `tokio-tls-chat`, over tokio-tungstenite `tokio-ws-echo`,
//! `tokio-ws-chat`), the bare io_uring echo loop (`bare-echo`), the churn loads (`churn-client`, `tls-churn-client`) and the cluster
//! row's latency probe (`cluster-probe`), which the driver starts as separate, pinned
//! processes.

mod bare;
mod chart;
mod churn;
mod json;
mod probe;
mod procfs;
mod report;
mod run;
mod sys;
mod tls_churn;
mod tokio_servers;
mod workloads;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "servercore-bench",
    about = "Benchmark servercore against tokio reference servers, side by side",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: run::RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the benchmark and print the table (the default).
    Run(run::RunArgs),
    /// tokio reference echo server: a task per connection, 64 KiB buffer, read then write_all.
    TokioEcho {
        #[arg(long, default_value = "127.0.0.1:7000")]
        addr: SocketAddr,
    },
    /// Bare io_uring echo loop (issue 16): one thread, multishot accept, multishot receive
    /// from a provided-buffer ring, one SEND straight from each received buffer.
    BareEcho {
        #[arg(long, default_value = "127.0.0.1:7000")]
        addr: SocketAddr,
    },
    /// tokio reference chat server (PROTOCOL.md section 3).
    TokioChat {
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// Largest packet accepted, header included.
        #[arg(long, default_value_t = 4096)]
        max_packet: usize,
        /// Rooms, as `chat-server --rooms N`: the n-th session accepted (from 0) joins room
        /// n mod N; a C_CHAT reaches the sender's room only. Default 1: one room.
        #[arg(long, value_name = "N", default_value_t = 1,
              value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rooms: u32,
    },
    /// tokio-rustls reference echo server: `tokio-echo` with a TLS handshake first.
    TokioTlsEcho {
        #[arg(long, default_value = "127.0.0.1:7000")]
        addr: SocketAddr,
        #[command(flatten)]
        tls: TlsFiles,
    },
    /// tokio-rustls reference chat server: `tokio-chat` with a TLS handshake first.
    TokioTlsChat {
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// Largest packet accepted, header included.
        #[arg(long, default_value_t = 4096)]
        max_packet: usize,
        #[command(flatten)]
        tls: TlsFiles,
    },
    /// tokio-tungstenite reference echo server: each binary message sent back as a binary
    /// message (PROTOCOL.md section 6).
    TokioWsEcho {
        #[arg(long, default_value = "127.0.0.1:7001")]
        addr: SocketAddr,
    },
    /// tokio-tungstenite reference chat server: `tokio-chat` with its packets inside binary
    /// messages (PROTOCOL.md section 6).
    TokioWsChat {
        #[arg(long, default_value = "127.0.0.1:7101")]
        addr: SocketAddr,
        /// Largest packet accepted, header included.
        #[arg(long, default_value_t = 4096)]
        max_packet: usize,
    },
    /// Chat latency probe: one session per --addr (one per node of a cluster), taking turns
    /// to send text C_CHATs at --rate; times every delivery, local (to the sender's node) or
    /// cross-node; prints JSON.
    ClusterProbe {
        /// A chat server (repeat: one per node).
        #[arg(long, required = true)]
        addr: Vec<SocketAddr>,
        /// Probe messages per second, all sessions together.
        #[arg(long, default_value_t = 200.0)]
        rate: f64,
        /// Seconds to keep sending.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
    /// TLS handshake load: waves of connections that connect, run a full TLS 1.3 handshake,
    /// echo one byte, send close_notify and close; prints JSON.
    TlsChurnClient {
        #[arg(long)]
        addr: SocketAddr,
        /// Connections per wave.
        #[arg(long, default_value_t = 1000)]
        wave: usize,
        /// Seconds to keep starting waves.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Verify the server against the certificates of this PEM file (default: accept any
        /// certificate, the lightest load).
        #[arg(long)]
        tls_ca: Option<PathBuf>,
        /// Name sent in SNI (and verified with --tls-ca).
        #[arg(long, default_value = "localhost")]
        tls_server_name: String,
    },
    /// Churn load: waves of connections that connect, echo one byte and close; prints JSON.
    ChurnClient {
        #[arg(long)]
        addr: SocketAddr,
        /// Connections per wave.
        #[arg(long, default_value_t = 2000)]
        wave: usize,
        /// Seconds to keep starting waves.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
    },
}

/// The server's certificate chain and private key, PEM.
#[derive(clap::Args)]
struct TlsFiles {
    #[arg(long)]
    tls_cert: PathBuf,
    #[arg(long)]
    tls_key: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::run(cli.run),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::TokioEcho { addr }) => {
            tokio_servers::run_echo(addr).map_err(|e| format!("tokio-echo: {e}"))
        }
        Some(Command::BareEcho { addr }) => bare::run(addr).map_err(|e| format!("bare-echo: {e}")),
        Some(Command::TokioChat { addr, max_packet, rooms }) => {
            tokio_servers::run_chat(addr, max_packet, rooms as usize)
                .map_err(|e| format!("tokio-chat: {e}"))
        }
        Some(Command::TokioTlsEcho { addr, tls }) => {
            tokio_servers::tls_acceptor(&tls.tls_cert, &tls.tls_key)
                .and_then(|a| tokio_servers::run_tls_echo(addr, a).map_err(|e| e.to_string()))
                .map_err(|e| format!("tokio-tls-echo: {e}"))
        }
        Some(Command::TokioTlsChat { addr, max_packet, tls }) => {
            tokio_servers::tls_acceptor(&tls.tls_cert, &tls.tls_key)
                .and_then(|a| {
                    tokio_servers::run_tls_chat(addr, max_packet, a).map_err(|e| e.to_string())
                })
                .map_err(|e| format!("tokio-tls-chat: {e}"))
        }
        Some(Command::TokioWsEcho { addr }) => {
            tokio_servers::run_ws_echo(addr).map_err(|e| format!("tokio-ws-echo: {e}"))
        }
        Some(Command::TokioWsChat { addr, max_packet }) => {
            tokio_servers::run_ws_chat(addr, max_packet).map_err(|e| format!("tokio-ws-chat: {e}"))
        }
        Some(Command::ClusterProbe { addr, rate, secs }) => {
            probe::run(&addr, rate, secs).map(|r| println!("{}", r.to_json()))
        }
        Some(Command::TlsChurnClient { addr, wave, secs, tls_ca, tls_server_name }) => {
            tls_churn::run(addr, wave.max(1), secs, tls_ca.as_deref(), &tls_server_name)
                .map(|r| println!("{}", r.to_json()))
        }
        Some(Command::ChurnClient { addr, wave, secs }) => {
            churn::run(addr, wave.max(1), secs).map(|r| println!("{}", r.to_json()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
