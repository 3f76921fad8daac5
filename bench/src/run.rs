//! The driver: builds servercore, then for every workload starts each server in turn (A B A B
//! ..) pinned to its core, loads it from another core, measures, and prints the table.

use crate::report::{self, Besides, Outcome, ProbeLatency, Sample};
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
    /// Also write the ratio chart (SVG: servercore / each reference, a bar per workload) to
    /// this file (default with --markdown-out F: F with extension .svg). The report links it
    /// below its header: by file name when beside F, else as given (for BENCHMARKS.md, from
    /// the workspace root: docs/bench-ratios.svg).
    #[arg(long)]
    pub chart_out: Option<PathBuf>,
    /// Only these workloads (comma-separated keys: echo-64-d1, echo-64-d16, echo-1k, chat-100,
    /// chat-1000, memory, churn; open loop: latency-chat-100, latency-chat-1000-10rooms; TLS: tls-echo-64-d1, tls-echo-1k, tls-chat-100,
    /// tls-chat-1000, tls-handshake, tls-memory; WebSocket: ws-echo-64-d1, ws-chat-100,
    /// ws-chat-1000, ws-memory; cluster: cluster-chat).
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Leave out the TLS workloads (issue 13).
    #[arg(long)]
    pub no_tls: bool,
    /// Leave out the WebSocket workloads (issue 14).
    #[arg(long)]
    pub no_ws: bool,
    /// Leave out the cluster workload (issue 15).
    #[arg(long)]
    pub no_cluster: bool,
    /// Leave out the bare io_uring echo loop (`servercore-bench bare-echo`, issue 16) from
    /// the echo workloads.
    #[arg(long)]
    pub no_bare: bool,
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
    /// Chat, open loop (issue 16): each session sends `rate` messages per second whatever
    /// the replies do (`dummy-client --rate`), well below saturation; for the latency. The
    /// sessions are spread over `rooms` rooms (`--rooms N` of both chat servers; 1: the one
    /// room), `sessions / rooms` per room.
    OpenChat {
        sessions: u32,
        size: u32,
        rate: u32,
        rooms: u32,
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
    /// Chat over a cluster (issue 15): the sessions spread over two chat servers on one
    /// NATS, against one chat server with all of them; with the latency probe.
    Cluster {
        sessions: u32,
        size: u32,
    },
}

impl Load {
    pub fn is_chat(self) -> bool {
        matches!(self, Load::Chat { .. } | Load::OpenChat { .. } | Load::Cluster { .. })
    }

    /// Rooms the chat servers spread the sessions over (`--rooms N`): 1 but in a multi-room
    /// open-loop row.
    pub fn rooms(self) -> u32 {
        match self {
            Load::OpenChat { rooms, .. } => rooms.max(1),
            _ => 1,
        }
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
    /// Over WebSocket (issue 14): servercore serves on its `--ws-addr` listener, the load
    /// speaks WebSocket (`dummy-client --ws`), and tokio means tokio-tungstenite.
    pub ws: bool,
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
            ws: false,
        },
        Workload {
            key: "echo-64-d16",
            label: "echo 64 B, 100 sessions, depth 16",
            load: Load::Echo { sessions: 100, size: 64, depth: 16 },
            scale: true,
            ablations: &[],
            tls: false,
            ws: false,
        },
        Workload {
            key: "echo-1k",
            label: "echo 1 KiB, 1,000 sessions, depth 1",
            load: Load::Echo { sessions: 1000, size: 1024, depth: 1 },
            scale: true,
            ablations: &[],
            tls: false,
            ws: false,
        },
        Workload {
            key: "chat-100",
            label: "chat 64 B, 100 sessions",
            load: Load::Chat { sessions: 100, size: 64 },
            scale: true,
            ablations: &[Ablation::Gather, Ablation::GatherAndCoalesce, Ablation::DeferTaskrun],
            tls: false,
            ws: false,
        },
        Workload {
            key: "chat-1000",
            label: "chat 64 B, 1,000 sessions",
            load: Load::Chat { sessions: 1000, size: 64 },
            scale: true,
            ablations: &[Ablation::Gather, Ablation::GatherAndCoalesce],
            tls: false,
            ws: false,
        },
        Workload {
            key: "memory",
            label: "memory: 10,000 echo sessions, 64 B",
            load: Load::Memory { sessions: 10_000, size: 64 },
            scale: false,
            ablations: &[Ablation::BufRing],
            tls: false,
            ws: false,
        },
        Workload {
            key: "churn",
            label: "churn: 2,000-connection waves",
            load: Load::Churn { wave: 2000 },
            scale: false,
            ablations: &[],
            tls: false,
            ws: false,
        },
        // Open loop (issue 16): latency at a fixed rate well below saturation, in one room
        // of 100, and in 10 rooms of 100 (`--rooms 10`: session n in room n mod 10).
        Workload {
            key: "latency-chat-100",
            label: "open-loop chat 64 B, 100 sessions x 20 msg/s, 1 room",
            load: Load::OpenChat { sessions: 100, size: 64, rate: 20, rooms: 1 },
            scale: false,
            ablations: &[Ablation::Gather],
            tls: false,
            ws: false,
        },
        Workload {
            key: "latency-chat-1000-10rooms",
            label: "open-loop chat 64 B, 1,000 sessions x 5 msg/s, 10 rooms of 100",
            load: Load::OpenChat { sessions: 1000, size: 64, rate: 5, rooms: 10 },
            scale: false,
            ablations: &[Ablation::Gather],
            tls: false,
            ws: false,
        },
        // TLS (issue 13): the same loads over TLS, servercore against tokio-rustls.
        Workload {
            key: "tls-echo-64-d1",
            label: "TLS echo 64 B, 100 sessions, depth 1",
            load: Load::Echo { sessions: 100, size: 64, depth: 1 },
            scale: false,
            ablations: &[],
            tls: true,
            ws: false,
        },
        Workload {
            key: "tls-echo-1k",
            label: "TLS echo 1 KiB, 1,000 sessions, depth 1",
            load: Load::Echo { sessions: 1000, size: 1024, depth: 1 },
            scale: false,
            ablations: &[],
            tls: true,
            ws: false,
        },
        Workload {
            key: "tls-chat-100",
            label: "TLS chat 64 B, 100 sessions",
            load: Load::Chat { sessions: 100, size: 64 },
            scale: false,
            ablations: &[],
            tls: true,
            ws: false,
        },
        Workload {
            key: "tls-chat-1000",
            label: "TLS chat 64 B, 1,000 sessions",
            load: Load::Chat { sessions: 1000, size: 64 },
            scale: false,
            ablations: &[],
            tls: true,
            ws: false,
        },
        Workload {
            key: "tls-handshake",
            label: "TLS 1.3 handshakes (ECDSA P-256): 1,000-connection waves",
            load: Load::Handshake { wave: 1000 },
            scale: false,
            ablations: &[],
            tls: true,
            ws: false,
        },
        Workload {
            key: "tls-memory",
            label: "TLS memory: 10,000 echo sessions, 64 B",
            load: Load::Memory { sessions: 10_000, size: 64 },
            scale: false,
            ablations: &[],
            tls: true,
            ws: false,
        },
        // WebSocket (issue 14): servercore's WebSocket listener against tokio-tungstenite.
        Workload {
            key: "ws-echo-64-d1",
            label: "WebSocket echo 64 B, 100 sessions, depth 1",
            load: Load::Echo { sessions: 100, size: 64, depth: 1 },
            scale: false,
            ablations: &[],
            tls: false,
            ws: true,
        },
        Workload {
            key: "ws-chat-100",
            label: "WebSocket chat 64 B, 100 sessions",
            load: Load::Chat { sessions: 100, size: 64 },
            scale: false,
            ablations: &[],
            tls: false,
            ws: true,
        },
        Workload {
            key: "ws-chat-1000",
            label: "WebSocket chat 64 B, 1,000 sessions",
            load: Load::Chat { sessions: 1000, size: 64 },
            scale: false,
            ablations: &[],
            tls: false,
            ws: true,
        },
        Workload {
            key: "ws-memory",
            label: "WebSocket memory: 10,000 echo sessions, 64 B",
            load: Load::Memory { sessions: 10_000, size: 64 },
            scale: false,
            ablations: &[],
            tls: false,
            ws: true,
        },
        // Cluster (issue 15): servercore against itself, 1 node against 2 nodes + NATS.
        Workload {
            key: "cluster-chat",
            label: "cluster chat 64 B, 100 sessions",
            load: Load::Cluster { sessions: 100, size: 64 },
            scale: false,
            ablations: &[],
            tls: false,
            ws: false,
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
    /// The bare io_uring echo loop (`servercore-bench bare-echo`, issue 16): echo only.
    Bare,
    /// Two io_uring chat servers of one worker each on one nats-server (`--cluster`), the
    /// load's sessions alternating between them (the cluster workload).
    Cluster,
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
            Server::Bare => "bare io_uring loop".into(),
            Server::Cluster => "servercore io_uring, 2 nodes + NATS".into(),
        }
    }

    /// The label in a workload's rows: the tokio server of a TLS workload is tokio-rustls,
    /// of a WebSocket workload tokio-tungstenite; the cluster workload's single server is
    /// its 1-node row.
    pub fn label_in(self, w: &Workload) -> String {
        match self {
            Server::Tokio if w.tls => "tokio-rustls".into(),
            Server::Tokio if w.ws => "tokio-tungstenite".into(),
            IO_URING if matches!(w.load, Load::Cluster { .. }) => {
                "servercore io_uring, 1 node".into()
            }
            _ => self.label(),
        }
    }

    /// Cores of the server's own core set (a cluster's three processes share one).
    pub fn workers(self) -> u16 {
        match self {
            Server::Servercore { workers, .. } => workers,
            Server::Baseline | Server::Tokio | Server::Bare | Server::Cluster => 1,
        }
    }
}

pub const IO_URING: Server = Server::Servercore { backend: "io_uring", workers: 1, without: None };
pub const POLL: Server = Server::Servercore { backend: "poll", workers: 1, without: None };
pub const IO_URING_2: Server =
    Server::Servercore { backend: "io_uring", workers: 2, without: None };

/// The servers of workload `w`, in the order of their rounds; `bare`: the bare io_uring
/// loop in the plain echo workloads.
pub fn servers_for(
    w: &Workload,
    scale: bool,
    ablation: bool,
    baseline: bool,
    bare: bool,
) -> Vec<Server> {
    if matches!(w.load, Load::Cluster { .. }) {
        // servercore against itself: one node, then two on NATS.
        return vec![IO_URING, Server::Cluster];
    }
    if matches!(w.load, Load::OpenChat { .. }) {
        // Latency: gathering on (the default) and off, and tokio; nothing else.
        let off =
            Server::Servercore { backend: "io_uring", workers: 1, without: Some(Ablation::Gather) };
        return vec![IO_URING, off, Server::Tokio];
    }
    let mut v = vec![IO_URING, POLL, Server::Tokio];
    if bare && matches!(w.load, Load::Echo { .. }) && !(w.tls || w.ws) {
        v.push(Server::Bare);
    }
    if baseline {
        v.push(Server::Baseline);
    }
    if w.tls || w.ws {
        // TLS and WebSocket rows: no scale or technique rows (none of those switches
        // concerns TLS or WebSocket).
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
    // --no-tls, --no-ws and --no-cluster leave out those workloads, unless --only names
    // them.
    let selected: Vec<Workload> = if args.only.is_empty() {
        selected
            .into_iter()
            .filter(|w| !(args.no_tls && w.tls))
            .filter(|w| !(args.no_ws && w.ws))
            .filter(|w| !(args.no_cluster && matches!(w.load, Load::Cluster { .. })))
            .collect()
    } else {
        selected
    };
    let tls = if selected.iter().any(|w| w.tls) { Some(TlsCert::generate()?) } else { None };
    let env = Env { servercore, baseline, me, logs, cores, secs, quiet_wait, busy_cores, tls };
    let chat_missing = chat_unavailable(&env.servercore);
    let tls_missing = tls_unavailable(&env.servercore);
    let ws_missing = ws_unavailable(&env.servercore);
    let cluster_missing = cluster_unavailable(&env.servercore);
    let rooms_missing = rooms_unavailable(&env.servercore);
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
        let mut servers = servers_for(
            w,
            !args.no_scale,
            !args.no_ablation,
            env.baseline.is_some(),
            !args.no_bare,
        );
        if w.load.is_chat() {
            if let Some(why) = &chat_missing {
                outcomes.push(Outcome::unavailable(w.clone(), why.clone()));
                continue;
            }
        }
        if w.load.rooms() > 1 {
            if let Some(why) = &rooms_missing {
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
        if w.ws {
            if let Some(why) = &ws_missing {
                // The reference alone still tells what the row will compare against.
                eprintln!("[{}] {why}; measuring tokio-tungstenite alone", w.key);
                servers.retain(|&s| s == Server::Tokio);
            }
        }
        if matches!(w.load, Load::Cluster { .. }) {
            if let Some(why) = &cluster_missing {
                outcomes.push(Outcome::unavailable(w.clone(), why.clone()));
                continue;
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
    let (chart, md) = (args.chart_out.as_deref(), args.markdown_out.as_deref());
    header.chart = crate::chart::write(chart, md, &header, &outcomes);
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

/// Why servercore cannot take part in the WebSocket workloads, if it cannot: the servers'
/// `--ws-addr` and the dummy-client's `--ws` (issue 14).
fn ws_unavailable(bin: &Path) -> Option<String> {
    if !help_of(bin, &["echo-server", "--help"]).contains("--ws-addr") {
        return Some("n/a: this servercore has no echo-server --ws-addr".into());
    }
    if !help_of(bin, &["dummy-client", "--help"]).contains("--ws") {
        return Some("n/a: this servercore has no dummy-client --ws".into());
    }
    None
}

/// Why the cluster workload cannot run, if it cannot: chat-server's `--cluster` and a
/// `nats-server` on the PATH (issue 15).
fn cluster_unavailable(bin: &Path) -> Option<String> {
    if !help_of(bin, &["chat-server", "--help"]).contains("--cluster") {
        return Some("n/a: this servercore has no chat-server --cluster".into());
    }
    let nats = Command::new(NATS_SERVER).arg("--version").stdin(Stdio::null()).output();
    if !nats.is_ok_and(|o| o.status.success()) {
        return Some(format!("n/a: {NATS_SERVER} not found on the PATH"));
    }
    None
}

/// Why the multi-room workloads cannot run, if they cannot: chat-server's `--rooms`.
fn rooms_unavailable(bin: &Path) -> Option<String> {
    if !help_of(bin, &["chat-server", "--help"]).contains("--rooms") {
        return Some("n/a: this servercore has no chat-server --rooms".into());
    }
    None
}

/// The standard output of `bin args` (`--help`), empty when it fails.
fn help_of(bin: &Path, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The NATS server of the cluster workload.
const NATS_SERVER: &str = "nats-server";

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

/// A server process; killed when dropped. The cluster workload's server is three: the
/// first node is this one, the second node and nats-server are its `others`.
struct RunningServer {
    child: Child,
    pid: u32,
    /// Where the load connects: the WebSocket listener in a WebSocket workload.
    addr: SocketAddr,
    /// Every address the load connects to, `addr` first (a cluster: one per node).
    load_addrs: Vec<SocketAddr>,
    log: PathBuf,
    /// Processes whose CPU and memory count as the server's too; stopped after this one,
    /// in order.
    others: Vec<RunningServer>,
}

impl RunningServer {
    fn start(env: &Env, w: &Workload, server: Server, cores: &CoreSet) -> Result<Self, String> {
        let chat = w.load.is_chat();
        let tls = if w.tls { Some(env.tls.as_ref().ok_or("no TLS certificate")?) } else { None };
        let ws_args = |c: &mut Command| {
            if w.ws {
                c.args(["--ws-addr", "127.0.0.1:0"]);
            }
        };
        // Both chat servers take `--rooms N` (session n in room n mod N); left out for one
        // room, so that a one-room row runs any build.
        let rooms_args = |c: &mut Command| {
            if chat && w.load.rooms() > 1 {
                c.args(["--rooms", &w.load.rooms().to_string()]);
            }
        };
        let cmd = match server {
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
                ws_args(&mut c);
                rooms_args(&mut c);
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
                ws_args(&mut c);
                rooms_args(&mut c);
                c
            }
            Server::Tokio => {
                let mut c = Command::new(&env.me);
                let name = match (chat, tls.is_some(), w.ws) {
                    (false, false, false) => "tokio-echo",
                    (true, false, false) => "tokio-chat",
                    (false, true, _) => "tokio-tls-echo",
                    (true, true, _) => "tokio-tls-chat",
                    (false, false, true) => "tokio-ws-echo",
                    (true, false, true) => "tokio-ws-chat",
                };
                c.arg0("servercore-bench").arg(name).args(["--addr", "127.0.0.1:0"]);
                tls_server_args(&mut c, tls);
                rooms_args(&mut c);
                c
            }
            Server::Bare => {
                let mut c = Command::new(&env.me);
                c.arg0("servercore-bench").args(["bare-echo", "--addr", "127.0.0.1:0"]);
                c
            }
            Server::Cluster => return Self::start_cluster(env, cores),
        };
        let started = Self::spawn(env, cmd, &server.label_in(w), "server.log", w.ws, cores)?;
        if let Server::Servercore { backend, .. } = server {
            let line = &started.ready_line;
            if !line.contains(&format!("backend: {backend}")) {
                return Err(format!("asked for backend {backend}, server says: {line}"));
            }
        }
        // "listening on ADDR (backend: B, workers: N, tls)"
        if w.tls && !started.ready_line.contains(", tls") {
            return Err(format!("asked for TLS, server says: {}", started.ready_line));
        }
        Ok(started.running)
    }

    /// nats-server, then two 1-worker io_uring chat servers attached to it (`--cluster
    /// nats://.. --node a|b`), all on `cores`; returns once both nodes' links to NATS are
    /// connected.
    fn start_cluster(env: &Env, cores: &CoreSet) -> Result<Self, String> {
        let nats = Self::spawn_nats(env, cores)?;
        let url = format!("nats://{}", nats.addr);
        let mut nodes = Vec::new();
        for (node, log) in [("a", "server.log"), ("b", "server-b.log")] {
            let mut c = Command::new(&env.servercore);
            c.args(["chat-server", "--addr", "127.0.0.1:0", "--workers", "1"])
                .args(["--cluster", &url, "--node", node])
                .env("SERVERCORE_BACKEND", "io_uring");
            for name in SWITCHES {
                c.env_remove(name);
            }
            let label = format!("cluster node {node}");
            let started = Self::spawn(env, c, &label, log, false, cores)?;
            if !started.ready_line.contains("backend: io_uring") {
                return Err(format!("asked for io_uring, {label} says: {}", started.ready_line));
            }
            nodes.push(started.running);
        }
        // Both nodes' links to NATS connected (a node's readiness line is about its
        // listener; its link may come up just after).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let links = procfs::established_on_port(nats.addr.port())
                .map_err(|e| format!("reading TCP socket information: {e}"))?;
            if links >= 2 {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "only {links} of 2 nodes connected to nats-server after 10 s; node a: {}; \
                     node b: {}",
                    nodes[0].log_tail(),
                    nodes[1].log_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let b = nodes.pop().ok_or("no node b")?;
        let mut a = nodes.pop().ok_or("no node a")?;
        a.load_addrs = vec![a.addr, b.addr];
        a.others = vec![b, nats];
        Ok(a)
    }

    /// `nats-server -a 127.0.0.1 -p -1` (a free port), pinned to `cores`; its log (standard
    /// error) goes to `nats.log`; returns once it says it is ready.
    fn spawn_nats(env: &Env, cores: &CoreSet) -> Result<Self, String> {
        let log = env.logs.join("nats.log");
        let mut log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(NATS_SERVER);
        cmd.args(["-a", "127.0.0.1", "-p", "-1"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cores.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {NATS_SERVER}: {e}"))?;
        let pid = child.id();
        let stderr = child.stderr.take().ok_or("no nats-server stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Write as _;
            let mut addr = None;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = writeln!(log_file, "{line}");
                if addr.is_none() {
                    addr = nats_client_addr(&line);
                }
                if line.contains("Server is ready") {
                    if let Some(a) = addr.take() {
                        let _ = tx.send(a);
                    }
                }
            }
        });
        let mut running = RunningServer {
            child,
            pid,
            addr: "0.0.0.0:0".parse().unwrap(),
            load_addrs: Vec::new(),
            log,
            others: Vec::new(),
        };
        running.addr = rx.recv_timeout(Duration::from_secs(15)).map_err(|_| {
            format!("{NATS_SERVER} did not say it is ready; its log: {}", running.log_tail())
        })?;
        Ok(running)
    }

    /// Starts `cmd` (pinned to `cores`, standard error to `log_name`) and waits for its
    /// readiness line: the WebSocket listener's with `ws`, else the first.
    fn spawn(
        env: &Env,
        mut cmd: Command,
        label: &str,
        log_name: &str,
        ws: bool,
        cores: &CoreSet,
    ) -> Result<Started, String> {
        let log = env.logs.join(log_name);
        let log_file =
            File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
        cores.apply(&mut cmd);
        let mut child = cmd.spawn().map_err(|e| format!("cannot start {label}: {e}"))?;
        let pid = child.id();
        let stdout = child.stdout.take().ok_or("no server stdout")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Every readiness line (one per listener), then nothing: the rest is drained.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("listening on ") {
                    let _ = tx.send(line);
                }
            }
        });
        let mut running = RunningServer {
            child,
            pid,
            addr: "0.0.0.0:0".parse().unwrap(),
            load_addrs: Vec::new(),
            log,
            others: Vec::new(),
        };
        // "listening on 127.0.0.1:PORT (backend: B, workers: N[, tls][, websocket])"
        let deadline = Instant::now() + Duration::from_secs(15);
        let line = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = rx.recv_timeout(left) else {
                return Err(format!(
                    "{label} printed no {}readiness line; its log: {}",
                    if ws { "WebSocket " } else { "" },
                    running.log_tail()
                ));
            };
            if line.trim_end().ends_with("websocket)") == ws {
                break line;
            }
        };
        let addr_text = line["listening on ".len()..].split_whitespace().next().unwrap_or("");
        running.addr = addr_text
            .parse()
            .map_err(|e| format!("bad address in readiness line {line:?}: {e}"))?;
        running.load_addrs = vec![running.addr];
        Ok(Started { running, ready_line: line })
    }

    /// CPU seconds so far of each process: this one first, then `others`.
    fn cpu_secs_each(&self) -> Result<Vec<f64>, String> {
        let mut v = vec![cpu_secs(self.pid)?];
        for o in &self.others {
            v.push(cpu_secs(o.pid)?);
        }
        Ok(v)
    }

    /// CPU seconds so far, all processes together.
    fn cpu_secs(&self) -> Result<f64, String> {
        Ok(self.cpu_secs_each()?.iter().sum())
    }

    /// Memory of all processes together.
    fn memory(&self) -> Result<procfs::Memory, String> {
        let mut m = memory(self.pid)?;
        for o in &self.others {
            let n = memory(o.pid)?;
            m.rss_kib += n.rss_kib;
            m.hwm_kib += n.hwm_kib;
        }
        Ok(m)
    }

    fn log_tail(&self) -> String {
        let mut t = tail(&self.log);
        for o in &self.others {
            let name = o.log.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
            t = format!("{t}; {name}: {}", tail(&o.log));
        }
        t
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

/// A server just started, with its readiness line.
struct Started {
    running: RunningServer,
    ready_line: String,
}

/// The client address in nats-server's line "Listening for client connections on
/// 127.0.0.1:PORT".
fn nats_client_addr(line: &str) -> Option<SocketAddr> {
    const SAYS: &str = "Listening for client connections on ";
    let at = line.find(SAYS)? + SAYS.len();
    line[at..].split_whitespace().next()?.parse().ok()
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

/// Seconds a TLS or WebSocket round's dummy-client runs beyond `secs`: the driver sees the
/// sessions done with their handshakes a little after the client starts its window (see
/// `dummy_round`).
const TLS_EXTRA_SECS: f64 = 1.0;

/// Probe messages per second in the cluster workload's rounds (all probe sessions
/// together): some hundred samples per second, while adding well under 1% to the
/// deliveries.
pub const PROBE_RATE: f64 = 200.0;

/// Most messages in flight per session in the open-loop rows: far above what 20 msg/s at
/// millisecond latencies needs, so that the rate alone sets the pace.
const OPEN_LOOP_DEPTH: u32 = 16;

/// Echo, chat, memory and cluster rounds: `servercore dummy-client` is the load.
///
/// The server's CPU time is sampled inside the client's measurement window (which starts
/// once every session is connected and lasts `secs`), leaving a margin at both ends, so that
/// connecting and closing the sessions is not charged to the messages.
///
/// Over TLS a session is connected once its handshake is done, which for thousands of
/// sessions takes a while after their TCP connections are established; the window then
/// starts once every session on the server's port has received data segments past its
/// handshake (`procfs::established_and_past_segs_on_port`), and the client runs
/// `TLS_EXTRA_SECS` longer so that its own window still covers the driver's. The same for
/// WebSocket, whose upgrade request is the first data segment.
///
/// Cluster workload: the dummy-client gets every node's address (sessions alternate
/// between them), the server's CPU is that of all its processes, and the latency probe
/// (`servercore-bench cluster-probe`, on the load's core) runs through the window.
fn dummy_round(
    env: &Env,
    srv: &RunningServer,
    w: &Workload,
    cores: &CoreSet,
) -> Result<Sample, String> {
    let load = w.load;
    let base = srv.memory()?;
    let (mode, sessions, size, depth) = match load {
        Load::Echo { sessions, size, depth } => ("echo", sessions, size, depth),
        Load::Chat { sessions, size } | Load::Cluster { sessions, size } => {
            ("chat", sessions, size, 1)
        }
        // Open loop: `OPEN_LOOP_DEPTH` in flight at most, so that the rate, not the replies,
        // sets the pace.
        Load::OpenChat { sessions, size, .. } => ("chat", sessions, size, OPEN_LOOP_DEPTH),
        Load::Memory { sessions, size } => ("echo", sessions, size, 1),
        Load::Churn { .. } | Load::Handshake { .. } => unreachable!("churn has its own round"),
    };
    let tls = if w.tls { Some(env.tls.as_ref().ok_or("no TLS certificate")?) } else { None };
    let handshakes = tls.is_some() || w.ws;
    let client_secs = if handshakes { env.secs + TLS_EXTRA_SECS } else { env.secs };
    let mut cmd = Command::new(&env.servercore);
    cmd.arg("dummy-client");
    for addr in &srv.load_addrs {
        cmd.args(["--addr", &addr.to_string()]);
    }
    cmd.args(["--mode", mode])
        .args(["--sessions", &sessions.to_string(), "--size", &size.to_string()])
        .args(["--secs", &client_secs.to_string(), "--json", "--workers", "1"])
        .args(["--depth", &depth.to_string()])
        .env_remove("SERVERCORE_BACKEND");
    if let Some(t) = tls {
        cmd.arg("--tls").arg("--tls-ca").arg(&t.cert);
        cmd.args(["--tls-server-name", TlsCert::NAME]);
    }
    if w.ws {
        cmd.arg("--ws");
    }
    if let Load::OpenChat { rate, .. } = load {
        cmd.args(["--rate", &rate.to_string()]);
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

    // Wait until every session is established on the server's ports (over TLS: and has
    // received data segments past its handshake; over WebSocket: past its upgrade request).
    let mut ports: Vec<u16> = srv.load_addrs.iter().map(|a| a.port()).collect();
    ports.dedup();
    let past_segs = if tls.is_some() { 3 } else { 2 };
    let poll = if sessions > 2000 { 50 } else { 5 };
    let connect_deadline = Instant::now() + Duration::from_secs(30);
    let t_conn = loop {
        if let Ok(Some(status)) = client.try_wait() {
            return Err(format!("dummy-client exited early ({status}): {}", tail(&log)));
        }
        let mut n = 0;
        for &port in &ports {
            n += if handshakes {
                procfs::established_and_past_segs_on_port(port, past_segs)
                    .map_err(|e| format!("reading TCP socket information (sock_diag): {e}"))?
                    .1
            } else {
                procfs::established_on_port(port)
                    .map_err(|e| format!("reading /proc/net/tcp: {e}"))?
            };
        }
        if n >= sessions as usize {
            break Instant::now();
        }
        if Instant::now() > connect_deadline {
            let _ = client.kill();
            let _ = client.wait();
            let what = match (tls.is_some(), w.ws) {
                (true, _) => "past their TLS handshake",
                (false, true) => "past their WebSocket upgrade",
                (false, false) => "connected",
            };
            return Err(format!("only {n} of {sessions} sessions {what} after 30 s"));
        }
        std::thread::sleep(Duration::from_millis(poll));
    };
    let probe = match load {
        Load::Cluster { .. } => Some(start_probe(env, srv, cores)?),
        _ => None,
    };
    let margin = Duration::from_secs_f64((env.secs * 0.1).clamp(0.05, 0.5));
    let window_end = t_conn + Duration::from_secs_f64(env.secs) - margin;
    let client_pid = client.id();
    let probe_pid = probe.as_ref().map(|p| p.child.id());
    // The load's CPU: the dummy-client's, and the probe's.
    let load_cpu = || process_cpu_secs(client_pid) + probe_pid.map_or(0.0, process_cpu_secs);
    sleep_until(t_conn + margin);
    let (c0, w0) = (srv.cpu_secs_each()?, Instant::now());
    let others0 = Others::sample(load_cpu());
    sleep_until(window_end);
    let (c1, w1) = (srv.cpu_secs_each()?, Instant::now());
    let others1 = Others::sample(load_cpu());
    let loaded = srv.memory()?;
    let probe = match probe {
        Some(p) => Some(finish_probe(p)?),
        None => None,
    };
    let out = client.wait_with_output().map_err(|e| format!("waiting for dummy-client: {e}"))?;
    let peak = srv.memory()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Err(format!("dummy-client ({}) printed no JSON: {}", out.status, tail(&log)));
    };
    if tls.is_some() && json::object(line, "tls").is_none() {
        return Err(format!("dummy-client reported no \"tls\" object: {line}"));
    }
    if w.ws && json::object(line, "websocket").is_none() {
        return Err(format!("dummy-client reported no \"websocket\" object: {line}"));
    }
    let num = |k: &str| json::number(line, k);
    // A chat client's messages are deliveries (every S_CHAT received); prefer the explicit
    // field if the client has one.
    let mut rate = num("deliveries_per_sec")
        .or_else(|| num("msgs_per_sec"))
        .ok_or_else(|| format!("no msgs_per_sec in {line}"))?;
    let wall = (w1 - w0).as_secs_f64().max(1e-9);
    let parts: Vec<f64> = c1.iter().zip(&c0).map(|(b, a)| (b - a) / wall).collect();
    let server_cpu_rate: f64 = parts.iter().sum();
    let rss_per_session = matches!(load, Load::Memory { .. })
        .then(|| loaded.rss_kib.saturating_sub(base.rss_kib) as f64 / sessions as f64);
    let mut errors = num("errors").unwrap_or(0.0) as u64;
    let mut first_error = json::string(line, "first_error");
    if let Some(p) = &probe {
        // The server's deliveries besides the dummy-client's: what the probe's sessions
        // received, and the probe's messages to every dummy session (which the dummy-client
        // counts as foreign, not as deliveries).
        rate += p.received_per_sec + p.sent_per_sec * f64::from(sessions);
        if p.errors > 0 {
            errors += p.errors;
            if first_error.is_none() {
                first_error = Some(format!("probe: {}", p.first_error.as_deref().unwrap_or("?")));
            }
        }
    }
    Ok(Sample {
        rate,
        p50_us: num("p50_us").unwrap_or(f64::NAN),
        p99_us: num("p99_us").unwrap_or(f64::NAN),
        // The dummy-client's JSON has no p99.9 yet: NaN ("-") until it has.
        p999_us: num("p999_us").or_else(|| num("p99_9_us")).unwrap_or(f64::NAN),
        cpu_per_unit_us: if rate > 0.0 { server_cpu_rate / rate * 1e6 } else { f64::NAN },
        server_cpu_util: server_cpu_rate,
        server_cpu_parts: parts,
        load_cpu_util: (others1.client - others0.client) / wall,
        peak_rss_kib: peak.hwm_kib,
        rss_per_session_kib: rss_per_session,
        errors,
        first_error,
        client_backend: json::string(line, "backend"),
        besides: others1.since(&others0, c1.iter().sum::<f64>() - c0.iter().sum::<f64>(), wall),
        probe: probe.map(|p| p.latency),
    })
}

/// The latency probe of a cluster round, running.
struct RunningProbe {
    child: Child,
    log: PathBuf,
}

/// What a cluster round's probe measured.
struct ProbeOutcome {
    latency: ProbeLatency,
    sent_per_sec: f64,
    received_per_sec: f64,
    errors: u64,
    first_error: Option<String>,
}

/// `servercore-bench cluster-probe` with one session per node (the single server's
/// address twice), on the load's core, for the round's `secs`.
fn start_probe(env: &Env, srv: &RunningServer, cores: &CoreSet) -> Result<RunningProbe, String> {
    let mut cmd = Command::new(&env.me);
    cmd.arg0("servercore-bench").arg("cluster-probe");
    let addrs =
        if srv.load_addrs.len() >= 2 { srv.load_addrs.clone() } else { vec![srv.addr, srv.addr] };
    for a in &addrs {
        cmd.args(["--addr", &a.to_string()]);
    }
    cmd.args(["--rate", &PROBE_RATE.to_string(), "--secs", &env.secs.to_string()]);
    let log = env.logs.join("probe.log");
    let log_file =
        File::create(&log).map_err(|e| format!("cannot create {}: {e}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(log_file);
    cores.apply(&mut cmd);
    let child = cmd.spawn().map_err(|e| format!("cannot start cluster-probe: {e}"))?;
    Ok(RunningProbe { child, log })
}

fn finish_probe(p: RunningProbe) -> Result<ProbeOutcome, String> {
    let out = p.child.wait_with_output().map_err(|e| format!("waiting for cluster-probe: {e}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().rev().find(|l| l.trim_start().starts_with('{')) else {
        return Err(format!("cluster-probe ({}) printed no JSON: {}", out.status, tail(&p.log)));
    };
    let num = |k: &str| json::number(line, k);
    let part = |k: &str, q: &str| json::object(line, k).and_then(|o| json::number(o, q));
    Ok(ProbeOutcome {
        latency: ProbeLatency {
            local_p50_us: part("local", "p50_us").unwrap_or(f64::NAN),
            local_p99_us: part("local", "p99_us").unwrap_or(f64::NAN),
            cross_p50_us: part("cross", "p50_us").unwrap_or(f64::NAN),
            cross_p99_us: part("cross", "p99_us").unwrap_or(f64::NAN),
        },
        sent_per_sec: num("sent_per_sec").unwrap_or(0.0),
        received_per_sec: num("received_per_sec").unwrap_or(0.0),
        errors: num("errors").unwrap_or(0.0) as u64,
        first_error: json::string(line, "first_error"),
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
    let (c0, w0) = (srv.cpu_secs()?, Instant::now());
    let out = cmd.output().map_err(|e| format!("cannot run churn-client: {e}"))?;
    let (c1, w1) = (srv.cpu_secs()?, Instant::now());
    let others1 = Others::sample(sys::reaped_children_cpu_secs());
    let besides = others1.since(&others0, c1 - c0, (w1 - w0).as_secs_f64());
    let peak = srv.memory()?;
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
        p999_us: f64::NAN,
        cpu_per_unit_us: if cycles > 0.0 { (c1 - c0) / cycles * 1e6 } else { f64::NAN },
        server_cpu_util: (c1 - c0) / (w1 - w0).as_secs_f64().max(1e-9),
        server_cpu_parts: Vec::new(),
        load_cpu_util: (others1.client - others0.client) / (w1 - w0).as_secs_f64().max(1e-9),
        peak_rss_kib: peak.hwm_kib,
        rss_per_session_kib: None,
        errors: num("errors").unwrap_or(0.0) as u64,
        first_error: json::string(line, "first_error"),
        client_backend: None,
        besides,
        probe: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_readiness() {
        let line = "[4242] 2026/11/30 08:00:00.000000 [INF] Listening for client connections on \
                    127.0.0.1:41234";
        assert_eq!(nats_client_addr(line), Some("127.0.0.1:41234".parse().unwrap()));
        assert_eq!(nats_client_addr("[4242] [INF] Server is ready"), None);
    }

    #[test]
    fn new_workloads_and_their_servers() {
        let all = workloads();
        let get = |k: &str| all.iter().find(|w| w.key == k).unwrap();
        for k in ["ws-echo-64-d1", "ws-chat-100", "ws-chat-1000", "ws-memory"] {
            let w = get(k);
            assert!(w.ws && !w.tls, "{k}");
            assert_eq!(
                servers_for(w, true, true, false, true),
                vec![IO_URING, POLL, Server::Tokio]
            );
            assert_eq!(Server::Tokio.label_in(w), "tokio-tungstenite");
        }
        let c = get("cluster-chat");
        assert!(c.load.is_chat() && !c.ws && !c.tls);
        assert_eq!(servers_for(c, true, true, true, true), vec![IO_URING, Server::Cluster]);
        assert_eq!(IO_URING.label_in(c), "servercore io_uring, 1 node");
        // The plain and TLS rows keep their servers.
        assert_eq!(servers_for(get("tls-chat-100"), true, true, false, true).len(), 3);
        // The bare loop: in the plain echo workloads only, after tokio; --no-bare drops it.
        for k in ["echo-64-d1", "echo-64-d16", "echo-1k"] {
            let v = servers_for(get(k), false, false, false, true);
            assert_eq!(v, vec![IO_URING, POLL, Server::Tokio, Server::Bare], "{k}");
            assert!(!servers_for(get(k), true, true, true, false).contains(&Server::Bare));
        }
        for k in ["chat-100", "memory", "tls-echo-64-d1", "ws-echo-64-d1"] {
            assert!(!servers_for(get(k), true, true, true, true).contains(&Server::Bare), "{k}");
        }
        // Open loop: gathering on and off, and tokio; in one room, and in 10 rooms of 100.
        let off =
            Server::Servercore { backend: "io_uring", workers: 1, without: Some(Ablation::Gather) };
        for (k, sessions, rooms) in
            [("latency-chat-100", 100, 1), ("latency-chat-1000-10rooms", 1000, 10)]
        {
            let l = get(k);
            assert!(l.load.is_chat() && !l.tls && !l.ws, "{k}");
            assert!(matches!(l.load, Load::OpenChat { sessions: s, .. } if s == sessions), "{k}");
            assert_eq!(l.load.rooms(), rooms, "{k}");
            assert_eq!(
                servers_for(l, true, true, true, true),
                vec![IO_URING, off, Server::Tokio],
                "{k}"
            );
        }
        assert!(matches!(
            get("latency-chat-1000-10rooms").load,
            Load::OpenChat { sessions: 1000, rate: 5, rooms: 10, .. }
        ));
        assert_eq!(get("chat-1000").load.rooms(), 1);
        assert_eq!(Server::Tokio.label_in(get("chat-100")), "tokio");
        let mut keys: Vec<&str> = all.iter().map(|w| w.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), all.len(), "workload keys are unique");
    }
}
