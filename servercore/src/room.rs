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
use crate::error::SendError;
use crate::mailbox::Command;
pub(crate) use crate::mailbox::RoomInner;
use crate::session::{Ctx, SessionHandle};
use std::fmt;
use std::sync::Arc;

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
///         // Everyone in the lobby gets it (unless a worker is far behind: `InboxFull`).
///         let _ = ctx.broadcast_room(&self.lobby, data.to_vec());
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

impl Default for Room {
    fn default() -> Self {
        Room::new()
    }
}

impl Room {
    /// A new, empty room. It belongs to the service of its first member.
    pub fn new() -> Room {
        Room { inner: Arc::new(RoomInner::new()) }
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
        let bytes = buf.into().into_bytes();
        self.inner.post_to_workers(None, &bytes)?;
        self.inner.relay(&bytes);
        Ok(())
    }

    /// Members now (a snapshot; enters and leaves in flight are not counted yet).
    pub fn len(&self) -> usize {
        self.inner.len()
    }

    /// Whether the room has no member now.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Room operations of a session's context (they live with rooms: the session layer below
/// knows nothing of rooms).
impl Ctx<'_> {
    /// Adds this session to `room` once the callback returns. False if the room belongs
    /// to another service.
    pub fn enter_room(&mut self, room: &Room) -> bool {
        self.local.enter_room(self.core, &room.inner)
    }

    /// Removes this session from `room` once the callback returns.
    pub fn leave_room(&mut self, room: &Room) {
        self.local.leave_room(self.core, room.inner.id)
    }

    /// Queues `buf` on every member of `room` (this session included, if a member). Other
    /// workers with members get one message each. This worker's members get it at the end
    /// of the loop turn, small buffers joined with the turn's other broadcasts to the room
    /// (so that members get few buffers rather than one per message); sends this session
    /// makes after the broadcast still reach it after the broadcast. One sender's
    /// broadcasts reach every member in order, across rooms too.
    ///
    /// All or nothing: refused with [`SendError::InboxFull`] when another worker with
    /// members is not keeping up (see [`Room::broadcast`]); then no member gets it.
    pub fn broadcast_room(
        &mut self,
        room: &Room,
        buf: impl Into<SendBuffer>,
    ) -> Result<(), SendError> {
        self.local.broadcast_room(&room.inner, buf.into().into_bytes())
    }
}

impl fmt::Debug for Room {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Room#{} ({} members)", self.inner.id, self.len())
    }
}
