//! Handler dispatch by packet id (the seed's `PacketHandler`).

use super::frame::Packet;
use crate::reason::DisconnectReason;
use crate::session::Ctx;
use std::collections::HashMap;
use std::fmt;

/// What a handler returns: `Err(text)` disconnects the session with a protocol error
/// naming the packet and the text (e.g. a payload that does not decode).
pub type HandlerResult = Result<(), String>;

type Handler<T> = Box<dyn Fn(&mut T, &mut Ctx<'_>, &[u8]) -> HandlerResult + Send + Sync>;

/// What to do with a packet whose id has no handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnknownPacket {
    /// Disconnect with a protocol error naming the id (the default).
    #[default]
    Disconnect,
    /// Drop the packet and carry on.
    Ignore,
}

/// A table of handlers by packet id, built once and shared by every session (`Arc`).
///
/// ```
/// use servercore::packet::{Handlers, Packet};
/// use servercore::Ctx;
///
/// struct Player { hp: u32 }
/// const C_HEAL: u16 = 7;
///
/// fn heal(p: &mut Player, _ctx: &mut Ctx<'_>, payload: &[u8]) -> Result<(), String> {
///     let amount = payload.first().ok_or("empty heal")?;
///     p.hp += u32::from(*amount);
///     Ok(())
/// }
///
/// let handlers = Handlers::<Player>::new().on(C_HEAL, heal);
/// assert!(handlers.handles(C_HEAL));
/// // In `PacketSession::on_packet`: `handlers.dispatch(self, ctx, packet)`.
/// ```
pub struct Handlers<T> {
    table: HashMap<u16, Handler<T>>,
    unknown: UnknownPacket,
}

impl<T> Default for Handlers<T> {
    fn default() -> Self {
        Handlers { table: HashMap::new(), unknown: UnknownPacket::default() }
    }
}

impl<T> Handlers<T> {
    /// An empty table; unknown ids disconnect.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of packet `id` (replacing any earlier one).
    pub fn on(
        mut self,
        id: u16,
        handler: impl Fn(&mut T, &mut Ctx<'_>, &[u8]) -> HandlerResult + Send + Sync + 'static,
    ) -> Self {
        self.table.insert(id, Box::new(handler));
        self
    }

    /// Sets the policy for ids with no handler.
    pub fn unknown(mut self, policy: UnknownPacket) -> Self {
        self.unknown = policy;
        self
    }

    /// Whether `id` has a handler.
    pub fn handles(&self, id: u16) -> bool {
        self.table.contains_key(&id)
    }

    /// Calls the handler of `packet.id`, applying the unknown-id policy and turning a
    /// handler error into a protocol-error disconnect.
    pub fn dispatch(&self, target: &mut T, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        match self.table.get(&packet.id) {
            Some(h) => {
                if let Err(why) = h(target, ctx, packet.payload) {
                    ctx.disconnect_with(DisconnectReason::Protocol(format!(
                        "packet id {}: {why}",
                        packet.id
                    )));
                }
            }
            None => {
                if self.unknown == UnknownPacket::Disconnect {
                    ctx.disconnect_with(DisconnectReason::Protocol(format!(
                        "unknown packet id {}",
                        packet.id
                    )));
                }
            }
        }
    }
}

impl<T> fmt::Debug for Handlers<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.table.keys().collect();
        ids.sort();
        f.debug_struct("Handlers").field("ids", &ids).field("unknown", &self.unknown).finish()
    }
}
