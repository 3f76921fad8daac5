//! Room broadcast under load over real loopback connections: 500 sessions on two workers,
//! ten senders, each sender's messages delivered to everyone in order, exactly once; with
//! and without fan-out gathering.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! (a channel message or an observed count) with `common::TIMEOUT` as the safety net.

mod common;

use common::rooms::{packet, room_server, u32_at, C_CHAT, S_CHAT, S_JOINED};
use common::workers::recv;
use common::{any_port, TIMEOUT};
use servercore::packet::{Framed, Packet, PacketSession};
use servercore::{
    ClientService, Ctx, DisconnectReason, Room, ServerService, SessionConfig, SessionHandle,
    SessionId,
};
use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SENDERS: usize = 10;
const MESSAGES: u32 = 200;

struct ChatShared {
    joined: Sender<(SessionHandle, u32)>,
    done: Sender<SessionId>,
    deliveries: AtomicUsize,
    violations: Mutex<Vec<String>>,
}

impl ChatShared {
    fn violation(&self, v: String) {
        let mut all = self.violations.lock().unwrap();
        if all.len() < 50 {
            all.push(v);
        }
    }
}

/// A chat receiver: checks that each sender's messages come in order, each exactly once.
struct ChatClient {
    shared: Arc<ChatShared>,
    /// Last sequence number seen per sender.
    last: [Option<u32>; SENDERS],
    got: usize,
}

impl PacketSession for ChatClient {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, p: Packet<'_>) {
        match p.id {
            S_JOINED => {
                let w = u32_at(p.payload, 0).unwrap_or(u32::MAX);
                let _ = self.shared.joined.send((ctx.handle(), w));
            }
            S_CHAT => {
                let (Some(sender), Some(seq), 8) =
                    (u32_at(p.payload, 0), u32_at(p.payload, 4), p.payload.len())
                else {
                    return self.shared.violation(format!("{}: bad S_CHAT {:?}", ctx.id(), p));
                };
                let Some(last) = self.last.get_mut(sender as usize) else {
                    return self.shared.violation(format!("{}: unknown sender {sender}", ctx.id()));
                };
                let want = last.map_or(0, |l| l + 1);
                if seq != want {
                    let what = if seq < want { "duplicate or reordered" } else { "gap" };
                    self.shared.violation(format!(
                        "{}: sender {sender}: got seq {seq}, expected {want} ({what})",
                        ctx.id()
                    ));
                }
                *last = Some(last.map_or(seq, |l| l.max(seq)));
                self.got += 1;
                self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
                if self.got == SENDERS * MESSAGES as usize {
                    let _ = self.shared.done.send(ctx.id());
                }
            }
            other => self.shared.violation(format!("{}: unexpected packet id {other}", ctx.id())),
        }
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if *reason != DisconnectReason::Shutdown {
            self.shared.violation(format!("{}: disconnected early: {reason}", ctx.id()));
        }
    }
}

#[test]
fn broadcast_500_sessions_over_2_workers_10_senders_200_messages_each() {
    broadcast_500_sessions(SessionConfig::default());
}

/// The same with fan-out gathering off: room batching alone, and the drain enter that then
/// follows busy fan-out turns on io_uring.
#[test]
fn broadcast_500_sessions_without_fan_out_gathering() {
    broadcast_500_sessions(SessionConfig {
        broadcast_gather_max: Duration::ZERO,
        ..SessionConfig::default()
    });
}

fn broadcast_500_sessions(config: SessionConfig) {
    const SESSIONS: usize = 500;
    let room = Room::new();
    let (server, checks) =
        room_server(&room, ServerService::builder(any_port()).workers(2).session_config(config));
    let (joined_tx, joined_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel();
    let shared = Arc::new(ChatShared {
        joined: joined_tx,
        done: done_tx,
        deliveries: AtomicUsize::new(0),
        violations: Mutex::new(Vec::new()),
    });
    let sh = shared.clone();
    let client = ClientService::builder(server.local_addr())
        .sessions(SESSIONS)
        .workers(2)
        .start(move || {
            Framed::new(ChatClient { shared: sh.clone(), last: [None; SENDERS], got: 0 })
        })
        .unwrap();

    // Every session is in the room before anyone speaks.
    let mut handles = Vec::new();
    let mut workers = BTreeSet::new();
    for i in 0..SESSIONS {
        let (h, w) = recv(&joined_rx, &format!("S_JOINED number {i} of {SESSIONS}"));
        handles.push(h);
        workers.insert(w);
    }
    assert_eq!(room.len(), SESSIONS, "every session entered the room");
    assert_eq!(workers, BTreeSet::from([0, 1]), "room members live on both server workers");

    let started = Instant::now();
    for seq in 0..MESSAGES {
        for (sender, h) in handles[..SENDERS].iter().enumerate() {
            let mut payload = (sender as u32).to_le_bytes().to_vec();
            payload.extend_from_slice(&seq.to_le_bytes());
            h.send(packet(C_CHAT, &payload)).expect("senders are connected");
        }
    }

    let mut finished = HashSet::new();
    let deadline = Instant::now() + TIMEOUT;
    while finished.len() < SESSIONS {
        let left = deadline.saturating_duration_since(Instant::now());
        match done_rx.recv_timeout(left) {
            Ok(id) => assert!(finished.insert(id), "{id} reported twice"),
            Err(e) => panic!(
                "{e}: only {} of {SESSIONS} receivers got all {} messages; {} of {} deliveries; \
                 violations: {:#?}",
                finished.len(),
                SENDERS * MESSAGES as usize,
                shared.deliveries.load(Ordering::Relaxed),
                SESSIONS * SENDERS * MESSAGES as usize,
                shared.violations.lock().unwrap()
            ),
        }
    }
    eprintln!(
        "{} deliveries in {:?} ({} backend)",
        shared.deliveries.load(Ordering::Relaxed),
        started.elapsed(),
        server.backend()
    );
    assert_eq!(shared.deliveries.load(Ordering::Relaxed), SESSIONS * SENDERS * MESSAGES as usize);
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
    let violations = shared.violations.lock().unwrap();
    assert!(violations.is_empty(), "violations: {violations:#?}");
}
