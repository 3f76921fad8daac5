//! Bad clients against good ones (issue 6): malformed packet headers, random garbage and a
//! slow-loris client each lose only their own session, with the reason that names what they
//! did, while 100 well-behaved sessions keep echoing; and a packet handler that panics on
//! one message costs only that session.
//!
//! The server records every `on_disconnected` into a channel keyed by the peer's port, so
//! each bad client's reason is checked exactly, server-side. Nothing forces a backend:
//! `SERVERCORE_BACKEND=io_uring|poll` picks it.

mod common;

use common::{any_port, connect, Rng, TIMEOUT};
use servercore::packet::{
    decode, encode, FrameError, Framed, Packet, PacketSession, MAX_PACKET_SIZE_LIMIT,
};
use servercore::{ClientService, Ctx, DisconnectReason, ServerService, SessionConfig};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Largest packet the test servers accept, header included.
const MAX_PACKET: usize = 4096;

/// What the server reports about its sessions.
#[derive(Debug, Clone)]
enum ServerEv {
    Connected(u16),
    Disconnected(u16, DisconnectReason),
}

/// Server side: echoes every packet (same id, same payload). A packet with id
/// [`PANIC_ID`] makes the handler panic.
struct EchoPackets {
    events: Sender<ServerEv>,
    port: u16,
}

/// The packet id on which [`EchoPackets`] panics.
const PANIC_ID: u16 = 13;

impl PacketSession for EchoPackets {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.port = ctx.peer_addr().port();
        let _ = self.events.send(ServerEv::Connected(self.port));
    }

    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        if packet.id == PANIC_ID {
            panic!("handler exploded on packet {PANIC_ID} from port {}", self.port);
        }
        let _ = ctx.send(encode(packet.id, packet.payload).expect("echo fits a packet"));
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.events.send(ServerEv::Disconnected(self.port, reason.clone()));
    }
}

fn echo_server(config: SessionConfig, workers: usize) -> (ServerService, Receiver<ServerEv>) {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(workers)
        .session_config(config)
        .start(move || {
            Framed::with_max_packet_size(EchoPackets { events: tx.clone(), port: 0 }, MAX_PACKET)
        })
        .unwrap();
    (server, rx)
}

/// Every server event received so far, and a way to wait for more.
struct ServerLog {
    rx: Receiver<ServerEv>,
    connected: Vec<u16>,
    /// Every reason per port (a port with two entries would be a double `on_disconnected`).
    reasons: HashMap<u16, Vec<DisconnectReason>>,
}

impl ServerLog {
    fn new(rx: Receiver<ServerEv>) -> Self {
        ServerLog { rx, connected: Vec::new(), reasons: HashMap::new() }
    }

    fn take(&mut self, ev: ServerEv) {
        match ev {
            ServerEv::Connected(p) => self.connected.push(p),
            ServerEv::Disconnected(p, r) => self.reasons.entry(p).or_default().push(r),
        }
    }

    /// Waits until `port` was disconnected and returns its reason.
    fn reason(&mut self, port: u16) -> DisconnectReason {
        let deadline = Instant::now() + TIMEOUT;
        while !self.reasons.contains_key(&port) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => self.take(ev),
                Err(e) => panic!(
                    "no on_disconnected for the session of port {port} ({e:?}); reasons so far: {:?}",
                    self.reasons
                ),
            }
        }
        self.reasons[&port][0].clone()
    }

    /// Waits until `n` sessions have connected in all.
    fn wait_connected(&mut self, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.connected.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(ev) => self.take(ev),
                Err(e) => panic!("only {} of {n} sessions connected ({e:?})", self.connected.len()),
            }
        }
    }

    /// Takes what is queued without waiting (after the server shut down, that is all).
    fn drain(&mut self) {
        while let Ok(ev) = self.rx.try_recv() {
            self.take(ev);
        }
    }
}

// ----- the well-behaved clients ----------------------------------------------------------

/// Shared record of the well-behaved client sessions.
struct GoodStats {
    next_index: AtomicUsize,
    /// Echoes verified, per session.
    echoes: Vec<AtomicU64>,
    /// Anything that went wrong (a wrong echo, an unexpected disconnect).
    errors: Mutex<Vec<String>>,
}

/// Client side: sends one packet, checks its echo, sends the next (ping-pong), forever.
struct GoodClient {
    stats: Arc<GoodStats>,
    index: usize,
    seq: u64,
}

impl GoodClient {
    /// The packet number `seq` of session `index`: id and payload both depend on them.
    fn packet(index: usize, seq: u64) -> (u16, Vec<u8>) {
        let len = (index * 31 + seq as usize * 7) % 300 + 1;
        let payload = (0..len).map(|i| (index as u64 + seq + i as u64) as u8).collect();
        (100 + (seq % 1000) as u16, payload)
    }

    fn send_next(&mut self, ctx: &mut Ctx<'_>) {
        let (id, payload) = Self::packet(self.index, self.seq);
        if ctx.send(encode(id, &payload).unwrap()).is_err() {
            self.error(format!("good session {}: send refused", self.index));
        }
    }

    fn error(&self, e: String) {
        self.stats.errors.lock().unwrap().push(e);
    }
}

impl PacketSession for GoodClient {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.send_next(ctx);
    }

    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        let (id, payload) = Self::packet(self.index, self.seq);
        if packet.id != id || packet.payload != payload.as_slice() {
            self.error(format!("good session {}: wrong echo of packet {}", self.index, self.seq));
            ctx.disconnect("wrong echo");
            return;
        }
        self.stats.echoes[self.index].fetch_add(1, Ordering::SeqCst);
        self.seq += 1;
        self.send_next(ctx);
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if *reason != DisconnectReason::Shutdown {
            self.error(format!("good session {} disconnected: {reason}", self.index));
        }
    }

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &std::io::Error) {
        self.error(format!("good session {}: connect to {addr} failed: {error}", self.index));
    }
}

fn echo_counts(stats: &GoodStats) -> Vec<u64> {
    stats.echoes.iter().map(|c| c.load(Ordering::SeqCst)).collect()
}

/// Waits until every good session has verified at least `at_least[i]` echoes.
fn wait_echoes(stats: &GoodStats, at_least: &[u64], what: &str) {
    common::wait_until(what, || {
        let errors = stats.errors.lock().unwrap();
        assert!(errors.is_empty(), "well-behaved sessions failed: {errors:?}");
        let now = echo_counts(stats);
        let behind = now.iter().zip(at_least).filter(|(n, want)| n < want).count();
        if behind == 0 {
            Ok(())
        } else {
            Err(format!("{behind} sessions behind"))
        }
    });
}

// ----- the bad clients -------------------------------------------------------------------

/// Connects and returns the stream with its local port (the key of the server's record).
fn bad_connect(addr: SocketAddr) -> (TcpStream, u16) {
    let s = connect(addr);
    let port = s.local_addr().unwrap().port();
    (s, port)
}

/// Sends one valid packet and reads its echo, proving the session worked before going bad.
fn valid_roundtrip(s: &mut TcpStream) {
    let wire = encode(7, b"valid first").unwrap();
    s.write_all(&wire).unwrap();
    let mut back = vec![0u8; wire.len()];
    s.read_exact(&mut back).unwrap();
    assert_eq!(back, &wire[..]);
}

/// Reads until the server closes the connection (end of stream or reset). The read
/// timeout of [`connect`] is the safety net.
fn wait_closed(s: &mut TcpStream) {
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("the server did not close a bad client's connection within {TIMEOUT:?}")
            }
            Err(_) => return, // reset
        }
    }
}

/// A header whose `size` field is `size`, followed by a few bytes.
fn bad_header(size: u16) -> Vec<u8> {
    let mut v = size.to_le_bytes().to_vec();
    v.extend_from_slice(&[1, 0, 0xAA, 0xBB, 0xCC]);
    v
}

/// The protocol error `decode` finds first in `stream` (after any valid packets).
fn first_frame_error(mut stream: &[u8]) -> Option<FrameError> {
    loop {
        match decode(stream, MAX_PACKET) {
            Ok(Some((_, used))) => stream = &stream[used..],
            Ok(None) => return None,
            Err(e) => return Some(e),
        }
    }
}

/// A few valid packets, then random bytes that certainly contain a protocol error; and
/// that error.
fn garbage(rng: &mut Rng) -> (Vec<u8>, FrameError) {
    loop {
        let mut g = Vec::new();
        for id in 0..3 {
            let len = rng.range(0, 200);
            g.extend_from_slice(&encode(id, &rng.bytes(len)).unwrap());
        }
        g.extend_from_slice(&rng.bytes(32 * 1024));
        if let Some(e) = first_frame_error(&g) {
            return (g, e);
        }
    }
}

fn protocol(e: FrameError) -> DisconnectReason {
    DisconnectReason::Protocol(e.to_string())
}

#[test]
fn bad_clients_lose_only_their_own_session_while_100_good_ones_keep_echoing() {
    const GOOD: usize = 100;
    let seed = common::seed("bad_clients_lose_only_their_own_session");
    let idle = Duration::from_millis(300);
    let config = SessionConfig { idle_timeout: Some(idle), ..SessionConfig::default() };
    let (server, rx) = echo_server(config, 2);
    let mut log = ServerLog::new(rx);
    let addr = server.local_addr();

    // 100 well-behaved sessions, ping-ponging packets as fast as they can.
    let stats = Arc::new(GoodStats {
        next_index: AtomicUsize::new(0),
        echoes: (0..GOOD).map(|_| AtomicU64::new(0)).collect(),
        errors: Mutex::new(Vec::new()),
    });
    let st = stats.clone();
    let good = ClientService::builder(addr)
        .sessions(GOOD)
        .workers(1)
        .start(move || {
            let index = st.next_index.fetch_add(1, Ordering::SeqCst);
            Framed::with_max_packet_size(
                GoodClient { stats: st.clone(), index, seq: 0 },
                MAX_PACKET,
            )
        })
        .unwrap();
    log.wait_connected(GOOD);
    wait_echoes(&stats, &[5; GOOD], "every good session to echo 5 packets");
    let before = echo_counts(&stats);

    // The bad clients, all at once, each on its own thread; each reports its port and the
    // reason the server must give.
    type Bad = Box<dyn FnOnce(SocketAddr) -> (u16, DisconnectReason, &'static str) + Send>;
    let mut rng = Rng::new(seed);
    let (junk, junk_error) = garbage(&mut rng);
    let bad: Vec<Bad> = vec![
        Box::new(|addr| {
            let (mut s, port) = bad_connect(addr);
            valid_roundtrip(&mut s);
            s.write_all(&bad_header(0)).unwrap();
            wait_closed(&mut s);
            (port, protocol(FrameError::TooSmall { size: 0 }), "size 0")
        }),
        Box::new(|addr| {
            let (mut s, port) = bad_connect(addr);
            s.write_all(&bad_header(1)).unwrap();
            wait_closed(&mut s);
            (port, protocol(FrameError::TooSmall { size: 1 }), "size 1")
        }),
        Box::new(|addr| {
            let (mut s, port) = bad_connect(addr);
            valid_roundtrip(&mut s);
            s.write_all(&bad_header(3)).unwrap();
            wait_closed(&mut s);
            (port, protocol(FrameError::TooSmall { size: 3 }), "size 3")
        }),
        Box::new(|addr| {
            let (mut s, port) = bad_connect(addr);
            valid_roundtrip(&mut s);
            // Only the header: the server must not wait for the 65 KB it announces.
            s.write_all(&bad_header(u16::MAX)[..4]).unwrap();
            wait_closed(&mut s);
            let e = FrameError::TooLarge { size: u16::MAX, max: MAX_PACKET };
            (port, protocol(e), "size 65535")
        }),
        Box::new(move |addr| {
            let (mut s, port) = bad_connect(addr);
            // The server may close in the middle of this (then the write fails): fine.
            let _ = s.write_all(&junk);
            wait_closed(&mut s);
            (port, protocol(junk_error), "random garbage")
        }),
        Box::new(move |addr| {
            // Slow loris: a valid packet, one byte every 500 ms (slower than the idle
            // timeout), until the server gives up on it.
            let (mut s, port) = bad_connect(addr);
            s.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
            let wire = encode(9, b"slowly, very slowly").unwrap();
            let start = Instant::now();
            let mut closed = false;
            for byte in wire.iter() {
                if s.write_all(std::slice::from_ref(byte)).is_err() {
                    closed = true;
                    break;
                }
                let mut b = [0u8; 64];
                match s.read(&mut b) {
                    Ok(0) => {
                        closed = true;
                        break;
                    }
                    Ok(n) => panic!("slow loris got {n} bytes back before its packet was whole"),
                    Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                    Err(_) => {
                        closed = true;
                        break;
                    }
                }
            }
            assert!(closed, "the slow loris was never disconnected");
            let took = start.elapsed();
            assert!(took < Duration::from_secs(5), "idle timeout took {took:?}");
            (port, DisconnectReason::IdleTimeout, "slow loris")
        }),
    ];
    let threads: Vec<_> = bad.into_iter().map(|f| std::thread::spawn(move || f(addr))).collect();
    let expected: Vec<_> = threads.into_iter().map(|t| t.join().expect("bad client")).collect();

    for (port, want, what) in &expected {
        let got = log.reason(*port);
        eprintln!("{what}: {got}");
        assert_eq!(&got, want, "{what}: wrong reason");
        if let DisconnectReason::Protocol(text) = &got {
            // The text names the offending value.
            let value = match what.strip_prefix("size ") {
                Some(v) => v.to_string(),
                None => match junk_error_size(text) {
                    Some(v) => v,
                    None => panic!("{what}: protocol text names no size: {text:?}"),
                },
            };
            assert!(text.contains(&value), "{what}: {text:?} does not name {value}");
        }
    }

    // The good sessions kept echoing through all of it, and keep going afterwards.
    let after: Vec<u64> = echo_counts(&stats).iter().map(|n| n + 5).collect();
    wait_echoes(&stats, &after, "every good session to echo 5 more packets");
    assert!(
        echo_counts(&stats).iter().zip(&before).all(|(now, then)| now > then),
        "every good session made progress during the attack"
    );
    assert!(stats.errors.lock().unwrap().is_empty());
    assert_eq!(good.stats().disconnected, 0, "no good session was disconnected");

    good.shutdown(Duration::from_secs(5)).unwrap();
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    assert!(stats.errors.lock().unwrap().is_empty(), "{:?}", stats.errors.lock().unwrap());

    // Exactly one on_disconnected per session; the good ones ended only when their client
    // closed them (an orderly close, or a reset when an echo was still unread).
    assert_eq!(log.connected.len(), GOOD + expected.len());
    let bad_ports: Vec<u16> = expected.iter().map(|(p, _, _)| *p).collect();
    for port in &log.connected {
        let reasons = log.reasons.get(port).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(reasons.len(), 1, "port {port}: on_disconnected calls: {reasons:?}");
        if !bad_ports.contains(port) {
            assert!(
                matches!(reasons[0], DisconnectReason::PeerClosed | DisconnectReason::Reset),
                "good session of port {port} ended with {}",
                reasons[0]
            );
        }
    }
}

/// The size value a random-garbage protocol error names ("packet size N ...").
fn junk_error_size(text: &str) -> Option<String> {
    let n: u32 = text.strip_prefix("packet size ")?.split(' ').next()?.parse().ok()?;
    assert!(n as usize <= MAX_PACKET_SIZE_LIMIT);
    Some(n.to_string())
}

#[test]
fn a_handler_that_panics_on_one_message_costs_only_that_session() {
    // One worker: the panicking session shares its thread with every other one.
    let (server, rx) = echo_server(SessionConfig::default(), 1);
    let mut log = ServerLog::new(rx);
    let addr = server.local_addr();

    let roundtrip_packet = |s: &mut TcpStream, id: u16, payload: &[u8]| {
        let wire = encode(id, payload).unwrap();
        s.write_all(&wire).unwrap();
        let mut back = vec![0u8; wire.len()];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, &wire[..]);
    };
    let mut clients: Vec<_> = (0..10).map(|_| bad_connect(addr)).collect();
    for (i, (s, _)) in clients.iter_mut().enumerate() {
        roundtrip_packet(s, 1, format!("hello from {i}").as_bytes());
    }
    log.wait_connected(10);

    // Client 3 sends the packet its handler cannot take; it gets one good echo first, in
    // the same write, to show the packets before the fatal one are handled.
    let (mut victim, victim_port) = clients.remove(3);
    let mut wire = encode(1, b"before").unwrap().to_vec();
    wire.extend_from_slice(&encode(PANIC_ID, b"boom").unwrap());
    wire.extend_from_slice(&encode(1, b"after: never handled").unwrap());
    victim.write_all(&wire).unwrap();
    let mut echoed = Vec::new();
    let _ = victim.read_to_end(&mut echoed);
    assert!(
        echoed.is_empty() || echoed == encode(1, b"before").unwrap(),
        "the victim got back {echoed:?}"
    );
    match log.reason(victim_port) {
        DisconnectReason::Panic(msg) => assert!(
            msg.contains(&format!("handler exploded on packet {PANIC_ID} from port {victim_port}")),
            "panic message: {msg:?}"
        ),
        other => panic!("expected DisconnectReason::Panic, got {other:?}"),
    }

    // Everyone else carries on, and new sessions are served.
    for round in 0..3 {
        for (i, (s, _)) in clients.iter_mut().enumerate() {
            roundtrip_packet(s, 2, format!("round {round} of {i}").as_bytes());
        }
    }
    let (mut fresh, _) = bad_connect(addr);
    roundtrip_packet(&mut fresh, 3, b"a new session after the panic");
    let ports: Vec<u16> = clients.iter().map(|(_, p)| *p).collect();
    drop(clients);
    drop(fresh);
    common::wait_no_sessions(&server);
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.disconnected), (11, 11), "{stats:?}");
    assert_eq!(stats.disconnected_with_error, 1, "only the victim failed: {stats:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    for port in ports {
        assert_eq!(log.reasons[&port], vec![DisconnectReason::PeerClosed], "port {port}");
    }
    assert_eq!(log.reasons[&victim_port].len(), 1, "one on_disconnected for the victim");
}
