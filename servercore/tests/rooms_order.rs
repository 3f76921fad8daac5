//! The order of room work over real loopback connections: broadcasts and direct sends from
//! one thread, a session's own sends after its broadcasts (one sender, several senders),
//! broadcasts to two rooms, and own sends behind room work flushed on a local disconnect and
//! at shutdown.
//!
//! Nothing here forces a backend (`SERVERCORE_BACKEND` picks it). Every wait is on an event
//! (a channel message or an observed count) with `common::TIMEOUT` as the safety net.

mod common;

use common::rooms::{plain_members, read_exactly, wait_room_len, Members};
use common::workers::recv;
use common::{any_port, connect};
use servercore::{Ctx, DisconnectReason, Room, ServerService, Session};
use std::io::{Read, Write};
use std::sync::mpsc::{self, Sender};
use std::time::Duration;

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
