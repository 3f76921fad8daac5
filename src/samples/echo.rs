//! PROTOCOL.md section 1: every byte received is sent back, in order, unchanged.

use servercore::{Ctx, SendBuffer, Session};

/// Echoes everything it receives.
#[derive(Default)]
pub struct EchoSession;

impl Session for EchoSession {
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        // One copy out of the receive buffer, which is reused for the next read.
        let _ = ctx.send(SendBuffer::copy_from_slice(data));
        data.len()
    }
}
