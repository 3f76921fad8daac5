//! Live progress and the final report of a load run.

use super::stats::HandshakeStats;
use super::{Fleet, LoadPlan, LoadStats, Mode};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use servercore::{Backend, ServiceStats};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Where the live progress goes while a run lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressOut {
    /// Nothing (e.g. `--json`).
    Off,
    /// An indicatif line on stderr (hidden by indicatif when stderr is not a terminal).
    Stderr,
    /// An indicatif line on stdout (for a terminal).
    Stdout,
    /// One plain line per second on stdout, no escape codes (logs, CI).
    Lines,
}

/// Messages and bytes counted inside the measurement window.
pub struct Counted {
    pub messages: u64,
    pub bytes: u64,
    pub sends: u64,
}

pub struct Progress {
    pub elapsed: Duration,
    pub counted: Counted,
}

/// A latency in microseconds for people: `850 us`, `1.25 ms`, `2.10 s`.
pub fn fmt_us(us: u64) -> String {
    if us < 1_000 {
        format!("{us} us")
    } else if us < 1_000_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{:.2} s", us as f64 / 1e6)
    }
}

/// A rate for a live display: `950`, `12.3k`, `1.28M`.
fn fmt_rate(r: f64) -> String {
    if r >= 1e6 {
        format!("{:.2}M", r / 1e6)
    } else if r >= 1e4 {
        format!("{:.1}k", r / 1e3)
    } else {
        format!("{r:.0}")
    }
}

impl Progress {
    /// Runs for the planned duration, showing sessions, msg/s, MB/s and the p99 latency of
    /// the last tick.
    pub fn run(plan: &LoadPlan, stats: &LoadStats, clients: &Fleet) -> Progress {
        let bar = match plan.progress {
            ProgressOut::Stderr | ProgressOut::Stdout => {
                let target = if plan.progress == ProgressOut::Stdout {
                    ProgressDrawTarget::stdout()
                } else {
                    ProgressDrawTarget::stderr()
                };
                let pb =
                    ProgressBar::with_draw_target(Some(plan.duration.as_millis() as u64), target);
                pb.set_style(
                    ProgressStyle::with_template("{spinner} {elapsed:>4} {bar:20} {msg}")
                        .expect("valid template"),
                );
                pb
            }
            ProgressOut::Off | ProgressOut::Lines => ProgressBar::hidden(),
        };
        let lines = plan.progress == ProgressOut::Lines;
        let start = Instant::now();
        let load = |s: &LoadStats| {
            (LoadStats::load(&s.messages), LoadStats::load(&s.bytes), LoadStats::load(&s.sends))
        };
        let (m0, b0, s0) = load(stats);
        let (mut last_t, mut last_m, mut last_b) = (start, m0, b0);
        // Drop samples from before the window.
        let _ = stats.take_recent_p99();
        let tick = Duration::from_millis(if lines { 1000 } else { 250 });
        loop {
            let now = Instant::now();
            let done = now.duration_since(start);
            if done >= plan.duration {
                break;
            }
            std::thread::sleep(tick.min(plan.duration - done));
            let now = Instant::now();
            let (m, b, _) = load(stats);
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
            let p99 = stats.take_recent_p99().map_or_else(|| "-".to_string(), fmt_us);
            let msg = format!(
                "{} sessions  {} msg/s  {:.1} MB/s  p99 {p99}",
                clients.session_count(),
                fmt_rate((m - last_m) as f64 / dt),
                (b - last_b) as f64 / dt / 1e6,
            );
            if lines {
                let mut out = std::io::stdout().lock();
                let _ =
                    writeln!(out, "  [{:5.1} s] {msg}", now.duration_since(start).as_secs_f64());
                let _ = out.flush();
            }
            bar.set_position(now.duration_since(start).as_millis() as u64);
            bar.set_message(msg);
            (last_t, last_m, last_b) = (now, m, b);
        }
        bar.finish_and_clear();
        let elapsed = start.elapsed();
        let (m, b, s) = load(stats);
        Progress { elapsed, counted: Counted { messages: m - m0, bytes: b - b0, sends: s - s0 } }
    }
}

/// The TLS part of a report: how many handshakes, how fast, how long each took.
pub struct TlsReport {
    pub handshakes: u64,
    /// Sessions that ended before their handshake completed.
    pub failures: u64,
    /// Handshakes per second between the start of the connects and the last handshake:
    /// the rate the server sustained while every session was connecting (with
    /// `--ramp-secs`, the ramp sets it).
    pub per_sec: f64,
    /// From connect start to `on_connected` (TCP connect + TLS handshake, + WebSocket
    /// upgrade for wss sessions), microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    /// Some sessions are wss: their times include the upgrade.
    pub wss: bool,
}

impl TlsReport {
    /// The handshakes of a run whose connects started at `connect_start`.
    pub fn new(
        stats: &HandshakeStats,
        service: &ServiceStats,
        connect_start: Instant,
        wss: bool,
    ) -> TlsReport {
        let (h, last) = stats.times();
        let handshakes = service.tls_handshakes;
        let window = last.map_or(0.0, |t| t.saturating_duration_since(connect_start).as_secs_f64());
        TlsReport {
            handshakes,
            failures: service.tls_handshake_failures,
            per_sec: if window > 0.0 { handshakes as f64 / window } else { 0.0 },
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            wss,
        }
    }

    /// The two lines of the text report (and of the demo summary), without indent or label.
    pub fn text_lines(&self) -> [String; 2] {
        [
            format!(
                "{} handshakes ({:.0}/s while connecting), {} failed",
                self.handshakes, self.per_sec, self.failures
            ),
            format!(
                "p50 {}, p99 {}, max {} (TCP connect + TLS handshake{}, connect start to on_connected)",
                fmt_us(self.p50_us),
                fmt_us(self.p99_us),
                fmt_us(self.max_us),
                if self.wss { " + WebSocket upgrade on wss sessions" } else { "" }
            ),
        ]
    }
}

/// The WebSocket part of a report.
pub struct WsReport {
    /// Sessions that speak WebSocket (all of them, except in the demo's mixed room).
    pub sessions: usize,
    /// Upgrades done.
    pub upgrades: u64,
    /// Connections that ended before their upgrade was done.
    pub failures: u64,
}

impl WsReport {
    /// The line of the text report (and of the demo summary), without indent or label.
    pub fn text_line(&self) -> String {
        format!(
            "{} upgrades of {} WebSocket sessions, {} failed",
            self.upgrades, self.sessions, self.failures
        )
    }
}

/// The result of a load run.
pub struct Report {
    pub mode: Mode,
    pub backend: Backend,
    pub sessions: usize,
    pub connected: u64,
    pub size: usize,
    pub depth: usize,
    /// Open-loop rate per session, if any.
    pub rate: Option<f64>,
    pub secs: f64,
    /// Echo: messages back. Chat: S_CHAT deliveries (every sender), in the window.
    pub messages: u64,
    pub bytes: u64,
    /// Chat: own C_CHAT messages sent in the window.
    pub sends: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    /// Latency at a few percentiles (label, microseconds), for the histogram sketch.
    pub percentiles: Vec<(&'static str, u64)>,
    pub gaps: u64,
    pub duplicates: u64,
    pub corrupt: u64,
    pub unexpected_disconnects: u64,
    pub connect_failures: u64,
    /// Chat: own messages not back when the report was made (not an error).
    pub in_flight_at_end: u64,
    /// Chat: times sending paused because a receiver fell too far behind (not an error).
    pub lag_pauses: u64,
    pub first_error: Option<String>,
    /// TLS runs only.
    pub tls: Option<TlsReport>,
    /// WebSocket runs only.
    pub ws: Option<WsReport>,
    /// Chat: S_CHAT messages of other clients (text, e.g. the browser page), not checked.
    pub foreign: u64,
    /// Runs over several servers (`--addr` more than once): each address and its sessions.
    pub servers: Vec<(std::net::SocketAddr, usize)>,
}

impl Report {
    #[allow(clippy::too_many_arguments)] // one call site, each argument a different source
    pub fn new(
        plan: &LoadPlan,
        backend: Backend,
        stats: &LoadStats,
        connected: u64,
        elapsed: Duration,
        counted: Counted,
        in_flight_at_end: u64,
        tls: Option<TlsReport>,
        ws: Option<WsReport>,
    ) -> Report {
        let h = stats.latency.lock().unwrap_or_else(|p| p.into_inner());
        let percentiles = if h.is_empty() {
            Vec::new()
        } else {
            [("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p99.9", 0.999)]
                .iter()
                .map(|&(l, q)| (l, h.value_at_quantile(q)))
                .chain(std::iter::once(("max", h.max())))
                .collect()
        };
        Report {
            mode: plan.mode,
            backend,
            sessions: plan.sessions,
            // With TLS or WebSocket a session counts as connected once its handshakes are
            // done.
            connected,
            size: plan.size,
            depth: plan.depth,
            rate: plan.rate,
            secs: elapsed.as_secs_f64(),
            messages: counted.messages,
            bytes: counted.bytes,
            sends: counted.sends,
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
            percentiles,
            gaps: stats.gaps.load(Ordering::Relaxed),
            duplicates: stats.duplicates.load(Ordering::Relaxed),
            corrupt: stats.corrupt.load(Ordering::Relaxed),
            unexpected_disconnects: stats.unexpected_disconnects.load(Ordering::Relaxed),
            connect_failures: stats.connect_failures.load(Ordering::Relaxed),
            in_flight_at_end,
            lag_pauses: stats.lag_pauses.load(Ordering::Relaxed),
            first_error: stats.first_error(),
            tls,
            ws,
            foreign: stats.foreign.load(Ordering::Relaxed),
            servers: if plan.check_complete {
                plan.endpoints.iter().map(|e| (e.addr, e.sessions)).collect()
            } else {
                Vec::new()
            },
        }
    }

    /// Everything that went wrong: gaps and duplicates (chat), corrupt messages, dropped
    /// sessions, failed connects, failed TLS handshakes and WebSocket upgrades.
    pub fn errors(&self) -> u64 {
        self.gaps
            + self.duplicates
            + self.corrupt
            + self.unexpected_disconnects
            + self.connect_failures
            + self.tls.as_ref().map_or(0, |t| t.failures)
            + self.ws.as_ref().map_or(0, |w| w.failures)
    }

    /// No gap, no duplicate, no wrong byte, no dropped session, no failed connect or
    /// handshake.
    pub fn ok(&self) -> bool {
        self.errors() == 0
    }

    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.secs.max(1e-9)
    }

    pub fn sends_per_sec(&self) -> f64 {
        self.sends as f64 / self.secs.max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }

    pub fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Echo => "echo",
            Mode::Chat => "chat",
        }
    }

    /// `N sessions (M connected)`.
    pub fn sessions_line(&self) -> String {
        format!("{} sessions ({} connected)", self.sessions, self.connected)
    }

    /// `errors    N (...)`: the breakdown of [`errors`](Self::errors).
    pub fn errors_line(&self) -> String {
        let mut s = format!("errors    {} (", self.errors());
        if self.mode == Mode::Chat {
            let _ = write!(s, "gaps {}, duplicates {}, ", self.gaps, self.duplicates);
        }
        let _ = write!(
            s,
            "corrupt {}, unexpected disconnects {}, connect failures {}",
            self.corrupt, self.unexpected_disconnects, self.connect_failures
        );
        if let Some(t) = &self.tls {
            let _ = write!(s, ", TLS handshake failures {}", t.failures);
        }
        if let Some(w) = &self.ws {
            let _ = write!(s, ", WebSocket upgrade failures {}", w.failures);
        }
        s.push(')');
        s
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dummy-client: mode {}, {}, {} B messages, {}, {:.1} s, backend {}",
            self.mode_name(),
            self.sessions_line(),
            self.size,
            match self.rate {
                Some(r) =>
                    format!("open loop at {r} msg/s per session (at most {} in flight)", self.depth),
                None => format!("depth {}", self.depth),
            },
            self.secs,
            self.backend
        );
        if let Some(t) = &self.tls {
            let [count, latency] = t.text_lines();
            let _ = writeln!(s, "  tls       {count}");
            let _ = writeln!(s, "  handshake {latency}");
        }
        if let Some(w) = &self.ws {
            let _ = writeln!(s, "  websocket {}", w.text_line());
        }
        if !self.servers.is_empty() {
            let list: Vec<String> =
                self.servers.iter().map(|(a, n)| format!("{a} ({n} sessions)")).collect();
            let _ = writeln!(s, "  servers   {}", list.join(", "));
        }
        match self.mode {
            Mode::Echo => {
                let _ = writeln!(
                    s,
                    "  messages  {} ({:.0} msg/s, {:.2} MB/s)",
                    self.messages,
                    self.msgs_per_sec(),
                    self.mb_per_sec()
                );
                let _ = writeln!(
                    s,
                    "  latency   p50 {} us, p99 {} us, max {} us",
                    self.p50_us, self.p99_us, self.max_us
                );
            }
            Mode::Chat => {
                let _ = writeln!(
                    s,
                    "  delivered {} S_CHAT ({:.0} msg/s, {:.2} MB/s received)",
                    self.messages,
                    self.msgs_per_sec(),
                    self.mb_per_sec()
                );
                let _ = writeln!(
                    s,
                    "  sent      {} C_CHAT ({:.0} msg/s)",
                    self.sends,
                    self.sends_per_sec()
                );
                let _ = writeln!(
                    s,
                    "  latency   p50 {} us, p99 {} us, max {} us (own message, sent to back through the room)",
                    self.p50_us, self.p99_us, self.max_us
                );
                let _ =
                    writeln!(s, "  order     gaps {}, duplicates {}", self.gaps, self.duplicates);
                let _ = writeln!(
                    s,
                    "  flow      {} own messages in flight at the end, {} pauses for a slow receiver",
                    self.in_flight_at_end, self.lag_pauses
                );
                if self.foreign > 0 {
                    let _ = writeln!(
                        s,
                        "  foreign   {} text messages of other clients (not checked)",
                        self.foreign
                    );
                }
            }
        }
        let _ = writeln!(s, "  {}", self.errors_line());
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "  first error: {e}");
        }
        s
    }

    /// A few text bars, one per percentile; lengths on a log scale from a quarter of the
    /// smallest shown value up to the max.
    pub fn latency_sketch(&self, width: usize) -> String {
        let mut s = String::new();
        let Some(&(_, max)) = self.percentiles.last() else { return s };
        let min = self.percentiles.iter().map(|&(_, v)| v).min().unwrap_or(1).max(1);
        let lo = (min as f64 / 4.0).max(0.5);
        let span = (max.max(1) as f64 / lo).ln().max(1e-9);
        for &(label, us) in &self.percentiles {
            let n = ((us.max(1) as f64 / lo).ln() / span * width as f64).round() as usize;
            let _ = writeln!(s, "  {label:>5} {:>10}  {}", fmt_us(us), "█".repeat(n.max(1)));
        }
        s
    }

    pub fn to_json(&self) -> String {
        let err = match &self.first_error {
            Some(e) => json_string(e),
            None => "null".into(),
        };
        let mut s = format!(
            concat!(
                "{{\"mode\":\"{}\",\"backend\":\"{}\",\"sessions\":{},\"connected\":{},",
                "\"size\":{},\"depth\":{},\"secs\":{:.3},\"messages\":{},\"bytes\":{},",
                "\"msgs_per_sec\":{:.1},\"mb_per_sec\":{:.3},\"p50_us\":{},\"p99_us\":{},",
                "\"p999_us\":{},\"max_us\":{},\"errors\":{},\"corrupt\":{},\"unexpected_disconnects\":{},",
                "\"connect_failures\":{},\"first_error\":{},\"rate\":{}"
            ),
            self.mode_name(),
            self.backend,
            self.sessions,
            self.connected,
            self.size,
            self.depth,
            self.secs,
            self.messages,
            self.bytes,
            self.msgs_per_sec(),
            self.mb_per_sec(),
            self.p50_us,
            self.p99_us,
            self.p999_us,
            self.max_us,
            self.errors(),
            self.corrupt,
            self.unexpected_disconnects,
            self.connect_failures,
            err,
            self.rate.map_or("null".to_string(), |r| r.to_string())
        );
        if self.mode == Mode::Chat {
            let _ = write!(
                s,
                concat!(
                    ",\"deliveries\":{},\"deliveries_per_sec\":{:.1},\"sends\":{},",
                    "\"sends_per_sec\":{:.1},\"gaps\":{},\"duplicates\":{},\"in_flight_at_end\":{},",
                    "\"lag_pauses\":{},\"foreign\":{}"
                ),
                self.messages,
                self.msgs_per_sec(),
                self.sends,
                self.sends_per_sec(),
                self.gaps,
                self.duplicates,
                self.in_flight_at_end,
                self.lag_pauses,
                self.foreign
            );
        }
        if let Some(t) = &self.tls {
            let _ = write!(
                s,
                concat!(
                    ",\"tls\":{{\"handshakes\":{},\"handshake_failures\":{},",
                    "\"handshakes_per_s\":{:.1},\"handshake_us\":{{\"p50\":{},\"p99\":{},",
                    "\"max\":{}}}}}"
                ),
                t.handshakes, t.failures, t.per_sec, t.p50_us, t.p99_us, t.max_us
            );
        }
        if let Some(w) = &self.ws {
            let _ = write!(
                s,
                ",\"websocket\":{{\"sessions\":{},\"upgrades\":{},\"upgrade_failures\":{}}}",
                w.sessions, w.upgrades, w.failures
            );
        }
        s.push('}');
        s
    }
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    let mut s = String::with_capacity(text.len() + 2);
    s.push('"');
    for c in text.chars() {
        match c {
            '"' => s.push_str("\\\""),
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '\r' => s.push_str("\\r"),
            '\t' => s.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(s, "\\u{:04x}", c as u32);
            }
            c => s.push(c),
        }
    }
    s.push('"');
    s
}
