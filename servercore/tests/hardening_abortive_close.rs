//! A session the server gives up on leaves nothing behind (issue 11, point 1): whenever it
//! abandons bytes it had accepted to send, or gives up on the peer, it closes abortively
//! (RST), so the kernel frees that socket's buffers at once and the peer learns at once.
//! A local disconnect whose queue was flushed stays an orderly close (FIN).
//!
//! The server side of a connection is read from `/proc/net/tcp`: after an abortive close
//! it is gone; after a FIN close to a peer that does not read, it would sit in FIN-WAIT-1
//! with megabytes of Send-Q.
//!
//! Every reason the server gives up on a peer for is covered: a send-queue overflow (one
//! session flooded from the test thread, and the issue's own scenario, a chat room whose
//! non-reading members are flooded by one sender), a flush past its deadline, an idle
//! timeout, too many unconsumed bytes (`RecvBufferFull`), a bad packet header
//! (`Protocol`) and a shutdown that cannot flush.

mod common;

use common::*;
use servercore::packet::{encode, Framed, Packet, PacketSession};
use servercore::{Ctx, DisconnectReason, Room, ServerService, SessionConfig, SessionId};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The server side of `client`'s connection in `/proc/net/tcp`: (state, tx_queue bytes).
fn server_side(server: SocketAddr, client: &TcpStream) -> Option<(u8, u64)> {
    let peer_port = client.local_addr().unwrap().port();
    let text = std::fs::read_to_string("/proc/net/tcp").ok()?;
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
        if port(f[1]) == server.port() && port(f[2]) == peer_port {
            let state = u8::from_str_radix(f[3], 16).unwrap();
            let tx = u64::from_str_radix(f[4].split(':').next().unwrap(), 16).unwrap();
            return Some((state, tx));
        }
    }
    None
}

/// Waits until the server's socket of this connection is gone (an abortive close frees
/// it at once; FIN-WAIT-1 with queued bytes would keep it for minutes).
fn wait_server_side_gone(server: SocketAddr, client: &TcpStream) {
    wait_until("the server-side socket to be freed", || match server_side(server, client) {
        None => Ok(()),
        Some((state, tx)) => Err(format!("state {state:#04x}, {tx} bytes in Send-Q")),
    });
}

/// The peer learns of the abortive close: its read ends with a reset (after at most the
/// few bytes its small window had taken in).
fn expect_reset(client: &mut TcpStream) {
    let (_, end) = read_to_end(client);
    assert!(
        matches!(end, End::Error(io::ErrorKind::ConnectionReset)),
        "the peer should see a reset, saw {end:?}"
    );
}

/// [`expect_reset`] with a bound on the whole read: the reset must be seen within `bound`
/// (a bound, not a wait: a peer that was reset sees it at its next read).
fn expect_reset_within(client: &mut TcpStream, bound: Duration) {
    let deadline = Instant::now() + bound;
    let mut buf = vec![0u8; 64 << 10];
    let mut read = 0usize;
    let end = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            panic!("no reset within {bound:?} ({read} bytes read)");
        }
        client.set_read_timeout(Some(left)).unwrap();
        match client.read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => read += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                panic!("no reset within {bound:?} ({read} bytes read)")
            }
            Err(e) => break End::Error(e.kind()),
        }
    };
    assert!(
        matches!(end, End::Error(io::ErrorKind::ConnectionReset)),
        "the peer should see a reset, saw {end:?} after {read} bytes"
    );
}

/// Writes `bytes` the server will give up on, then expects the reset. Should the reset
/// already have arrived during the write, the write reports it (and a read after that
/// would see only the end of the stream): that is the peer seeing the reset too.
fn write_then_expect_reset(client: &mut TcpStream, bytes: &[u8]) {
    match client.write_all(bytes) {
        Ok(()) => expect_reset_within(client, RESET_BOUND),
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "the write failed: {e}"),
    }
}

/// How long a peer that was reset may take to see it (a safety bound).
const RESET_BOUND: Duration = Duration::from_secs(10);

fn config() -> SessionConfig {
    SessionConfig {
        max_send_queue: 256 << 10,
        send_queue_low_watermark: 64 << 10,
        close_flush_timeout: Duration::from_millis(200),
        ..SessionConfig::default()
    }
}

/// On "go": queues `chunks` buffers of 64 KiB of `byte`, then disconnects if asked. A
/// refused send is recorded in `checks`.
fn queuer(checks: &Checks, byte: u8, chunks: usize, then_disconnect: bool) -> Hooks {
    let checks = checks.clone();
    Hooks::on_recv(move |ctx: &mut Ctx<'_>, data: &[u8]| {
        for i in 0..chunks {
            if let Err(e) = ctx.send(vec![byte; 64 << 10]) {
                checks.check(false, format_args!("send {i} of {chunks} refused: {e}"));
                break;
            }
        }
        if then_disconnect {
            ctx.disconnect("done");
        }
        data.len()
    })
}

/// A one-worker server of recording sessions with `hooks`.
fn start(hooks: Hooks, cfg: SessionConfig) -> (ServerService, EventLog) {
    let (factory, log) = recorder(hooks);
    let server =
        ServerService::builder(any_port()).workers(1).session_config(cfg).start(factory).unwrap();
    (server, log)
}

#[test]
fn a_send_queue_overflow_resets_the_peer_and_frees_the_kernels_buffers() {
    let (server, mut log) = start(Hooks::echo(), config());
    let addr = server.local_addr();
    let mut clients: Vec<TcpStream> = (0..5).map(|_| slow_client(addr)).collect();
    let mut sessions = Vec::new();
    for _ in 0..clients.len() {
        sessions.push(log.next_connected());
    }
    // Flood every session from this thread, as a game thread would, until it is dropped:
    // the kernel's send buffer fills first (megabytes on loopback), then the queue.
    let chunk = vec![7u8; 1024];
    for (id, handle) in &sessions {
        let mut sent = 0usize;
        while handle.send(chunk.clone()).is_ok() {
            sent += 1;
            assert!(sent < 1_000_000, "{id} never overflowed");
        }
    }
    for (id, _) in &sessions {
        let reason = log.disconnected(*id);
        assert!(matches!(reason, DisconnectReason::SendQueueOverflow { .. }), "{id}: {reason:?}");
        assert!(reason.is_abortive());
    }
    for c in &mut clients {
        wait_server_side_gone(addr, c);
        expect_reset(c);
    }
    assert_eq!(server.stats().aborted, sessions.len() as u64);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_flush_that_misses_its_deadline_resets_the_peer() {
    // On "go", queue 2 MiB and disconnect: the peer does not read, so the flush cannot end.
    let cfg = SessionConfig { max_send_queue: 16 << 20, ..config() };
    let checks = Checks::new();
    let (server, mut log) = start(queuer(&checks, 1, 32, true), cfg);
    let addr = server.local_addr();
    let mut c = slow_client(addr);
    let (id, _) = log.next_connected();
    c.write_all(b"go").unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::Local("done".into()));
    wait_server_side_gone(addr, &c);
    expect_reset(&mut c);
    assert_eq!(server.stats().aborted, 1);
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
}

#[test]
fn a_flushed_local_disconnect_stays_an_orderly_close() {
    const TOTAL: usize = 1 << 20;
    let cfg = SessionConfig { max_send_queue: 16 << 20, ..config() };
    let checks = Checks::new();
    let (server, mut log) = start(queuer(&checks, 2, TOTAL / (64 << 10), true), cfg);
    let mut c = connect(server.local_addr());
    let (id, _) = log.next_connected();
    c.write_all(b"go").unwrap();
    let (got, end) = read_to_end(&mut c);
    assert_eq!(got.len(), TOTAL);
    assert!(matches!(end, End::Eof), "{end:?}");
    assert_eq!(log.disconnected(id), DisconnectReason::Local("done".into()));
    wait_no_sessions(&server);
    assert_eq!(server.stats().aborted, 0);
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
}

#[test]
fn an_idle_timeout_resets_the_peer_even_with_nothing_queued() {
    let cfg = SessionConfig { idle_timeout: Some(Duration::from_millis(100)), ..config() };
    let (server, mut log) = start(Hooks::echo(), cfg);
    let mut c = connect(server.local_addr());
    let (id, _) = log.next_connected();
    assert_eq!(log.disconnected(id), DisconnectReason::IdleTimeout);
    expect_reset(&mut c);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_shutdown_that_cannot_flush_resets_the_peers_it_gives_up_on() {
    let cfg = SessionConfig { max_send_queue: 16 << 20, ..config() };
    let checks = Checks::new();
    let (server, mut log) = start(queuer(&checks, 3, 32, false), cfg);
    let addr = server.local_addr();
    let mut c = slow_client(addr);
    let (id, _) = log.next_connected();
    c.write_all(b"go").unwrap();
    log.wait_for("the 2 MiB queued", |e| e.id == id && matches!(e.ev, Ev::Recv(_)));
    let stats = server.service();
    server.shutdown(Duration::from_millis(200)).unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::Shutdown);
    assert!(server_side(addr, &c).is_none(), "the server left its socket behind");
    expect_reset(&mut c);
    assert_eq!(stats.stats().aborted, 1);
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest);
    checks.assert_ok();
}

#[test]
fn a_close_still_waiting_for_its_peer_at_shutdown_is_reset_by_the_shutdown_deadline() {
    // A local disconnect whose bytes the kernel took but the peer never reads waits (up to
    // close_flush_timeout, long here) for the peer; the shutdown deadline must end that wait.
    let cfg = SessionConfig { close_flush_timeout: Duration::from_secs(60), ..config() };
    let checks = Checks::new();
    let (server, mut log) = start(queuer(&checks, 4, 2, true), cfg);
    let addr = server.local_addr();
    let mut c = slow_client(addr);
    let (id, _) = log.next_connected();
    c.write_all(b"go").unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::Local("done".into()));
    wait_until("the close to wait on the peer with bytes in the kernel", || {
        match server_side(addr, &c) {
            Some((_, tx)) if tx > 0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let stats = server.service();
    server.shutdown(Duration::from_millis(200)).unwrap();
    assert!(server_side(addr, &c).is_none(), "the server left its socket behind");
    expect_reset(&mut c);
    assert_eq!(stats.stats().aborted, 1);
    checks.assert_ok();
}

/// The issue's own scenario: a chat room whose members never read, flooded by one sender
/// with 1 KiB messages. Each non-reader overflows its send queue and is dropped with a
/// reset; none leaves a socket behind (no FIN-WAIT holding its queued megabytes), and
/// each learns of it at its next read.
#[test]
fn non_readers_of_a_flooded_chat_room_are_reset_and_leave_nothing_behind() {
    const NON_READERS: usize = 20;
    const MESSAGE: usize = 1024;
    const MAX_SEND_QUEUE: usize = 64 << 10;
    let cfg = SessionConfig {
        max_send_queue: MAX_SEND_QUEUE,
        send_queue_low_watermark: 16 << 10,
        ..config()
    };
    let checks = Checks::new();
    let room = Room::new();
    // The first session is the sender, outside the room (it would only get its own
    // messages back); every later one enters the room and never reads.
    let connected = Arc::new(AtomicUsize::new(0));
    let (c1, c2, r1, r2) = (checks.clone(), checks.clone(), room.clone(), room.clone());
    let hooks = Hooks::on_recv(move |ctx: &mut Ctx<'_>, data: &[u8]| {
        // Only the sender sends: relay each whole 1 KiB message to the room.
        let whole = data.len() / MESSAGE * MESSAGE;
        for msg in data[..whole].chunks(MESSAGE) {
            if let Err(e) = ctx.broadcast_room(&r1, msg.to_vec()) {
                c1.check(false, format_args!("a broadcast was refused: {e}"));
                break;
            }
        }
        whole
    })
    .with_connected(move |ctx| {
        if connected.fetch_add(1, Ordering::SeqCst) > 0 {
            c2.check(ctx.enter_room(&r2), "the room belongs to this service");
        }
    });
    let (server, mut log) = start(hooks, cfg);
    let addr = server.local_addr();

    let sender = connect(addr);
    let (sender_id, _) = log.next_connected();
    let mut non_readers: Vec<TcpStream> = Vec::new();
    let mut ids: Vec<SessionId> = Vec::new();
    for _ in 0..NON_READERS {
        non_readers.push(slow_client(addr));
        ids.push(log.next_connected().0);
    }
    // The enters are carried out after on_connected: wait until the room holds them all.
    wait_until("every non-reader in the room", || {
        if room.len() == NON_READERS {
            Ok(())
        } else {
            Err(format!("{} members", room.len()))
        }
    });

    // Flood until every non-reader is gone (the loop ends on the test thread's word; a
    // write error would be a bug, reported at the join).
    let stop = Arc::new(AtomicBool::new(false));
    let flood = {
        let stop = stop.clone();
        let mut sender = sender.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut msg = vec![0u8; MESSAGE];
            let mut sent = 0u64;
            while !stop.load(Ordering::SeqCst) {
                msg[..8].copy_from_slice(&sent.to_le_bytes());
                sender.write_all(&msg).map_err(|e| format!("after {sent} messages: {e}"))?;
                sent += 1;
            }
            Ok::<u64, String>(sent)
        })
    };
    for id in &ids {
        let reason = log.disconnected(*id);
        assert_eq!(
            reason,
            DisconnectReason::SendQueueOverflow { limit: MAX_SEND_QUEUE },
            "non-reader {id}"
        );
        assert!(reason.is_abortive(), "{reason:?}");
    }
    stop.store(true, Ordering::SeqCst);
    let sent = flood.join().unwrap().expect("the sender's writes");
    eprintln!("{sent} messages of {MESSAGE} bytes sent until every non-reader was dropped");
    assert!(room.is_empty(), "{} members left in the room", room.len());

    for c in &mut non_readers {
        wait_server_side_gone(addr, c);
        expect_reset_within(c, RESET_BOUND);
    }
    assert_eq!(server.stats().aborted, NON_READERS as u64);
    // The sender is unaffected.
    assert!(server.session_count() == 1, "{} sessions", server.session_count());
    drop(sender);
    assert_eq!(log.disconnected(sender_id), DisconnectReason::PeerClosed);
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
    log.drain();
    for id in &ids {
        let (recvs, _) = log.check_lifecycle(*id);
        assert!(recvs.is_empty(), "{id}: a non-reader that sent nothing got on_recv");
    }
}

#[test]
fn a_recv_buffer_overflow_resets_the_peer_and_frees_the_kernels_buffers() {
    // A session that never consumes: past LIMIT unconsumed bytes, it is dropped.
    const LIMIT: usize = 8 << 10;
    let checks = Checks::new();
    let c = checks.clone();
    let hoarder = Hooks::on_recv(move |_ctx: &mut Ctx<'_>, data: &[u8]| {
        c.check(data.len() <= LIMIT, format_args!("{} bytes presented", data.len()));
        0
    });
    let (server, mut log) = start(hoarder, SessionConfig { max_recv_buffer: LIMIT, ..config() });
    let addr = server.local_addr();
    let mut peer = connect(addr);
    let (id, _) = log.next_connected();
    // Four times the limit, in one write the kernel's buffers take at once.
    write_then_expect_reset(&mut peer, &vec![b'h'; 4 * LIMIT]);
    let reason = log.disconnected(id);
    assert_eq!(reason, DisconnectReason::RecvBufferFull { limit: LIMIT });
    assert!(reason.is_abortive());
    wait_server_side_gone(addr, &peer);
    assert_eq!(server.stats().aborted, 1);
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
}

/// What a packet session saw, sent to the test thread.
#[derive(Debug, PartialEq)]
enum PacketEv {
    Packet(u16, Vec<u8>),
    Disconnected(DisconnectReason),
}

struct PacketProbe(Sender<PacketEv>);

impl PacketSession for PacketProbe {
    fn on_packet(&mut self, _ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        let _ = self.0.send(PacketEv::Packet(packet.id, packet.payload.to_vec()));
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.0.send(PacketEv::Disconnected(reason.clone()));
    }
}

#[test]
fn a_bad_packet_header_resets_the_peer_and_frees_the_kernels_buffers() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .session_config(config())
        .start(move || Framed::new(PacketProbe(tx.clone())))
        .unwrap();
    let addr = server.local_addr();
    let mut peer = connect(addr);
    // A good packet, then a header whose size (2, little-endian) is below the 4-byte
    // header itself.
    let mut bytes = encode(5, b"ok").unwrap().to_vec();
    bytes.extend_from_slice(&[2, 0, 7, 0]);
    write_then_expect_reset(&mut peer, &bytes);
    let next = || rx.recv_timeout(TIMEOUT).expect("a packet session event");
    assert_eq!(next(), PacketEv::Packet(5, b"ok".to_vec()));
    let reason = match next() {
        PacketEv::Disconnected(r) => r,
        other => panic!("expected the disconnect, got {other:?}"),
    };
    assert_eq!(
        reason,
        DisconnectReason::Protocol("packet size 2 is below the 4-byte header".into())
    );
    assert!(reason.is_abortive());
    wait_server_side_gone(addr, &peer);
    assert_eq!(server.stats().aborted, 1);
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert!(rx.try_recv().is_err(), "an event after on_disconnected");
}
