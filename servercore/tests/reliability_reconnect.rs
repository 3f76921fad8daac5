//! `ClientService` reconnect and connect timeout (issue 6): the server goes away and comes
//! back on the same port; the client sessions notice, fail to connect while it is down
//! (reported through `on_connect_failed`), back off without spinning, and reconnect once it
//! is back, within the backoff's maximum. A connect that gets no answer fails with
//! `TimedOut` after `connect_timeout`.

mod common;

use common::{any_port, TIMEOUT};
use servercore::{ClientService, Ctx, DisconnectReason, Reconnect, ServerService, Session};
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

#[derive(Debug)]
enum LEv {
    Connected,
    Failed(Instant, ErrorKind),
    Disconnected(DisconnectReason),
}

/// A server-to-server link: reports its lifecycle.
struct Link(Sender<LEv>);

impl Session for Link {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx.send(&b"hello"[..]);
        let _ = self.0.send(LEv::Connected);
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.0.send(LEv::Disconnected(reason.clone()));
    }
    fn on_connect_failed(&mut self, _addr: SocketAddr, error: &io::Error) {
        let _ = self.0.send(LEv::Failed(Instant::now(), error.kind()));
    }
}

/// The server end: swallows what it gets.
struct Sink;

impl Session for Sink {
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

/// Every client event so far, and waits for more.
struct Log {
    rx: Receiver<LEv>,
    seen: Vec<LEv>,
}

impl Log {
    fn count(&self, f: impl Fn(&LEv) -> bool) -> usize {
        self.seen.iter().filter(|e| f(e)).count()
    }

    fn wait(&mut self, what: &str, f: impl Fn(&LEv) -> bool, n: usize) {
        let deadline = Instant::now() + TIMEOUT;
        while self.count(&f) < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => self.seen.push(e),
                Err(e) => panic!("waiting for {n} × {what} ({e:?}); events: {:#?}", self.seen),
            }
        }
    }

    fn failures(&self) -> Vec<(Instant, ErrorKind)> {
        self.seen
            .iter()
            .filter_map(|e| if let LEv::Failed(t, k) = e { Some((*t, *k)) } else { None })
            .collect()
    }
}

/// Binds a server on `addr`, retrying for a moment while something else holds the port.
fn start_sink_on(addr: SocketAddr) -> ServerService {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match ServerService::builder(addr).workers(1).start(|| Sink) {
            Ok(s) => return s,
            Err(e) if e.kind() == ErrorKind::AddrInUse && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("cannot restart the server on {addr}: {e}"),
        }
    }
}

#[test]
fn client_sessions_reconnect_with_backoff_when_the_server_comes_back() {
    const N: usize = 6;
    let initial = Duration::from_millis(20);
    let max = Duration::from_millis(200);

    let server = ServerService::builder(any_port()).workers(1).start(|| Sink).unwrap();
    let addr = server.local_addr();
    let (tx, rx) = mpsc::channel();
    let client = ClientService::builder(addr)
        .sessions(N)
        .workers(2)
        .connect_timeout(Duration::from_secs(2))
        .reconnect(Reconnect { initial, max, jitter: true })
        .start(move || Link(tx.clone()))
        .unwrap();
    let mut log = Log { rx, seen: Vec::new() };
    let connected = |e: &LEv| matches!(e, LEv::Connected);
    let failed = |e: &LEv| matches!(e, LEv::Failed(..));
    let lost = |e: &LEv| matches!(e, LEv::Disconnected(_));
    log.wait("on_connected", connected, N);
    common::wait_until("the server to hold every link", || {
        let n = server.session_count();
        if n == N {
            Ok(())
        } else {
            Err(format!("{n} sessions"))
        }
    });

    // The server goes away: every link is lost, then reconnects fail while it is down.
    let down_at = Instant::now();
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.wait("on_disconnected", lost, N);
    for e in &log.seen {
        if let LEv::Disconnected(r) = e {
            assert!(
                matches!(r, DisconnectReason::PeerClosed | DisconnectReason::Reset),
                "a lost link: {r}"
            );
        }
    }
    // Long enough down for the backoff to reach its maximum a few times over.
    log.wait("on_connect_failed", failed, 4 * N);
    let down_for = down_at.elapsed();
    let failures_while_down = log.failures();
    assert!(
        failures_while_down.iter().all(|(_, k)| *k == ErrorKind::ConnectionRefused),
        "{failures_while_down:?}"
    );

    // Back on the same port.
    let server = start_sink_on(addr);
    let back_at = Instant::now();
    log.wait("on_connected after the restart", connected, 2 * N);
    let took = back_at.elapsed();
    common::wait_until("the new server to hold every link", || {
        let n = server.session_count();
        if n == N {
            Ok(())
        } else {
            Err(format!("{n} sessions"))
        }
    });
    let all_failures = log.failures();
    eprintln!(
        "{} connect failures while down for {down_for:?} ({} in all); all {N} links back {took:?} \
         after the restart",
        failures_while_down.len(),
        all_failures.len()
    );

    // Backoff, not a spin: each chain waits at least initial / 2 (jitter) between tries,
    // so N chains make at most N × (down / (initial / 2) + 1) tries.
    let bound = N * (down_for.as_millis() as usize / (initial.as_millis() as usize / 2) + 1);
    assert!(
        all_failures.len() <= bound,
        "{} connect failures in {down_for:?}: no backoff? (bound {bound})",
        all_failures.len()
    );
    // Reconnected within the longest backoff, plus generous time to connect.
    assert!(took < max + Duration::from_secs(2), "took {took:?} to reconnect");

    let stats = client.stats();
    assert_eq!(stats.connected as usize, 2 * N, "{stats:?}");
    assert_eq!(stats.connect_failures as usize, all_failures.len(), "{stats:?}");
    assert_eq!(stats.sessions, N, "{stats:?}");
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn a_connect_that_gets_no_answer_times_out() {
    use socket2::{Domain, Socket, Type};
    // A listener with a backlog of one that never accepts: once its queue is full the
    // kernel drops further SYNs, so a connect neither succeeds nor fails by itself.
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    listener.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    listener.listen(1).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let fillers: Vec<Socket> = (0..8)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            s.set_nonblocking(true).unwrap();
            let _ = s.connect(&addr.into()); // EINPROGRESS for the ones left hanging
            s
        })
        .collect();

    let (tx, rx) = mpsc::channel();
    let timeout = Duration::from_millis(300);
    let started = Instant::now();
    let client = ClientService::builder(addr)
        .sessions(1)
        .workers(1)
        .connect_timeout(timeout)
        .start(move || Link(tx.clone()))
        .unwrap();
    let mut log = Log { rx, seen: Vec::new() };
    log.wait("on_connect_failed", |e| matches!(e, LEv::Failed(..)), 1);
    let took = started.elapsed();
    assert_eq!(log.failures()[0].1, ErrorKind::TimedOut, "{:?}", log.seen);
    assert!(took >= timeout, "failed after {took:?}, before the timeout");
    assert!(took < timeout + Duration::from_secs(3), "failed only after {took:?}");
    assert_eq!(log.count(|e| matches!(e, LEv::Connected)), 0);
    common::wait_until("the failed session to be gone", || {
        let s = client.stats();
        if s.sessions == 0 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    assert_eq!(client.stats().connect_failures, 1);
    client.shutdown(Duration::from_secs(5)).unwrap();
    drop(fillers);
}
