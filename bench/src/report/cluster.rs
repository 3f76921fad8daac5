//! The cluster workload's table (issue 15).

use super::cells::{cpu_cell, group, num};
use super::stats::{ratio, Outcome};
use crate::workloads::{Load, IO_URING, PROBE_RATE};
use std::fmt::Write as _;

/// The cluster workload's table (issue 15): one node against two nodes on NATS, with the
/// probe's local and cross-node latency; its notes go to `notes`.
pub(super) fn render_cluster(outcomes: &[Outcome], notes: &mut Vec<String>) -> String {
    let mut s = String::new();
    for o in outcomes {
        let w = &o.workload;
        let Load::Cluster { sessions, .. } = w.load else { continue };
        if s.is_empty() {
            let _ = writeln!(
                s,
                "\nCluster (issue 15): the same chat load on one chat server, then on two chat \
                 servers attached to one nats-server (`chat-server --cluster nats://.. --node \
                 a|b`; the dummy-client gets both addresses and alternates its {sessions} \
                 sessions between them). With 2 cores, both nodes and nats-server are pinned \
                 to core 0 and share it; the load (dummy-client and probe) is on core 1. \
                 Server CPU = utime + stime of all three processes, summed (per process: node \
                 a + node b + nats-server). p50/p99: the dummy-client's own round trips (a \
                 sender's message comes back through its own node). Probe: \
                 `servercore-bench cluster-probe`, one session per node (two on the single \
                 server), sending {PROBE_RATE} text messages per second in turns through \
                 the loaded room and timing every delivery of them: local = to a session on \
                 the sender's node, cross-node = to a session on the other node. Deliveries \
                 count the probe's too (under 1%).\n"
            );
            let _ = writeln!(
                s,
                "| workload | server | deliveries/s | p50 us | p99 us | probe local p50 / p99 us | probe cross-node p50 / p99 us | server CPU per delivery | ratio vs 1 node | server CPU (per process) | load core busy |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
        }
        let rows = match &o.rows {
            Err(why) => {
                let _ = writeln!(s, "| {} | {why} | - | - | - | - | - | - | - | - | - |", w.label);
                continue;
            }
            Ok(rows) => rows,
        };
        let one = o.get(IO_URING);
        for (server, m) in rows {
            let label = server.label_in(w);
            if let Some(p) = &m.problem {
                notes.push(format!(
                    "{} / {label}: {} of {} rounds used; {p}",
                    w.label, m.good_rounds, m.rounds
                ));
            }
            if !m.valid() {
                let _ = writeln!(
                    s,
                    "| {} | {label} | failed | - | - | - | - | - | - | - | - |",
                    w.label
                );
                continue;
            }
            let pair = |a: f64, b: f64| {
                if a.is_finite() || b.is_finite() {
                    format!("{} / {}", num(a), num(b))
                } else {
                    "-".into()
                }
            };
            let (local, cross) = match m.probe {
                Some(p) => {
                    (pair(p.local_p50_us, p.local_p99_us), pair(p.cross_p50_us, p.cross_p99_us))
                }
                None => ("-".into(), "-".into()),
            };
            let r = if *server == IO_URING {
                "ref".to_string()
            } else {
                one.and_then(|u| ratio(m.cpu_per_unit_us, u.cpu_per_unit_us))
                    .map_or("-".into(), |r| format!("{r:.2}"))
            };
            let cpu = if m.cpu_parts.len() > 1 {
                let parts: Vec<String> =
                    m.cpu_parts.iter().map(|u| format!("{:.0}%", u * 100.0)).collect();
                format!("{:.0}% ({})", m.util * 100.0, parts.join(" + "))
            } else {
                format!("{:.0}%", m.util * 100.0)
            };
            let _ = writeln!(
                s,
                "| {} | {label} | {} | {} | {} | {local} | {cross} | {} | {r} | {cpu} | {:.0}% |",
                w.label,
                group(m.rate),
                num(m.p50_us),
                num(m.p99_us),
                cpu_cell(w.load, m.cpu_per_unit_us),
                m.load_util * 100.0
            );
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::stats::ProbeLatency;
    use crate::report::targets::render_targets;
    use crate::report::test_support::sample;
    use crate::workloads::Server;

    #[test]
    fn cluster_table_and_target() {
        let w =
            crate::workloads::workloads().into_iter().find(|w| w.key == "cluster-chat").unwrap();
        let local = ProbeLatency {
            local_p50_us: 800.0,
            local_p99_us: 1200.0,
            cross_p50_us: f64::NAN,
            cross_p99_us: f64::NAN,
        };
        let cluster = ProbeLatency { cross_p50_us: 1100.0, cross_p99_us: 2000.0, ..local };
        let outcome = Outcome::measured(
            w,
            vec![IO_URING, Server::Cluster],
            vec![
                vec![Ok(sample(5e6, 0.1, vec![0.5], Some(local)))],
                vec![Ok(sample(3e6, 0.14, vec![0.4, 0.4, 0.1], Some(cluster)))],
            ],
        );
        let mut notes = Vec::new();
        let t = render_cluster(std::slice::from_ref(&outcome), &mut notes);
        assert!(notes.is_empty(), "{notes:?}");
        assert!(t.contains("| servercore io_uring, 1 node | 5,000,000 | 900 | 1500 | 800 / 1200 | - | 100 ns/delivery | ref | 50% |"), "{t}");
        assert!(t.contains("| servercore io_uring, 2 nodes + NATS | 3,000,000 | 900 | 1500 | 800 / 1200 | 1100 / 2000 | 140 ns/delivery | 1.40 | 90% (40% + 40% + 10%) |"), "{t}");
        let targets = render_targets(std::slice::from_ref(&outcome));
        assert!(targets.contains("Targets (issue 15)"), "{targets}");
        assert!(
            targets.contains("2 nodes + NATS CPU/delivery <= 1.5 x 1 node | 1.400 x | yes |"),
            "{targets}"
        );
    }
}
