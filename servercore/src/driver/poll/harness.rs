//! What the poll-specific tests share: a driver with the completions a test has not looked
//! at yet, connected pairs, and readers of recv completions.

use super::pool::RECV_BUF;
use super::PollDriver;
/// The conformance suite's, shared.
pub(super) use crate::driver::conformance::fill;
use crate::driver::{Completion, CompletionKind, OpId, SockId};
use std::collections::VecDeque;
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

pub(super) const DEADLINE: Duration = Duration::from_secs(20);

/// A driver and the completions it produced that a test has not looked at yet.
pub(super) struct Harness {
    pub(super) d: PollDriver,
    q: VecDeque<Completion>,
}

impl Harness {
    pub(super) fn new() -> Self {
        Harness { d: PollDriver::new().expect("driver"), q: VecDeque::new() }
    }

    /// The next completion, waiting for it; fails the test after the deadline.
    pub(super) fn next(&mut self) -> Completion {
        let start = Instant::now();
        let mut out = Vec::new();
        while self.q.is_empty() {
            assert!(start.elapsed() < DEADLINE, "no completion before the deadline");
            self.d.wait(Some(Duration::from_millis(100)), None, &mut out).expect("wait");
            self.q.extend(out.drain(..));
        }
        self.q.pop_front().expect("not empty")
    }

    pub(super) fn listener(&mut self) -> (SockId, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("local addr");
        (self.d.add_listener(l).expect("add listener"), addr)
    }

    /// A connected pair: the driver's end and a blocking std client.
    pub(super) fn pair(&mut self) -> (SockId, TcpStream) {
        let (l, addr) = self.listener();
        let op = self.d.accept(l, 7);
        let client = TcpStream::connect(addr).expect("connect");
        let c = self.next();
        assert_eq!(c.owner, 7);
        let CompletionKind::Accept { result, armed } = c.kind else { panic!("{c:?}") };
        assert!(armed);
        let s = result.expect("accepted");
        self.d.cancel(op);
        let c = self.next();
        assert!(matches!(c.kind, CompletionKind::Accept { result: Err(_), armed: false }));
        self.d.close(l);
        (self.d.add_stream(s).expect("add stream"), client)
    }

    /// The next completion, which must be a recv's; a chunk's lease is read and
    /// released at once. Checks `more` against the result.
    pub(super) fn next_recv(&mut self) -> (u64, Got) {
        let c = self.next();
        let CompletionKind::Recv { result, armed } = c.kind else { panic!("{c:?}") };
        let got = match result {
            Ok(Some(lease)) => {
                assert!(armed, "a chunk keeps the recv armed");
                assert!(lease.len > 0 && lease.len as usize <= RECV_BUF, "{lease:?}");
                let bytes = self.d.lease(&lease).to_vec();
                assert_eq!(bytes.len(), lease.len as usize);
                self.d.release(lease);
                Got::Bytes(bytes)
            }
            Ok(None) => Got::Closed,
            Err(e) => Got::Failed(e),
        };
        if !matches!(got, Got::Bytes(_)) {
            assert!(!armed, "the end of a recv says so");
        }
        (c.owner, got)
    }

    /// Receives chunks of owner `owner` until `n` bytes arrived.
    pub(super) fn recv_exactly(&mut self, owner: u64, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            match self.next_recv() {
                (o, Got::Bytes(b)) if o == owner => got.extend_from_slice(&b),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got.len(), n, "no more than was sent");
        got
    }

    /// Cancels a standing recv and checks its cancelled end. Chunks of the same owner
    /// read before the cancel may come first: they are dropped.
    pub(super) fn cancel_recv(&mut self, op: OpId, owner: u64) {
        self.d.cancel(op);
        loop {
            match self.next_recv() {
                (o, Got::Bytes(_)) if o == owner => {}
                (o, Got::Failed(e)) if o == owner => {
                    assert!(is_cancelled(&e), "{e}");
                    return;
                }
                other => panic!("{other:?}"),
            }
        }
    }
}

/// What a recv completion brought.
pub(super) enum Got {
    Bytes(Vec<u8>),
    Closed,
    Failed(io::Error),
}

impl std::fmt::Debug for Got {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Got::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Got::Closed => write!(f, "Closed"),
            Got::Failed(e) => write!(f, "Failed({e})"),
        }
    }
}

pub(super) fn is_cancelled(e: &io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ECANCELED)
    }
    #[cfg(not(unix))]
    {
        e.kind() == io::ErrorKind::Interrupted
    }
}

/// Releases the leases of `out` and clears it.
pub(super) fn release_all(d: &mut PollDriver, out: &mut Vec<Completion>) {
    for c in out.drain(..) {
        if let CompletionKind::Recv { result: Ok(Some(lease)), .. } = c.kind {
            d.release(lease);
        }
    }
}

/// Reads and releases the chunks of `out` into `got` by owner (1 or 2), records the
/// ends in `closed`, and clears `out`.
pub(super) fn record(
    d: &mut PollDriver,
    out: &mut Vec<Completion>,
    got: &mut [Vec<u8>; 2],
    closed: &mut [bool; 2],
) {
    for c in out.drain(..) {
        let i = (c.owner - 1) as usize;
        match c.kind {
            CompletionKind::Recv { result: Ok(Some(lease)), armed: true } => {
                got[i].extend_from_slice(d.lease(&lease));
                d.release(lease);
            }
            CompletionKind::Recv { result: Ok(None), armed: false } => closed[i] = true,
            other => panic!("{other:?}"),
        }
    }
}
