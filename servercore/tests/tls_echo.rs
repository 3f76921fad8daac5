//! TLS echo (issue 13): every message size from 1 byte to 1 MiB (around the 16 KiB record
//! boundaries in particular) through a TLS `ServerService`, from a blocking rustls client
//! and from a TLS `ClientService` (the server-to-server link); and the close semantics:
//! `close_notify` then FIN is `PeerClosed`, a FIN alone is `Truncated`, a local
//! `disconnect` flushes every queued byte, then `close_notify`, then the FIN.
//!
//! The certificate is made at run time (rcgen). Nothing here forces a backend:
//! `SERVERCORE_BACKEND=io_uring|poll` picks it. Every wait is on an event with
//! `common::TIMEOUT` as the safety net.

mod common;

use common::tls::{
    pki, raw_read_to_end, send_close_notify, server_name, tls_connect, tls_read_to_end,
    tls_roundtrip, RawEnd, TlsClient, TlsEnd,
};
use common::{any_port, recorder, Checks, Hooks, Rng};
use servercore::{
    ClientService, Ctx, DisconnectReason, ServerService, Session, SessionId, TlsError,
};
use std::collections::HashMap;
use std::io::Write;
use std::net::Shutdown;
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// TLS records carry at most 16 KiB of plaintext.
const RECORD: usize = 16 * 1024;
const MIB: usize = 1 << 20;

/// Message sizes from 1 byte to 1 MiB: every size up to 64, each power of two and its
/// neighbours, and the neighbours of the first multiples of the record size.
fn sizes() -> Vec<usize> {
    let mut v: Vec<usize> = (1..=64).collect();
    for k in 7..=20 {
        let p = 1usize << k;
        v.extend([p - 1, p, p + 1]);
    }
    for m in 1..=4 {
        for d in [-2isize, -1, 0, 1, 2] {
            v.push((m * RECORD).checked_add_signed(d).unwrap());
        }
    }
    // What fits a record once the TLS 1.3 overhead (content type) is counted, give or take.
    v.extend([RECORD - 22, RECORD - 5, 2 * RECORD + 100, 3 * RECORD - 1000]);
    v.retain(|&n| (1..=MIB).contains(&n));
    v.sort_unstable();
    v.dedup();
    v
}

/// A TLS server of `workers` workers whose sessions `factory` makes.
fn tls_server<S: Session>(
    workers: usize,
    factory: impl Fn() -> S + Send + Sync + 'static,
) -> ServerService {
    ServerService::builder(any_port())
        .workers(workers)
        .tls(pki().server.clone())
        .start(factory)
        .unwrap()
}

fn tls_echo_server(workers: usize) -> (ServerService, common::EventLog) {
    let (factory, log) = recorder(Hooks::echo());
    (tls_server(workers, factory), log)
}

/// A one-worker TLS echo server and a client whose session is connected and has echoed
/// "hello"; the session's id.
fn hello_session() -> (ServerService, common::EventLog, TlsClient, SessionId) {
    let (server, mut log) = tls_echo_server(1);
    let mut client = tls_connect(server.local_addr());
    let (id, _) = log.next_connected();
    tls_roundtrip(&mut client, b"hello");
    (server, log, client, id)
}

/// [`hello_session`], then the client's `close_notify` and FIN: the session ends with
/// `PeerClosed`, and the client reads nothing more to the end of the stream; returns how
/// that stream ended too.
fn hello_then_close_notify_and_fin(
) -> (ServerService, common::EventLog, TlsClient, SessionId, TlsEnd) {
    let (server, mut log, mut client, id) = hello_session();
    send_close_notify(&mut client);
    client.sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::PeerClosed);
    let (rest, end) = tls_read_to_end(&mut client);
    assert!(rest.is_empty(), "{} bytes after the echo", rest.len());
    (server, log, client, id, end)
}

/// Once session `id` has ended: waits until no session is left, checks that the stats
/// count one disconnect (`with_error` of them with an error), shuts down, and checks the
/// session's lifecycle.
fn one_disconnect_then_shutdown(
    server: ServerService,
    log: &mut common::EventLog,
    id: SessionId,
    with_error: u64,
) {
    common::wait_no_sessions(&server);
    let stats = server.stats();
    assert_eq!((stats.disconnected, stats.disconnected_with_error), (1, with_error), "{stats:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    log.check_lifecycle(id);
}

#[test]
fn every_size_from_1_byte_to_1_mib_echoes_through_tls() {
    let seed = common::seed("every_size_from_1_byte_to_1_mib_echoes_through_tls");
    let mut rng = Rng::new(seed);
    let (server, mut log) = tls_echo_server(2);
    let mut client = tls_connect(server.local_addr());
    let (id, _) = log.next_connected();
    let sizes = sizes();
    assert_eq!((sizes[0], *sizes.last().unwrap()), (1, MIB));
    let started = Instant::now();
    let mut total = 0;
    for &n in &sizes {
        let msg = rng.bytes(n);
        tls_roundtrip(&mut client, &msg);
        total += n;
    }
    eprintln!(
        "{} sizes, {total} bytes echoed in {:?} ({} backend)",
        sizes.len(),
        started.elapsed(),
        server.backend()
    );
    // Many messages in flight at once, in one write: the echo comes back in order.
    let batch: Vec<Vec<u8>> = sizes.iter().take(200).map(|&n| rng.bytes(n)).collect();
    let all: Vec<u8> = batch.concat();
    tls_roundtrip(&mut client, &all);

    send_close_notify(&mut client);
    client.sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::PeerClosed);
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let (recvs, _) = log.check_lifecycle(id);
    assert_eq!(recvs.iter().map(Vec::len).sum::<usize>(), total + all.len(), "plaintext only");
}

/// What the client sessions of the link test report.
#[derive(Debug)]
enum LinkEv {
    Connected(SessionId),
    Done(SessionId, usize),
    Disconnected(SessionId, DisconnectReason),
}

/// A TLS client session: on connect sends its stream as one message per size, checks that
/// the echo is the same stream, then disconnects itself.
struct LinkClient {
    stream: Arc<Vec<u8>>,
    sizes: Arc<Vec<usize>>,
    got: usize,
    tx: Sender<LinkEv>,
    checks: Checks,
}

impl Session for LinkClient {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send(LinkEv::Connected(ctx.id()));
        let mut at = 0;
        for &n in self.sizes.iter() {
            let sent = ctx.send(self.stream[at..at + n].to_vec());
            self.checks.check(sent.is_ok(), format_args!("{}: send: {sent:?}", ctx.id()));
            at += n;
        }
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let want = &self.stream[self.got..];
        let n = data.len().min(want.len());
        if !self.checks.check(
            data.len() <= want.len() && data == &want[..n],
            format_args!("{}: echo differs at/after byte {}", ctx.id(), self.got),
        ) {
            ctx.disconnect("test: bad echo");
            return data.len();
        }
        self.got += n;
        if self.got == self.stream.len() {
            let _ = self.tx.send(LinkEv::Done(ctx.id(), self.got));
            ctx.disconnect("done");
        }
        data.len()
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.checks.disconnected(reason);
        let _ = self.tx.send(LinkEv::Disconnected(ctx.id(), reason.clone()));
    }

    fn on_connect_failed(&mut self, addr: std::net::SocketAddr, error: &std::io::Error) {
        self.checks.check(false, format_args!("connect to {addr} failed: {error}"));
    }
}

/// The server-to-server link: a TLS `ClientService` of several sessions echoes every size
/// through a TLS `ServerService`; each client session's local disconnect (`close_notify`,
/// then FIN) is a `PeerClosed` on the server's side.
#[test]
fn a_tls_client_service_echoes_every_size_through_a_tls_server_service() {
    const SESSIONS: usize = 4;
    let seed = common::seed("a_tls_client_service_echoes_every_size_through_a_tls_server_service");
    let mut rng = Rng::new(seed);
    let (server, mut log) = tls_echo_server(2);
    // Each session sends every size up to 256 KiB, and one 1 MiB message.
    let mut sizes: Vec<usize> = sizes().into_iter().filter(|&n| n <= 256 * 1024).collect();
    sizes.push(MIB);
    for i in (1..sizes.len()).rev() {
        sizes.swap(i, rng.range(0, i));
    }
    let total: usize = sizes.iter().sum();
    let stream = Arc::new(rng.bytes(total));
    let sizes = Arc::new(sizes);
    let (tx, rx) = mpsc::channel();
    let checks = Checks::new();
    let (st, sz, c) = (stream.clone(), sizes.clone(), checks.clone());
    let started = Instant::now();
    let client = ClientService::builder(server.local_addr())
        .sessions(SESSIONS)
        .workers(2)
        .tls(pki().client.clone(), server_name())
        .start(move || LinkClient {
            stream: st.clone(),
            sizes: sz.clone(),
            got: 0,
            tx: tx.clone(),
            checks: c.clone(),
        })
        .unwrap();

    let mut connected = Vec::new();
    let mut done = HashMap::new();
    let mut reasons = HashMap::new();
    let mut seen = Vec::new();
    while reasons.len() < SESSIONS {
        common::wait_event(&rx, &mut seen, "every client session to finish", |e| {
            match e {
                LinkEv::Done(id, n) => assert!(done.insert(*id, *n).is_none(), "{id} twice"),
                LinkEv::Disconnected(id, r) => {
                    assert!(reasons.insert(*id, r.clone()).is_none(), "{id} twice")
                }
                LinkEv::Connected(id) => connected.push(*id),
            }
            Some(())
        });
    }
    eprintln!(
        "{SESSIONS} sessions echoed {total} bytes each in {:?} ({} backend); failures: {:?}",
        started.elapsed(),
        server.backend(),
        checks.failures()
    );
    checks.assert_ok();
    assert_eq!(connected.len(), SESSIONS, "{seen:?}");
    assert_eq!(done.len(), SESSIONS, "{seen:?}");
    assert!(done.values().all(|&n| n == total), "{done:?}");
    assert!(
        reasons.values().all(|r| *r == DisconnectReason::Local("done".into())),
        "client-side reasons: {reasons:?}"
    );
    // The server saw each session connect and end with an orderly TLS close.
    let mut server_sessions = Vec::new();
    for _ in 0..SESSIONS {
        server_sessions.push(log.next_connected().0);
    }
    for &id in &server_sessions {
        assert_eq!(log.disconnected(id), DisconnectReason::PeerClosed, "server session {id}");
    }
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    for &id in &server_sessions {
        let (recvs, _) = log.check_lifecycle(id);
        assert_eq!(recvs.iter().map(Vec::len).sum::<usize>(), total, "{id}: plaintext only");
    }
    checks.assert_ok();
}

#[test]
fn close_notify_then_fin_ends_the_session_with_peer_closed() {
    // The server's side ends too (no hang).
    let (server, mut log, _client, id, end) = hello_then_close_notify_and_fin();
    eprintln!("after the client's close_notify the client saw {end:?}");
    one_disconnect_then_shutdown(server, &mut log, id, 0);
}

#[test]
fn fin_without_close_notify_ends_the_session_with_truncated() {
    let (server, mut log, mut client, id) = hello_session();
    client.sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(log.disconnected(id), DisconnectReason::Tls(TlsError::Truncated));
    let (_, end, _) = raw_read_to_end(&mut client.sock, Instant::now());
    eprintln!("after the client's FIN alone the client saw {end:?}");
    one_disconnect_then_shutdown(server, &mut log, id, 1);
}

/// A local `disconnect` right after queueing megabytes: the client reads every byte, then a
/// clean `close_notify` (rustls `read` returns `Ok(0)`, not `UnexpectedEof`), then the FIN.
#[test]
fn a_local_disconnect_flushes_queued_data_then_close_notify_then_fin() {
    const FLOOD: usize = 3 * MIB;
    let expected = Arc::new(Rng::new(7).bytes(FLOOD));
    let e2 = expected.clone();
    let (factory, mut log) = recorder(Hooks::on_recv(move |ctx, data| {
        if !data.ends_with(b"!") {
            return 0; // the command is not complete yet
        }
        // Many sends of varied sizes, then the disconnect, in the same callback.
        let mut rng = Rng::new(11);
        let mut at = 0;
        while at < e2.len() {
            let n = rng.size_log(64 * 1024).min(e2.len() - at);
            ctx.send(e2[at..at + n].to_vec()).expect("queued");
            at += n;
        }
        ctx.disconnect("flood done");
        data.len()
    }));
    let server = tls_server(1, factory);
    let mut client = tls_connect(server.local_addr());
    let (id, _) = log.next_connected();
    client.write_all(b"flood!").unwrap();
    client.flush().unwrap();
    let (got, end) = tls_read_to_end(&mut client);
    assert_eq!(got.len(), FLOOD, "every queued byte arrives before the end ({end:?})");
    assert!(got == *expected, "the queued bytes arrive intact and in order");
    assert!(matches!(end, TlsEnd::CloseNotify), "a clean close_notify, got {end:?}");
    // After close_notify, the FIN (an orderly close, not a reset).
    let (rest, raw_end, _) = raw_read_to_end(&mut client.sock, Instant::now());
    assert!(rest.is_empty(), "{} raw bytes after close_notify", rest.len());
    assert_eq!(raw_end, RawEnd::Eof, "the FIN after close_notify");
    assert_eq!(log.disconnected(id), DisconnectReason::Local("flood done".into()));
    common::wait_no_sessions(&server);
    assert_eq!(server.stats().aborted, 0, "{:?}", server.stats());
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    log.check_lifecycle(id);
}

/// RFC 8446 §6.1: each party sends `close_notify` before closing its write side (unless
/// it sent an error alert). A client that sent `close_notify` and FIN and goes on reading
/// must see the server's `close_notify` before the end of the stream, not a truncation.
#[test]
fn the_server_answers_a_close_notify_with_its_own() {
    let (server, _log, _client, _id, end) = hello_then_close_notify_and_fin();
    assert!(
        matches!(end, TlsEnd::CloseNotify),
        "after the client's close_notify and FIN, the server must send close_notify before its \
         FIN; the client saw {end:?}"
    );
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// A server session's local disconnect (`close_notify`, then FIN) is an orderly close for
/// a TLS `ClientService` session: `PeerClosed`, after every byte queued before it.
#[test]
fn a_tls_client_service_session_sees_the_servers_disconnect_as_peer_closed() {
    let (factory, mut server_log) = recorder(Hooks::on_recv(|ctx, data| {
        if !data.ends_with(b"!") {
            return 0;
        }
        let _ = ctx.send(&b"goodbye"[..]);
        ctx.disconnect("asked to");
        data.len()
    }));
    let server = tls_server(1, factory);
    let (factory, mut client_log) =
        recorder(Hooks::on_recv(|_, data| data.len()).with_connected(|ctx| {
            let _ = ctx.send(&b"bye!"[..]);
        }));
    let client = ClientService::builder(server.local_addr())
        .workers(1)
        .tls(pki().client.clone(), server_name())
        .start(factory)
        .unwrap();
    let (client_id, _) = client_log.next_connected();
    let (server_id, _) = server_log.next_connected();
    assert_eq!(client_log.disconnected(client_id), DisconnectReason::PeerClosed);
    assert_eq!(server_log.disconnected(server_id), DisconnectReason::Local("asked to".into()));
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    client_log.drain();
    let (recvs, _) = client_log.check_lifecycle(client_id);
    assert_eq!(recvs.concat(), b"goodbye", "every byte queued before the disconnect");
}

/// A `ClientService` that does not accept the server's certificate (made for another name)
/// fails the handshake: no callback on either side, a handshake failure counted on both,
/// and the server's session (refused by the client's alert) ends with `tls_protocol_error`.
#[test]
fn a_tls_client_service_refuses_a_certificate_for_another_name() {
    let (factory, mut server_log) = recorder(Hooks::echo());
    let server = tls_server(1, factory);
    let (factory, mut client_log) = recorder(Hooks::echo());
    let client = ClientService::builder(server.local_addr())
        .workers(1)
        .tls(pki().client.clone(), servercore::tls::server_name("elsewhere.example").unwrap())
        .start(factory)
        .unwrap();
    common::wait_until("both sides to count the failed handshake", || {
        let (c, s) = (client.stats(), server.stats());
        if c.tls_handshake_failures == 1 && s.tls_handshake_failures == 1 && s.sessions == 0 {
            Ok(())
        } else {
            Err(format!("client {c:?}; server {s:?}"))
        }
    });
    let (c, s) = (client.stats(), server.stats());
    assert_eq!((c.tls_handshakes, s.tls_handshakes), (0, 0), "client {c:?}; server {s:?}");
    assert_eq!((c.disconnected, s.disconnected), (0, 0), "client {c:?}; server {s:?}");
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    client_log.drain();
    server_log.drain();
    assert!(client_log.seen.is_empty(), "client callbacks: {:?}", client_log.seen);
    assert!(server_log.seen.is_empty(), "server callbacks: {:?}", server_log.seen);
}

/// How the rustls server of [`rustls_server_once`] ends its connection.
#[derive(Debug, Clone, Copy)]
enum ServerEnd {
    /// `close_notify`, then FIN.
    CloseNotify,
    /// FIN alone.
    Fin,
    /// Accepts and never speaks (the client's handshake cannot finish).
    Silent,
}

/// A plain rustls server (std listener, one connection): completes the handshake, sends
/// "hi", then ends as told; returns the listener's address and the thread.
fn rustls_server_once(end: ServerEnd) -> (std::net::SocketAddr, std::thread::JoinHandle<()>) {
    let listener = std::net::TcpListener::bind(any_port()).unwrap();
    let addr = listener.local_addr().unwrap();
    let t = std::thread::spawn(move || {
        let (sock, _) = listener.accept().unwrap();
        sock.set_read_timeout(Some(common::TIMEOUT)).unwrap();
        if let ServerEnd::Silent = end {
            // Hold the connection until the client gives up.
            let _ = raw_read_to_end(&mut { sock }, Instant::now());
            return;
        }
        let conn = servercore::tls::rustls::ServerConnection::new(pki().server.clone()).unwrap();
        let mut s = servercore::tls::rustls::StreamOwned::new(conn, sock);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).expect("the server's handshake");
        }
        s.write_all(b"hi").unwrap();
        s.flush().unwrap();
        if let ServerEnd::CloseNotify = end {
            s.conn.send_close_notify();
            s.flush().unwrap();
        }
        s.sock.shutdown(Shutdown::Write).unwrap();
        let _ = raw_read_to_end(&mut s.sock, Instant::now());
    });
    (addr, t)
}

/// The client side of the close semantics: a TLS `ClientService` session whose server
/// sends `close_notify` then FIN ends with `PeerClosed`; with a FIN alone, `Truncated`;
/// a server that never answers the handshake fails it at `tls_handshake_timeout`, with no
/// callback.
#[test]
fn a_tls_client_service_session_tells_close_notify_from_truncation() {
    for (end, want) in [
        (ServerEnd::CloseNotify, Some(DisconnectReason::PeerClosed)),
        (ServerEnd::Fin, Some(DisconnectReason::Tls(TlsError::Truncated))),
        (ServerEnd::Silent, None),
    ] {
        let (addr, server) = rustls_server_once(end);
        let (factory, mut log) = recorder(Hooks::on_recv(|_, data| data.len()));
        let client = ClientService::builder(addr)
            .workers(1)
            .session_config(servercore::SessionConfig {
                tls_handshake_timeout: Duration::from_millis(300),
                ..Default::default()
            })
            .tls(pki().client.clone(), server_name())
            .start(factory)
            .unwrap();
        match want {
            Some(reason) => {
                let (id, _) = log.next_connected();
                assert_eq!(log.disconnected(id), reason, "{end:?}");
                log.wait_recv_len(id, 2);
                client.shutdown(Duration::from_secs(5)).unwrap();
                log.drain();
                let (recvs, _) = log.check_lifecycle(id);
                assert_eq!(recvs.concat(), b"hi", "{end:?}");
            }
            None => {
                common::wait_until("the client's handshake to time out", || {
                    let s = client.stats();
                    if s.tls_handshake_failures == 1 && s.sessions == 0 {
                        Ok(())
                    } else {
                        Err(format!("{s:?}"))
                    }
                });
                client.shutdown(Duration::from_secs(5)).unwrap();
                log.drain();
                assert!(log.seen.is_empty(), "{end:?}: no callback: {:?}", log.seen);
            }
        }
        server.join().expect("the rustls server");
    }
}
