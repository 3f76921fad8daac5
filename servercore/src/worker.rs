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

use crate::config::SendQueuePolicy;
use crate::config::SessionConfig;
use crate::driver::{
    Completion, CompletionKind, Driver, OpId, RecvLease, SendBatch, SockId, Waker, MAX_IOVECS,
};
use crate::reason::DisconnectReason;
use crate::room::RoomInner;
use crate::service::ServiceShared;
use crate::session::{Ctx, SendError, Session, SessionFlags, SessionId};
use crate::sys;
use crate::telemetry::WorkerMetrics;
use crate::timer::{TimerId, Timers};
use bytes::{Buf, Bytes};
use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Owner tags with this bit set name a listener; others name a session slot.
const LISTENER_TAG: u64 = 1 << 63;
/// Back-off before re-arming an accept that failed (e.g. out of file descriptors).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long after the shutdown deadline a worker waits for the kernel before leaving.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A message to a worker from another thread.
pub(crate) enum Command {
    /// Queue a buffer on one session (`admitted`: its place under the limit is reserved).
    Send { key: u64, buf: Bytes, admitted: bool },
    /// A handle send was refused: the session's queue is full (Notify policy).
    Congested { key: u64 },
    /// Disconnect one session.
    Disconnect { key: u64, reason: DisconnectReason },
    /// Queue a buffer on every open session of this worker.
    Broadcast(Bytes),
    /// Open `count` outgoing sessions (client services).
    Connect { count: usize },
    /// Take over a connection accepted by another worker.
    Adopt(TcpStream),
    /// Stop accepting, flush, disconnect every session, and end the thread.
    Shutdown { deadline: Instant },
    /// Run a closure on this worker.
    Job(Box<dyn FnOnce() + Send>),
    /// Run a closure after `delay`, then every `period` if given, until cancelled.
    TimedJob {
        delay: Duration,
        period: Option<Duration>,
        cancelled: Arc<AtomicBool>,
        job: Box<dyn FnMut() + Send>,
    },
    /// Run a closure with a session's object and context.
    SessionJob { key: u64, job: SessionJob },
    /// Add a session to a room.
    RoomEnter { room: Arc<RoomInner>, key: u64 },
    /// Remove a session from a room.
    RoomLeave { room: u64, key: u64 },
    /// Queue a buffer on the room's members on this worker.
    RoomBroadcast { room: u64, buf: Bytes },
}

/// A closure run on a session's worker with the session object (as `Any`) and its context.
pub(crate) type SessionJob = Box<dyn FnOnce(&mut dyn Any, &mut Ctx<'_>) + Send>;

/// The part of a worker other threads can reach: its inbox and its wake-up.
/// Thread safety: `Send + Sync`; `post` may be called from any thread.
pub(crate) struct WorkerRemote {
    pub(crate) index: usize,
    pub(crate) config: Arc<SessionConfig>,
    tx: Sender<Command>,
    waker: Arc<Waker>,
}

impl WorkerRemote {
    /// Posts a command and wakes the worker. Fails once the worker has ended.
    pub(crate) fn post(&self, cmd: Command) -> Result<(), ()> {
        self.tx.send(cmd).map_err(|_| ())?;
        self.waker.wake();
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    Closing,
}

/// The engine's state of one session (what the seed's `Session` base class held).
pub(crate) struct Core {
    pub(crate) id: SessionId,
    pub(crate) key: u64,
    pub(crate) peer: SocketAddr,
    sock: SockId,
    state: State,
    /// Unconsumed received bytes (`len`) plus room for the next read (capacity).
    rbuf: Vec<u8>,
    recv_op: Option<OpId>,
    send_op: Option<OpId>,
    connect_op: Option<OpId>,
    in_flight: u32,
    queue: VecDeque<Bytes>,
    pub(crate) queued: usize,
    /// An empty queue with capacity, swapped in when the queue goes to a send, so steady
    /// sending allocates nothing.
    spare: SendBatch,
    dirty: bool,
    close_request: Option<DisconnectReason>,
    /// Closing, and queued data still goes out (local disconnect or shutdown).
    flushing: bool,
    /// Set when a graceful close has begun, so `on_disconnected` may still queue sends.
    graceful: bool,
    timer: Option<TimerId>,
    connect_error: Option<io::Error>,
    /// Rooms this session is in (ids), so it leaves them when it closes.
    rooms: Vec<u64>,
    pub(crate) recv_paused: bool,
    /// The standing receive was cancelled for a pause.
    recv_cancelled: bool,
    /// Under the Notify policy: a send was refused; `on_writable` is due after draining.
    congested: bool,
    /// `on_send_queue_full` is due (called outside the callback that hit the limit).
    notify_full: bool,
    /// Loop-turn time of the last received bytes (idle timeout).
    last_recv: Instant,
    /// Counted against the per-IP cap under this address.
    ip_counted: bool,
    /// Keep `flags.queued` up to date (Notify policy).
    mirror_queued: bool,
    pub(crate) flags: Arc<SessionFlags>,
}

impl Core {
    /// Sets the queued byte count, and its mirror that handles read to reserve places
    /// (Notify policy only: a per-send atomic store is not free on a broadcast).
    fn set_queued(&mut self, queued: usize) {
        self.queued = queued;
        if self.mirror_queued {
            self.flags.queued.store(queued, Ordering::Relaxed);
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.state == State::Open && self.close_request.is_none()
    }
}

/// A worker's state that callbacks reach through [`Ctx`].
pub(crate) struct Local {
    pub(crate) remote: Arc<WorkerRemote>,
    pub(crate) service: Weak<ServiceShared>,
    pub(crate) config: Arc<SessionConfig>,
    dirty: Vec<u64>,
    /// Room operations asked for inside callbacks, carried out right after them.
    deferred: Vec<Deferred>,
    pub(crate) timers: Timers<TimerAction>,
    /// The time at the start of this loop turn (a cheap clock for idle tracking).
    pub(crate) now: Instant,
    /// `config.max_send_queue` and whether the policy is Notify, at hand for every send.
    send_limit: usize,
    notify_policy: bool,
    pub(crate) metrics: WorkerMetrics,
}

/// Work a callback asks for that touches other sessions of this worker.
enum Deferred {
    Enter(Arc<RoomInner>, u64),
    Leave(u64, u64),
    Broadcast(u64, Bytes),
}

impl Local {
    /// Adds the session to `room` once the callback returns.
    pub(crate) fn enter_room(&mut self, core: &Core, room: &Arc<RoomInner>) -> bool {
        let Some(service) = self.service.upgrade() else { return false };
        if !room.bind(&service) {
            return false;
        }
        self.deferred.push(Deferred::Enter(room.clone(), core.key));
        true
    }

    pub(crate) fn leave_room(&mut self, core: &Core, room: u64) {
        self.deferred.push(Deferred::Leave(room, core.key));
    }

    /// Posts the buffer to the other workers with members now, and queues it on this
    /// worker's members right after the callback: one sender's broadcasts stay in order.
    pub(crate) fn broadcast_room(&mut self, room: &Arc<RoomInner>, buf: Bytes) {
        let me = self.remote.index;
        room.for_remote_workers(me, |w| {
            let _ = w.post(Command::RoomBroadcast { room: room.id, buf: buf.clone() });
        });
        self.deferred.push(Deferred::Broadcast(room.id, buf));
    }

    pub(crate) fn set_session_timer(
        &mut self,
        core: &Core,
        delay: Duration,
        period: Option<Duration>,
        token: u64,
    ) -> TimerId {
        let at = Instant::now() + delay;
        self.timers.add(at, TimerAction::Session { key: core.key, token, period })
    }

    pub(crate) fn cancel_session_timer(&mut self, core: &Core, id: TimerId) -> bool {
        match self.timers.cancel(id) {
            Some(TimerAction::Session { key, .. }) if key == core.key => true,
            Some(other) => {
                // Not this session's timer: leave it alone.
                self.timers.restore(id, other);
                false
            }
            None => false,
        }
    }

    pub(crate) fn mark_dirty(&mut self, core: &mut Core) {
        if !core.dirty {
            core.dirty = true;
            self.dirty.push(core.key);
        }
    }

    /// Queues bytes on a session; the send starts at the end of the loop turn.
    ///
    /// `admitted`: a [`SessionHandle`](crate::SessionHandle) send that already reserved its
    /// place under the limit (Notify policy), so it is never refused here.
    pub(crate) fn queue_send(
        &mut self,
        core: &mut Core,
        buf: Bytes,
        admitted: bool,
    ) -> Result<(), SendError> {
        let accepting = match core.state {
            State::Open => core.close_request.is_none(),
            State::Closing => core.graceful,
            State::Connecting => false,
        };
        if !accepting {
            return Err(SendError::Disconnected);
        }
        if buf.is_empty() {
            return Ok(());
        }
        let limit = self.send_limit;
        if !admitted {
            let notify = self.notify_policy;
            // Under Notify, places reserved by handle sends still in the inbox count too.
            let reserved = if notify { core.flags.posted.load(Ordering::Acquire) } else { 0 };
            if (notify && core.congested) || core.queued + reserved + buf.len() > limit {
                if notify {
                    self.congest(core);
                } else {
                    self.request_close(core, DisconnectReason::SendQueueOverflow { limit });
                }
                return Err(SendError::QueueFull { limit });
            }
        }
        core.set_queued(core.queued + buf.len());
        core.queue.push_back(buf);
        self.metrics.buffers_out += 1;
        self.mark_dirty(core);
        Ok(())
    }

    /// Notify policy: the queue is full; `on_send_queue_full` is due, sends are refused
    /// until `on_writable`.
    pub(crate) fn congest(&mut self, core: &mut Core) {
        if !core.congested {
            core.congested = true;
            core.notify_full = true;
            core.flags.congested.store(true, Ordering::Release);
            self.mark_dirty(core);
        }
    }

    /// Records a disconnect request; it is carried out at the end of the loop turn, outside
    /// any callback. The first reason wins.
    pub(crate) fn request_close(&mut self, core: &mut Core, reason: DisconnectReason) {
        if core.state != State::Closing && core.close_request.is_none() {
            core.close_request = Some(reason);
            self.mark_dirty(core);
        }
    }
}

/// A session slot: the user's object and the engine's core.
struct Conn<S> {
    user: S,
    core: Core,
}

struct Slot<S> {
    generation: u32,
    conn: Option<Conn<S>>,
}

struct ListenerState {
    sock: SockId,
    op: Option<OpId>,
    rearm: Option<TimerId>,
    closed: bool,
}

pub(crate) enum TimerAction {
    ConnectTimeout(u64),
    FlushDeadline(u64),
    RearmAccept(usize),
    ShutdownDeadline,
    Session { key: u64, token: u64, period: Option<Duration> },
    Idle(u64),
    Reconnect,
    Job { period: Option<Duration>, cancelled: Arc<AtomicBool>, job: Box<dyn FnMut() + Send> },
}

/// What a worker does besides serving its sessions.
pub(crate) struct Role {
    pub(crate) listeners: Vec<TcpListener>,
    pub(crate) connect_to: Option<SocketAddr>,
}

/// Everything a worker needs at start.
pub(crate) struct WorkerInit<S> {
    pub(crate) driver: Driver,
    pub(crate) rx: Receiver<Command>,
    pub(crate) remote: Arc<WorkerRemote>,
    pub(crate) shared: Arc<ServiceShared>,
    pub(crate) factory: Arc<dyn Fn() -> S + Send + Sync>,
    pub(crate) role: Role,
}

/// Builds the remote half of a worker from its inbox sender and its driver's waker.
pub(crate) fn remote(
    index: usize,
    config: Arc<SessionConfig>,
    tx: Sender<Command>,
    waker: Arc<Waker>,
) -> WorkerRemote {
    WorkerRemote { index, config, tx, waker }
}

/// A room's members that live on this worker.
struct LocalRoom {
    room: Arc<RoomInner>,
    members: Vec<u64>,
}

pub(crate) struct Worker<S: Session> {
    driver: Driver,
    rx: Receiver<Command>,
    slots: Vec<Slot<S>>,
    free: Vec<u32>,
    live: usize,
    local: Local,
    shared: Arc<ServiceShared>,
    factory: Arc<dyn Fn() -> S + Send + Sync>,
    listeners: Vec<ListenerState>,
    connect_to: Option<SocketAddr>,
    rooms: HashMap<u64, LocalRoom>,
    completions: Vec<Completion>,
    shutdown: Option<Instant>,
    accept_error_logged: bool,
    next_adopt: usize,
    /// Accept-rate tokens and the time they were last refilled.
    accept_bucket: (f64, Instant),
    /// Consecutive failed or lost client sessions, for the reconnect backoff.
    reconnect_failures: u32,
    rng: u32,
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
    local: &mut Local,
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
        for l in role.listeners {
            let sock = driver.add_listener(l)?;
            listeners.push(ListenerState { sock, op: None, rearm: None, closed: false });
        }
        let config = shared.config.clone();
        let mut w = Worker {
            driver,
            rx,
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            local: Local {
                remote,
                service: Arc::downgrade(&shared),
                send_limit: config.max_send_queue,
                notify_policy: config.send_queue_policy == SendQueuePolicy::Notify,
                config,
                dirty: Vec::new(),
                deferred: Vec::new(),
                timers: Timers::new(),
                now: Instant::now(),
                metrics: WorkerMetrics::new(&shared, remote_index),
            },
            shared,
            factory,
            listeners,
            connect_to: role.connect_to,
            rooms: HashMap::new(),
            completions: Vec::with_capacity(256),
            shutdown: None,
            accept_error_logged: false,
            next_adopt: 0,
            // The accept bucket starts full.
            accept_bucket: (burst, Instant::now()),
            reconnect_failures: 0,
            rng: 0x9E37_79B9 ^ (std::process::id() << 8) ^ (remote_index as u32),
        };
        for i in 0..w.listeners.len() {
            w.arm_accept(i);
        }
        Ok(w)
    }

    pub(crate) fn run(mut self) {
        loop {
            self.drain_inbox();
            self.run_timers();
            self.flush_dirty();
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
            if let Err(e) = self.driver.wait(timeout, &mut self.completions) {
                tracing::error!("worker {}: driver wait failed: {e}", self.local.remote.index);
                self.begin_shutdown(Instant::now());
                if self.driver.in_flight() > 0 {
                    // The driver is broken; its drop cancels and leaks what is left.
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
        self.publish_metrics();
        // Sessions still here were force-closed: drop them (their memory held by the
        // kernel stays in the driver, which leaks it rather than free it).
        let n = self.live;
        self.shared.sessions.fetch_sub(n, Ordering::AcqRel);
    }

    fn publish_metrics(&mut self) {
        let queued: usize =
            self.slots.iter().filter_map(|s| s.conn.as_ref()).map(|c| c.core.queued).sum();
        let now = self.local.now;
        self.local.metrics.flush(&self.shared, queued, now);
    }

    fn finished(&self) -> bool {
        self.live == 0 && self.listeners.iter().all(|l| l.closed) && self.driver.in_flight() == 0
    }

    // ----- slots -------------------------------------------------------------------

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

    fn install(&mut self, user: S, peer: SocketAddr, sock: SockId, state: State) -> u64 {
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

    fn new_core(&self, key: u64, peer: SocketAddr, sock: SockId, state: State) -> Core {
        let id = SessionId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        Core {
            id,
            key,
            peer,
            sock,
            state,
            rbuf: Vec::new(),
            recv_op: None,
            send_op: None,
            connect_op: None,
            in_flight: 0,
            queue: VecDeque::new(),
            queued: 0,
            spare: SendBatch::new(),
            dirty: false,
            close_request: None,
            flushing: false,
            graceful: false,
            timer: None,
            connect_error: None,
            rooms: Vec::new(),
            recv_paused: false,
            recv_cancelled: false,
            congested: false,
            notify_full: false,
            last_recv: self.local.now,
            ip_counted: false,
            mirror_queued: self.shared.config.send_queue_policy == SendQueuePolicy::Notify,
            flags: Arc::new(SessionFlags {
                alive: AtomicBool::new(state == State::Open),
                ..SessionFlags::default()
            }),
        }
    }

    // ----- inbox and timers --------------------------------------------------------

    fn drain_inbox(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(cmd) => self.command(cmd),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    if self.shutdown.is_none() {
                        self.begin_shutdown(Instant::now());
                    }
                    break;
                }
            }
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Send { key, buf, admitted } => {
                let local = &mut self.local;
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    if admitted {
                        conn.core.flags.posted.fetch_sub(buf.len(), Ordering::AcqRel);
                    }
                    let _ = local.queue_send(&mut conn.core, buf, admitted);
                }
            }
            Command::Congested { key } => {
                let local = &mut self.local;
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    local.congest(&mut conn.core);
                }
            }
            Command::Disconnect { key, reason } => {
                let local = &mut self.local;
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    local.request_close(&mut conn.core, reason);
                }
            }
            Command::Broadcast(buf) => {
                let local = &mut self.local;
                for slot in &mut self.slots {
                    if let Some(conn) = &mut slot.conn {
                        if conn.core.is_open() {
                            let _ = local.queue_send(&mut conn.core, buf.clone(), false);
                        }
                    }
                }
            }
            Command::Connect { count } => {
                for _ in 0..count {
                    self.start_connect();
                }
            }
            Command::Adopt(stream) => self.open_accepted(stream),
            Command::Shutdown { deadline } => self.begin_shutdown(deadline),
            Command::Job(job) => run_job(job),
            Command::TimedJob { delay, period, cancelled, job } => {
                let at = Instant::now() + delay;
                self.local.timers.add(at, TimerAction::Job { period, cancelled, job });
            }
            Command::SessionJob { key, job } => {
                let local = &mut self.local;
                if let Some(conn) = conn_of(&mut self.slots, key) {
                    if conn.core.is_open() {
                        call(conn, local, |s, ctx| job(s as &mut dyn Any, ctx));
                    }
                }
            }
            Command::RoomEnter { room, key } => self.room_enter(room, key),
            Command::RoomLeave { room, key } => self.room_leave(room, key),
            Command::RoomBroadcast { room, buf } => self.room_broadcast(room, buf),
        }
    }

    fn room_enter(&mut self, room: Arc<RoomInner>, key: u64) {
        if !room.bind(&self.shared) {
            tracing::warn!("a room of another service was asked to take a session; ignored");
            return;
        }
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        if !conn.core.is_open() || conn.core.rooms.contains(&room.id) {
            return;
        }
        conn.core.rooms.push(room.id);
        room.member_added(self.local.remote.index);
        let id = room.id;
        self.rooms
            .entry(id)
            .or_insert_with(|| LocalRoom { room, members: Vec::new() })
            .members
            .push(key);
    }

    fn room_leave(&mut self, room: u64, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let Some(pos) = conn.core.rooms.iter().position(|&r| r == room) else { return };
        conn.core.rooms.swap_remove(pos);
        self.remove_member(room, key);
    }

    /// Drops `key` from this worker's list of `room` members.
    fn remove_member(&mut self, room: u64, key: u64) {
        if let Some(local) = self.rooms.get_mut(&room) {
            if let Some(i) = local.members.iter().position(|&k| k == key) {
                local.members.swap_remove(i);
                local.room.member_removed(self.local.remote.index);
            }
            if local.members.is_empty() {
                self.rooms.remove(&room);
            }
        }
    }

    fn room_broadcast(&mut self, room: u64, buf: Bytes) {
        let Some(local_room) = self.rooms.get(&room) else { return };
        for &key in &local_room.members {
            if let Some(conn) = conn_of(&mut self.slots, key) {
                let _ = self.local.queue_send(&mut conn.core, buf.clone(), false);
            }
        }
    }

    /// Carries out the room operations callbacks asked for, in order.
    fn run_deferred(&mut self) {
        while !self.local.deferred.is_empty() {
            let deferred = std::mem::take(&mut self.local.deferred);
            for d in deferred {
                match d {
                    Deferred::Enter(room, key) => self.room_enter(room, key),
                    Deferred::Leave(room, key) => self.room_leave(room, key),
                    Deferred::Broadcast(room, buf) => self.room_broadcast(room, buf),
                }
            }
        }
    }

    fn run_timers(&mut self) {
        let now = Instant::now();
        while let Some((id, action)) = self.local.timers.pop_due(now) {
            match action {
                TimerAction::Session { key, token, period } => {
                    let local = &mut self.local;
                    let Some(conn) = conn_of(&mut self.slots, key) else { continue };
                    if !conn.core.is_open() {
                        continue; // a session's timers die with it
                    }
                    if let Some(p) = period {
                        let next = TimerAction::Session { key, token, period };
                        local.timers.reschedule(id, now + p, next);
                    }
                    call(conn, local, |s, ctx| s.on_timer(ctx, token));
                }
                TimerAction::Idle(key) => {
                    let local = &mut self.local;
                    let Some(idle) = local.config.idle_timeout else { continue };
                    let Some(conn) = conn_of(&mut self.slots, key) else { continue };
                    if !conn.core.is_open() {
                        continue;
                    }
                    let due = conn.core.last_recv + idle;
                    if due <= now {
                        local.request_close(&mut conn.core, DisconnectReason::IdleTimeout);
                    } else {
                        local.timers.reschedule(id, due, TimerAction::Idle(key));
                    }
                }
                TimerAction::Reconnect => self.start_connect(),
                TimerAction::Job { period, cancelled, mut job } => {
                    if cancelled.load(Ordering::Acquire) {
                        continue;
                    }
                    let ok = panic::catch_unwind(AssertUnwindSafe(&mut job)).is_ok();
                    if !ok {
                        tracing::error!("a timed job panicked; it will not run again");
                    } else if let Some(p) = period {
                        let next = TimerAction::Job { period, cancelled, job };
                        self.local.timers.reschedule(id, now + p, next);
                    }
                }
                TimerAction::ConnectTimeout(key) => {
                    let timeout = self.shared.config.connect_timeout;
                    if let Some(conn) = self.conn(key) {
                        conn.core.timer = None;
                        if let Some(op) = conn.core.connect_op {
                            conn.core.connect_error = Some(io::Error::new(
                                io::ErrorKind::TimedOut,
                                format!("connect timed out after {timeout:?}"),
                            ));
                            self.driver.cancel(op);
                        }
                    }
                }
                TimerAction::FlushDeadline(key) => {
                    if let Some(conn) = self.conn(key) {
                        conn.core.timer = None;
                    }
                    self.stop_flushing(key);
                }
                TimerAction::RearmAccept(i) => {
                    self.listeners[i].rearm = None;
                    self.arm_accept(i);
                }
                TimerAction::ShutdownDeadline => {
                    let keys: Vec<u64> = self.live_keys();
                    for key in keys {
                        self.stop_flushing(key);
                    }
                }
            }
        }
    }

    fn live_keys(&self) -> Vec<u64> {
        self.slots.iter().filter_map(|s| s.conn.as_ref().map(|c| c.core.key)).collect()
    }

    // ----- accept ------------------------------------------------------------------

    fn arm_accept(&mut self, i: usize) {
        let l = &mut self.listeners[i];
        if self.shutdown.is_some() || l.op.is_some() || l.closed {
            return;
        }
        l.op = Some(self.driver.accept(l.sock, LISTENER_TAG | i as u64));
    }

    fn on_accept(&mut self, i: usize, result: io::Result<TcpStream>, more: bool) {
        if !more {
            self.listeners[i].op = None;
        }
        match result {
            Ok(stream) => {
                self.accept_error_logged = false;
                self.route_accepted(stream);
            }
            Err(e) => {
                if self.shutdown.is_none() && !more {
                    if !self.accept_error_logged {
                        tracing::warn!("accept failed: {e}; retrying in {ACCEPT_BACKOFF:?}");
                        self.accept_error_logged = true;
                    }
                    let at = Instant::now() + ACCEPT_BACKOFF;
                    self.listeners[i].rearm =
                        Some(self.local.timers.add(at, TimerAction::RearmAccept(i)));
                }
            }
        }
        let l = &mut self.listeners[i];
        if l.op.is_none() {
            if self.shutdown.is_some() {
                if !l.closed {
                    l.closed = true;
                    self.driver.close(l.sock);
                }
            } else if l.rearm.is_none() {
                self.arm_accept(i);
            }
        }
    }

    /// With one shared listener, spread accepted connections over the workers.
    fn route_accepted(&mut self, stream: TcpStream) {
        if self.shared.single_acceptor {
            if let Some(workers) = self.shared.workers.get() {
                let target = self.next_adopt % workers.len();
                self.next_adopt = self.next_adopt.wrapping_add(1);
                if target != self.local.remote.index {
                    if workers[target].post(Command::Adopt(stream)).is_err() {
                        tracing::warn!("worker {target} has ended; dropped a connection");
                    }
                    return;
                }
            }
        }
        self.open_accepted(stream);
    }

    fn open_accepted(&mut self, stream: TcpStream) {
        if self.shutdown.is_some() {
            return;
        }
        let shared = self.shared.clone();
        if !self.take_accept_token() {
            shared.rejected.fetch_add(1, Ordering::Relaxed);
            return; // over the accept rate: dropping the stream closes it at once
        }
        if !shared.reserve_session() {
            return; // over the cap: closed at once, the cap is real
        }
        let peer = match stream.peer_addr() {
            Ok(peer) => peer,
            Err(e) => {
                // Typically the peer already reset the connection.
                tracing::debug!("dropping an accepted connection: {e}");
                shared.sessions.fetch_sub(1, Ordering::AcqRel);
                return;
            }
        };
        if !shared.reserve_ip(peer.ip()) {
            shared.sessions.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let release = |shared: &ServiceShared| {
            shared.sessions.fetch_sub(1, Ordering::AcqRel);
            if shared.per_ip_limit.is_some() {
                shared.release_ip(peer.ip());
            }
        };
        let Some(user) = self.make_user() else {
            release(&shared);
            return;
        };
        let setup = sys::configure_accepted(&stream, shared.config.nodelay)
            .and_then(|()| self.driver.add_stream(stream));
        let sock = match setup {
            Ok(sock) => sock,
            Err(e) => {
                tracing::debug!("dropping an accepted connection: {e}");
                release(&shared);
                return;
            }
        };
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let key = self.install(user, peer, sock, State::Open);
        if let Some(conn) = self.conn(key) {
            conn.core.ip_counted = shared.per_ip_limit.is_some();
        }
        self.open_session(key);
    }

    /// Token bucket for the accept-rate limit (this worker's share of the service rate).
    fn take_accept_token(&mut self) -> bool {
        let Some(rate) = self.shared.accept_rate else { return true };
        let workers = self.shared.workers.get().map_or(1, Vec::len).max(1) as f64;
        let per_worker = (f64::from(rate) / workers).max(1.0);
        let now = Instant::now();
        let elapsed = now.duration_since(self.accept_bucket.1).as_secs_f64();
        self.accept_bucket = ((self.accept_bucket.0 + elapsed * per_worker).min(per_worker), now);
        if self.accept_bucket.0 >= 1.0 {
            self.accept_bucket.0 -= 1.0;
            true
        } else {
            false
        }
    }

    /// Client services with a reconnect policy: one more connect after a backoff.
    fn schedule_reconnect(&mut self) {
        let Some(policy) = self.shared.reconnect else { return };
        if self.shutdown.is_some() || self.connect_to.is_none() {
            return;
        }
        // xorshift32 for the jitter: no need for a real random source.
        let mut x = self.rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        self.rng = x;
        let delay = policy.delay(self.reconnect_failures, x);
        self.reconnect_failures = self.reconnect_failures.saturating_add(1);
        self.local.timers.add(Instant::now() + delay, TimerAction::Reconnect);
    }

    // ----- connect -----------------------------------------------------------------

    fn start_connect(&mut self) {
        let Some(addr) = self.connect_to else { return };
        if self.shutdown.is_some() {
            return;
        }
        let Some(mut user) = self.make_user() else {
            self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let nodelay = self.shared.config.nodelay;
        let sock = sys::stream_socket_for(addr)
            .and_then(|s| {
                s.set_tcp_nodelay(nodelay)?;
                Ok(TcpStream::from(s))
            })
            .and_then(|s| self.driver.add_stream(s));
        let sock = match sock {
            Ok(sock) => sock,
            Err(e) => {
                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                let _ = panic::catch_unwind(AssertUnwindSafe(|| user.on_connect_failed(addr, &e)));
                self.schedule_reconnect();
                return;
            }
        };
        self.shared.sessions.fetch_add(1, Ordering::AcqRel);
        let key = self.install(user, addr, sock, State::Connecting);
        let op = self.driver.connect(sock, key, addr);
        let at = Instant::now() + self.shared.config.connect_timeout;
        let timer = self.local.timers.add(at, TimerAction::ConnectTimeout(key));
        let core = &mut self.conn(key).expect("just installed").core;
        core.connect_op = Some(op);
        core.in_flight = 1;
        core.timer = Some(timer);
    }

    fn on_connect(&mut self, key: u64, result: io::Result<()>) {
        let Some(conn) = self.conn(key) else { return };
        let core = &mut conn.core;
        core.in_flight -= 1;
        core.connect_op = None;
        let timer = core.timer.take();
        let result = match (result, core.connect_error.take(), core.state) {
            (_, Some(e), _) => Err(e),
            (Ok(()), None, State::Connecting) => Ok(()),
            (Ok(()), None, _) => Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "service shut down while connecting",
            )),
            (Err(e), None, _) => Err(e),
        };
        if let Some(t) = timer {
            self.local.timers.cancel(t);
        }
        match result {
            Ok(()) => {
                self.shared.connected.fetch_add(1, Ordering::Relaxed);
                self.reconnect_failures = 0;
                let conn = self.conn(key).expect("checked above");
                conn.core.state = State::Open;
                conn.core.flags.alive.store(true, Ordering::Release);
                self.open_session(key);
            }
            Err(e) => {
                self.shared.connect_failures.fetch_add(1, Ordering::Relaxed);
                let conn = self.conn(key).expect("checked above");
                let addr = conn.core.peer;
                let user = &mut conn.user;
                if let Err(p) =
                    panic::catch_unwind(AssertUnwindSafe(|| user.on_connect_failed(addr, &e)))
                {
                    tracing::error!("on_connect_failed panicked: {}", panic_message(&*p));
                }
                conn.core.state = State::Closing;
                self.try_finalize(key);
                self.schedule_reconnect();
            }
        }
    }

    // ----- session life ------------------------------------------------------------

    /// `on_connected`, then the first receive.
    fn open_session(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        conn.core.last_recv = local.now;
        if let Some(idle) = local.config.idle_timeout {
            local.timers.add(local.now + idle, TimerAction::Idle(key));
        }
        call(conn, local, |s, ctx| s.on_connected(ctx));
        self.arm_recv(key);
    }

    /// Arms the standing receive of an open session (not while paused).
    fn arm_recv(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let core = &mut conn.core;
        if !core.is_open() || core.recv_op.is_some() || core.recv_paused {
            return;
        }
        core.recv_op = Some(self.driver.recv(core.sock, key));
        core.recv_cancelled = false;
        core.in_flight += 1;
    }

    fn on_recv(&mut self, key: u64, result: io::Result<Option<RecvLease>>, more: bool) {
        let local = &mut self.local;
        let driver = &mut self.driver;
        let Some(conn) = conn_of(&mut self.slots, key) else {
            if let Ok(Some(lease)) = result {
                driver.release(lease);
            }
            return;
        };
        if !more {
            conn.core.in_flight -= 1;
            conn.core.recv_op = None;
        }
        let lease = match result {
            Ok(Some(lease)) => lease,
            Ok(None) => {
                local.request_close(&mut conn.core, DisconnectReason::PeerClosed);
                self.try_finalize(key);
                return;
            }
            Err(e) => {
                let paused = conn.core.recv_paused && e.raw_os_error() == Some(ECANCELED);
                if conn.core.is_open() && !paused {
                    local.request_close(&mut conn.core, DisconnectReason::from_io(&e));
                }
                self.try_finalize(key);
                return;
            }
        };
        if !conn.core.is_open() {
            driver.release(lease);
            self.try_finalize(key);
            return;
        }
        local.metrics.bytes_in += u64::from(lease.len);
        conn.core.last_recv = local.now;
        let data = driver.lease(&lease);
        let limit = local.config.max_recv_buffer;
        if conn.core.rbuf.len() + data.len() > limit {
            driver.release(lease);
            local.request_close(&mut conn.core, DisconnectReason::RecvBufferFull { limit });
            return;
        }
        if conn.core.recv_paused {
            // Arrived before the pause took effect: kept for `resume_recv`.
            conn.core.rbuf.extend_from_slice(data);
        } else if conn.core.rbuf.is_empty() {
            // The common case: the user reads straight from the driver's buffer, and only
            // what it leaves unconsumed is copied out.
            if let Some(n) = call(conn, local, |s, ctx| s.on_recv(ctx, data)) {
                conn.core.rbuf.extend_from_slice(&data[n.min(data.len())..]);
            }
        } else {
            let mut pending = std::mem::take(&mut conn.core.rbuf);
            pending.extend_from_slice(data);
            if let Some(n) = call(conn, local, |s, ctx| s.on_recv(ctx, &pending)) {
                pending.drain(..n.min(pending.len()));
            }
            conn.core.rbuf = pending;
        }
        driver.release(lease);
        let rbuf = &mut conn.core.rbuf;
        if rbuf.is_empty() && rbuf.capacity() > local.config.recv_buffer_size {
            *rbuf = Vec::new(); // an idle session holds no receive memory
        }
        if !more {
            self.arm_recv(key);
        }
    }

    /// After `resume_recv`: presents bytes kept during the pause, then receives again.
    fn resume_recv(&mut self, key: u64) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        if !conn.core.is_open() || conn.core.recv_paused {
            return;
        }
        if !conn.core.rbuf.is_empty() && conn.core.recv_op.is_none() {
            let mut pending = std::mem::take(&mut conn.core.rbuf);
            if let Some(n) = call(conn, local, |s, ctx| s.on_recv(ctx, &pending)) {
                pending.drain(..n.min(pending.len()));
            }
            conn.core.rbuf = pending;
        }
        self.arm_recv(key);
    }

    /// Starts the gather write of a session's queue if none is in flight.
    fn start_send(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        let may_send = core.state == State::Open || core.flushing;
        if !may_send || core.send_op.is_some() || core.queue.is_empty() {
            return;
        }
        // The queue itself goes to the driver (no copy per buffer); new sends go into the
        // spare. Past one gather write's limit, the rest stays queued.
        let mut batch = std::mem::replace(&mut core.queue, std::mem::take(&mut core.spare));
        if batch.len() > MAX_IOVECS {
            core.queue = batch.split_off(MAX_IOVECS);
        }
        core.send_op = Some(self.driver.send(core.sock, key, batch));
        core.in_flight += 1;
    }

    fn on_send(&mut self, key: u64, result: io::Result<usize>, mut bufs: SendBatch) {
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        core.in_flight -= 1;
        core.send_op = None;
        match result {
            Ok(n) => {
                local.metrics.bytes_out += n as u64;
                // Saturating: an abandoned flush zeroes the count while a send is in flight.
                core.set_queued(core.queued.saturating_sub(n));
                // Drop what went out; a short write's rest goes back in front, in order.
                let mut left = n;
                while let Some(front) = bufs.front_mut() {
                    if left < front.len() {
                        front.advance(left);
                        break;
                    }
                    left -= front.len();
                    bufs.pop_front();
                }
                if bufs.is_empty() {
                    if bufs.capacity() > core.spare.capacity() {
                        core.spare = bufs;
                    }
                } else {
                    bufs.append(&mut core.queue);
                    core.spare = std::mem::replace(&mut core.queue, bufs);
                }
                if !core.queue.is_empty() {
                    local.mark_dirty(core);
                }
                if core.is_open() {
                    call(conn, local, |s, ctx| s.on_send(ctx, n));
                    check_writable(conn, local);
                } else {
                    self.try_finalize(key);
                }
            }
            Err(e) => {
                drop(bufs);
                if core.state == State::Closing {
                    self.stop_flushing(key);
                } else {
                    local.request_close(core, DisconnectReason::from_io(&e));
                }
            }
        }
    }

    /// Carries out disconnect requests and starts sends for every session touched this
    /// turn.
    fn flush_dirty(&mut self) {
        self.run_deferred();
        while !self.local.dirty.is_empty() {
            let dirty = std::mem::take(&mut self.local.dirty);
            for &key in &dirty {
                let Some(conn) = conn_of(&mut self.slots, key) else { continue };
                conn.core.dirty = false;
                if conn.core.notify_full && conn.core.close_request.is_none() {
                    conn.core.notify_full = false;
                    call(conn, &mut self.local, |s, ctx| s.on_send_queue_full(ctx));
                    // Already drained (e.g. the refused send was a handle's): writable now.
                    if conn.core.send_op.is_none() {
                        check_writable(conn, &mut self.local);
                    }
                }
                let Some(conn) = conn_of(&mut self.slots, key) else { continue };
                if let Some(reason) = conn.core.close_request.take() {
                    self.close(key, reason);
                } else if conn.core.recv_paused {
                    // Paused: stop the standing receive (its completion is not an error).
                    if let (Some(op), false) = (conn.core.recv_op, conn.core.recv_cancelled) {
                        conn.core.recv_cancelled = true;
                        self.driver.cancel(op);
                    }
                } else if conn.core.recv_op.is_none() {
                    self.resume_recv(key);
                }
                self.start_send(key);
            }
            // Closing may have queued more (sends or room work from on_disconnected).
            self.run_deferred();
            let mut dirty = dirty;
            dirty.clear();
            if self.local.dirty.is_empty() {
                self.local.dirty = dirty;
            }
        }
    }

    /// Begins the close: `on_disconnected` once, cancel the receive, flush or drop the
    /// queue, then [`Self::try_finalize`].
    fn close(&mut self, key: u64, reason: DisconnectReason) {
        let flush_timeout = self.local.config.close_flush_timeout;
        let local = &mut self.local;
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        let was = core.state;
        if was == State::Closing {
            return;
        }
        core.state = State::Closing;
        core.flags.alive.store(false, Ordering::Release);
        core.graceful = matches!(reason, DisconnectReason::Local(_) | DisconnectReason::Shutdown);
        let lost = !core.graceful && self.connect_to.is_some();
        if was == State::Open {
            tracing::debug!("{} disconnected: {reason}", core.id);
            self.shared.count_disconnect(&reason);
            local.metrics.disconnect(&reason);
            call(conn, local, |s, ctx| s.on_disconnected(ctx, &reason));
        }
        let core = &mut conn.core;
        core.close_request = None;
        let rooms = std::mem::take(&mut core.rooms);
        core.flushing = core.graceful && (!core.queue.is_empty() || core.send_op.is_some());
        for op in [core.recv_op, core.connect_op].into_iter().flatten() {
            self.driver.cancel(op);
        }
        if core.flushing {
            let deadline = match self.shutdown {
                Some(d) => d.min(Instant::now() + flush_timeout),
                None => Instant::now() + flush_timeout,
            };
            if let Some(t) = core.timer.take() {
                local.timers.cancel(t);
            }
            core.timer = Some(local.timers.add(deadline, TimerAction::FlushDeadline(key)));
            local.mark_dirty(core);
        } else {
            self.stop_flushing(key);
        }
        for room in rooms {
            self.remove_member(room, key);
        }
        self.try_finalize(key);
        if lost && was == State::Open {
            self.schedule_reconnect();
        }
    }

    /// Gives up on queued data (error or deadline): drop the queue, cancel the send.
    fn stop_flushing(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        if core.state != State::Closing {
            return;
        }
        core.flushing = false;
        core.queue.clear();
        core.set_queued(0);
        if let Some(op) = core.send_op {
            self.driver.cancel(op);
        }
        self.try_finalize(key);
    }

    /// Frees the slot once the session is closing, flushed, and has nothing in flight.
    fn try_finalize(&mut self, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else {
            return;
        };
        let core = &mut conn.core;
        if core.state != State::Closing {
            return;
        }
        if core.flushing {
            if !core.queue.is_empty() || core.send_op.is_some() {
                return;
            }
            core.flushing = false;
        }
        if core.in_flight > 0 {
            // Everything in flight was cancelled; its completions are on their way.
            return;
        }
        if let Some(t) = core.timer.take() {
            self.local.timers.cancel(t);
        }
        self.driver.close(core.sock);
        if core.ip_counted {
            self.shared.release_ip(core.peer.ip());
        }
        let index = (key & 0xffff_ffff) as u32;
        let slot = &mut self.slots[index as usize];
        slot.conn = None;
        // Generations stay below bit 31 so a key never has the listener tag.
        slot.generation = if slot.generation >= 0x7fff_ffff { 1 } else { slot.generation + 1 };
        self.free.push(index);
        self.live -= 1;
        self.shared.sessions.fetch_sub(1, Ordering::AcqRel);
    }

    fn begin_shutdown(&mut self, deadline: Instant) {
        if self.shutdown.is_some() {
            return;
        }
        self.shutdown = Some(deadline);
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if let Some(t) = l.rearm.take() {
                self.local.timers.cancel(t);
            }
            match l.op {
                Some(op) => self.driver.cancel(op),
                None if !l.closed => {
                    l.closed = true;
                    self.driver.close(l.sock);
                }
                None => {}
            }
        }
        for key in self.live_keys() {
            let Some(conn) = self.conn(key) else { continue };
            if conn.core.state == State::Connecting {
                conn.core.state = State::Closing;
                if let Some(op) = conn.core.connect_op {
                    self.driver.cancel(op);
                }
            } else {
                self.close(key, DisconnectReason::Shutdown);
            }
        }
        self.local.timers.add(deadline, TimerAction::ShutdownDeadline);
    }

    fn dispatch(&mut self, c: Completion) {
        if c.owner & LISTENER_TAG != 0 {
            if let CompletionKind::Accept { result, more } = c.kind {
                self.on_accept((c.owner & !LISTENER_TAG) as usize, result, more);
            }
            return;
        }
        match c.kind {
            CompletionKind::Recv { result, more } => self.on_recv(c.owner, result, more),
            CompletionKind::Send { result, bufs } => self.on_send(c.owner, result, bufs),
            CompletionKind::Connect { result } => self.on_connect(c.owner, result),
            CompletionKind::Accept { .. } => {}
        }
    }
}

/// Notify policy: after the queue drained to the low watermark, sends are accepted again
/// and `on_writable` runs.
fn check_writable<S: Session>(conn: &mut Conn<S>, local: &mut Local) {
    let core = &mut conn.core;
    if core.congested && !core.notify_full && core.queued <= local.config.send_queue_low_watermark {
        core.congested = false;
        core.flags.congested.store(false, Ordering::Release);
        if core.is_open() {
            call(conn, local, |s, ctx| s.on_writable(ctx));
        }
    }
}

fn conn_of<S>(slots: &mut [Slot<S>], key: u64) -> Option<&mut Conn<S>> {
    if key & LISTENER_TAG != 0 {
        return None;
    }
    let slot = slots.get_mut((key & 0xffff_ffff) as usize)?;
    if u64::from(slot.generation) != key >> 32 {
        return None;
    }
    slot.conn.as_mut()
}

/// Runs a job posted to this worker; a panic in it is logged and the worker carries on.
fn run_job(job: Box<dyn FnOnce() + Send>) {
    if let Err(p) = panic::catch_unwind(AssertUnwindSafe(job)) {
        tracing::error!("a job panicked: {}", panic_message(&*p));
    }
}

/// The errno of a cancelled operation (both backends report it so on unix).
#[cfg(unix)]
const ECANCELED: i32 = libc::ECANCELED;
#[cfg(not(unix))]
const ECANCELED: i32 = -1;
