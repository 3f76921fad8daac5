//! Room membership over real loopback connections: a room spanning workers with members
//! entering and leaving while it broadcasts, `Room::enter` / `leave` / `broadcast` from
//! another thread, and a room refusing the sessions of another service.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! (a channel message or an observed count) with `common::TIMEOUT` as the safety net.

mod common;

use common::any_port;
use common::rooms::{
    packet, plain_members, read_exactly, room_server, u32_at, wait_room_len, Members, Plain,
    PlainEv, C_CHAT, C_ENTER, C_LEAVE, S_CHAT, S_ENTERED, S_JOINED, S_LEFT,
};
use common::workers::recv;
use servercore::packet::{Framed, Packet, PacketSession};
use servercore::{
    ClientService, Ctx, DisconnectReason, Room, SendError, ServerService, Session, SessionHandle,
    SessionId,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

// ----- a room across workers, members entering and leaving while it broadcasts --------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Idle,
    /// Sends `ROUNDS` messages, keeping `WINDOW` in flight (the next goes out when one of
    /// its own comes back through the room); never leaves.
    Broadcaster,
    /// Never leaves: must see every message.
    Stayer,
    /// Leaves and re-enters as fast as it can until told to stop.
    Toggler,
}

const ROUNDS: u32 = 2000;
const WINDOW: u32 = 4;

enum RoomEv {
    Joined(SessionHandle, u32),
    BroadcastDone,
    Settled(SessionId),
    Final { id: SessionId, role: Role, received: u32, toggles: u32 },
}

struct RoomShared {
    events: Sender<RoomEv>,
    stop: AtomicBool,
    violations: Mutex<Vec<String>>,
}

struct RoomClient {
    sh: Arc<RoomShared>,
    role: Role,
    last: Option<u32>,
    received: u32,
    toggles: u32,
    next_seq: u32,
}

impl RoomClient {
    fn violation(&self, v: String) {
        self.sh.violations.lock().unwrap().push(v);
    }

    fn start(&mut self, role: Role, ctx: &mut Ctx<'_>) {
        self.role = role;
        match role {
            Role::Broadcaster => {
                for _ in 0..WINDOW {
                    self.send_next(ctx);
                }
            }
            Role::Toggler => {
                let _ = ctx.send(packet(C_LEAVE, &[]));
            }
            Role::Stayer | Role::Idle => {}
        }
    }

    fn send_next(&mut self, ctx: &mut Ctx<'_>) {
        if self.next_seq < ROUNDS {
            let _ = ctx.send(packet(C_CHAT, &self.next_seq.to_le_bytes()));
            self.next_seq += 1;
        }
    }
}

impl PacketSession for RoomClient {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, p: Packet<'_>) {
        match p.id {
            S_JOINED => {
                let w = u32_at(p.payload, 0).unwrap_or(u32::MAX);
                let _ = self.sh.events.send(RoomEv::Joined(ctx.handle(), w));
            }
            S_CHAT => {
                let Some(seq) = u32_at(p.payload, 0) else {
                    return self.violation(format!("{}: bad S_CHAT", ctx.id()));
                };
                if let Some(last) = self.last {
                    if seq <= last {
                        self.violation(format!(
                            "{} ({:?}): got {seq} after {last} (duplicate or reordered)",
                            ctx.id(),
                            self.role
                        ));
                    }
                }
                let never_left = matches!(self.role, Role::Broadcaster | Role::Stayer);
                let want = self.last.map_or(0, |l| l + 1);
                if never_left && seq != want {
                    self.violation(format!(
                        "{} ({:?}, never left): got {seq}, expected {want}",
                        ctx.id(),
                        self.role
                    ));
                }
                self.last = Some(seq);
                self.received += 1;
                if seq == ROUNDS {
                    // The final message, sent once everyone is settled in the room.
                    let _ = self.sh.events.send(RoomEv::Final {
                        id: ctx.id(),
                        role: self.role,
                        received: self.received,
                        toggles: self.toggles,
                    });
                } else if self.role == Role::Broadcaster {
                    self.send_next(ctx);
                    if seq == ROUNDS - 1 {
                        self.sh.stop.store(true, Ordering::Release);
                        let _ = self.sh.events.send(RoomEv::BroadcastDone);
                    }
                }
            }
            S_LEFT => {
                let _ = ctx.send(packet(C_ENTER, &[]));
            }
            S_ENTERED => {
                self.toggles += 1;
                if self.sh.stop.load(Ordering::Acquire) {
                    let _ = self.sh.events.send(RoomEv::Settled(ctx.id()));
                } else {
                    let _ = ctx.send(packet(C_LEAVE, &[]));
                }
            }
            other => self.violation(format!("{}: unexpected packet id {other}", ctx.id())),
        }
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if *reason != DisconnectReason::Shutdown {
            self.violation(format!("{}: disconnected early: {reason}", ctx.id()));
        }
    }
}

#[test]
fn room_across_workers_with_members_entering_and_leaving_during_broadcast() {
    const SESSIONS: usize = 12;
    let room = Room::new();
    // One acceptor handing connections to the workers in turn: members on both, for sure.
    let (server, checks) =
        room_server(&room, ServerService::builder(any_port()).workers(2).reuse_port(false));
    let (tx, events) = mpsc::channel();
    let sh = Arc::new(RoomShared {
        events: tx,
        stop: AtomicBool::new(false),
        violations: Mutex::default(),
    });
    let sh2 = sh.clone();
    let client = ClientService::builder(server.local_addr())
        .sessions(SESSIONS)
        .workers(2)
        .start(move || {
            Framed::new(RoomClient {
                sh: sh2.clone(),
                role: Role::Idle,
                last: None,
                received: 0,
                toggles: 0,
                next_seq: 0,
            })
        })
        .unwrap();

    let mut members: Vec<(SessionHandle, u32)> = Vec::new();
    while members.len() < SESSIONS {
        match recv(&events, "S_JOINED") {
            RoomEv::Joined(h, w) => members.push((h, w)),
            _ => panic!("unexpected event before everyone joined"),
        }
    }
    let on_worker: BTreeSet<u32> = members.iter().map(|m| m.1).collect();
    assert_eq!(on_worker, BTreeSet::from([0, 1]), "members span both server workers");
    assert_eq!(room.len(), SESSIONS);

    // Roles: one broadcaster; two stayers on each server worker; the rest toggle.
    let mut roles = [Role::Toggler; SESSIONS];
    roles[0] = Role::Broadcaster;
    for w in [0, 1] {
        let mut picked = 0;
        for (i, m) in members.iter().enumerate().skip(1) {
            if m.1 == w && picked < 2 {
                roles[i] = Role::Stayer;
                picked += 1;
            }
        }
        assert_eq!(picked, 2, "two stayers on worker {w}");
    }
    let togglers = roles.iter().filter(|r| **r == Role::Toggler).count();
    // Togglers first, the broadcaster last, so the broadcast runs while they toggle.
    let mut order: Vec<usize> = (0..SESSIONS).collect();
    order.sort_by_key(|&i| roles[i] == Role::Broadcaster);
    for i in order {
        let role = roles[i];
        members[i]
            .0
            .run::<Framed<RoomClient>>(move |c, ctx| c.inner_mut().start(role, ctx))
            .expect("connected");
    }

    let mut settled = HashSet::new();
    let mut broadcast_done = false;
    while !broadcast_done || settled.len() < togglers {
        match recv(&events, "the broadcast to end and every toggler to settle back in") {
            RoomEv::BroadcastDone => broadcast_done = true,
            RoomEv::Settled(id) => assert!(settled.insert(id), "{id} settled twice"),
            _ => panic!("unexpected event"),
        }
    }
    assert_eq!(room.len(), SESSIONS, "every toggler re-entered");

    // One last message: every member, togglers included, must get it.
    members[0]
        .0
        .run::<Framed<RoomClient>>(|_, ctx| {
            let _ = ctx.send(packet(C_CHAT, &ROUNDS.to_le_bytes()));
        })
        .expect("connected");
    let mut finals = HashMap::new();
    while finals.len() < SESSIONS {
        match recv(&events, "the final message at every member") {
            RoomEv::Final { id, role, received, toggles } => {
                assert!(finals.insert(id, (role, received, toggles)).is_none(), "{id} twice");
            }
            _ => panic!("unexpected event"),
        }
    }
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();

    let violations = sh.violations.lock().unwrap();
    assert!(violations.is_empty(), "violations: {violations:#?}");
    let mut total_toggles = 0;
    let mut missed = 0;
    for (id, (role, received, toggles)) in &finals {
        match role {
            Role::Broadcaster | Role::Stayer => {
                assert_eq!(*received, ROUNDS + 1, "{id} ({role:?}) got every message")
            }
            Role::Toggler => {
                assert!(*received <= ROUNDS + 1, "{id}: {received}");
                total_toggles += toggles;
                missed += (ROUNDS + 1 - received) as usize;
            }
            Role::Idle => panic!("{id} had no role"),
        }
    }
    eprintln!("togglers entered {total_toggles} times and missed {missed} messages in all");
    assert!(total_toggles as usize > togglers, "members left and re-entered during the broadcast");
}

/// `Room::enter` / `leave` / `broadcast` called from the test thread, on a room that no
/// session callback has touched (so nothing but `Room::enter` can bind it to the service).
#[test]
fn room_enter_leave_broadcast_from_another_thread() {
    let Members { server, rx, mut clients, handles, room } = plain_members(4);
    room.broadcast(&b"hello"[..]).unwrap();
    for c in &mut clients {
        assert_eq!(read_exactly(c, 5), b"hello");
    }

    room.leave(&handles[0]);
    wait_room_len(&room, 3);
    room.broadcast(&b"again"[..]).unwrap();
    for c in &mut clients[1..] {
        assert_eq!(read_exactly(c, 5), b"again");
    }
    // The session that left gets the direct message next, not the broadcast.
    handles[0].send(&b"direct"[..]).unwrap();
    assert_eq!(read_exactly(&mut clients[0], 6), b"direct");

    // A member that disconnects leaves the room.
    drop(clients.pop());
    match recv(&rx, "on_disconnected") {
        PlainEv::Disconnected(id) => assert_eq!(id, handles[3].id()),
        other => panic!("unexpected {other:?}"),
    }
    wait_room_len(&room, 2);
    assert!(matches!(room.enter(&handles[3]), Err(SendError::Disconnected)));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// A room belongs to the service of its first member: a session of another service cannot
/// enter it.
#[test]
fn a_room_refuses_sessions_of_another_service() {
    let room = Room::new();
    let (server, checks) = room_server(&room, ServerService::builder(any_port()).workers(1));
    let (tx, rx) = mpsc::channel();
    // A server session binds the room first...
    let first = ClientService::builder(server.local_addr())
        .workers(1)
        .start(move || Plain { tx: tx.clone() })
        .unwrap();
    assert!(matches!(recv(&rx, "first client connected"), PlainEv::Connected(_)));
    wait_room_len(&room, 1);
    // ...then a client-side session tries to enter it.
    let (tx2, rx2) = mpsc::channel();
    let r = room.clone();
    let other = ClientService::builder(server.local_addr())
        .workers(1)
        .start(move || EnterOther { room: r.clone(), tx: tx2.clone() })
        .unwrap();
    assert!(matches!(recv(&rx2, "enter_room result"), PlainEv::EnterResult(false)));
    other.shutdown(Duration::from_secs(5)).unwrap();
    first.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
}

/// The same through `Room::enter` from another thread: a session of another service is not
/// added (nor counted).
#[test]
fn room_enter_from_another_thread_ignores_sessions_of_another_service() {
    let room = Room::new();
    let (server, checks) = room_server(&room, ServerService::builder(any_port()).workers(1));
    let (tx, rx) = mpsc::channel();
    let client = ClientService::builder(server.local_addr())
        .workers(1)
        .start(move || Plain { tx: tx.clone() })
        .unwrap();
    let PlainEv::Connected(h) = recv(&rx, "the client connected") else { panic!("no connect") };
    wait_room_len(&room, 1); // its server-side session: the room is the server's
    room.enter(&h).expect("connected");
    // The enter is a message to the client's worker: once a later job there has run, it
    // has been carried out (or refused).
    let (jtx, jrx) = mpsc::channel();
    client.service().run_on_worker(0, move || jtx.send(()).unwrap()).unwrap();
    recv(&jrx, "a job after the enter");
    assert_eq!(room.len(), 1, "a client-service session was counted as a member of a server room");
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
}

struct EnterOther {
    room: Room,
    tx: Sender<PlainEv>,
}

impl Session for EnterOther {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send(PlainEv::EnterResult(ctx.enter_room(&self.room)));
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
}
