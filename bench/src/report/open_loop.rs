//! The open-loop latency table (issue 16).

use super::cells::{cpu_cell, group, num};
use super::stats::Outcome;
use crate::workloads::{Load, Server};
use std::fmt::Write as _;

/// The open-loop latency rows (issue 16), every one of the run (one room, several rooms):
/// delivery latency at a fixed rate, servercore with fan-out gathering on and off, and
/// tokio, with the load client's busy share.
pub(super) fn render_open_loop(outcomes: &[Outcome], notes: &mut Vec<String>) -> String {
    let mut s = String::new();
    let mut p999_missing = false;
    for o in outcomes {
        let w = &o.workload;
        let Load::OpenChat { sessions, rate, .. } = w.load else { continue };
        let rooms = w.load.rooms();
        if s.is_empty() {
            let _ = writeln!(
                s,
                "\nOpen-loop latency (issue 16; same run): each session sends at a fixed rate \
                 (`dummy-client --rate`), whatever the replies do; latency = a sender's own \
                 message back through its room (send to delivery). Rows with N rooms: both \
                 servers run with `--rooms N` (the n-th session accepted joins room n mod N; a \
                 message reaches its sender's room only). Load core busy near 100%: the load \
                 client limits these figures.\n"
            );
            let _ = writeln!(
                s,
                "| workload | server | deliveries/s | p50 us | p99 us | p99.9 us | server CPU per delivery | server core busy | load core busy |"
            );
            let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---:|---:|");
        }
        let rows = match &o.rows {
            Err(why) => {
                let _ = writeln!(s, "| {} | {why} | - | - | - | - | - | - | - |", w.label);
                continue;
            }
            Ok(rows) => rows,
        };
        for (server, m) in rows {
            let label = match server {
                Server::Servercore { without: None, .. } => {
                    "servercore io_uring, gathering on (default)".to_string()
                }
                Server::Servercore { without: Some(_), .. } => {
                    "servercore io_uring, gathering off (--broadcast-gather-ms 0)".to_string()
                }
                _ => server.label_in(w),
            };
            if let Some(p) = &m.problem {
                notes.push(format!(
                    "{} / {label}: {} of {} rounds used; {p}",
                    w.label, m.good_rounds, m.rounds
                ));
            }
            if !m.valid() {
                let _ = writeln!(s, "| {} | {label} | failed | - | - | - | - | - | - |", w.label);
                continue;
            }
            p999_missing |= !m.p999_us.is_finite();
            // Every message reaches each member of its sender's room.
            let per_room = f64::from(sessions) / f64::from(rooms);
            let expected = f64::from(sessions) * per_room * f64::from(rate);
            if m.rate < 0.9 * expected {
                notes.push(format!(
                    "{} / {label}: {} deliveries/s, below the {} the rate asks for",
                    w.label,
                    group(m.rate),
                    group(expected)
                ));
            }
            let _ = writeln!(
                s,
                "| {} | {label} | {} | {} | {} | {} | {} | {:.0}% | {:.0}% |",
                w.label,
                group(m.rate),
                num(m.p50_us),
                num(m.p99_us),
                num(m.p999_us),
                cpu_cell(w.load, m.cpu_per_unit_us),
                m.util * 100.0,
                m.load_util * 100.0
            );
        }
    }
    if !s.is_empty() && p999_missing {
        let _ = writeln!(
            s,
            "\np99.9: \"-\" where the dummy-client's JSON has no p99.9 (`p999_us`) yet."
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::targets::render_targets;
    use crate::report::test_support::sample;
    use crate::workloads::IO_URING;

    #[test]
    fn open_loop_table_and_targets() {
        let workload =
            |k: &str| crate::workloads::workloads().into_iter().find(|w| w.key == k).unwrap();
        let off = Server::Servercore {
            backend: "io_uring",
            workers: 1,
            without: Some(crate::workloads::Ablation::Gather),
        };
        let with_latency = |rate: f64, p50: f64, p99: f64, p999: f64, load: f64| {
            let mut s = sample(rate, 0.1, vec![], None);
            (s.p50_us, s.p99_us, s.p999_us, s.load_cpu_util) = (p50, p99, p999, load);
            Ok(s)
        };
        // One room: 100 x 100 x 20 = 200,000 deliveries/s; 10 rooms of 100: 1,000 x 100 x 5
        // = 500,000.
        let one = Outcome::measured(
            workload("latency-chat-100"),
            vec![IO_URING, off, Server::Tokio],
            vec![
                vec![with_latency(2e5, 1400.0, 3000.0, 4000.0, 0.9)],
                vec![with_latency(2e5, 700.0, 2500.0, f64::NAN, 0.9)],
                vec![with_latency(2e5, 900.0, 3500.0, f64::NAN, 0.9)],
            ],
        );
        let ten = Outcome::measured(
            workload("latency-chat-1000-10rooms"),
            vec![IO_URING, off, Server::Tokio],
            vec![
                vec![with_latency(5e5, 1200.0, 2000.0, 2500.0, 0.35)],
                vec![with_latency(5e5, 1000.0, 1900.0, 2400.0, 0.36)],
                // Short of the rate: a note says so.
                vec![with_latency(4e5, 1100.0, 2600.0, 3100.0, 0.4)],
            ],
        );
        let both = [one, ten];
        let mut notes = Vec::new();
        let t = render_open_loop(&both, &mut notes);
        assert!(t.contains("| servercore io_uring, gathering on (default) | 200,000 | 1400 | 3000 | 4000 | 100 ns/delivery |"), "{t}");
        assert!(t.contains("| servercore io_uring, gathering off (--broadcast-gather-ms 0) | 200,000 | 700 | 2500 | - |"), "{t}");
        assert!(t.contains("| tokio | 200,000 | 900 | 3500 | - |"), "{t}");
        assert!(t.contains("no p99.9"), "{t}");
        assert!(t.contains("`--rooms N`"), "{t}");
        let ten_label = "open-loop chat 64 B, 1,000 sessions x 5 msg/s, 10 rooms of 100";
        assert!(t.contains(&format!("| {ten_label} | servercore io_uring, gathering on (default) | 500,000 | 1200 | 2000 | 2500 | 100 ns/delivery | 50% | 35% |")), "{t}");
        assert!(t.contains(&format!("| {ten_label} | servercore io_uring, gathering off (--broadcast-gather-ms 0) | 500,000 | 1000 | 1900 | 2400 | 100 ns/delivery | 50% | 36% |")), "{t}");
        assert!(
            t.contains(&format!("| {ten_label} | tokio | 400,000 | 1100 | 2600 | 3100 |")),
            "{t}"
        );
        // One table: one header for both rows.
        assert_eq!(t.matches("| workload | server | deliveries/s |").count(), 1, "{t}");
        assert!(!t.contains("is not run"), "{t}");
        // The one-room row meets its rate (200,000); the 10-room one is checked against
        // 500,000, not 1,000 x 1,000 x 5.
        assert_eq!(notes.len(), 1, "{notes:?}");
        assert!(
            notes[0].starts_with(&format!(
                "{ten_label} / tokio: 400,000 deliveries/s, below the 500,000"
            )),
            "{notes:?}"
        );
        let targets = render_targets(&both);
        assert!(targets.contains("Targets (issue 16)"), "{targets}");
        assert!(
            targets.contains("1 room: io_uring p99 <= tokio's | 3000 / 3500 us | yes |"),
            "{targets}"
        );
        assert!(
            targets.contains(
                "1 room: gathering costs <= 500 us at p50 (on - off) | 700 us | **no** |"
            ),
            "{targets}"
        );
        assert!(
            targets.contains(&format!(
                "{ten_label}: io_uring p99 <= tokio's | 2000 / 2600 us | yes |"
            )),
            "{targets}"
        );
        assert!(
            targets.contains(&format!(
                "{ten_label}: gathering costs <= 500 us at p50 (on - off) | 200 us | yes |"
            )),
            "{targets}"
        );
    }
}
