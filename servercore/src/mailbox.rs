//! The mailbox of a worker: what other threads (and other workers) hand it, and how.
//!
//! A worker owns its sessions; everything another thread wants done to them becomes a
//! [`Command`] posted to the owning worker's inbox through its [`WorkerRemote`], which
//! also wakes it. The inbox is bounded by accounting, not by blocking: data commands
//! (sends, broadcasts) reserve their bytes first and are refused when the worker is too
//! far behind. A room's [`RoomInner`] says which workers hold its members, so a broadcast
//! is posted once per such worker.
//!
//! Thread safety: everything here is `Send + Sync`; a worker's inbox is drained only by
//! that worker.

use crate::config::SessionConfig;
use crate::driver::Waker;
use crate::error::SendError;
use crate::reason::DisconnectReason;
use bytes::Bytes;
use std::any::{Any, TypeId};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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
    /// Take over a connection accepted by another worker (true: on the WebSocket
    /// listener).
    Adopt(TcpStream, bool),
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
    /// Run a closure with a session's object and context: a `session::SessionJob`,
    /// boxed as `Any` so that this layer need not know the session layer's types.
    SessionJob { key: u64, job: Box<dyn Any + Send> },
    /// Add a session to a room.
    RoomEnter { room: Arc<RoomInner>, key: u64 },
    /// Remove a session from a room.
    RoomLeave { room: u64, key: u64 },
    /// Queue a buffer on the room's members on this worker.
    RoomBroadcast { room: u64, buf: Bytes },
}

/// What one command costs its worker's inbox besides its payload: the command itself
/// and its share of the channel's blocks.
pub(crate) const INBOX_ENTRY: usize = std::mem::size_of::<Command>() + 16;

/// The part of a worker other threads can reach: its inbox and its wake-up.
/// Thread safety: `Send + Sync`; every method may be called from any thread.
///
/// The inbox itself is a channel without a bound; what bounds it is the accounting of
/// data commands (sends and broadcasts, the only ones whose volume follows traffic):
/// each reserves its payload plus [`INBOX_ENTRY`] in `inbox` before it is posted, up to
/// [`SessionConfig::max_worker_inbox`], and the worker releases that when it takes the
/// command. Control commands (disconnect, rooms, jobs, shutdown) are never refused.
pub(crate) struct WorkerRemote {
    pub(crate) index: usize,
    pub(crate) config: Arc<SessionConfig>,
    tx: Sender<Command>,
    waker: Arc<Waker>,
    /// Bytes of data commands posted and not yet taken by the worker.
    inbox: AtomicUsize,
    /// The type of the sessions this worker serves.
    pub(crate) session_type: SessionType,
}

impl WorkerRemote {
    /// Posts a command and wakes the worker. Fails once the worker has ended.
    pub(crate) fn post(&self, cmd: Command) -> Result<(), ()> {
        self.tx.send(cmd).map_err(|_| ())?;
        self.waker.wake();
        Ok(())
    }

    /// Reserves `cost` bytes of the inbox budget for a data command about to be posted.
    pub(crate) fn reserve(&self, cost: usize) -> Result<(), SendError> {
        let limit = self.config.max_worker_inbox;
        let before = self.inbox.fetch_add(cost, Ordering::AcqRel);
        if before + cost > limit {
            self.inbox.fetch_sub(cost, Ordering::AcqRel);
            return Err(SendError::InboxFull { limit });
        }
        Ok(())
    }

    /// Gives back a reservation: its command was taken, or never posted.
    pub(crate) fn release(&self, cost: usize) {
        self.inbox.fetch_sub(cost, Ordering::AcqRel);
    }

    /// Posts a data command whose `cost` was reserved; the reservation is given back if
    /// the worker has ended.
    pub(crate) fn post_reserved(&self, cmd: Command, cost: usize) -> Result<(), SendError> {
        self.post(cmd).map_err(|()| {
            self.release(cost);
            SendError::Disconnected
        })
    }

    /// Posts `make()` to each of `workers`, all or none: when one inbox is over its
    /// budget, nothing is posted and that is the error.
    pub(crate) fn post_all<'a>(
        workers: impl Iterator<Item = &'a WorkerRemote> + Clone,
        cost: usize,
        mut make: impl FnMut() -> Command,
    ) -> Result<(), SendError> {
        for (reserved, w) in workers.clone().enumerate() {
            if let Err(e) = w.reserve(cost) {
                for w in workers.take(reserved) {
                    w.release(cost);
                }
                return Err(e);
            }
        }
        for w in workers {
            // A worker that has ended has no sessions left to deliver to.
            let _ = w.post_reserved(make(), cost);
        }
        Ok(())
    }
}

/// Builds the remote half of a worker from its inbox sender and its driver's waker.
pub(crate) fn remote(
    index: usize,
    config: Arc<SessionConfig>,
    tx: Sender<Command>,
    waker: Arc<Waker>,
    session_type: SessionType,
) -> WorkerRemote {
    WorkerRemote { index, config, tx, waker, inbox: AtomicUsize::new(0), session_type }
}

/// The type of the session objects a worker serves (one per service), so that a job typed
/// for another session type is refused when posted rather than silently dropped.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SessionType {
    pub(crate) id: TypeId,
    pub(crate) name: &'static str,
}

impl SessionType {
    pub(crate) fn of<S: 'static>() -> Self {
        SessionType { id: TypeId::of::<S>(), name: std::any::type_name::<S>() }
    }
}

static NEXT_ROOM: AtomicU64 = AtomicU64::new(1);

/// A room's identity and where its members live (shared by every [`Room`](crate::Room)
/// handle of it).
pub(crate) struct RoomInner {
    pub(crate) id: u64,
    /// The service's workers and how many members live on each, set by the first member.
    binding: OnceLock<Binding>,
    /// Called with every broadcast's buffer besides delivering it (a clustered room
    /// publishes it to the other nodes).
    relay: OnceLock<Relay>,
}

/// See [`RoomInner::set_relay`].
pub(crate) type Relay = Box<dyn Fn(&Bytes) + Send + Sync>;

struct Binding {
    workers: Vec<Arc<WorkerRemote>>,
    members: Vec<AtomicUsize>,
    /// Identity of the owning service.
    service: u64,
}

impl RoomInner {
    /// A new room, bound to no service yet.
    pub(crate) fn new() -> Self {
        RoomInner {
            id: NEXT_ROOM.fetch_add(1, Ordering::Relaxed),
            binding: OnceLock::new(),
            relay: OnceLock::new(),
        }
    }

    /// Sets the relay every broadcast is also handed to (once; later calls are ignored).
    pub(crate) fn set_relay(&self, relay: Relay) {
        let _ = self.relay.set(relay);
    }

    /// Hands a broadcast to the relay, if the room has one.
    pub(crate) fn relay(&self, buf: &Bytes) {
        if let Some(r) = self.relay.get() {
            r(buf);
        }
    }

    /// Binds the room on first use to the service `service` (its id) whose workers are
    /// `workers`; false if it belongs to another service.
    pub(crate) fn bind(&self, service: u64, workers: &[Arc<WorkerRemote>]) -> bool {
        let b = self.binding.get_or_init(|| {
            let members = workers.iter().map(|_| AtomicUsize::new(0)).collect();
            Binding { workers: workers.to_vec(), members, service }
        });
        b.service == service
    }

    /// Members now, on every worker.
    pub(crate) fn len(&self) -> usize {
        self.binding.get().map_or(0, |b| b.members.iter().map(|n| n.load(Ordering::Acquire)).sum())
    }

    pub(crate) fn member_added(&self, worker: usize) {
        if let Some(n) = self.binding.get().and_then(|b| b.members.get(worker)) {
            n.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn member_removed(&self, worker: usize) {
        if let Some(n) = self.binding.get().and_then(|b| b.members.get(worker)) {
            n.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Posts a broadcast to every worker with members but `except` (the caller's own,
    /// whose members it serves itself), all or none (see [`WorkerRemote::post_all`]).
    pub(crate) fn post_to_workers(
        &self,
        except: Option<usize>,
        buf: &Bytes,
    ) -> Result<(), SendError> {
        let Some(b) = self.binding.get() else { return Ok(()) };
        let cost = buf.len() + INBOX_ENTRY;
        let make = || Command::RoomBroadcast { room: self.id, buf: buf.clone() };
        // Member counts change under our feet (other workers enter and leave): the targets
        // are read once, so that reserving, rolling back and posting agree on the set.
        let chosen = |i: usize| Some(i) != except && b.members[i].load(Ordering::Acquire) > 0;
        if b.workers.len() <= 128 {
            let mask = (0..b.workers.len()).filter(|&i| chosen(i)).fold(0u128, |m, i| m | 1 << i);
            WorkerRemote::post_all(Targets { mask, workers: &b.workers }, cost, make)
        } else {
            let v: Vec<&WorkerRemote> =
                (0..b.workers.len()).filter(|&i| chosen(i)).map(|i| &*b.workers[i]).collect();
            WorkerRemote::post_all(v.iter().copied(), cost, make)
        }
    }
}

/// A fixed set of workers (a bit per worker index), so that every pass over it sees the
/// same workers.
#[derive(Clone)]
struct Targets<'a> {
    mask: u128,
    workers: &'a [Arc<WorkerRemote>],
}

impl<'a> Iterator for Targets<'a> {
    type Item = &'a WorkerRemote;

    fn next(&mut self) -> Option<&'a WorkerRemote> {
        if self.mask == 0 {
            return None;
        }
        let i = self.mask.trailing_zeros() as usize;
        self.mask &= self.mask - 1;
        Some(&self.workers[i])
    }
}

/// Work deferred to the end of a loop turn.
type Deferred = Vec<Box<dyn FnOnce()>>;

thread_local! {
    /// Work deferred to the end of this worker's loop turn (`None` on threads that are no
    /// worker): a clustered room's relay gathers a turn's broadcasts this way.
    static TURN_END: std::cell::RefCell<Option<Deferred>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `f` at the end of this worker's loop turn, after its sends started; at once on a
/// thread that is no worker.
pub(crate) fn at_turn_end(f: Box<dyn FnOnce()>) {
    let now = TURN_END.with(|t| match t.borrow_mut().as_mut() {
        Some(deferred) => {
            deferred.push(f);
            None
        }
        None => Some(f),
    });
    if let Some(f) = now {
        f();
    }
}

/// Marks this thread as a worker: [`at_turn_end`] defers from now on.
pub(crate) fn enter_worker_thread() {
    TURN_END.with(|t| *t.borrow_mut() = Some(Vec::new()));
}

/// Runs what was deferred to the end of this turn (and what that defers in turn).
pub(crate) fn end_turn() {
    loop {
        let due =
            TURN_END.with(|t| t.borrow_mut().as_mut().map(std::mem::take).unwrap_or_default());
        if due.is_empty() {
            return;
        }
        for f in due {
            f();
        }
    }
}
