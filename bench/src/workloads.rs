//! The workload catalogue: what each workload's load does, and which servers its rows
//! measure (with their labels and the techniques a row switches off).

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

    pub(crate) fn env(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Ablation::Gather => &[],
            Ablation::GatherAndCoalesce => &[("SERVERCORE_NO_ROOM_COALESCE", "1")],
            Ablation::DeferTaskrun => &[("SERVERCORE_URING_NO_DEFER_TASKRUN", "1")],
            Ablation::BufRing => &[("SERVERCORE_URING_NO_BUFRING", "1")],
        }
    }

    /// Extra arguments for the server (chat-server only takes the gathering one).
    pub(crate) fn args(self, chat: bool) -> &'static [&'static str] {
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

/// Probe messages per second in the cluster workload's rounds (all probe sessions
/// together): some hundred samples per second, while adding well under 1% to the
/// deliveries.
pub const PROBE_RATE: f64 = 200.0;

#[cfg(test)]
mod tests {
    use super::*;

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
