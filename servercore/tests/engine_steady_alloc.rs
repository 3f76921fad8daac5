//! No allocation per message on the steady path (issue 5): a worker that echoes, or relays
//! to a room, thousands of messages allocates a bounded number of times (pooled chunks
//! being renewed), not once or more per message. Runs under whichever backend
//! `SERVERCORE_BACKEND` picks.
//!
//! A counting global allocator counts, per thread, every allocation; a session reads its
//! worker thread's count from inside its callbacks, so only the worker's own work counts.

mod common;
mod counting;

use common::{any_port, connect, TIMEOUT};
use counting::allocations_on_this_thread;
use servercore::{Ctx, Room, SendBuffer, ServerService, Session};
use std::io::{Read, Write};
use std::sync::mpsc::{self, Sender};

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

/// Messages before counting starts (queues, pools and tables reach their working size).
const WARM_UP: u64 = 500;
/// Messages counted.
const COUNTED: u64 = 3000;
/// Allocations allowed over the counted messages (24 KiB of payload): at most a renewed
/// 64 KiB packet chunk or two, nothing per message. (Measured: none.)
const ALLOWED: u64 = 4;

/// Echoes (or relays to `room`, when set) each 8-byte message, and reports the worker
/// thread's allocations over the counted messages.
struct Counter {
    room: Option<Room>,
    seen: u64,
    start: u64,
    report: Sender<u64>,
}

impl Session for Counter {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        if let Some(room) = &self.room {
            ctx.enter_room(room);
        }
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let whole = data.len() - data.len() % 8;
        for msg in data[..whole].chunks(8) {
            let buf = SendBuffer::copy_from_slice(msg);
            match &self.room {
                Some(room) => ctx.broadcast_room(room, buf).unwrap(),
                None => ctx.send(buf).unwrap(),
            }
            self.seen += 1;
            if self.seen == WARM_UP {
                self.start = allocations_on_this_thread();
            } else if self.seen == WARM_UP + COUNTED {
                let _ = self.report.send(allocations_on_this_thread() - self.start);
            }
        }
        whole
    }
}

fn read_exactly(c: &mut std::net::TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    c.read_exact(&mut buf).expect("read from server");
    buf
}

#[test]
fn echo_allocates_nothing_per_message() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || Counter { room: None, seen: 0, start: 0, report: tx.clone() })
        .unwrap();
    let mut c = connect(server.local_addr());
    for i in 0..WARM_UP + COUNTED {
        let msg = i.to_le_bytes();
        c.write_all(&msg).unwrap();
        assert_eq!(read_exactly(&mut c, 8), msg);
    }
    let allocations = rx.recv_timeout(TIMEOUT).expect("the session reports its count");
    assert!(
        allocations <= ALLOWED,
        "{allocations} allocations on the worker over {COUNTED} echoed messages"
    );
    server.shutdown(std::time::Duration::from_secs(5)).unwrap();
}

#[test]
fn room_relay_allocates_nothing_per_message() {
    let (tx, rx) = mpsc::channel();
    let room = Room::new();
    let room2 = room.clone();
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || Counter { room: Some(room2.clone()), seen: 0, start: 0, report: tx.clone() })
        .unwrap();
    let mut sender = connect(server.local_addr());
    let mut others: Vec<_> = (0..3).map(|_| connect(server.local_addr())).collect();
    common::wait_until("room.len() == 4", || {
        if room.len() == 4 {
            Ok(())
        } else {
            Err(format!("{} members", room.len()))
        }
    });
    for i in 0..WARM_UP + COUNTED {
        let msg = i.to_le_bytes();
        sender.write_all(&msg).unwrap();
        assert_eq!(read_exactly(&mut sender, 8), msg);
        for o in &mut others {
            assert_eq!(read_exactly(o, 8), msg);
        }
    }
    let allocations = rx.recv_timeout(TIMEOUT).expect("the session reports its count");
    assert!(
        allocations <= ALLOWED,
        "{allocations} allocations on the worker over {COUNTED} relayed messages (4 members)"
    );
    server.shutdown(std::time::Duration::from_secs(5)).unwrap();
}
