//! servercore against the bare io_uring echo loop (issue 16).

use super::cells::cpu_cell;
use super::stats::{ratio, Outcome};
use crate::workloads::{Server, IO_URING};
use std::fmt::Write as _;

/// servercore against the bare io_uring echo loop (issue 16), per echo workload of the
/// run: server CPU per message, servercore / bare.
pub(super) fn render_bare(outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    for o in outcomes {
        let w = &o.workload;
        let Ok(rows) = &o.rows else { continue };
        if !rows.iter().any(|(sv, _)| *sv == Server::Bare) {
            continue;
        }
        if s.is_empty() {
            let _ = writeln!(
                s,
                "\nservercore / bare io_uring loop (issue 16; same run): server CPU per msg of the \
                 1-worker io_uring server against `servercore-bench bare-echo` (one thread, \
                 multishot accept, multishot receive from a provided-buffer ring, one SEND \
                 straight from each received buffer, nothing else); <= 1.00: no framework cost \
                 left.\n"
            );
            let _ = writeln!(
                s,
                "| workload | servercore io_uring | bare io_uring loop | servercore / bare loop | msg/s servercore / bare loop |"
            );
            let _ = writeln!(s, "|---|---:|---:|---:|---:|");
        }
        let (Some(sc), Some(bare)) = (o.get(IO_URING), o.get(Server::Bare)) else {
            let _ = writeln!(s, "| {} | - | - | failed | - |", w.label);
            continue;
        };
        let fmt = |r: Option<f64>| r.map_or("-".to_string(), |r| format!("{r:.2}"));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} |",
            w.label,
            cpu_cell(w.load, sc.cpu_per_unit_us),
            cpu_cell(w.load, bare.cpu_per_unit_us),
            fmt(ratio(sc.cpu_per_unit_us, bare.cpu_per_unit_us)),
            fmt(ratio(sc.rate, bare.rate)),
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::targets::render_targets;
    use crate::report::test_support::sample;

    #[test]
    fn bare_loop_table_and_target() {
        let w = crate::workloads::workloads().into_iter().find(|w| w.key == "echo-64-d16").unwrap();
        let outcome = Outcome::measured(
            w,
            vec![IO_URING, Server::Tokio, Server::Bare],
            vec![
                vec![Ok(sample(2e6, 0.33, vec![], None))],
                vec![Ok(sample(2e6, 0.32, vec![], None))],
                vec![Ok(sample(2.2e6, 0.30, vec![], None))],
            ],
        );
        let t = render_bare(std::slice::from_ref(&outcome));
        assert!(
            t.contains(
                "| echo 64 B, 100 sessions, depth 16 | 0.33 us/msg | 0.30 us/msg | 1.10 | 0.91 |"
            ),
            "{t}"
        );
        let targets = render_targets(std::slice::from_ref(&outcome));
        assert!(targets.contains("Targets (issues 5 and 16)"), "{targets}");
        assert!(
            targets.contains("io_uring CPU/msg <= 1.00 x bare io_uring loop | 1.100 x | **no** |"),
            "{targets}"
        );
    }
}
