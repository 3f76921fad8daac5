//! The before/after tables: this build against the baseline build, and each technique
//! switched off against the full io_uring server.

use super::cells::cpu_cell;
use super::stats::{compared, ratio, Outcome, Summary};
use crate::workloads::{Load, Server, IO_URING};
use std::fmt::Write as _;

/// Before/after a change: the current io_uring row against the `--baseline-bin` build's,
/// from the same alternation.
pub(super) fn render_baseline(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        let w = &o.workload;
        let (Some(now), Some(base)) = (o.get(IO_URING), o.get(Server::Baseline)) else { continue };
        if s.is_empty() {
            let _ = writeln!(
                s,
                "\nThis build against the baseline build (same run, io_uring, 1 worker): server \
                 CPU per msg (memory: RSS per session), this / baseline, <= 1.00 is better; \
                 msg/s this / baseline, >= 1.00 is better.\n"
            );
            let _ = writeln!(
                s,
                "| workload | this | baseline | this / baseline | msg/s this / baseline |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        }
        if !(now.valid() && base.valid()) {
            let _ = writeln!(s, "| {} | - | - | failed | - |", w.label);
            continue;
        }
        let cell = |m: &Summary| match w.load {
            Load::Memory { .. } => {
                format!("{:.2} KiB/session", m.rss_per_session_kib.unwrap_or(f64::NAN))
            }
            _ => cpu_cell(w.load, m.cpu_per_unit_us),
        };
        let fmt = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            w.label,
            cell(now),
            cell(base),
            fmt(ratio(compared(w.load, now), compared(w.load, base))),
            fmt(ratio(now.rate, base.rate)),
        );
    }
    s
}

/// Before/after: each row with one technique switched off against the full io_uring row of
/// the same workload and run.
pub(super) fn render_techniques(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        let Ok(rows) = &o.rows else { continue };
        let w = &o.workload;
        if matches!(w.load, Load::OpenChat { .. }) {
            continue; // gathering on and off: the open-loop table
        }
        let Some(full) = o.get(IO_URING).filter(|m| m.valid()) else { continue };
        for (server, m) in rows {
            let Server::Servercore { without: Some(a), .. } = server else { continue };
            if s.is_empty() {
                let _ = writeln!(
                    s,
                    "\nTechniques, before/after (same run): the io_uring server with one technique \
                     switched off (README, \"Backends\"), against the full one; with / without: \
                     server CPU per msg (memory: RSS per session). Without / with above 1: what \
                     the technique saves.\n"
                );
                let _ = writeln!(
                    s,
                    "| workload | switched off | with | without | without / with | msg/s without / with |"
                );
                let _ = writeln!(s, "|---|---|---:|---:|---:|---:|");
            }
            if !m.valid() {
                let _ = writeln!(s, "| {} | {} | - | failed | - | - |", w.label, a.label());
                continue;
            }
            let (with, without) = match w.load {
                Load::Memory { .. } => (
                    format!("{:.2} KiB/session", full.rss_per_session_kib.unwrap_or(f64::NAN)),
                    format!("{:.2} KiB/session", m.rss_per_session_kib.unwrap_or(f64::NAN)),
                ),
                _ => (cpu_cell(w.load, full.cpu_per_unit_us), cpu_cell(w.load, m.cpu_per_unit_us)),
            };
            let fmt = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
            let _ = writeln!(
                s,
                "| {} | {} | {with} | {without} | {} | {} |",
                w.label,
                a.label(),
                fmt(ratio(compared(w.load, m), compared(w.load, full))),
                fmt(ratio(m.rate, full.rate)),
            );
        }
    }
    s
}
