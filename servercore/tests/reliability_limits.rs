//! Flood limits and abrupt peers (issue 6): the per-IP session cap, the accept-rate limit,
//! a peer's half-close, and a peer that resets the connection while the server is in the
//! middle of sending to it (gather writes of many buffers in flight).

mod common;

use common::{
    any_port, connect, read_to_end, recorder, roundtrip, set_linger_zero, End, Hooks, TIMEOUT,
};
use servercore::{Ctx, DisconnectReason, ServerService, Session, SessionConfig};
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::mpsc::{self, Sender};
use std::time::{Duration, Instant};

/// Echoes everything.
struct Echo;

impl Session for Echo {
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let _ = ctx.send(data.to_vec());
        data.len()
    }
}

/// Whether the server serves this connection: a round trip works (true), or the server
/// closed it at once (false).
fn served(s: &mut TcpStream) -> bool {
    if s.write_all(b"ping").is_err() {
        return false;
    }
    let mut back = [0u8; 4];
    match s.read(&mut back) {
        Ok(0) => false,
        Ok(n) => {
            s.read_exact(&mut back[n..]).expect("the rest of the echo");
            assert_eq!(&back, b"ping");
            true
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            panic!("a connection was neither served nor closed within {TIMEOUT:?}")
        }
        Err(_) => false, // reset
    }
}

fn wait_sessions(server: &ServerService, n: usize) {
    common::wait_until(&format!("{n} sessions"), || {
        let now = server.session_count();
        if now == n {
            Ok(())
        } else {
            Err(format!("{now} sessions"))
        }
    });
}

#[test]
fn the_fourth_connection_from_one_ip_is_closed_at_once() {
    let server = ServerService::builder(any_port())
        .workers(2)
        .max_sessions_per_ip(3)
        .start(|| Echo)
        .unwrap();
    let addr = server.local_addr();
    let mut three: Vec<TcpStream> = (0..3).map(|_| connect(addr)).collect();
    for c in &mut three {
        roundtrip(c, b"one of three");
    }
    let mut fourth = connect(addr);
    let (data, end) = read_to_end(&mut fourth);
    assert!(data.is_empty(), "the fourth connection got {data:?}");
    eprintln!("the fourth connection ended with {end:?}");
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.rejected, stats.sessions), (3, 1, 3), "{stats:?}");

    // The three are still served; one leaves, and its place is free again.
    for c in &mut three {
        roundtrip(c, b"still served");
    }
    three.pop();
    wait_sessions(&server, 2);
    let mut again = connect(addr);
    roundtrip(&mut again, b"a free place");
    let mut over = connect(addr);
    assert!(!served(&mut over), "a fourth connection again");
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.rejected, stats.sessions), (4, 2, 3), "{stats:?}");
    drop((three, again, over));
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_burst_over_the_accept_rate_is_mostly_rejected_and_the_accepted_are_served() {
    const BURST: usize = 300;
    const RATE: u32 = 50;
    let t0 = Instant::now();
    let server =
        ServerService::builder(any_port()).workers(2).max_accept_rate(RATE).start(|| Echo).unwrap();
    let addr = server.local_addr();
    let mut clients: Vec<TcpStream> = (0..BURST).map(|_| connect(addr)).collect();
    let burst_took = t0.elapsed();
    common::wait_until("every connection of the burst to be accepted or rejected", || {
        let s = server.stats();
        if (s.accepted + s.rejected) as usize == BURST {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    // Every token the server could have had by now: the bucket starts with one second's
    // worth (RATE, shared by the workers) and refills at RATE per second.
    let t = t0.elapsed().as_secs_f64();
    let most = (f64::from(RATE) * (1.0 + t)).ceil() as u64 + 2;
    let stats = server.stats();
    eprintln!(
        "burst of {BURST} in {burst_took:?}, counted after {t:.3} s: {stats:?} (most {most})"
    );
    assert!(stats.accepted <= most, "accepted {} > {most}", stats.accepted);
    assert!(stats.accepted >= u64::from(RATE) / 2, "{stats:?}");
    assert!(stats.rejected >= BURST as u64 - most, "{stats:?}");

    // The accepted connections are served; the rejected ones were closed.
    let served_count = clients.iter_mut().map(served).filter(|s| *s).count();
    assert_eq!(served_count as u64, stats.accepted, "{stats:?}");
    // Once the bucket has refilled a little, new connections are accepted again.
    let mut retries = 0;
    loop {
        let mut c = connect(addr);
        if served(&mut c) {
            break;
        }
        retries += 1;
        assert!(retries < 100, "no connection accepted after the burst");
        std::thread::sleep(Duration::from_millis(1000 / u64::from(RATE)));
    }
    drop(clients);
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn half_close_by_the_peer_ends_the_session_once_with_peer_closed() {
    let (factory, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut clients: Vec<TcpStream> = (0..10).map(|_| connect(server.local_addr())).collect();
    let mut ids = Vec::new();
    for (i, c) in clients.iter_mut().enumerate() {
        roundtrip(c, format!("half {i}").as_bytes());
        ids.push(log.next_connected().0);
    }
    for c in &mut clients {
        c.shutdown(Shutdown::Write).unwrap();
    }
    for c in &mut clients {
        let (rest, end) = read_to_end(c);
        assert!(rest.is_empty());
        assert!(matches!(end, End::Eof), "the server closes in order: {end:?}");
    }
    for id in &ids {
        assert_eq!(log.disconnected(*id), DisconnectReason::PeerClosed);
    }
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    for id in ids {
        let (_, reason) = log.check_lifecycle(id);
        assert_eq!(reason, DisconnectReason::PeerClosed);
    }
}

/// What the fire-hose sessions report.
enum FEv {
    Disconnected(u16, DisconnectReason, u64),
    Double(u16),
}

/// On any byte, sends without end: keeps about 256 KiB queued in 1 KiB buffers, so every
/// write is a gather write of many buffers.
struct FireHose {
    events: Sender<FEv>,
    port: u16,
    on: bool,
    sent: u64,
    done: bool,
}

impl FireHose {
    fn top_up(&mut self, ctx: &mut Ctx<'_>) {
        while self.on && ctx.send_queue_bytes() < 256 * 1024 {
            if ctx.send(vec![(self.sent % 251) as u8; 1024]).is_err() {
                return;
            }
        }
    }
}

impl Session for FireHose {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.port = ctx.peer_addr().port();
    }
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        self.on = true;
        self.top_up(ctx);
        data.len()
    }
    fn on_send(&mut self, ctx: &mut Ctx<'_>, bytes: usize) {
        self.sent += bytes as u64;
        self.top_up(ctx);
    }
    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if std::mem::replace(&mut self.done, true) {
            let _ = self.events.send(FEv::Double(self.port));
        }
        let _ = self.events.send(FEv::Disconnected(self.port, reason.clone(), self.sent));
    }
}

#[test]
fn reset_in_the_middle_of_sending_ends_the_session_once_with_reset() {
    const CLIENTS: usize = 16;
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(2)
        .session_config(SessionConfig::default())
        .start(move || FireHose { events: tx.clone(), port: 0, on: false, sent: 0, done: false })
        .unwrap();
    let addr: SocketAddr = server.local_addr();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|i| {
            std::thread::spawn(move || {
                let mut c = connect(addr);
                let port = c.local_addr().unwrap().port();
                c.write_all(b"go").unwrap();
                // Take half a megabyte: the server is sending flat out.
                let mut buf = vec![0u8; 64 * 1024];
                let mut got = 0;
                while got < 512 * 1024 {
                    let n = c.read(&mut buf).expect("the fire hose");
                    assert!(n > 0);
                    got += n;
                }
                if i % 2 == 1 {
                    // Stop reading first, so that the server's send is blocked (in flight)
                    // when the reset arrives.
                    std::thread::sleep(Duration::from_millis(20));
                }
                set_linger_zero(&c).unwrap();
                drop(c);
                port
            })
        })
        .collect();
    let ports: Vec<u16> = threads.into_iter().map(|t| t.join().expect("client")).collect();

    let mut reasons = std::collections::HashMap::new();
    let deadline = Instant::now() + TIMEOUT;
    while reasons.len() < CLIENTS {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(FEv::Disconnected(p, r, sent)) => {
                assert!(reasons.insert(p, (r, sent)).is_none(), "port {p}: on_disconnected twice");
            }
            Ok(FEv::Double(p)) => panic!("port {p}: on_disconnected twice"),
            Err(e) => panic!("only {} sessions ended ({e:?})", reasons.len()),
        }
    }
    common::wait_no_sessions(&server);
    for p in &ports {
        let (r, sent) = &reasons[p];
        eprintln!("port {p}: {r} after {} KiB", sent / 1024);
        assert!(
            matches!(r, DisconnectReason::Reset | DisconnectReason::Os { .. }),
            "port {p}: a reset mid-send ended with {r}"
        );
        assert!(*sent >= 512 * 1024);
    }
    let stats = server.stats();
    assert_eq!((stats.accepted, stats.disconnected), (CLIENTS as u64, CLIENTS as u64));
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert!(rx.try_recv().is_err(), "no callback after the end");
}
