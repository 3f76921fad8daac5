//! The ratio chart (issue 16): servercore against each reference, one bar per workload,
//! as SVG (plotters), for BENCHMARKS.md to show above the tables.
//!
//! The bars are the report's ratio rows, computed with its own helpers (`report::ratio`,
//! `report::compared`): servercore io_uring (1 worker) against tokio / tokio-rustls /
//! tokio-tungstenite (the main table's "ratio vs tokio"), against the bare io_uring loop,
//! the open-loop p99 against tokio's, and the cluster's 2 nodes against 1 node.

use crate::report::{compared, ratio, Header, Outcome};
use crate::workloads::{Load, Server, IO_URING};
use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::{Path, PathBuf};

/// One bar: a workload's ratio, servercore / the reference of its group.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// The comparison, as the legend shows it ("servercore / tokio-rustls").
    pub group: String,
    pub workload: String,
    pub ratio: f64,
}

/// What the bars' ratio is, for the x axis.
const AXIS: &str = "servercore / reference: server CPU per message (memory: RSS per session; \
                    open loop: p99 latency); lower is better";

/// The text an empty chart shows.
pub const EMPTY: &str =
    "No ratio to chart: no workload of this run measured servercore and its reference.";

/// Legend entry of the 1.0 line.
pub const PARITY: &str = "1.0 = the same as the reference";

/// Bar colors, one per group, in order of first appearance (then round again).
const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(23, 190, 207),
];

/// The ratio rows of a run: per workload, servercore io_uring against each reference it
/// was measured with; rows where either side failed (no ratio) are left out. Bars of one
/// group stay in workload order; groups come in order of first appearance.
pub fn bars(outcomes: &[Outcome]) -> Vec<Bar> {
    let mut bars: Vec<Bar> = Vec::new();
    for o in outcomes {
        let w = &o.workload;
        let Some(sc) = o.get(IO_URING) else { continue };
        let mut push = |group: String, r: Option<f64>| {
            if let Some(ratio) = r.filter(|r| r.is_finite()) {
                bars.push(Bar { group, workload: w.label.to_string(), ratio });
            }
        };
        let tokio = o.get(Server::Tokio);
        let reference = Server::Tokio.label_in(w);
        match w.load {
            Load::Cluster { .. } => push(
                "servercore 2 nodes + NATS / 1 node".into(),
                o.get(Server::Cluster)
                    .and_then(|c| ratio(compared(w.load, c), compared(w.load, sc))),
            ),
            Load::OpenChat { .. } => push(
                format!("open-loop p99 latency, servercore / {reference}"),
                tokio.and_then(|t| ratio(sc.p99_us, t.p99_us)),
            ),
            _ => {
                push(
                    format!("servercore / {reference}"),
                    tokio.and_then(|t| ratio(compared(w.load, sc), compared(w.load, t))),
                );
                push(
                    format!("servercore / {}", Server::Bare.label_in(w)),
                    o.get(Server::Bare)
                        .and_then(|b| ratio(compared(w.load, sc), compared(w.load, b))),
                );
            }
        }
    }
    let mut groups: Vec<String> = Vec::new();
    for b in &bars {
        if !groups.contains(&b.group) {
            groups.push(b.group.clone());
        }
    }
    bars.sort_by_key(|b| groups.iter().position(|g| *g == b.group));
    bars
}

/// The chart's title: date and servercore commit of the run.
pub fn title(header: &Header) -> String {
    // "commit abc1234[ + uncommitted changes], binary `..` built .."
    let build = header.servercore.split(", binary").next().unwrap_or_default();
    if build.is_empty() {
        format!("servercore vs references, {}", header.date)
    } else {
        format!("servercore vs references, {}, {build}", header.date)
    }
}

/// The chart as an SVG document: one horizontal bar per entry of `bars`, top to bottom,
/// colored by group (a legend names the groups), the ratio written at each bar's end, and a
/// vertical line at 1.0. No bars: the title and [`EMPTY`].
pub fn render_svg(title: &str, bars: &[Bar]) -> Result<String, String> {
    let mut groups: Vec<&str> = Vec::new();
    for b in bars {
        if !groups.contains(&b.group.as_str()) {
            groups.push(&b.group);
        }
    }
    // Rows, top to bottom: the bars, with an empty row between two groups.
    let mut rows: Vec<Option<&Bar>> = Vec::new();
    for (i, g) in groups.iter().enumerate() {
        if i > 0 {
            rows.push(None);
        }
        rows.extend(bars.iter().filter(|b| b.group == *g).map(Some));
    }
    let width = 1200u32;
    let height = (130 + 26 * (rows.len() + 1)).max(260) as u32;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        if rows.is_empty() {
            let root = root.titled(title, ("sans-serif", 24)).map_err(err)?;
            let style =
                TextStyle::from(("sans-serif", 18)).pos(Pos::new(HPos::Center, VPos::Center));
            let (w, h) = root.dim_in_pixel();
            root.draw_text(EMPTY, &style, (w as i32 / 2, h as i32 / 2)).map_err(err)?;
            root.present().map_err(err)?;
        } else {
            draw_bars(&root, title, bars, &rows, &groups)?;
        }
    }
    Ok(svg)
}

/// The non-empty chart: `rows` top to bottom (`None`: the gap between two groups).
fn draw_bars(
    root: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    bars: &[Bar],
    rows: &[Option<&Bar>],
    groups: &[&str],
) -> Result<(), String> {
    let n = rows.len() as i32;
    let width = root.dim_in_pixel().0;
    let chars = |s: &str| s.chars().count() as u32;
    let longest = bars.iter().map(|b| chars(&b.workload)).max().unwrap_or(0);
    let label_area = (longest * 7 + 24).min(width * 2 / 5);
    // Bars end left of the legend (upper right) with room for their figures: the
    // longest one at `fill` of the plot's width.
    let plot = width - label_area - 24;
    let legend = groups.iter().map(|g| chars(g)).chain([chars(PARITY)]).max().unwrap_or(0) * 7 + 60;
    let fill = (f64::from(plot.saturating_sub(legend + 60)) / f64::from(plot)).max(0.4);
    let top = bars.iter().map(|b| b.ratio).fold(1.0, f64::max);
    let x_end = top / fill;
    // Row i (from the top) is segment n-1-i: plotters' y grows upwards. Segments 0..=n
    // (an integer range is inclusive, and 0..0 would be empty): the top one, n, stays
    // empty.
    let row_of = |k: i32| (0..n).contains(&k).then(|| rows[(n - 1 - k) as usize]).flatten();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 24))
        .margin(12)
        .x_label_area_size(56)
        .y_label_area_size(label_area)
        .build_cartesian_2d(0.0..x_end, (0..n).into_segmented())
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .max_light_lines(1)
        .y_labels(rows.len() + 1)
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(k) => row_of(*k).map_or(String::new(), |b| b.workload.clone()),
            _ => String::new(),
        })
        .x_desc(AXIS)
        .label_style(("sans-serif", 15))
        .axis_desc_style(("sans-serif", 16))
        .draw()
        .map_err(err)?;
    for (g, group) in groups.iter().enumerate() {
        let color = COLORS[g % COLORS.len()];
        let data = (0..n).filter_map(|k| {
            row_of(k).filter(|b| b.group == *group).map(|b| (SegmentValue::Exact(k), b.ratio))
        });
        chart
            .draw_series(Histogram::horizontal(&chart).style(color.filled()).margin(4).data(data))
            .map_err(err)?
            .label(*group)
            .legend(move |(x, y)| Circle::new((x + 6, y), 6, color.filled()));
    }
    let figure = TextStyle::from(("sans-serif", 14)).pos(Pos::new(HPos::Left, VPos::Center));
    chart
        .draw_series((0..n).filter_map(|k| {
            row_of(k).map(|b| {
                EmptyElement::at((b.ratio, SegmentValue::CenterOf(k)))
                    + Text::new(format!("{:.2}", b.ratio), (5, 0), figure.clone())
            })
        }))
        .map_err(err)?;
    chart
        .draw_series(LineSeries::new(
            [(1.0, SegmentValue::Exact(0)), (1.0, SegmentValue::Last)],
            BLACK.stroke_width(2),
        ))
        .map_err(err)?
        .label(PARITY)
        .legend(|(x, y)| PathElement::new([(x, y), (x + 12, y)], BLACK.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .label_font(("sans-serif", 15))
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK.mix(0.4))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)?;
    Ok(())
}

fn err(e: impl std::fmt::Display) -> String {
    format!("cannot draw the chart: {e}")
}

/// Where the chart goes: `--chart-out`, else the `--markdown-out` file with extension
/// `.svg`; `None` when neither is given.
pub fn path(chart_out: Option<&Path>, markdown_out: Option<&Path>) -> Option<PathBuf> {
    chart_out.map(Path::to_path_buf).or_else(|| markdown_out.map(|m| m.with_extension("svg")))
}

/// How the markdown report links the chart: its file name when it sits in the report's
/// folder, else its path as given (relative to where the bench ran: the workspace root
/// for a chart meant for BENCHMARKS.md, e.g. `docs/bench-ratios.svg`).
pub fn link(chart: &Path, markdown_out: Option<&Path>) -> String {
    let folder = |p: &Path| -> PathBuf {
        let parent = p.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        parent.canonicalize().unwrap_or_else(|_| parent.to_path_buf())
    };
    let same_folder = markdown_out.is_some_and(|m| folder(m) == folder(chart));
    let text = match chart.file_name() {
        Some(name) if same_folder => name.to_string_lossy().into_owned(),
        _ => chart.to_string_lossy().into_owned(),
    };
    if text.contains([' ', '(', ')']) {
        format!("<{text}>")
    } else {
        text
    }
}

/// The bench's hook: renders the run's chart and writes it to [`path`]; returns the
/// image link for the markdown report, or `None` (no file asked for, or it could not be
/// written: a warning, the report goes on without it).
pub fn write(
    chart_out: Option<&Path>,
    markdown_out: Option<&Path>,
    header: &Header,
    outcomes: &[Outcome],
) -> Option<String> {
    let file = path(chart_out, markdown_out)?;
    let bars = bars(outcomes);
    let written = render_svg(&title(header), &bars).and_then(|svg| {
        std::fs::write(&file, svg).map_err(|e| format!("cannot write {}: {e}", file.display()))
    });
    match written {
        Ok(()) => {
            eprintln!("wrote {} ({} bars)", file.display(), bars.len());
            Some(link(&file, markdown_out))
        }
        Err(e) => {
            eprintln!("warning: no chart: {e}");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{Besides, Sample};
    use crate::workloads::{workloads, Workload};

    fn workload(key: &str) -> Workload {
        workloads().into_iter().find(|w| w.key == key).unwrap()
    }

    fn sample(cpu_us: f64, p99_us: f64, rss: Option<f64>) -> Result<Sample, String> {
        Ok(Sample {
            rate: 1e6,
            p50_us: 500.0,
            p99_us,
            p999_us: f64::NAN,
            cpu_per_unit_us: cpu_us,
            server_cpu_util: 0.9,
            server_cpu_parts: Vec::new(),
            load_cpu_util: 0.9,
            peak_rss_kib: 10_000,
            rss_per_session_kib: rss,
            errors: 0,
            first_error: None,
            client_backend: None,
            besides: Besides::default(),
            probe: None,
        })
    }

    fn outcome(key: &str, rows: Vec<(Server, Result<Sample, String>)>) -> Outcome {
        let (servers, samples): (Vec<Server>, Vec<_>) =
            rows.into_iter().map(|(s, r)| (s, vec![r])).unzip();
        Outcome::measured(workload(key), servers, samples)
    }

    /// A run with every kind of ratio row, and two rows without one.
    fn outcomes() -> Vec<Outcome> {
        vec![
            outcome(
                "echo-64-d1",
                vec![
                    (IO_URING, sample(1.0, 100.0, None)),
                    (Server::Tokio, sample(2.0, 100.0, None)),
                    (Server::Bare, sample(0.8, 100.0, None)),
                ],
            ),
            outcome(
                "memory",
                vec![
                    (IO_URING, sample(1.0, 100.0, Some(0.3))),
                    (Server::Tokio, sample(1.0, 100.0, Some(1.2))),
                ],
            ),
            // The reference failed: no ratio.
            outcome(
                "chat-100",
                vec![
                    (IO_URING, sample(0.1, 100.0, None)),
                    (Server::Tokio, Err("tokio-chat did not start".into())),
                ],
            ),
            outcome(
                "latency-chat-100",
                vec![
                    (IO_URING, sample(0.1, 3000.0, None)),
                    (Server::Tokio, sample(0.2, 3500.0, None)),
                ],
            ),
            outcome(
                "tls-echo-64-d1",
                vec![
                    (IO_URING, sample(1.5, 100.0, None)),
                    (Server::Tokio, sample(2.5, 100.0, None)),
                ],
            ),
            outcome(
                "ws-chat-100",
                vec![
                    (IO_URING, sample(0.2, 100.0, None)),
                    (Server::Tokio, sample(0.1, 100.0, None)),
                ],
            ),
            Outcome::unavailable(workload("churn"), "not run".into()),
            outcome(
                "cluster-chat",
                vec![
                    (IO_URING, sample(0.1, 100.0, None)),
                    (Server::Cluster, sample(0.14, 100.0, None)),
                ],
            ),
        ]
    }

    fn label(key: &str) -> String {
        workload(key).label.to_string()
    }

    #[test]
    fn bars_reuse_the_reports_ratios() {
        let got: Vec<(String, String, String)> = bars(&outcomes())
            .into_iter()
            .map(|b| (b.group, b.workload, format!("{:.3}", b.ratio)))
            .collect();
        let want = [
            ("servercore / tokio", "echo-64-d1", "0.500"),
            ("servercore / tokio", "memory", "0.250"),
            ("servercore / bare io_uring loop", "echo-64-d1", "1.250"),
            ("open-loop p99 latency, servercore / tokio", "latency-chat-100", "0.857"),
            ("servercore / tokio-rustls", "tls-echo-64-d1", "0.600"),
            ("servercore / tokio-tungstenite", "ws-chat-100", "2.000"),
            ("servercore 2 nodes + NATS / 1 node", "cluster-chat", "1.400"),
        ];
        let want: Vec<(String, String, String)> =
            want.iter().map(|(g, k, r)| (g.to_string(), label(k), r.to_string())).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn svg_has_a_bar_per_row_the_parity_line_and_the_labels() {
        let bars = bars(&outcomes());
        let svg = render_svg("servercore vs references, test", &bars).unwrap();
        // To look at it: CHART_SAMPLE=/tmp/chart.svg cargo test -p servercore-bench chart
        if let Some(file) = std::env::var_os("CHART_SAMPLE") {
            std::fs::write(file, &svg).unwrap();
        }
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
        // One filled rect per bar in its group's color (the legend's marks are circles).
        let mut groups: Vec<&str> = Vec::new();
        for b in &bars {
            if !groups.contains(&b.group.as_str()) {
                groups.push(&b.group);
            }
        }
        for (g, group) in groups.iter().enumerate() {
            let c = COLORS[g % COLORS.len()];
            let fill = format!("fill=\"#{:02X}{:02X}{:02X}\"", c.0, c.1, c.2);
            let rects = svg.lines().filter(|l| l.contains("<rect") && l.contains(&fill)).count();
            let want = bars.iter().filter(|b| b.group == *group).count();
            assert_eq!(rects, want, "{group}: {fill}\n{svg}");
            assert!(svg.contains(&xml(group)), "legend {group}");
        }
        for b in &bars {
            assert!(svg.contains(&text(&b.workload)), "label {}", b.workload);
            assert!(svg.contains(&format!("\n{:.2}\n</text>", b.ratio)), "figure {}", b.ratio);
        }
        assert!(!svg.contains(&text(&label("chat-100"))), "a row without a ratio");
        assert!(!svg.contains(&text(&label("churn"))), "an unavailable workload");
        assert!(svg.contains(&xml(PARITY)), "{svg}");
        assert!(svg.contains("lower is better"), "{svg}");
        assert!(svg.contains("servercore vs references, test"), "{svg}");
        // The 1.0 line: a vertical polyline (one x, two points).
        let vertical = svg.lines().filter(|l| l.contains("<polyline")).any(|l| {
            let points = l.split("points=\"").nth(1).and_then(|p| p.split('"').next());
            let xs: Vec<&str> = points
                .unwrap_or("")
                .split_whitespace()
                .filter_map(|p| p.split(',').next())
                .collect();
            xs.len() == 2 && xs[0] == xs[1] && l.contains("stroke-width=\"2\"")
        });
        assert!(vertical, "{svg}");
    }

    #[test]
    fn no_ratio_gives_a_message() {
        let nothing =
            vec![Outcome::unavailable(workload("echo-64-d1"), "servercore did not build".into())];
        assert!(bars(&nothing).is_empty());
        assert!(bars(&[]).is_empty());
        let svg = render_svg("servercore vs references, empty", &[]).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains(&xml(EMPTY)), "{svg}");
        assert!(!svg.contains("<polyline"), "{svg}");
    }

    #[test]
    fn one_bar() {
        let bar = Bar { group: "servercore / tokio".into(), workload: "echo".into(), ratio: 0.1 };
        let svg = render_svg("one", std::slice::from_ref(&bar)).unwrap();
        let rects = svg.lines().filter(|l| l.contains("<rect") && l.contains("#1F77B4")).count();
        assert_eq!(rects, 1, "{svg}");
        assert!(svg.contains(&text("echo")) && svg.contains(&text("0.10")), "{svg}");
    }

    #[test]
    fn report_links_the_chart_below_its_header() {
        let mut header = Header {
            date: "2026-12-01 10:00 UTC".into(),
            finished: String::new(),
            machine: "2 cores".into(),
            command: "cargo run --release -p servercore-bench".into(),
            servercore: "commit abc1234, binary `target/release/servercore`".into(),
            rounds: 1,
            secs: 1.0,
            cores: 2,
            busy_cores: 0.05,
            chart: None,
        };
        assert_eq!(
            title(&header),
            "servercore vs references, 2026-12-01 10:00 UTC, commit abc1234"
        );
        let outcomes = outcomes();
        assert!(!crate::report::render(&header, &outcomes).contains("!["));
        header.chart = Some("latest.svg".into());
        let report = crate::report::render(&header, &outcomes);
        let image = report.find("![servercore vs references](latest.svg)").expect("image line");
        assert!(image < report.find("| workload |").unwrap(), "{report}");
    }

    #[test]
    fn chart_path_and_link() {
        let md = Path::new("/tmp/bench-x/latest.md");
        assert_eq!(path(None, Some(md)).unwrap(), Path::new("/tmp/bench-x/latest.svg"));
        assert_eq!(path(Some(Path::new("docs/a.svg")), Some(md)).unwrap(), Path::new("docs/a.svg"));
        assert_eq!(path(None, None), None);
        assert_eq!(link(Path::new("/tmp/bench-x/latest.svg"), Some(md)), "latest.svg");
        assert_eq!(link(Path::new("docs/bench-ratios.svg"), Some(md)), "docs/bench-ratios.svg");
        assert_eq!(link(Path::new("r.svg"), Some(Path::new("r.md"))), "r.svg");
        assert_eq!(link(Path::new("my dir/r.svg"), None), "<my dir/r.svg>");
    }

    /// A text element of exactly `s`, as the SVG backend writes it.
    fn text(s: &str) -> String {
        format!(">\n{}\n</text>", xml(s))
    }

    /// `s` as the SVG backend escapes text.
    fn xml(s: &str) -> String {
        s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    }
}
