//! Rounds' samples, their medians, and the markdown report: header, table, targets.

mod bare;
mod before_after;
mod cells;
mod cluster;
mod header;
mod main_table;
mod open_loop;
mod stats;
mod targets;
#[cfg(test)]
mod test_support;

pub use header::{utc_now, Header};
pub(crate) use stats::{compared, ratio};
pub use stats::{Besides, Outcome, ProbeLatency, Sample};

use bare::render_bare;
use before_after::{render_baseline, render_techniques};
use cluster::render_cluster;
use main_table::{render_main_table, transport_notes};
use open_loop::render_open_loop;
use std::fmt::Write as _;
use targets::render_targets;

/// The report: the header, the chart's link, the main table, the tables of their own
/// (bare loop, open loop, cluster), the notes, the before/after tables and the targets.
pub fn render(header: &Header, outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", header.render());
    if let Some(chart) = &header.chart {
        let _ = writeln!(s, "\n![servercore vs references]({chart})");
    }
    let mut notes: Vec<String> = Vec::new();
    s.push_str(&render_main_table(header, outcomes, &mut notes));
    s.push_str(&transport_notes(outcomes));
    s.push_str(&render_bare(outcomes));
    s.push_str(&render_open_loop(outcomes, &mut notes));
    s.push_str(&render_cluster(outcomes, &mut notes));
    s.push_str(&render_notes(&notes));
    s.push_str(&render_techniques(outcomes));
    s.push_str(&render_baseline(outcomes));
    s.push_str(&render_targets(outcomes));
    s
}

/// The notes on the tables' rows, as a list.
fn render_notes(notes: &[String]) -> String {
    let mut s = String::new();
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}
