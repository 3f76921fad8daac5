//! Driving a socket: trying its pending operations while its readiness flags allow, up to
//! the fairness caps, and completing what finished.

use super::attempt::{try_recv, try_send};
use super::op::{Op, OpState};
use super::pool::Pool;
use super::sock::{Io, Sock};
use crate::driver::{Completion, CompletionKind, RecvLease};
use slab::Slab;
use socket2::{SockAddr, SockRef};
use std::io;
use std::net::TcpStream;

/// Most connections accepted from one listener per pass, for fairness.
pub(super) const ACCEPT_BATCH: usize = 64;
/// Most chunks read from one stream per `wait`, for fairness.
pub(super) const RECV_BATCH: usize = 4;

/// What driving a socket left to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Outcome {
    /// Nothing that needs no new edge.
    Idle,
    /// Capped: more to do at the next `wait` without a new edge.
    Again,
    /// A recv wanted a buffer and the pool had none; `served`: it got chunks first.
    Starved { served: bool },
}

/// Tries the pending operations of one socket while its readiness allows, up to the caps.
pub(super) fn drive(
    sock: &mut Sock,
    ops: &mut Slab<Op>,
    pool: &mut Pool,
    out: &mut Vec<Completion>,
) -> Outcome {
    let Io::Stream(stream) = &sock.io else {
        return drive_accept(sock, ops, out);
    };
    let mut outcome = Outcome::Idle;
    if let Some(key) = sock.connect {
        if let Some(result) = drive_connect(stream, &mut sock.writable, &mut ops[key]) {
            sock.connect = None;
            // Established: both directions may be ready.
            sock.readable = true;
            sock.writable = true;
            let owner = ops.remove(key).owner;
            out.push(Completion { owner, kind: CompletionKind::Connect { result } });
        }
    }
    if let (Some(key), true) = (sock.recv, sock.readable) {
        debug_assert!(matches!(ops[key].state, OpState::Recv));
        let (finished, o) = drive_recv(stream, &mut sock.readable, pool, ops[key].owner, out);
        if finished {
            sock.recv = None;
            ops.remove(key);
        }
        outcome = o;
    }
    if let (Some(key), true) = (sock.send, sock.writable) {
        let OpState::Send(bufs) = &ops[key].state else {
            unreachable!("the send slot holds a send")
        };
        if let Some(result) = try_send(stream, bufs, &mut sock.writable) {
            sock.send = None;
            let op = ops.remove(key);
            let OpState::Send(bufs) = op.state else { unreachable!("checked above") };
            out.push(Completion { owner: op.owner, kind: CompletionKind::Send { result, bufs } });
        }
    }
    outcome
}

/// Accepts up to [`ACCEPT_BATCH`] connections for a listener's pending accept.
fn drive_accept(sock: &mut Sock, ops: &mut Slab<Op>, out: &mut Vec<Completion>) -> Outcome {
    let Io::Listener(l) = &sock.io else { unreachable!("only a listener accepts") };
    let Some(key) = sock.accept else {
        return Outcome::Idle;
    };
    let mut accepted = 0;
    while sock.readable {
        if accepted == ACCEPT_BATCH {
            return Outcome::Again;
        }
        match l.accept() {
            Ok((s, _)) => {
                accepted += 1;
                let result = Ok(TcpStream::from(s));
                let kind = CompletionKind::Accept { result, armed: true };
                out.push(Completion { owner: ops[key].owner, kind });
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => sock.readable = false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                sock.accept = None;
                let op = ops.remove(key);
                out.push(Completion { owner: op.owner, kind: op.state.fail(e) });
                break;
            }
        }
    }
    Outcome::Idle
}

/// Reads up to [`RECV_BATCH`] chunks for a pending recv, completing each. Returns whether
/// the recv finished (`armed == false` completed) and what is left to do.
fn drive_recv(
    stream: &mio::net::TcpStream,
    readable: &mut bool,
    pool: &mut Pool,
    owner: u64,
    out: &mut Vec<Completion>,
) -> (bool, Outcome) {
    for chunk in 0..RECV_BATCH {
        let Some(buf) = pool.take() else {
            return (false, Outcome::Starved { served: chunk > 0 });
        };
        let result = try_recv(stream, pool.buf_mut(buf), readable);
        let (result, armed) = match result {
            None => {
                pool.put_back(buf);
                return (false, Outcome::Idle);
            }
            Some(Ok(0)) => (Ok(None), false),
            Some(Ok(n)) => {
                pool.lend(buf);
                let len = u32::try_from(n).expect("a read is at most one buffer");
                (Ok(Some(RecvLease { buf, len })), true)
            }
            Some(Err(e)) => (Err(e), false),
        };
        if !armed {
            pool.put_back(buf);
        }
        out.push(Completion { owner, kind: CompletionKind::Recv { result, armed } });
        if !armed {
            return (true, Outcome::Idle);
        }
    }
    (false, Outcome::Again)
}

/// Starts or checks a connect. `None`: still under way.
fn drive_connect(
    stream: &mio::net::TcpStream,
    writable: &mut bool,
    op: &mut Op,
) -> Option<io::Result<()>> {
    let OpState::Connect { addr, started } = &mut op.state else {
        unreachable!("the connect slot holds a connect")
    };
    if !*started {
        let addr = SockAddr::from(*addr);
        return match stream.try_io(|| SockRef::from(stream).connect(&addr)) {
            Ok(()) => Some(Ok(())),
            Err(e) if connect_in_progress(&e) => {
                *started = true;
                // Whatever readiness was seen belongs to the unconnected socket.
                *writable = false;
                None
            }
            Err(e) => Some(Err(e)),
        };
    }
    if !*writable {
        return None;
    }
    // mio's recipe: a writable edge, then SO_ERROR, then the peer address.
    match stream.take_error() {
        Ok(Some(e)) | Err(e) => return Some(Err(e)),
        Ok(None) => {}
    }
    match stream.peer_addr() {
        Ok(_) => Some(Ok(())),
        Err(e) if e.kind() == io::ErrorKind::NotConnected || connect_in_progress(&e) => {
            // A spurious edge: wait for the next one.
            *writable = false;
            None
        }
        Err(e) => Some(Err(e)),
    }
}

/// Whether a non-blocking `connect` is under way rather than failed.
fn connect_in_progress(e: &io::Error) -> bool {
    if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) {
        return true;
    }
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::EINPROGRESS)
    }
    #[cfg(not(unix))]
    {
        false
    }
}

#[cfg(all(test, not(servercore_loom)))]
mod tests {
    use super::super::harness::{fill, is_cancelled, release_all, Harness};
    use super::super::pool::RECV_BUF;
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn accept_stays_armed_beyond_one_batch() {
        let mut h = Harness::new();
        let (l, addr) = h.listener();
        let op = h.d.accept(l, 1);
        // More than one batch, fewer than the listen backlog (128).
        let n = ACCEPT_BATCH + 36;
        let clients: Vec<TcpStream> =
            (0..n).map(|_| TcpStream::connect(addr).expect("connect")).collect();
        for _ in 0..n {
            let c = h.next();
            assert_eq!(c.owner, 1);
            let CompletionKind::Accept { result, armed } = c.kind else { panic!("{c:?}") };
            assert!(armed);
            result.expect("accepted");
        }
        assert_eq!(h.d.in_flight(), 1);
        h.d.cancel(op);
        let c = h.next();
        let CompletionKind::Accept { result: Err(e), armed: false } = c.kind else {
            panic!("{c:?}")
        };
        assert!(is_cancelled(&e), "{e}");
        assert_eq!(h.d.in_flight(), 0);
        drop(clients);
    }

    #[test]
    fn fairness_cap_lets_both_sockets_progress_in_one_wait() {
        let mut h = Harness::new();
        let (a, mut ca) = h.pair();
        let (b, mut cb) = h.pair();
        assert!(fill(&mut ca) > RECV_BATCH * RECV_BUF);
        assert!(fill(&mut cb) > RECV_BATCH * RECV_BUF);
        let op_a = h.d.recv(a, 1);
        let op_b = h.d.recv(b, 2);
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        let count = |out: &[Completion], owner| {
            out.iter()
                .filter(|c| c.owner == owner)
                .inspect(|c| {
                    assert!(
                        matches!(c.kind, CompletionKind::Recv { result: Ok(Some(_)), armed: true }),
                        "{c:?}"
                    )
                })
                .count()
        };
        let (na, nb) = (count(&out, 1), count(&out, 2));
        assert!((1..=RECV_BATCH).contains(&na), "socket a: {na} chunks in one wait");
        assert!((1..=RECV_BATCH).contains(&nb), "socket b: {nb} chunks in one wait");
        assert_eq!(out.len(), na + nb);
        release_all(&mut h.d, &mut out);
        // Capped, not drained: the next wait continues at once.
        let start = Instant::now();
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert!(start.elapsed() < Duration::from_secs(2), "the capped sockets waited for an edge");
        assert!(count(&out, 1) > 0 && count(&out, 2) > 0, "{out:?}");
        release_all(&mut h.d, &mut out);
        // Both ends come in the next wait, before any further read.
        h.d.cancel(op_a);
        h.d.cancel(op_b);
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert_eq!(out.len(), 2, "{out:?}");
        for c in out.drain(..) {
            let CompletionKind::Recv { result: Err(e), armed: false } = c.kind else {
                panic!("{c:?}")
            };
            assert!(is_cancelled(&e), "{e}");
        }
        assert_eq!(h.d.in_flight(), 0);
    }
}
