//! The NATS link: a client session speaking the NATS protocol on a worker of its own.

use super::proto::{self, ServerOp};
use super::Inner;
use crate::reason::DisconnectReason;
use crate::session::{Ctx, Session};
use bytes::Bytes;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

const PING_TIMER: u64 = 1;
/// Unanswered PINGs after which the link is dropped (and reconnects).
const MAX_PINGS_OUT: u32 = 2;
const SID_ROOMS: u64 = 1;
const SID_DIRECT: u64 = 2;
/// The link's `max_recv_buffer`: a NATS message bigger than this could never be read.
pub(crate) const LINK_RECV_BUFFER: usize = 4 << 20;

pub(crate) struct Link {
    inner: Arc<Inner>,
    max_payload: usize,
    pings_out: u32,
    since: Option<Instant>,
}

impl Link {
    pub(crate) fn new(inner: Arc<Inner>) -> Self {
        Link { inner, max_payload: 1 << 20, pings_out: 0, since: None }
    }

    fn room_prefix(&self) -> String {
        format!("{}.room.", self.inner.prefix)
    }

    /// Sends what the rooms gathered for NATS: one PUB per room (and per 64 KiB), each
    /// one buffer, so that a refused send never leaves half a PUB on the wire.
    pub(crate) fn flush_outbox(&mut self, ctx: &mut Ctx<'_>) {
        let (rooms, n) = self.inner.take_outbox();
        let mut lost = false;
        for (subject, bytes) in rooms {
            lost |= ctx.send(proto::publish(&subject, &[&bytes])).is_err();
        }
        // (A refused PUB, under a link too slow to take it, loses its batch: counted as
        // dropped, in room messages, all of them to be safe.)
        if lost {
            self.inner.count_dropped(n);
        } else {
            self.inner.count_published(n);
        }
    }
}

impl Session for Link {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let i = &self.inner;
        let _ = ctx.send(proto::connect(&i.node));
        let _ = ctx.send(proto::sub(&format!("{}.room.*", i.prefix), SID_ROOMS));
        let _ = ctx.send(proto::sub(&format!("{}.node.{}.direct", i.prefix, i.node), SID_DIRECT));
        // The answer to this PING says NATS took CONNECT and the subscriptions: the link is
        // up from then on.
        let _ = ctx.send(Bytes::from_static(proto::PING));
        self.pings_out = 1;
        self.since = Some(Instant::now());
        i.drop_outbox(); // a flush posted to the last link may never have run
        i.set_link(Some(ctx.handle()));
        ctx.set_interval(i.ping_interval, PING_TIMER);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let mut used = 0;
        let rooms = self.room_prefix();
        loop {
            let op = match proto::parse(&data[used..], self.max_payload) {
                Ok(Some(op)) => op,
                Ok(None) => break,
                Err(e) => {
                    ctx.disconnect_with(DisconnectReason::Protocol(e.to_string()));
                    return data.len();
                }
            };
            let (op, n) = op;
            used += n;
            match op {
                ServerOp::Info(json) => {
                    if let Some(max) = proto::info_max_payload(json) {
                        // No more than the link's receive buffer holds (4 MiB).
                        self.max_payload = max.min(LINK_RECV_BUFFER);
                        self.inner.max_payload.store(self.max_payload, Ordering::Relaxed);
                    }
                }
                ServerOp::Ping => {
                    let _ = ctx.send(Bytes::from_static(proto::PONG));
                }
                ServerOp::Pong => {
                    self.pings_out = 0;
                    let i = &self.inner;
                    if !i.up.swap(true, Ordering::AcqRel) {
                        i.connects.fetch_add(1, Ordering::Relaxed);
                        i.metrics.connects.increment(1);
                        i.metrics.up.set(1.0);
                        i.failures.store(0, Ordering::Relaxed);
                        let took = self.since.map(|t| t.elapsed()).unwrap_or_default();
                        tracing::info!("cluster node {}: link to NATS up ({took:?})", i.node);
                    }
                }
                ServerOp::Ok => {}
                ServerOp::Err(text) => {
                    tracing::warn!("cluster node {}: NATS said -ERR {text}", self.inner.node)
                }
                ServerOp::Msg { subject, sid, payload } => {
                    let i = &self.inner;
                    i.received.fetch_add(1, Ordering::Relaxed);
                    i.metrics.received.increment(1);
                    if sid == SID_ROOMS {
                        if let Some(name) = subject.strip_prefix(&rooms) {
                            i.deliver_room(name, Bytes::copy_from_slice(payload));
                        }
                    } else if sid == SID_DIRECT && payload.len() >= 8 {
                        let id = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
                        let _ = i.deliver_direct(id, Bytes::copy_from_slice(&payload[8..]));
                    }
                }
            }
        }
        used
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _token: u64) {
        if self.pings_out >= MAX_PINGS_OUT {
            // Not a local disconnect (that one would not reconnect): the link is lost.
            tracing::warn!("cluster node {}: NATS did not answer PING", self.inner.node);
            ctx.disconnect_with(DisconnectReason::IdleTimeout);
            return;
        }
        self.pings_out += 1;
        let _ = ctx.send(Bytes::from_static(proto::PING));
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let i = &self.inner;
        i.set_link(None);
        i.drop_outbox();
        if i.up.swap(false, Ordering::AcqRel) {
            i.metrics.up.set(0.0);
            if *reason == DisconnectReason::Shutdown {
                tracing::info!("cluster node {}: link to NATS closed", i.node);
            } else {
                tracing::warn!(
                    "cluster node {}: link to NATS down: {reason}; reconnecting",
                    i.node
                );
            }
        }
    }

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        // The first failure in a row is a warning, the rest debug: a NATS that stays down
        // must not flood the log.
        if self.inner.failures.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(
                "cluster node {}: NATS at {addr} unreachable ({error}); serving locally, retrying",
                self.inner.node
            );
        } else {
            tracing::debug!("cluster node {}: NATS at {addr}: {error}", self.inner.node);
        }
    }
}
