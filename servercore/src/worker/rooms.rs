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

    pub(super) fn room_broadcast(&mut self, room: u64, buf: Bytes) {
        let Some(local_room) = self.rooms.get(&room) else { return };
        for &key in &local_room.members {
            if let Some(conn) = conn_of(&mut self.slots, key) {
                let _ = self.local.queue_send(&mut conn.core, buf.clone(), false);
            }
        }
    }

    /// Carries out the room operations callbacks asked for, in order.
    pub(super) fn run_deferred(&mut self) {
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
}
