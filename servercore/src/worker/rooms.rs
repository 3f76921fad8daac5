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
    /// per message, which is most of what a broadcast costs a busy worker. A member with
    /// own sends held in this batch gets the buffers one by one instead, its sends in
    /// between where they were made (`positions`: each buffer's place in the batch).
    fn room_broadcast_batch(&mut self, room: u64, bufs: &[Bytes], positions: &[usize]) {
        let Some(local_room) = self.rooms.get(&room) else { return };
        let segs = &mut self.scratch.segs;
        segs.clear();
        if local_room.members.len() >= 2 {
            self.scratch.fanned_out = true;
        }
        if local_room.members.len() >= 2 && !self.local.config.diagnostics.no_room_coalesce {
            crate::buffer::coalesce(bufs, segs);
        } else {
            segs.extend_from_slice(bufs);
        }
        let helds = &mut self.scratch.helds;
        let local = &mut self.local;
        for &key in &local_room.members {
            let Some(conn) = conn_of(&mut self.slots, key) else { continue };
            // Held sends are sorted by session, then place.
            let from = helds.partition_point(|h| h.0 < key);
            let to = from + helds[from..].iter().take_while(|h| h.0 == key).count();
            if from == to {
                for seg in segs.iter() {
                    if local.queue_send(&mut conn.core, seg.clone(), false).is_err() {
                        break; // closed, closing or over its limit: the rest cannot go either
                    }
                }
                continue;
            }
            let mut refused = false;
            let mut next = from;
            for (buf, &pos) in bufs.iter().zip(positions) {
                while next < to && helds[next].1 <= pos {
                    if let Some(h) = helds[next].2.take() {
                        local.push_held(&mut conn.core, h);
                    }
                    next += 1;
                }
                if !refused && local.queue_send(&mut conn.core, buf.clone(), false).is_err() {
                    refused = true; // the broadcasts cannot go; its own sends still can
                }
            }
            // Its sends made after the room's last broadcast go after them all.
            for h in &mut helds[next..to] {
                if let Some(buf) = h.2.take() {
                    local.push_held(&mut conn.core, buf);
                }
            }
        }
        segs.clear();
    }

    /// Carries out the broadcasts gathered in `scratch.batch`, room by room, and the own
    /// sends held among them.
    fn apply_broadcasts(&mut self) {
        let mut batch = std::mem::take(&mut self.scratch.batch);
        // Grouping by room reorders broadcasts to different rooms, which only a session in
        // two or more rooms could see; with such sessions here, only consecutive
        // broadcasts to one room are grouped (and own sends are never held among them).
        // Stable: each room's own order is kept.
        if self.multi_room == 0 {
            batch.sort_by_key(|(room, _, _)| *room);
        }
        self.scratch.helds.sort_by_key(|h| h.0); // stable: each session's order is kept
        let mut parts = std::mem::take(&mut self.scratch.parts);
        let mut positions = std::mem::take(&mut self.scratch.positions);
        let mut it = batch.drain(..).peekable();
        while let Some((room, pos, buf)) = it.next() {
            parts.clear();
            positions.clear();
            parts.push(buf);
            positions.push(pos);
            while let Some((_, pos, buf)) = it.next_if(|(r, _, _)| *r == room) {
                parts.push(buf);
                positions.push(pos);
            }
            self.room_broadcast_batch(room, &parts, &positions);
        }
        drop(it);
        // Held sends of sessions in none of these rooms, in order.
        for (key, _, buf) in self.scratch.helds.drain(..) {
            if let (Some(buf), Some(conn)) = (buf, conn_of(&mut self.slots, key)) {
                self.local.push_held(&mut conn.core, buf);
            }
        }
        parts.clear();
        positions.clear();
        self.scratch.parts = parts;
        self.scratch.positions = positions;
        self.scratch.batch = batch;
    }

    /// Carries out the room operations asked for since the last call, in order.
    ///
    /// Broadcasts are gathered until the next enter or leave (each must see exactly the
    /// broadcasts made before it) and then applied room by room. A held own send keeps its
    /// place among them; where a session is in two rooms it ends the batch instead.
    pub(super) fn run_deferred(&mut self) {
        while !self.local.deferred.is_empty() {
            let mut deferred = std::mem::take(&mut self.local.deferred);
            for d in deferred.drain(..) {
                match d {
                    Deferred::Broadcast(room, buf) => {
                        let pos = self.scratch.batch.len();
                        self.scratch.batch.push((room, pos, buf));
                    }
                    Deferred::Enter(room, key) => {
                        self.apply_broadcasts();
                        self.room_enter(room, key);
                    }
                    Deferred::Leave(room, key) => {
                        self.apply_broadcasts();
                        self.room_leave(room, key);
                    }
                    Deferred::Send(key, buf) if self.multi_room == 0 => {
                        let pos = self.scratch.batch.len();
                        self.scratch.helds.push((key, pos, Some(buf)));
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
    /// Broadcasts: room, place in the batch, buffer.
    batch: Vec<(u64, usize, Bytes)>,
    /// Own sends held among them: session, number of broadcasts made before it, buffer
    /// (taken once queued).
    helds: Vec<(u64, usize, Option<Bytes>)>,
    parts: Vec<Bytes>,
    positions: Vec<usize>,
    segs: Vec<Bytes>,
    /// A broadcast went to two or more members since the last wait.
    pub(super) fanned_out: bool,
}

impl RoomScratch {
    pub(super) fn new() -> Self {
        RoomScratch::default()
    }
}
