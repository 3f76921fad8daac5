//! Rooms that span servers, with a real `nats-server`: two and three nodes share a room
//! (every message once, per-sender order), NATS killed and restarted mid-run (local
//! delivery never stops, the cluster resumes, drops are counted), a node gone, NATS
//! unreachable at start, and a direct send across nodes.

mod common;

use common::nats::Nats;
use common::{any_port, wait_until, Checks, TIMEOUT};
use servercore::cluster::{Cluster, ClusterAddr, ClusterConfig};
use servercore::{Ctx, DisconnectReason, Room, ServerService, Session};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

/// A chat session on 8-byte records (sender u32, seq u32): each one received is broadcast
/// to the room. What it checks goes to `checks`, asserted when its node stops.
struct Member {
    room: Room,
    checks: Checks,
}

impl Session for Member {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.checks.check(ctx.enter_room(&self.room), "the cluster room takes a member");
    }
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let whole = data.len() / 8 * 8;
        for rec in data[..whole].chunks(8) {
            let _ = ctx.broadcast_room(&self.room, rec.to_vec());
        }
        whole
    }
    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.checks.disconnected(reason);
    }
}

struct Node {
    cluster: Cluster,
    server: ServerService,
    room: Room,
    checks: Checks,
}

fn node(url: &str, name: &str) -> Node {
    let cluster = Cluster::start(ClusterConfig::new(url, name)).unwrap();
    let room = cluster.room("chat").unwrap();
    let r = room.clone();
    let checks = Checks::new();
    let c = checks.clone();
    let server = ServerService::builder(any_port())
        .workers(2)
        .start(move || Member { room: r.clone(), checks: c.clone() })
        .unwrap();
    Node { cluster, server, room, checks }
}

fn wait_up(nodes: &[&Node]) {
    wait_until("every link up", || {
        let down: Vec<&str> =
            nodes.iter().filter(|n| !n.cluster.is_up()).map(|n| n.cluster.node()).collect();
        if down.is_empty() {
            Ok(())
        } else {
            Err(format!("down: {down:?}"))
        }
    });
}

/// A client of one node: sends records, reads what arrives into per-sender sequences.
struct Client {
    tcp: TcpStream,
    buf: Vec<u8>,
    got: HashMap<u32, Vec<u32>>,
}

impl Client {
    fn connect(n: &Node) -> Client {
        let tcp = TcpStream::connect(n.server.local_addr()).unwrap();
        tcp.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        Client { tcp, buf: Vec::new(), got: HashMap::new() }
    }

    fn send(&mut self, sender: u32, seq: u32) {
        let mut rec = sender.to_le_bytes().to_vec();
        rec.extend_from_slice(&seq.to_le_bytes());
        self.tcp.write_all(&rec).unwrap();
    }

    /// Reads what is there (up to a short read timeout).
    fn pump(&mut self) {
        let mut chunk = [0u8; 65536];
        match self.tcp.read(&mut chunk) {
            Ok(0) => panic!("server closed"),
            Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            Err(_) => return,
        }
        let whole = self.buf.len() / 8 * 8;
        for rec in self.buf[..whole].chunks(8) {
            let sender = u32::from_le_bytes(rec[..4].try_into().unwrap());
            let seq = u32::from_le_bytes(rec[4..].try_into().unwrap());
            self.got.entry(sender).or_default().push(seq);
        }
        self.buf.drain(..whole);
    }

    fn count(&self, sender: u32) -> usize {
        self.got.get(&sender).map_or(0, Vec::len)
    }
}

/// Every client gets messages `from..to` of each sender, in order, none twice.
fn check_all(clients: &mut [&mut Client], senders: &[u32], to: u32) {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        for c in clients.iter_mut() {
            c.pump();
        }
        if clients.iter().all(|c| senders.iter().all(|s| c.count(*s) >= to as usize)) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let counts: Vec<Vec<(u32, usize)>> = clients
                .iter()
                .map(|c| senders.iter().map(|s| (*s, c.count(*s))).collect())
                .collect();
            panic!("not every message arrived in time: {counts:?}");
        }
    }
    for c in clients.iter() {
        for s in senders {
            let want: Vec<u32> = (0..to).collect();
            assert_eq!(c.got[s], want, "sender {s}: once each, in order");
        }
    }
}

/// Stops the node, then asserts what its sessions checked (every callback has run).
fn stop(n: Node) {
    n.server.shutdown(Duration::from_secs(5)).unwrap();
    n.cluster.shutdown(Duration::from_secs(5)).unwrap();
    n.checks.assert_ok();
}

/// The room enters are asynchronous: before a run, each node's room holds its clients.
fn settle(members: &[(&Node, usize)]) {
    wait_until("every client in its node's room", || {
        let have: Vec<usize> = members.iter().map(|(n, _)| n.room.len()).collect();
        let want: Vec<usize> = members.iter().map(|(_, k)| *k).collect();
        if have == want {
            Ok(())
        } else {
            Err(format!("{have:?} of {want:?}"))
        }
    });
}

#[test]
fn three_nodes_share_a_room_once_and_in_order() {
    let nats = Nats::start(None);
    let nodes: Vec<Node> = ["a", "b", "c"].iter().map(|n| node(&nats.url(), n)).collect();
    wait_up(&nodes.iter().collect::<Vec<_>>());
    // Two clients per node; the first of each sends.
    let mut clients: Vec<Client> =
        nodes.iter().flat_map(|n| [Client::connect(n), Client::connect(n)]).collect();
    settle(&nodes.iter().map(|n| (n, 2)).collect::<Vec<_>>());
    let mut refs: Vec<&mut Client> = clients.iter_mut().collect();
    let n = 500;
    let senders = [1u32, 2, 3];
    for seq in 0..n {
        for (k, s) in senders.iter().enumerate() {
            refs[k * 2].send(*s, seq);
        }
    }
    check_all(&mut refs, &senders, n);
    for node in &nodes {
        let st = node.cluster.stats();
        assert!(st.link_up && st.dropped == 0, "{st:?}");
        // Its sender's messages, each published once; the others' received (gathered into
        // fewer NATS messages under load).
        assert_eq!(st.published, u64::from(n), "{st:?}");
        assert!(st.received > 0 && st.received <= 2 * u64::from(n), "{st:?}");
    }
    nodes.into_iter().for_each(stop);
}

#[test]
fn nats_killed_and_restarted_local_delivery_never_stops() {
    let nats = Nats::start(None);
    let url = nats.url();
    let a = node(&url, "a");
    let b = node(&url, "b");
    wait_up(&[&a, &b]);
    let (mut a1, mut a2, mut b1) = (Client::connect(&a), Client::connect(&a), Client::connect(&b));
    settle(&[(&a, 2), (&b, 1)]);

    let port = nats.kill();
    wait_until("both links see NATS gone", || {
        if a.cluster.is_up() || b.cluster.is_up() {
            Err("still up".into())
        } else {
            Ok(())
        }
    });
    // Local delivery goes on; what would cross is dropped and counted.
    for seq in 0..100 {
        a1.send(5, seq);
    }
    check_all(&mut [&mut a1, &mut a2], &[5], 100);
    assert!(a.cluster.stats().dropped >= 100, "{:?}", a.cluster.stats());

    // NATS back on the same port: the links reconnect and subscribe again.
    let nats = Nats::start(Some(port));
    wait_up(&[&a, &b]);
    let (mut b2, mut a3) = (Client::connect(&b), Client::connect(&a));
    settle(&[(&a, 3), (&b, 2)]);
    for seq in 0..200 {
        a1.send(6, seq);
        b1.send(8, seq);
    }
    check_all(&mut [&mut a1, &mut a2, &mut b1, &mut b2, &mut a3], &[6, 8], 200);
    // Nothing sent while NATS was down reached the other node.
    assert_eq!(b1.count(5), 0);
    assert!(a.cluster.stats().connects >= 2);
    stop(a);
    stop(b);
    drop(nats);
}

#[test]
fn a_node_gone_the_others_carry_on_and_unreachable_nats_still_starts() {
    let nats = Nats::start(None);
    let a = node(&nats.url(), "a");
    let b = node(&nats.url(), "b");
    let c = node(&nats.url(), "c");
    wait_up(&[&a, &b, &c]);
    let (mut ca, mut cb, cc) = (Client::connect(&a), Client::connect(&b), Client::connect(&c));
    settle(&[(&a, 1), (&b, 1), (&c, 1)]);
    drop(cc);
    stop(c);
    for seq in 0..100 {
        ca.send(1, seq);
        cb.send(2, seq);
    }
    check_all(&mut [&mut ca, &mut cb], &[1, 2], 100);

    // A NATS nobody answers: the node starts and serves its local room.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", dead.local_addr().unwrap());
    drop(dead);
    let lone = node(&url, "lone");
    let (mut l1, mut l2) = (Client::connect(&lone), Client::connect(&lone));
    settle(&[(&lone, 2)]);
    for seq in 0..50 {
        l1.send(3, seq);
    }
    check_all(&mut [&mut l1, &mut l2], &[3], 50);
    let st = lone.cluster.stats();
    assert!(!st.link_up && st.dropped >= 50, "{st:?}");
    stop(lone);
    stop(a);
    stop(b);
}

/// Tells the test its cluster address, and delivers direct messages like room ones.
struct Whisper {
    cluster_addr: mpsc::Sender<ClusterAddr>,
    cluster: std::sync::Arc<Cluster>,
}

impl Session for Whisper {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.cluster_addr.send(self.cluster.address(&ctx.handle()));
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

#[test]
fn a_direct_send_reaches_a_session_on_another_node() {
    let nats = Nats::start(None);
    let a = std::sync::Arc::new(Cluster::start(ClusterConfig::new(&nats.url(), "a")).unwrap());
    let b = Cluster::start(ClusterConfig::new(&nats.url(), "b")).unwrap();
    let (tx, rx) = mpsc::channel();
    let cluster = a.clone();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || Whisper { cluster_addr: tx.clone(), cluster: cluster.clone() })
        .unwrap();
    wait_until("links up", || if a.is_up() && b.is_up() { Ok(()) } else { Err("down".into()) });
    let mut player = TcpStream::connect(server.local_addr()).unwrap();
    player.set_read_timeout(Some(TIMEOUT)).unwrap();
    let addr = rx.recv_timeout(TIMEOUT).unwrap();
    assert_eq!(addr.node, "a");
    b.send_to(&addr, &b"psst from b"[..]).unwrap();
    let mut got = [0u8; 11];
    player.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"psst from b");
    server.shutdown(Duration::from_secs(5)).unwrap();
    b.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_nats_that_stops_answering_ping_is_left_and_tried_again() {
    // A fake NATS: accepts, reads, never answers. The link sends PING every 100 ms; after
    // two unanswered ones it drops the connection and reconnects.
    let fake = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", fake.local_addr().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for conn in fake.incoming().flatten() {
            let tx = tx.clone();
            std::thread::spawn(move || {
                let _ = tx.send(());
                let mut conn = conn;
                let mut sink = [0u8; 4096];
                while matches!(conn.read(&mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    let mut config = ClusterConfig::new(&url, "a");
    config.ping_interval = Duration::from_millis(100);
    let cluster = Cluster::start(config).unwrap();
    for _ in 0..2 {
        rx.recv_timeout(TIMEOUT).expect("the link connects (again)");
    }
    assert!(!cluster.is_up(), "never up: NATS never answered");
    cluster.shutdown(Duration::from_secs(5)).unwrap();
}
