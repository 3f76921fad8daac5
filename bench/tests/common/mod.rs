//! What the bench binary's end-to-end tests share: a server process of the bench binary,
//! started as the driver starts it, killed when dropped.
#![allow(dead_code)] // each test binary uses its own subset

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_servercore-bench");

/// A running server of the bench binary; killed and reaped on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `servercore-bench <args> --addr 127.0.0.1:0 ..`, reads its readiness line, which
/// must end with `tail`, and returns the server and its address.
pub fn start<I, S>(args: I, tail: &str) -> (Server, SocketAddr)
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut child =
        Command::new(BIN).args(args).stdin(Stdio::null()).stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let server = Server(child);
    assert!(line.trim_end().ends_with(tail), "{line:?}");
    let addr = line["listening on ".len()..].split_whitespace().next().unwrap().parse().unwrap();
    (server, addr)
}
