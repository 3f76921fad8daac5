//! No leak of sessions or file descriptors over thousands of connect/disconnect cycles
//! ending in every way (clean close, reset, server-side close, close before any byte).
//!
//! The fd count is process-wide, so this binary holds exactly one test.

mod common;

use common::{
    any_port, connect, open_fd_count, read_to_end, roundtrip, set_linger_zero, wait_until, Checks,
    Rng,
};
use servercore::{ClientService, Ctx, DisconnectReason, ServerService, Session};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    disconnected: AtomicUsize,
    reasons: Mutex<Vec<DisconnectReason>>,
    /// What the callbacks check, asserted by the test thread.
    checks: Checks,
}

/// Echoes; a "q" makes it disconnect itself.
struct Cycle {
    counters: Arc<Counters>,
    done: bool,
}

impl Session for Cycle {
    fn on_connected(&mut self, _ctx: &mut Ctx<'_>) {
        self.counters.connected.fetch_add(1, Ordering::SeqCst);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if data.ends_with(b"q") {
            ctx.disconnect("quit");
        } else {
            let _ = ctx.send(data.to_vec());
        }
        data.len()
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.counters.checks.check(!self.done, "on_disconnected twice");
        self.done = true;
        self.counters.disconnected.fetch_add(1, Ordering::SeqCst);
        self.counters.reasons.lock().unwrap().push(reason.clone());
    }
}

/// A client session that asks the server to close it as soon as it is connected.
struct Quitter(Arc<Counters>);

impl Session for Quitter {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.0.connected.fetch_add(1, Ordering::SeqCst);
        let _ = ctx.send(&b"q"[..]);
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.0.disconnected.fetch_add(1, Ordering::SeqCst);
        self.0.reasons.lock().unwrap().push(reason.clone());
    }
}

fn fds() -> usize {
    open_fd_count().expect("open_fd_count is only known on Linux")
}

fn wait_fds(what: &str, want: usize) {
    wait_until(what, || {
        let now = fds();
        if now == want {
            Ok(())
        } else {
            Err(format!("{now} open fds, want {want}"))
        }
    });
}

#[test]
fn sessions_and_fds_return_to_start_after_2000_cycles() {
    if open_fd_count().is_none() {
        eprintln!("skipped: open_fd_count() is not available on this OS");
        return;
    }
    const THREADS: usize = 4;
    const CYCLES: usize = 2000;
    const CLIENT_SERVICE_CYCLES: usize = 300;
    let seed = common::seed("sessions_and_fds_return_to_start_after_2000_cycles");

    let fd_before_server = fds();
    let server_counters = Arc::new(Counters::default());
    let sc = server_counters.clone();
    let server = ServerService::builder(any_port())
        .workers(2)
        .start(move || Cycle { counters: sc.clone(), done: false })
        .unwrap();
    let addr = server.local_addr();
    let fd_start = fds();

    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ t as u64);
                let mut with_session = 0;
                for i in 0..CYCLES / THREADS {
                    let mut c = connect(addr);
                    let mode = rng.range(0, 4);
                    if mode <= 2 {
                        with_session += 1;
                    }
                    match mode {
                        0 => {
                            // Clean close by the client after a round trip.
                            roundtrip(&mut c, format!("{t}/{i}").as_bytes());
                        }
                        1 => {
                            // Reset by the client after a round trip.
                            roundtrip(&mut c, b"rst");
                            set_linger_zero(&c).unwrap();
                        }
                        2 => {
                            // The server closes; the client sees the end of the stream.
                            roundtrip(&mut c, b"hello");
                            c.write_all(b"q").unwrap();
                            let (rest, _) = read_to_end(&mut c);
                            assert!(rest.is_empty());
                        }
                        3 => {
                            // Reset before the server may even have accepted.
                            set_linger_zero(&c).unwrap();
                        }
                        _ => {
                            // Closed before any byte was exchanged.
                        }
                    }
                    drop(c);
                }
                with_session
            })
        })
        .collect();
    let mut with_session = 0;
    for t in threads {
        with_session += t.join().expect("client thread");
    }

    // Every server session ends and its socket is closed (a slot is freed only after
    // its socket was closed).
    common::wait_no_sessions(&server);
    wait_fds("the fd count to return to its start value", fd_start);

    // Outgoing sessions release their fds too.
    let client_counters = Arc::new(Counters::default());
    let cc = client_counters.clone();
    let client = ClientService::builder(addr)
        .sessions(0)
        .workers(1)
        .start(move || Quitter(cc.clone()))
        .unwrap();
    let fd_client_start = fds();
    client.connect(CLIENT_SERVICE_CYCLES);
    wait_until("every client-service session to end", || {
        let s = client.stats();
        if s.disconnected as usize + s.connect_failures as usize == CLIENT_SERVICE_CYCLES
            && s.sessions == 0
        {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    let cs = client.stats();
    assert_eq!(cs.connected as usize, CLIENT_SERVICE_CYCLES, "{cs:?}");
    assert_eq!(client_counters.disconnected.load(Ordering::SeqCst), CLIENT_SERVICE_CYCLES);
    assert!(
        client_counters.reasons.lock().unwrap().iter().all(|r| *r == DisconnectReason::PeerClosed),
        "client sessions end because the server closed them"
    );

    common::wait_no_sessions(&server);
    wait_fds("the fd count to return to the client service's start value", fd_client_start);
    client.shutdown(Duration::from_secs(5)).unwrap();
    wait_fds("the client service's fds to be released", fd_start);

    let connected = server_counters.connected.load(Ordering::SeqCst);
    let disconnected = server_counters.disconnected.load(Ordering::SeqCst);
    assert_eq!(connected, disconnected, "every connected session is disconnected once");
    let stats = server.stats();
    assert_eq!(stats.accepted as usize, connected, "{stats:?}");
    assert_eq!(stats.disconnected as usize, disconnected, "{stats:?}");
    assert!(
        connected >= with_session + CLIENT_SERVICE_CYCLES,
        "every round-trip cycle made a session: {connected} < {with_session} + {CLIENT_SERVICE_CYCLES}"
    );
    let reasons = server_counters.reasons.lock().unwrap();
    let count = |label: &str| reasons.iter().filter(|r| r.label() == label).count();
    eprintln!(
        "{connected} sessions: {} peer_closed, {} reset, {} local, {} other",
        count("peer_closed"),
        count("reset"),
        count("local"),
        reasons.len() - count("peer_closed") - count("reset") - count("local")
    );
    let unexpected: Vec<_> = reasons
        .iter()
        .filter(|r| !matches!(r.label(), "peer_closed" | "reset" | "local"))
        .collect();
    assert!(unexpected.is_empty(), "unexpected reasons: {unexpected:?}");
    drop(reasons);

    server.shutdown(Duration::from_secs(5)).unwrap();
    server_counters.checks.assert_ok();
    wait_fds("the server's own fds (listeners, rings, wakers) to be released", fd_before_server);

    // Phase 2: one acceptor handing sockets to the other worker, and a session cap that
    // rejects most connections: neither path may leak.
    let counters = Arc::new(Counters::default());
    let c2 = counters.clone();
    let capped = ServerService::builder(any_port())
        .workers(2)
        .reuse_port(false)
        .max_sessions(3)
        .start(move || Cycle { counters: c2.clone(), done: false })
        .unwrap();
    let addr = capped.local_addr();
    let fd_capped_start = fds();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                let mut rng = Rng::new(seed ^ (100 + t as u64));
                let mut served = 0;
                for _ in 0..150 {
                    let mut c = connect(addr);
                    let ok = c.write_all(b"x").is_ok() && {
                        let mut b = [0u8; 1];
                        matches!(c.read(&mut b), Ok(1))
                    };
                    served += usize::from(ok);
                    if rng.one_in(2) {
                        set_linger_zero(&c).unwrap();
                    }
                    drop(c);
                }
                served
            })
        })
        .collect();
    let served: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
    common::wait_no_sessions(&capped);
    wait_fds("the capped server's fd count to return to its start value", fd_capped_start);
    let stats = capped.stats();
    eprintln!("capped server: {served} served, {stats:?}");
    assert_eq!(stats.accepted + stats.rejected, (THREADS * 150) as u64, "{stats:?}");
    assert!(stats.accepted as usize >= served, "{stats:?}");
    assert_eq!(counters.connected.load(Ordering::SeqCst), stats.accepted as usize);
    assert_eq!(counters.disconnected.load(Ordering::SeqCst), stats.accepted as usize);
    capped.shutdown(Duration::from_secs(5)).unwrap();
    counters.checks.assert_ok();
    wait_fds("the capped server's own fds to be released", fd_before_server);
}
