//! What the servercore binary under test can do: which workloads it can take part in.

use super::cluster::NATS_SERVER;
use crate::workloads::{Load, Server, Workload};
use std::path::Path;
use std::process::{Command, Stdio};

/// Why each kind of workload cannot run with the servercore under test, if it cannot.
pub(super) struct Missing {
    chat: Option<String>,
    tls: Option<String>,
    ws: Option<String>,
    cluster: Option<String>,
    rooms: Option<String>,
}

impl Missing {
    /// Asks `bin` (its `--help`) and the PATH.
    pub(super) fn of(bin: &Path) -> Missing {
        let chat = chat_unavailable(bin);
        let tls = tls_unavailable(bin);
        let ws = ws_unavailable(bin);
        let cluster = cluster_unavailable(bin);
        let rooms = rooms_unavailable(bin);
        Missing { chat, tls, ws, cluster, rooms }
    }

    /// Why workload `w` cannot run, if it cannot; else `servers` keeps those that can run it
    /// (tokio alone when servercore lacks TLS for the handshake load, or WebSocket).
    pub(super) fn unavailable(&self, w: &Workload, servers: &mut Vec<Server>) -> Option<String> {
        if w.load.is_chat() {
            if let Some(why) = &self.chat {
                return Some(why.clone());
            }
        }
        if w.load.rooms() > 1 {
            if let Some(why) = &self.rooms {
                return Some(why.clone());
            }
        }
        if w.tls {
            if let Some(why) = &self.tls {
                if !matches!(w.load, Load::Handshake { .. }) {
                    return Some(why.clone());
                }
                // The handshake load is the bench's own: tokio-rustls can still be measured.
                eprintln!("[{}] {why}; measuring tokio-rustls alone", w.key);
                servers.retain(|&s| s == Server::Tokio);
            }
        }
        if w.ws {
            if let Some(why) = &self.ws {
                // The reference alone still tells what the row will compare against.
                eprintln!("[{}] {why}; measuring tokio-tungstenite alone", w.key);
                servers.retain(|&s| s == Server::Tokio);
            }
        }
        if matches!(w.load, Load::Cluster { .. }) {
            if let Some(why) = &self.cluster {
                return Some(why.clone());
            }
        }
        None
    }
}

/// Why the chat workloads cannot run, if they cannot.
fn chat_unavailable(bin: &Path) -> Option<String> {
    let ok = |args: &[&str]| -> Option<String> {
        let out = Command::new(bin).args(args).stdin(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    if ok(&["chat-server", "--help"]).is_none() {
        return Some("n/a: chat-server not available".into());
    }
    match ok(&["dummy-client", "--help"]) {
        Some(help) if help.contains("chat") => None,
        _ => Some("n/a: dummy-client --mode chat not available".into()),
    }
}

/// Why the TLS workloads cannot run, if they cannot: the servers' `--tls-cert`/`--tls-key`
/// and the dummy-client's `--tls`/`--tls-ca` (issue 13).
fn tls_unavailable(bin: &Path) -> Option<String> {
    let help = |args: &[&str]| help_of(bin, args);
    if !help(&["echo-server", "--help"]).contains("--tls-cert") {
        return Some("n/a: this servercore has no echo-server --tls-cert".into());
    }
    let client = help(&["dummy-client", "--help"]);
    if !(client.contains("--tls") && client.contains("--tls-ca")) {
        return Some("n/a: this servercore has no dummy-client --tls --tls-ca".into());
    }
    None
}

/// Why servercore cannot take part in the WebSocket workloads, if it cannot: the servers'
/// `--ws-addr` and the dummy-client's `--ws` (issue 14).
fn ws_unavailable(bin: &Path) -> Option<String> {
    if !help_of(bin, &["echo-server", "--help"]).contains("--ws-addr") {
        return Some("n/a: this servercore has no echo-server --ws-addr".into());
    }
    if !help_of(bin, &["dummy-client", "--help"]).contains("--ws") {
        return Some("n/a: this servercore has no dummy-client --ws".into());
    }
    None
}

/// Why the cluster workload cannot run, if it cannot: chat-server's `--cluster` and a
/// `nats-server` on the PATH (issue 15).
fn cluster_unavailable(bin: &Path) -> Option<String> {
    if !help_of(bin, &["chat-server", "--help"]).contains("--cluster") {
        return Some("n/a: this servercore has no chat-server --cluster".into());
    }
    let nats = Command::new(NATS_SERVER).arg("--version").stdin(Stdio::null()).output();
    if !nats.is_ok_and(|o| o.status.success()) {
        return Some(format!("n/a: {NATS_SERVER} not found on the PATH"));
    }
    None
}

/// Why the multi-room workloads cannot run, if they cannot: chat-server's `--rooms`.
fn rooms_unavailable(bin: &Path) -> Option<String> {
    if !help_of(bin, &["chat-server", "--help"]).contains("--rooms") {
        return Some("n/a: this servercore has no chat-server --rooms".into());
    }
    None
}

/// The standard output of `bin args` (`--help`), empty when it fails.
fn help_of(bin: &Path, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
