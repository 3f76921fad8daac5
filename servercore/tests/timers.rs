//! Timers over real loopback connections: one-shot, repeating and cancelled timers of jobs
//! and of sessions, session timers dying with their session, and a session unable to cancel
//! another's timer.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! (a channel message or an observed count) with `common::TIMEOUT` as the safety net; the
//! few fixed delays are timer deadlines under test, and the "nothing fires after" checks use
//! a later timer on the same worker as their synchronisation point.

mod common;

use common::workers::{recv, sync_after, thread_name, Nop};
use common::{any_port, connect};
use servercore::{
    Ctx, DisconnectReason, JobQueue, JobTimer, ServerService, Session, SessionHandle, SessionId,
    TimerId,
};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ----- job timers ----------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct TimerCounts {
    once: u32,
    cancelled_before: u32,
    every: u32,
    self_cancel: u32,
}

#[test]
fn job_timers_fire_once_repeat_and_cancel() {
    let server = ServerService::builder(any_port()).workers(2).start(|| Nop).unwrap();
    let svc = server.service();
    let q = JobQueue::new(&svc, 1, TimerCounts::default());

    // Once, not before its delay.
    let (once_tx, once_rx) = mpsc::channel();
    let t0 = Instant::now();
    q.post_after(Duration::from_millis(30), move |s| {
        s.once += 1;
        once_tx.send((t0.elapsed(), thread_name())).unwrap();
    })
    .unwrap();

    // Cancelled before it is due: never runs.
    let never = q.post_after(Duration::from_millis(20), |s| s.cancelled_before += 1).unwrap();
    never.cancel();
    assert!(never.is_cancelled());

    // Repeating, cancelling itself on its third run.
    let slot: Arc<OnceLock<JobTimer>> = Arc::new(OnceLock::new());
    let slot2 = slot.clone();
    let t = q
        .post_every(Duration::from_millis(5), move |s| {
            s.self_cancel += 1;
            if s.self_cancel >= 3 {
                if let Some(t) = slot2.get() {
                    t.cancel();
                }
            }
        })
        .unwrap();
    slot.set(t).unwrap();

    // Repeating, cancelled from this thread after five runs.
    let (every_tx, every_rx) = mpsc::channel();
    let every = q
        .post_every(Duration::from_millis(2), move |s| {
            s.every += 1;
            let _ = every_tx.send(s.every);
        })
        .unwrap();
    while recv(&every_rx, "the repeating job") < 5 {}
    every.cancel();
    // A plain job runs after any run already under way; from here the count is final.
    let (at_tx, at_rx) = mpsc::channel();
    q.post(move |s| at_tx.send(s.every).unwrap()).unwrap();
    let at_cancel = recv(&at_rx, "the count at cancel");
    assert!(at_cancel >= 5);

    let (elapsed, name) = recv(&once_rx, "the one-shot job");
    assert!(elapsed >= Duration::from_millis(30), "fired after {elapsed:?}, before its delay");
    assert_eq!(name, "sc-server-1");

    // Every timer above has had its chance by now (the last deadline was ~30 ms).
    let (tx, rx) = mpsc::channel();
    q.post_after(Duration::from_millis(60), move |s| tx.send(s.clone()).unwrap()).unwrap();
    let counts = recv(&rx, "the sync timer");
    assert_eq!(counts.once, 1, "{counts:?}");
    assert_eq!(counts.cancelled_before, 0, "{counts:?}");
    assert_eq!(counts.self_cancel, 3, "{counts:?}");
    assert_eq!(counts.every, at_cancel, "{counts:?}: ran after cancel");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

// ----- session timers ------------------------------------------------------------------

#[derive(Debug)]
enum TEv {
    Connected(SessionHandle),
    Timer(u64),
    Cancel(&'static str, bool),
    Disconnected(DisconnectReason),
    /// A callback after `on_disconnected`: always a bug (the name is read through `Debug`).
    #[allow(dead_code)]
    Late(&'static str),
    Counts(HashMap<u64, u32>),
    /// A check inside a callback failed (a panic there would only end the session).
    Failed(String),
}

/// Sets a mix of timers on connect and reports what fires.
struct TimerMix {
    tx: Sender<(SessionId, TEv)>,
    fired: HashMap<u64, u32>,
    once: Option<TimerId>,
    interval: Option<TimerId>,
    self_cancelling: Option<TimerId>,
}

impl TimerMix {
    fn report(&self, ctx: &Ctx<'_>, ev: TEv) {
        let _ = self.tx.send((ctx.id(), ev));
    }

    /// Cancels the timer `id` set in `on_connected` and reports the result as `what`.
    fn cancel(&self, ctx: &mut Ctx<'_>, what: &'static str, id: Option<TimerId>) {
        match id {
            Some(id) => {
                let ok = ctx.cancel_timer(id);
                self.report(ctx, TEv::Cancel(what, ok));
            }
            None => self.report(ctx, TEv::Failed(format!("{what}: no timer id was kept"))),
        }
    }
}

impl Session for TimerMix {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.once = Some(ctx.set_timer(Duration::from_millis(20), 1));
        self.interval = Some(ctx.set_interval(Duration::from_millis(3), 2));
        let doomed = ctx.set_timer(Duration::from_millis(10), 3);
        let first = ctx.cancel_timer(doomed);
        let second = ctx.cancel_timer(doomed);
        self.report(ctx, TEv::Cancel("pending", first));
        self.report(ctx, TEv::Cancel("already cancelled", second));
        ctx.set_timer(Duration::ZERO, 4);
        self.self_cancelling = Some(ctx.set_interval(Duration::from_millis(2), 5));
        self.report(ctx, TEv::Connected(ctx.handle()));
    }

    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        let n = {
            let n = self.fired.entry(token).or_insert(0);
            *n += 1;
            *n
        };
        match token {
            1 => self.cancel(ctx, "fired once", self.once),
            2 if n == 4 => {
                self.cancel(ctx, "interval", self.interval);
                // The synchronisation point: well after every other deadline.
                ctx.set_timer(Duration::from_millis(60), 99);
            }
            5 if n == 3 => {
                self.cancel(ctx, "interval, from its own on_timer", self.self_cancelling)
            }
            99 => self.report(ctx, TEv::Counts(self.fired.clone())),
            _ => {}
        }
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.report(ctx, TEv::Disconnected(reason.clone()));
    }
}

#[test]
fn session_timers_fire_once_repeat_and_cancel() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || TimerMix {
            tx: tx.clone(),
            fired: HashMap::new(),
            once: None,
            interval: None,
            self_cancelling: None,
        })
        .unwrap();
    let _c = connect(server.local_addr());
    let mut cancels = Vec::new();
    let counts = loop {
        match recv(&rx, "the session's timer report").1 {
            TEv::Counts(c) => break c,
            TEv::Cancel(what, ok) => cancels.push((what, ok)),
            TEv::Failed(why) => panic!("in a callback: {why}"),
            TEv::Disconnected(r) => panic!("the session ended before its report: {r:?}"),
            _ => {}
        }
    };
    cancels.sort();
    let mut want = vec![
        ("pending", true),
        ("already cancelled", false),
        ("fired once", false),
        ("interval", true),
        ("interval, from its own on_timer", true),
    ];
    want.sort();
    assert_eq!(cancels, want);
    let want: HashMap<u64, u32> = [(1, 1), (2, 4), (4, 1), (5, 3), (99, 1)].into();
    assert_eq!(counts, want, "token -> times fired");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// How a `Ticker` session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `ctx.disconnect` from `on_timer` (graceful).
    SelfLocal,
    /// `ctx.disconnect_with(Protocol)` from `on_timer` (not graceful).
    SelfProtocol,
    /// The peer closes.
    PeerClose,
    /// `SessionHandle::disconnect` from the test thread.
    Handle,
    /// Sets no timer at all (connects after the others are gone, reusing their slots).
    Quiet,
}

const TICKERS: usize = 24;

/// A 1 ms interval; ends as its `End` says after 3 ticks; tries to set more timers in
/// `on_disconnected`.
struct Ticker {
    tx: Sender<(SessionId, TEv)>,
    end: End,
    ticks: u32,
    done: bool,
}

impl Session for Ticker {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send((ctx.id(), TEv::Connected(ctx.handle())));
        if self.end != End::Quiet {
            ctx.set_interval(Duration::from_millis(1), 1);
            ctx.set_timer(Duration::from_millis(2), 2);
        }
    }

    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        if self.done {
            let _ = self.tx.send((ctx.id(), TEv::Late("on_timer")));
        }
        let _ = self.tx.send((ctx.id(), TEv::Timer(token)));
        if token == 1 {
            self.ticks += 1;
            if self.ticks == 3 {
                match self.end {
                    End::SelfLocal => ctx.disconnect("enough ticks"),
                    End::SelfProtocol => {
                        ctx.disconnect_with(DisconnectReason::Protocol("enough ticks".into()))
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if self.done {
            let _ = self.tx.send((ctx.id(), TEv::Late("on_disconnected")));
        }
        self.done = true;
        let _ = self.tx.send((ctx.id(), TEv::Disconnected(reason.clone())));
        // Timers set now belong to a session that is gone: they must never fire.
        ctx.set_timer(Duration::ZERO, 77);
        ctx.set_interval(Duration::from_millis(1), 78);
    }
}

#[test]
fn session_timers_never_fire_after_on_disconnected() {
    let (tx, rx) = mpsc::channel();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let ends = [End::SelfLocal, End::SelfProtocol, End::PeerClose, End::Handle];
    let server = ServerService::builder(any_port())
        .workers(2)
        .start(move || {
            let n = m.fetch_add(1, Ordering::Relaxed);
            let end = if n < TICKERS { ends[n % ends.len()] } else { End::Quiet };
            Ticker { tx: tx.clone(), end, ticks: 0, done: false }
        })
        .unwrap();
    let mut log: Vec<(SessionId, TEv)> = Vec::new();
    let next = |log: &mut Vec<(SessionId, TEv)>, what: &str| {
        let e = recv(&rx, what);
        log.push(e);
        log.len() - 1
    };

    // Connect one at a time, so the n-th on_connected is the n-th client.
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..TICKERS {
        clients.push(Some(connect(server.local_addr())));
        let handle = loop {
            let i = next(&mut log, "on_connected");
            if let TEv::Connected(h) = &log[i].1 {
                break h.clone();
            }
        };
        sessions.push(handle);
    }
    let ticks_of = |log: &Vec<(SessionId, TEv)>, id| {
        log.iter().filter(|e| e.0 == id && matches!(e.1, TEv::Timer(1))).count()
    };
    let disconnected = |log: &Vec<(SessionId, TEv)>, id| {
        log.iter().any(|e| e.0 == id && matches!(e.1, TEv::Disconnected(_)))
    };
    // The sessions the test ends: after three ticks each.
    for (i, h) in sessions.iter().enumerate() {
        let end = ends[i % ends.len()];
        if !matches!(end, End::PeerClose | End::Handle) {
            continue;
        }
        while ticks_of(&log, h.id()) < 3 {
            next(&mut log, "three ticks");
        }
        match end {
            End::PeerClose => drop(clients[i].take()),
            _ => h.disconnect("from the test").unwrap(),
        }
    }
    for h in &sessions {
        while !disconnected(&log, h.id()) {
            next(&mut log, &format!("on_disconnected of {}", h.id()));
        }
    }
    // New sessions take the freed slots; the old sessions' timers must not reach them.
    let mut quiet_clients = Vec::new();
    let mut quiet = Vec::new();
    for _ in 0..4 {
        quiet_clients.push(connect(server.local_addr()));
        let id = loop {
            let i = next(&mut log, "a quiet session's on_connected");
            if let TEv::Connected(h) = &log[i].1 {
                break h.id();
            }
        };
        quiet.push(id);
    }
    // The sync point: 50 ms is fifty periods of the 1 ms intervals, on each worker.
    let svc = server.service();
    for w in 0..2 {
        sync_after(&svc, w, Duration::from_millis(50));
    }
    while let Ok(e) = rx.try_recv() {
        log.push(e);
    }

    for (i, h) in sessions.iter().enumerate() {
        let id = h.id();
        let evs: Vec<&TEv> = log.iter().filter(|e| e.0 == id).map(|e| &e.1).collect();
        let d = evs
            .iter()
            .position(|e| matches!(e, TEv::Disconnected(_)))
            .unwrap_or_else(|| panic!("{id}: no on_disconnected: {evs:?}"));
        assert!(
            evs[d + 1..].is_empty(),
            "{id} ({:?}): events after on_disconnected: {:?}",
            ends[i % ends.len()],
            &evs[d..]
        );
        assert!(ticks_of(&log, id) >= 3, "{id}: {evs:?}");
        let reason = match evs[d] {
            TEv::Disconnected(r) => r.clone(),
            _ => unreachable!(),
        };
        let want = match ends[i % ends.len()] {
            End::SelfLocal => DisconnectReason::Local("enough ticks".into()),
            End::SelfProtocol => DisconnectReason::Protocol("enough ticks".into()),
            End::PeerClose => DisconnectReason::PeerClosed,
            End::Handle => DisconnectReason::Local("from the test".into()),
            End::Quiet => unreachable!(),
        };
        assert_eq!(reason, want, "{id}");
    }
    for id in quiet {
        let evs: Vec<&TEv> = log.iter().filter(|e| e.0 == id).map(|e| &e.1).collect();
        assert_eq!(evs.len(), 1, "{id}: a quiet session got {evs:?}");
    }
    drop(quiet_clients);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// `cancel_timer` with another session's `TimerId` returns false and cancels nothing.
#[test]
fn a_session_cannot_cancel_another_sessions_timer() {
    let shared_id: Arc<Mutex<Option<TimerId>>> = Arc::default();
    let (tx, rx) = mpsc::channel();
    let made = Arc::new(AtomicUsize::new(0));
    let server = ServerService::builder(any_port())
        .workers(1) // timer ids are per worker: both sessions share one
        .start(move || Thief {
            first: made.fetch_add(1, Ordering::Relaxed) == 0,
            id: shared_id.clone(),
            tx: tx.clone(),
        })
        .unwrap();
    let _a = connect(server.local_addr());
    assert!(matches!(recv(&rx, "A connected").1, TEv::Connected(_)));
    let _b = connect(server.local_addr());
    let mut got = Vec::new();
    while got.len() < 3 {
        match recv(&rx, "B's cancel and A's timer").1 {
            TEv::Connected(_) => {}
            ev => got.push(format!("{ev:?}")),
        }
    }
    got.sort();
    assert_eq!(got, ["Cancel(\"another session's\", false)", "Timer(1)", "Timer(2)"]);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

struct Thief {
    first: bool,
    id: Arc<Mutex<Option<TimerId>>>,
    tx: Sender<(SessionId, TEv)>,
}

impl Session for Thief {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let mut slot = self.id.lock().unwrap_or_else(|e| e.into_inner());
        if self.first {
            *slot = Some(ctx.set_timer(Duration::from_millis(100), 1));
        } else {
            // The test thread shows what arrives instead of the cancel's result.
            let ev = match *slot {
                Some(id) => TEv::Cancel("another session's", ctx.cancel_timer(id)),
                None => TEv::Failed("B connected before A set its timer".into()),
            };
            let _ = self.tx.send((ctx.id(), ev));
            // B's own timer, well after A's: A's has fired (or never will) by then.
            ctx.set_timer(Duration::from_millis(150), 2);
        }
        drop(slot);
        let _ = self.tx.send((ctx.id(), TEv::Connected(ctx.handle())));
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        let _ = self.tx.send((ctx.id(), TEv::Timer(token)));
    }
    /// Before the shutdown, only a panic in a callback ends a session: the test shows it.
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.tx.send((ctx.id(), TEv::Disconnected(reason.clone())));
    }
}
