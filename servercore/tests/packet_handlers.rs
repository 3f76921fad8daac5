//! The handler table (issue 12, item 5): dispatch indexes a table by id and allocates
//! nothing, a session holds the table by a plain `&'static` reference (no reference count
//! per packet), and `try_dispatch` says why a packet was not handled with a typed error.
//!
//! A counting global allocator counts allocations per thread; the count is taken on the
//! worker thread, around the dispatch alone.

mod counting;

use counting::allocations_during;
use servercore::packet::{encode, Framed, HandlerError, Handlers, Packet, PacketSession};
use servercore::{Ctx, ServerService};
use std::io::Write;
use std::sync::mpsc::{self, Sender};
use std::sync::OnceLock;
use std::time::Duration;

#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

const H_ADD: u16 = 3;
/// A large id: the table grows to it, and ids below it without a handler stay unknown.
const H_FAIL: u16 = 60_000;
const UNKNOWN: u16 = 4;

/// What one dispatch did, sent to the test thread (a panic in `on_packet` would only
/// disconnect the session; an unexpected error is an outcome the test's asserts show).
#[derive(Debug, PartialEq)]
enum Outcome {
    Handled {
        allocations: u64,
        sum: u64,
    },
    Unknown(u16),
    Failed(u16, String),
    /// Any other `HandlerError` (never expected).
    Unexpected(String),
}

struct Adder {
    sum: u64,
    handlers: &'static Handlers<Adder>,
    tx: Sender<Outcome>,
}

fn handlers() -> &'static Handlers<Adder> {
    static TABLE: OnceLock<Handlers<Adder>> = OnceLock::new();
    TABLE.get_or_init(|| {
        Handlers::new()
            .on(H_ADD, |a: &mut Adder, _: &mut Ctx<'_>, p: &[u8]| {
                a.sum += p.iter().map(|&b| u64::from(b)).sum::<u64>();
                Ok::<(), String>(())
            })
            .on(H_FAIL, |_: &mut Adder, _: &mut Ctx<'_>, _: &[u8]| Err("refused"))
    })
}

impl PacketSession for Adder {
    fn on_packet(&mut self, ctx: &mut Ctx<'_>, packet: Packet<'_>) {
        let h = self.handlers;
        let (allocations, result) = allocations_during(|| h.try_dispatch(self, ctx, packet));
        let outcome = match result {
            Ok(()) => Outcome::Handled { allocations, sum: self.sum },
            Err(HandlerError::UnknownId(id)) => Outcome::Unknown(id),
            Err(HandlerError::Failed { id, error }) => Outcome::Failed(id, error.to_string()),
            Err(other) => Outcome::Unexpected(other.to_string()),
        };
        let _ = self.tx.send(outcome);
    }
}

#[test]
fn dispatch_allocates_nothing_and_errors_are_typed() {
    let (tx, rx) = mpsc::channel();
    let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .start(move || Framed::new(Adder { sum: 0, handlers: handlers(), tx: tx.clone() }))
        .unwrap();
    let mut conn = std::net::TcpStream::connect(server.local_addr()).unwrap();
    let packets = 1000u64;
    let mut bytes = Vec::new();
    for _ in 0..packets {
        bytes.extend_from_slice(&encode(H_ADD, &[1, 2]).unwrap());
    }
    bytes.extend_from_slice(&encode(UNKNOWN, b"?").unwrap());
    bytes.extend_from_slice(&encode(H_FAIL, b"").unwrap());
    bytes.extend_from_slice(&encode(u16::MAX, b"").unwrap());
    conn.write_all(&bytes).unwrap();

    let next = || rx.recv_timeout(Duration::from_secs(20)).expect("an outcome");
    for i in 1..=packets {
        assert_eq!(next(), Outcome::Handled { allocations: 0, sum: 3 * i }, "packet {i}");
    }
    assert_eq!(next(), Outcome::Unknown(UNKNOWN));
    assert_eq!(next(), Outcome::Failed(H_FAIL, "refused".into()));
    assert_eq!(next(), Outcome::Unknown(u16::MAX));
    // `try_dispatch` leaves the session open; `dispatch` would have closed it.
    assert_eq!(server.stats().disconnected, 0);
    assert!(handlers().handles(H_FAIL) && !handlers().handles(H_FAIL - 1));
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn handler_errors_read_as_before_and_keep_their_source() {
    let e = HandlerError::Failed { id: 9, error: "bad payload".into() };
    assert_eq!(e.to_string(), "packet id 9: bad payload");
    assert_eq!(std::error::Error::source(&e).unwrap().to_string(), "bad payload");
    assert_eq!(HandlerError::UnknownId(7).to_string(), "unknown packet id 7");
}
