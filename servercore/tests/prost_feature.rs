//! The `prost` feature: protobuf messages as packet payloads, encoded in pooled packet
//! memory, checked against the frame format, and sent through a real server.
//!
//! Run with `cargo test -p servercore --features prost --test prost_feature`.
#![cfg(feature = "prost")]

mod common;

use common::{any_port, connect, read_to_end, TIMEOUT};
use prost::Message;
use servercore::packet::{
    self, prost as pb, FrameError, Framed, Handlers, Packet, PacketSession, MAX_PACKET_SIZE_LIMIT,
};
use servercore::{ClientService, Ctx, DisconnectReason, ServerService, SessionId};
use std::io::{Read, Write};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, PartialEq, prost::Message)]
struct Vec3 {
    #[prost(float, tag = "1")]
    x: f32,
    #[prost(float, tag = "2")]
    y: f32,
    #[prost(float, tag = "3")]
    z: f32,
}

/// Client -> server.
#[derive(Clone, PartialEq, prost::Message)]
struct Move {
    #[prost(uint32, tag = "1")]
    player: u32,
    #[prost(message, optional, tag = "2")]
    to: Option<Vec3>,
    #[prost(string, repeated, tag = "3")]
    tags: Vec<String>,
    #[prost(bytes = "vec", tag = "4")]
    blob: Vec<u8>,
    #[prost(sint64, tag = "5")]
    seq: i64,
}

/// Server -> client.
#[derive(Clone, PartialEq, prost::Message)]
struct Moved {
    #[prost(uint64, tag = "1")]
    session: u64,
    #[prost(message, optional, tag = "2")]
    request: Option<Move>,
    #[prost(uint32, tag = "3")]
    tag_count: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Blob {
    #[prost(bytes = "vec", tag = "1")]
    data: Vec<u8>,
}

const C_MOVE: u16 = 1;
const S_MOVED: u16 = 2;

fn sample(seq: i64) -> Move {
    Move {
        player: 7,
        to: Some(Vec3 { x: 1.0, y: -2.5, z: seq as f32 }),
        tags: vec!["run".into(), format!("n{seq}")],
        blob: (0..(seq as u8 % 50)).collect(),
        seq: -seq,
    }
}

#[test]
fn encode_writes_the_frame_format_and_decode_reads_it_back() {
    for msg in [Move::default(), sample(1), sample(49)] {
        let buf = pb::encode(C_MOVE, &msg).unwrap();
        // Exactly what framing the protobuf bytes by hand gives.
        assert_eq!(&buf[..], &packet::encode(C_MOVE, &msg.encode_to_vec()).unwrap()[..]);
        let (p, used) = packet::decode(&buf, packet::DEFAULT_MAX_PACKET_SIZE).unwrap().unwrap();
        assert_eq!((p.id, used), (C_MOVE, buf.len()));
        assert_eq!(pb::decode::<Move>(p.payload).unwrap(), msg);
    }
    // An empty message is a header-only packet.
    assert_eq!(&pb::encode(9, &Move::default()).unwrap()[..], &[4, 0, 9, 0]);
    // Bytes that are not a message: a decode error, no panic.
    assert!(pb::decode::<Move>(&[0x0A, 0xFF]).is_err());
    assert!(pb::decode::<Move>(&[0xFF; 11]).is_err());
}

#[test]
fn encode_is_pooled() {
    std::thread::spawn(|| {
        let a = pb::encode(1, &sample(3)).unwrap();
        let b = pb::encode(2, &sample(4)).unwrap();
        // Carved one after the other from the thread's chunk: no allocation per packet.
        assert_eq!(a.as_ptr().wrapping_add(a.len()), b.as_ptr());
    })
    .join()
    .unwrap();
}

#[test]
fn encode_refuses_what_a_packet_cannot_carry() {
    // Header 4 + field key 1 + length varint 3 + bytes: 65527 bytes fill a packet exactly.
    let fits = Blob { data: vec![1; MAX_PACKET_SIZE_LIMIT - 8] };
    assert_eq!(pb::encode(1, &fits).unwrap().len(), MAX_PACKET_SIZE_LIMIT);
    let over = Blob { data: vec![1; MAX_PACKET_SIZE_LIMIT - 7] };
    assert_eq!(
        pb::encode(1, &over).unwrap_err(),
        FrameError::TooLarge { size: u16::MAX, max: MAX_PACKET_SIZE_LIMIT }
    );
}

// ----- through a real server -----------------------------------------------------------

fn on_move(_: &mut (), ctx: &mut Ctx<'_>, payload: &[u8]) -> Result<(), String> {
    let m: Move = pb::decode(payload).map_err(|e| e.to_string())?;
    let reply = Moved { session: ctx.id().get(), tag_count: m.tags.len() as u32, request: Some(m) };
    ctx.send(pb::encode(S_MOVED, &reply).map_err(|e| e.to_string())?).map_err(|e| e.to_string())
}

struct MoveServer {
    handlers: Arc<Handlers<()>>,
    gone: Sender<(SessionId, DisconnectReason)>,
}

impl PacketSession for MoveServer {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, p: Packet<'_>) {
        self.handlers.dispatch(&mut (), ctx, p);
    }
    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.gone.send((ctx.id(), reason.clone()));
    }
}

/// Sends `MOVES` moves on connect; passes every decoded answer on.
struct Mover {
    answers: Sender<Result<Moved, String>>,
}

const MOVES: i64 = 100;

impl PacketSession for Mover {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        for seq in 0..MOVES {
            ctx.send(pb::encode(C_MOVE, &sample(seq)).unwrap()).unwrap();
        }
    }
    fn on_packet(&mut self, _ctx: &mut Ctx<'_>, p: Packet<'_>) {
        let answer = match p.id {
            S_MOVED => pb::decode::<Moved>(p.payload).map_err(|e| e.to_string()),
            other => Err(format!("unexpected packet id {other}")),
        };
        let _ = self.answers.send(answer);
    }
}

#[test]
fn messages_round_trip_through_a_server_and_bad_payloads_are_protocol_errors() {
    let handlers = Arc::new(Handlers::new().on(C_MOVE, on_move));
    let (gone_tx, gone) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(2)
        .start(move || {
            Framed::new(MoveServer { handlers: handlers.clone(), gone: gone_tx.clone() })
        })
        .unwrap();
    let (tx, answers) = mpsc::channel();
    let client = ClientService::builder(server.local_addr())
        .sessions(2)
        .workers(2)
        .start(move || Framed::new(Mover { answers: tx.clone() }))
        .unwrap();
    let mut per_session: std::collections::HashMap<u64, Vec<i64>> = Default::default();
    for _ in 0..2 * MOVES {
        let moved = answers.recv_timeout(TIMEOUT).expect("an answer").expect("a good answer");
        let request = moved.request.expect("the request comes back");
        assert_eq!(request, sample(-request.seq), "the message arrived intact");
        assert_eq!(moved.tag_count, 2);
        per_session.entry(moved.session).or_default().push(-request.seq);
    }
    assert_eq!(per_session.len(), 2);
    for seqs in per_session.values() {
        assert_eq!(seqs, &(0..MOVES).collect::<Vec<_>>(), "in order");
    }

    // A payload that is not a `Move`: that session gets a protocol error naming the packet.
    let mut bad = connect(server.local_addr());
    bad.write_all(&packet::encode(C_MOVE, &[0x0A, 0xFF, 0xFF]).unwrap()).unwrap();
    let (_, reason) = gone.recv_timeout(TIMEOUT).expect("the bad session ends");
    match &reason {
        DisconnectReason::Protocol(text) => {
            assert!(text.starts_with(&format!("packet id {C_MOVE}: ")), "{text}");
            assert!(text.contains("decode"), "{text}");
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    let (bytes, _) = read_to_end(&mut bad);
    assert!(bytes.is_empty());

    // The server carries on.
    let mut good = connect(server.local_addr());
    good.write_all(&pb::encode(C_MOVE, &sample(5)).unwrap()).unwrap();
    let mut header = [0u8; 4];
    good.read_exact(&mut header).unwrap();
    let size = usize::from(u16::from_le_bytes([header[0], header[1]]));
    assert_eq!(u16::from_le_bytes([header[2], header[3]]), S_MOVED);
    let mut payload = vec![0u8; size - 4];
    good.read_exact(&mut payload).unwrap();
    let moved: Moved = pb::decode(&payload).unwrap();
    assert_eq!(moved.request, Some(sample(5)));

    client.shutdown(Duration::from_secs(5)).unwrap();
    server.shutdown(Duration::from_secs(5)).unwrap();
}
