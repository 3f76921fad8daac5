//! Packet framing (PROTOCOL.md section 2) and packet buffers.
//!
//! Everything here is free of I/O: the decoder works on byte slices, so it is tested with
//! plain slices and property tests, and fuzzed (`fuzz/`).

mod frame;
mod writer;

pub use frame::*;
pub use writer::*;
