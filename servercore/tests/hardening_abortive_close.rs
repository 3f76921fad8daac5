//! A session the server gives up on leaves nothing behind (issue 11, point 1): whenever it
//! abandons bytes it had accepted to send, or gives up on the peer, it closes abortively
//! (RST), so the kernel frees that socket's buffers at once and the peer learns at once.
//! A local disconnect whose queue was flushed stays an orderly close (FIN).
//!
//! The server side of a connection is read from `/proc/net/tcp`: after an abortive close
//! it is gone; after a FIN close to a peer that does not read, it would sit in FIN-WAIT-1
//! with megabytes of Send-Q.

mod common;

use common::*;
use servercore::{Ctx, DisconnectReason, ServerService, SessionConfig};
use socket2::{Domain, Socket, Type};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// A client with a tiny receive window that never reads unless asked.
fn slow_client(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

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

fn config() -> SessionConfig {
    SessionConfig {
        max_send_queue: 256 << 10,
        send_queue_low_watermark: 64 << 10,
        close_flush_timeout: Duration::from_millis(200),
        ..SessionConfig::default()
    }
}

/// On "go": queues `chunks` buffers of 64 KiB of `byte`, then disconnects if asked.
fn queuer(byte: u8, chunks: usize, then_disconnect: bool) -> Hooks {
    Hooks::on_recv(move |ctx: &mut Ctx<'_>, data: &[u8]| {
        for _ in 0..chunks {
            ctx.send(vec![byte; 64 << 10]).unwrap();
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
    let (server, mut log) = start(queuer(1, 32, true), cfg);
    let addr = server.local_addr();
    let mut c = slow_client(addr);
    let (id, _) = log.next_connected();
    c.write_all(b"go").unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::Local("done".into()));
    wait_server_side_gone(addr, &c);
    expect_reset(&mut c);
    assert_eq!(server.stats().aborted, 1);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_flushed_local_disconnect_stays_an_orderly_close() {
    const TOTAL: usize = 1 << 20;
    let cfg = SessionConfig { max_send_queue: 16 << 20, ..config() };
    let (server, mut log) = start(queuer(2, TOTAL / (64 << 10), true), cfg);
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
    let (server, mut log) = start(queuer(3, 32, false), cfg);
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
}

#[test]
fn a_close_still_waiting_for_its_peer_at_shutdown_is_reset_by_the_shutdown_deadline() {
    // A local disconnect whose bytes the kernel took but the peer never reads waits (up to
    // close_flush_timeout, long here) for the peer; the shutdown deadline must end that wait.
    let cfg = SessionConfig { close_flush_timeout: Duration::from_secs(60), ..config() };
    let (server, mut log) = start(queuer(4, 2, true), cfg);
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
}
