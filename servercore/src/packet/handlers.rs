//! Handler dispatch by packet id (the seed's `PacketHandler`).

use super::frame::Packet;
use crate::reason::DisconnectReason;
use crate::session::Ctx;
use std::error::Error;
use std::fmt;

/// What a handler's error becomes: any error (a `String` or `&str` too), kept as it is so
/// that [`HandlerError::Failed`] can hand it back.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// What a registered handler returns once boxed: `Err` disconnects the session with a
/// protocol error naming the packet and the error (e.g. a payload that does not decode).
pub type HandlerResult = Result<(), BoxError>;

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

/// Why a packet was not handled.
#[derive(Debug)]
#[non_exhaustive]
pub enum HandlerError {
    /// No handler is registered for this id.
    UnknownId(u16),
    /// The handler of `id` returned `error`.
    Failed {
        /// The packet's id.
        id: u16,
        /// What the handler returned.
        error: BoxError,
    },
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HandlerError::UnknownId(id) => write!(f, "unknown packet id {id}"),
            HandlerError::Failed { id, error } => write!(f, "packet id {id}: {error}"),
        }
    }
}

impl Error for HandlerError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            HandlerError::UnknownId(_) => None,
            HandlerError::Failed { error, .. } => Some(&**error),
        }
    }
}

/// A table of handlers indexed by packet id, built once and shared by every session.
///
/// Dispatch is an index into a dense table (as long as the largest registered id): no
/// hashing and no allocation per packet. Keep the table in a `static` and give each
/// session a `&'static Handlers<_>`: the reference is `Copy`, so `on_packet` can lend
/// `self` to the handler (`let h = self.handlers; h.dispatch(self, ctx, packet)`) without
/// touching a reference count.
///
/// ```
/// use servercore::packet::{Handlers, HandlerError, Packet};
/// use servercore::Ctx;
/// use std::sync::OnceLock;
///
/// struct Player { hp: u32, handlers: &'static Handlers<Player> }
/// const C_HEAL: u16 = 7;
///
/// fn heal(p: &mut Player, _ctx: &mut Ctx<'_>, payload: &[u8]) -> Result<(), String> {
///     let amount = payload.first().ok_or("empty heal")?;
///     p.hp += u32::from(*amount);
///     Ok(())
/// }
///
/// fn handlers() -> &'static Handlers<Player> {
///     static TABLE: OnceLock<Handlers<Player>> = OnceLock::new();
///     TABLE.get_or_init(|| Handlers::new().on(C_HEAL, heal))
/// }
///
/// assert!(handlers().handles(C_HEAL) && !handlers().handles(8));
/// let err = HandlerError::UnknownId(8);
/// assert_eq!(err.to_string(), "unknown packet id 8");
/// // In `PacketSession::on_packet`: `let h = self.handlers; h.dispatch(self, ctx, packet)`.
/// ```
pub struct Handlers<T> {
    /// Slot `id` holds the handler of packet `id`; ids past the end have none.
    table: Vec<Option<Handler<T>>>,
    unknown: UnknownPacket,
}

impl<T> Default for Handlers<T> {
    fn default() -> Self {
        Handlers { table: Vec::new(), unknown: UnknownPacket::default() }
    }
}

impl<T> Handlers<T> {
    /// An empty table; unknown ids disconnect.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the handler of packet `id` (replacing any earlier one). The handler may
    /// return any error type that converts into a boxed error (`String`, `&str`, an
    /// `std::error::Error`).
    pub fn on<E>(
        mut self,
        id: u16,
        handler: impl Fn(&mut T, &mut Ctx<'_>, &[u8]) -> Result<(), E> + Send + Sync + 'static,
    ) -> Self
    where
        E: Into<BoxError>,
    {
        let slot = usize::from(id);
        if self.table.len() <= slot {
            self.table.resize_with(slot + 1, || None);
        }
        self.table[slot] = Some(Box::new(move |t, ctx, p| handler(t, ctx, p).map_err(Into::into)));
        self
    }

    /// Sets the policy for ids with no handler.
    pub fn unknown(mut self, policy: UnknownPacket) -> Self {
        self.unknown = policy;
        self
    }

    /// Whether `id` has a handler.
    pub fn handles(&self, id: u16) -> bool {
        self.get(id).is_some()
    }

    fn get(&self, id: u16) -> Option<&Handler<T>> {
        self.table.get(usize::from(id)).and_then(Option::as_ref)
    }

    /// Calls the handler of `packet.id` and reports why the packet was not handled, leaving
    /// the session as it is (the unknown-id policy is not applied).
    pub fn try_dispatch(
        &self,
        target: &mut T,
        ctx: &mut Ctx<'_>,
        packet: Packet<'_>,
    ) -> Result<(), HandlerError> {
        let handler = self.get(packet.id).ok_or(HandlerError::UnknownId(packet.id))?;
        handler(target, ctx, packet.payload)
            .map_err(|error| HandlerError::Failed { id: packet.id, error })
    }

    /// Calls the handler of `packet.id`, applying the unknown-id policy and turning a
    /// handler error into a [`Protocol`](DisconnectReason::Protocol) disconnect whose text
    /// is the [`HandlerError`]'s.
    pub fn dispatch(&self, target: &mut T, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        match self.try_dispatch(target, ctx, packet) {
            Ok(()) => {}
            Err(HandlerError::UnknownId(_)) if self.unknown == UnknownPacket::Ignore => {}
            Err(e) => ctx.disconnect_with(DisconnectReason::Protocol(e.to_string())),
        }
    }
}

impl<T> fmt::Debug for Handlers<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<usize> = (0..self.table.len()).filter(|&i| self.table[i].is_some()).collect();
        f.debug_struct("Handlers").field("ids", &ids).field("unknown", &self.unknown).finish()
    }
}
