//! Room membership and broadcast on this worker.

use super::*;

impl<S: Session> Worker<S> {
    pub(super) fn room_enter(&mut self, room: Arc<RoomInner>, key: u64) {
        if !room.bind(&self.shared) {
            tracing::warn!("a room of another service was asked to take a session; ignored");
            return;
        }
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        if !conn.core.is_open() || conn.core.rooms.contains(&room.id) {
            return;
        }
        conn.core.rooms.push(room.id);
        if conn.core.rooms.len() == 2 {
            self.multi_room += 1;
        }
        room.member_added(self.local.remote.index);
        let id = room.id;
        self.rooms
            .entry(id)
            .or_insert_with(|| LocalRoom { room, members: Vec::new() })
            .members
            .push(key);
    }

    pub(super) fn room_leave(&mut self, room: u64, key: u64) {
        let Some(conn) = conn_of(&mut self.slots, key) else { return };
        let Some(pos) = conn.core.rooms.iter().position(|&r| r == room) else { return };
        conn.core.rooms.swap_remove(pos);
        if conn.core.rooms.len() == 1 {
            self.multi_room -= 1;
        }
        self.remove_member(room, key);
    }

    /// Drops `key` from this worker's list of `room` members.
    pub(super) fn remove_member(&mut self, room: u64, key: u64) {
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

    /// Queues one room's broadcasts (in the order they were made) on its members here.
    ///
    /// With two or more members the small buffers are joined first (see
    /// [`crate::buffer::coalesce`]): one queue entry per member per batch instead of one
    /// per message, which is most of what a broadcast costs a busy worker.
    fn room_broadcast_batch(&mut self, room: u64, bufs: &[Bytes]) {
        let Some(local_room) = self.rooms.get(&room) else { return };
        let segs = &mut self.scratch.segs;
        segs.clear();
        if local_room.members.len() >= 2 {
            self.scratch.fanned_out = true;
        }
        if local_room.members.len() >= 2 && !self.scratch.no_coalesce {
            crate::buffer::coalesce(bufs, segs);
        } else {
            segs.extend_from_slice(bufs);
        }
        let local = &mut self.local;
        for &key in &local_room.members {
            if let Some(conn) = conn_of(&mut self.slots, key) {
                for seg in segs.iter() {
                    if local.queue_send(&mut conn.core, seg.clone(), false).is_err() {
                        break; // closed, closing or over its limit: the rest cannot go either
                    }
                }
            }
        }
        segs.clear();
    }

    /// Carries out the broadcasts gathered in `scratch.batch`, room by room.
    fn apply_broadcasts(&mut self) {
        let mut batch = std::mem::take(&mut self.scratch.batch);
        // Grouping by room reorders broadcasts to different rooms, which only a session in
        // two or more rooms could see; with such sessions here, only consecutive
        // broadcasts to one room are grouped. Stable: each room's own order is kept.
        if self.multi_room == 0 {
            batch.sort_by_key(|(room, _)| *room);
        }
        let mut parts = std::mem::take(&mut self.scratch.parts);
        let mut it = batch.drain(..).peekable();
        while let Some((room, buf)) = it.next() {
            parts.clear();
            parts.push(buf);
            while let Some((_, buf)) = it.next_if(|(r, _)| *r == room) {
                parts.push(buf);
            }
            self.room_broadcast_batch(room, &parts);
        }
        drop(it);
        parts.clear();
        self.scratch.parts = parts;
        self.scratch.batch = batch;
    }

    /// Carries out the room operations asked for since the last call, in order.
    ///
    /// Broadcasts are gathered until the next enter, leave or held own send (each must see
    /// exactly the broadcasts made before it) and then applied room by room.
    pub(super) fn run_deferred(&mut self) {
        while !self.local.deferred.is_empty() {
            let mut deferred = std::mem::take(&mut self.local.deferred);
            for d in deferred.drain(..) {
                match d {
                    Deferred::Broadcast(room, buf) => self.scratch.batch.push((room, buf)),
                    Deferred::Enter(room, key) => {
                        self.apply_broadcasts();
                        self.room_enter(room, key);
                    }
                    Deferred::Leave(room, key) => {
                        self.apply_broadcasts();
                        self.room_leave(room, key);
                    }
                    Deferred::Send(key, buf) => {
                        self.apply_broadcasts();
                        if let Some(conn) = conn_of(&mut self.slots, key) {
                            self.local.push_held(&mut conn.core, buf);
                        }
                    }
                }
            }
            self.apply_broadcasts();
            if self.local.deferred.is_empty() {
                self.local.deferred = deferred; // keep the allocation
            }
        }
    }
}

/// Reused buffers for [`Worker::run_deferred`] (no allocation per turn).
#[derive(Default)]
pub(super) struct RoomScratch {
    batch: Vec<(u64, Bytes)>,
    parts: Vec<Bytes>,
    segs: Vec<Bytes>,
    /// A broadcast went to two or more members since the last wait.
    pub(super) fanned_out: bool,
    /// SERVERCORE_NO_ROOM_COALESCE=1: queue each broadcast buffer on each member as it is
    /// (the benchmark's measure of what joining them brings).
    no_coalesce: bool,
}

impl RoomScratch {
    pub(super) fn new() -> Self {
        let no_coalesce = std::env::var_os("SERVERCORE_NO_ROOM_COALESCE").is_some_and(|v| v == "1");
        RoomScratch { no_coalesce, ..Default::default() }
    }
}
