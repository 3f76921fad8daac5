//! PROTOCOL.md section 3: one room; every C_CHAT (id 1) is relayed as S_CHAT (id 2), same
//! payload, to every session in the room, the sender included.

use servercore::packet::{Framed, Handlers, Packet, PacketSession, PacketWriter};
use servercore::{Ctx, Room};
use std::sync::OnceLock;

/// Client to server: a chat message.
pub const C_CHAT: u16 = 1;
/// Server to client: a relayed chat message.
pub const S_CHAT: u16 = 2;

/// One chat participant; all share the one room (with `--cluster`, a room spanning every
/// chat server on that NATS).
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
        let handlers = handlers();
        move || {
            Framed::with_max_packet_size(ChatSession { room: room.clone(), handlers }, max_packet)
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
