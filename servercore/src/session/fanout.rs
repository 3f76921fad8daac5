//! Room fan-out on one worker: who is in which room here, and how a room broadcast reaches
//! the members' send queues.
//!
//! # The model
//!
//! Everything that concerns rooms and is asked for during a loop turn — a session entering
//! or leaving a room, a broadcast (made by a callback here or posted by another thread or
//! worker), and a session's own send made while such room work is pending — is written to
//! one **log**, in the order it was asked for. The log is **replayed** before any inbox
//! command that queues to or closes sessions, and at the end of the turn (before sends
//! start and closes are carried out). Replaying keeps the log's order exactly, for every
//! member, with one optimisation: consecutive broadcasts to one room are applied together,
//! their small buffers joined into one (copied once, shared by every member), so a member
//! gets one queue entry per batch rather than one per message. That is all there is to it;
//! the rest is bookkeeping to keep that order where the batching could break it:
//!
//! * **Own sends.** A callback cannot reach other sessions' queues, so a session's own
//!   send made while room work is pending is logged too (its bytes, and the buffer,
//!   counted in its queue at once, so limits stay exact) and queued at its place when the
//!   log is replayed. A member whose own sends fall among a room's batch gets that batch's
//!   buffers one by one around them; the other members still get the joined buffer.
//! * **Grouping.** Broadcasts to different rooms are grouped room by room only while no
//!   session here is in two rooms: only such a session could see the regrouping.
//! * **Membership.** An enter or a leave applies the batch so far first: a member gets
//!   exactly the broadcasts made while it was a member.
//!
//! While the log is empty (always, on a worker without room traffic) a send goes straight
//! to its queue: plain sessions pay one emptiness check for rooms. On a worker with room
//! work pending, any session's own send is logged, so that it keeps its place.
//!
//! Thread safety: all of this lives on the worker thread; other threads reach it only
//! through the worker's mailbox (`crate::mailbox`).

use super::{Phase, SessionState, WorkerState};
use crate::error::SendError;
use crate::mailbox::RoomInner;
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::Arc;

/// Gives the replay access to the worker's sessions by key (the worker's slots).
pub(crate) trait Members {
    /// The engine state of session `key`, if it is still there.
    fn core(&mut self, key: u64) -> Option<&mut SessionState>;
}

/// One entry of the log.
enum RoomOp {
    Enter(Arc<RoomInner>, u64),
    Leave(u64, u64),
    Broadcast(u64, Bytes),
    /// A session's own send made while room work was pending.
    Send(u64, Bytes),
}

/// A room's members that live on this worker.
struct LocalRoom {
    room: Arc<RoomInner>,
    members: Vec<u64>,
}

/// The fan-out state of one worker (held in its [`WorkerState`]).
pub(crate) struct Fanout {
    log: Vec<RoomOp>,
    rooms: HashMap<u64, LocalRoom>,
    /// Sessions here in two or more rooms (while any, broadcasts are not regrouped).
    in_several_rooms: usize,
    /// A broadcast reached two or more members since the worker last asked.
    fanned_out: bool,
    /// Queue each broadcast buffer as it is, unjoined (a diagnostic switch: the benchmark's
    /// measure of what joining brings).
    no_join: bool,
    // Reused between replays, so that replaying allocates nothing.
    /// Broadcasts of the batch: room, place in the batch, buffer.
    batch: Vec<(u64, usize, Bytes)>,
    /// Own sends held among them: session, broadcasts made before it, buffer (taken once
    /// queued).
    own_sends: Vec<(u64, usize, Option<Bytes>)>,
    /// One room's buffers of the batch, their places, and what members get (joined).
    room_bufs: Vec<Bytes>,
    room_places: Vec<usize>,
    joined: Vec<Bytes>,
}

impl Fanout {
    pub(crate) fn new(no_join: bool) -> Self {
        Fanout {
            log: Vec::new(),
            rooms: HashMap::new(),
            in_several_rooms: 0,
            fanned_out: false,
            no_join,
            batch: Vec::new(),
            own_sends: Vec::new(),
            room_bufs: Vec::new(),
            room_places: Vec::new(),
            joined: Vec::new(),
        }
    }

    /// Whether room work waits in the log.
    pub(crate) fn pending(&self) -> bool {
        !self.log.is_empty()
    }

    /// Logs a broadcast posted to this worker (by another thread or worker).
    pub(crate) fn posted_broadcast(&mut self, room: u64, buf: Bytes) {
        self.log.push(RoomOp::Broadcast(room, buf));
    }

    /// Logs an enter or a leave posted to this worker.
    pub(crate) fn posted_enter(&mut self, room: Arc<RoomInner>, key: u64) {
        self.log.push(RoomOp::Enter(room, key));
    }

    pub(crate) fn posted_leave(&mut self, room: u64, key: u64) {
        self.log.push(RoomOp::Leave(room, key));
    }

    /// Whether a broadcast reached two or more members since the last call.
    pub(crate) fn take_fanned_out(&mut self) -> bool {
        std::mem::take(&mut self.fanned_out)
    }
}

/// What callbacks ask for (through [`Ctx`](crate::Ctx)): written to the log.
impl WorkerState {
    /// Adds the session to `room` once the callback returns; false if the room belongs to
    /// another service.
    pub(crate) fn enter_room(&mut self, core: &SessionState, room: &Arc<RoomInner>) -> bool {
        let Some(service) = self.service.upgrade() else { return false };
        if !room.bind(service.id, service.workers.get().map_or(&[][..], Vec::as_slice)) {
            return false;
        }
        self.fanout.log.push(RoomOp::Enter(room.clone(), core.key));
        true
    }

    pub(crate) fn leave_room(&mut self, core: &SessionState, room: u64) {
        self.fanout.log.push(RoomOp::Leave(room, core.key));
    }

    /// Posts the buffer to the other workers with members now, and logs it for this
    /// worker's members: one sender's broadcasts stay in order. All or nothing: refused
    /// when another worker's inbox is over its budget.
    pub(crate) fn broadcast_room(
        &mut self,
        room: &Arc<RoomInner>,
        buf: Bytes,
    ) -> Result<(), SendError> {
        room.post_to_workers(Some(self.remote.index), &buf)?;
        room.relay(&buf);
        self.fanout.log.push(RoomOp::Broadcast(room.id, buf));
        Ok(())
    }

    /// A session's own send ([`Ctx::send`](crate::Ctx::send)): straight to its queue,
    /// unless room work is pending, which it must follow (then it is logged, its bytes
    /// counted in its queue now).
    pub(crate) fn send_own(
        &mut self,
        core: &mut SessionState,
        buf: Bytes,
    ) -> Result<(), SendError> {
        // (A farewell from `on_disconnected` is logged too while sends it made earlier wait
        // in the log: it must follow them. Its bytes count in `queued` at once, which is
        // what decides whether the close flushes.)
        if self.fanout.log.is_empty() {
            return self.queue_send(core, buf, false);
        }
        self.admit(core, buf.len(), true)?;
        if !buf.is_empty() {
            core.set_queued(core.queued + buf.len());
            core.logged_sends += 1;
            self.fanout.log.push(RoomOp::Send(core.key, buf));
        }
        Ok(())
    }

    /// Queues a logged own send at its place. Its bytes were counted when it was made: a
    /// disconnect asked for since flushes it (graceful) or drops it with the queue.
    fn queue_logged(&mut self, core: &mut SessionState, buf: Bytes) {
        core.logged_sends -= 1;
        if core.state == Phase::Closing && !core.flushing {
            // Dropped with the queue (whose count a given-up flush has zeroed already).
            core.set_queued(core.queued.saturating_sub(buf.len()));
            return;
        }
        self.push_queued(core, buf);
        self.metrics.buffers_out += 1;
        self.mark_dirty(core);
    }
}

/// The replay.
impl WorkerState {
    /// Carries out the logged room work, in order (see the module doc).
    pub(crate) fn replay_room_work(&mut self, members: &mut dyn Members) {
        while !self.fanout.log.is_empty() {
            let mut log = std::mem::take(&mut self.fanout.log);
            for op in log.drain(..) {
                match op {
                    RoomOp::Broadcast(room, buf) => {
                        let place = self.fanout.batch.len();
                        self.fanout.batch.push((room, place, buf));
                    }
                    RoomOp::Enter(room, key) => {
                        self.apply_batch(members);
                        self.join_room(room, key, members);
                    }
                    RoomOp::Leave(room, key) => {
                        self.apply_batch(members);
                        self.leave_room_now(room, key, members);
                    }
                    RoomOp::Send(key, buf) if self.fanout.in_several_rooms == 0 => {
                        let place = self.fanout.batch.len();
                        self.fanout.own_sends.push((key, place, Some(buf)));
                    }
                    RoomOp::Send(key, buf) => {
                        self.apply_batch(members);
                        if let Some(core) = members.core(key) {
                            self.queue_logged(core, buf);
                        }
                    }
                }
            }
            self.apply_batch(members);
            if self.fanout.log.is_empty() {
                self.fanout.log = log; // keep the allocation
            }
        }
    }

    /// Takes a closing session out of every room it is in here, at once (not through the
    /// log): called by the worker's close after `on_disconnected`, whose room work stays
    /// logged and, replayed later, finds the session in no room (an enter is refused for a
    /// session that is not open; a leave finds nothing to leave).
    pub(crate) fn leave_rooms_on_close(&mut self, core: &mut SessionState) {
        let rooms = std::mem::take(&mut core.rooms);
        if rooms.len() >= 2 {
            self.fanout.in_several_rooms -= 1;
        }
        for room in rooms {
            self.remove_member(room, core.key);
        }
    }

    /// Drops `key` from this worker's members of `room`.
    fn remove_member(&mut self, room: u64, key: u64) {
        let rooms = &mut self.fanout.rooms;
        if let Some(local) = rooms.get_mut(&room) {
            if let Some(i) = local.members.iter().position(|&k| k == key) {
                local.members.swap_remove(i);
                local.room.member_removed(self.remote.index);
            }
            if local.members.is_empty() {
                rooms.remove(&room);
            }
        }
    }

    fn join_room(&mut self, room: Arc<RoomInner>, key: u64, members: &mut dyn Members) {
        let Some(service) = self.service.upgrade() else { return };
        if !room.bind(service.id, service.workers.get().map_or(&[][..], Vec::as_slice)) {
            tracing::warn!("a room of another service was asked to take a session; ignored");
            return;
        }
        let Some(core) = members.core(key) else { return };
        if !core.is_open() || core.rooms.contains(&room.id) {
            return;
        }
        core.rooms.push(room.id);
        if core.rooms.len() == 2 {
            self.fanout.in_several_rooms += 1;
        }
        room.member_added(self.remote.index);
        let id = room.id;
        let entry = self.fanout.rooms.entry(id);
        entry.or_insert_with(|| LocalRoom { room, members: Vec::new() }).members.push(key);
    }

    fn leave_room_now(&mut self, room: u64, key: u64, members: &mut dyn Members) {
        let Some(core) = members.core(key) else { return };
        let Some(pos) = core.rooms.iter().position(|&r| r == room) else { return };
        core.rooms.swap_remove(pos);
        if core.rooms.len() == 1 {
            self.fanout.in_several_rooms -= 1;
        }
        self.remove_member(room, key);
    }

    /// Applies the broadcasts gathered in the batch, room by room, and the own sends held
    /// among them.
    fn apply_batch(&mut self, members: &mut dyn Members) {
        let mut batch = std::mem::take(&mut self.fanout.batch);
        // Grouping by room reorders broadcasts to different rooms, which only a session in
        // two or more rooms could see; with such sessions here, only consecutive
        // broadcasts to one room are grouped (and own sends are never held among them).
        // Stable sorts: each room's order, and each session's, is kept.
        if self.fanout.in_several_rooms == 0 {
            batch.sort_by_key(|(room, _, _)| *room);
        }
        self.fanout.own_sends.sort_by_key(|h| h.0);
        let mut bufs = std::mem::take(&mut self.fanout.room_bufs);
        let mut places = std::mem::take(&mut self.fanout.room_places);
        let mut it = batch.drain(..).peekable();
        while let Some((room, place, buf)) = it.next() {
            bufs.clear();
            places.clear();
            bufs.push(buf);
            places.push(place);
            while let Some((_, place, buf)) = it.next_if(|(r, _, _)| *r == room) {
                bufs.push(buf);
                places.push(place);
            }
            self.apply_room(room, &bufs, &places, members);
        }
        drop(it);
        // Own sends of sessions in none of these rooms, in order.
        let mut own_sends = std::mem::take(&mut self.fanout.own_sends);
        for (key, _, buf) in own_sends.drain(..) {
            if let (Some(buf), Some(core)) = (buf, members.core(key)) {
                self.queue_logged(core, buf);
            }
        }
        bufs.clear();
        places.clear();
        self.fanout.own_sends = own_sends;
        self.fanout.room_bufs = bufs;
        self.fanout.room_places = places;
        self.fanout.batch = batch;
    }

    /// Queues one room's broadcasts (in the order they were made) on its members here.
    ///
    /// With two or more members the small buffers are joined first (see
    /// [`crate::buffer::coalesce`]). A member with own sends held in this batch gets the
    /// buffers one by one instead, its sends in between where they were made (`places`:
    /// each buffer's place in the batch).
    fn apply_room(&mut self, room: u64, bufs: &[Bytes], places: &[usize], m: &mut dyn Members) {
        let Some(local_room) = self.fanout.rooms.get(&room) else { return };
        let many = local_room.members.len() >= 2;
        let mut joined = std::mem::take(&mut self.fanout.joined);
        joined.clear();
        if many && !self.fanout.no_join {
            crate::buffer::coalesce(bufs, &mut joined);
        } else {
            joined.extend_from_slice(bufs);
        }
        self.fanout.fanned_out |= many;
        let mut own_sends = std::mem::take(&mut self.fanout.own_sends);
        let keys = std::mem::take(&mut self.fanout.rooms.get_mut(&room).expect("above").members);
        for &key in &keys {
            let Some(core) = m.core(key) else { continue };
            // Own sends are sorted by session, then place.
            let from = own_sends.partition_point(|h| h.0 < key);
            let to = from + own_sends[from..].iter().take_while(|h| h.0 == key).count();
            if from == to {
                for seg in &joined {
                    if self.queue_send(core, seg.clone(), false).is_err() {
                        break; // closed, closing or over its limit: the rest cannot go either
                    }
                }
                continue;
            }
            let mut refused = false;
            let mut next = from;
            for (buf, &place) in bufs.iter().zip(places) {
                while next < to && own_sends[next].1 <= place {
                    if let Some(h) = own_sends[next].2.take() {
                        self.queue_logged(core, h);
                    }
                    next += 1;
                }
                if !refused && self.queue_send(core, buf.clone(), false).is_err() {
                    refused = true; // the broadcasts cannot go; its own sends still can
                }
            }
            // Its sends made after the room's last broadcast go after them all.
            for h in &mut own_sends[next..to] {
                if let Some(buf) = h.2.take() {
                    self.queue_logged(core, buf);
                }
            }
        }
        if let Some(local_room) = self.fanout.rooms.get_mut(&room) {
            local_room.members = keys;
        }
        joined.clear();
        self.fanout.joined = joined;
        self.fanout.own_sends = own_sends;
    }
}
