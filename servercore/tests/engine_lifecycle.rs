//! Session lifecycle: `on_connected` first, `on_recv`s, then exactly one
//! `on_disconnected` with the right reason, for every way a session can end; handles
//! after the end; connect failures; graceful flush on local disconnect and shutdown.

mod common;

use common::{any_port, connect, read_to_end, recorder, roundtrip, End, Hooks, TIMEOUT};
use servercore::{
    ClientService, Ctx, DisconnectReason, SendError, ServerService, Session, SessionId,
};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

fn concat(chunks: &[Vec<u8>]) -> Vec<u8> {
    chunks.concat()
}

fn local(why: &'static str) -> DisconnectReason {
    DisconnectReason::Local(why.into())
}

#[test]
fn peer_close_ends_session_once_with_peer_closed() {
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    roundtrip(&mut c, b"hello");
    roundtrip(&mut c, b" world");
    let (id, handle) = log.next_connected();
    drop(c);
    assert_eq!(log.disconnected(id), DisconnectReason::PeerClosed);
    assert!(!handle.is_connected());
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let (recvs, reason) = log.check_lifecycle(id);
    assert_eq!(reason, DisconnectReason::PeerClosed);
    assert_eq!(concat(&recvs), b"hello world");
}

#[test]
fn local_disconnect_from_callback_ends_session_once() {
    let flags = Arc::new(Mutex::new(Vec::new()));
    let f = flags.clone();
    let hooks = Hooks::on_recv(move |ctx, data| {
        if data.ends_with(b"bye") {
            let _ = ctx.send(&b"ok"[..]);
            ctx.disconnect("client said bye");
            // Once a disconnect is requested the session is no longer open, and later
            // sends are refused.
            f.lock().unwrap().push((ctx.is_connected(), ctx.send(&b"late"[..])));
            return data.len();
        }
        let _ = ctx.send(data.to_vec());
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    roundtrip(&mut c, b"ping");
    c.write_all(b"bye").unwrap();
    let (rest, end) = read_to_end(&mut c);
    assert_eq!(rest, b"ok");
    assert!(matches!(end, End::Eof), "{end:?}");
    let (id, _) = log.next_connected();
    assert_eq!(log.disconnected(id), local("client said bye"));
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let (recvs, reason) = log.check_lifecycle(id);
    assert_eq!(reason, local("client said bye"));
    assert_eq!(concat(&recvs), b"pingbye");
    assert_eq!(*flags.lock().unwrap(), vec![(false, Err(SendError::Disconnected))]);
}

#[test]
fn disconnect_via_handle_from_another_thread() {
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    roundtrip(&mut c, b"x");
    let (id, handle) = log.next_connected();
    assert_eq!(handle.id(), id);
    assert_eq!(handle.peer_addr(), c.local_addr().unwrap());
    assert!(handle.is_connected());

    // Sends and the disconnect come from another thread, in that order.
    let h = handle.clone();
    std::thread::spawn(move || {
        h.send(&b"pushed"[..]).unwrap();
        h.disconnect("from another thread").unwrap();
    })
    .join()
    .unwrap();
    let (bytes, end) = read_to_end(&mut c);
    assert_eq!(bytes, b"pushed");
    assert!(matches!(end, End::Eof), "{end:?}");
    assert_eq!(log.disconnected(id), local("from another thread"));
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let (recvs, reason) = log.check_lifecycle(id);
    assert_eq!(reason, local("from another thread"));
    assert_eq!(concat(&recvs), b"x");
}

#[test]
fn reset_by_peer_is_reported_as_reset() {
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    roundtrip(&mut c, b"abc");
    let (id, handle) = log.next_connected();
    common::set_linger_zero(&c).unwrap();
    drop(c); // RST
    assert_eq!(log.disconnected(id), DisconnectReason::Reset);
    assert!(!handle.is_connected());
    common::wait_no_sessions(&server);
    let stats = server.stats();
    assert_eq!((stats.disconnected, stats.disconnected_with_error), (1, 1), "{stats:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let (recvs, reason) = log.check_lifecycle(id);
    assert_eq!(reason, DisconnectReason::Reset);
    assert_eq!(concat(&recvs), b"abc");
}

#[test]
fn server_shutdown_ends_every_session_with_shutdown() {
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut clients: Vec<_> = (0..4).map(|_| connect(server.local_addr())).collect();
    let mut ids = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        roundtrip(c, format!("client {i}").as_bytes());
        ids.push(log.next_connected().0);
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
    for c in &mut clients {
        let (bytes, end) = read_to_end(c);
        assert!(bytes.is_empty());
        assert!(matches!(end, End::Eof), "{end:?}");
    }
    log.drain();
    for id in ids {
        let (_, reason) = log.check_lifecycle(id);
        assert_eq!(reason, DisconnectReason::Shutdown, "{id}");
    }
}

#[test]
fn client_session_lifecycle_when_server_closes() {
    // The server disconnects each client session when it receives "close".
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(|| {
            struct CloseOnRequest;
            impl Session for CloseOnRequest {
                fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
                    ctx.disconnect("asked to");
                    data.len()
                }
            }
            CloseOnRequest
        })
        .unwrap();
    let hooks = Hooks::on_recv(|_, d| d.len()).with_connected(|ctx| {
        ctx.send(&b"close"[..]).unwrap();
    });
    let (factory, mut log) = recorder(hooks);
    let client =
        ClientService::builder(server.local_addr()).sessions(3).workers(2).start(factory).unwrap();
    let ids: Vec<SessionId> = (0..3).map(|_| log.next_connected().0).collect();
    for &id in &ids {
        assert_eq!(log.disconnected(id), DisconnectReason::PeerClosed, "{id}");
    }
    wait_until_client_empty(&client);
    let stats = client.stats();
    assert_eq!((stats.connected, stats.disconnected), (3, 3), "{stats:?}");
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    for id in ids {
        let (recvs, reason) = log.check_lifecycle(id);
        assert!(recvs.is_empty());
        assert_eq!(reason, DisconnectReason::PeerClosed);
    }
}

fn wait_until_client_empty(client: &ClientService) {
    common::wait_until("the client's session count to reach 0", || {
        let n = client.session_count();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} sessions"))
        }
    });
}

#[test]
fn handle_send_after_disconnect_is_refused() {
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();

    // After a peer close.
    let mut c = connect(server.local_addr());
    roundtrip(&mut c, b"1");
    let (id, handle) = log.next_connected();
    drop(c);
    log.disconnected(id);
    assert!(!handle.is_connected());
    assert_eq!(handle.send(&b"too late"[..]), Err(SendError::Disconnected));
    assert_eq!(handle.disconnect("too late"), Err(SendError::Disconnected));

    // After a disconnect through the handle itself.
    let mut c2 = connect(server.local_addr());
    roundtrip(&mut c2, b"2");
    let (id2, handle2) = log.next_connected();
    handle2.disconnect("enough").unwrap();
    log.disconnected(id2);
    assert!(!handle2.is_connected());
    assert_eq!(handle2.send(&b"too late"[..]), Err(SendError::Disconnected));
    let (bytes, _) = read_to_end(&mut c2);
    assert!(bytes.is_empty(), "nothing sent after the disconnect may arrive");

    // After the service is gone (its workers ended).
    let mut c3 = connect(server.local_addr());
    roundtrip(&mut c3, b"3");
    let (_, handle3) = log.next_connected();
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert!(!handle3.is_connected());
    assert_eq!(handle3.send(&b"too late"[..]), Err(SendError::Disconnected));
    assert_eq!(handle3.disconnect("too late"), Err(SendError::Disconnected));
}

// ----- connect failure -----------------------------------------------------------------

#[derive(Debug)]
enum ClientEv {
    Connected,
    Failed(SocketAddr, ErrorKind),
    Disconnected,
    Dropped,
}

struct Reporter(mpsc::Sender<ClientEv>);

impl Session for Reporter {
    fn on_connected(&mut self, _ctx: &mut Ctx<'_>) {
        let _ = self.0.send(ClientEv::Connected);
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, _reason: &DisconnectReason) {
        let _ = self.0.send(ClientEv::Disconnected);
    }
    fn on_connect_failed(&mut self, addr: SocketAddr, error: &std::io::Error) {
        let _ = self.0.send(ClientEv::Failed(addr, error.kind()));
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        let _ = self.0.send(ClientEv::Dropped);
    }
}

#[test]
fn connect_refused_is_reported_as_failure() {
    let addr = {
        let l = TcpListener::bind(any_port()).unwrap();
        l.local_addr().unwrap()
    }; // dropped: nothing listens there now
    let (tx, rx) = mpsc::channel();
    let client = ClientService::builder(addr)
        .sessions(1)
        .workers(1)
        .start(move || Reporter(tx.clone()))
        .unwrap();
    match rx.recv_timeout(TIMEOUT) {
        Ok(ClientEv::Failed(a, kind)) => {
            assert_eq!(a, addr);
            assert_eq!(kind, ErrorKind::ConnectionRefused);
        }
        other => panic!("expected on_connect_failed, got {other:?}"),
    }
    // The session object is dropped without any other callback.
    match rx.recv_timeout(TIMEOUT) {
        Ok(ClientEv::Dropped) => {}
        other => panic!("expected the failed session to be dropped, got {other:?}"),
    }
    wait_until_client_empty(&client);
    let stats = client.stats();
    assert_eq!(stats.connect_failures, 1, "{stats:?}");
    assert_eq!(stats.connected, 0, "{stats:?}");
    assert_eq!(stats.disconnected, 0, "{stats:?}");
    client.shutdown(Duration::from_secs(5)).unwrap();
    let rest: Vec<_> = rx.try_iter().collect();
    assert!(rest.is_empty(), "no callback after a failed connect: {rest:?}");
}

// ----- graceful flush ------------------------------------------------------------------

/// On "go", queues `PAYLOAD` bytes in many sends and disconnects in the same callback.
const PAYLOAD: usize = 4 << 20;

fn payload() -> Vec<u8> {
    let mut rng = common::Rng::new(0x5EED);
    rng.bytes(PAYLOAD)
}

#[test]
fn send_then_disconnect_in_same_callback_flushes_everything() {
    let data = Arc::new(payload());
    let d = data.clone();
    let hooks = Hooks::on_recv(move |ctx, input| {
        if input != b"go" {
            return 0; // wait for the whole command
        }
        for chunk in d.chunks(64 * 1024 + 7) {
            ctx.send(chunk.to_vec()).unwrap();
        }
        ctx.disconnect("sent everything");
        input.len()
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    c.write_all(b"go").unwrap();
    let (got, end) = read_to_end(&mut c);
    assert_eq!(got.len(), data.len(), "all queued bytes must arrive before the close");
    assert!(got == *data, "the flushed bytes differ from what was sent");
    assert!(matches!(end, End::Eof), "expected an orderly close, got {end:?}");
    let (id, _) = log.next_connected();
    assert_eq!(log.disconnected(id), local("sent everything"));
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    assert_eq!(log.check_lifecycle(id).1, local("sent everything"));
}

#[test]
fn sends_from_on_disconnected_are_flushed_on_local_disconnect() {
    let hooks = Hooks::on_recv(|ctx, input| {
        ctx.send(&b"reply;"[..]).unwrap();
        ctx.disconnect("done");
        input.len()
    })
    .with_disconnected(|ctx, reason| {
        let _ = ctx.send(format!("farewell: {}", reason.label()));
    });
    let (factory, _log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    c.write_all(b"hi").unwrap();
    let (got, end) = read_to_end(&mut c);
    assert_eq!(String::from_utf8_lossy(&got), "reply;farewell: local");
    assert!(matches!(end, End::Eof), "{end:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn sends_from_on_disconnected_are_flushed_on_shutdown() {
    let hooks = Hooks::echo().with_disconnected(|ctx, reason| {
        let _ = ctx.send(format!("farewell: {}", reason.label()));
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut clients: Vec<_> = (0..3).map(|_| connect(server.local_addr())).collect();
    for c in &mut clients {
        roundtrip(c, b"hi");
        log.next_connected();
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
    for c in &mut clients {
        let (got, end) = read_to_end(c);
        assert_eq!(String::from_utf8_lossy(&got), "farewell: shutdown");
        assert!(matches!(end, End::Eof), "{end:?}");
    }
}

#[test]
fn shutdown_flushes_data_queued_by_handles() {
    // Data a handle queued just before the shutdown goes out before the close.
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    roundtrip(&mut c, b"hi");
    let (_, handle) = log.next_connected();
    let data = payload();
    handle.send(data.clone()).unwrap();
    // The client reads while the server shuts down (the payload is larger than the
    // socket buffers).
    let reader = std::thread::spawn(move || read_to_end(&mut c));
    server.shutdown(Duration::from_secs(10)).unwrap();
    let (got, end) = reader.join().unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
    assert!(matches!(end, End::Eof), "{end:?}");
}

#[test]
fn on_connected_runs_before_any_on_recv_even_when_data_is_waiting() {
    // The client writes before the server has even accepted; the first callback must still
    // be on_connected, and the bytes must all be presented.
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut clients = Vec::new();
    for i in 0..20 {
        let mut c = connect(server.local_addr());
        c.write_all(format!("early {i:02}").as_bytes()).unwrap();
        clients.push(c);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let mut back = [0u8; 8];
        c.read_exact(&mut back).unwrap();
        assert_eq!(&back, format!("early {i:02}").as_bytes());
    }
    drop(clients);
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let sessions = log.by_session();
    assert_eq!(sessions.len(), 20);
    for id in sessions.keys() {
        let (recvs, reason) = log.check_lifecycle(*id);
        assert_eq!(concat(&recvs).len(), 8);
        assert_eq!(reason, DisconnectReason::PeerClosed);
    }
}

#[test]
fn greeting_then_disconnect_from_on_connected() {
    let hooks = Hooks::echo().with_connected(|ctx| {
        ctx.send(&b"welcome, and goodbye"[..]).unwrap();
        ctx.disconnect("server full");
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    let (got, end) = read_to_end(&mut c);
    assert_eq!(got, b"welcome, and goodbye");
    assert!(matches!(end, End::Eof), "{end:?}");
    let (id, _) = log.next_connected();
    assert_eq!(log.disconnected(id), local("server full"));
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let (recvs, _) = log.check_lifecycle(id);
    assert!(recvs.is_empty());
}

#[test]
fn local_disconnect_gives_up_flushing_after_close_flush_timeout() {
    // The client never reads: the queued data cannot all go out, and the session must still
    // end (once, with its local reason) shortly after `close_flush_timeout`.
    let hooks = Hooks::on_recv(|ctx, data| {
        for _ in 0..64 {
            ctx.send(vec![1u8; 256 * 1024]).unwrap();
        }
        ctx.disconnect("flood then close");
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let config = servercore::SessionConfig {
        close_flush_timeout: Duration::from_millis(200),
        ..Default::default()
    };
    let server = ServerService::builder(any_port())
        .workers(2)
        .session_config(config)
        .start(factory)
        .unwrap();
    let mut c = connect(server.local_addr());
    c.write_all(b"go").unwrap();
    let (id, _) = log.next_connected();
    assert_eq!(log.disconnected(id), local("flood then close"));
    let started = std::time::Instant::now();
    common::wait_no_sessions(&server);
    eprintln!("slot freed {:?} after on_disconnected", started.elapsed());
    // The connection is closed: reading drains what was sent, then ends.
    let (got, end) = read_to_end(&mut c);
    assert!(got.len() < 64 * 256 * 1024, "the flush should have been cut short");
    assert!(got.iter().all(|&b| b == 1));
    eprintln!("client read {} bytes, then {end:?}", got.len());
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    assert_eq!(log.check_lifecycle(id).1, local("flood then close"));
}

#[test]
fn shutdown_with_a_stalled_peer_ends_in_bounded_time() {
    // The client never reads and the session has far more queued than the socket buffers
    // hold: shutdown must give up flushing at its deadline, still call on_disconnected
    // once, and return.
    let hooks = Hooks::on_recv(|ctx, data| {
        for _ in 0..32 {
            ctx.send(vec![2u8; 512 * 1024]).unwrap();
        }
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut c = connect(server.local_addr());
    c.write_all(b"go").unwrap();
    let (id, _) = log.next_connected();
    log.wait_recv_len(id, 2);
    let started = std::time::Instant::now();
    server.shutdown(Duration::from_millis(300)).unwrap();
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "shutdown took {took:?}");
    eprintln!("shutdown with a stalled peer took {took:?}");
    log.drain();
    assert_eq!(log.check_lifecycle(id).1, DisconnectReason::Shutdown);
    drop(c);
}
