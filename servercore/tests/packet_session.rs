//! `Framed<PacketSession>` over real connections: packets split in every way arrive whole;
//! bad headers cost only their own session, with a protocol error naming the bad value;
//! `Handlers` dispatch by id with the unknown-id policy and handler errors; and after all of
//! it the server keeps serving without spinning.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! with `common::TIMEOUT` as the safety net.

mod common;

use bytes::Buf;
use common::{any_port, connect, read_to_end, seed, wait_until, End, Rng, TIMEOUT};
use servercore::packet::{
    encode, encode_into, Framed, HandlerResult, Handlers, Packet, PacketSession, PacketWriter,
    UnknownPacket, DEFAULT_MAX_PACKET_SIZE, HEADER_LEN,
};
use servercore::{
    Ctx, DisconnectReason, SendBuffer, ServerService, ServiceRef, Session, SessionHandle, SessionId,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

// ----- a probing session and its event log ---------------------------------------------

#[derive(Debug, Clone)]
enum PEv {
    Connected(SessionHandle),
    /// Bytes this session has received in all, after an `on_recv`.
    Read(usize),
    Packet(u16, Vec<u8>),
    Disconnected(DisconnectReason),
}

/// Wraps a `Framed` session: reports every packet session event, and how many bytes have
/// arrived in all after each `on_recv` (so a test can wait until the server has read a
/// prefix before it writes the rest: a real split read).
struct Probe<P> {
    framed: Framed<P>,
    tx: Sender<(SessionId, PEv)>,
    /// Bytes the previous `on_recv` left unconsumed (presented again in front).
    leftover: usize,
    total: usize,
}

impl<P: PacketSession> Session for Probe<P> {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send((ctx.id(), PEv::Connected(ctx.handle())));
        self.framed.on_connected(ctx);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        self.total += data.len() - self.leftover;
        let _ = self.tx.send((ctx.id(), PEv::Read(self.total)));
        let used = self.framed.on_recv(ctx, data);
        self.leftover = data.len() - used;
        used
    }

    fn on_send(&mut self, ctx: &mut Ctx<'_>, bytes: usize) {
        self.framed.on_send(ctx, bytes);
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.framed.on_disconnected(ctx, reason);
        let _ = self.tx.send((ctx.id(), PEv::Disconnected(reason.clone())));
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        self.framed.on_timer(ctx, token);
    }
}

/// A server's events, kept in order.
struct Log {
    rx: Receiver<(SessionId, PEv)>,
    seen: Vec<(SessionId, PEv)>,
}

impl Log {
    /// Waits for an event that `pred` accepts (maybe already seen); returns it.
    fn wait(&mut self, what: &str, mut pred: impl FnMut(SessionId, &PEv) -> bool) -> PEv {
        if let Some(e) = self.seen.iter().find(|e| pred(e.0, &e.1)) {
            return e.1.clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.rx.recv_timeout(left).unwrap_or_else(|err| {
                let tail: Vec<_> = self.seen.iter().rev().take(20).collect();
                panic!("{err} waiting for {what}; last events (newest first): {tail:#?}")
            });
            let hit = pred(e.0, &e.1);
            self.seen.push(e.clone());
            if hit {
                return e.1;
            }
        }
    }

    /// The next session to connect (one not returned before).
    fn next_connected(&mut self, known: &mut Vec<SessionId>) -> SessionHandle {
        let e = self
            .wait("on_connected", |id, e| matches!(e, PEv::Connected(_)) && !known.contains(&id));
        let PEv::Connected(h) = e else { unreachable!() };
        known.push(h.id());
        h
    }

    /// Waits until session `id` has received `n` bytes in all.
    fn wait_read(&mut self, id: SessionId, n: usize) {
        self.wait(&format!("{id} to have read {n} bytes"), |i, e| {
            i == id && matches!(e, PEv::Read(t) if *t >= n)
        });
    }

    fn disconnected(&mut self, id: SessionId) -> DisconnectReason {
        let e = self.wait(&format!("on_disconnected of {id}"), |i, e| {
            i == id && matches!(e, PEv::Disconnected(_))
        });
        let PEv::Disconnected(r) = e else { unreachable!() };
        r
    }

    /// Packets `id` delivered so far (takes what is queued first).
    fn packets(&mut self, id: SessionId) -> Vec<(u16, Vec<u8>)> {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
        self.seen
            .iter()
            .filter(|e| e.0 == id)
            .filter_map(|e| match &e.1 {
                PEv::Packet(pid, p) => Some((*pid, p.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Starts a server whose sessions are `Probe`s around `make()`, framed with `max`.
fn probe_server<P: PacketSession>(
    workers: usize,
    max: usize,
    make: impl Fn(Sender<(SessionId, PEv)>) -> P + Send + Sync + 'static,
) -> (ServerService, Log) {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(workers)
        .start(move || Probe {
            framed: Framed::with_max_packet_size(make(tx.clone()), max),
            tx: tx.clone(),
            leftover: 0,
            total: 0,
        })
        .unwrap();
    (server, Log { rx, seen: Vec::new() })
}

/// Reports each packet and sends it back unchanged (re-encoded through a `PacketWriter`).
struct Echo {
    tx: Sender<(SessionId, PEv)>,
}

impl PacketSession for Echo {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, p: Packet<'_>) {
        let _ = self.tx.send((ctx.id(), PEv::Packet(p.id, p.payload.to_vec())));
        let _ = ctx.send(packet(p.id, p.payload));
    }
}

// ----- helpers -------------------------------------------------------------------------

fn packet(id: u16, payload: &[u8]) -> SendBuffer {
    let mut w = PacketWriter::with_capacity(id, payload.len());
    w.put_slice(payload);
    w.finish().expect("fits")
}

type Owned = (u16, Vec<u8>);

fn wire_of(packets: &[Owned]) -> Vec<u8> {
    let mut out = Vec::new();
    for (id, payload) in packets {
        encode_into(&mut out, *id, payload).unwrap();
    }
    out
}

fn sample() -> Vec<Owned> {
    vec![
        (1, b"hello".to_vec()),
        (0xFFFF, Vec::new()),
        (0x0102, vec![0xAA; 17]),
        (7, b"x".to_vec()),
        (0, (0..=40).collect()),
        (300, vec![0x55; 3]),
    ]
}

fn read_exactly(c: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    c.read_exact(&mut buf).unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
    buf
}

/// Reads one whole packet.
fn read_packet(c: &mut TcpStream) -> Owned {
    let header = read_exactly(c, HEADER_LEN);
    let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
    let id = u16::from_le_bytes([header[2], header[3]]);
    (id, read_exactly(c, size - HEADER_LEN))
}

/// Sends one packet and expects `want` back.
fn ask(c: &mut TcpStream, id: u16, payload: &[u8], want: (u16, &[u8])) {
    c.write_all(&encode(id, payload).unwrap()).unwrap();
    let (rid, rp) = read_packet(c);
    assert_eq!((rid, &rp[..]), want);
}

/// The peer's end of a session the server closed: nothing more arrives, and the stream
/// ends (in order, or with a reset: the server dropped unread bytes).
fn expect_closed(c: &mut TcpStream) {
    let (bytes, end) = read_to_end(c);
    assert!(bytes.is_empty(), "got {} more bytes after the bad packet", bytes.len());
    assert!(matches!(end, End::Eof | End::Error(_)), "{end:?}");
}

/// CPU time the worker thread `w` has used so far (read on that thread).
fn worker_cpu(svc: &ServiceRef, w: usize) -> Duration {
    let (tx, rx) = mpsc::channel();
    svc.run_on_worker(w, move || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: `ts` is a valid, writable timespec.
        let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        assert_eq!(rc, 0);
        let _ = tx.send(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
    })
    .unwrap();
    rx.recv_timeout(TIMEOUT).expect("the worker runs jobs")
}

/// Idle for a while, the workers must not burn CPU (no session or listener spinning).
fn assert_workers_idle(server: &ServerService) {
    let svc = server.service();
    let before: Vec<Duration> = (0..svc.workers()).map(|w| worker_cpu(&svc, w)).collect();
    let window = Duration::from_millis(300);
    std::thread::sleep(window);
    for (w, b) in before.iter().enumerate() {
        let used = worker_cpu(&svc, w).saturating_sub(*b);
        assert!(used < window / 3, "worker {w} used {used:?} of CPU in an idle {window:?}");
    }
}

// ----- splits --------------------------------------------------------------------------

#[test]
fn packets_split_in_every_way_arrive_whole() {
    let (server, mut log) = probe_server(2, DEFAULT_MAX_PACKET_SIZE, |tx| Echo { tx });
    let mut c = connect(server.local_addr());
    let mut known = Vec::new();
    let id = log.next_connected(&mut known).id();
    let packets = sample();
    let wire = wire_of(&packets);
    let mut sent = 0;
    let mut rounds = 0;

    // Every split point into two reads: the server reads the first part before the second
    // is written.
    for at in 0..=wire.len() {
        c.write_all(&wire[..at]).unwrap();
        sent += at;
        if at > 0 {
            log.wait_read(id, sent);
        }
        c.write_all(&wire[at..]).unwrap();
        sent += wire.len() - at;
        assert_eq!(read_exactly(&mut c, wire.len()), wire, "split at {at}");
        rounds += 1;
    }

    // One byte per read.
    for b in &wire {
        c.write_all(&[*b]).unwrap();
        sent += 1;
        log.wait_read(id, sent);
    }
    assert_eq!(read_exactly(&mut c, wire.len()), wire, "byte by byte");
    rounds += 1;

    // Many packets in one write.
    let many = wire.repeat(50);
    c.write_all(&many).unwrap();
    sent += many.len();
    assert_eq!(read_exactly(&mut c, many.len()), many, "50 streams in one write");
    rounds += 50;

    // Random pieces, sometimes waiting for the server to have read them.
    let mut rng = Rng::new(seed("packets_split_in_every_way_arrive_whole"));
    for _ in 0..30 {
        let mut at = 0;
        while at < wire.len() {
            let n = rng.range(1, 9).min(wire.len() - at);
            c.write_all(&wire[at..at + n]).unwrap();
            sent += n;
            at += n;
            if rng.one_in(2) {
                log.wait_read(id, sent);
            }
        }
        assert_eq!(read_exactly(&mut c, wire.len()), wire, "random pieces");
        rounds += 1;
    }

    let got = log.packets(id);
    let want: Vec<Owned> = (0..rounds).flat_map(|_| packets.clone()).collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the server got the packets whole and in order");
    drop(c);
    assert_eq!(log.disconnected(id), DisconnectReason::PeerClosed);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn largest_packets_split_arrive_whole() {
    for max in [DEFAULT_MAX_PACKET_SIZE, 65535] {
        let (server, mut log) = probe_server(1, max, |tx| Echo { tx });
        let mut c = connect(server.local_addr());
        let id = log.next_connected(&mut Vec::new()).id();
        let payload: Vec<u8> = (0..max - HEADER_LEN).map(|i| (i % 251) as u8).collect();
        let wire = encode(9, &payload).unwrap();
        assert_eq!(wire.len(), max);
        let mut sent = 0;
        for at in [1, 2, 3, 4, 5, max / 2, max - 1, max] {
            c.write_all(&wire[..at]).unwrap();
            sent += at;
            log.wait_read(id, sent);
            c.write_all(&wire[at..]).unwrap();
            sent += max - at;
            assert_eq!(read_packet(&mut c), (9, payload.clone()), "max {max}, split at {at}");
        }
        server.shutdown(Duration::from_secs(5)).unwrap();
    }
}

// ----- bad headers ---------------------------------------------------------------------

#[test]
fn bad_headers_disconnect_only_that_session_with_a_protocol_error_naming_the_value() {
    const MAX: usize = DEFAULT_MAX_PACKET_SIZE;
    let (server, mut log) = probe_server(2, MAX, |tx| Echo { tx });
    let mut known = Vec::new();
    let mut keeper = connect(server.local_addr());
    log.next_connected(&mut known);
    ask(&mut keeper, 1, b"keeper", (1, b"keeper"));

    let below = |v: u16| format!("packet size {v} is below the 4-byte header");
    let above = |v: u16| format!("packet size {v} exceeds the maximum {MAX}");
    let cases: Vec<(u16, String)> = vec![
        (0, below(0)),
        (1, below(1)),
        (3, below(3)),
        (65535, above(65535)),
        (MAX as u16 + 1, above(MAX as u16 + 1)),
    ];
    let mut bad = 0;
    for (size, text) in &cases {
        // The whole header plus trailing bytes, and the two size bytes alone: the bad size
        // is reported as soon as it has arrived.
        for whole in [true, false] {
            let mut c = connect(server.local_addr());
            let id = log.next_connected(&mut known).id();
            ask(&mut c, 5, b"before", (5, b"before"));
            let mut bytes = size.to_le_bytes().to_vec();
            if whole {
                bytes.extend_from_slice(&[7, 0]);
                bytes.extend_from_slice(&encode(5, b"after").unwrap());
            }
            c.write_all(&bytes).unwrap();
            let reason = log.disconnected(id);
            assert_eq!(reason, DisconnectReason::Protocol(text.clone()), "size {size}");
            assert!(reason.to_string().contains(&size.to_string()));
            expect_closed(&mut c);
            assert_eq!(log.packets(id), vec![(5, b"before".to_vec())], "nothing after it");
            bad += 1;
            // Everyone else carries on.
            ask(&mut keeper, 2, size.to_string().as_bytes(), (2, size.to_string().as_bytes()));
        }
    }

    // Good packets before a bad header in the same write are delivered; the rest is not.
    let mut c = connect(server.local_addr());
    let id = log.next_connected(&mut known).id();
    let mut bytes = encode(1, b"one").unwrap().to_vec();
    bytes.extend_from_slice(&encode(2, b"two").unwrap());
    bytes.extend_from_slice(&[2, 0, 3, 0]);
    bytes.extend_from_slice(&encode(3, b"three").unwrap());
    c.write_all(&bytes).unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::Protocol(below(2)));
    assert_eq!(log.packets(id), vec![(1, b"one".to_vec()), (2, b"two".to_vec())]);
    bad += 1;
    let _ = read_to_end(&mut c); // the echoes may or may not have gone out before the close

    ask(&mut keeper, 3, b"still here", (3, b"still here"));
    let stats = server.stats();
    assert_eq!(stats.disconnected_with_error, bad, "{stats:?}");
    // Slots are freed once the closes complete, a little after `on_disconnected`.
    wait_until("only the keeper to be left", || match server.session_count() {
        1 => Ok(()),
        n => Err(format!("{n} sessions")),
    });
    assert_workers_idle(&server);
    ask(&mut keeper, 4, b"and serving", (4, b"and serving"));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_configured_maximum_is_enforced_exactly() {
    let (server, mut log) = probe_server(1, 64, |tx| Echo { tx });
    let mut known = Vec::new();
    let mut c = connect(server.local_addr());
    let id = log.next_connected(&mut known).id();
    ask(&mut c, 1, &[0xEE; 60], (1, &[0xEE; 60])); // size 64: the maximum itself
    c.write_all(&encode(2, &[0xEE; 61]).unwrap()).unwrap(); // size 65
    let reason = log.disconnected(id);
    assert_eq!(reason, DisconnectReason::Protocol("packet size 65 exceeds the maximum 64".into()));
    expect_closed(&mut c);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

// ----- handler dispatch ----------------------------------------------------------------

const H_ECHO: u16 = 1;
const H_ADD: u16 = 2;
const H_FAIL: u16 = 3;
const H_PANIC: u16 = 4;
const UNKNOWN: u16 = 99;

#[derive(Default)]
struct Player {
    sum: u64,
}

fn echo(_: &mut Player, ctx: &mut Ctx<'_>, payload: &[u8]) -> Result<(), String> {
    ctx.send(packet(100 + H_ECHO, payload)).map_err(|e| e.to_string())
}

fn add(p: &mut Player, ctx: &mut Ctx<'_>, mut payload: &[u8]) -> Result<(), String> {
    if payload.remaining() != 4 {
        return Err(format!("add needs 4 bytes, got {}", payload.remaining()));
    }
    p.sum += u64::from(payload.get_u32_le());
    ctx.send(packet(100 + H_ADD, &p.sum.to_le_bytes())).map_err(|e| e.to_string())
}

fn handlers(policy: UnknownPacket) -> Handlers<Player> {
    Handlers::new()
        .on(H_ECHO, echo)
        .on(H_ADD, add)
        .on(H_FAIL, |_, _, _| Err("always fails".to_string()))
        .on(H_PANIC, |_, _, _| -> HandlerResult { panic!("handler panicked on purpose") })
        .unknown(policy)
}

/// Reports each packet, then dispatches it through the shared table.
struct Dispatching {
    handlers: Arc<Handlers<Player>>,
    player: Player,
    tx: Sender<(SessionId, PEv)>,
}

impl PacketSession for Dispatching {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, p: Packet<'_>) {
        let _ = self.tx.send((ctx.id(), PEv::Packet(p.id, p.payload.to_vec())));
        self.handlers.dispatch(&mut self.player, ctx, p);
    }
}

fn dispatch_server(policy: UnknownPacket) -> (ServerService, Log) {
    let table = Arc::new(handlers(policy));
    assert!(table.handles(H_ADD) && !table.handles(UNKNOWN));
    probe_server(2, DEFAULT_MAX_PACKET_SIZE, move |tx| Dispatching {
        handlers: table.clone(),
        player: Player::default(),
        tx,
    })
}

fn add_packet(n: u32) -> Vec<u8> {
    encode(H_ADD, &n.to_le_bytes()).unwrap().to_vec()
}

#[test]
fn handlers_dispatch_by_id_and_errors_cost_only_their_session() {
    let (server, mut log) = dispatch_server(UnknownPacket::default());
    let mut known = Vec::new();
    let mut keeper = connect(server.local_addr());
    log.next_connected(&mut known);
    ask(&mut keeper, H_ECHO, b"hi", (101, b"hi"));

    // Dispatch by id, with per-session state.
    let mut c = connect(server.local_addr());
    log.next_connected(&mut known);
    ask(&mut c, H_ADD, &5u32.to_le_bytes(), (102, &5u64.to_le_bytes()));
    ask(&mut c, H_ADD, &7u32.to_le_bytes(), (102, &12u64.to_le_bytes()));
    ask(&mut keeper, H_ADD, &1u32.to_le_bytes(), (102, &1u64.to_le_bytes()));
    ask(&mut c, H_ECHO, b"", (101, b""));

    // An unknown id: a protocol error naming it; nothing after it is dispatched.
    let id = *known.last().unwrap();
    let mut bytes = encode(UNKNOWN, b"?").unwrap().to_vec();
    bytes.extend_from_slice(&encode(H_ECHO, b"after").unwrap());
    c.write_all(&bytes).unwrap();
    let reason = log.disconnected(id);
    assert_eq!(reason, DisconnectReason::Protocol(format!("unknown packet id {UNKNOWN}")));
    expect_closed(&mut c);
    assert_eq!(log.packets(id).last(), Some(&(UNKNOWN, b"?".to_vec())), "stopped at it");

    // A handler's error: a protocol error naming the packet and the error.
    let cases: [(Vec<u8>, DisconnectReason); 3] = [
        (
            encode(H_ADD, &[1, 2, 3]).unwrap().to_vec(),
            DisconnectReason::Protocol(format!("packet id {H_ADD}: add needs 4 bytes, got 3")),
        ),
        (
            encode(H_FAIL, b"").unwrap().to_vec(),
            DisconnectReason::Protocol(format!("packet id {H_FAIL}: always fails")),
        ),
        (
            encode(H_PANIC, b"").unwrap().to_vec(),
            DisconnectReason::Panic("handler panicked on purpose".into()),
        ),
    ];
    let mut sum = 1u64;
    for (bytes, want) in cases {
        let mut c = connect(server.local_addr());
        let id = log.next_connected(&mut known).id();
        ask(&mut c, H_ECHO, b"ok", (101, b"ok"));
        let mut bytes = bytes;
        bytes.extend_from_slice(&add_packet(1)); // never dispatched
        c.write_all(&bytes).unwrap();
        assert_eq!(log.disconnected(id), want);
        expect_closed(&mut c);
        assert_eq!(log.packets(id).len(), 2, "nothing dispatched after the failing packet");
        // Everyone else carries on, their state intact.
        sum += 1;
        ask(&mut keeper, H_ADD, &1u32.to_le_bytes(), (102, &sum.to_le_bytes()));
    }

    assert_workers_idle(&server);
    ask(&mut keeper, H_ECHO, b"serving", (101, b"serving"));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn unknown_ids_can_be_ignored() {
    let (server, mut log) = dispatch_server(UnknownPacket::Ignore);
    let mut known = Vec::new();
    let mut c = connect(server.local_addr());
    let id = log.next_connected(&mut known).id();
    let mut bytes = encode(UNKNOWN, b"?").unwrap().to_vec();
    bytes.extend_from_slice(&encode(H_ECHO, b"after").unwrap());
    c.write_all(&bytes).unwrap();
    assert_eq!(read_packet(&mut c), (101, b"after".to_vec()));
    for unknown in [0, 5, 100, u16::MAX] {
        c.write_all(&encode(unknown, &[1, 2, 3]).unwrap()).unwrap();
    }
    ask(&mut c, H_ADD, &3u32.to_le_bytes(), (102, &3u64.to_le_bytes()));
    let ids: Vec<u16> = log.packets(id).iter().map(|p| p.0).collect();
    assert_eq!(ids, [UNKNOWN, H_ECHO, 0, 5, 100, u16::MAX, H_ADD]);
    assert_eq!(server.stats().disconnected, 0);
    drop(c);
    assert_eq!(log.disconnected(id), DisconnectReason::PeerClosed);
    server.shutdown(Duration::from_secs(5)).unwrap();
}
