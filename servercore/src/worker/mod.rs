//! A worker: one thread, one event loop, one driver; it owns its sessions.
//!
//! The loop, per turn: drain the inbox (messages from other threads), run due timers,
//! start the sends of every session that queued something ("dirty" sessions), then hand
//! everything to the driver in one `wait` and dispatch the completions. All sends queued in
//! one turn therefore reach the kernel in one system call.
//!
//! Sessions live in a slab of slots with generations: a completion or a handle names a
//! session by `(generation, index)`, so a stale one never reaches a newer session in the
//! same slot (DESIGN.md invariant 2). A slot is freed only once none of its operations is
//! in flight.

mod accept;
mod commands;
mod connect;
mod session_io;
mod shutdown;
mod slots;
mod timers;
mod transport_io;

use slots::{check_writable, conn_of, Conn, Slot};

use crate::config::SendQueuePolicy;
use crate::driver::{
    Completion, CompletionKind, Driver, Gather, OpId, RecvLease, SendBatch, SockId, MAX_IOVECS,
};
use crate::mailbox::{Command, WorkerRemote, INBOX_ENTRY};
use crate::reason::DisconnectReason;
use crate::registry::ServiceShared;
use crate::session::{
    Ctx, Fanout, Members, PeerAddr, Phase, Session, SessionId, SessionJob, SessionState,
    TimerAction, WorkerState, MIN_COUNTED,
};
use crate::sys;
use crate::telemetry::WorkerMetrics;
use crate::timer::{TimerId, Timers};
use bytes::Buf;
use std::any::Any;
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Owner tags with this bit set name a listener; others name a session slot.
const LISTENER_TAG: u64 = 1 << 63;
/// Back-off before re-arming an accept that failed (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How soon a closing session first looks again whether the peer has acknowledged what
/// the kernel still holds for it (see `lingers` in session_io.rs); each later look waits
/// twice as long, up to `LINGER_POLL_MAX`.
const LINGER_POLL: Duration = Duration::from_millis(10);
const LINGER_POLL_MAX: Duration = Duration::from_millis(250);
/// How long after the shutdown deadline a worker waits for the kernel before leaving.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

#[cfg(test)]
thread_local! {
    /// Tests: every wait of the worker on this thread fails with this errno (set from a
    /// job run on the worker), as a broken driver's would.
    pub(crate) static FAIL_WAITS: std::cell::Cell<Option<i32>> = const { std::cell::Cell::new(None) };
}

struct ListenerState {
    sock: SockId,
    /// Its connections speak WebSocket.
    websocket: bool,
    op: Option<OpId>,
    rearm: Option<TimerId>,
    closed: bool,
}

/// What a worker does besides serving its sessions.
pub(crate) struct WorkerDuties {
    /// Listeners, each with whether its connections speak WebSocket.
    pub(crate) listeners: Vec<(TcpListener, bool)>,
    pub(crate) connect_to: Option<SocketAddr>,
}

/// Everything a worker needs at start.
pub(crate) struct WorkerInit<S> {
    pub(crate) driver: Driver,
    pub(crate) rx: Receiver<Command>,
    pub(crate) remote: Arc<WorkerRemote>,
    pub(crate) shared: Arc<ServiceShared>,
    pub(crate) factory: Arc<dyn Fn() -> S + Send + Sync>,
    pub(crate) role: WorkerDuties,
}

pub(crate) struct Worker<S: Session> {
    driver: Driver,
    rx: Receiver<Command>,
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    live: usize,
    local: WorkerState,
    shared: Arc<ServiceShared>,
    factory: Arc<dyn Fn() -> S + Send + Sync>,
    listeners: Vec<ListenerState>,
    connect_to: Option<SocketAddr>,
    completions: Vec<Completion>,
    shutdown: Option<Instant>,
    accept_error_logged: bool,
    next_adopt: usize,
    /// Accept-rate tokens and the time they were last refilled.
    accept_bucket: (f64, Instant),
    /// Consecutive failed or lost client sessions, for the reconnect backoff.
    reconnect_failures: u32,
    rng: u32,
    /// The driver failed and the service was told (once).
    failed: bool,
    /// TLS plaintext on its way to the WebSocket layer (wss), reused.
    scratch: Vec<u8>,
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_string()
    }
}

/// Runs a user callback, turning a panic into a disconnect request for that session.
fn call<S, R>(
    conn: &mut Conn<S>,
    local: &mut WorkerState,
    f: impl FnOnce(&mut S, &mut Ctx<'_>) -> R,
) -> Option<R> {
    let Conn { user, core } = conn;
    let mut ctx = Ctx { core, local };
    match panic::catch_unwind(AssertUnwindSafe(|| f(user, &mut ctx))) {
        Ok(r) => Some(r),
        Err(p) => {
            let msg = panic_message(&*p);
            tracing::error!("{}: callback panicked: {msg}", ctx.core.id);
            ctx.local.request_close(ctx.core, DisconnectReason::Panic(msg));
            None
        }
    }
}

impl<S: Session> Worker<S> {
    pub(crate) fn new(init: WorkerInit<S>) -> io::Result<Self> {
        let WorkerInit { mut driver, rx, remote, shared, factory, role } = init;
        let remote_index = remote.index;
        let burst = f64::from(shared.accept_rate.unwrap_or(0));
        let mut listeners = Vec::new();
        for (l, websocket) in role.listeners {
            let sock = driver.add_listener(l)?;
            listeners.push(ListenerState { sock, websocket, op: None, rearm: None, closed: false });
        }
        let config = shared.config.clone();
        let w = Worker {
            driver,
            rx,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            local: WorkerState {
                remote,
                service: Arc::downgrade(&shared),
                send_limit: config.max_send_queue,
                notify_policy: config.send_queue_policy == SendQueuePolicy::Notify,
                config,
                dirty: Vec::new(),
                fanout: Fanout::new(shared.config.diagnostics.no_room_coalesce),
                timers: Timers::new(),
                now: Instant::now(),
                metrics: WorkerMetrics::new(shared.name, shared.backend.name(), remote_index),
                spare_queues: Vec::new(),
                spare_entries: 0,
            },
            shared,
            factory,
            listeners,
            connect_to: role.connect_to,
            completions: Vec::with_capacity(256),
            shutdown: None,
            accept_error_logged: false,
            next_adopt: 0,
            // The accept bucket starts full.
            accept_bucket: (burst, Instant::now()),
            reconnect_failures: 0,
            failed: false,
            rng: 0x9E37_79B9 ^ (std::process::id() << 8) ^ (remote_index as u32),
            scratch: Vec::new(),
        };
        Ok(w)
    }

    /// Runs the loop until shutdown. Called only once the service has published its
    /// worker set: the first accept, and so the first user callback, comes after it.
    pub(crate) fn run(mut self) {
        debug_assert!(self.shared.workers.get().is_some(), "a worker ran before the service");
        crate::mailbox::enter_worker_thread();
        for i in 0..self.listeners.len() {
            self.arm_accept(i);
        }
        loop {
            self.drain_inbox();
            self.run_timers();
            self.flush_dirty();
            crate::mailbox::end_turn();
            if let Some(deadline) = self.shutdown {
                if self.finished() {
                    break;
                }
                if Instant::now() > deadline + SHUTDOWN_GRACE {
                    tracing::warn!(
                        "worker {} leaving with {} sessions and {} operations unfinished",
                        self.local.remote.index,
                        self.live,
                        self.driver.in_flight()
                    );
                    self.abandon_leftovers();
                    break;
                }
            }
            // Wake at least every metrics period so that gauges stay fresh when idle.
            let timeout = self
                .local
                .timers
                .next_timeout(Instant::now())
                .map_or(crate::telemetry::FLUSH_EVERY, |t| t.min(crate::telemetry::FLUSH_EVERY));
            let timeout = Some(timeout);
            let gather = self.gather_window();
            let waited = self.driver.wait(timeout, gather, &mut self.completions);
            #[cfg(test)]
            let waited = match FAIL_WAITS.with(std::cell::Cell::get) {
                Some(errno) => Err(io::Error::from_raw_os_error(errno)),
                None => waited,
            };
            if let Err(e) = waited {
                if self.driver_failed(e) {
                    break;
                }
            }
            self.local.now = Instant::now();
            if self.local.metrics.due(self.local.now) {
                self.publish_metrics();
            }
            let mut completions = std::mem::take(&mut self.completions);
            for c in completions.drain(..) {
                self.dispatch(c);
            }
            self.completions = completions;
        }
        crate::mailbox::end_turn();
        self.publish_metrics();
        // Sessions still here were force-closed: drop them (their memory held by the
        // kernel stays in the driver, which leaks it rather than free it).
        let n = self.live;
        self.shared.sessions.fetch_sub(n, Ordering::AcqRel);
        for conn in self.slots.iter().filter_map(|s| s.conn.as_ref()) {
            if conn.core.ip_counted {
                self.shared.release_ip(conn.core.peer.get().ip());
            }
        }
        self.release_unread_commands();
    }

    /// The driver's wait failed (a persistent submission error, say): the worker stops.
    /// Reported once to the service (its stats and its `shutdown`'s result). Returns
    /// whether to leave the loop now: with operations still in flight the driver is
    /// broken, so every session left is reset (`SO_LINGER` 0, the kernel frees its
    /// buffers when the socket closes) and the driver's drop cancels and leaks the rest.
    fn driver_failed(&mut self, e: io::Error) -> bool {
        let index = self.local.remote.index;
        tracing::error!("worker {index}: driver wait failed: {e}");
        if !self.failed {
            self.failed = true;
            self.shared.worker_failed(format!("worker {index}: driver wait failed: {e}"));
        }
        self.begin_shutdown(Instant::now());
        if self.driver.in_flight() > 0 {
            self.abandon_leftovers();
            return true;
        }
        false
    }

    /// After a turn that fanned room broadcasts out, gather for as long as that turn took
    /// (at most `broadcast_gather_max`), so that more messages share each member's next
    /// send; a worker fanning out thus spends at most half its time gathering. The turn's
    /// sends are started first: they are most of its work.
    fn gather_window(&mut self) -> Option<Gather> {
        let max = self.local.config.broadcast_gather_max;
        if !self.local.fanout.take_fanned_out() || self.shutdown.is_some() {
            return None;
        }
        if max.is_zero() {
            // No waiting, but the next turn should see every ready socket.
            return Some(Gather { window: Duration::ZERO });
        }
        // An error here shows again, and is handled, in the wait that follows.
        self.driver.submit().ok()?;
        let busy = Instant::now().saturating_duration_since(self.local.now);
        Some(Gather { window: busy.min(max) })
    }

    /// Carries out the room work logged so far (see `session::fanout`).
    fn replay_room_work(&mut self) {
        self.local.replay_room_work(&mut self.slots);
    }

    fn publish_metrics(&mut self) {
        let queued: usize =
            self.slots.iter().filter_map(|s| s.conn.as_ref()).map(|c| c.core.queued).sum();
        let now = self.local.now;
        self.local.metrics.flush(self.shared.counts(), queued, now);
    }

    fn finished(&self) -> bool {
        self.live == 0 && self.listeners.iter().all(|l| l.closed) && self.driver.in_flight() == 0
    }

    /// Puts a new session in a free slot and returns its key.
    /// Calls the session factory; a panic there costs only this connection.
    fn make_user(&self) -> Option<S> {
        match panic::catch_unwind(AssertUnwindSafe(|| (self.factory)())) {
            Ok(user) => Some(user),
            Err(p) => {
                tracing::error!("session factory panicked: {}", panic_message(&*p));
                None
            }
        }
    }

    fn install(&mut self, user: S, peer: SocketAddr, sock: SockId, state: Phase) -> u64 {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { generation: 1, conn: None });
                (self.slots.len() - 1) as u32
            }
        };
        let key = (u64::from(self.slots[index as usize].generation) << 32) | u64::from(index);
        let core = self.new_core(key, peer, sock, state);
        self.slots[index as usize].conn = Some(Conn { user, core });
        self.live += 1;
        key
    }

    fn conn(&mut self, key: u64) -> Option<&mut Conn<S>> {
        conn_of(&mut self.slots, key)
    }

    fn new_core(&self, key: u64, peer: SocketAddr, sock: SockId, state: Phase) -> SessionState {
        let id = SessionId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        SessionState {
            id,
            key,
            peer: PeerAddr::new(peer),
            sock,
            state,
            rbuf: Vec::new(),
            recv_op: None,
            send_op: None,
            in_flight: 0,
            queue: VecDeque::new(),
            queued: 0,
            dirty: false,
            rare: None,
            flushing: false,
            graceful: false,
            abort: false,
            logged_sends: 0,
            rooms: Vec::new(),
            transport: None,
            recv_paused: false,
            peer_eof: false,
            recv_cancelled: false,
            congested: false,
            notify_full: false,
            last_recv: self.local.now,
            ip_counted: false,
            flags: std::cell::OnceCell::new(),
        }
    }

    fn dispatch(&mut self, c: Completion) {
        if c.owner & LISTENER_TAG != 0 {
            if let CompletionKind::Accept { result, armed } = c.kind {
                self.on_accept((c.owner & !LISTENER_TAG) as usize, result, armed);
            }
            return;
        }
        match c.kind {
            CompletionKind::Recv { result, armed } => self.on_recv(c.owner, result, armed),
            CompletionKind::Send { result, bufs } => self.on_send(c.owner, result, bufs),
            CompletionKind::Connect { result } => self.on_connect(c.owner, result),
            CompletionKind::Accept { .. } => {}
        }
    }
}

/// The errno of a cancelled operation (both backends report it so on unix).
#[cfg(unix)]
const ECANCELED: i32 = libc::ECANCELED;
#[cfg(not(unix))]
const ECANCELED: i32 = -1;
