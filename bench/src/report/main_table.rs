//! The main table: every workload but the open-loop and cluster ones (their own tables),
//! a row per server; with its footnotes.

use super::cells::{cpu_cell, group, kib, num, rate_unit};
use super::header::Header;
use super::stats::{compared, ratio, Outcome, Summary};
use crate::workloads::{Load, Server, Workload};
use std::fmt::Write as _;

/// The main table and its footnote (nothing when every workload has its own table); the
/// notes on its rows go to `notes`.
pub(super) fn render_main_table(
    header: &Header,
    outcomes: &[Outcome],
    notes: &mut Vec<String>,
) -> String {
    let mut s = String::new();
    // The cluster and open-loop workloads have their own tables; this one is for every
    // other workload.
    let own_table = |l: Load| matches!(l, Load::Cluster { .. } | Load::OpenChat { .. });
    let main_table = outcomes.iter().any(|o| !own_table(o.workload.load));
    if main_table {
        let _ = writeln!(
            s,
            "\n| workload | server | msg/s | p50 us | p99 us | server CPU per msg | peak RSS | ratio vs tokio | server core busy | load core busy |"
        );
        let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    }
    let mut client_backend: Option<String> = None;
    for o in outcomes {
        let w = &o.workload;
        if own_table(w.load) {
            continue; // its own table, below
        }
        let rows = match &o.rows {
            Err(why) => {
                let _ = writeln!(s, "| {} | {why} | - | - | - | - | - | - | - | - |", w.label);
                continue;
            }
            Ok(rows) => rows,
        };
        let tokio = o.get(Server::Tokio);
        for (server, m) in reference_last(rows) {
            row_notes(header.busy_cores, w, *server, m, notes);
            if client_backend.is_none() {
                client_backend.clone_from(&m.client_backend);
            }
            s.push_str(&row(w, *server, m, tokio));
        }
    }
    if main_table {
        let _ = writeln!(
            s,
            "\nmsg/s, p50, p99: from the load client (`servercore dummy-client --workers 1{}`; \
             churn: `servercore-bench churn-client`). Server CPU = utime + stime of the server \
             process from /proc/PID/stat over the load window. Ratio vs tokio: server CPU per \
             msg (memory row: RSS per session), servercore / tokio; <= 1.00 is better. Server \
             / load core busy: CPU seconds per wall second of the server / of the load client \
             (near 100%: that side limits msg/s).",
            client_backend.map(|b| format!(", backend {b}")).unwrap_or_default()
        );
    }
    s
}

/// The rows in table order: servercore rows first, then the bare io_uring loop, tokio (the
/// reference) last.
fn reference_last(rows: &[(Server, Summary)]) -> Vec<&(Server, Summary)> {
    let refs = [Server::Bare, Server::Tokio];
    let mut ordered: Vec<&(Server, Summary)> =
        rows.iter().filter(|(sv, _)| !refs.contains(sv)).collect();
    for r in refs {
        ordered.extend(rows.iter().filter(|(sv, _)| *sv == r));
    }
    ordered
}

/// The notes on a row: rounds left out, other processes busy during a kept round, kernel
/// threads and steal.
fn row_notes(busy_cores: f64, w: &Workload, server: Server, m: &Summary, notes: &mut Vec<String>) {
    if let Some(p) = &m.problem {
        notes.push(format!(
            "{} / {}: {} of {} rounds used; {p}",
            w.label,
            server.label_in(w),
            m.good_rounds,
            m.rounds
        ));
    }
    if m.foreign_cores > busy_cores {
        notes.push(format!(
            "{} / {}: other processes used up to {:.2} cores during a round kept after \
             retries; its figures may be disturbed",
            w.label,
            server.label_in(w),
            m.foreign_cores
        ));
    }
    if m.kernel_cores > 0.1 || m.steal_cores > 0.1 {
        notes.push(format!(
            "{} / {}: besides the server, kernel threads (ksoftirqd, rcu, kworkers: not \
             charged to the server) used {:.2} cores and hypervisor steal took {:.2} cores \
             (medians)",
            w.label,
            server.label_in(w),
            m.kernel_cores,
            m.steal_cores
        ));
    }
}

/// A row of the table ("failed" when no round was good); `tokio`: the workload's reference.
fn row(w: &Workload, server: Server, m: &Summary, tokio: Option<&Summary>) -> String {
    let mut s = String::new();
    if !m.valid() {
        let _ = writeln!(
            s,
            "| {} | {} | failed | - | - | - | - | - | - | - |",
            w.label,
            server.label_in(w)
        );
        return s;
    }
    let rate = match w.load {
        Load::Echo { .. } | Load::Memory { .. } => group(m.rate),
        _ => format!("{} {}", group(m.rate), rate_unit(w.load)),
    };
    let rss = match m.rss_per_session_kib {
        Some(r) => format!("{r:.2} KiB/session (peak {})", kib(m.peak_rss_kib)),
        None => kib(m.peak_rss_kib),
    };
    let r = if server == Server::Tokio {
        "ref".to_string()
    } else {
        match tokio.and_then(|t| ratio(compared(w.load, m), compared(w.load, t))) {
            Some(r) => format!("{r:.2}"),
            None => "-".into(),
        }
    };
    let _ = writeln!(
        s,
        "| {} | {} | {rate} | {} | {} | {} | {rss} | {r} | {:.0}% | {:.0}% |",
        w.label,
        server.label_in(w),
        num(m.p50_us),
        num(m.p99_us),
        cpu_cell(w.load, m.cpu_per_unit_us),
        m.util * 100.0,
        m.load_util * 100.0
    );
    s
}

/// The TLS and WebSocket rows' footnotes, when the run has such rows.
pub(super) fn transport_notes(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    if outcomes.iter().any(|o| o.workload.tls) {
        let _ = writeln!(
            s,
            "\nTLS rows (issue 13): every server uses the same self-signed ECDSA P-256 \
             certificate, made at bench start (rcgen); servercore with `--tls-cert/--tls-key`, \
             tokio-rustls with the same rustls configuration as servercore's (ring provider, \
             TLS 1.3 and 1.2, rustls defaults); the dummy-client runs with `--tls --tls-ca` (its \
             window starts once every session is past its handshake). Handshakes: \
             `servercore-bench tls-churn-client`, waves of connections that each run a full \
             TLS 1.3 handshake (X25519; no resumption; the client does not verify the \
             certificate), echo one byte, send close_notify and close; server CPU per handshake \
             covers the TCP accept and close too."
        );
    }
    if outcomes.iter().any(|o| o.workload.ws) {
        let _ = writeln!(
            s,
            "\nWebSocket rows (issue 14): servercore serves the load on its `--ws-addr` \
             listener (the same workers as its TCP listener, which stays idle); the reference \
             is tokio + tokio-tungstenite (default configuration, a task per connection: echo \
             sends each binary message back; chat relays each S_CHAT as its own binary \
             message, a writer task per session feeding its queue to the sink and flushing \
             once per batch); the dummy-client runs with `--ws` (one binary message per \
             packet; its window starts once every session is past its upgrade)."
        );
    }
    s
}
