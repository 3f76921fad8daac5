//! Packets: framing (PROTOCOL.md section 2), pooled packet buffers, [`PacketSession`] and
//! handler dispatch by id.
//!
//! The decoder works on byte slices and does no I/O, so it is tested with plain slices and
//! property tests, and fuzzed (`fuzz/`).

mod frame;
mod handlers;
/// Protobuf payloads (cargo feature `prost`): encode and decode `prost::Message`s.
#[cfg(feature = "prost")]
pub mod prost;
mod session;
mod writer;

pub use frame::*;
pub use handlers::{BoxError, HandlerError, HandlerResult, Handlers, UnknownPacket};
pub use session::{Framed, PacketSession};
pub use writer::*;
