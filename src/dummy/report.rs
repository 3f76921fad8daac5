//! Live progress and the final report of a load run.

use super::{LoadPlan, LoadStats, Mode};
use indicatif::{ProgressBar, ProgressStyle};
use servercore::{Backend, ClientService, ServiceStats};
use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Messages and bytes counted inside the measurement window.
pub struct Counted {
    pub messages: u64,
    pub bytes: u64,
}

pub struct Progress {
    pub elapsed: Duration,
    pub counted: Counted,
}

impl Progress {
    /// Runs for the planned duration, updating a progress line once per tick.
    pub fn run(plan: &LoadPlan, stats: &LoadStats, clients: &ClientService) -> Progress {
        let bar = if plan.progress {
            let pb = ProgressBar::new(plan.duration.as_millis() as u64);
            pb.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
                    .expect("valid template"),
            );
            pb
        } else {
            ProgressBar::hidden()
        };
        let start = Instant::now();
        let (m0, b0) = (LoadStats::load(&stats.messages), LoadStats::load(&stats.bytes));
        let (mut last_t, mut last_m, mut last_b) = (start, m0, b0);
        let tick = Duration::from_millis(250);
        loop {
            let now = Instant::now();
            let done = now.duration_since(start);
            if done >= plan.duration {
                break;
            }
            std::thread::sleep(tick.min(plan.duration - done));
            let now = Instant::now();
            let (m, b) = (LoadStats::load(&stats.messages), LoadStats::load(&stats.bytes));
            let dt = now.duration_since(last_t).as_secs_f64().max(1e-9);
            bar.set_position(now.duration_since(start).as_millis() as u64);
            bar.set_message(format!(
                "sessions {}  {:.0} msg/s  {:.1} MB/s",
                clients.session_count(),
                (m - last_m) as f64 / dt,
                (b - last_b) as f64 / dt / 1e6
            ));
            (last_t, last_m, last_b) = (now, m, b);
        }
        bar.finish_and_clear();
        let elapsed = start.elapsed();
        let counted = Counted {
            messages: LoadStats::load(&stats.messages) - m0,
            bytes: LoadStats::load(&stats.bytes) - b0,
        };
        Progress { elapsed, counted }
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
    pub secs: f64,
    pub messages: u64,
    pub bytes: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
    pub corrupt: u64,
    pub unexpected_disconnects: u64,
    pub connect_failures: u64,
    pub first_error: Option<String>,
}

impl Report {
    pub fn new(
        plan: &LoadPlan,
        backend: Backend,
        stats: &LoadStats,
        service: ServiceStats,
        elapsed: Duration,
        counted: Counted,
    ) -> Report {
        let h = stats.latency.lock().unwrap_or_else(|p| p.into_inner());
        Report {
            mode: plan.mode,
            backend,
            sessions: plan.sessions,
            connected: service.connected,
            size: plan.size,
            depth: plan.depth,
            secs: elapsed.as_secs_f64(),
            messages: counted.messages,
            bytes: counted.bytes,
            p50_us: h.value_at_quantile(0.50),
            p99_us: h.value_at_quantile(0.99),
            max_us: h.max(),
            corrupt: stats.corrupt.load(Ordering::Relaxed),
            unexpected_disconnects: stats.unexpected_disconnects.load(Ordering::Relaxed),
            connect_failures: stats.connect_failures.load(Ordering::Relaxed),
            first_error: stats.first_error(),
        }
    }

    pub fn errors(&self) -> u64 {
        self.corrupt + self.unexpected_disconnects + self.connect_failures
    }

    /// No wrong byte, no dropped session, no failed connect.
    pub fn ok(&self) -> bool {
        self.errors() == 0
    }

    pub fn msgs_per_sec(&self) -> f64 {
        self.messages as f64 / self.secs.max(1e-9)
    }

    pub fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs.max(1e-9) / 1e6
    }

    fn mode_name(&self) -> &'static str {
        match self.mode {
            Mode::Echo => "echo",
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "dummy-client: mode {}, {} sessions ({} connected), {} B messages, depth {}, {:.1} s, backend {}",
            self.mode_name(),
            self.sessions,
            self.connected,
            self.size,
            self.depth,
            self.secs,
            self.backend
        );
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
        let _ = writeln!(
            s,
            "  errors    {} (corrupt bytes {}, unexpected disconnects {}, connect failures {})",
            self.errors(),
            self.corrupt,
            self.unexpected_disconnects,
            self.connect_failures
        );
        if let Some(e) = &self.first_error {
            let _ = writeln!(s, "  first error: {e}");
        }
        s
    }

    pub fn to_json(&self) -> String {
        let err = match &self.first_error {
            Some(e) => format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "\\\"")),
            None => "null".into(),
        };
        format!(
            concat!(
                "{{\"mode\":\"{}\",\"backend\":\"{}\",\"sessions\":{},\"connected\":{},",
                "\"size\":{},\"depth\":{},\"secs\":{:.3},\"messages\":{},\"bytes\":{},",
                "\"msgs_per_sec\":{:.1},\"mb_per_sec\":{:.3},\"p50_us\":{},\"p99_us\":{},",
                "\"max_us\":{},\"errors\":{},\"corrupt\":{},\"unexpected_disconnects\":{},",
                "\"connect_failures\":{},\"first_error\":{}}}"
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
            self.max_us,
            self.errors(),
            self.corrupt,
            self.unexpected_disconnects,
            self.connect_failures,
            err
        )
    }
}
