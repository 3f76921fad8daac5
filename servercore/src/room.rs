//! Rooms: sets of sessions that may live on different workers, with broadcast (the seed's
//! `GameRoom` broadcast, without its global lock).
//!
//! A room keeps, per worker, the list of its members that live there; that list is only
//! touched by its worker. `broadcast` posts the buffer once to each worker that has
//! members, and each worker queues it on its local members: no lock is held while
//! sending, and no payload is copied per receiver. A worker gathers a room's broadcasts of
//! one loop turn and joins the small ones into one buffer (copied once), so that a member
//! typically gets one queue entry per turn rather than one per message. (Buffers over
//! 2 KiB are queued as they are; a member whose own sends fall among the batch gets its
//! buffers one by one around them; while a session of the worker is in two rooms, only
//! consecutive broadcasts to one room are joined, so that it sees them in order.)

use crate::buffer::SendBuffer;
use crate::service::ServiceShared;
use crate::session::{SendError, SessionHandle};
use crate::worker::{Command, WorkerRemote, INBOX_ENTRY};
use bytes::Bytes;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, Weak};

static NEXT_ROOM: AtomicU64 = AtomicU64::new(1);

/// A set of sessions of one service. Cheap to clone (shared), `Send + Sync`.
///
/// Membership changes are messages to the member's worker, carried out in order with the
/// other messages to it: a broadcast sent after `enter` was carried out reaches the new
/// member. For any one sender, members receive its broadcasts in the order they were
/// made, and a session's own [`Ctx::send`](crate::Ctx::send) made after a broadcast
/// reaches it after that broadcast. What one thread posts to a worker (broadcasts from
/// outside the worker, [`SessionHandle::send`]) is carried out in the order it was posted.
/// A session leaves its rooms when it disconnects.
///
/// ```
/// use servercore::{Ctx, Room, ServerService, Session};
///
/// struct Player { lobby: Room }
/// impl Session for Player {
///     fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
///         ctx.enter_room(&self.lobby);
///     }
///     fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
///         ctx.broadcast_room(&self.lobby, data.to_vec()); // everyone in the lobby gets it
///         data.len()
///     }
/// }
///
/// let lobby = Room::new();
/// let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
///     .start(move || Player { lobby: lobby.clone() })
///     .unwrap();
/// # server.shutdown(std::time::Duration::from_secs(1)).unwrap();
/// ```
#[derive(Clone)]
pub struct Room {
    pub(crate) inner: Arc<RoomInner>,
}

pub(crate) struct RoomInner {
    pub(crate) id: u64,
    /// The service's workers and how many members live on each, set by the first member.
    binding: OnceLock<Binding>,
}

struct Binding {
    workers: Vec<Arc<WorkerRemote>>,
    members: Vec<AtomicUsize>,
    /// Identity of the owning service (compared, never upgraded).
    service: Weak<ServiceShared>,
}

impl Default for Room {
    fn default() -> Self {
        Room::new()
    }
}

impl Room {
    /// A new, empty room. It belongs to the service of its first member.
    pub fn new() -> Room {
        Room {
            inner: Arc::new(RoomInner {
                id: NEXT_ROOM.fetch_add(1, Ordering::Relaxed),
                binding: OnceLock::new(),
            }),
        }
    }

    /// Adds the session (on its worker, asynchronously).
    pub fn enter(&self, session: &SessionHandle) -> Result<(), SendError> {
        if !session.is_connected() {
            return Err(SendError::Disconnected);
        }
        session
            .worker
            .post(Command::RoomEnter { room: self.inner.clone(), key: session.key })
            .map_err(|_| SendError::Disconnected)
    }

    /// Removes the session (on its worker, asynchronously).
    pub fn leave(&self, session: &SessionHandle) {
        let _ = session.worker.post(Command::RoomLeave { room: self.inner.id, key: session.key });
    }

    /// Queues `buf` on every member: one message per worker that has members.
    ///
    /// All or nothing: [`SendError::InboxFull`] when a worker with members has more
    /// posted and not yet taken than
    /// [`max_worker_inbox`](crate::SessionConfig::max_worker_inbox) (it is not keeping
    /// up); then no member gets it.
    pub fn broadcast(&self, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        self.inner.post_to_workers(None, &buf.into().into_bytes())
    }

    /// Members now (a snapshot; enters and leaves in flight are not counted yet).
    pub fn len(&self) -> usize {
        self.inner
            .binding
            .get()
            .map_or(0, |b| b.members.iter().map(|n| n.load(Ordering::Acquire)).sum())
    }

    /// Whether the room has no member now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl RoomInner {
    /// Binds the room to a service on first use; false if it belongs to another service.
    pub(crate) fn bind(&self, service: &Arc<ServiceShared>) -> bool {
        let b = self.binding.get_or_init(|| {
            let workers = service.workers.get().cloned().unwrap_or_default();
            let members = workers.iter().map(|_| AtomicUsize::new(0)).collect();
            Binding { workers, members, service: Arc::downgrade(service) }
        });
        std::ptr::eq(b.service.as_ptr(), Arc::as_ptr(service))
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
        let targets = b
            .workers
            .iter()
            .zip(&b.members)
            .enumerate()
            .filter(move |(i, (_, n))| Some(*i) != except && n.load(Ordering::Acquire) > 0)
            .map(|(_, (w, _))| &**w);
        let cost = buf.len() + INBOX_ENTRY;
        WorkerRemote::post_all(targets, cost, || Command::RoomBroadcast {
            room: self.id,
            buf: buf.clone(),
        })
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Room#{} ({} members)", self.inner.id, self.len())
    }
}
