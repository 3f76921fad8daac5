//! Chat load (PROTOCOL.md section 3): each session keeps `depth` of its own C_CHAT messages
//! in flight, sending the next one when its own comes back through the room, and checks
//! every S_CHAT it receives, from every sender.
//!
//! Payload of every message (`size` bytes, all integers little-endian):
//!
//! ```text
//! offset 0   u64  sender     unique per session of this process (see `next_sender_id`)
//! offset 8   u64  sequence   0, 1, 2, ... per sender
//! offset 16  u64  send time  nanoseconds since a process-wide epoch
//! offset 24  ...  filler     derived from (sender, sequence): any corruption shows
//! ```
//!
//! Other clients may share the room: a payload that is UTF-8 text without control
//! characters (the browser page's "name: text", PROTOCOL.md section 6) is foreign, counted
//! and otherwise ignored. A dummy payload is never such text: the sender id's low 32 bits
//! are a small counter and the sequence number's top byte is 0, so it holds zero bytes.
//!
//! Checks on every other S_CHAT: packet id 2, payload length `size`, filler intact (else
//! `corrupt`), and per-sender order. A receiver keeps the next expected sequence number of
//! every sender it has seen. Sessions join at different times, so the first message seen
//! from a sender sets the baseline (its own messages must start at 0); from then on each
//! must be exactly the next: a jump is a gap, a repeat or a step back a duplicate. Messages
//! still in flight when the run stops are never counted: only received messages are.
//!
//! Slow receivers: the room has no backpressure. A sender's loop closes through its own
//! session only, so when some receivers fall behind (say, their client worker thread gets
//! less CPU) the others keep sending at full speed and the laggards' server-side send queues
//! grow until the server drops them (`max_send_queue`, 16 MiB by default). To measure the
//! server rather than overrun its own receivers, each session compares what it received
//! with what the whole process sent since it joined; while any session is more than
//! `lag_limit` messages behind, every session pauses sending (retrying on a 2 ms timer).
//! The number of such pauses is reported; normally it is 0. This guard is for the closed
//! loop only: with `--rate` (open loop) the rate alone sets the pace, and nothing pauses.
//! (The guard assumes every session hears every sender, one room. Against a server that
//! splits the sessions into rooms, `chat-server --rooms N`, a receiver hears only its room,
//! so the closed loop would pause for good once the process sent `lag_limit` more messages
//! than the receiver's room did; the open loop, as the benchmark runs it, is unaffected.
//! Latency is the same either way: a sender's own message back through its own room.)

use super::pace::{Pace, PHASE_TOKEN, RATE_TOKEN};
use super::stats::{flush_latency, record_latency, LoadStats};
use super::tls::HandshakeWatch;
use crate::samples::chat::{C_CHAT, S_CHAT};
use bytes::BufMut;
use servercore::packet::{Framed, Packet, PacketSession, PacketWriter, MAX_PACKET_SIZE_LIMIT};
use servercore::{Ctx, DisconnectReason, Session};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Bytes of the payload header: sender, sequence number, send time.
pub const HEADER: usize = 24;

/// Largest payload one packet can carry (the 16-bit size field includes the 4-byte header).
pub const MAX_PAYLOAD: usize = MAX_PACKET_SIZE_LIMIT - 4;

/// Bytes of backlog per receiver (on the server) that make sending pause: a quarter of the
/// server's default send-queue limit.
const LAG_BYTES: usize = 4 << 20;

/// Retry period of a session that paused because a receiver lags.
const LAG_RETRY: Duration = Duration::from_millis(2);

/// How many messages a receiver may be behind before sending pauses: about [`LAG_BYTES`]
/// of backlog, and at least 4 times what the closed loops keep in flight
/// (`sessions * depth`). Sending resumes at half the limit; a receiver's count can be off by
/// up to what was in flight when it joined (at most `sessions * depth`), which stays below
/// that half, so a pause always ends.
pub fn lag_limit(sessions: usize, depth: usize, size: usize) -> u64 {
    let in_flight = sessions.saturating_mul(depth.max(1)).saturating_mul(4);
    in_flight.max(LAG_BYTES / (size + 4)).max(64) as u64
}

/// The instant send times count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
fn now_ns(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_nanos() as u64
}

/// A sender id no other session of this process has. The high 32 bits are a tag of this
/// process (pid and start time), so two dummy clients on one server rarely collide.
fn next_sender_id() -> u64 {
    static TAG: OnceLock<u64> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let tag = *TAG.get_or_init(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        splitmix64(t ^ u64::from(std::process::id()).rotate_left(40)) & !0xFFFF_FFFF
    });
    tag | (NEXT.fetch_add(1, Ordering::Relaxed) & 0xFFFF_FFFF)
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Seed of the filler of message `seq` of `sender`.
fn filler_seed(sender: u64, seq: u64) -> u64 {
    splitmix64(sender ^ splitmix64(seq))
}

/// The `i`-th 8-byte word of a filler.
fn filler_word(seed: u64, i: usize) -> u64 {
    splitmix64(seed.wrapping_add(i as u64))
}

/// Appends `len` filler bytes.
fn put_filler(buf: &mut impl BufMut, seed: u64, len: usize) {
    for i in 0..len / 8 {
        buf.put_u64_le(filler_word(seed, i));
    }
    let rest = len % 8;
    if rest > 0 {
        buf.put_slice(&filler_word(seed, len / 8).to_le_bytes()[..rest]);
    }
}

/// Offset of the first wrong filler byte, if any.
fn check_filler(filler: &[u8], seed: u64) -> Option<usize> {
    let mut words = filler.chunks_exact(8);
    for (i, w) in words.by_ref().enumerate() {
        let want = filler_word(seed, i).to_le_bytes();
        if w != want {
            let k = w.iter().zip(want).position(|(a, b)| *a != b).unwrap_or(0);
            return Some(i * 8 + k);
        }
    }
    let tail = words.remainder();
    let base = filler.len() - tail.len();
    let want = filler_word(seed, base / 8).to_le_bytes();
    tail.iter().zip(want).position(|(a, b)| *a != b).map(|k| base + k)
}

/// A payload of another kind of client: UTF-8 text without ASCII control characters (tab
/// allowed), the rule of the browser page. Never true of a dummy payload, which holds zero
/// bytes (see the module doc).
pub fn is_foreign_text(payload: &[u8]) -> bool {
    std::str::from_utf8(payload)
        .is_ok_and(|s| !s.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f))
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(w)
}

/// A cheap hasher for sender ids (already unique numbers; no untrusted keys here beyond
/// corrupt packets, which are dropped before they reach the map).
#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        let h = (n ^ (n >> 32)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        self.0 = h ^ (h >> 29);
    }
}

/// Counts kept per session and added to the shared atomics once per read, not per packet.
#[derive(Default)]
struct Pending {
    deliveries: u64,
    bytes: u64,
    sends: u64,
    in_flight: i64,
}

/// One chat participant of the load (the [`PacketSession`] part).
pub struct ChatLoad {
    stats: Arc<LoadStats>,
    /// Payload bytes of every message.
    size: usize,
    depth: u64,
    /// This session's sender id (0 until connected).
    me: u64,
    /// Sequence number of the next own message.
    next_send: u64,
    /// Next expected sequence number per sender; own messages included (baseline 0).
    expected: SeqMap,
    pending: Pending,
    /// Process-wide sends when this session connected, and deliveries since.
    joined_at_sends: u64,
    received: u64,
    lag_limit: u64,
    /// This session counts in `stats.lagging`.
    lagging: bool,
    /// A retry timer is set (sending paused for a lagging receiver).
    retry_armed: bool,
    /// Open loop: send on this pace (at most `depth` in flight); closed loop when `None`.
    pace: Option<Pace>,
    /// When this session connected ([`now_ns`]).
    joined_ns: u64,
    /// Send time of the last own message that came back (0: none yet).
    last_echo_ns: u64,
}

type SeqMap = HashMap<u64, u64, BuildHasherDefault<IdHasher>>;

/// What a session saw, left in `LoadStats::finals` when it ends (runs over several servers)
/// for [`check_complete`].
pub struct Final {
    me: u64,
    joined_ns: u64,
    /// Own messages that came back (in order, or given up after a gap): the next own
    /// sequence number it expected.
    echoed: u64,
    last_echo_ns: u64,
    /// The session was dropped (already counted as an error).
    dropped: bool,
    /// The next expected sequence number of every sender it got messages from.
    seen: SeqMap,
}

/// A session may miss every message of a sender whose last message came back to it less
/// than this after the session connected: the server may not have put the session in the
/// room yet when that message was relayed. (In a normal run every sender sends until the
/// end, long after every session joined.)
const JOIN_MARGIN_NS: u64 = 500_000_000;

/// Runs over several servers: every session got every sender's messages up to the last one
/// the sender got back itself, whichever server each is on. The per-message checks catch a
/// hole in the middle of a sender's sequence; this catches what they cannot: a missing
/// tail, or a sender never heard of (say, two servers whose room is not shared). Each such
/// (session, sender) pair counts as a gap. Runs once every session has ended.
pub fn check_complete(stats: &LoadStats) {
    let finals = std::mem::take(&mut *stats.finals.lock().unwrap_or_else(|p| p.into_inner()));
    let senders: Vec<&Final> = finals.iter().filter(|f| !f.dropped && f.echoed > 0).collect();
    let mut missing = 0u64;
    for r in finals.iter().filter(|f| !f.dropped) {
        for s in senders.iter().filter(|s| s.me != r.me) {
            let error = match r.seen.get(&s.me) {
                Some(&next) if next >= s.echoed => continue,
                Some(&next) => format!(
                    "sender {:#x}'s messages {next}..{} never reached sender {:#x} (it got \
                     them up to {next}, the sender got its own back up to {})",
                    s.me,
                    s.echoed,
                    r.me,
                    s.echoed - 1
                ),
                None if s.last_echo_ns < r.joined_ns.saturating_add(JOIN_MARGIN_NS) => continue,
                None => format!(
                    "no message of sender {:#x} ever reached sender {:#x} (the sender got its \
                     own back up to seq {}); is the room shared by every server?",
                    s.me,
                    r.me,
                    s.echoed - 1
                ),
            };
            missing += 1;
            stats.error(error);
        }
    }
    stats.gaps.fetch_add(missing, Ordering::Relaxed);
}

impl ChatLoad {
    fn new(
        stats: Arc<LoadStats>,
        size: usize,
        depth: usize,
        lag_limit: u64,
        pace: Option<Pace>,
    ) -> Self {
        ChatLoad {
            pace,
            stats,
            size,
            depth: depth.max(1) as u64,
            me: 0,
            next_send: 0,
            expected: HashMap::default(),
            pending: Pending::default(),
            joined_at_sends: 0,
            received: 0,
            lag_limit,
            lagging: false,
            retry_armed: false,
            joined_ns: 0,
            last_echo_ns: 0,
        }
    }

    /// Own messages sent and not yet back (or given up as missing after a later one came).
    fn in_flight(&self) -> u64 {
        self.next_send - self.expected.get(&self.me).copied().unwrap_or(0)
    }

    /// Sends own messages until `depth` are in flight (none once the run stops), at most
    /// `max` of them.
    fn top_up(&mut self, ctx: &mut Ctx<'_>, mut max: u64) {
        while max > 0
            && self.in_flight() < self.depth
            && !self.stats.is_stopping()
            && ctx.is_connected()
        {
            max -= 1;
            if self.stats.lagging.load(Ordering::Relaxed) > 0 {
                if !self.retry_armed {
                    self.retry_armed = true;
                    ctx.set_timer(LAG_RETRY, 0);
                }
                return;
            }
            let seq = self.next_send;
            let mut w = PacketWriter::with_capacity(C_CHAT, self.size);
            w.put_u64_le(self.me).put_u64_le(seq).put_u64_le(now_ns(Instant::now()));
            put_filler(w.buf(), filler_seed(self.me, seq), self.size - HEADER);
            let buf = match w.finish() {
                Ok(buf) => buf,
                Err(e) => {
                    self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    self.stats.error(format!("cannot build a C_CHAT packet: {e}"));
                    ctx.disconnect("cannot build a packet");
                    return;
                }
            };
            if ctx.send(buf).is_err() {
                // Disconnecting; on_disconnected tells why.
                return;
            }
            self.next_send += 1;
            self.pending.sends += 1;
            self.pending.in_flight += 1;
        }
    }

    fn corrupt(&mut self, ctx: &Ctx<'_>, what: String) {
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        self.stats.error(format!("{} (sender {:#x}): corrupt S_CHAT: {what}", ctx.id(), self.me));
    }

    /// Updates whether this receiver is too far behind the process's senders.
    fn check_lag(&mut self) {
        let sent = self.stats.sends.load(Ordering::Relaxed).saturating_sub(self.joined_at_sends);
        let lag = sent.saturating_sub(self.received);
        if !self.lagging && lag > self.lag_limit {
            self.lagging = true;
            self.stats.lagging.fetch_add(1, Ordering::Relaxed);
            self.stats.lag_pauses.fetch_add(1, Ordering::Relaxed);
        } else if self.lagging && lag <= self.lag_limit / 2 {
            self.set_not_lagging();
        }
    }

    fn set_not_lagging(&mut self) {
        if self.lagging {
            self.lagging = false;
            self.stats.lagging.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Adds the pending counts to the shared ones.
    fn flush(&mut self) {
        let p = std::mem::take(&mut self.pending);
        if p.deliveries > 0 {
            self.stats.messages.fetch_add(p.deliveries, Ordering::Relaxed);
            self.stats.bytes.fetch_add(p.bytes, Ordering::Relaxed);
        }
        if p.sends > 0 {
            self.stats.sends.fetch_add(p.sends, Ordering::Relaxed);
        }
        if p.in_flight != 0 {
            self.stats.in_flight.fetch_add(p.in_flight, Ordering::Relaxed);
        }
    }
}

impl PacketSession for ChatLoad {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.me = next_sender_id();
        self.joined_ns = now_ns(Instant::now());
        self.joined_at_sends = self.stats.sends.load(Ordering::Relaxed);
        // The server puts a session in the room before it reads the session's first
        // packet, so every own message must come back, starting with 0.
        self.expected.insert(self.me, 0);
        match self.pace {
            Some(p) => {
                ctx.set_timer(p.phase(ctx.id().get()), PHASE_TOKEN);
            }
            None => self.top_up(ctx, u64::MAX),
        }
    }

    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        if packet.id == S_CHAT && is_foreign_text(packet.payload) {
            self.stats.foreign.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.received += 1;
        self.pending.deliveries += 1;
        self.pending.bytes += packet.wire_len() as u64;
        if packet.id != S_CHAT {
            return self.corrupt(ctx, format!("packet id {}, expected {S_CHAT}", packet.id));
        }
        let p = packet.payload;
        if p.len() != self.size {
            return self
                .corrupt(ctx, format!("payload of {} bytes, expected {}", p.len(), self.size));
        }
        let (sender, seq, sent_ns) = (read_u64(p, 0), read_u64(p, 8), read_u64(p, 16));
        if let Some(at) = check_filler(&p[HEADER..], filler_seed(sender, seq)) {
            return self.corrupt(
                ctx,
                format!(
                    "sender {sender:#x} seq {seq}: wrong byte at payload offset {}",
                    HEADER + at
                ),
            );
        }
        let own = sender == self.me;
        if own && seq >= self.next_send {
            return self.corrupt(ctx, format!("own seq {seq} was never sent"));
        }
        let in_order = match self.expected.get_mut(&sender) {
            // First message seen from this sender: the baseline.
            None => {
                self.expected.insert(sender, seq + 1);
                true
            }
            Some(next) if seq == *next => {
                *next = seq + 1;
                true
            }
            Some(next) if seq > *next => {
                let expected = *next;
                *next = seq + 1;
                self.stats.gaps.fetch_add(1, Ordering::Relaxed);
                self.stats.error(format!(
                    "{} (sender {:#x}): gap from sender {sender:#x}: expected seq {expected}, got {seq} ({} missing)",
                    ctx.id(),
                    self.me,
                    seq - expected
                ));
                // Own messages before this one are given up: they leave the window.
                if own {
                    self.pending.in_flight -= (seq + 1 - expected) as i64;
                }
                false
            }
            Some(next) => {
                let expected = *next;
                self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                self.stats.error(format!(
                    "{} (sender {:#x}): duplicate from sender {sender:#x}: seq {seq} again (expected {expected})",
                    ctx.id(),
                    self.me
                ));
                return;
            }
        };
        if own {
            self.last_echo_ns = sent_ns;
            let now = Instant::now();
            let us = now_ns(now).saturating_sub(sent_ns) / 1000;
            record_latency(&self.stats, us, now);
            if in_order {
                self.pending.in_flight -= 1;
            }
            if self.pace.is_none() {
                self.top_up(ctx, u64::MAX);
            }
        }
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        match (token, &mut self.pace) {
            (PHASE_TOKEN, Some(pace)) => {
                ctx.set_interval(pace.period(), RATE_TOKEN);
            }
            (RATE_TOKEN, Some(pace)) => {
                let due = pace.tick();
                if !self.retry_armed {
                    self.top_up(ctx, due);
                }
            }
            _ => {
                self.retry_armed = false;
                if self.pace.is_none() {
                    self.top_up(ctx, u64::MAX);
                }
            }
        }
        self.flush();
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let echoed = self.expected.get(&self.me).copied().unwrap_or(0);
        self.set_not_lagging();
        flush_latency(&self.stats);
        self.pending.in_flight -= self.in_flight() as i64;
        // Nothing is in flight any more; keeps `in_flight()` consistent.
        self.expected.insert(self.me, self.next_send);
        self.flush();
        let expected = matches!(reason, DisconnectReason::Shutdown | DisconnectReason::Local(_));
        if !expected && !self.stats.is_stopping() {
            self.stats.unexpected_disconnects.fetch_add(1, Ordering::Relaxed);
            self.stats.error(format!("{} (sender {:#x}) dropped: {reason}", ctx.id(), self.me));
        }
        if self.me != 0 && self.stats.keep_finals.load(Ordering::Relaxed) {
            let f = Final {
                me: self.me,
                joined_ns: self.joined_ns,
                echoed,
                last_echo_ns: self.last_echo_ns,
                dropped: !expected,
                seen: std::mem::take(&mut self.expected),
            };
            self.stats.finals.lock().unwrap_or_else(|p| p.into_inner()).push(f);
        }
    }

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        self.stats.connect_failures.fetch_add(1, Ordering::Relaxed);
        self.stats.error(format!("connect to {addr} failed: {error}"));
    }
}

/// The [`Session`] the client service runs: the library's [`Framed`] around [`ChatLoad`],
/// adding the per-read flush of the counters and the handshake bookkeeping.
pub struct ChatClient(Framed<ChatLoad>, HandshakeWatch);

impl ChatClient {
    /// A session sending `size`-byte payloads (`HEADER..=MAX_PAYLOAD`), `depth` in flight;
    /// sending pauses while a receiver is more than `lag_limit` messages behind.
    pub fn new(
        stats: Arc<LoadStats>,
        size: usize,
        depth: usize,
        lag_limit: u64,
        pace: Option<Pace>,
        watch: HandshakeWatch,
    ) -> Self {
        // Accept any packet the wire allows, so a wrong length is reported as such.
        ChatClient(
            Framed::with_max_packet_size(
                ChatLoad::new(stats, size, depth, lag_limit, pace),
                MAX_PACKET_SIZE_LIMIT,
            ),
            watch,
        )
    }
}

impl Session for ChatClient {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.1.connected();
        self.0.on_connected(ctx);
        self.0.inner_mut().flush();
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let used = self.0.on_recv(ctx, data);
        let inner = self.0.inner_mut();
        inner.flush();
        inner.check_lag();
        used
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.0.on_disconnected(ctx, reason);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        self.0.on_timer(ctx, token);
    }

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &io::Error) {
        self.0.on_connect_failed(addr, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_round_trip_and_detection() {
        for len in [0, 1, 7, 8, 9, 40, 63, 1000] {
            let seed = filler_seed(0xABCD, 42);
            let mut buf = Vec::new();
            put_filler(&mut buf, seed, len);
            assert_eq!(buf.len(), len);
            assert_eq!(check_filler(&buf, seed), None);
            if len > 0 {
                assert!(check_filler(&buf, filler_seed(0xABCD, 43)).is_some());
                for at in [0, len / 2, len - 1] {
                    let mut bad = buf.clone();
                    bad[at] ^= 0x10;
                    assert_eq!(check_filler(&bad, seed), Some(at), "len {len} at {at}");
                }
            }
        }
    }

    #[test]
    fn dummy_payloads_are_never_foreign_text() {
        let me = next_sender_id();
        for (seq, size) in [(0, HEADER), (1, 64), (1 << 40, 100), (u64::from(u32::MAX), 4000)] {
            let mut p = Vec::new();
            p.put_u64_le(me);
            p.put_u64_le(seq);
            p.put_u64_le(now_ns(Instant::now()));
            put_filler(&mut p, filler_seed(me, seq), size - HEADER);
            assert!(!is_foreign_text(&p), "seq {seq}, size {size}");
        }
        assert!(is_foreign_text(b"bot: hello"));
        assert!(is_foreign_text("g\u{e4}st: caf\u{e9}\tok".as_bytes()));
        assert!(!is_foreign_text(b"bot: \x00"));
        assert!(!is_foreign_text(b"\xff\xfe"));
    }

    #[test]
    fn sender_ids_are_unique() {
        let a = next_sender_id();
        let b = next_sender_id();
        assert_ne!(a, b);
        assert_eq!(a >> 32, b >> 32);
    }
}
