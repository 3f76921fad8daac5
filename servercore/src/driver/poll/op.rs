//! Operations: what one is (its kind and memory), how it is started on a socket, cancelled,
//! and failed with its memory handed back.

use super::PollDriver;
use crate::driver::{Completion, CompletionKind, OpId, SendBatch, SockId};
use std::io;
use std::net::SocketAddr;

/// The kind of an operation: a socket holds at most one pending of each.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Accept,
    Recv,
    Send,
    Connect,
}

/// One operation started and not yet completed.
pub(super) struct Op {
    pub(super) owner: u64,
    /// The generation of this use of the slot: an [`OpId`] of a finished operation never
    /// reaches a newer one in the same slot.
    pub(super) gen: u32,
    pub(super) sock: usize,
    /// Queued on `doomed` to complete with an error at the next `wait`.
    pub(super) doomed: bool,
    pub(super) state: OpState,
}

/// What an operation is, with its memory. `Accept` and `Recv` are standing: they complete
/// once per connection or chunk until a completion with `armed == false`.
pub(super) enum OpState {
    Accept,
    Recv,
    Send(SendBatch),
    Connect { addr: SocketAddr, started: bool },
}

impl OpState {
    pub(super) fn kind(&self) -> Kind {
        match self {
            OpState::Accept => Kind::Accept,
            OpState::Recv => Kind::Recv,
            OpState::Send(_) => Kind::Send,
            OpState::Connect { .. } => Kind::Connect,
        }
    }

    /// The completion of this operation with `err`, returning its memory.
    pub(super) fn fail(self, err: io::Error) -> CompletionKind {
        match self {
            OpState::Accept => CompletionKind::Accept { result: Err(err), armed: false },
            OpState::Recv => CompletionKind::Recv { result: Err(err), armed: false },
            OpState::Send(bufs) => CompletionKind::Send { result: Err(err), bufs },
            OpState::Connect { .. } => CompletionKind::Connect { result: Err(err) },
        }
    }
}

/// The error of a cancelled operation.
fn cancelled() -> io::Error {
    #[cfg(unix)]
    {
        io::Error::from_raw_os_error(libc::ECANCELED)
    }
    #[cfg(not(unix))]
    {
        io::Error::new(io::ErrorKind::Interrupted, "operation cancelled")
    }
}

impl PollDriver {
    /// Records a new operation on `sock` and queues the socket for the next `wait`.
    fn start(&mut self, sock: SockId, owner: u64, state: OpState) -> OpId {
        let kind = state.kind();
        let gen = self.next_gen;
        self.next_gen = crate::driver::next_gen(gen);
        let key = self.ops.insert(Op { owner, gen, sock: sock.0, doomed: false, state });
        let problem = match self.socks.get_mut(sock.0) {
            None => Some(io::Error::new(io::ErrorKind::NotFound, "unknown socket")),
            Some(s) => {
                let fits = s.takes(kind);
                let slot = s.slot(kind);
                if !fits {
                    Some(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "operation does not apply to this kind of socket",
                    ))
                } else if slot.is_some() {
                    tracing::warn!("a {kind:?} is already pending on socket {}", sock.0);
                    Some(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        "an operation of this kind is already pending on the socket",
                    ))
                } else {
                    *slot = Some(key);
                    if !s.queued {
                        s.queued = true;
                        self.dirty.push(sock.0);
                    }
                    None
                }
            }
        };
        if let Some(err) = problem {
            self.ops[key].doomed = true;
            self.doomed.push((key, err));
        }
        OpId::new(key, gen)
    }

    /// Stays armed until cancelled or an error (`armed == false`). Accepted streams come
    /// back non-blocking (as `mio` accepts them); `add_stream` of either backend sets the
    /// mode it needs.
    pub(crate) fn accept(&mut self, sock: SockId, owner: u64) -> OpId {
        self.start(sock, owner, OpState::Accept)
    }

    /// Stays armed, one completion per chunk, until end of stream, an error or a cancel
    /// (`armed == false`).
    pub(crate) fn recv(&mut self, sock: SockId, owner: u64) -> OpId {
        self.start(sock, owner, OpState::Recv)
    }

    pub(crate) fn send(&mut self, sock: SockId, owner: u64, bufs: SendBatch) -> OpId {
        self.start(sock, owner, OpState::Send(bufs))
    }

    pub(crate) fn connect(&mut self, sock: SockId, owner: u64, addr: SocketAddr) -> OpId {
        self.start(sock, owner, OpState::Connect { addr, started: false })
    }

    /// Cancels `op` if it is still in flight; an id whose operation has finished (its slot
    /// perhaps reused since) is ignored.
    pub(crate) fn cancel(&mut self, op: OpId) {
        if let Some(o) = self.ops.get_mut(op.slot()) {
            if o.gen == op.gen() && !o.doomed {
                o.doomed = true;
                self.doomed.push((op.slot(), cancelled()));
            }
        }
    }

    /// Cancels the operation in slot `key`, whatever its generation.
    pub(super) fn cancel_slot(&mut self, key: usize) {
        if let Some(o) = self.ops.get(key) {
            self.cancel(OpId::new(key, o.gen));
        }
    }

    /// Completes the operations queued on `doomed` with their errors, taking each off its
    /// socket.
    pub(super) fn complete_doomed(&mut self, out: &mut Vec<Completion>) {
        for (key, err) in std::mem::take(&mut self.doomed) {
            let op = self.ops.remove(key);
            let kind = op.state.kind();
            if let Some(s) = self.socks.get_mut(op.sock) {
                let slot = s.slot(kind);
                if *slot == Some(key) {
                    *slot = None;
                }
            }
            out.push(Completion { owner: op.owner, kind: op.state.fail(err) });
        }
    }
}

#[cfg(all(test, not(servercore_loom)))]
mod tests {
    use super::super::harness::{Got, Harness};
    use super::*;
    use std::io::Write;

    #[test]
    fn unknown_socket_fails_the_operation() {
        let mut h = Harness::new();
        h.d.recv(SockId(12345), 3);
        match h.next_recv() {
            (3, Got::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(h.d.in_flight(), 0);
    }

    #[test]
    fn second_recv_on_a_socket_fails_alone() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let op = h.d.recv(s, 3);
        h.d.recv(s, 4);
        match h.next_recv() {
            (4, Got::Failed(e)) => assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}"),
            other => panic!("{other:?}"),
        }
        client.write_all(b"still armed").expect("write");
        assert_eq!(h.recv_exactly(3, 11), b"still armed");
        h.cancel_recv(op, 3);
    }
}
