//! Clients that never read (issue 6, backpressure): 200 sessions that never read sit in a
//! chat room while 1 KiB messages are broadcast to it. With `max_send_queue` at 256 KiB and
//! the default `SendQueuePolicy::Disconnect`, each of them is dropped with
//! `SendQueueOverflow`; the 20 sessions that read lose nothing (every sender's sequence
//! arrives complete and in order), and the process's resident memory stays under a bound
//! computed from the configured limits.
//!
//! RSS is process-wide, so this binary holds exactly one test. The server runs in this
//! process, so the process's RSS growth bounds the server's.

mod common;

use common::{any_port, connect, TIMEOUT};
use servercore::packet::{decode, encode, Framed, Packet, PacketSession, PacketWriter};
use servercore::{Ctx, DisconnectReason, Room, ServerService, SessionConfig};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const C_CHAT: u16 = 1;
const S_CHAT: u16 = 2;
/// Chat payload size: 1 KiB.
const MESSAGE: usize = 1024;
/// The per-session send-queue limit under test.
const MAX_SEND_QUEUE: usize = 256 * 1024;
const NON_READERS: usize = 200;
const READERS: usize = 20;
/// Readers that also send (each its own sequence).
const SENDERS: usize = 4;
/// Most messages broadcast but not yet read by the slowest reader: keeps every reader's
/// queue far below the limit (64 × 1 KiB = 64 KiB < 256 KiB), so readers can never be
/// dropped for being slow, only the non-readers.
const WINDOW: u64 = 64;
/// Safety net: if the non-readers are not all dropped after this many messages per
/// reader (64 MiB), the limit does not work.
const MAX_MESSAGES: u64 = 64 * 1024;
/// The sequence number that ends a sender's stream.
const END: u32 = u32::MAX;

#[derive(Debug)]
enum ServerEv {
    /// `on_connected` ran; whether it entered the room.
    Connected {
        entered: bool,
    },
    Disconnected(u16, DisconnectReason),
}

/// The chat room of PROTOCOL.md section 3, as `src/samples/chat.rs` builds it: every
/// C_CHAT is relayed as S_CHAT to every member, the sender included.
struct Chat {
    room: Room,
    events: Sender<ServerEv>,
    port: u16,
}

impl PacketSession for Chat {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.port = ctx.peer_addr().port();
        let entered = ctx.enter_room(&self.room);
        let _ = self.events.send(ServerEv::Connected { entered });
    }

    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        if packet.id != C_CHAT {
            ctx.disconnect("unexpected packet id");
            return;
        }
        let mut w = PacketWriter::with_capacity(S_CHAT, packet.payload.len());
        w.put_slice(packet.payload);
        ctx.broadcast_room(&self.room, w.finish().unwrap()).unwrap();
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.events.send(ServerEv::Disconnected(self.port, reason.clone()));
    }
}

/// Resident set size of this process, in bytes.
fn rss() -> usize {
    status_kib("VmRSS:") * 1024
}

/// Peak resident set size since the last reset, in bytes.
fn peak_rss() -> usize {
    status_kib("VmHWM:") * 1024
}

fn status_kib(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).expect("field in /proc/self/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Resets the peak RSS (VmHWM) to the current RSS; false where the kernel does not allow it.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// How many messages each reader has read, and a wake-up for the senders' window.
struct Progress {
    read: Vec<AtomicU64>,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Progress {
    fn slowest(&self) -> u64 {
        self.read.iter().map(|n| n.load(Ordering::SeqCst)).min().unwrap()
    }
}

fn chat_payload(sender: u32, seq: u32) -> Vec<u8> {
    let mut p = Vec::with_capacity(MESSAGE);
    p.extend_from_slice(&sender.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.extend((8..MESSAGE).map(|i| (i as u32 ^ seq ^ sender) as u8));
    p
}

/// Reads every S_CHAT until each sender's END; checks that each sender's sequence arrives
/// complete and in order and that payloads are intact. Returns the messages per sender.
fn read_all(mut s: TcpStream, me: usize, progress: Arc<Progress>) -> Vec<u32> {
    let mut next = vec![0u32; SENDERS];
    let mut ended = 0;
    let mut buf = Vec::with_capacity(256 * 1024);
    let mut chunk = vec![0u8; 64 * 1024];
    while ended < SENDERS {
        let n = s.read(&mut chunk).unwrap_or_else(|e| panic!("reader {me}: read failed: {e}"));
        assert!(n > 0, "reader {me}: the server closed a reading session");
        buf.extend_from_slice(&chunk[..n]);
        let mut used = 0;
        while let Some((p, len)) = decode(&buf[used..], 4096).expect("well-formed stream") {
            assert_eq!(p.id, S_CHAT);
            assert_eq!(p.payload.len(), MESSAGE);
            let sender = u32::from_le_bytes(p.payload[..4].try_into().unwrap());
            let seq = u32::from_le_bytes(p.payload[4..8].try_into().unwrap());
            let s_ix = sender as usize;
            assert!(s_ix < SENDERS, "reader {me}: unknown sender {sender}");
            if seq == END {
                assert_eq!(p.payload, chat_payload(sender, END), "reader {me}: damaged END");
                ended += 1;
            } else {
                assert_eq!(
                    seq, next[s_ix],
                    "reader {me}: sender {sender}'s message {} is missing or out of order",
                    next[s_ix]
                );
                assert_eq!(p.payload, chat_payload(sender, seq), "reader {me}: damaged payload");
                next[s_ix] += 1;
                progress.read[me].fetch_add(1, Ordering::SeqCst);
            }
            used += len;
        }
        buf.drain(..used);
        let _guard = progress.lock.lock().unwrap();
        progress.cv.notify_all();
    }
    next
}

#[test]
fn non_reading_sessions_are_dropped_with_send_queue_overflow_and_readers_lose_nothing() {
    let (tx, events) = mpsc::channel();
    let room = Room::new();
    let r2 = room.clone();
    let config = SessionConfig { max_send_queue: MAX_SEND_QUEUE, ..SessionConfig::default() };
    let server = ServerService::builder(any_port())
        .workers(2)
        .session_config(config.clone())
        .start(move || Framed::new(Chat { room: r2.clone(), events: tx.clone(), port: 0 }))
        .unwrap();
    let addr = server.local_addr();

    let readers: Vec<TcpStream> = (0..READERS).map(|_| connect(addr)).collect();
    let non_readers: Vec<TcpStream> = (0..NON_READERS).map(|_| connect(addr)).collect();
    let reader_ports: Vec<u16> = readers.iter().map(|s| s.local_addr().unwrap().port()).collect();
    let non_reader_ports: Vec<u16> =
        non_readers.iter().map(|s| s.local_addr().unwrap().port()).collect();

    let mut connected = 0;
    let mut reasons: HashMap<u16, Vec<DisconnectReason>> = HashMap::new();
    let mut take = |ev: ServerEv, connected: &mut usize| match ev {
        ServerEv::Connected { entered } => {
            assert!(entered, "a session could not enter the room");
            *connected += 1
        }
        ServerEv::Disconnected(p, r) => reasons.entry(p).or_default().push(r),
    };
    let deadline = Instant::now() + TIMEOUT;
    while connected < READERS + NON_READERS {
        let ev = events.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        take(ev.expect("every session connects"), &mut connected);
    }
    // Every member is in the room before the first broadcast (room entry is carried out
    // right after on_connected; Room::len counts it).
    common::wait_until("every session to be in the room", || {
        let n = room.len();
        if n == READERS + NON_READERS {
            Ok(())
        } else {
            Err(format!("{n} members"))
        }
    });

    let progress = Arc::new(Progress {
        read: (0..READERS).map(|_| AtomicU64::new(0)).collect(),
        lock: Mutex::new(()),
        cv: Condvar::new(),
    });
    let mut senders: Vec<TcpStream> = Vec::new();
    let mut reader_threads = Vec::new();
    for (i, s) in readers.into_iter().enumerate() {
        if i < SENDERS {
            senders.push(s.try_clone().unwrap());
        }
        let p = progress.clone();
        reader_threads.push(std::thread::spawn(move || read_all(s, i, p)));
    }

    // The memory baseline: every session and client exists, nothing is queued yet.
    let baseline = rss();
    let peak_reset = reset_peak_rss();
    let mut sampled_peak = baseline;

    // Broadcast until every non-reader has been dropped, in a window over the slowest
    // reader.
    let started = Instant::now();
    let mut sent = [0u32; SENDERS];
    let mut total: u64 = 0;
    let mut overflowed = 0;
    let mut extra_after_drops = None;
    loop {
        loop {
            match events.try_recv() {
                Ok(ev) => {
                    if let ServerEv::Disconnected(p, DisconnectReason::SendQueueOverflow { .. }) =
                        &ev
                    {
                        assert!(non_reader_ports.contains(p), "a reader was dropped: {ev:?}");
                        overflowed += 1;
                    }
                    take(ev, &mut connected);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => unreachable!("the server is running"),
            }
        }
        if overflowed == NON_READERS && extra_after_drops.is_none() {
            // Keep going a little: the readers are still served after the drops.
            extra_after_drops = Some(total + 500);
        }
        if extra_after_drops.is_some_and(|end| total >= end) {
            break;
        }
        assert!(
            total < MAX_MESSAGES,
            "after {total} messages only {overflowed} of {NON_READERS} non-readers were dropped"
        );
        // The window: wait for the slowest reader.
        {
            let deadline = Instant::now() + TIMEOUT;
            let mut guard = progress.lock.lock().unwrap();
            while total - progress.slowest() >= WINDOW {
                assert!(Instant::now() < deadline, "readers stalled at {}", progress.slowest());
                guard = progress.cv.wait_timeout(guard, Duration::from_millis(10)).unwrap().0;
            }
        }
        let k = (total % SENDERS as u64) as usize;
        let wire = encode(C_CHAT, &chat_payload(k as u32, sent[k])).unwrap();
        senders[k].write_all(&wire).expect("a sender's write");
        sent[k] += 1;
        total += 1;
        if total % 64 == 0 {
            sampled_peak = sampled_peak.max(rss());
        }
    }
    for (k, s) in senders.iter_mut().enumerate() {
        s.write_all(&encode(C_CHAT, &chat_payload(k as u32, END)).unwrap()).unwrap();
    }
    for (i, t) in reader_threads.into_iter().enumerate() {
        let got = t.join().unwrap_or_else(|_| panic!("reader {i} failed"));
        assert_eq!(got, sent, "reader {i} got every message of every sender");
    }
    let elapsed = started.elapsed();
    sampled_peak = sampled_peak.max(rss());
    let peak = if peak_reset { peak_rss().max(sampled_peak) } else { sampled_peak };

    // The memory bound, from the configured limits: per non-reader, a full send queue
    // (max_send_queue) plus its receive buffer (recv_buffer_size) plus 16 KiB for the
    // session's own state (slot, queue ring of buffer handles, socket bookkeeping), which
    // is 200 × (256 + 4 + 16) KiB ≈ 54 MiB; plus 32 MiB for everything that does not
    // scale with the non-readers (the readers' 64 KiB buffers and threads, the packet
    // writer's 64 KiB chunks, allocator slack). Socket buffers are kernel memory, not RSS.
    // (The queues share the broadcast buffers, so the real growth is far lower: this bound
    // only fails if a queue grows past its limit by a lot, or memory leaks.)
    let per_session = MAX_SEND_QUEUE + config.recv_buffer_size + 16 * 1024;
    let bound = baseline + NON_READERS * per_session + 32 * 1024 * 1024;
    eprintln!(
        "{total} messages of {MESSAGE} B to {} members in {elapsed:?}; RSS baseline {} KiB, \
         peak {} KiB (growth {} KiB), bound {} KiB",
        READERS + NON_READERS,
        baseline / 1024,
        peak / 1024,
        peak.saturating_sub(baseline) / 1024,
        bound / 1024
    );
    assert!(peak <= bound, "RSS peaked at {peak} B, over the bound {bound} B");

    // The reader threads dropped their streams; the senders' clones are the last handles.
    drop(senders);
    common::wait_no_sessions(&server);
    drop(non_readers);
    server.shutdown(Duration::from_secs(5)).unwrap();
    while let Ok(ev) = events.try_recv() {
        take(ev, &mut connected);
    }

    let want = DisconnectReason::SendQueueOverflow { limit: MAX_SEND_QUEUE };
    for p in &non_reader_ports {
        assert_eq!(reasons.get(p), Some(&vec![want.clone()]), "non-reader of port {p}");
    }
    for p in &reader_ports {
        assert_eq!(reasons.get(p), Some(&vec![DisconnectReason::PeerClosed]), "reader of port {p}");
    }
}
