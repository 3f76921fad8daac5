//! `servercore-bench`: servercore side by side with tokio reference servers (issue 5).
//!
//! ```text
//! cargo run --release -p servercore-bench            # the full run (builds servercore first)
//! cargo run --release -p servercore-bench -- --quick # a smoke run: 1 round of 1 s each
//! ```
//! The same binary also is the tokio reference servers (`tokio-echo`, `tokio-chat`) and the
//! churn load (`churn-client`), which the driver starts as separate, pinned processes.

mod churn;
mod json;
mod procfs;
mod report;
mod run;
mod sys;
mod tokio_servers;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
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
    /// tokio reference chat server (PROTOCOL.md section 3).
    TokioChat {
        #[arg(long, default_value = "127.0.0.1:7100")]
        addr: SocketAddr,
        /// Largest packet accepted, header included.
        #[arg(long, default_value_t = 4096)]
        max_packet: usize,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::run(cli.run),
        Some(Command::Run(args)) => run::run(args),
        Some(Command::TokioEcho { addr }) => {
            tokio_servers::run_echo(addr).map_err(|e| format!("tokio-echo: {e}"))
        }
        Some(Command::TokioChat { addr, max_packet }) => {
            tokio_servers::run_chat(addr, max_packet).map_err(|e| format!("tokio-chat: {e}"))
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
