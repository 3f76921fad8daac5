//! Echo load: each session keeps `depth` messages in flight and checks every echoed byte.

use super::pace::{Pace, PHASE_TOKEN, RATE_TOKEN};
use super::stats::{flush_latency, record_latency, LoadStats};
use super::tls::HandshakeWatch;
use servercore::{Ctx, DisconnectReason, SendBuffer, Session};
use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

/// The byte at offset `k` of message `seq` of a session salted with `salt`.
fn pattern(salt: u64, seq: u64, k: usize) -> u8 {
    (salt ^ seq.wrapping_mul(0x9E37_79B9) ^ (k as u64).wrapping_mul(31)) as u8
}

pub struct EchoLoad {
    stats: Arc<LoadStats>,
    size: usize,
    depth: usize,
    salt: u64,
    next_send: u64,
    /// Message being received and the offset in it.
    recv_seq: u64,
    recv_off: usize,
    sent_at: VecDeque<Instant>,
    scratch: Vec<u8>,
    /// Open loop: send on this pace (at most `depth` in flight); closed loop when `None`.
    pace: Option<Pace>,
    watch: HandshakeWatch,
}

impl EchoLoad {
    pub fn new(
        stats: Arc<LoadStats>,
        size: usize,
        depth: usize,
        pace: Option<Pace>,
        watch: HandshakeWatch,
    ) -> Self {
        EchoLoad {
            stats,
            size,
            depth,
            salt: 0,
            next_send: 0,
            recv_seq: 0,
            recv_off: 0,
            sent_at: VecDeque::with_capacity(depth),
            scratch: Vec::new(),
            pace,
            watch,
        }
    }

    fn send_next(&mut self, ctx: &mut Ctx<'_>) {
        let seq = self.next_send;
        self.next_send += 1;
        self.scratch.clear();
        self.scratch.extend((0..self.size).map(|k| pattern(self.salt, seq, k)));
        self.sent_at.push_back(Instant::now());
        let _ = ctx.send(SendBuffer::copy_from_slice(&self.scratch));
    }
}

impl Session for EchoLoad {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.watch.connected();
        self.salt = ctx.id().get().wrapping_mul(0x2545_F491_4F6C_DD1D);
        match self.pace {
            Some(p) => {
                ctx.set_timer(p.phase(ctx.id().get()), PHASE_TOKEN);
            }
            None => {
                for _ in 0..self.depth {
                    self.send_next(ctx);
                }
            }
        }
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let mut completed = 0;
        for (i, &b) in data.iter().enumerate() {
            if self.recv_seq >= self.next_send
                || b != pattern(self.salt, self.recv_seq, self.recv_off)
            {
                self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                self.stats.error(format!(
                    "{}: wrong byte at offset {} of message {} (got {b:#04x})",
                    ctx.id(),
                    self.recv_off,
                    self.recv_seq
                ));
                ctx.disconnect("echo mismatch");
                return i;
            }
            self.recv_off += 1;
            if self.recv_off == self.size {
                self.recv_off = 0;
                self.recv_seq += 1;
                completed += 1;
                if let Some(t) = self.sent_at.pop_front() {
                    let now = Instant::now();
                    let us = now.saturating_duration_since(t).as_micros() as u64;
                    record_latency(&self.stats, us, now);
                }
            }
        }
        self.stats.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
        if completed > 0 {
            self.stats.messages.fetch_add(completed, Ordering::Relaxed);
            if self.pace.is_none() && !self.stats.stopping.load(Ordering::Relaxed) {
                for _ in 0..completed {
                    self.send_next(ctx);
                }
            }
        }
        data.len()
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        let Some(pace) = &mut self.pace else { return };
        if token == PHASE_TOKEN {
            ctx.set_interval(pace.period(), RATE_TOKEN);
            return;
        }
        if token != RATE_TOKEN || self.stats.stopping.load(Ordering::Relaxed) {
            return;
        }
        for _ in 0..pace.tick() {
            if self.sent_at.len() >= self.depth {
                break; // at the in-flight cap: the server is behind the asked rate
            }
            self.send_next(ctx);
        }
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        flush_latency(&self.stats);
        let expected = matches!(reason, DisconnectReason::Shutdown | DisconnectReason::Local(_));
        if !expected && !self.stats.stopping.load(Ordering::Acquire) {
            self.stats.unexpected_disconnects.fetch_add(1, Ordering::Relaxed);
            self.stats.error(format!("{} dropped: {reason}", ctx.id()));
        }
    }

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.stats.error(format!("connect to {addr} failed: {error}"));
    }
}
