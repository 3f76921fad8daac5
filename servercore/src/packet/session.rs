//! [`PacketSession`]: the seed's `PacketSession`, framing of PROTOCOL.md section 2 on top
//! of [`Session`].

use super::frame::{FrameDecoder, Packet, DEFAULT_MAX_PACKET_SIZE};
use crate::reason::DisconnectReason;
use crate::session::{Ctx, Session};
use std::io;
use std::net::SocketAddr;

/// A session that speaks in packets (`u16 size` + `u16 id` + payload, little-endian).
///
/// Wrap it in [`Framed`] to get a [`Session`]. A bad header (size below 4 or above the
/// maximum) disconnects the session with [`DisconnectReason::Protocol`] naming the value;
/// nothing past the bad header is read, and other sessions are not affected.
///
/// ```
/// use servercore::packet::{Framed, Packet, PacketSession, PacketWriter};
/// use servercore::{Ctx, ServerService};
///
/// /// Answers every packet with id+1 and the same payload.
/// struct Pong;
/// impl PacketSession for Pong {
///     fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
///         let mut w = PacketWriter::new(packet.id.wrapping_add(1));
///         w.put_slice(packet.payload);
///         if let Ok(buf) = w.finish() {
///             let _ = ctx.send(buf);
///         }
///     }
/// }
///
/// let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
///     .start(|| Framed::new(Pong))
///     .unwrap();
/// # server.shutdown(std::time::Duration::from_secs(1)).unwrap();
/// ```
pub trait PacketSession: Send + 'static {
    /// The connection is established.
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// One whole packet arrived. Packets of one session arrive in order.
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>);

    /// `bytes` more bytes of the send queue were written.
    fn on_send(&mut self, ctx: &mut Ctx<'_>, bytes: usize) {
        let _ = (ctx, bytes);
    }

    /// The session ended; the last callback.
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = (ctx, reason);
    }

    /// The send queue is full (policy [`Notify`](crate::SendQueuePolicy::Notify)); see
    /// [`Session::on_send_queue_full`].
    fn on_send_queue_full(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// The send queue drained to its low watermark; see [`Session::on_writable`].
    fn on_writable(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx;
    }

    /// A timer of this session fired (see [`Ctx::set_timer`]).
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        let _ = (ctx, token);
    }

    /// An outgoing connect failed.
    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        let _ = (addr, error);
    }
}

/// Adapts a [`PacketSession`] to a [`Session`]: splits the byte stream into packets.
pub struct Framed<P> {
    inner: P,
    decoder: FrameDecoder,
}

impl<P: PacketSession> Framed<P> {
    /// Frames with the default maximum packet size (4096).
    pub fn new(inner: P) -> Self {
        Framed { inner, decoder: FrameDecoder::new(DEFAULT_MAX_PACKET_SIZE) }
    }

    /// Frames with a maximum packet size (header included), clamped to `4..=65535`.
    pub fn with_max_packet_size(inner: P, max: usize) -> Self {
        Framed { inner, decoder: FrameDecoder::new(max) }
    }

    /// The packet session.
    pub fn inner(&self) -> &P {
        &self.inner
    }

    /// The packet session, mutably (e.g. from [`SessionHandle::run`](crate::SessionHandle::run)).
    pub fn inner_mut(&mut self) -> &mut P {
        &mut self.inner
    }
}

impl<P: PacketSession> Session for Framed<P> {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.inner.on_connected(ctx);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let inner = &mut self.inner;
        let mut packets = 0u64;
        let result = self.decoder.decode_all(data, |packet| {
            packets += 1;
            inner.on_packet(ctx, packet);
            // Stop at once when the packet handler disconnected the session.
            ctx.is_connected()
        });
        ctx.local.metrics.packets_in += packets;
        match result {
            Ok(consumed) => consumed,
            Err(e) => {
                ctx.disconnect_with(DisconnectReason::Protocol(e.to_string()));
                data.len()
            }
        }
    }

    fn on_send(&mut self, ctx: &mut Ctx<'_>, bytes: usize) {
        self.inner.on_send(ctx, bytes);
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.inner.on_disconnected(ctx, reason);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        self.inner.on_timer(ctx, token);
    }

    fn on_send_queue_full(&mut self, ctx: &mut Ctx<'_>) {
        self.inner.on_send_queue_full(ctx);
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>) {
        self.inner.on_writable(ctx);
    }

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        self.inner.on_connect_failed(addr, error);
    }
}
