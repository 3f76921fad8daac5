//! The targets of the issues (5, 13, 14, 15, 16) that a run can judge, one line each.

use super::cells::num;
use super::stats::{ratio, Outcome, Summary};
use crate::workloads::{Ablation, Load, Server, Workload, IO_URING, IO_URING_2, POLL};
use std::fmt::Write as _;

/// One target: what it asks, the measured figure, and whether it is met.
type Target = (String, String, Option<bool>);

/// One line per target of issue 5 (and 13, for the TLS rows) that this run can judge.
pub(super) fn render_targets(outcomes: &[Outcome]) -> String {
    let rows: Vec<Target> = outcomes.iter().flat_map(targets_of).collect();
    if rows.is_empty() {
        return String::new();
    }
    let issues = issues_judged(outcomes);
    let mut s = format!(
        "\nTargets ({issues}), judged on the medians above:\n\n| target | measured | met |\n|---|---:|---|\n"
    );
    for (t, m, ok) in rows {
        let v = match ok {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(s, "| {t} | {m} | {v} |");
    }
    s
}

/// The targets one workload's rows can judge.
fn targets_of(o: &Outcome) -> Vec<Target> {
    let w = &o.workload;
    if w.tls || w.ws {
        return transport_targets(w, o.get(IO_URING), o.get(Server::Tokio));
    }
    if matches!(w.load, Load::Cluster { .. }) {
        return cluster_targets(o);
    }
    let mut rows = bare_targets(o);
    if matches!(w.load, Load::OpenChat { .. }) {
        rows.extend(open_loop_targets(o));
        return rows;
    }
    rows.extend(load_targets(o));
    rows.extend(poll_and_scale_targets(o));
    rows
}

/// "issue N" or "issues A, B and C": the issues whose targets the run's workloads concern.
fn issues_judged(outcomes: &[Outcome]) -> String {
    let mut issues: Vec<&str> = Vec::new();
    for o in outcomes {
        let w = &o.workload;
        let issue = if w.tls {
            "13"
        } else if w.ws {
            "14"
        } else if matches!(w.load, Load::Cluster { .. }) {
            "15"
        } else if matches!(w.load, Load::OpenChat { .. }) {
            "16"
        } else {
            "5"
        };
        if !issues.contains(&issue) {
            issues.push(issue);
        }
        let bare = o.rows.as_ref().is_ok_and(|r| r.iter().any(|(sv, _)| *sv == Server::Bare));
        if bare && !issues.contains(&"16") {
            issues.push("16");
        }
    }
    issues.sort_by_key(|i| i.parse::<u32>().unwrap_or(0));
    match issues.split_last() {
        Some((last, [])) => format!("issue {last}"),
        Some((last, rest)) => format!("issues {} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// The targets of issue 13 for a TLS workload (servercore io_uring against tokio-rustls)
/// and of issue 14 for a WebSocket one (against tokio-tungstenite): the same figures.
fn transport_targets(
    w: &Workload,
    uring: Option<&Summary>,
    tokio: Option<&Summary>,
) -> Vec<Target> {
    let (Some(u), Some(t)) = (uring, tokio) else { return Vec::new() };
    let reference = Server::Tokio.label_in(w);
    let reference = reference.as_str();
    let row = |what: &str, r: Option<f64>, met: fn(f64) -> bool| {
        r.map(|r| (format!("{}: {what}", w.label), format!("{r:.3} x"), Some(met(r))))
    };
    let r = match w.load {
        Load::Echo { .. } => row(
            &format!("io_uring CPU/msg <= 0.90 x {reference}"),
            ratio(u.cpu_per_unit_us, t.cpu_per_unit_us),
            |r| r <= 0.90,
        ),
        Load::Chat { .. } | Load::OpenChat { .. } | Load::Cluster { .. } => row(
            &format!("io_uring CPU/delivery <= 0.50 x {reference}"),
            ratio(u.cpu_per_unit_us, t.cpu_per_unit_us),
            |r| r <= 0.50,
        ),
        // Handshakes per second of server CPU: the inverse of CPU per handshake.
        Load::Handshake { .. } | Load::Churn { .. } => row(
            &format!("io_uring handshakes per server CPU second >= {reference}"),
            ratio(t.cpu_per_unit_us, u.cpu_per_unit_us),
            |r| r >= 1.0,
        ),
        Load::Memory { .. } => row(
            &format!("io_uring RSS per session <= 0.25 x {reference}"),
            ratio(
                u.rss_per_session_kib.unwrap_or(f64::NAN),
                t.rss_per_session_kib.unwrap_or(f64::NAN),
            ),
            |r| r <= 0.25,
        ),
    };
    r.into_iter().collect()
}

/// The cluster workload's target (issue 15): 2 nodes + NATS against 1 node.
fn cluster_targets(o: &Outcome) -> Vec<Target> {
    let w = &o.workload;
    let mut rows = Vec::new();
    let uring = o.get(IO_URING);
    let two = o.get(Server::Cluster);
    if let Some(r) = uring.zip(two).and_then(|(u, c)| ratio(c.cpu_per_unit_us, u.cpu_per_unit_us)) {
        rows.push((
            format!("{}: 2 nodes + NATS CPU/delivery <= 1.5 x 1 node", w.label),
            format!("{r:.3} x"),
            Some(r <= 1.5),
        ));
    }
    rows
}

/// The bare io_uring loop's target (issue 16), in a workload with a bare row.
fn bare_targets(o: &Outcome) -> Vec<Target> {
    let w = &o.workload;
    let mut rows = Vec::new();
    if let (Some(u), Some(b)) = (o.get(IO_URING), o.get(Server::Bare)) {
        if let Some(r) = ratio(u.cpu_per_unit_us, b.cpu_per_unit_us) {
            rows.push((
                format!("{}: io_uring CPU/msg <= 1.00 x bare io_uring loop", w.label),
                format!("{r:.3} x"),
                Some(r <= 1.0),
            ));
        }
    }
    rows
}

/// The open-loop targets (issue 16): p99 against tokio's, and what gathering costs at p50.
fn open_loop_targets(o: &Outcome) -> Vec<Target> {
    let w = &o.workload;
    let mut rows = Vec::new();
    let tokio = o.get(Server::Tokio);
    let uring = o.get(IO_URING);
    let off = o.get(Server::Servercore {
        backend: "io_uring",
        workers: 1,
        without: Some(Ablation::Gather),
    });
    if let (Some(u), Some(t)) = (uring, tokio) {
        if let Some(r) = ratio(u.p99_us, t.p99_us) {
            rows.push((
                format!("{}: io_uring p99 <= tokio's", w.label),
                format!("{} / {} us", num(u.p99_us), num(t.p99_us)),
                Some(r <= 1.0),
            ));
        }
    }
    if let (Some(u), Some(f)) = (uring, off) {
        let cost = u.p50_us - f.p50_us;
        if cost.is_finite() {
            rows.push((
                format!("{}: gathering costs <= 500 us at p50 (on - off)", w.label),
                format!("{cost:.0} us"),
                Some(cost <= 500.0),
            ));
        }
    }
    rows
}

/// Issue 5's targets of a plain workload, by its load: io_uring against tokio, and the
/// memory workload's RSS per session.
fn load_targets(o: &Outcome) -> Vec<Target> {
    let w = &o.workload;
    let mut rows = Vec::new();
    let tokio = o.get(Server::Tokio);
    let uring = o.get(IO_URING);
    let poll = o.get(POLL);
    match w.load {
        Load::Echo { .. } => {
            if let (Some(u), Some(t)) = (uring, tokio) {
                if let Some(r) = ratio(u.cpu_per_unit_us, t.cpu_per_unit_us) {
                    rows.push((
                        format!("{}: io_uring CPU/msg <= tokio", w.label),
                        format!("{r:.3} x"),
                        Some(r <= 1.0),
                    ));
                }
                if let Some(r) = ratio(u.rate, t.rate) {
                    rows.push((
                        format!("{}: io_uring msg/s >= tokio", w.label),
                        format!("{r:.3} x"),
                        Some(r >= 1.0),
                    ));
                }
            }
        }
        Load::Chat { .. } => {
            if let (Some(u), Some(t)) = (uring, tokio) {
                if let Some(r) = ratio(u.cpu_per_unit_us, t.cpu_per_unit_us) {
                    rows.push((
                        format!("{}: io_uring CPU/delivery <= 0.5 x tokio", w.label),
                        format!("{r:.3} x"),
                        Some(r <= 0.5),
                    ));
                }
            }
        }
        Load::Memory { .. } => {
            for (server, m) in [(IO_URING, uring), (POLL, poll)] {
                if let Some(r) = m.and_then(|m| m.rss_per_session_kib) {
                    rows.push((
                        format!("{}: {} <= 3 KiB RSS per session", w.label, server.label_in(w)),
                        format!("{r:.2} KiB"),
                        Some(r <= 3.0),
                    ));
                }
            }
        }
        Load::Cluster { .. } | Load::OpenChat { .. } => {}
        Load::Churn { .. } | Load::Handshake { .. } => {
            if let (Some(u), Some(t)) = (uring, tokio) {
                if let Some(r) = ratio(u.rate, t.rate) {
                    rows.push((
                        format!("{}: io_uring conn/s >= tokio", w.label),
                        format!("{r:.3} x"),
                        Some(r >= 1.0),
                    ));
                }
            }
        }
    }
    rows
}

/// Issue 5's poll and scale targets: poll against tokio, 2 workers against 1.
fn poll_and_scale_targets(o: &Outcome) -> Vec<Target> {
    let w = &o.workload;
    let mut rows = Vec::new();
    let tokio = o.get(Server::Tokio);
    let uring = o.get(IO_URING);
    let poll = o.get(POLL);
    let two = o.get(IO_URING_2);
    if let (Some(p), Some(t)) = (poll, tokio) {
        if !matches!(w.load, Load::Memory { .. }) {
            if let Some(r) = ratio(p.cpu_per_unit_us, t.cpu_per_unit_us) {
                rows.push((
                    format!("{}: poll CPU per unit within 1.2 x tokio", w.label),
                    format!("{r:.3} x"),
                    Some(r <= 1.2),
                ));
            }
        }
    }
    if let (Some(two), Some(one)) = (two, uring) {
        if let Some(r) = ratio(two.cpu_per_unit_us, one.cpu_per_unit_us) {
            rows.push((
                format!("{}: 2 workers CPU per unit <= 1.1 x 1 worker", w.label),
                format!("{r:.3} x"),
                Some(r <= 1.1),
            ));
        }
    }
    rows
}
