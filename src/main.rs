//! `servercore`: the demo, the sample servers and the dummy (load) client.

mod demo;
mod dummy;
mod metrics_http;
mod page;
mod samples;
mod serve;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "servercore",
    version,
    about = "A game-server network core: demo, sample servers, load client"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Embedded server + dummy clients on loopback, live stats, summary (the default).
    Demo(demo::DemoArgs),
    /// Raw echo server (PROTOCOL.md section 1).
    EchoServer(serve::ServerArgs<7000>),
    /// Chat room server (PROTOCOL.md sections 2 and 3).
    ChatServer(serve::ChatArgs),
    /// Load client: many sessions that send, receive and verify.
    DummyClient(dummy::DummyArgs),
}

fn main() -> ExitCode {
    // Testing aid (tests/backend_fallback.rs): SERVERCORE_SECCOMP_DENY_IO_URING=1 makes the
    // kernel refuse io_uring to this process, as Docker's default seccomp profile does. It
    // must come first, before any thread or ring exists.
    if std::env::var_os("SERVERCORE_SECCOMP_DENY_IO_URING").is_some_and(|v| v == "1") {
        if let Err(e) = servercore::sys::deny_io_uring() {
            eprintln!("error: SERVERCORE_SECCOMP_DENY_IO_URING: cannot install the filter: {e}");
            return ExitCode::FAILURE;
        }
    }
    // Block SIGINT/SIGTERM before any thread starts, so that only `sigwait` takes them.
    let signals = match servercore::sys::TerminationSignals::block() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: cannot set up signal handling: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Demo(demo::DemoArgs::default())) {
        Command::Demo(args) => demo::run(args),
        Command::EchoServer(args) => serve::run_echo(args, signals),
        Command::ChatServer(args) => serve::run_chat(args, signals),
        Command::DummyClient(args) => dummy::run(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The diagnostic switches of the environment (README, "Backends"), each on when
/// its variable is exactly `1`. The library reads none of these itself; every service the
/// CLI starts gets them through its builder.
pub fn diagnostics_from_env() -> servercore::Diagnostics {
    let on = |name: &str| std::env::var_os(name).is_some_and(|v| v == "1");
    servercore::Diagnostics {
        uring_no_bufring: on("SERVERCORE_URING_NO_BUFRING"),
        uring_no_defer_taskrun: on("SERVERCORE_URING_NO_DEFER_TASKRUN"),
        uring_no_ext_arg: on("SERVERCORE_URING_NO_EXT_ARG"),
        uring_no_multishot_poll: on("SERVERCORE_URING_NO_MULTISHOT_POLL"),
        no_room_coalesce: on("SERVERCORE_NO_ROOM_COALESCE"),
        // Testing aid (tests/backend_fallback.rs): behave as if the kernel refused io_uring.
        deny_io_uring: on("SERVERCORE_TEST_DENY_IO_URING"),
    }
}

/// Parses `host:port`, with a message a person can act on.
fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    s.to_socket_addrs()
        .map_err(|e| format!("invalid address {s:?}: {e} (expected e.g. 127.0.0.1:7000)"))?
        .next()
        .ok_or_else(|| format!("address {s:?} resolves to nothing"))
}
