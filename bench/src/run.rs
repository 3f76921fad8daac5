//! The driver: builds servercore, then for every workload starts each server in turn (A B A B
//! ..) pinned to its core, loads it from another core, measures, and prints the table.

use crate::report::{self, Besides, Outcome, Sample};
use crate::sys::CoreSet;
use crate::{json, procfs, sys};
use clap::Args;
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `servercore-bench run` options.
#[derive(Args, Debug, Clone, Default)]
pub struct RunArgs {
    /// Smoke run: 1 round of 1 s per server and workload (unless --rounds/--secs say otherwise).
    #[arg(long)]
    pub quick: bool,
    /// Rounds per server and workload (default 5; 1 with --quick).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: Option<u32>,
    /// Seconds of load per round (default 3; 1 with --quick).
    #[arg(long)]
    pub secs: Option<f64>,
    /// Also write the report (markdown) to this file.
    #[arg(long)]
    pub markdown_out: Option<PathBuf>,
    /// Only these workloads (comma-separated keys: echo-64-d1, echo-64-d16, echo-1k, chat-100,
    /// chat-1000, memory, churn; TLS: tls-echo-64-d1, tls-echo-1k, tls-chat-100,
    /// tls-chat-1000, tls-handshake, tls-memory).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Leave out the TLS workloads (issue 13).
    #[arg(long)]
    pub no_tls: bool,
    /// Leave out the servercore rows with 2 workers (the scale target).
    #[arg(long)]
    pub no_scale: bool,
    /// Leave out the rows that switch one io_uring technique off (before/after figures).
    #[arg(long)]
    pub no_ablation: bool,
    /// The servercore binary (default: `<workspace>/target/release/servercore`, built first).
    #[arg(long)]
    pub servercore_bin: Option<PathBuf>,
    /// Do not run `cargo build --release -p servercore-cli` first.
    #[arg(long)]
    pub no_build: bool,
    /// Another servercore binary (an earlier build) to measure as one more io_uring row in
    /// the same alternation: a before/after of a change, from one run.
    #[arg(long)]
    pub baseline_bin: Option<PathBuf>,
    /// Before each round, wait up to this many seconds for other processes to leave the
    /// machine idle (a round is also re-run, twice at most, when other processes took more
    /// than --busy-cores during it).
    #[arg(long, default_value_t = 900.0)]
    pub quiet_wait: f64,
    /// CPU (in cores) that other processes may use during a round before it counts as
    /// disturbed.
    #[arg(long, default_value_t = 0.05)]
    pub busy_cores: f64,
}

/// What the load does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    Echo {
        sessions: u32,
        size: u32,
        depth: u32,
    },
    Chat {
        sessions: u32,
        size: u32,
    },
    Memory {
        sessions: u32,
        size: u32,
    },
    Churn {
        wave: u32,
    },
    /// Churn over TLS: every connection a full TLS 1.3 handshake (`tls-churn-client`).
    Handshake {
        wave: u32,
    },
}

impl Load {
    pub fn is_chat(self) -> bool {
        matches!(self, Load::Chat { .. })
    }
}

#[derive(Debug, Clone)]
pub struct Workload {
    pub key: &'static str,
    pub label: &'static str,
    pub load: Load,
    /// Also run servercore with 2 workers (the scale target).
    pub scale: bool,
    /// Also run the io_uring server with each of these techniques switched off.
    pub ablations: &'static [Ablation],
    /// Over TLS (issue 13): the servers get the bench's certificate, the load speaks TLS,
    /// and tokio means tokio-rustls.
    pub tls: bool,
}

pub fn workloads() -> Vec<Workload> {
    vec![
        Workload {
            key: "echo-64-d1",
            label: "echo 64 B, 100 sessions, depth 1",
            load: Load::Echo { sessions: 100, size: 64, depth: 1 },
            scale: true,
            ablations: &[Ablation::DeferTaskrun, Ablation::BufRing],
            tls: false,
        },
        Workload {
            key: "echo-64-d16",
            label: "echo 64 B, 100 sessions, depth 16",
            load: Load::Echo { sessions: 100, size: 64, depth: 16 },
            scale: true,
            ablations: &[],
            tls: false,
        },
        Workload {
            key: "echo-1k",
            label: "echo 1 KiB, 1,000 sessions, depth 1",
            load: Load::Echo { sessions: 1000, size: 1024, depth: 1 },
            scale: true,
            ablations: &[],
            tls: false,
        },
        Workload {
            key: "chat-100",
            label: "chat 64 B, 100 sessions",
            load: Load::Chat { sessions: 100, size: 64 },
            scale: true,
            ablations: &[Ablation::Gather, Ablation::GatherAndCoalesce, Ablation::DeferTaskrun],
            tls: false,
        },
        Workload {
            key: "chat-1000",
            label: "chat 64 B, 1,000 sessions",
            load: Load::Chat { sessions: 1000, size: 64 },
            scale: true,
            ablations: &[Ablation::Gather, Ablation::GatherAndCoalesce],
            tls: false,
        },
        Workload {
            key: "memory",
            label: "memory: 10,000 echo sessions, 64 B",
            load: Load::Memory { sessions: 10_000, size: 64 },
            scale: false,
            ablations: &[Ablation::BufRing],
            tls: false,
        },
        Workload {
            key: "churn",
            label: "churn: 2,000-connection waves",
            load: Load::Churn { wave: 2000 },
            scale: false,
            ablations: &[],
            tls: false,
        },
        // TLS (issue 13): the same loads over TLS, servercore against tokio-rustls.
        Workload {
            key: "tls-echo-64-d1",
            label: "TLS echo 64 B, 100 sessions, depth 1",
            load: Load::Echo { sessions: 100, size: 64, depth: 1 },
            scale: false,
            ablations: &[],
            tls: true,
        },
        Workload {
            key: "tls-echo-1k",
            label: "TLS echo 1 KiB, 1,000 sessions, depth 1",
            load: Load::Echo { sessions: 1000, size: 1024, depth: 1 },
            scale: false,
            ablations: &[],
            tls: true,
        },
        Workload {
            key: "tls-chat-100",
            label: "TLS chat 64 B, 100 sessions",
            load: Load::Chat { sessions: 100, size: 64 },
            scale: false,
            ablations: &[],
            tls: true,
        },
        Workload {
            key: "tls-chat-1000",
            label: "TLS chat 64 B, 1,000 sessions",
            load: Load::Chat { sessions: 1000, size: 64 },
            scale: false,
            ablations: &[],
            tls: true,
        },
        Workload {
            key: "tls-handshake",
            label: "TLS 1.3 handshakes (ECDSA P-256): 1,000-connection waves",
            load: Load::Handshake { wave: 1000 },
            scale: false,
            ablations: &[],
            tls: true,
        },
        Workload {
            key: "tls-memory",
            label: "TLS memory: 10,000 echo sessions, 64 B",
            load: Load::Memory { sessions: 10_000, size: 64 },
            scale: false,
            ablations: &[],
            tls: true,
        },
    ]
}

/// One servercore technique, switched off for a before/after row (through the server's
/// diagnostic switches, README "Backends").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Ablation {
    /// Fan-out gathering (`chat-server --broadcast-gather-ms 0`).
    Gather,
    /// Fan-out gathering and joining a turn's room broadcasts into one buffer.
    GatherAndCoalesce,
    /// SINGLE_ISSUER + DEFER_TASKRUN (COOP_TASKRUN instead, as before Linux 6.1).
    DeferTaskrun,
    /// The provided-buffer ring and multishot receive (single-shot receives into a pool).
    BufRing,
}

impl Ablation {
    /// What the row lacks, as the table shows it.
    pub fn label(self) -> &'static str {
        match self {
            Ablation::Gather => "fan-out gathering",
            Ablation::GatherAndCoalesce => "fan-out gathering, room batching",
            Ablation::DeferTaskrun => "DEFER_TASKRUN",
            Ablation::BufRing => "buffer ring",
        }
    }

    fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Ablation::Gather => &[],
            Ablation::GatherAndCoalesce => &[("SERVERCORE_NO_ROOM_COALESCE", "1")],
            Ablation::DeferTaskrun => &[("SERVERCORE_URING_NO_DEFER_TASKRUN", "1")],
            Ablation::BufRing => &[("SERVERCORE_URING_NO_BUFRING", "1")],
        }
    }

    /// Extra arguments for the server (chat-server only takes the gathering one).
    fn args(self, chat: bool) -> &'static [&'static str] {
        match self {
            Ablation::Gather | Ablation::GatherAndCoalesce if chat => {
                &["--broadcast-gather-ms", "0"]
            }
            _ => &[],
        }
    }
}

/// Which server a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Server {
    Servercore {
        backend: &'static str,
        workers: u16,
        without: Option<Ablation>,
    },
    /// The `--baseline-bin` build, io_uring, one worker.
    Baseline,
    Tokio,
}

impl Server {
    pub fn label(self) -> String {
        match self {
            Server::Servercore { backend, workers: 1, without: None } => {
                format!("servercore {backend}")
            }
            Server::Servercore { backend, workers, without: None } => {
                format!("servercore {backend}, {workers} workers")
            }
            Server::Servercore { backend, without: Some(a), .. } => {
                format!("servercore {backend} without {}", a.label())
            }
            Server::Baseline => "servercore io_uring, baseline build".into(),
            Server::Tokio => "tokio".into(),
        }
    }

    /// The label in a workload's rows: the tokio server of a TLS workload is tokio-rustls.
    pub fn label_in(self, w: &Workload) -> String {
        match self {
            Server::Tokio if w.tls => "tokio-rustls".into(),
            _ => self.label(),
        }
    }

    pub fn workers(self) -> u16 {
        match self {
            Server::Servercore { workers, .. } => workers,
            Server::Baseline | Server::Tokio => 1,
        }
    }
}

pub const IO_URING: Server = Server::Servercore { backend: "io_uring", workers: 1, without: None };
pub const POLL: Server = Server::Servercore { backend: "poll", workers: 1, without: None };
pub const IO_URING_2: Server =
    Server::Servercore { backend: "io_uring", workers: 2, without: None };

pub fn servers_for(w: &Workload, scale: bool, ablation: bool, baseline: bool) -> Vec<Server> {
    let mut v = vec![IO_URING, POLL, Server::Tokio];
    if baseline {
        v.push(Server::Baseline);
    }
    if w.tls {
        // TLS rows: no scale or technique rows (none of those switches concerns TLS).
        return v;
    }
    if w.scale && scale {
        v.push(IO_URING_2);
    }
    if ablation {
        v.extend(w.ablations.iter().map(|&a| Server::Servercore {
            backend: "io_uring",
            workers: 1,
            without: Some(a),
        }));
    }
    v
}

/// Paths and facts the rounds need.
struct Env {
    servercore: PathBuf,
    baseline: Option<PathBuf>,
    me: PathBuf,
    logs: PathBuf,
    cores: usize,
    secs: f64,
    quiet_wait: Duration,
    busy_cores: f64,
    /// The certificate of the TLS workloads, when any is selected.
    tls: Option<TlsCert>,
}

/// A self-signed ECDSA P-256 certificate for `localhost` and 127.0.0.1, made at bench
/// start (rcgen) into a temporary directory, removed when the run ends; every TLS server
/// uses it, and the dummy-client trusts it (`--tls-ca`).
pub struct TlsCert {
    dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsCert {
    /// The server name the certificate is for.
    pub const NAME: &'static str = "localhost";

    fn generate() -> Result<TlsCert, String> {
        let dir = std::env::temp_dir().join(format!("servercore-bench-tls-{}", std::process::id()));
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cert = TlsCert { cert: dir.join("cert.pem"), key: dir.join("key.pem"), dir };
        // rcgen's default key: ECDSA P-256 (SHA-256), made with ring.
        let made =
            rcgen::generate_simple_self_signed(vec![Self::NAME.to_string(), "127.0.0.1".into()])
                .map_err(|e| format!("cannot generate a TLS certificate: {e}"))?;
        fs::write(&cert.cert, made.cert.pem())
            .and_then(|()| fs::write(&cert.key, made.signing_key.serialize_pem()))
            .map_err(|e| format!("cannot write the TLS certificate: {e}"))?;
        Ok(cert)
    }
}

impl Drop for TlsCert {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Env {
    /// CPU (cores) other processes may use during a round: --busy-cores, plus what CPU time
    /// sampled in clock ticks (4 counters, each +-1 tick) can show over a window of nothing.
    fn allowed_foreign(&self) -> f64 {
        self.busy_cores + 4.0 / procfs::clock_ticks_per_sec() / (self.secs * 0.8)
    }

    /// Server on cores 0..workers; load on the next core, or the last one when there is none.
    fn cores_for(&self, server: Server) -> (CoreSet, CoreSet) {
        let w = (server.workers() as usize).min(self.cores).max(1);
        let server_cores: Vec<usize> = (0..w).collect();
        let load = if self.cores > w { w } else { self.cores - 1 };
        (CoreSet::new(&server_cores), CoreSet::new(&[load]))
    }
}

pub fn run(args: RunArgs) -> Result<(), String> {
    let rounds = args.rounds.unwrap_or(if args.quick { 1 } else { 5 });
    let secs = args.secs.unwrap_or(if args.quick { 1.0 } else { 3.0 });
    if !(secs.is_finite() && secs >= 0.5) {
        return Err(format!("--secs must be at least 0.5, got {secs}"));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("bench crate has no parent directory")?
        .to_path_buf();
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let servercore = args
        .servercore_bin
        .clone()
        .unwrap_or_else(|| target_dir.join("release").join("servercore"));
    if !args.no_build && args.servercore_bin.is_none() {
        build_servercore(&root, &servercore)?;
    }
    if !servercore.exists() {
        return Err(format!("servercore binary not found at {}", servercore.display()));
    }
    // Children of the driver run this very binary through /proc/self/exe, which stays valid
    // even if cargo replaces the file on disk during the run.
    let me = PathBuf::from("/proc/self/exe");
    let logs = target_dir.join("servercore-bench");
    fs::create_dir_all(&logs).map_err(|e| format!("cannot create {}: {e}", logs.display()))?;
    // Run a copy, so that a rebuild during the run (say, by someone working on servercore)
    // cannot mix two builds in one table.
    let snapshot = logs.join("servercore");
    let _ = fs::remove_file(&snapshot);
    fs::copy(&servercore, &snapshot).map_err(|e| {
        format!("cannot copy {} to {}: {e}", servercore.display(), snapshot.display())
    })?;
    let header_bin = servercore.clone();
    let servercore = snapshot;
    let nofile =
        sys::raise_nofile_limit().map_err(|e| format!("cannot raise RLIMIT_NOFILE: {e}"))?;
    let cores = sys::online_cores();
    let quiet_wait = Duration::from_secs_f64(args.quiet_wait.max(0.0));
    let baseline = match &args.baseline_bin {
        Some(path) => {
            let copy = logs.join("servercore-baseline");
            let _ = fs::remove_file(&copy);
            fs::copy(path, &copy)
                .map_err(|e| format!("cannot copy baseline {}: {e}", path.display()))?;
            Some(copy)
        }
        None => None,
    };
    let busy_cores = args.busy_cores;

    let all = workloads();
    let selected: Vec<Workload> = if args.only.is_empty() {
        all
    } else {
        for k in &args.only {
            if !all.iter().any(|w| w.key == k) {
                let keys: Vec<&str> = all.iter().map(|w| w.key).collect();
                return Err(format!("unknown workload {k:?}; known: {}", keys.join(", ")));
            }
        }
        all.into_iter().filter(|w| args.only.iter().any(|k| k == w.key)).collect()
    };
    // --no-tls leaves out the TLS workloads, unless --only names them.
    let selected: Vec<Workload> = if args.no_tls && args.only.is_empty() {
        selected.into_iter().filter(|w| !w.tls).collect()
    } else {
        selected
    };
    let tls = if selected.iter().any(|w| w.tls) { Some(TlsCert::generate()?) } else { None };
    let env = Env { servercore, baseline, me, logs, cores, secs, quiet_wait, busy_cores, tls };
    let chat_missing = chat_unavailable(&env.servercore);
    let tls_missing = tls_unavailable(&env.servercore);
    if nofile < 10_000 + 100 && selected.iter().any(|w| matches!(w.load, Load::Memory { .. })) {
        eprintln!("warning: open-file limit is {nofile}; the memory workload needs ~10,100");
    }

    // The driver itself sleeps through the measurements; keep it off the server's core.
    let (_, load_core) = env.cores_for(IO_URING);
    let _ = load_core.pin_current_thread();

    let header =
        report::Header::collect(&root, &header_bin, rounds, secs, cores, env.allowed_foreign());
    eprintln!("{}", header.render());
    let mut outcomes: Vec<Outcome> = Vec::new();
    for w in &selected {
        let mut servers = servers_for(w, !args.no_scale, !args.no_ablation, env.baseline.is_some());
        if w.load.is_chat() {
            if let Some(why) = &chat_missing {
                outcomes.push(Outcome::unavailable(w.clone(), why.clone()));
                continue;
            }
        }
        if w.tls {
            if let Some(why) = &tls_missing {
                if !matches!(w.load, Load::Handshake { .. }) {
                    outcomes.push(Outcome::unavailable(w.clone(), why.clone()));
                    continue;
                }
                // The handshake load is the bench's own: tokio-rustls can still be measured.
                eprintln!("[{}] {why}; measuring tokio-rustls alone", w.key);
                servers.retain(|&s| s == Server::Tokio);
            }
        }
        let mut samples: Vec<Vec<Result<Sample, String>>> = vec![Vec::new(); servers.len()];
        for round in 1..=rounds {
            for (i, &server) in servers.iter().enumerate() {
                let result = run_round(&env, w, server);
                match &result {
                    Ok(s) => eprintln!(
                        "[{}] round {round}/{rounds} {}: {}",
                        w.key,
                        server.label_in(w),
                        s.brief(w.load)
                    ),
                    Err(e) => {
                        eprintln!(
                            "[{}] round {round}/{rounds} {}: FAILED: {e}",
                            w.key,
                            server.label_in(w)
                        )
                    }
                }
                samples[i].push(result);
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        outcomes.push(Outcome::measured(w.clone(), servers, samples));
    }
    let mut header = header;
    header.finished = report::utc_now();
    let text = report::render(&header, &outcomes);
    println!("{text}");
    if let Some(path) = &args.markdown_out {
        fs::write(path, &text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `cargo build --release -p servercore-cli`, so that the benchmark measures the current code.
fn build_servercore(root: &Path, bin: &Path) -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("building servercore: cargo build --release -p servercore-cli");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "servercore-cli"])
        .current_dir(root)
        .status()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else if bin.exists() {
        eprintln!(
            "warning: building servercore failed ({status}); benchmarking the existing binary {}",
            bin.display()
        );
        Ok(())
    } else {
        Err(format!("building servercore failed ({status}) and there is no binary to use"))
    }
}

/// Why the chat workloads cannot run, if they cannot.
fn chat_unavailable(bin: &Path) -> Option<String> {
    let ok = |args: &[&str]| -> Option<String> {
        let out = Command::new(bin).args(args).stdin(Stdio::null()).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    if ok(&["chat-server", "--help"]).is_none() {
        return Some("n/a: chat-server not available".into());
    }
    match ok(&["dummy-client", "--help"]) {
        Some(help) if help.contains("chat") => None,
        _ => Some("n/a: dummy-client --mode chat not available".into()),
    }
}

/// Why the TLS workloads cannot run, if they cannot: the servers' `--tls-cert`/`--tls-key`
/// and the dummy-client's `--tls`/`--tls-ca` (issue 13).
fn tls_unavailable(bin: &Path) -> Option<String> {
    let help = |args: &[&str]| -> String {
        Command::new(bin)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    };
    if !help(&["echo-server", "--help"]).contains("--tls-cert") {
        return Some("n/a: this servercore has no echo-server --tls-cert".into());
    }
    let client = help(&["dummy-client", "--help"]);
    if !(client.contains("--tls") && client.contains("--tls-ca")) {
        return Some("n/a: this servercore has no dummy-client --tls --tls-ca".into());
    }
    None
}

/// The servercore switches that turn a technique off: never inherited by a full row.
const SWITCHES: [&str; 3] = [
    "SERVERCORE_NO_ROOM_COALESCE",
    "SERVERCORE_URING_NO_DEFER_TASKRUN",
    "SERVERCORE_URING_NO_BUFRING",
];

/// `--tls-cert FILE --tls-key FILE`, for a TLS workload's server.
fn tls_server_args(cmd: &mut Command, tls: Option<&TlsCert>) {
    if let Some(t) = tls {
        cmd.arg("--tls-cert").arg(&t.cert).arg("--tls-key").arg(&t.key);
    }
}

/// A server process; killed when dropped.
struct RunningServer {
    child: Child,
    pid: u32,
    addr: SocketAddr,
    log: PathBuf,
}

impl RunningServer {
    fn start(env: &Env, w: &Workload, server: Server, cores: &CoreSet) -> Result<Self, String> {
        let chat = w.load.is_chat();
        let tls = if w.tls { Some(env.tls.as_ref().ok_or("no TLS certificate")?) } else { None };
        let mut cmd = match server {
            Server::Baseline => {
                let bin = env.baseline.as_ref().ok_or("no baseline binary")?;
                let mut c = Command::new(bin);
                c.arg(if chat { "chat-server" } else { "echo-server" })
                    .args(["--addr", "127.0.0.1:0", "--workers", "1"])
                    .env("SERVERCORE_BACKEND", "io_uring");
                for name in SWITCHES {
                    c.env_remove(name);
                }
                tls_server_args(&mut c, tls);
                c
            }
            Server::Servercore { backend, workers, without } => {
                let mut c = Command::new(&env.servercore);
                c.arg(if chat { "chat-server" } else { "echo-server" })
                    .args(["--addr", "127.0.0.1:0", "--workers", &workers.to_string()])
                    .env("SERVERCORE_BACKEND", backend);
                for name in SWITCHES {
                    c.env_remove(name);
                }
                if let Some(a) = without {
                    c.args(a.args(chat)).envs(a.env().iter().copied());
                }
                tls_server_args(&mut c, tls);
                c
            }
            Server::Tokio => {
                let mut c = Command::new(&env.me);
                let name = match (chat, tls.is_some()) {
                    (false, false) => "tokio-echo",
                    (true, false) => "tokio-chat",
                    (false, true) => "tokio-tls-echo",
                    (true, true) => "tokio-tls-chat",
                };
                c.arg0("servercore-bench").arg(name).args(["--addr", "127.0.0.1:0"]);
                tls_server_args(&mut c, tls);
                c
            }
        };
        let log = env.logs.join("server.log");
        let log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
        cores.apply(&mut cmd);
        let mut child =
            cmd.spawn().map_err(|e| format!("cannot start {}: {e}", server.label_in(w)))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(line);
                    }
                }
            }
        });
        let mut running = RunningServer { child, pid, addr: "0.0.0.0:0".parse().unwrap(), log };
        let line = match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(line) => line,
            Err(_) => {
                return Err(format!(
                    "{} printed no readiness line; its log: {}",
                    server.label_in(w),
                    running.log_tail()
                ))
            }
        };
        // "listening on 127.0.0.1:PORT (backend: B, workers: N)"
        let addr_text = line["listening on ".len()..].split_whitespace().next().unwrap_or("");
        running.addr = addr_text
            .parse()
            .map_err(|e| format!("bad address in readiness line {line:?}: {e}"))?;
        if let Server::Servercore { backend, .. } = server {
            if !line.contains(&format!("backend: {backend}")) {
                return Err(format!("asked for backend {backend}, server says: {line}"));
            }
        }
        // "listening on ADDR (backend: B, workers: N, tls)"
        if w.tls && !line.trim_end().ends_with(", tls)") {
            return Err(format!("asked for TLS, server says: {line}"));
        }
        Ok(running)
    }

    fn log_tail(&self) -> String {
        tail(&self.log)
    }

    fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        sys::signal(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The last lines of a log file, for error messages.
fn tail(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_string(&mut s);
    }
    let lines: Vec<&str> = s.lines().collect();
    let from = lines.len().saturating_sub(5);
    let t = lines[from..].join(" | ");
    if t.is_empty() {
        "(empty)".into()
    } else {
        t
    }
}

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

fn cpu_secs(pid: u32) -> Result<f64, String> {
    procfs::cpu_ticks(pid)
        .map(|t| t as f64 / procfs::clock_ticks_per_sec())
        .map_err(|e| format!("reading server CPU time: {e}"))
}

fn memory(pid: u32) -> Result<procfs::Memory, String> {
    procfs::memory(pid).map_err(|e| format!("reading server memory: {e}"))
}

/// CPU (in cores) used by the whole machine over `over`.
fn machine_busy_cores(over: Duration) -> f64 {
    let tck = procfs::clock_ticks_per_sec();
    let a = procfs::machine_ticks().unwrap_or_default().busy;
    let t = Instant::now();
    std::thread::sleep(over);
    let b = procfs::machine_ticks().unwrap_or_default().busy;
    b.saturating_sub(a) as f64 / tck / t.elapsed().as_secs_f64()
}

/// Waits until other processes leave the machine (nearly) idle, for at most
/// `env.quiet_wait`; returns how busy it still was when the wait ended.
fn wait_for_quiet(env: &Env) -> f64 {
    let start = Instant::now();
    let mut said = false;
    loop {
        let busy = machine_busy_cores(Duration::from_millis(500));
        if busy <= env.allowed_foreign() || start.elapsed() >= env.quiet_wait {
            if said {
                eprintln!(
                    "  .. machine quiet after {:.0} s (busy {busy:.2} cores)",
                    start.elapsed().as_secs_f64()
                );
            }
            return busy;
        }
        if !said {
            eprintln!("  .. waiting for other processes to quiet down ({busy:.2} cores busy)");
            said = true;
        }
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// One round, re-run (twice at most) when other processes disturbed it.
fn run_round(env: &Env, w: &Workload, server: Server) -> Result<Sample, String> {
    let mut attempt = 0;
    loop {
        wait_for_quiet(env);
        let sample = run_round_once(env, w, server)?;
        if sample.besides.foreign <= env.allowed_foreign() || attempt == 2 {
            return Ok(sample);
        }
        attempt += 1;
        eprintln!(
            "  .. {} round disturbed: other processes used {:.2} cores; running it again",
            server.label_in(w),
            sample.besides.foreign
        );
    }
}

/// One round: start the server, load it, measure, stop it.
fn run_round_once(env: &Env, w: &Workload, server: Server) -> Result<Sample, String> {
    let (server_cores, load_cores) = env.cores_for(server);
    let srv = RunningServer::start(env, w, server, &server_cores)?;
    std::thread::sleep(Duration::from_millis(200));
    let result = match w.load {
        Load::Churn { wave } => churn_round(env, &srv, wave, None, &load_cores),
        Load::Handshake { wave } => {
            let tls = env.tls.as_ref().ok_or("no TLS certificate")?;
            churn_round(env, &srv, wave, Some(tls), &load_cores)
        }
        _ => dummy_round(env, &srv, w, &load_cores),
    };
    let result = result.map_err(|e| format!("{e}; server log: {}", srv.log_tail()));
    srv.stop();
    result
}

/// Seconds a TLS round's dummy-client runs beyond `secs`: the driver sees the sessions done
/// with their handshakes a little after the client starts its window (see `dummy_round`).
const TLS_EXTRA_SECS: f64 = 1.0;

/// Echo, chat and memory rounds: `servercore dummy-client` is the load.
///
/// The server's CPU time is sampled inside the client's measurement window (which starts
/// once every session is connected and lasts `secs`), leaving a margin at both ends, so that
/// connecting and closing the sessions is not charged to the messages.
///
/// Over TLS a session is connected once its handshake is done, which for thousands of
/// sessions takes a while after their TCP connections are established; the window then
/// starts once every session on the server's port has received data segments past its
/// handshake (`procfs::established_and_past_segs_on_port`), and the client runs
/// `TLS_EXTRA_SECS` longer so that its own window still covers the driver's.
fn dummy_round(
    env: &Env,
    srv: &RunningServer,
    w: &Workload,
    cores: &CoreSet,
) -> Result<Sample, String> {
    let load = w.load;
    let base = memory(srv.pid)?;
    let (mode, sessions, size, depth) = match load {
        Load::Echo { sessions, size, depth } => ("echo", sessions, size, depth),
        Load::Chat { sessions, size } => ("chat", sessions, size, 1),
        Load::Memory { sessions, size } => ("echo", sessions, size, 1),
        Load::Churn { .. } | Load::Handshake { .. } => unreachable!("churn has its own round"),
    };
    let tls = if w.tls { Some(env.tls.as_ref().ok_or("no TLS certificate")?) } else { None };
    let client_secs = if tls.is_some() { env.secs + TLS_EXTRA_SECS } else { env.secs };
    let mut cmd = Command::new(&env.servercore);
    cmd.arg("dummy-client")
        .args(["--addr", &srv.addr.to_string(), "--mode", mode])
        .args(["--sessions", &sessions.to_string(), "--size", &size.to_string()])
        .args(["--secs", &client_secs.to_string(), "--json", "--workers", "1"])
        .args(["--depth", &depth.to_string()])
        .env_remove("SERVERCORE_BACKEND");
    if let Some(t) = tls {
        cmd.arg("--tls").arg("--tls-ca").arg(&t.cert);
        cmd.args(["--tls-server-name", TlsCert::NAME]);
    }
    for name in SWITCHES {
        cmd.env_remove(name);
    }
    let log = env.logs.join("client.log");
    let log_file =
        File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    cores.apply(&mut cmd);
    let mut client = cmd.spawn().map_err(|e| format!("cannot start dummy-client: {e}"))?;

    // Wait until every session is established on the server's port (over TLS: and has
    // received data segments past its handshake).
    let poll = if sessions > 2000 { 50 } else { 5 };
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    let t_conn = loop {
        if let Ok(Some(status)) = client.try_wait() {
            return Err(format!("dummy-client exited early ({status}): {}", tail(&log)));
        }
        let n = if tls.is_some() {
            procfs::established_and_past_segs_on_port(srv.addr.port(), 3)
                .map_err(|e| format!("reading TCP socket information (sock_diag): {e}"))?
                .1
        } else {
            procfs::established_on_port(srv.addr.port())
                .map_err(|e| format!("reading /proc/net/tcp: {e}"))?
        };
        if n >= sessions as usize {
            break Instant::now();
        }
        if Instant::now() > connect_deadline {
            let _ = client.kill();
            let _ = client.wait();
            let what = if tls.is_some() { "past their TLS handshake" } else { "connected" };
            return Err(format!("only {n} of {sessions} sessions {what} after 30 s"));
        }
        std::thread::sleep(Duration::from_millis(poll));
    };
    let margin = Duration::from_secs_f64((env.secs * 0.1).clamp(0.05, 0.5));
    let window_end = t_conn + Duration::from_secs_f64(env.secs) - margin;
    let client_pid = client.id();
    sleep_until(t_conn + margin);
    let (c0, w0) = (cpu_secs(srv.pid)?, Instant::now());
    let others0 = Others::sample(process_cpu_secs(client_pid));
    sleep_until(window_end);
    let (c1, w1) = (cpu_secs(srv.pid)?, Instant::now());
    let others1 = Others::sample(process_cpu_secs(client_pid));
    let loaded = memory(srv.pid)?;
    let out = client.wait_with_output().map_err(|e| format!("waiting for dummy-client: {e}"))?;
    let peak = memory(srv.pid)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Err(format!("dummy-client ({}) printed no JSON: {}", out.status, tail(&log)));
    };
    if tls.is_some() && json::object(line, "tls").is_none() {
        return Err(format!("dummy-client reported no \"tls\" object: {line}"));
    }
    let num = |k: &str| json::number(line, k);
    // A chat client's messages are deliveries (every S_CHAT received); prefer the explicit
    // field if the client has one.
    let rate = num("deliveries_per_sec")
        .or_else(|| num("msgs_per_sec"))
        .ok_or_else(|| format!("no msgs_per_sec in {line}"))?;
    let server_cpu_rate = (c1 - c0) / (w1 - w0).as_secs_f64().max(1e-9);
    let rss_per_session = matches!(load, Load::Memory { .. })
        .then(|| loaded.rss_kib.saturating_sub(base.rss_kib) as f64 / sessions as f64);
    Ok(Sample {
        rate,
        p50_us: num("p50_us").unwrap_or(f64::NAN),
        p99_us: num("p99_us").unwrap_or(f64::NAN),
        cpu_per_unit_us: if rate > 0.0 { server_cpu_rate / rate * 1e6 } else { f64::NAN },
        server_cpu_util: server_cpu_rate,
        load_cpu_util: (others1.client - others0.client) / (w1 - w0).as_secs_f64().max(1e-9),
        peak_rss_kib: peak.hwm_kib,
        rss_per_session_kib: rss_per_session,
        errors: num("errors").unwrap_or(0.0) as u64,
        first_error: json::string(line, "first_error"),
        client_backend: json::string(line, "backend"),
        besides: others1.since(&others0, c1 - c0, (w1 - w0).as_secs_f64()),
    })
}

/// CPU used so far by the machine, by kernel threads, by the load client and by the driver
/// itself, at one instant: to tell how much CPU other processes took during a measurement.
struct Others {
    machine: f64,
    steal: f64,
    kernel: f64,
    client: f64,
    me: f64,
}

impl Others {
    /// `client_secs`: the load client's CPU seconds so far.
    fn sample(client_secs: f64) -> Others {
        let tck = procfs::clock_ticks_per_sec();
        let m = procfs::machine_ticks().unwrap_or_default();
        Others {
            machine: m.busy as f64 / tck,
            steal: m.steal as f64 / tck,
            kernel: procfs::kernel_threads_ticks() as f64 / tck,
            client: client_secs,
            me: procfs::cpu_ticks(std::process::id()).unwrap_or(0) as f64 / tck,
        }
    }

    /// What was used since `before` by anything but the server (which used `server` CPU
    /// seconds), over `wall` seconds.
    fn since(&self, before: &Others, server: f64, wall: f64) -> Besides {
        let wall = wall.max(1e-9);
        let total = self.machine - before.machine;
        let kernel = self.kernel - before.kernel;
        let ours = server + (self.client - before.client) + (self.me - before.me);
        Besides {
            foreign: ((total - ours - kernel) / wall).max(0.0),
            kernel: (kernel / wall).max(0.0),
            steal: ((self.steal - before.steal) / wall).max(0.0),
        }
    }
}

fn process_cpu_secs(pid: u32) -> f64 {
    procfs::cpu_ticks(pid).unwrap_or(0) as f64 / procfs::clock_ticks_per_sec()
}

/// Churn: `servercore-bench churn-client` (TLS handshakes: `tls-churn-client`) is the load;
/// the server's CPU is sampled right before and right after it.
fn churn_round(
    env: &Env,
    srv: &RunningServer,
    wave: u32,
    tls: Option<&TlsCert>,
    cores: &CoreSet,
) -> Result<Sample, String> {
    let mut cmd = Command::new(&env.me);
    cmd.arg0("servercore-bench")
        .arg(if tls.is_some() { "tls-churn-client" } else { "churn-client" })
        .args(["--addr", &srv.addr.to_string(), "--wave", &wave.to_string()])
        .args(["--secs", &env.secs.to_string()]);
    if tls.is_some() {
        // The client does not verify the certificate (the lightest load); SNI names it.
        cmd.args(["--tls-server-name", TlsCert::NAME]);
    }
    let log = env.logs.join("client.log");
    let log_file =
        File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    cores.apply(&mut cmd);
    // The client's CPU: what this process's reaped children used, before and after it.
    let others0 = Others::sample(sys::reaped_children_cpu_secs());
    let (c0, w0) = (cpu_secs(srv.pid)?, Instant::now());
    let out = cmd.output().map_err(|e| format!("cannot run churn-client: {e}"))?;
    let (c1, w1) = (cpu_secs(srv.pid)?, Instant::now());
    let others1 = Others::sample(sys::reaped_children_cpu_secs());
    let besides = others1.since(&others0, c1 - c0, (w1 - w0).as_secs_f64());
    let peak = memory(srv.pid)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Err(format!("churn-client ({}) printed no JSON: {}", out.status, tail(&log)));
    };
    let num = |k: &str| json::number(line, k);
    let cycles = num("cycles").unwrap_or(0.0);
    let rate = num("cycles_per_sec").unwrap_or(0.0);
    Ok(Sample {
        rate,
        p50_us: num("p50_us").unwrap_or(f64::NAN),
        p99_us: num("p99_us").unwrap_or(f64::NAN),
        cpu_per_unit_us: if cycles > 0.0 { (c1 - c0) / cycles * 1e6 } else { f64::NAN },
        server_cpu_util: (c1 - c0) / (w1 - w0).as_secs_f64().max(1e-9),
        load_cpu_util: (others1.client - others0.client) / (w1 - w0).as_secs_f64().max(1e-9),
        peak_rss_kib: peak.hwm_kib,
        rss_per_session_kib: None,
        errors: num("errors").unwrap_or(0.0) as u64,
        first_error: json::string(line, "first_error"),
        client_backend: None,
        besides,
    })
}
