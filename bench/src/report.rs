//! Rounds' samples, their medians, and the markdown report: header, table, targets.

use crate::run::{Load, Server, Workload, IO_URING, IO_URING_2, POLL, PROBE_RATE};
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

/// What one round measured.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Messages (echo), deliveries (chat) or connect+echo+close cycles (churn) per second,
    /// as the load client counted them.
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// NaN while the load client does not report it.
    pub p999_us: f64,
    /// Server CPU time (user + system, all threads) per message / delivery / cycle, in us.
    pub cpu_per_unit_us: f64,
    /// Server CPU seconds per wall second during the measurement.
    pub server_cpu_util: f64,
    /// The same per server process, when there are several (the cluster: node a, node b,
    /// nats-server); empty otherwise.
    pub server_cpu_parts: Vec<f64>,
    /// Load client CPU seconds per wall second.
    pub load_cpu_util: f64,
    /// Server `VmHWM` at the end of the round.
    pub peak_rss_kib: u64,
    /// Memory workload: (VmRSS under load - VmRSS before connecting) / sessions.
    pub rss_per_session_kib: Option<f64>,
    pub errors: u64,
    pub first_error: Option<String>,
    pub client_backend: Option<String>,
    /// CPU used during the measurement besides the server's.
    pub besides: Besides,
    /// The cluster workload's latency probe.
    pub probe: Option<ProbeLatency>,
}

/// Delivery latency measured by the cluster workload's probe, in us (NaN when there was no
/// such delivery: no cross-node one with a single server).
#[derive(Debug, Clone, Copy)]
pub struct ProbeLatency {
    /// To sessions on the sender's node.
    pub local_p50_us: f64,
    pub local_p99_us: f64,
    /// To sessions on another node.
    pub cross_p50_us: f64,
    pub cross_p99_us: f64,
}

/// CPU (in cores) used over a measurement window besides the server's.
#[derive(Debug, Clone, Copy, Default)]
pub struct Besides {
    /// Processes other than the server, the load client and the driver.
    pub foreign: f64,
    /// Kernel threads (ksoftirqd running deferred network work, rcu, kworkers).
    pub kernel: f64,
    /// Hypervisor steal.
    pub steal: f64,
}

impl Sample {
    /// One line for the progress log.
    pub fn brief(&self, load: Load) -> String {
        let mut s = format!(
            "{} {}, p50 {} us, p99 {} us, {} ({:.0}% busy, load {:.0}%), peak {}",
            group(self.rate),
            rate_unit(load),
            self.p50_us,
            self.p99_us,
            cpu_cell(load, self.cpu_per_unit_us),
            self.server_cpu_util * 100.0,
            self.load_cpu_util * 100.0,
            kib(self.peak_rss_kib as f64)
        );
        if let Some(r) = self.rss_per_session_kib {
            let _ = write!(s, ", {r:.2} KiB/session");
        }
        if self.server_cpu_parts.len() > 1 {
            let parts: Vec<String> =
                self.server_cpu_parts.iter().map(|u| format!("{:.0}%", u * 100.0)).collect();
            let _ = write!(s, ", per process {}", parts.join(" + "));
        }
        if let Some(p) = self.probe {
            let _ = write!(
                s,
                ", probe local p50 {} / p99 {} us, cross-node p50 {} / p99 {} us",
                num(p.local_p50_us),
                num(p.local_p99_us),
                num(p.cross_p50_us),
                num(p.cross_p99_us)
            );
        }
        let b = self.besides;
        let _ = write!(
            s,
            "; besides: other processes {:.2}, kernel threads {:.2}, steal {:.2} cores",
            b.foreign, b.kernel, b.steal
        );
        if self.errors > 0 {
            let _ = write!(
                s,
                ", {} ERRORS: {}",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            );
        }
        s
    }
}

/// The result of one workload.
pub struct Outcome {
    pub workload: Workload,
    pub rows: Result<Vec<(Server, Summary)>, String>,
}

/// Medians over the good rounds of one server on one workload.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub rate: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub cpu_per_unit_us: f64,
    pub util: f64,
    pub load_util: f64,
    pub peak_rss_kib: f64,
    pub rss_per_session_kib: Option<f64>,
    pub good_rounds: usize,
    pub rounds: usize,
    /// Why rounds were left out, if any were.
    pub problem: Option<String>,
    pub client_backend: Option<String>,
    /// Most CPU (cores) other processes used during any used round.
    pub foreign_cores: f64,
    /// Median CPU (cores) of kernel threads and of hypervisor steal.
    pub kernel_cores: f64,
    pub steal_cores: f64,
    /// Median CPU (cores) of each server process, when there are several.
    pub cpu_parts: Vec<f64>,
    /// Medians of the probe's figures (cluster workload).
    pub probe: Option<ProbeLatency>,
}

impl Summary {
    pub fn valid(&self) -> bool {
        self.good_rounds > 0
    }
}

pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn summarize(samples: &[Result<Sample, String>]) -> Summary {
    let good: Vec<&Sample> =
        samples.iter().filter_map(|s| s.as_ref().ok()).filter(|s| s.errors == 0).collect();
    let med =
        |f: &dyn Fn(&Sample) -> f64| median(&mut good.iter().map(|s| f(s)).collect::<Vec<_>>());
    let problem = samples.iter().find_map(|s| match s {
        Err(e) => Some(e.clone()),
        Ok(s) if s.errors > 0 => Some(format!(
            "{} errors: {}",
            s.errors,
            s.first_error.as_deref().unwrap_or("(no message)")
        )),
        Ok(_) => None,
    });
    Summary {
        rate: med(&|s| s.rate),
        p50_us: med(&|s| s.p50_us),
        p99_us: med(&|s| s.p99_us),
        p999_us: med(&|s| s.p999_us),
        cpu_per_unit_us: med(&|s| s.cpu_per_unit_us),
        util: med(&|s| s.server_cpu_util),
        load_util: med(&|s| s.load_cpu_util),
        peak_rss_kib: med(&|s| s.peak_rss_kib as f64),
        rss_per_session_kib: (!good.is_empty()
            && good.iter().all(|s| s.rss_per_session_kib.is_some()))
        .then(|| med(&|s| s.rss_per_session_kib.unwrap_or(f64::NAN))),
        good_rounds: good.len(),
        rounds: samples.len(),
        problem,
        client_backend: good.iter().find_map(|s| s.client_backend.clone()),
        foreign_cores: good.iter().map(|s| s.besides.foreign).fold(0.0, f64::max),
        kernel_cores: med(&|s| s.besides.kernel),
        steal_cores: med(&|s| s.besides.steal),
        cpu_parts: (0..good.iter().map(|s| s.server_cpu_parts.len()).min().unwrap_or(0))
            .map(|i| med(&|s| s.server_cpu_parts[i]))
            .collect(),
        probe: (!good.is_empty() && good.iter().all(|s| s.probe.is_some())).then(|| {
            let p = |f: fn(&ProbeLatency) -> f64| med(&|s| s.probe.as_ref().map_or(f64::NAN, f));
            ProbeLatency {
                local_p50_us: p(|p| p.local_p50_us),
                local_p99_us: p(|p| p.local_p99_us),
                cross_p50_us: p(|p| p.cross_p50_us),
                cross_p99_us: p(|p| p.cross_p99_us),
            }
        }),
    }
}

impl Outcome {
    pub fn unavailable(workload: Workload, why: String) -> Outcome {
        Outcome { workload, rows: Err(why) }
    }

    pub fn measured(
        workload: Workload,
        servers: Vec<Server>,
        samples: Vec<Vec<Result<Sample, String>>>,
    ) -> Outcome {
        let rows = servers.into_iter().zip(samples.iter().map(|s| summarize(s))).collect();
        Outcome { workload, rows: Ok(rows) }
    }

    pub(crate) fn get(&self, server: Server) -> Option<&Summary> {
        self.rows
            .as_ref()
            .ok()?
            .iter()
            .find(|(s, _)| *s == server)
            .map(|(_, m)| m)
            .filter(|m| m.valid())
    }
}

/// Date, machine, command and method: printed above the table.
pub struct Header {
    pub date: String,
    pub finished: String,
    pub machine: String,
    pub command: String,
    pub servercore: String,
    pub rounds: u32,
    pub secs: f64,
    pub cores: usize,
    pub busy_cores: f64,
    /// The ratio chart's link (`chart::write`), shown below the header.
    pub chart: Option<String>,
}

impl Header {
    pub fn collect(
        root: &Path,
        bin: &Path,
        rounds: u32,
        secs: f64,
        cores: usize,
        busy_cores: f64,
    ) -> Header {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into());
        let args: Vec<String> = std::env::args().skip(1).map(|a| shell_quote(&a)).collect();
        let command = if args.is_empty() {
            "cargo run --release -p servercore-bench".to_string()
        } else {
            format!("cargo run --release -p servercore-bench -- {}", args.join(" "))
        };
        let git = |args: &[&str]| -> Option<String> {
            let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
            out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        };
        let built = std::fs::metadata(bin)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| format!(" built {}", format_utc(d.as_secs())))
            .unwrap_or_default();
        let servercore = match git(&["rev-parse", "--short", "HEAD"]) {
            Some(commit) => {
                let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
                    .is_some_and(|s| !s.is_empty());
                format!(
                    "commit {commit}{}, binary `{}`{built}",
                    if dirty { " + uncommitted changes" } else { "" },
                    bin.strip_prefix(root).unwrap_or(bin).display()
                )
            }
            None => format!("binary `{}`{built}", bin.display()),
        };
        Header {
            date: utc_now(),
            finished: String::new(),
            machine: format!("{cores} cores (nproc), kernel {kernel}, CPU {cpu}"),
            command,
            servercore,
            rounds,
            secs,
            cores,
            busy_cores,
            chart: None,
        }
    }

    pub fn render(&self) -> String {
        let (srv, load) = if self.cores >= 2 {
            ("core 0", "core 1")
        } else {
            ("core 0", "core 0 (only one core!)")
        };
        format!(
            "- date: {}{}\n- machine: {}\n- command: `{}`\n- servercore: {}\n- method: server pinned to {srv}, \
             load generator pinned to {load} (sched_setaffinity); {} round(s) per server and workload, \
             servers alternating (A B C A B C ..), {} s of load per round; figures are medians over rounds; each round waits for the machine to be idle, and is \
             re-run (twice at most) when other processes used more than {:.2} cores during it",
            self.date,
            if self.finished.is_empty() { String::new() } else { format!(" to {}", self.finished) },
            self.machine, self.command, self.servercore, self.rounds, self.secs, self.busy_cores
        ) + if self.cores < 3 {
            "; rows with 2 workers: server on cores 0 and 1, load on core 1 (shared: this machine has fewer than 3 cores)"
        } else {
            "; rows with 2 workers: server on cores 0 and 1, load on core 2"
        }
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_=.,/:".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// "YYYY-MM-DD HH:MM UTC" from the system clock.
pub fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    format_utc(secs)
}

pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02} UTC", rem / 3600, rem % 3600 / 60)
}

/// 1234567.8 -> "1,234,568".
pub fn group(v: f64) -> String {
    if !v.is_finite() {
        return "-".into();
    }
    let digits = format!("{:.0}", v.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if v < 0.0 {
        format!("-{out}")
    } else {
        out
    }
}

fn rate_unit(load: Load) -> &'static str {
    match load {
        Load::Echo { .. } | Load::Memory { .. } => "msg/s",
        Load::Chat { .. } | Load::OpenChat { .. } | Load::Cluster { .. } => "deliveries/s",
        Load::Churn { .. } => "conn/s",
        Load::Handshake { .. } => "handshakes/s",
    }
}

fn cpu_cell(load: Load, us: f64) -> String {
    if !us.is_finite() {
        return "-".into();
    }
    match load {
        Load::Echo { .. } | Load::Memory { .. } => format!("{us:.2} us/msg"),
        Load::Chat { .. } | Load::OpenChat { .. } | Load::Cluster { .. } => {
            format!("{:.0} ns/delivery", us * 1000.0)
        }
        Load::Churn { .. } => format!("{us:.1} us/conn"),
        Load::Handshake { .. } => format!("{us:.1} us/handshake"),
    }
}

fn kib(v: f64) -> String {
    if !v.is_finite() {
        "-".into()
    } else if v >= 1024.0 {
        format!("{:.1} MiB", v / 1024.0)
    } else {
        format!("{v:.0} KiB")
    }
}

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.0}")
    } else {
        "-".into()
    }
}

pub(crate) fn ratio(a: f64, b: f64) -> Option<f64> {
    (a.is_finite() && b.is_finite() && b > 0.0).then(|| a / b)
}

/// The figure a workload's ratio compares: RSS per session for memory, else CPU per unit.
pub(crate) fn compared(load: Load, m: &Summary) -> f64 {
    match load {
        Load::Memory { .. } => m.rss_per_session_kib.unwrap_or(f64::NAN),
        _ => m.cpu_per_unit_us,
    }
}

pub fn render(header: &Header, outcomes: &[Outcome]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "{}", header.render());
    if let Some(chart) = &header.chart {
        let _ = writeln!(s, "\n![servercore vs references]({chart})");
    }
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
    let mut notes: Vec<String> = Vec::new();
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
        // servercore rows first, then the bare io_uring loop, tokio (the reference) last.
        let refs = [Server::Bare, Server::Tokio];
        let mut ordered: Vec<&(Server, Summary)> =
            rows.iter().filter(|(sv, _)| !refs.contains(sv)).collect();
        for r in refs {
            ordered.extend(rows.iter().filter(|(sv, _)| *sv == r));
        }
        for (server, m) in ordered {
            if let Some(p) = &m.problem {
                notes.push(format!(
                    "{} / {}: {} of {} rounds used; {p}",
                    w.label,
                    server.label_in(w),
                    m.good_rounds,
                    m.rounds
                ));
            }
            if m.foreign_cores > header.busy_cores {
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
            if client_backend.is_none() {
                client_backend.clone_from(&m.client_backend);
            }
            if !m.valid() {
                let _ = writeln!(
                    s,
                    "| {} | {} | failed | - | - | - | - | - | - | - |",
                    w.label,
                    server.label_in(w)
                );
                continue;
            }
            let rate = match w.load {
                Load::Echo { .. } | Load::Memory { .. } => group(m.rate),
                _ => format!("{} {}", group(m.rate), rate_unit(w.load)),
            };
            let rss = match m.rss_per_session_kib {
                Some(r) => format!("{r:.2} KiB/session (peak {})", kib(m.peak_rss_kib)),
                None => kib(m.peak_rss_kib),
            };
            let r = if *server == Server::Tokio {
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
    s.push_str(&render_bare(outcomes));
    s.push_str(&render_open_loop(outcomes, &mut notes));
    s.push_str(&render_cluster(outcomes, &mut notes));
    if !notes.is_empty() {
        let _ = writeln!(s, "\nNotes:");
        for n in &notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s.push_str(&render_techniques(outcomes));
    s.push_str(&render_baseline(outcomes));
    s.push_str(&render_targets(outcomes));
    s
}

/// servercore against the bare io_uring echo loop (issue 16), per echo workload of the
/// run: server CPU per message, servercore / bare.
fn render_bare(outcomes: &[Outcome]) -> String {
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

/// The open-loop latency rows (issue 16), every one of the run (one room, several rooms):
/// delivery latency at a fixed rate, servercore with fan-out gathering on and off, and
/// tokio, with the load client's busy share.
fn render_open_loop(outcomes: &[Outcome], notes: &mut Vec<String>) -> String {
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

/// The cluster workload's table (issue 15): one node against two nodes on NATS, with the
/// probe's local and cross-node latency; its notes go to `notes`.
fn render_cluster(outcomes: &[Outcome], notes: &mut Vec<String>) -> String {
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
        let one = o.get(crate::run::IO_URING);
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
            let r = if *server == crate::run::IO_URING {
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

/// Before/after a change: the current io_uring row against the `--baseline-bin` build's,
/// from the same alternation.
fn render_baseline(outcomes: &[Outcome]) -> String {
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
fn render_techniques(outcomes: &[Outcome]) -> String {
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

/// The targets of issue 13 for a TLS workload (servercore io_uring against tokio-rustls)
/// and of issue 14 for a WebSocket one (against tokio-tungstenite): the same figures.
fn transport_targets(
    w: &Workload,
    uring: Option<&Summary>,
    tokio: Option<&Summary>,
) -> Vec<(String, String, Option<bool>)> {
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

/// One line per target of issue 5 (and 13, for the TLS rows) that this run can judge.
fn render_targets(outcomes: &[Outcome]) -> String {
    let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
    for o in outcomes {
        let w = &o.workload;
        let tokio = o.get(Server::Tokio);
        let uring = o.get(IO_URING);
        let poll = o.get(POLL);
        let two = o.get(IO_URING_2);
        if w.tls || w.ws {
            rows.extend(transport_targets(w, uring, tokio));
            continue;
        }
        if matches!(w.load, Load::Cluster { .. }) {
            let two = o.get(Server::Cluster);
            if let Some(r) =
                uring.zip(two).and_then(|(u, c)| ratio(c.cpu_per_unit_us, u.cpu_per_unit_us))
            {
                rows.push((
                    format!("{}: 2 nodes + NATS CPU/delivery <= 1.5 x 1 node", w.label),
                    format!("{r:.3} x"),
                    Some(r <= 1.5),
                ));
            }
            continue;
        }
        if let (Some(u), Some(b)) = (uring, o.get(Server::Bare)) {
            if let Some(r) = ratio(u.cpu_per_unit_us, b.cpu_per_unit_us) {
                rows.push((
                    format!("{}: io_uring CPU/msg <= 1.00 x bare io_uring loop", w.label),
                    format!("{r:.3} x"),
                    Some(r <= 1.0),
                ));
            }
        }
        if matches!(w.load, Load::OpenChat { .. }) {
            let off = o.get(Server::Servercore {
                backend: "io_uring",
                workers: 1,
                without: Some(crate::run::Ablation::Gather),
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
            continue;
        }
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
    }
    if rows.is_empty() {
        return String::new();
    }
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
    let issues = match issues.split_last() {
        Some((last, [])) => format!("issue {last}"),
        Some((last, rest)) => format!("issues {} and {last}", rest.join(", ")),
        None => String::new(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn grouping() {
        assert_eq!(group(0.0), "0");
        assert_eq!(group(999.4), "999");
        assert_eq!(group(1234567.8), "1,234,568");
        assert_eq!(group(f64::NAN), "-");
    }

    fn sample(rate: f64, cpu_us: f64, parts: Vec<f64>, probe: Option<ProbeLatency>) -> Sample {
        Sample {
            rate,
            p50_us: 900.0,
            p99_us: 1500.0,
            p999_us: f64::NAN,
            cpu_per_unit_us: cpu_us,
            server_cpu_util: parts.iter().sum::<f64>().max(0.5),
            server_cpu_parts: parts,
            load_cpu_util: 0.9,
            peak_rss_kib: 10_000,
            rss_per_session_kib: None,
            errors: 0,
            first_error: None,
            client_backend: Some("io_uring".into()),
            besides: Besides::default(),
            probe,
        }
    }

    #[test]
    fn bare_loop_table_and_target() {
        let w = crate::run::workloads().into_iter().find(|w| w.key == "echo-64-d16").unwrap();
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

    #[test]
    fn open_loop_table_and_targets() {
        let workload = |k: &str| crate::run::workloads().into_iter().find(|w| w.key == k).unwrap();
        let off = Server::Servercore {
            backend: "io_uring",
            workers: 1,
            without: Some(crate::run::Ablation::Gather),
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

    #[test]
    fn cluster_table_and_target() {
        let w = crate::run::workloads().into_iter().find(|w| w.key == "cluster-chat").unwrap();
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

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31 23:59 UTC");
    }
}
