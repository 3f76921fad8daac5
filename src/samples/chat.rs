//! PROTOCOL.md section 3: one room; every C_CHAT (id 1) is relayed as S_CHAT (id 2), same
//! payload, to every session in the room, the sender included. (`chat-server --rooms N`, a
//! benchmark/load option, spreads the sessions over N such rooms: see
//! [`ChatSession::factory_in_rooms`].)

use servercore::packet::{Framed, Handlers, Packet, PacketSession, PacketWriter};
use servercore::{Ctx, Room};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Client to server: a chat message.
pub const C_CHAT: u16 = 1;
/// Server to client: a relayed chat message.
pub const S_CHAT: u16 = 2;

/// One chat participant; all share the one room (with `--cluster`, a room spanning every
/// chat server on that NATS), or with `--rooms N` one of N rooms.
pub struct ChatSession {
    room: Room,
    handlers: &'static Handlers<ChatSession>,
}

fn handlers() -> &'static Handlers<ChatSession> {
    static TABLE: OnceLock<Handlers<ChatSession>> = OnceLock::new();
    TABLE.get_or_init(|| Handlers::new().on(C_CHAT, ChatSession::on_chat))
}

impl ChatSession {
    /// A session factory for the chat server: every session joins `room` (a local
    /// `Room::new()`, or a cluster's room); `max_packet` bounds every packet.
    pub fn factory(
        room: Room,
        max_packet: usize,
    ) -> impl Fn() -> Framed<ChatSession> + Send + Sync + 'static {
        Self::factory_in_rooms(vec![room], max_packet)
    }

    /// A session factory that spreads the sessions over `rooms` (`chat-server --rooms N`):
    /// the factory runs once per accepted connection, and the `n`-th call (from 0) joins
    /// `rooms[n % rooms.len()]`. With one room every session joins it, as with
    /// [`factory`](Self::factory). (With several workers, connections accepted at the same
    /// moment may be numbered in either order.)
    ///
    /// Panics if `rooms` is empty.
    pub fn factory_in_rooms(
        rooms: Vec<Room>,
        max_packet: usize,
    ) -> impl Fn() -> Framed<ChatSession> + Send + Sync + 'static {
        assert!(!rooms.is_empty(), "a chat server needs at least one room");
        let handlers = handlers();
        let accepted = AtomicUsize::new(0);
        move || {
            let n = accepted.fetch_add(1, Ordering::Relaxed);
            let room = rooms[n % rooms.len()].clone();
            Framed::with_max_packet_size(ChatSession { room, handlers }, max_packet)
        }
    }

    fn on_chat(&mut self, ctx: &mut Ctx<'_>, payload: &[u8]) -> Result<(), String> {
        // Encoded once into a pooled buffer; every member's queue shares it.
        let mut w = PacketWriter::with_capacity(S_CHAT, payload.len());
        w.put_slice(payload);
        let buf = w.finish().map_err(|e| e.to_string())?;
        if let Err(e) = ctx.broadcast_room(&self.room, buf) {
            // A worker is not keeping up: this message is dropped, the sender stays.
            tracing::warn!("{}: chat message not relayed: {e}", ctx.id());
        }
        Ok(())
    }
}

impl PacketSession for ChatSession {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        ctx.enter_room(&self.room);
    }

    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        let handlers = self.handlers; // a plain reference: no reference count per packet
        handlers.dispatch(self, ctx, packet);
    }
}
