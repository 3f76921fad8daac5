//! The receive buffers of a driver: allocated on demand up to a limit, lent out one chunk
//! at a time, and never shrunk.

use crate::driver::RecvLease;

/// Size of a receive buffer: the most bytes one chunk carries.
pub(super) const RECV_BUF: usize = 16 << 10;
/// Most receive buffers the pool allocates (16 MiB): beyond it receiving pauses until
/// leases come back.
pub(super) const POOL_MAX: usize = 1024;

/// The receive buffers of a driver, lent out chunk by chunk.
pub(super) struct Pool {
    bufs: Vec<Box<[u8]>>,
    /// Buffers not lent out, the most recently returned last (taken first: cache-warm).
    free: Vec<u32>,
    /// Which buffers are lent out (guards against a double release).
    lent: Vec<bool>,
    /// Most buffers to allocate ([`POOL_MAX`]; smaller in tests).
    pub(super) max: usize,
}

impl Pool {
    pub(super) fn new() -> Self {
        Pool { bufs: Vec::new(), free: Vec::new(), lent: Vec::new(), max: POOL_MAX }
    }

    /// A buffer for one read, allocating one if none is free; `None` at the limit. The
    /// buffer must be lent out or put back.
    pub(super) fn take(&mut self) -> Option<u32> {
        if let Some(buf) = self.free.pop() {
            return Some(buf);
        }
        if self.bufs.len() >= self.max {
            return None;
        }
        let buf = u32::try_from(self.bufs.len()).ok()?;
        self.bufs.push(vec![0u8; RECV_BUF].into_boxed_slice());
        self.lent.push(false);
        Some(buf)
    }

    /// The memory of a buffer taken for a read.
    pub(super) fn buf_mut(&mut self, buf: u32) -> &mut [u8] {
        &mut self.bufs[buf as usize]
    }

    /// Puts back a buffer taken and not lent out (its read brought no bytes).
    pub(super) fn put_back(&mut self, buf: u32) {
        self.free.push(buf);
    }

    /// Lends out a buffer taken for a read that brought bytes.
    pub(super) fn lend(&mut self, buf: u32) {
        self.lent[buf as usize] = true;
    }

    /// The bytes of a chunk. Panics on a lease this pool did not give.
    pub(super) fn bytes(&self, lease: &RecvLease) -> &[u8] {
        debug_assert!(self.lent[lease.buf as usize], "lease of a buffer not lent out");
        &self.bufs[lease.buf as usize][..lease.len as usize]
    }

    /// Takes a lent-out buffer back; false (and nothing changes) if it is not lent out.
    pub(super) fn give_back(&mut self, buf: u32) -> bool {
        let index = buf as usize;
        let lent = self.lent.get(index).copied().unwrap_or(false);
        debug_assert!(lent, "release of buffer {index}, which is not lent out");
        if !lent {
            tracing::error!("release of receive buffer {index}, which is not lent out: ignored");
            return false;
        }
        self.lent[index] = false;
        self.free.push(buf);
        true
    }

    /// Every buffer is free: none is lent out or taken.
    #[cfg(test)]
    pub(super) fn all_free(&self) -> bool {
        self.free.len() == self.bufs.len()
    }
}

#[cfg(all(test, not(servercore_loom)))]
mod tests {
    use super::super::drive::RECV_BATCH;
    use super::super::harness::{record, Got, Harness, DEADLINE};
    use super::*;
    use std::io::Write;
    use std::time::{Duration, Instant};

    #[test]
    fn take_reuses_the_last_buffer_given_back_and_stops_at_the_limit() {
        let mut pool = Pool::new();
        pool.max = 2;
        let (a, b) = (pool.take().expect("a"), pool.take().expect("b"));
        assert_ne!(a, b);
        assert_eq!(pool.take(), None, "at the limit");
        pool.lend(a);
        pool.put_back(b);
        assert_eq!(pool.take(), Some(b), "a buffer put back is taken again");
        pool.put_back(b);
        assert!(pool.give_back(a));
        assert_eq!(pool.take(), Some(a), "the most recently returned first");
        pool.put_back(a);
        assert!(pool.all_free());
        assert_eq!(pool.bufs.len(), 2);
    }

    #[test]
    fn leases_released_each_turn_reuse_the_pool() {
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let op = h.d.recv(s, 3);
        for turn in 0..200u32 {
            let msg = turn.to_le_bytes().repeat(100);
            client.write_all(&msg).expect("write");
            assert_eq!(h.recv_exactly(3, msg.len()), msg);
        }
        assert!(h.d.pool.bufs.len() <= 2, "the pool grew to {}", h.d.pool.bufs.len());
        assert_eq!(h.d.pool.free.len(), h.d.pool.bufs.len());
        h.cancel_recv(op, 3);
    }

    #[test]
    fn idle_recv_holds_no_buffer() {
        let mut h = Harness::new();
        let (s, _client) = h.pair();
        let op = h.d.recv(s, 3);
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_millis(20)), None, &mut out).expect("wait");
        assert!(out.is_empty());
        assert!(h.d.pool.lent.iter().all(|&lent| !lent));
        assert_eq!(h.d.pool.free.len(), h.d.pool.bufs.len());
        h.cancel_recv(op, 3);
    }

    #[test]
    fn large_transfer_arrives_intact_in_order() {
        const TOTAL: usize = 8 << 20;
        let mut h = Harness::new();
        let (s, mut client) = h.pair();
        let data: Vec<u8> = (0..TOTAL).map(|i| (i % 251) as u8).collect();
        let sent = data.clone();
        let writer = std::thread::spawn(move || {
            for part in sent.chunks(100_000) {
                client.write_all(part).expect("client write");
            }
            // Dropping the client ends the stream.
        });
        h.d.recv(s, 3);
        let mut got = Vec::with_capacity(TOTAL);
        let mut chunks = 0;
        loop {
            match h.next_recv() {
                (3, Got::Bytes(b)) => {
                    got.extend_from_slice(&b);
                    chunks += 1;
                }
                (3, Got::Closed) => break,
                other => panic!("{other:?}"),
            }
        }
        writer.join().expect("writer");
        assert_eq!(got.len(), TOTAL);
        assert!(got == data, "the bytes arrive intact and in order");
        assert!(chunks >= TOTAL / RECV_BUF, "{chunks} chunks");
        assert!(h.d.pool.bufs.len() <= 2 * RECV_BATCH, "the pool grew to {}", h.d.pool.bufs.len());
        assert_eq!(h.d.in_flight(), 0);
    }

    #[test]
    fn dry_pool_pauses_receiving_without_spinning_and_resumes() {
        const EACH: usize = 3 * RECV_BUF;
        let mut h = Harness::new();
        h.d.pool.max = 1;
        let (a, mut ca) = h.pair();
        let (b, mut cb) = h.pair();
        let da: Vec<u8> = (0..EACH).map(|i| (i % 241) as u8).collect();
        let db: Vec<u8> = (0..EACH).map(|i| (i % 239) as u8).collect();
        ca.write_all(&da).expect("write");
        cb.write_all(&db).expect("write");
        drop((ca, cb));
        // Let the bytes land before arming.
        std::thread::sleep(Duration::from_millis(50));
        h.d.recv(a, 1);
        h.d.recv(b, 2);
        let mut out = Vec::new();
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert_eq!(out.len(), 1, "one buffer, one chunk: {out:?}");
        let first = out[0].owner;
        // The lease is held: receiving pauses, and wait blocks rather than spins.
        let mut more = Vec::new();
        let start = Instant::now();
        h.d.wait(Some(Duration::from_millis(100)), None, &mut more).expect("wait");
        assert!(more.is_empty(), "{more:?}");
        assert!(start.elapsed() >= Duration::from_millis(80), "wait returned early");
        // The release resumes receiving, the socket that got nothing first.
        let mut got = [Vec::new(), Vec::new()];
        let mut closed = [false, false];
        let mut turns = 0;
        record(&mut h.d, &mut out, &mut got, &mut closed);
        h.d.wait(Some(Duration::from_secs(5)), None, &mut out).expect("wait");
        assert_eq!(out.len(), 1, "{out:?}");
        assert_ne!(out[0].owner, first, "the starved socket goes first");
        let start = Instant::now();
        while !(closed[0] && closed[1]) {
            assert!(start.elapsed() < DEADLINE, "receiving never resumed");
            record(&mut h.d, &mut out, &mut got, &mut closed);
            h.d.wait(Some(Duration::from_millis(100)), None, &mut out).expect("wait");
            turns += 1;
        }
        record(&mut h.d, &mut out, &mut got, &mut closed);
        assert!(got[0] == da && got[1] == db, "no byte lost or reordered");
        assert!(turns >= 4, "{turns} turns");
        assert_eq!(h.d.pool.bufs.len(), 1);
        assert_eq!(h.d.in_flight(), 0);
    }
}
