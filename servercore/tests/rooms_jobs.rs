//! Rooms, jobs and timers over real loopback connections: broadcast to 500 sessions on two
//! workers, rooms spanning workers with members entering and leaving while a broadcast is
//! under way, the `Room` API from other threads, serialized `JobQueue`s, one-shot /
//! repeating / cancelled timers (jobs and sessions), session timers dying with their session,
//! and `SessionHandle::run`.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! (a channel message or an observed count) with `common::TIMEOUT` as the safety net; the
//! few fixed delays are timer deadlines under test, and the "nothing fires after" checks use
//! a later timer on the same worker as their synchronisation point.

mod common;

use common::{any_port, connect, wait_until, Checks, TIMEOUT};
use servercore::packet::{Framed, Packet, PacketSession, PacketWriter};
use servercore::{
    ClientService, Ctx, DisconnectReason, JobQueue, JobTimer, Room, SendBuffer, SendError,
    ServerService, Session, SessionConfig, SessionHandle, SessionId, TimerId, WorkerGone,
};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Barrier, Mutex, OnceLock};
use std::time::{Duration, Instant};

// ----- helpers -------------------------------------------------------------------------

/// One packet built in pooled memory.
fn packet(id: u16, payload: &[u8]) -> SendBuffer {
    let mut w = PacketWriter::with_capacity(id, payload.len());
    w.put_slice(payload);
    w.finish().expect("test packets fit")
}

/// The `u32` at byte `at` of `p` (little-endian), if there is one.
fn u32_at(p: &[u8], at: usize) -> Option<u32> {
    let bytes = p.get(at..at + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Receives one value; fails the test after `TIMEOUT`, naming what it waited for.
fn recv<T>(rx: &Receiver<T>, what: &str) -> T {
    rx.recv_timeout(TIMEOUT).unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// The current thread's name (worker threads are `sc-server-N` / `sc-client-N`).
fn thread_name() -> String {
    std::thread::current().name().unwrap_or("<unnamed>").to_string()
}

/// A session that ignores what it receives.
struct Nop;

impl Session for Nop {
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
}

/// Waits for one job of `service`'s worker `worker` to run after `delay`: the
/// synchronisation point after which a timer that should not fire has had its chance.
fn sync_after(service: &servercore::ServiceRef, worker: usize, delay: Duration) {
    let (tx, rx) = mpsc::channel();
    let q = JobQueue::new(service, worker, ());
    q.post_after(delay, move |_| {
        let _ = tx.send(());
    })
    .expect("worker running");
    recv(&rx, &format!("the sync timer of worker {worker}"));
}

// ----- broadcast: 500 sessions, 10 senders ---------------------------------------------

/// Client -> server: relay this payload to the room.
const C_CHAT: u16 = 1;
/// Server -> client: a relayed payload.
const S_CHAT: u16 = 2;
/// Server -> client, once: "you are in the room"; payload = the server worker index (u32).
const S_JOINED: u16 = 3;
/// Client -> server: enter the room again (answered by `S_ENTERED`).
const C_ENTER: u16 = 10;
const S_ENTERED: u16 = 11;
/// Client -> server: leave the room (answered by `S_LEFT`).
const C_LEAVE: u16 = 12;
const S_LEFT: u16 = 13;

/// The server side of the room tests: enters the room on connect and says so; relays
/// `C_CHAT` to the room; enters and leaves on request.
struct RoomServer {
    room: Room,
    checks: Checks,
}

impl PacketSession for RoomServer {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.checks.check(ctx.enter_room(&self.room), "the room belongs to this service");
        // The enter is carried out right after this callback, before this reply is written:
        // a client that has read S_JOINED is a member.
        let _ = ctx.send(packet(S_JOINED, &(ctx.worker_index() as u32).to_le_bytes()));
    }

    fn on_packet(&mut self, ctx: &mut Ctx<'_>, p: Packet<'_>) {
        match p.id {
            C_CHAT => ctx.broadcast_room(&self.room, packet(S_CHAT, p.payload)).unwrap(),
            C_ENTER => {
                self.checks.check(ctx.enter_room(&self.room), "entering again on C_ENTER");
                let _ = ctx.send(packet(S_ENTERED, &[]));
            }
            C_LEAVE => {
                ctx.leave_room(&self.room);
                let _ = ctx.send(packet(S_LEFT, &[]));
            }
            other => ctx.disconnect_with(DisconnectReason::Protocol(format!(
                "unexpected packet id {other}"
            ))),
        }
    }
}

/// Starts a service of `RoomServer`s; the test asserts the checks they made once it is shut down.
fn room_server(
    room: &Room,
    builder: servercore::service::ServerBuilder,
) -> (ServerService, Checks) {
    let (room, checks) = (room.clone(), Checks::new());
    let c = checks.clone();
    let server = builder
        .start(move || Framed::new(RoomServer { room: room.clone(), checks: c.clone() }))
        .unwrap();
    (server, checks)
}

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

// ----- the Room API from other threads -------------------------------------------------

#[derive(Debug)]
enum PlainEv {
    Connected(SessionHandle),
    Disconnected(SessionId),
    EnterResult(bool),
}

/// Reports its handle; ignores what it receives.
struct Plain {
    tx: Sender<PlainEv>,
}

impl Session for Plain {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send(PlainEv::Connected(ctx.handle()));
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, _reason: &DisconnectReason) {
        let _ = self.tx.send(PlainEv::Disconnected(ctx.id()));
    }
}

fn read_exactly(c: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    c.read_exact(&mut buf).expect("read from server");
    buf
}

fn wait_room_len(room: &Room, n: usize) {
    wait_until(&format!("room.len() == {n}"), || {
        let len = room.len();
        if len == n {
            Ok(())
        } else {
            Err(format!("{len} members"))
        }
    });
}

/// A 2-worker server of [`Plain`] sessions, `n` clients connected, and a room that the test
/// thread put all of them in.
struct Members {
    server: ServerService,
    rx: Receiver<PlainEv>,
    clients: Vec<std::net::TcpStream>,
    handles: Vec<SessionHandle>,
    room: Room,
}

fn plain_members(n: usize) -> Members {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(2)
        .reuse_port(false)
        .start(move || Plain { tx: tx.clone() })
        .unwrap();
    let mut clients = Vec::new();
    let mut handles = Vec::new();
    for _ in 0..n {
        clients.push(connect(server.local_addr()));
        match recv(&rx, "on_connected") {
            PlainEv::Connected(h) => handles.push(h),
            other => panic!("unexpected {other:?}"),
        }
    }
    let room = Room::new();
    for h in &handles {
        room.enter(h).expect("connected");
    }
    wait_room_len(&room, n);
    Members { server, rx, clients, handles, room }
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

/// Work posted from one thread reaches each session in the order it was posted, whether it
/// is a room broadcast or a direct send: a worker gathers the room broadcasts of a turn into
/// one batch, and must apply that batch before any later direct send.
#[test]
fn broadcasts_and_direct_sends_from_one_thread_keep_their_order() {
    const ROUNDS: usize = 400;
    let Members { server, mut clients, handles, room, .. } = plain_members(4);
    for i in 0..ROUNDS {
        room.broadcast(format!("b{i:04};").into_bytes()).unwrap();
        room.broadcast(format!("B{i:04};").into_bytes()).unwrap();
        for h in &handles {
            h.send(format!("d{i:04};").into_bytes()).unwrap();
        }
    }
    let expected: Vec<u8> =
        (0..ROUNDS).flat_map(|i| format!("b{i:04};B{i:04};d{i:04};").into_bytes()).collect();
    for c in &mut clients {
        let got = read_exactly(c, expected.len());
        if got != expected {
            let at = got.iter().zip(&expected).position(|(a, b)| a != b).unwrap_or(0);
            let from = at.saturating_sub(at % 6);
            panic!(
                "order broken at byte {at}: got {:?}, expected {:?}",
                String::from_utf8_lossy(&got[from..(from + 24).min(got.len())]),
                String::from_utf8_lossy(&expected[from..(from + 24).min(expected.len())])
            );
        }
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// Relays each received byte `x` to the room as `Bx` and then answers the sender `Dx`.
/// Reports whether `on_connected` entered the room and queued its welcome.
struct BroadcastThenSend {
    room: Room,
    tx: Sender<bool>,
}

impl Session for BroadcastThenSend {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        // The welcome is made after the enter, so it comes after anything the room got
        // before it.
        let ok = ctx.enter_room(&self.room) && ctx.send(&b"W_"[..]).is_ok();
        let _ = self.tx.send(ok);
    }
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        for &x in data {
            ctx.broadcast_room(&self.room, vec![b'B', x]).unwrap();
            ctx.send(vec![b'D', x]).unwrap();
        }
        data.len()
    }
}

/// Within one callback, a broadcast to the sender's room and then a send of its own reach
/// the sender in that order, although the room's broadcasts are gathered to the end of the
/// loop turn; the other member gets only the broadcasts, all of them, in order.
#[test]
fn a_sessions_own_send_after_its_broadcast_arrives_after_it() {
    let (tx, rx) = mpsc::channel();
    let room = Room::new();
    let room2 = room.clone();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || BroadcastThenSend { room: room2.clone(), tx: tx.clone() })
        .unwrap();
    let mut sender = connect(server.local_addr());
    assert!(recv(&rx, "first on_connected"), "entered and welcomed");
    assert_eq!(read_exactly(&mut sender, 2), b"W_");
    let mut other = connect(server.local_addr());
    assert!(recv(&rx, "second on_connected"), "entered and welcomed");
    assert_eq!(read_exactly(&mut other, 2), b"W_");
    wait_room_len(&room, 2);
    let data: Vec<u8> = (0..=255u8).collect();
    // Many bytes per write: one callback makes many broadcast/send pairs in one turn.
    for chunk in data.chunks(64) {
        sender.write_all(chunk).unwrap();
    }
    let want_sender: Vec<u8> = data.iter().flat_map(|&x| [b'B', x, b'D', x]).collect();
    let want_other: Vec<u8> = data.iter().flat_map(|&x| [b'B', x]).collect();
    assert_eq!(read_exactly(&mut sender, want_sender.len()), want_sender);
    assert_eq!(read_exactly(&mut other, want_other.len()), want_other);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// Two senders at once, a third member listening: each sender's own answers come after its
/// own broadcasts, everyone gets every broadcast in each sender's order.
#[test]
fn own_sends_interleave_with_a_rooms_broadcasts_of_several_senders() {
    let (tx, rx) = mpsc::channel();
    let room = Room::new();
    let room2 = room.clone();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || BroadcastThenSend { room: room2.clone(), tx: tx.clone() })
        .unwrap();
    let mut clients: Vec<_> = (0..3)
        .map(|i| {
            let mut c = connect(server.local_addr());
            assert!(recv(&rx, &format!("on_connected {i}")), "{i} entered and welcomed");
            assert_eq!(read_exactly(&mut c, 2), b"W_");
            c
        })
        .collect();
    wait_room_len(&room, 3);
    // Sender 0 uses bytes 0..128, sender 1 bytes 128..256, each in 8 writes.
    let values: [Vec<u8>; 2] = [(0..128u8).collect(), (128..=255u8).collect()];
    let writers: Vec<_> = (0..2)
        .map(|k| {
            let mut c = clients[k].try_clone().unwrap();
            let data = values[k].clone();
            std::thread::spawn(move || {
                for chunk in data.chunks(16) {
                    c.write_all(chunk).unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    for (k, c) in clients.iter_mut().enumerate() {
        let own = if k < 2 { values[k].len() } else { 0 };
        let records = read_exactly(c, 2 * (256 + own));
        let mut next_b = [0u8, 128];
        let mut next_d = [0u8, 128];
        for r in records.chunks(2) {
            let (tag, v) = (r[0], r[1]);
            let from = usize::from(v >= 128);
            match tag {
                b'B' => {
                    assert_eq!(v, next_b[from], "member {k}: broadcasts of sender {from} in order");
                    next_b[from] = next_b[from].wrapping_add(1);
                }
                b'D' => {
                    assert_eq!(from, k, "member {k} got another session's answer");
                    assert_eq!(v, next_d[from], "member {k}: own answers in order");
                    assert!(
                        v < next_b[from] || (from == 1 && next_b[1] == 0),
                        "member {k}: answer {v} before its own broadcast"
                    );
                    next_d[from] = next_d[from].wrapping_add(1);
                }
                other => panic!("member {k}: unexpected tag {other}"),
            }
        }
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// Relays each received byte `x` as `2x` to the second room and then `1x` to the first
/// (rooms made in that order get increasing ids, so grouping by room would swap them).
struct TwoRooms {
    first: Room,
    second: Room,
    /// Whether `on_connected` entered both rooms and queued its welcome.
    tx: Sender<bool>,
}

impl Session for TwoRooms {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let ok = ctx.enter_room(&self.first)
            && ctx.enter_room(&self.second)
            && ctx.send(&b"W_"[..]).is_ok();
        let _ = self.tx.send(ok);
    }
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        for &x in data {
            ctx.broadcast_room(&self.second, vec![b'2', x]).unwrap();
            ctx.broadcast_room(&self.first, vec![b'1', x]).unwrap();
        }
        data.len()
    }
}

/// A session in two rooms gets broadcasts to both in the order they were made, although a
/// worker joins each room's broadcasts of a turn.
#[test]
fn broadcasts_to_two_rooms_keep_their_order() {
    let (tx, rx) = mpsc::channel();
    let (first, second) = (Room::new(), Room::new());
    let (f, s) = (first.clone(), second.clone());
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || TwoRooms { first: f.clone(), second: s.clone(), tx: tx.clone() })
        .unwrap();
    let mut a = connect(server.local_addr());
    assert!(recv(&rx, "first on_connected"), "entered and welcomed");
    let mut b = connect(server.local_addr());
    assert!(recv(&rx, "second on_connected"), "entered and welcomed");
    assert_eq!(read_exactly(&mut a, 2), b"W_");
    assert_eq!(read_exactly(&mut b, 2), b"W_");
    wait_room_len(&first, 2);
    wait_room_len(&second, 2);
    let data: Vec<u8> = (0..=255u8).collect();
    a.write_all(&data).unwrap();
    let want: Vec<u8> = data.iter().flat_map(|&x| [b'2', x, b'1', x]).collect();
    assert_eq!(read_exactly(&mut a, want.len()), want);
    assert_eq!(read_exactly(&mut b, want.len()), want);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// A member that broadcasts, sends a last word and disconnects, or says goodbye from
/// `on_disconnected` at shutdown while others' room work is pending: its own sends are
/// flushed like any send before a local disconnect.
struct LastWord {
    room: Room,
    /// Whether `on_connected` entered the room and queued its welcome.
    tx: Sender<bool>,
}

impl Session for LastWord {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let ok = ctx.enter_room(&self.room) && ctx.send(&b"W"[..]).is_ok();
        let _ = self.tx.send(ok);
    }
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        ctx.broadcast_room(&self.room, &b"B"[..]).unwrap();
        ctx.send(&b"bye"[..]).unwrap();
        ctx.disconnect("asked to leave");
        data.len()
    }
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, _reason: &DisconnectReason) {
        ctx.broadcast_room(&self.room, &b"L"[..]).unwrap();
        let _ = ctx.send(&b"F"[..]);
    }
}

fn read_to_end(c: &mut std::net::TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    c.read_to_end(&mut all).expect("read until the server closes");
    all
}

#[test]
fn own_sends_behind_room_work_are_flushed_on_a_local_disconnect_and_at_shutdown() {
    let (tx, rx) = mpsc::channel();
    let room = Room::new();
    let r = room.clone();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || LastWord { room: r.clone(), tx: tx.clone() })
        .unwrap();
    let mut clients: Vec<_> = (0..3)
        .map(|i| {
            let c = connect(server.local_addr());
            assert!(recv(&rx, &format!("on_connected {i}")), "{i} entered and welcomed");
            c
        })
        .collect();
    wait_room_len(&room, 3);
    // The first one asks to leave. Its broadcast is carried out at the end of the turn,
    // after the disconnect request, so it reaches the others only; its own sends, made
    // before the request, are flushed.
    clients[0].write_all(b"x").unwrap();
    let first = read_to_end(&mut clients[0]);
    assert_eq!(first, b"WbyeF", "the leaver: welcome, last word, farewell");
    for c in &mut clients[1..] {
        assert_eq!(read_exactly(c, 3), b"WBL", "the others: welcome, broadcast, its farewell");
    }
    wait_room_len(&room, 2);
    // Shutdown: each closing member broadcasts and says goodbye in on_disconnected.
    server.shutdown(Duration::from_secs(5)).unwrap();
    for c in &mut clients[1..] {
        let rest = read_to_end(c);
        assert!(rest.ends_with(b"F"), "farewell flushed at shutdown, got {rest:?}");
    }
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

// ----- jobs ----------------------------------------------------------------------------

#[test]
fn a_job_queue_runs_jobs_one_at_a_time_in_order_per_posting_thread() {
    const THREADS: usize = 4;
    const JOBS: u32 = 2000;
    let server = ServerService::builder(any_port()).workers(2).start(|| Nop).unwrap();
    let queue = JobQueue::new(&server.service(), 1, Vec::<(usize, u32)>::new());
    let running = Arc::new(AtomicBool::new(false));
    let overlaps = Arc::new(AtomicUsize::new(0));
    let elsewhere = Arc::new(Mutex::new(BTreeSet::new()));
    let barrier = Barrier::new(THREADS);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (queue, running, overlaps, elsewhere, barrier) =
                (&queue, &running, &overlaps, &elsewhere, &barrier);
            s.spawn(move || {
                for n in 0..JOBS {
                    // Rounds of 50 posts, all threads at once: their posts interleave.
                    if n % 50 == 0 {
                        barrier.wait();
                    }
                    let (running, overlaps, elsewhere) =
                        (running.clone(), overlaps.clone(), elsewhere.clone());
                    queue
                        .post(move |log| {
                            if running.swap(true, Ordering::AcqRel) {
                                overlaps.fetch_add(1, Ordering::Relaxed);
                            }
                            let name = thread_name();
                            if name != "sc-server-1" {
                                elsewhere.lock().unwrap().insert(name);
                            }
                            log.push((t, n));
                            // A little work, to widen the window an overlap would show in.
                            std::hint::black_box((0..100u32).sum::<u32>());
                            running.store(false, Ordering::Release);
                        })
                        .expect("worker running");
                }
            });
        }
    });
    // Posted after every thread's last post: runs after all of them.
    let (tx, rx) = mpsc::channel();
    queue.post(move |log| tx.send(std::mem::take(log)).unwrap()).unwrap();
    let log = recv(&rx, "the log");
    assert_eq!(overlaps.load(Ordering::Relaxed), 0, "two jobs of one queue ran at once");
    assert!(elsewhere.lock().unwrap().is_empty(), "jobs ran on {:?}", elsewhere.lock().unwrap());
    assert_eq!(log.len(), THREADS * JOBS as usize);
    for t in 0..THREADS {
        let ns: Vec<u32> = log.iter().filter(|e| e.0 == t).map(|e| e.1).collect();
        assert_eq!(ns, (0..JOBS).collect::<Vec<_>>(), "thread {t}'s jobs in posting order");
    }
    // The posting threads really interleaved (otherwise the test proved little).
    let switches = log.windows(2).filter(|w| w[0].0 != w[1].0).count();
    eprintln!("{switches} switches between posting threads in the log");

    let svc = server.service();
    server.shutdown(Duration::from_secs(5)).unwrap();
    assert_eq!(queue.post(|_| {}), Err(WorkerGone), "posting after shutdown fails");
    assert!(svc.run_on_worker(0, || {}).is_err());
}

#[test]
fn run_on_worker_runs_on_that_worker() {
    let server = ServerService::builder(any_port()).workers(2).start(|| Nop).unwrap();
    let svc = server.service();
    assert_eq!(svc.workers(), 2);
    let (tx, rx) = mpsc::channel();
    for w in 0..4 {
        let tx = tx.clone();
        svc.run_on_worker(w, move || tx.send((w, thread_name())).unwrap()).unwrap();
    }
    let mut seen: Vec<(usize, String)> = (0..4).map(|_| recv(&rx, "a job")).collect();
    seen.sort();
    let want: Vec<(usize, String)> = (0..4).map(|w| (w, format!("sc-server-{}", w % 2))).collect();
    assert_eq!(seen, want, "worker index taken modulo the worker count");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

// ----- job timers ----------------------------------------------------------------------

#[derive(Debug, Default, Clone)]
struct TimerCounts {
    once: u32,
    cancelled_before: u32,
    every: u32,
    self_cancel: u32,
}

#[test]
fn job_timers_fire_once_repeat_and_cancel() {
    let server = ServerService::builder(any_port()).workers(2).start(|| Nop).unwrap();
    let svc = server.service();
    let q = JobQueue::new(&svc, 1, TimerCounts::default());

    // Once, not before its delay.
    let (once_tx, once_rx) = mpsc::channel();
    let t0 = Instant::now();
    q.post_after(Duration::from_millis(30), move |s| {
        s.once += 1;
        once_tx.send((t0.elapsed(), thread_name())).unwrap();
    })
    .unwrap();

    // Cancelled before it is due: never runs.
    let never = q.post_after(Duration::from_millis(20), |s| s.cancelled_before += 1).unwrap();
    never.cancel();
    assert!(never.is_cancelled());

    // Repeating, cancelling itself on its third run.
    let slot: Arc<OnceLock<JobTimer>> = Arc::new(OnceLock::new());
    let slot2 = slot.clone();
    let t = q
        .post_every(Duration::from_millis(5), move |s| {
            s.self_cancel += 1;
            if s.self_cancel >= 3 {
                if let Some(t) = slot2.get() {
                    t.cancel();
                }
            }
        })
        .unwrap();
    slot.set(t).unwrap();

    // Repeating, cancelled from this thread after five runs.
    let (every_tx, every_rx) = mpsc::channel();
    let every = q
        .post_every(Duration::from_millis(2), move |s| {
            s.every += 1;
            let _ = every_tx.send(s.every);
        })
        .unwrap();
    while recv(&every_rx, "the repeating job") < 5 {}
    every.cancel();
    // A plain job runs after any run already under way; from here the count is final.
    let (at_tx, at_rx) = mpsc::channel();
    q.post(move |s| at_tx.send(s.every).unwrap()).unwrap();
    let at_cancel = recv(&at_rx, "the count at cancel");
    assert!(at_cancel >= 5);

    let (elapsed, name) = recv(&once_rx, "the one-shot job");
    assert!(elapsed >= Duration::from_millis(30), "fired after {elapsed:?}, before its delay");
    assert_eq!(name, "sc-server-1");

    // Every timer above has had its chance by now (the last deadline was ~30 ms).
    let (tx, rx) = mpsc::channel();
    q.post_after(Duration::from_millis(60), move |s| tx.send(s.clone()).unwrap()).unwrap();
    let counts = recv(&rx, "the sync timer");
    assert_eq!(counts.once, 1, "{counts:?}");
    assert_eq!(counts.cancelled_before, 0, "{counts:?}");
    assert_eq!(counts.self_cancel, 3, "{counts:?}");
    assert_eq!(counts.every, at_cancel, "{counts:?}: ran after cancel");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

// ----- session timers ------------------------------------------------------------------

#[derive(Debug)]
enum TEv {
    Connected(SessionHandle),
    Timer(u64),
    Cancel(&'static str, bool),
    Disconnected(DisconnectReason),
    /// A callback after `on_disconnected`: always a bug (the name is read through `Debug`).
    #[allow(dead_code)]
    Late(&'static str),
    Counts(HashMap<u64, u32>),
}

/// Sets a mix of timers on connect and reports what fires.
struct TimerMix {
    tx: Sender<(SessionId, TEv)>,
    fired: HashMap<u64, u32>,
    once: Option<TimerId>,
    interval: Option<TimerId>,
    self_cancelling: Option<TimerId>,
}

impl TimerMix {
    fn report(&self, ctx: &Ctx<'_>, ev: TEv) {
        let _ = self.tx.send((ctx.id(), ev));
    }
}

impl Session for TimerMix {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.once = Some(ctx.set_timer(Duration::from_millis(20), 1));
        self.interval = Some(ctx.set_interval(Duration::from_millis(3), 2));
        let doomed = ctx.set_timer(Duration::from_millis(10), 3);
        let first = ctx.cancel_timer(doomed);
        let second = ctx.cancel_timer(doomed);
        self.report(ctx, TEv::Cancel("pending", first));
        self.report(ctx, TEv::Cancel("already cancelled", second));
        ctx.set_timer(Duration::ZERO, 4);
        self.self_cancelling = Some(ctx.set_interval(Duration::from_millis(2), 5));
        self.report(ctx, TEv::Connected(ctx.handle()));
    }

    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        let n = {
            let n = self.fired.entry(token).or_insert(0);
            *n += 1;
            *n
        };
        match token {
            1 => {
                let again = ctx.cancel_timer(self.once.expect("set"));
                self.report(ctx, TEv::Cancel("fired once", again));
            }
            2 if n == 4 => {
                let ok = ctx.cancel_timer(self.interval.expect("set"));
                self.report(ctx, TEv::Cancel("interval", ok));
                // The synchronisation point: well after every other deadline.
                ctx.set_timer(Duration::from_millis(60), 99);
            }
            5 if n == 3 => {
                let ok = ctx.cancel_timer(self.self_cancelling.expect("set"));
                self.report(ctx, TEv::Cancel("interval, from its own on_timer", ok));
            }
            99 => self.report(ctx, TEv::Counts(self.fired.clone())),
            _ => {}
        }
    }
}

#[test]
fn session_timers_fire_once_repeat_and_cancel() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || TimerMix {
            tx: tx.clone(),
            fired: HashMap::new(),
            once: None,
            interval: None,
            self_cancelling: None,
        })
        .unwrap();
    let _c = connect(server.local_addr());
    let mut cancels = Vec::new();
    let counts = loop {
        match recv(&rx, "the session's timer report").1 {
            TEv::Counts(c) => break c,
            TEv::Cancel(what, ok) => cancels.push((what, ok)),
            _ => {}
        }
    };
    cancels.sort();
    let mut want = vec![
        ("pending", true),
        ("already cancelled", false),
        ("fired once", false),
        ("interval", true),
        ("interval, from its own on_timer", true),
    ];
    want.sort();
    assert_eq!(cancels, want);
    let want: HashMap<u64, u32> = [(1, 1), (2, 4), (4, 1), (5, 3), (99, 1)].into();
    assert_eq!(counts, want, "token -> times fired");
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// How a `Ticker` session ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// `ctx.disconnect` from `on_timer` (graceful).
    SelfLocal,
    /// `ctx.disconnect_with(Protocol)` from `on_timer` (not graceful).
    SelfProtocol,
    /// The peer closes.
    PeerClose,
    /// `SessionHandle::disconnect` from the test thread.
    Handle,
    /// Sets no timer at all (connects after the others are gone, reusing their slots).
    Quiet,
}

const TICKERS: usize = 24;

/// A 1 ms interval; ends as its `End` says after 3 ticks; tries to set more timers in
/// `on_disconnected`.
struct Ticker {
    tx: Sender<(SessionId, TEv)>,
    end: End,
    ticks: u32,
    done: bool,
}

impl Session for Ticker {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send((ctx.id(), TEv::Connected(ctx.handle())));
        if self.end != End::Quiet {
            ctx.set_interval(Duration::from_millis(1), 1);
            ctx.set_timer(Duration::from_millis(2), 2);
        }
    }

    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }

    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        if self.done {
            let _ = self.tx.send((ctx.id(), TEv::Late("on_timer")));
        }
        let _ = self.tx.send((ctx.id(), TEv::Timer(token)));
        if token == 1 {
            self.ticks += 1;
            if self.ticks == 3 {
                match self.end {
                    End::SelfLocal => ctx.disconnect("enough ticks"),
                    End::SelfProtocol => {
                        ctx.disconnect_with(DisconnectReason::Protocol("enough ticks".into()))
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if self.done {
            let _ = self.tx.send((ctx.id(), TEv::Late("on_disconnected")));
        }
        self.done = true;
        let _ = self.tx.send((ctx.id(), TEv::Disconnected(reason.clone())));
        // Timers set now belong to a session that is gone: they must never fire.
        ctx.set_timer(Duration::ZERO, 77);
        ctx.set_interval(Duration::from_millis(1), 78);
    }
}

#[test]
fn session_timers_never_fire_after_on_disconnected() {
    let (tx, rx) = mpsc::channel();
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let ends = [End::SelfLocal, End::SelfProtocol, End::PeerClose, End::Handle];
    let server = ServerService::builder(any_port())
        .workers(2)
        .start(move || {
            let n = m.fetch_add(1, Ordering::Relaxed);
            let end = if n < TICKERS { ends[n % ends.len()] } else { End::Quiet };
            Ticker { tx: tx.clone(), end, ticks: 0, done: false }
        })
        .unwrap();
    let mut log: Vec<(SessionId, TEv)> = Vec::new();
    let next = |log: &mut Vec<(SessionId, TEv)>, what: &str| {
        let e = recv(&rx, what);
        log.push(e);
        log.len() - 1
    };

    // Connect one at a time, so the n-th on_connected is the n-th client.
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..TICKERS {
        clients.push(Some(connect(server.local_addr())));
        let handle = loop {
            let i = next(&mut log, "on_connected");
            if let TEv::Connected(h) = &log[i].1 {
                break h.clone();
            }
        };
        sessions.push(handle);
    }
    let ticks_of = |log: &Vec<(SessionId, TEv)>, id| {
        log.iter().filter(|e| e.0 == id && matches!(e.1, TEv::Timer(1))).count()
    };
    let disconnected = |log: &Vec<(SessionId, TEv)>, id| {
        log.iter().any(|e| e.0 == id && matches!(e.1, TEv::Disconnected(_)))
    };
    // The sessions the test ends: after three ticks each.
    for (i, h) in sessions.iter().enumerate() {
        let end = ends[i % ends.len()];
        if !matches!(end, End::PeerClose | End::Handle) {
            continue;
        }
        while ticks_of(&log, h.id()) < 3 {
            next(&mut log, "three ticks");
        }
        match end {
            End::PeerClose => drop(clients[i].take()),
            _ => h.disconnect("from the test").unwrap(),
        }
    }
    for h in &sessions {
        while !disconnected(&log, h.id()) {
            next(&mut log, &format!("on_disconnected of {}", h.id()));
        }
    }
    // New sessions take the freed slots; the old sessions' timers must not reach them.
    let mut quiet_clients = Vec::new();
    let mut quiet = Vec::new();
    for _ in 0..4 {
        quiet_clients.push(connect(server.local_addr()));
        let id = loop {
            let i = next(&mut log, "a quiet session's on_connected");
            if let TEv::Connected(h) = &log[i].1 {
                break h.id();
            }
        };
        quiet.push(id);
    }
    // The sync point: 50 ms is fifty periods of the 1 ms intervals, on each worker.
    let svc = server.service();
    for w in 0..2 {
        sync_after(&svc, w, Duration::from_millis(50));
    }
    while let Ok(e) = rx.try_recv() {
        log.push(e);
    }

    for (i, h) in sessions.iter().enumerate() {
        let id = h.id();
        let evs: Vec<&TEv> = log.iter().filter(|e| e.0 == id).map(|e| &e.1).collect();
        let d = evs
            .iter()
            .position(|e| matches!(e, TEv::Disconnected(_)))
            .unwrap_or_else(|| panic!("{id}: no on_disconnected: {evs:?}"));
        assert!(
            evs[d + 1..].is_empty(),
            "{id} ({:?}): events after on_disconnected: {:?}",
            ends[i % ends.len()],
            &evs[d..]
        );
        assert!(ticks_of(&log, id) >= 3, "{id}: {evs:?}");
        let reason = match evs[d] {
            TEv::Disconnected(r) => r.clone(),
            _ => unreachable!(),
        };
        let want = match ends[i % ends.len()] {
            End::SelfLocal => DisconnectReason::Local("enough ticks".into()),
            End::SelfProtocol => DisconnectReason::Protocol("enough ticks".into()),
            End::PeerClose => DisconnectReason::PeerClosed,
            End::Handle => DisconnectReason::Local("from the test".into()),
            End::Quiet => unreachable!(),
        };
        assert_eq!(reason, want, "{id}");
    }
    for id in quiet {
        let evs: Vec<&TEv> = log.iter().filter(|e| e.0 == id).map(|e| &e.1).collect();
        assert_eq!(evs.len(), 1, "{id}: a quiet session got {evs:?}");
    }
    drop(quiet_clients);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

/// `cancel_timer` with another session's `TimerId` returns false and cancels nothing.
#[test]
fn a_session_cannot_cancel_another_sessions_timer() {
    let shared_id: Arc<Mutex<Option<TimerId>>> = Arc::default();
    let (tx, rx) = mpsc::channel();
    let made = Arc::new(AtomicUsize::new(0));
    let server = ServerService::builder(any_port())
        .workers(1) // timer ids are per worker: both sessions share one
        .start(move || Thief {
            first: made.fetch_add(1, Ordering::Relaxed) == 0,
            id: shared_id.clone(),
            tx: tx.clone(),
        })
        .unwrap();
    let _a = connect(server.local_addr());
    assert!(matches!(recv(&rx, "A connected").1, TEv::Connected(_)));
    let _b = connect(server.local_addr());
    let mut got = Vec::new();
    while got.len() < 3 {
        match recv(&rx, "B's cancel and A's timer").1 {
            TEv::Connected(_) => {}
            ev => got.push(format!("{ev:?}")),
        }
    }
    got.sort();
    assert_eq!(got, ["Cancel(\"another session's\", false)", "Timer(1)", "Timer(2)"]);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

struct Thief {
    first: bool,
    id: Arc<Mutex<Option<TimerId>>>,
    tx: Sender<(SessionId, TEv)>,
}

impl Session for Thief {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        if self.first {
            *self.id.lock().unwrap() = Some(ctx.set_timer(Duration::from_millis(100), 1));
        } else {
            let id = self.id.lock().unwrap().expect("A connected first");
            let ok = ctx.cancel_timer(id);
            let _ = self.tx.send((ctx.id(), TEv::Cancel("another session's", ok)));
            // B's own timer, well after A's: A's has fired (or never will) by then.
            ctx.set_timer(Duration::from_millis(150), 2);
        }
        let _ = self.tx.send((ctx.id(), TEv::Connected(ctx.handle())));
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_timer(&mut self, ctx: &mut Ctx<'_>, token: u64) {
        let _ = self.tx.send((ctx.id(), TEv::Timer(token)));
    }
}

// ----- SessionHandle::run --------------------------------------------------------------

enum ObjEv {
    Connected(SessionHandle, String),
    Disconnected(SessionId, DisconnectReason),
}

/// A session object with state that jobs read and change.
struct Obj {
    value: u64,
    tx: Sender<ObjEv>,
}

impl Session for Obj {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = self.tx.send(ObjEv::Connected(ctx.handle(), thread_name()));
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        data.len()
    }
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.tx.send(ObjEv::Disconnected(ctx.id(), reason.clone()));
    }
}

#[test]
fn session_handle_run_runs_on_the_sessions_worker_with_the_object() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(2)
        .reuse_port(false)
        .start(move || Obj { value: 0, tx: tx.clone() })
        .unwrap();
    let mut clients = Vec::new();
    let mut sessions = Vec::new();
    for _ in 0..2 {
        clients.push(connect(server.local_addr()));
        match recv(&rx, "on_connected") {
            ObjEv::Connected(h, thread) => sessions.push((h, thread)),
            ObjEv::Disconnected(..) => panic!("disconnected"),
        }
    }
    assert_ne!(sessions[0].1, sessions[1].1, "one session on each worker");

    let (jtx, jrx) = mpsc::channel();
    for (i, (h, thread)) in sessions.iter().enumerate() {
        let want = h.id();
        for round in 0..3u64 {
            let jtx = jtx.clone();
            h.run::<Obj>(move |s, ctx| {
                let _ = jtx.send((thread_name(), ctx.worker_index(), ctx.id(), s.value));
                s.value += 10 * (i as u64 + 1);
            })
            .unwrap();
            let (name, worker, id, value) = recv(&jrx, "the job");
            assert_eq!(&name, thread, "runs on the session's worker thread");
            assert_eq!(name, format!("sc-server-{worker}"));
            assert_eq!(id, want, "with the session's own context");
            assert_eq!(value, round * 10 * (i as u64 + 1), "with the session's own object");
        }
    }

    // The wrong type: refused with a typed error, and the job does not run (the next job
    // to that session proves it).
    let (h, _) = &sessions[0];
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    match h.run::<Nop>(move |_, _| r.store(true, Ordering::Relaxed)) {
        Err(SendError::WrongSessionType { expected, given }) => {
            assert!(expected.ends_with("Obj") && given.ends_with("Nop"), "{expected} / {given}");
        }
        other => panic!("run with the wrong session type: {other:?}"),
    }
    let (otx, orx) = mpsc::channel();
    h.run::<Obj>(move |s, _| otx.send(s.value).unwrap()).unwrap();
    assert_eq!(recv(&orx, "the job after the wrong-type one"), 30);
    assert!(!ran.load(Ordering::Relaxed), "a job for another session type ran");

    // In order with sends; a job may send and disconnect.
    h.send(&b"first,"[..]).unwrap();
    h.run::<Obj>(|_, ctx| {
        ctx.send(&b"second"[..]).unwrap();
        ctx.disconnect("from a job");
    })
    .unwrap();
    let (bytes, _) = common::read_to_end(&mut clients[0]);
    assert_eq!(bytes, b"first,second");
    match recv(&rx, "on_disconnected") {
        ObjEv::Disconnected(id, reason) => {
            assert_eq!(id, h.id());
            assert_eq!(reason, DisconnectReason::Local("from a job".into()));
        }
        ObjEv::Connected(..) => panic!("unexpected connect"),
    }
    assert!(matches!(h.run::<Obj>(|_, _| {}), Err(SendError::Disconnected)));
    // The other session is unaffected.
    let (h1, _) = &sessions[1];
    let (otx, orx) = mpsc::channel();
    h1.run::<Obj>(move |s, _| otx.send(s.value).unwrap()).unwrap();
    assert_eq!(recv(&orx, "the other session's job"), 60);
    let mut c1 = clients.pop().unwrap();
    c1.write_all(b"still here").unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
}
