//! 20,000 connect/disconnect cycles, mixed orderly close and reset (issue 6): afterwards
//! the server holds no session, the process's fd count is exactly back at its start, and
//! its RSS is back near its start.
//!
//! "Near": fds exactly equal once the server has settled (no session left); RSS within
//! +16 MiB of the start (freed memory the allocator keeps for reuse is allowed, growth per
//! cycle is not: 20,000 cycles leaking even 1 KiB each would exceed it).
//!
//! fd count and RSS are process-wide, so this binary holds exactly one test.

mod common;

use common::{any_port, open_fd_count, set_linger_zero, wait_until};
use servercore::{Ctx, DisconnectReason, ServerService, Session};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const CYCLES: usize = 20_000;
const THREADS: usize = 4;
const WARM_UP: usize = 200;
const RSS_SLACK: usize = 16 * 1024 * 1024;
const WORKERS: usize = 2;

#[derive(Default)]
struct Counters {
    connected: AtomicUsize,
    disconnected: AtomicUsize,
    reasons: Mutex<HashMap<&'static str, usize>>,
    double_disconnects: AtomicUsize,
}

/// Echoes; counts its lifecycle.
struct Cycle {
    counters: Arc<Counters>,
    done: bool,
}

impl Session for Cycle {
    fn on_connected(&mut self, _ctx: &mut Ctx<'_>) {
        self.counters.connected.fetch_add(1, Ordering::SeqCst);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if data == b"?" {
            // A sentinel asks which worker serves it.
            let _ = ctx.send(vec![ctx.worker_index() as u8]);
        } else {
            let _ = ctx.send(data.to_vec());
        }
        data.len()
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if std::mem::replace(&mut self.done, true) {
            self.counters.double_disconnects.fetch_add(1, Ordering::SeqCst);
        }
        self.counters.disconnected.fetch_add(1, Ordering::SeqCst);
        *self.counters.reasons.lock().unwrap().entry(reason.label()).or_default() += 1;
    }
}

fn fds() -> usize {
    open_fd_count().expect("open_fd_count is known on Linux")
}

fn rss() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024
}

/// One cycle: connect, then one of four endings: write and close in order (FIN; the echo
/// is never read, so the close may turn into a reset), round trip and reset (RST), close
/// at once in order, or reset at once (often before the server has even accepted).
fn cycle(addr: SocketAddr, i: usize) {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    match i % 4 {
        0 => s.write_all(b"ping").unwrap(),
        1 => {
            s.set_read_timeout(Some(common::TIMEOUT)).unwrap();
            s.write_all(b"ping").unwrap();
            let mut echo = [0u8; 4];
            s.read_exact(&mut echo).expect("the echo");
            set_linger_zero(&s).unwrap();
        }
        2 => {}
        _ => set_linger_zero(&s).unwrap(),
    }
    drop(s);
}

/// Waits until the server has accepted every connection the clients made.
///
/// A connection that was closed or reset by its client may still wait in a listener's
/// accept queue when the client is done: the server then opens (and closes) its session
/// later. Each worker owns one listener (`SO_REUSEPORT`) whose queue is accepted in order,
/// and a session is opened right when it is accepted, so once a new connection has been
/// served by a worker, every earlier connection of that worker's listener has been
/// accepted. Sentinels are connected until every worker has served one.
fn settle(addr: SocketAddr, workers: usize) -> usize {
    let mut served = vec![false; workers];
    let mut sentinels = 0;
    while served.contains(&false) {
        sentinels += 1;
        assert!(sentinels <= 1000, "sentinels never reached every worker: {served:?}");
        let mut s = common::connect(addr);
        s.write_all(b"?").unwrap();
        let mut worker = [0u8; 1];
        s.read_exact(&mut worker).expect("a sentinel's answer");
        served[usize::from(worker[0])] = true;
    }
    sentinels
}

#[test]
fn twenty_thousand_cycles_leave_no_session_fd_or_memory_behind() {
    if open_fd_count().is_none() {
        eprintln!("skipped: open_fd_count() is not available on this OS");
        return;
    }
    let counters = Arc::new(Counters::default());
    let c2 = counters.clone();
    let server = ServerService::builder(any_port())
        .workers(WORKERS)
        .start(move || Cycle { counters: c2.clone(), done: false })
        .unwrap();
    let addr = server.local_addr();

    // Warm up (thread-local pools, slab slots, lazily built state), then take the start.
    for i in 0..WARM_UP {
        cycle(addr, i);
    }
    let mut sentinels = settle(addr, WORKERS);
    common::wait_no_sessions(&server);
    let fd_start = fds();
    let rss_start = rss();

    let started = Instant::now();
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || {
                for i in 0..CYCLES / THREADS {
                    cycle(addr, t + i);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("client thread");
    }
    let cycles_took = started.elapsed();
    sentinels += settle(addr, WORKERS);

    common::wait_no_sessions(&server);
    wait_until("the fd count to return to its start", || {
        let now = fds();
        if now == fd_start {
            Ok(())
        } else {
            Err(format!("{now} open fds, started with {fd_start}"))
        }
    });
    let rss_end = rss();
    let stats = server.stats();
    let reasons = counters.reasons.lock().unwrap().clone();
    eprintln!(
        "{CYCLES} cycles in {cycles_took:?}; {stats:?}; reasons {reasons:?}; RSS {} -> {} KiB",
        rss_start / 1024,
        rss_end / 1024
    );

    assert_eq!(stats.sessions, 0);
    let connected = counters.connected.load(Ordering::SeqCst);
    let disconnected = counters.disconnected.load(Ordering::SeqCst);
    assert_eq!(counters.double_disconnects.load(Ordering::SeqCst), 0, "on_disconnected twice");
    assert_eq!(connected, disconnected, "every session got exactly one on_disconnected");
    assert_eq!(stats.accepted as usize, connected, "{stats:?}");
    assert_eq!(stats.disconnected as usize, disconnected, "{stats:?}");
    // A connection reset before it was accepted may be dropped without a session; most
    // are served.
    let connections = CYCLES + WARM_UP + sentinels;
    assert!(
        connected > connections / 2 && connected <= connections,
        "{connected} sessions for {connections} connections"
    );
    let unexpected: Vec<_> = reasons
        .iter()
        .filter(|(l, _)| !matches!(**l, "peer_closed" | "reset" | "os_error"))
        .collect();
    assert!(unexpected.is_empty(), "unexpected reasons: {unexpected:?}");
    assert!(
        rss_end <= rss_start + RSS_SLACK,
        "RSS grew from {rss_start} B to {rss_end} B over {CYCLES} cycles (allowed +{RSS_SLACK} B)"
    );
    server.shutdown(Duration::from_secs(5)).unwrap();
}
