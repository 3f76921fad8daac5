//! Rare paths of a session's life (issue 11): nothing follows `on_disconnected`
//! (invariant 5), and nothing a session does during startup sees a half-built service.

mod common;

use common::*;
use servercore::{
    Ctx, DisconnectReason, Room, SendError, SendQueuePolicy, ServerService, Session, SessionConfig,
};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Records the name of every callback, in order; what it checks goes to `checks`.
struct Calls {
    calls: Arc<Mutex<Vec<&'static str>>>,
    checks: Checks,
}

impl Calls {
    fn push(&self, name: &'static str) {
        self.calls.lock().unwrap_or_else(|e| e.into_inner()).push(name);
    }
}

impl Session for Calls {
    fn on_connected(&mut self, _ctx: &mut Ctx<'_>) {
        self.push("on_connected");
    }

    /// Fills the queue to its limit (Notify policy: the refused send makes
    /// `on_send_queue_full` due), then disconnects in the same callback.
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        self.push("on_recv");
        loop {
            match ctx.send(vec![0u8; 64 << 10]) {
                Ok(()) => {}
                Err(SendError::QueueFull { .. }) => break,
                Err(e) => {
                    self.checks.check(false, format_args!("a send failed otherwise: {e}"));
                    break;
                }
            }
        }
        ctx.disconnect("full, and done");
        data.len()
    }

    fn on_send_queue_full(&mut self, _ctx: &mut Ctx<'_>) {
        self.push("on_send_queue_full");
    }

    fn on_writable(&mut self, _ctx: &mut Ctx<'_>) {
        self.push("on_writable");
    }

    fn on_send(&mut self, _ctx: &mut Ctx<'_>, _bytes: usize) {
        self.push("on_send");
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.push("on_disconnected");
        self.checks.disconnected(reason);
    }
}

#[test]
fn no_send_queue_full_after_on_disconnected() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let checks = Checks::new();
    let (c2, k2) = (calls.clone(), checks.clone());
    let cfg = SessionConfig {
        send_queue_policy: SendQueuePolicy::Notify,
        max_send_queue: 1 << 20,
        send_queue_low_watermark: 256 << 10,
        close_flush_timeout: Duration::from_millis(300),
        ..SessionConfig::default()
    };
    let server = ServerService::builder(any_port())
        .workers(1)
        .session_config(cfg)
        .start(move || Calls { calls: c2.clone(), checks: k2.clone() })
        .unwrap();
    let mut c = connect(server.local_addr());
    c.write_all(b"go").unwrap();
    // The client reads everything, so the flush ends and the session goes.
    let (got, _) = read_to_end(&mut c);
    // The queue was filled to its 1 MiB limit, and all of it flushed.
    assert!(got.len() >= 1 << 20, "{} bytes", got.len());
    wait_no_sessions(&server);
    let calls = calls.lock().unwrap().clone();
    let last = calls.iter().rposition(|&c| c == "on_disconnected").expect("on_disconnected");
    assert_eq!(last, calls.len() - 1, "callbacks after on_disconnected: {calls:?}");
    assert_eq!(calls.iter().filter(|&&c| c == "on_disconnected").count(), 1, "{calls:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
}

/// What a session saw of its service in `on_connected`.
struct Probe {
    tx: mpsc::Sender<(usize, usize)>,
    room: Room,
    checks: Checks,
}

impl Session for Probe {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let workers = ctx.service().map_or(0, |s| s.workers());
        self.checks.check(ctx.enter_room(&self.room), "the room belongs to this service");
        let _ = self.tx.send((ctx.worker_index(), workers));
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if let Err(e) = ctx.broadcast_room(&self.room, data.to_vec()) {
            self.checks.check(false, format_args!("the broadcast was refused: {e}"));
        }
        data.len()
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.checks.disconnected(reason);
    }
}

/// A port that was free a moment ago.
fn free_port() -> SocketAddr {
    TcpListener::bind(any_port()).unwrap().local_addr().unwrap()
}

/// Connections already waiting in the listen backlog when the service starts are accepted
/// by the first worker at once, while the others may still be starting: the first
/// callbacks must already see every worker (a room entered then must reach all of them).
#[test]
fn sessions_accepted_during_startup_see_every_worker() {
    const WORKERS: usize = 4;
    for round in 0..5 {
        let addr = free_port();
        // Connect as soon as the port listens: the connection waits in the backlog for
        // the first worker that arms its accept.
        let client = std::thread::spawn(move || {
            let deadline = Instant::now() + TIMEOUT;
            loop {
                if let Ok(s) = TcpStream::connect(addr) {
                    return Some(s);
                }
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::yield_now();
            }
        });
        let (tx, rx) = mpsc::channel();
        let room = Room::new();
        let r2 = room.clone();
        let checks = Checks::new();
        let k2 = checks.clone();
        let server = match ServerService::builder(addr)
            .workers(WORKERS)
            .reuse_port(false)
            .start(move || Probe { tx: tx.clone(), room: r2.clone(), checks: k2.clone() })
        {
            Ok(s) => s,
            Err(e) => {
                eprintln!("round {round}: port {addr} taken meanwhile ({e}); next round");
                continue;
            }
        };
        let mut early = client.join().unwrap().expect("connected");
        let (_, workers) = rx.recv_timeout(TIMEOUT).expect("on_connected");
        assert_eq!(workers, WORKERS, "round {round}: a session saw a half-built service");
        // The room bound then reaches members on every worker: connect one per worker.
        let mut others: Vec<TcpStream> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        while seen.len() < WORKERS {
            others.push(connect(server.local_addr()));
            let (w, n) = rx.recv_timeout(TIMEOUT).expect("on_connected");
            assert_eq!(n, WORKERS);
            seen.insert(w);
            assert!(others.len() < 200, "connections do not spread over the workers");
        }
        wait_until("every member in the room", || {
            if room.len() == others.len() + 1 {
                Ok(())
            } else {
                Err(format!("{} members", room.len()))
            }
        });
        early.set_read_timeout(Some(TIMEOUT)).unwrap();
        early.write_all(b"hi").unwrap();
        for o in &mut others {
            o.set_read_timeout(Some(TIMEOUT)).unwrap();
            let mut got = [0u8; 2];
            std::io::Read::read_exact(o, &mut got).expect("the broadcast reaches every worker");
            assert_eq!(&got, b"hi");
        }
        server.shutdown(Duration::from_secs(5)).unwrap();
        checks.assert_ok();
    }
}
