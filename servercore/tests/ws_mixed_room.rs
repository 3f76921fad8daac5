//! A chat room of TCP and WebSocket sessions (issue 14): the room server of the `rooms_*`
//! tests (`common::rooms::RoomServer`, packet framing) with a WebSocket listener next to
//! its TCP one, so that both feed one room; several senders of every kind at once; every
//! member gets every sender's messages in that sender's order, with no gap and no
//! duplicate, and every binary message a WebSocket member reads holds whole packets.
//!
//! A `Room` belongs to one service (`Ctx::enter_room` refuses another service's room), and
//! a server with `.tls(..)` makes both its listeners TLS. So there are two rooms: a server
//! without TLS holds TCP and ws members, a server with TLS holds TLS-over-TCP and wss
//! members. Members of each: blocking TCP (or TLS) clients, tungstenite clients, a client
//! writing frames by hand that splits its messages into fragments (packets cut anywhere,
//! pings between the fragments, each answered by a pong in order), and a WebSocket
//! `ClientService` (the library's client side) whose senders send through their handles.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! with `common::TIMEOUT` as the safety net.

mod common;

use common::rooms::{
    chat_payload, packet, room_server, send_chats_interleaved, wait_room_len, ChatMember,
    ChatShared, SenderOrder, C_CHAT, S_CHAT, S_JOINED,
};
use common::tls::{pki, server_name};
use common::workers::recv;
use common::ws::{
    client_frame, client_stream, ws_client, RawWs, Stream, OP_BINARY, OP_CONTINUATION, OP_PING,
    OP_PONG,
};
use common::{any_port, Rng};
use servercore::packet::Framed;
use servercore::ws::WsConfig;
use servercore::{ClientService, Room, ServerService, SessionHandle};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Blocking TCP (or TLS) clients that speak, then one that only listens.
const TCP_SENDERS: usize = 2;
/// tungstenite clients that speak, then one that only listens.
const WS_SENDERS: usize = 2;
/// The hand-made client that fragments its messages (it speaks).
const RAW_SENDERS: usize = 1;
/// Members from the WebSocket `ClientService`, and of those, how many speak.
const SERVICE_SESSIONS: usize = 12;
const SERVICE_SENDERS: usize = 2;

const SENDERS: usize = TCP_SENDERS + WS_SENDERS + RAW_SENDERS + SERVICE_SENDERS;
const MEMBERS: usize = TCP_SENDERS + 1 + WS_SENDERS + 1 + RAW_SENDERS + SERVICE_SESSIONS;
const MESSAGES: u32 = 2_000;

/// Sender ids: TCP first, then tungstenite, the hand-made one, the service's.
fn tcp_sender(k: usize) -> usize {
    k
}
fn ws_sender(k: usize) -> usize {
    TCP_SENDERS + k
}
const RAW_SENDER: usize = TCP_SENDERS + WS_SENDERS;
fn service_sender(k: usize) -> usize {
    RAW_SENDER + RAW_SENDERS + k
}

/// The tests of this binary one at a time (two cores: their timings stay apart).
static EXCLUSIVE: Mutex<()> = Mutex::new(());

/// Each sender's messages in order, each once.
fn order() -> SenderOrder {
    SenderOrder::new(SENDERS, MESSAGES)
}

/// A sender's packets, in order, as bytes.
fn chat_packets(sender: usize) -> Vec<Vec<u8>> {
    (0..MESSAGES).map(|seq| packet(C_CHAT, &chat_payload(sender, seq)).to_vec()).collect()
}

/// Splits whole packets off the front of `buf`: (id, payload) each; returns how many
/// bytes they took.
fn split_packets(buf: &[u8], out: &mut Vec<(u16, Vec<u8>)>) -> usize {
    let mut at = 0;
    while buf.len() - at >= 4 {
        let size = usize::from(u16::from_le_bytes([buf[at], buf[at + 1]]));
        let id = u16::from_le_bytes([buf[at + 2], buf[at + 3]]);
        assert!(size >= 4, "packet size {size}");
        if buf.len() - at < size {
            break;
        }
        out.push((id, buf[at + 4..at + size].to_vec()));
        at += size;
    }
    at
}

/// The packets of one WebSocket binary message, which must hold whole packets only
/// (PROTOCOL.md section 6).
fn message_packets(who: &str, msg: &[u8], violations: &mut Vec<String>) -> Vec<(u16, Vec<u8>)> {
    let mut packets = Vec::new();
    let used = split_packets(msg, &mut packets);
    if used != msg.len() {
        violations.push(format!(
            "{who}: a binary message of {} bytes ends inside a packet ({} bytes left over)",
            msg.len(),
            msg.len() - used
        ));
    }
    packets
}

/// Checks the packets a member received; returns whether the order is complete.
fn take_packets(
    who: &str,
    order: &mut SenderOrder,
    packets: Vec<(u16, Vec<u8>)>,
    violations: &mut Vec<String>,
) {
    for (id, payload) in packets {
        if id != S_CHAT {
            violations.push(format!("{who}: unexpected packet id {id}"));
        } else if let Err(e) = order.take(&payload) {
            violations.push(format!("{who}: {e}"));
        }
    }
}

// ----- the members --------------------------------------------------------------------

/// A blocking TCP (or TLS) member, in the room once it has read `S_JOINED`.
struct TcpMember {
    s: Box<dyn Stream>,
    pending: Vec<u8>,
}

impl TcpMember {
    fn join(addr: SocketAddr, tls: bool) -> Self {
        let mut m = TcpMember { s: client_stream(addr, tls), pending: Vec::new() };
        let (id, _) = m.read_packet();
        assert_eq!(id, S_JOINED, "the first packet says the client is in the room");
        m
    }

    fn read_packet(&mut self) -> (u16, Vec<u8>) {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if self.pending.len() >= 4 {
                let size = usize::from(u16::from_le_bytes([self.pending[0], self.pending[1]]));
                assert!(size >= 4, "packet size {size}");
                if self.pending.len() >= size {
                    let id = u16::from_le_bytes([self.pending[2], self.pending[3]]);
                    let payload = self.pending[4..size].to_vec();
                    self.pending.drain(..size);
                    return (id, payload);
                }
            }
            let n = self.s.read(&mut buf).expect("reading packets");
            assert!(n > 0, "the server closed the stream");
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// Writes its packets in bursts of varied sizes (many packets per write, some cut
    /// between writes).
    fn send_all(&mut self, sender: usize, rng: &mut Rng) {
        let bytes: Vec<u8> = chat_packets(sender).concat();
        let mut at = 0;
        while at < bytes.len() {
            let n = rng.range(1, 200).min(bytes.len() - at);
            self.s.write_all(&bytes[at..at + n]).unwrap();
            self.s.flush().unwrap();
            at += n;
        }
    }

    fn listen(&mut self, who: &str) -> Vec<String> {
        let (mut order, mut violations) = (order(), Vec::new());
        while !order.complete() {
            let p = self.read_packet();
            take_packets(who, &mut order, vec![p], &mut violations);
        }
        violations
    }
}

/// A tungstenite member.
struct WsMember {
    ws: tungstenite::WebSocket<Box<dyn Stream>>,
}

impl WsMember {
    fn join(addr: SocketAddr, tls: bool) -> Self {
        let mut ws = ws_client(addr, tls);
        let first = common::ws::next_binary(&mut ws);
        let mut v = Vec::new();
        let packets = message_packets("joining", &first, &mut v);
        assert!(v.is_empty(), "{v:?}");
        assert_eq!(packets.first().map(|p| p.0), Some(S_JOINED), "the first packet: S_JOINED");
        assert_eq!(packets.len(), 1, "S_JOINED alone in the first message");
        WsMember { ws }
    }

    /// Sends its packets as binary messages of 1 to 8 whole packets.
    fn send_all(&mut self, sender: usize, rng: &mut Rng) {
        let packets = chat_packets(sender);
        let mut at = 0;
        while at < packets.len() {
            let n = rng.range(1, 8).min(packets.len() - at);
            let msg = packets[at..at + n].concat();
            self.ws.write(tungstenite::Message::Binary(msg.into())).expect("queueing a message");
            at += n;
        }
        self.ws.flush().expect("sending the messages");
    }

    fn listen(&mut self, who: &str) -> Vec<String> {
        let (mut order, mut violations) = (order(), Vec::new());
        while !order.complete() {
            let msg = common::ws::next_binary(&mut self.ws);
            let packets = message_packets(who, &msg, &mut violations);
            take_packets(who, &mut order, packets, &mut violations);
        }
        violations
    }
}

/// The hand-made member: its messages are cut into fragments anywhere (inside packets and
/// their headers too), with pings between fragments; it listens for every chat message
/// and every pong, which must carry the pings' payloads in order.
struct RawMember {
    c: RawWs<Box<dyn Stream>>,
    pings: Vec<Vec<u8>>,
}

impl RawMember {
    fn join(addr: SocketAddr, tls: bool) -> Self {
        let mut c = RawWs::upgrade(client_stream(addr, tls));
        let f = c.read_frame().expect("the S_JOINED message");
        assert_eq!((f.opcode, f.fin), (OP_BINARY, true), "{f:?}");
        assert_eq!(u16::from_le_bytes([f.payload[2], f.payload[3]]), S_JOINED);
        RawMember { c, pings: Vec::new() }
    }

    fn send_all(&mut self, sender: usize, rng: &mut Rng) {
        let packets = chat_packets(sender);
        let mut at = 0;
        let mut wire = Vec::new();
        while at < packets.len() {
            let n = rng.range(1, 6).min(packets.len() - at);
            let msg = packets[at..at + n].concat();
            at += n;
            // 1 to 4 fragments, cut at random places (empty fragments allowed).
            let cuts = rng.range(0, 3);
            let mut bounds: Vec<usize> = (0..cuts).map(|_| rng.range(0, msg.len())).collect();
            bounds.sort_unstable();
            bounds.insert(0, 0);
            bounds.push(msg.len());
            for (i, w) in bounds.windows(2).enumerate() {
                let (first, last) = (i == 0, i + 2 == bounds.len());
                let op = if first { OP_BINARY } else { OP_CONTINUATION };
                wire.extend(client_frame(last, op, &msg[w[0]..w[1]]));
                if !last && rng.one_in(2) {
                    let payload = format!("ping {}", self.pings.len()).into_bytes();
                    wire.extend(client_frame(true, OP_PING, &payload));
                    self.pings.push(payload);
                }
            }
            if wire.len() > 1000 || at == packets.len() {
                self.c.send(&wire);
                wire.clear();
            }
        }
        assert!(!self.pings.is_empty(), "some pings were sent");
    }

    fn listen(&mut self, who: &str) -> Vec<String> {
        let (mut order, mut violations) = (order(), Vec::new());
        // Pongs answer pings in order; several pings read at once may get one pong, the
        // last one's (RFC 6455 5.5.3), so the pongs name an increasing run of pings that
        // ends with the last.
        let mut pongs = 0;
        while !order.complete() || pongs < self.pings.len() {
            let f = self.c.read_frame().expect("reading frames");
            if f.masked || !f.fin {
                violations.push(format!("{who}: a masked or fragmented server frame: {f:?}"));
            }
            match f.opcode {
                OP_BINARY => {
                    let packets = message_packets(who, &f.payload, &mut violations);
                    take_packets(who, &mut order, packets, &mut violations);
                }
                OP_PONG => match self.pings[pongs.min(self.pings.len())..]
                    .iter()
                    .position(|p| *p == f.payload)
                {
                    Some(i) => pongs += i + 1,
                    None => {
                        violations.push(format!(
                            "{who}: pong {:?} answers no ping after the {pongs} answered",
                            String::from_utf8_lossy(&f.payload)
                        ));
                        pongs += 1;
                    }
                },
                _ => violations.push(format!("{who}: unexpected frame {f:?}")),
            }
        }
        violations
    }
}

/// A member on a thread of its own: sends (if it is a sender), then listens.
enum Member {
    Tcp(TcpMember),
    Ws(Box<WsMember>),
    Raw(RawMember),
}

impl Member {
    fn run(&mut self, sender: Option<usize>, rng: &mut Rng, who: &str) -> Vec<String> {
        match (self, sender) {
            (Member::Tcp(m), s) => {
                if let Some(s) = s {
                    m.send_all(s, rng);
                }
                m.listen(who)
            }
            (Member::Ws(m), s) => {
                if let Some(s) = s {
                    m.send_all(s, rng);
                }
                m.listen(who)
            }
            (Member::Raw(m), Some(s)) => {
                m.send_all(s, rng);
                m.listen(who)
            }
            (Member::Raw(_), None) => unreachable!("the hand-made member speaks"),
        }
    }

    /// Ends the connection in order.
    fn close(self) {
        match self {
            Member::Tcp(m) => drop(m.s),
            Member::Ws(mut m) => {
                let _ = m.ws.close(None);
                while m.ws.read().is_ok() {}
            }
            Member::Raw(mut m) => {
                m.c.send(&common::ws::close_frame(1000, b""));
                let _ = m.c.read_to_end();
            }
        }
    }
}

fn run_room(tls: bool) {
    let _exclusive = EXCLUSIVE.lock().unwrap_or_else(|p| p.into_inner());
    let kind = if tls { "TLS and wss" } else { "TCP and ws" };
    let seed = common::seed(kind);
    let room = Room::new();
    let mut builder =
        ServerService::builder(any_port()).workers(2).websocket(any_port(), WsConfig::default());
    if tls {
        builder = builder.tls(pki().server.clone());
    }
    let (server, checks) = room_server(&room, builder);
    let (tcp_addr, ws_addr) = (server.local_addr(), server.websocket_addr().unwrap());

    // The library's WebSocket client: many members, a few speaking through their handles.
    let (shared, joined_rx, done_rx) = ChatShared::new();
    let sh = shared.clone();
    let mut client = ClientService::builder(ws_addr)
        .sessions(SERVICE_SESSIONS)
        .workers(2)
        .websocket(WsConfig::default());
    if tls {
        client = client.tls(pki().client.clone(), server_name());
    }
    let client = client
        .start(move || Framed::new(ChatMember { shared: sh.clone(), order: order() }))
        .unwrap();
    let handles: Vec<SessionHandle> =
        (0..SERVICE_SESSIONS).map(|i| recv(&joined_rx, &format!("S_JOINED number {i}"))).collect();

    // The blocking members, each with its sender id (None: a listener).
    let mut members: Vec<(String, Member, Option<usize>)> = Vec::new();
    for k in 0..=TCP_SENDERS {
        let s = (k < TCP_SENDERS).then(|| tcp_sender(k));
        members.push((format!("tcp member {k}"), Member::Tcp(TcpMember::join(tcp_addr, tls)), s));
    }
    for k in 0..=WS_SENDERS {
        let s = (k < WS_SENDERS).then(|| ws_sender(k));
        members.push((
            format!("ws member {k}"),
            Member::Ws(Box::new(WsMember::join(ws_addr, tls))),
            s,
        ));
    }
    members.push((
        "hand-made ws member".into(),
        Member::Raw(RawMember::join(ws_addr, tls)),
        Some(RAW_SENDER),
    ));
    wait_room_len(&room, MEMBERS);

    let started = Instant::now();
    let threads: Vec<_> = members
        .into_iter()
        .enumerate()
        .map(|(i, (who, mut m, sender))| {
            let mut rng = Rng::new(seed ^ (i as u64 + 1));
            std::thread::spawn(move || {
                let violations = m.run(sender, &mut rng, &who);
                (m, violations)
            })
        })
        .collect();
    // The service's senders, through their handles, interleaved.
    send_chats_interleaved(&handles[..SERVICE_SENDERS], MESSAGES, service_sender);
    shared.wait_done(&done_rx, SERVICE_SESSIONS, "service members", SENDERS * MESSAGES as usize);
    let mut violations = Vec::new();
    let mut blocking = Vec::new();
    for t in threads {
        let (m, v) = t.join().expect("member thread");
        violations.extend(v);
        blocking.push(m);
    }
    eprintln!(
        "{kind}: {} deliveries to {MEMBERS} members from {SENDERS} senders in {:?} ({} backend)",
        MEMBERS * SENDERS * MESSAGES as usize,
        started.elapsed(),
        server.backend()
    );
    assert!(violations.is_empty(), "blocking members: {violations:#?}");
    assert_eq!(
        shared.deliveries.load(Ordering::Relaxed),
        SERVICE_SESSIONS * SENDERS * MESSAGES as usize
    );
    let stats = server.stats();
    assert_eq!(stats.ws_upgrades as usize, SERVICE_SESSIONS + WS_SENDERS + 1 + RAW_SENDERS);
    assert_eq!(stats.ws_upgrade_failures, 0, "{stats:?}");
    for m in blocking {
        m.close();
    }
    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
    let violations = shared.violations.lock().unwrap();
    assert!(violations.is_empty(), "service members: {violations:#?}");
}

/// TCP and ws members in the room of a server without TLS.
#[test]
fn tcp_and_ws_members_get_every_senders_messages_in_order() {
    run_room(false);
}

/// TLS and wss members in the room of a server with TLS.
#[test]
fn tls_and_wss_members_get_every_senders_messages_in_order() {
    run_room(true);
}
