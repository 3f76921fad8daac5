//! Shared helpers of the `rooms_*` tests: packets, the room server (`RoomServer`: enters
//! the room on connect, relays chat to it, enters and leaves on request) and its protocol,
//! and `Plain` sessions put in a room from the test thread.

use super::workers::recv;
use super::{any_port, connect, wait_until, Checks, TIMEOUT};
use servercore::packet::{Framed, Packet, PacketSession, PacketWriter};
use servercore::{
    Ctx, DisconnectReason, Room, SendBuffer, ServerService, Session, SessionHandle, SessionId,
};
use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One packet built in pooled memory.
pub fn packet(id: u16, payload: &[u8]) -> SendBuffer {
    let mut w = PacketWriter::with_capacity(id, payload.len());
    w.put_slice(payload);
    w.finish().expect("test packets fit")
}

/// The `u32` at byte `at` of `p` (little-endian), if there is one.
pub fn u32_at(p: &[u8], at: usize) -> Option<u32> {
    let bytes = p.get(at..at + 4)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// Client -> server: relay this payload to the room.
pub const C_CHAT: u16 = 1;
/// Server -> client: a relayed payload.
pub const S_CHAT: u16 = 2;
/// Server -> client, once: "you are in the room"; payload = the server worker index (u32).
pub const S_JOINED: u16 = 3;
/// Client -> server: enter the room again (answered by `S_ENTERED`).
pub const C_ENTER: u16 = 10;
pub const S_ENTERED: u16 = 11;
/// Client -> server: leave the room (answered by `S_LEFT`).
pub const C_LEAVE: u16 = 12;
pub const S_LEFT: u16 = 13;

/// The server side of the room tests: enters the room on connect and says so; relays
/// `C_CHAT` to the room; enters and leaves on request.
pub struct RoomServer {
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
            C_CHAT => {
                let sent = ctx.broadcast_room(&self.room, packet(S_CHAT, p.payload));
                self.checks.check(sent.is_ok(), format_args!("a room broadcast: {sent:?}"));
            }
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
pub fn room_server(
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

#[derive(Debug)]
pub enum PlainEv {
    Connected(SessionHandle),
    Disconnected(SessionId),
    EnterResult(bool),
}

/// Reports its handle; ignores what it receives.
pub struct Plain {
    pub tx: Sender<PlainEv>,
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

pub fn read_exactly(c: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    c.read_exact(&mut buf).expect("read from server");
    buf
}

pub fn wait_room_len(room: &Room, n: usize) {
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
pub struct Members {
    pub server: ServerService,
    pub rx: Receiver<PlainEv>,
    pub clients: Vec<std::net::TcpStream>,
    pub handles: Vec<SessionHandle>,
    pub room: Room,
}

pub fn plain_members(n: usize) -> Members {
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

/// Each sender's chat messages (payload: sender u32, seq u32) in order, each once: what
/// every member of a chat room test checks.
pub struct SenderOrder {
    last: Vec<Option<u32>>,
    got: usize,
    total: usize,
}

impl SenderOrder {
    /// For `senders` senders of `messages` messages each.
    pub fn new(senders: usize, messages: u32) -> Self {
        SenderOrder { last: vec![None; senders], got: 0, total: senders * messages as usize }
    }

    /// Checks one `S_CHAT` payload (sender, seq).
    pub fn take(&mut self, payload: &[u8]) -> Result<(), String> {
        let (Some(sender), Some(seq), 8) = (u32_at(payload, 0), u32_at(payload, 4), payload.len())
        else {
            return Err(format!("bad S_CHAT payload {payload:?}"));
        };
        let Some(last) = self.last.get_mut(sender as usize) else {
            return Err(format!("unknown sender {sender}"));
        };
        let want = last.map_or(0, |l| l + 1);
        *last = Some(last.map_or(seq, |l| l.max(seq)));
        self.got += 1;
        if seq != want {
            let what = if seq < want { "duplicate or reordered" } else { "gap" };
            return Err(format!("sender {sender}: got seq {seq}, expected {want} ({what})"));
        }
        Ok(())
    }

    /// Every message of every sender arrived.
    pub fn complete(&self) -> bool {
        self.got == self.total
    }
}

/// A chat message's payload: sender and sequence number.
pub fn chat_payload(sender: usize, seq: u32) -> Vec<u8> {
    let mut payload = (sender as u32).to_le_bytes().to_vec();
    payload.extend_from_slice(&seq.to_le_bytes());
    payload
}

/// Sends `messages` chat messages from each of `handles`, interleaved (sequence number
/// by sequence number); the `k`th handle's sender id is `sender_of(k)`.
pub fn send_chats_interleaved(
    handles: &[SessionHandle],
    messages: u32,
    sender_of: impl Fn(usize) -> usize,
) {
    for seq in 0..messages {
        for (k, h) in handles.iter().enumerate() {
            h.send(packet(C_CHAT, &chat_payload(sender_of(k), seq)))
                .expect("senders are connected");
        }
    }
}

/// What the [`ChatMember`]s of a chat room test share: each reports its handle once in
/// the room and its id once it has every message; deliveries and violations are counted.
pub struct ChatShared {
    pub joined: Sender<SessionHandle>,
    pub done: Sender<SessionId>,
    pub deliveries: AtomicUsize,
    pub violations: Mutex<Vec<String>>,
}

impl ChatShared {
    /// A new one, and the receiving ends of `joined` and `done`.
    pub fn new() -> (Arc<Self>, Receiver<SessionHandle>, Receiver<SessionId>) {
        let (joined, joined_rx) = mpsc::channel();
        let (done, done_rx) = mpsc::channel();
        let shared = ChatShared {
            joined,
            done,
            deliveries: AtomicUsize::new(0),
            violations: Mutex::new(Vec::new()),
        };
        (Arc::new(shared), joined_rx, done_rx)
    }

    /// Records a violation (the first 50).
    pub fn violation(&self, v: String) {
        let mut all = self.violations.lock().unwrap();
        if all.len() < 50 {
            all.push(v);
        }
    }

    /// Waits until `sessions` members (`members` names them in the panic) have each reported
    /// once on `done_rx` that they got all `messages` messages; panics after `TIMEOUT`.
    pub fn wait_done(
        &self,
        done_rx: &Receiver<SessionId>,
        sessions: usize,
        members: &str,
        messages: usize,
    ) {
        let mut finished = HashSet::new();
        let deadline = Instant::now() + TIMEOUT;
        while finished.len() < sessions {
            let left = deadline.saturating_duration_since(Instant::now());
            match done_rx.recv_timeout(left) {
                Ok(id) => assert!(finished.insert(id), "{id} reported twice"),
                Err(e) => panic!(
                    "{e}: only {} of {sessions} {members} got all {messages} messages; {} \
                     deliveries; violations: {:#?}",
                    finished.len(),
                    self.deliveries.load(Ordering::Relaxed),
                    self.violations.lock().unwrap()
                ),
            }
        }
    }
}

/// A member of a chat room's `ClientService` (wrap it in `Framed`): reports `S_JOINED`,
/// checks every `S_CHAT` with its `order`, reports when that is complete; any other packet,
/// a disconnect before the shutdown or a failed connect is a violation.
pub struct ChatMember {
    pub shared: Arc<ChatShared>,
    pub order: SenderOrder,
}

impl PacketSession for ChatMember {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, p: Packet<'_>) {
        match p.id {
            S_JOINED => {
                let _ = self.shared.joined.send(ctx.handle());
            }
            S_CHAT => {
                if let Err(e) = self.order.take(p.payload) {
                    self.shared.violation(format!("{}: {e}", ctx.id()));
                }
                self.shared.deliveries.fetch_add(1, Ordering::Relaxed);
                if self.order.complete() {
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

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &std::io::Error) {
        self.shared.violation(format!("connect to {addr} failed: {error}"));
    }
}
