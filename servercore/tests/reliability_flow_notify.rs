//! Flow control (issue 6), the `SendQueuePolicy::Notify` backpressure hooks: a client that
//! stops reading makes its session's sends be refused with `QueueFull` (from the callback
//! and from a `SessionHandle`), `on_send_queue_full` is called once per congestion episode,
//! `on_writable` once the client reads again; the session stays connected and every byte
//! that was accepted arrives, in order.
//!
//! The sessions check their own rules (a rule broken becomes a `Violation` event), so the
//! checks do not depend on timing; only how much the test provokes does.

mod common;

use common::{any_port, connect, wait_event, TIMEOUT};
use servercore::{
    Ctx, DisconnectReason, SendError, SendQueuePolicy, ServerService, Session, SessionConfig,
    SessionHandle,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

// ----- Notify policy ---------------------------------------------------------------------

/// Send-queue limit of the Notify tests: 64 KiB, drained to 16 KiB before `on_writable`.
const LIMIT: usize = 64 * 1024;
const LOW: usize = 16 * 1024;
/// Every frame the producers send is this long: an 8-byte sequence number, then a pattern.
const FRAME: usize = 1024;
/// Frame sequence number of the end marker (its pattern bytes carry the frame count).
const END_SEQ: u64 = u64::MAX;
/// Timer tick of the producers.
const TICK: Duration = Duration::from_millis(5);
/// Consecutive ticks without any progress that prove the peer's socket is full.
const STALL_TICKS: u32 = 20;

fn frame(seq: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME);
    f.extend_from_slice(&seq.to_le_bytes());
    f.extend((8..FRAME).map(|i| (seq as usize * 7 + i) as u8));
    f
}

fn end_frame(count: u64) -> Vec<u8> {
    let mut f = Vec::with_capacity(FRAME);
    f.extend_from_slice(&END_SEQ.to_le_bytes());
    f.extend_from_slice(&count.to_le_bytes());
    f.resize(FRAME, 0xEE);
    f
}

fn notify_config() -> SessionConfig {
    SessionConfig {
        max_send_queue: LIMIT,
        send_queue_low_watermark: LOW,
        send_queue_policy: SendQueuePolicy::Notify,
        ..SessionConfig::default()
    }
}

/// Reads frames until the end marker; checks that sequence numbers run 0, 1, 2, ... with
/// intact patterns (nothing accepted was lost, reordered or damaged) and that the marker's
/// count matches. Returns the count, and every out-of-sequence frame seen (by seq).
fn read_frames(mut s: TcpStream) -> (u64, Vec<u64>) {
    let mut next = 0u64;
    let mut strays = Vec::new();
    let mut f = vec![0u8; FRAME];
    loop {
        s.read_exact(&mut f).expect("read a frame");
        let seq = u64::from_le_bytes(f[..8].try_into().unwrap());
        if seq == END_SEQ {
            let count = u64::from_le_bytes(f[8..16].try_into().unwrap());
            assert_eq!(count, next, "the end marker's count vs the frames received");
            return (count, strays);
        }
        if seq != next {
            strays.push(seq);
            continue;
        }
        assert_eq!(f, frame(seq), "frame {seq} damaged");
        next += 1;
    }
}

#[derive(Debug)]
enum NEv {
    Connected(SessionHandle),
    /// `on_send_queue_full`, with the frames accepted so far.
    Full(u64),
    /// `on_writable`, with the frames accepted so far.
    Writable(u64),
    /// The queue has been at its limit for `STALL_TICKS` ticks with no progress (and, when
    /// congested, every try in those ticks was refused).
    Stalled,
    /// A send from the tick was accepted between `on_send_queue_full` and `on_writable`.
    AcceptedWhileCongested,
    Violation(String),
    Disconnected(DisconnectReason),
}

/// Produces frames as fast as the Notify policy lets it.
struct Producer {
    events: Sender<NEv>,
    producing: bool,
    /// Frames accepted (the next sequence number).
    seq: u64,
    /// A send was refused and `on_writable` has not come yet.
    congested: bool,
    /// `on_send_queue_full` was called in this episode.
    full_called: bool,
    /// The end marker is due (sent once the queue takes it).
    end_due: bool,
    ticks_without_progress: u32,
    progressed: bool,
    /// Refuse to use the last bit of room: fill to exactly `LIMIT`, never over it, so the
    /// queue is full while no send was ever refused (the `exact` variant).
    exact: bool,
}

impl Producer {
    fn new(events: Sender<NEv>, exact: bool) -> Self {
        Producer {
            events,
            producing: false,
            seq: 0,
            congested: false,
            full_called: false,
            end_due: false,
            ticks_without_progress: 0,
            progressed: false,
            exact,
        }
    }

    fn violation(&self, v: String) {
        let _ = self.events.send(NEv::Violation(v));
    }

    /// Sends one buffer, keeping the books on what the policy must do.
    fn try_send(&mut self, ctx: &mut Ctx<'_>, buf: Vec<u8>) -> bool {
        match ctx.send(buf) {
            Ok(()) => true,
            Err(SendError::QueueFull { limit }) => {
                if limit != LIMIT {
                    self.violation(format!("QueueFull names limit {limit}"));
                }
                self.congested = true;
                false
            }
            Err(e) => {
                self.violation(format!("send failed: {e}"));
                false
            }
        }
    }

    fn fill(&mut self, ctx: &mut Ctx<'_>) {
        if self.end_due && !self.congested {
            if self.try_send(ctx, end_frame(self.seq)) {
                self.end_due = false;
            }
            return;
        }
        while self.producing && !self.congested {
            if self.exact && ctx.send_queue_bytes() + FRAME > LIMIT {
                return;
            }
            if !self.try_send(ctx, frame(self.seq)) {
                return;
            }
            self.seq += 1;
            self.progressed = true;
        }
    }
}

impl Session for Producer {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.events.send(NEv::Connected(ctx.handle()));
        ctx.set_interval(TICK, 1);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if data.contains(&b'!') {
            self.producing = true;
            self.fill(ctx);
        }
        data.len()
    }

    fn on_send(&mut self, ctx: &mut Ctx<'_>, _bytes: usize) {
        self.progressed = true;
        self.fill(ctx);
    }

    fn on_send_queue_full(&mut self, ctx: &mut Ctx<'_>) {
        if self.full_called {
            self.violation("on_send_queue_full twice in one episode".into());
        }
        if ctx.send_queue_bytes() + FRAME <= LIMIT && !self.exact {
            self.violation(format!("on_send_queue_full with {} B queued", ctx.send_queue_bytes()));
        }
        self.full_called = true;
        self.congested = true;
        let _ = self.events.send(NEv::Full(self.seq));
    }

    fn on_writable(&mut self, ctx: &mut Ctx<'_>) {
        if !self.full_called {
            self.violation("on_writable without on_send_queue_full".into());
        }
        if ctx.send_queue_bytes() > LOW {
            self.violation(format!("on_writable with {} B queued", ctx.send_queue_bytes()));
        }
        self.full_called = false;
        self.congested = false;
        self.ticks_without_progress = 0;
        let _ = self.events.send(NEv::Writable(self.seq));
        self.fill(ctx);
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, _token: u64) {
        let mut progressed = std::mem::take(&mut self.progressed);
        if self.congested && self.producing && !self.exact {
            // Congested: another try (must not call on_send_queue_full again). While the
            // peer's socket is full it cannot fit, so it is refused; if the queue has
            // drained a little it may fit, and the engine takes it (reported, see
            // `notify_policy_ctx_send_is_refused_until_on_writable`).
            if self.try_send(ctx, frame(self.seq)) {
                self.seq += 1;
                progressed = true;
                let _ = self.events.send(NEv::AcceptedWhileCongested);
            }
        }
        if progressed {
            self.ticks_without_progress = 0;
        } else if self.producing {
            // No byte went out and no try fitted during this tick.
            self.ticks_without_progress += 1;
            if self.ticks_without_progress == STALL_TICKS {
                let _ = self.events.send(NEv::Stalled);
            }
        }
    }

    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.events.send(NEv::Disconnected(reason.clone()));
    }
}

/// Stops producing and sends the end marker (now, or once the queue takes it).
fn stop_producer(handle: &SessionHandle) {
    handle
        .run::<Producer>(|p, ctx| {
            p.producing = false;
            p.end_due = true;
            p.fill(ctx);
        })
        .expect("the session is connected");
}

fn check_no_violation(seen: &[NEv]) {
    let v: Vec<&String> = seen
        .iter()
        .filter_map(|e| if let NEv::Violation(v) = e { Some(v) } else { None })
        .collect();
    assert!(v.is_empty(), "the Notify policy broke its rules: {v:#?}");
}

fn disconnects(seen: &[NEv]) -> Vec<&DisconnectReason> {
    seen.iter().filter_map(|e| if let NEv::Disconnected(r) = e { Some(r) } else { None }).collect()
}

#[test]
fn notify_policy_refuses_sends_notifies_once_and_loses_nothing_accepted() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .session_config(notify_config())
        .start(move || Producer::new(tx.clone(), false))
        .unwrap();
    let mut seen = Vec::new();
    let mut client = connect(server.local_addr());
    let handle = wait_event(&rx, &mut seen, "on_connected", |e| match e {
        NEv::Connected(h) => Some(h.clone()),
        _ => None,
    });

    // The client asks for data and does not read: the queue fills, then the kernel's
    // buffers, and the session stalls at its limit.
    client.write_all(b"!").unwrap();
    wait_event(&rx, &mut seen, "on_send_queue_full", |e| matches!(e, NEv::Full(_)).then_some(()));
    wait_event(&rx, &mut seen, "the stall", |e| matches!(e, NEv::Stalled).then_some(()));
    check_no_violation(&seen);
    // Stalled: the last hook was on_send_queue_full (once), and no on_writable since.
    let hooks: Vec<_> =
        seen.iter().filter(|e| matches!(e, NEv::Full(_) | NEv::Writable(_))).collect();
    assert!(matches!(hooks.last(), Some(NEv::Full(_))), "hooks: {hooks:?}");

    // A handle's send is refused too, with the limit.
    assert_eq!(
        handle.send(&b"not a frame: must never be queued"[..]),
        Err(SendError::QueueFull { limit: LIMIT })
    );
    assert!(handle.is_connected());

    // The client reads again: the queue drains, on_writable comes, production resumes.
    // The reader reads through a clone: the connection stays open until the end.
    let read_half = client.try_clone().unwrap();
    let reader = std::thread::spawn(move || read_frames(read_half));
    let at_resume = seen.len();
    wait_event(&rx, &mut seen, "on_writable", |e| matches!(e, NEv::Writable(_)).then_some(()));
    stop_producer(&handle);
    let (count, strays) = reader.join().expect("the reader");
    assert!(strays.is_empty(), "frames out of sequence: {strays:?}");
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    check_no_violation(&seen);

    // Frames accepted at each hook: never decreasing.
    let at_hooks: Vec<u64> = seen
        .iter()
        .filter_map(|e| match e {
            NEv::Full(n) | NEv::Writable(n) => Some(*n),
            _ => None,
        })
        .collect();
    assert!(at_hooks.windows(2).all(|w| w[0] <= w[1]), "{at_hooks:?}");
    let full = seen.iter().filter(|e| matches!(e, NEv::Full(_))).count();
    let writable = seen.iter().filter(|e| matches!(e, NEv::Writable(_))).count();
    let sneaked = seen.iter().filter(|e| matches!(e, NEv::AcceptedWhileCongested)).count();
    eprintln!(
        "{count} frames ({} KiB) delivered; {full} congestion episodes, {writable} on_writable, \
         {sneaked} sends accepted between on_send_queue_full and on_writable ({} events after \
         the client resumed reading)",
        count * FRAME as u64 / 1024,
        seen.len() - at_resume
    );
    assert!(count as usize * FRAME > LIMIT, "more than one queue's worth went through");
    // Episodes alternate: full, writable, full, ... (the last may still be open).
    assert!(full == writable || full == writable + 1, "{full} full vs {writable} writable");
    assert!(disconnects(&seen).is_empty(), "the session stayed: {:?}", disconnects(&seen));
    assert!(handle.is_connected());
    assert_eq!(server.stats().disconnected, 0);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn notify_policy_a_handle_send_that_returned_ok_is_delivered() {
    // The queue is filled to exactly its limit by sends that all fit, so no send was
    // refused and the session is not "congested". A handle's send then returns Ok ("the
    // worker will queue it", SessionHandle::send); it must not be dropped silently.
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .session_config(notify_config())
        .start(move || Producer::new(tx.clone(), true))
        .unwrap();
    let mut seen = Vec::new();
    let mut client = connect(server.local_addr());
    let handle = wait_event(&rx, &mut seen, "on_connected", |e| match e {
        NEv::Connected(h) => Some(h.clone()),
        _ => None,
    });
    client.write_all(b"!").unwrap();
    wait_event(&rx, &mut seen, "the stall", |e| matches!(e, NEv::Stalled).then_some(()));
    check_no_violation(&seen);
    assert!(!seen.iter().any(|e| matches!(e, NEv::Full(_))), "no send was refused yet");
    assert!(disconnects(&seen).is_empty());

    // The handle sees no congestion, so it accepts. The frame carries a sequence number
    // no producer uses, so the reader reports it as a stray when it arrives.
    const MARKER: u64 = 1 << 40;
    let accepted = handle.send(frame(MARKER));
    // The reader reads through a clone: the connection stays open until the end.
    let read_half = client.try_clone().unwrap();
    let reader = std::thread::spawn(move || read_frames(read_half));
    // The stop (and its end marker) is posted after the handle's send, to the same inbox:
    // the worker takes the two in that order.
    stop_producer(&handle);
    let (count, strays) = reader.join().expect("the reader");
    while let Ok(e) = rx.try_recv() {
        seen.push(e);
    }
    check_no_violation(&seen);
    eprintln!("handle.send returned {accepted:?}; {count} frames; strays {strays:?}");
    match accepted {
        Ok(()) => assert_eq!(
            strays,
            vec![MARKER],
            "SessionHandle::send returned Ok, the session stayed connected, yet the buffer \
             never reached the peer (events: {seen:?})"
        ),
        Err(SendError::QueueFull { .. }) => assert!(strays.is_empty()),
        Err(e) => panic!("unexpected {e:?}"),
    }
    assert!(handle.is_connected());
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn notify_policy_ctx_send_is_refused_until_on_writable() {
    // on_send_queue_full: "a send was refused because the queue is at max_send_queue";
    // on_writable: "the queue drained to the low watermark; sends are accepted again".
    // So between the two, ctx.send refuses, as SessionHandle::send does (it checks the
    // congested flag). Everything happens in one callback, before any byte is written:
    // the queue holds 1000 + 63 × 1024 = 65,512 bytes when a 1024-byte send is refused;
    // a 1-byte send right after must be refused too.
    /// What the probe saw: the small ctx.send, the handle's send, the bytes queued.
    type Seen = (Result<(), SendError>, Result<(), SendError>, usize);
    struct Probe(Sender<Seen>);
    impl Session for Probe {
        fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
            ctx.send(vec![b'a'; 1000]).unwrap();
            while ctx.send(vec![b'b'; 1024]).is_ok() {}
            let queued = ctx.send_queue_bytes();
            let from_handle = ctx.handle().send(vec![b'h'; 1]);
            let small = ctx.send(vec![b'c'; 1]);
            let _ = self.0.send((small, from_handle, queued));
            data.len()
        }
    }
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .session_config(notify_config())
        .start(move || Probe(tx.clone()))
        .unwrap();
    let mut client = connect(server.local_addr());
    client.write_all(b"!").unwrap();
    let (small, from_handle, queued) = rx.recv_timeout(TIMEOUT).expect("the probe ran");
    assert_eq!(queued, 1000 + 63 * 1024);
    assert_eq!(from_handle, Err(SendError::QueueFull { limit: LIMIT }), "the handle refuses");
    assert_eq!(
        small,
        Err(SendError::QueueFull { limit: LIMIT }),
        "ctx.send accepted a buffer after on_send_queue_full was due and before on_writable \
         (SessionHandle::send refuses in the same state)"
    );
    drop(client);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn read_frames_reports_a_gap() {
    // Self-test of the frame checker: a missing frame shows up as a stray.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let writer = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        for seq in [0, 1, 3] {
            s.write_all(&frame(seq)).unwrap();
        }
        s.write_all(&end_frame(2)).unwrap();
    });
    let (count, strays) = read_frames(connect(addr));
    writer.join().unwrap();
    assert_eq!((count, strays), (2, vec![3]));
}
