//! One test suite against the backend contract of [`super`], run on every backend: io_uring,
//! io_uring without the buffer ring, io_uring as on an old kernel (no EXT_ARG, no multishot
//! poll, no DEFER_TASKRUN), and poll. The io_uring runs skip, with a note, where io_uring
//! is not usable. Tests wait on events (a loop on `wait` with a deadline), never on sleeps.

use super::*;
use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Flavor {
    Uring,
    UringNoBufring,
    UringOld,
    Poll,
}

/// A small configuration: few buffers, a tiny ring.
fn config(f: Flavor) -> DriverConfig {
    let mut c = DriverConfig {
        recv_buffers: 64,
        recv_buffer_size: 4096,
        sq_entries: 1024,
        uring_off: UringSwitches::default(),
    };
    match f {
        Flavor::UringNoBufring => c.uring_off.bufring = true,
        Flavor::UringOld => {
            c.uring_off.ext_arg = true;
            c.uring_off.multishot_poll = true;
            c.uring_off.defer_taskrun = true;
        }
        Flavor::Uring | Flavor::Poll => {}
    }
    c
}

/// Long enough for anything on loopback; only reached when a test fails.
const DEADLINE: Duration = Duration::from_secs(10);

struct H {
    d: Driver,
    flavor: Flavor,
    ready: VecDeque<Completion>,
}

impl H {
    /// A driver of this flavor, or `None` (with a note) when io_uring is not usable here.
    fn new(f: Flavor, c: DriverConfig) -> Option<H> {
        let backend = match f {
            Flavor::Poll => Backend::Poll,
            _ => {
                if let Err(why) = select::probe_io_uring() {
                    eprintln!("skipped: io_uring is not usable here ({why})");
                    return None;
                }
                Backend::IoUring
            }
        };
        let d = Driver::new(backend, &c).expect("driver");
        Some(H { d, flavor: f, ready: VecDeque::new() })
    }

    fn poll_set_pool_max(&mut self, n: usize) {
        if let Driver::Poll(p) = &mut self.d {
            p.set_pool_max(n);
        }
    }

    /// On poll, whether every buffer of the receive pool is back (none lent out or taken);
    /// true on the other backends.
    fn poll_pool_all_free(&self) -> bool {
        match &self.d {
            Driver::Poll(p) => p.pool_all_free(),
            #[allow(unreachable_patterns)]
            _ => true,
        }
    }

    /// One `wait` with this timeout; its completions join `ready`.
    fn turn(&mut self, timeout: Duration) {
        let mut out = Vec::new();
        self.d.wait(Some(timeout), None, &mut out).expect("wait");
        self.ready.extend(out);
    }

    /// The next completion (waiting for it up to the deadline).
    fn next(&mut self) -> Completion {
        let end = Instant::now() + DEADLINE;
        while self.ready.is_empty() {
            assert!(Instant::now() < end, "no completion within {DEADLINE:?}");
            self.turn(Duration::from_millis(100));
        }
        self.ready.pop_front().unwrap()
    }

    fn listener(&mut self) -> (SockId, SocketAddr) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().unwrap();
        (self.d.add_listener(l).expect("add listener"), addr)
    }

    /// A connected pair: the driver's end and a blocking std client.
    fn pair(&mut self) -> (SockId, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let client = TcpStream::connect(l.local_addr().unwrap()).expect("connect");
        let (server, _) = l.accept().expect("accept");
        (self.d.add_stream(server).expect("add stream"), client)
    }

    /// Reads received bytes of `owner` until `n` arrived, releasing each lease.
    fn recv_exactly(&mut self, owner: u64, n: usize) -> Vec<u8> {
        let mut got = Vec::new();
        while got.len() < n {
            let c = self.next();
            assert_eq!(c.owner, owner, "{c:?}");
            match c.kind {
                CompletionKind::Recv { result: Ok(Some(lease)), armed: true } => {
                    assert!(lease.len > 0, "{lease:?}");
                    got.extend_from_slice(self.d.lease(&lease));
                    self.d.release(lease);
                }
                other => panic!("expected bytes, got {other:?}"),
            }
        }
        assert_eq!(got.len(), n, "more bytes than sent");
        got
    }

    /// Cancels a standing recv of `owner` and checks its end: `ECANCELED`, or (not on poll,
    /// whose end of a cancelled recv is always `ECANCELED`) a last chunk that won the race.
    /// Chunks read before the cancel took effect may come first: they are released.
    fn cancel_recv(&mut self, op: OpId, owner: u64) {
        self.d.cancel(op);
        loop {
            let c = self.next();
            assert_eq!(c.owner, owner, "{c:?}");
            match c.kind {
                CompletionKind::Recv { result: Ok(Some(lease)), armed } => {
                    self.d.release(lease);
                    if !armed {
                        assert_ne!(self.flavor, Flavor::Poll, "poll's cancelled end is ECANCELED");
                        return;
                    }
                }
                CompletionKind::Recv { result: Err(e), armed: false } => {
                    assert!(is_cancelled(&e), "{e}");
                    return;
                }
                other => panic!("expected the end of a cancelled recv, got {other:?}"),
            }
        }
    }

    /// One send of `bufs` (owner 4) and its completion: the result and the buffers back.
    fn send(&mut self, s: SockId, bufs: SendBatch) -> (io::Result<usize>, SendBatch) {
        self.d.send(s, 4, bufs);
        let c = self.next();
        assert_eq!(c.owner, 4);
        match c.kind {
            CompletionKind::Send { result, bufs } => (result, bufs),
            other => panic!("{other:?}"),
        }
    }

    /// A new stream of the driver connecting to `addr` (owner 5), and the connect's result.
    fn connect(&mut self, addr: SocketAddr) -> (SockId, io::Result<()>) {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let s = self.d.add_stream(TcpStream::from(sock)).expect("add stream");
        self.d.connect(s, 5, addr);
        let c = self.next();
        assert_eq!(c.owner, 5);
        match c.kind {
            CompletionKind::Connect { result } => (s, result),
            other => panic!("{other:?}"),
        }
    }

    /// Releases the leases of the ready completions and clears them.
    fn release_ready(&mut self) {
        for c in self.ready.drain(..) {
            if let CompletionKind::Recv { result: Ok(Some(lease)), .. } = c.kind {
                self.d.release(lease);
            }
        }
    }
}

fn is_cancelled(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::ECANCELED)
}

/// Fills the pipe from `client` to the driver until the client's writes would block;
/// the bytes written.
pub(super) fn fill(client: &mut TcpStream) -> usize {
    client.set_nonblocking(true).expect("nonblocking");
    let block = [0x5au8; 64 << 10];
    let mut written = 0;
    loop {
        match client.write(&block) {
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return written,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("client write: {e}"),
        }
    }
}

/// `n` bytes of a pattern that shows a lost, repeated or reordered byte.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// The pattern in `chunk`-byte buffers.
fn batch(data: &[u8], chunk: usize) -> SendBatch {
    data.chunks(chunk).map(Bytes::copy_from_slice).collect()
}

/// Drops the first `n` bytes of a batch (a short write's resume).
fn advance(bufs: &mut SendBatch, mut n: usize) {
    while n > 0 {
        let first = bufs.front_mut().expect("advanced past the end");
        if first.len() <= n {
            n -= first.len();
            bufs.pop_front();
        } else {
            let _ = first.split_to(n);
            n = 0;
        }
    }
}

/// Sets the io_uring testing hook that fails every `io_uring_enter` with `errno` (nothing
/// on poll).
fn set_fail_submit(d: &mut Driver, errno: Option<i32>) {
    #[cfg(target_os = "linux")]
    if let Driver::Uring(u) = d {
        u.fail_submit = errno;
    }
}

/// Set in the child process that [`run_alone`] starts.
const ALONE_ENV: &str = "CONFORMANCE_RUN_ALONE";

/// For a test that counts the process's open files, which means nothing while other tests
/// run: true in a child process of the test binary running only this flavor's test `name`
/// (the test goes on there); else starts that child, checks that it ran the test and
/// passed, and returns false.
fn run_alone(f: Flavor, name: &str) -> bool {
    if std::env::var_os(ALONE_ENV).is_some() {
        return true;
    }
    let module = match f {
        Flavor::Uring => "uring",
        Flavor::UringNoBufring => "uring_no_bufring",
        Flavor::UringOld => "uring_old_kernel",
        Flavor::Poll => "poll",
    };
    // The test's name as the harness knows it: the module path without the crate.
    let here = module_path!().split_once("::").map_or(module_path!(), |(_, rest)| rest);
    let test = format!("{here}::{module}::{name}");
    let exe = std::env::current_exe().expect("the test binary");
    let out = std::process::Command::new(exe)
        .args([test.as_str(), "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE_ENV, "1")
        .output()
        .expect("start the test binary");
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{test}, run alone, failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "{test} did not run alone:\n{stdout}\n{stderr}");
    false
}

/// The process's open file descriptors.
/// A listener whose accept queue is full (backlog 0, one connection waiting), and its
/// address: a connect to it stays pending (the SYN is dropped). Kept alive while it
/// matters.
fn full_listener() -> ((socket2::Socket, TcpStream), SocketAddr) {
    let full = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    full.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    full.listen(0).unwrap();
    let addr = full.local_addr().unwrap().as_socket().unwrap();
    let filler = TcpStream::connect(addr).unwrap();
    ((full, filler), addr)
}

/// A harness with four receive buffers of 1 KiB (on poll, a pool of at most four): one
/// held lease per buffer starves the receives.
fn four_buffers(f: Flavor) -> Option<H> {
    let mut c = config(f);
    c.recv_buffers = 4;
    c.recv_buffer_size = 1024;
    let mut h = H::new(f, c)?;
    h.poll_set_pool_max(4);
    Some(h)
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").expect("/proc/self/fd").count()
}

/// Reads from `peer` until the connection ends (end of stream or a reset); fails the test
/// if it is still open at the deadline.
fn assert_closed(mut peer: TcpStream) {
    peer.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match peer.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the connection was not closed: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------- the suite

fn accept_several_then_cancel_ends_it(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (l, addr) = h.listener();
    let mut op = h.d.accept(l, 1);
    let clients: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let mut accepted = 0;
    while accepted < clients.len() {
        let c = h.next();
        assert_eq!(c.owner, 1);
        let CompletionKind::Accept { result, armed } = c.kind else { panic!("{c:?}") };
        result.expect("accepted");
        accepted += 1;
        if !armed {
            op = h.d.accept(l, 1); // a backend may end an accept; the caller re-arms
        }
    }
    h.d.cancel(op);
    let c = h.next();
    let CompletionKind::Accept { result, armed: false } = c.kind else { panic!("{c:?}") };
    assert!(is_cancelled(&result.unwrap_err()));
    h.turn(Duration::from_millis(50));
    assert!(h.ready.is_empty(), "after armed == false: {:?}", h.ready);
    assert_eq!(h.d.in_flight(), 0);
}

fn standing_recv_in_order_then_peer_close(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, mut client) = h.pair();
    h.d.recv(s, 2);
    let data = pattern(100_000);
    for part in data.chunks(7_000) {
        client.write_all(part).unwrap();
    }
    assert_eq!(h.recv_exactly(2, data.len()), data);
    assert_eq!(h.d.in_flight(), 1, "one standing recv however many chunks: leases are not ops");
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let c = h.next();
    assert!(matches!(c.kind, CompletionKind::Recv { result: Ok(None), armed: false }), "{c:?}");
    assert_eq!(h.d.in_flight(), 0);
    h.d.close(s);
}

/// Every buffer leased and held: receiving pauses (io_uring: ENOBUFS ends the multishot)
/// and resumes once they come back, with no byte lost or repeated.
fn starvation_pauses_and_resumes(f: Flavor) {
    let Some(mut h) = four_buffers(f) else { return };
    let (s, mut client) = h.pair();
    h.d.recv(s, 3);
    let data = pattern(256 << 10);
    let writer = {
        let data = data.clone();
        let mut client = client.try_clone().unwrap();
        std::thread::spawn(move || client.write_all(&data).unwrap())
    };
    let mut got = Vec::new();
    let mut held = Vec::new();
    // Hold the first four leases (all the buffers there are, except on the pool path of
    // io_uring without a buffer ring, which gives each armed receive its own).
    while held.len() < 4 {
        let c = h.next();
        let CompletionKind::Recv { result: Ok(Some(lease)), armed: true } = c.kind else {
            panic!("{c:?}")
        };
        got.extend_from_slice(h.d.lease(&lease));
        held.push(lease);
    }
    // A few turns with every buffer held: nothing may be lost meanwhile.
    for _ in 0..3 {
        h.turn(Duration::from_millis(20));
    }
    while let Some(c) = h.ready.pop_front() {
        let CompletionKind::Recv { result: Ok(Some(lease)), armed: true } = c.kind else {
            panic!("{c:?}")
        };
        got.extend_from_slice(h.d.lease(&lease));
        held.push(lease);
    }
    for lease in held {
        h.d.release(lease);
    }
    // The path this test is about was taken: the receive was parked for want of a buffer.
    let k = h.d.counters();
    match f {
        // ENOBUFS ended the multishot receive (parked until buffers came back); poll found
        // its pool dry.
        Flavor::Uring | Flavor::UringOld | Flavor::Poll => assert!(k.starved > 0, "{k:?}"),
        // The pool path gives each armed receive its own buffer: nothing starves.
        Flavor::UringNoBufring => assert_eq!(k.starved, 0, "{k:?}"),
    }
    let rest = h.recv_exactly(3, data.len() - got.len());
    got.extend_from_slice(&rest);
    assert!(got == data, "bytes lost, repeated or reordered");
    writer.join().unwrap();
    drop(client.shutdown(std::net::Shutdown::Write));
    let c = h.next();
    assert!(matches!(c.kind, CompletionKind::Recv { result: Ok(None), armed: false }), "{c:?}");
    let _ = client.flush();
}

/// A batch larger than the socket buffers to a peer that does not read yet: the send is
/// short, and resuming from where it stopped delivers every byte in order.
fn short_writes_resume(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, client) = h.pair();
    let data = pattern(48 << 20);
    let mut bufs = batch(&data, 1 << 20);
    h.d.send(s, 4, bufs.clone());
    let c = h.next();
    let CompletionKind::Send { result, bufs: back } = c.kind else { panic!("{c:?}") };
    let first = result.expect("send");
    assert_eq!(back.len(), bufs.len(), "the buffers come back");
    assert!(first < data.len(), "a send larger than the socket buffers was not short");
    let reader = std::thread::spawn(move || {
        let mut client = client;
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        got
    });
    let mut sent = first;
    advance(&mut bufs, first);
    while sent < data.len() {
        h.d.send(s, 4, bufs.clone());
        let c = h.next();
        let CompletionKind::Send { result, .. } = c.kind else { panic!("{c:?}") };
        let n = result.expect("send");
        sent += n;
        advance(&mut bufs, n);
    }
    h.d.close(s);
    let got = reader.join().unwrap();
    assert!(got == data, "bytes lost, repeated or reordered");
}

/// Cancelling a pending operation of each kind gives exactly one completion, with its
/// memory, and nothing after it.
fn cancel_each_kind(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    // accept with nobody connecting
    let (l, _) = h.listener();
    let a = h.d.accept(l, 10);
    // recv on an idle socket
    let (r, _rc) = h.pair();
    let rv = h.d.recv(r, 11);
    // send to a peer that does not read, after its buffers are full
    let (s, _sc) = h.pair();
    let big = batch(&pattern(48 << 20), 1 << 20);
    h.d.send(s, 12, big.clone());
    let c = h.next();
    assert!(matches!(c.kind, CompletionKind::Send { result: Ok(_), .. }), "{c:?}");
    let sv = h.d.send(s, 12, big.clone());
    // connect to a listener whose accept queue is full: the SYN is dropped, the connect
    // stays pending
    let (_full, full_addr) = full_listener();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let cs = h.d.add_stream(TcpStream::from(sock)).unwrap();
    let cv = h.d.connect(cs, 13, full_addr);
    // Let every operation start, then cancel them all.
    h.turn(Duration::from_millis(20));
    assert!(h.ready.is_empty(), "an operation that should pend completed: {:?}", h.ready);
    for op in [a, rv, sv, cv] {
        h.d.cancel(op);
    }
    let mut seen = HashMap::new();
    while seen.len() < 4 {
        let c = h.next();
        assert!(seen.insert(c.owner, ()).is_none(), "two completions for {}", c.owner);
        match c.kind {
            CompletionKind::Accept { result, armed } => {
                assert!(!armed && is_cancelled(&result.unwrap_err()));
            }
            CompletionKind::Recv { result, armed } => {
                assert!(!armed && is_cancelled(&result.unwrap_err()));
            }
            // A send may have written some bytes before the cancel took effect.
            CompletionKind::Send { result, bufs } => {
                assert_eq!(bufs.len(), big.len(), "the buffers come back");
                if let Err(e) = result {
                    assert!(is_cancelled(&e), "{e}");
                }
            }
            CompletionKind::Connect { result } => {
                assert!(is_cancelled(&result.unwrap_err()));
            }
        }
    }
    h.turn(Duration::from_millis(50));
    assert!(h.ready.is_empty(), "after the final completions: {:?}", h.ready);
    assert_eq!(h.d.in_flight(), 0);
}

/// Cancels racing completions: each operation completes exactly once, whichever wins; and
/// a cancel with the id of a finished operation does not reach the newer operation that
/// reuses its slot.
fn cancel_races_completion_and_stale_ids_are_ignored(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let mut ends = HashMap::new();
    let mut keep = Vec::new();
    for owner in 0..16u64 {
        let (s, mut client) = h.pair();
        client.write_all(b"ready").unwrap();
        if owner % 2 == 0 {
            h.turn(Duration::ZERO); // sometimes the bytes are in the socket first
        }
        let op = h.d.recv(s, owner);
        h.d.cancel(op);
        keep.push((s, client));
    }
    while ends.len() < 16 {
        let c = h.next();
        match c.kind {
            CompletionKind::Recv { result: Ok(Some(lease)), armed } => {
                h.d.release(lease);
                if !armed {
                    assert!(ends.insert(c.owner, ()).is_none(), "two ends for {}", c.owner);
                }
            }
            CompletionKind::Recv { result, armed: false } => {
                let e = result.unwrap_err();
                assert!(is_cancelled(&e), "{e}");
                assert!(ends.insert(c.owner, ()).is_none(), "two ends for {}", c.owner);
            }
            other => panic!("{other:?}"),
        }
    }
    h.turn(Duration::from_millis(50));
    assert!(h.ready.is_empty(), "after the final completions: {:?}", h.ready);
    // The slot of a finished operation, reused.
    let (s1, _c1) = h.pair();
    let old = h.d.recv(s1, 100);
    h.d.cancel(old);
    let c = h.next();
    assert!(matches!(c.kind, CompletionKind::Recv { armed: false, .. }), "{c:?}");
    let (s2, mut c2) = h.pair();
    let new = h.d.recv(s2, 200);
    assert_eq!(old.slot(), new.slot(), "the test wants the slot reused");
    h.d.cancel(old); // stale: must not touch `new`
    h.d.cancel(old);
    c2.write_all(b"still here").unwrap();
    assert_eq!(h.recv_exactly(200, 10), b"still here");
    c2.write_all(b"and here").unwrap();
    assert_eq!(h.recv_exactly(200, 8), b"and here");
    h.d.cancel(new);
    let c = h.next();
    assert_eq!(c.owner, 200);
    assert!(matches!(c.kind, CompletionKind::Recv { armed: false, .. }), "{c:?}");
}

/// Dropping a driver with operations of every kind in flight returns soon (the backend
/// cancels and reaps them, or leaks their memory), closes every socket it owned (the peers
/// see it) and leaves no file open. On io_uring, soon means without waiting out the
/// teardown's one-second limit: every operation was reaped. Runs alone (it counts the
/// process's files).
fn drop_with_operations_in_flight(f: Flavor) {
    if !run_alone(f, "drop_with_operations_in_flight") {
        return;
    }
    let fds_before = open_fds();
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (l, _) = h.listener();
    h.d.accept(l, 1);
    let (r, rc) = h.pair();
    h.d.recv(r, 2);
    let (s, sc) = h.pair();
    let big = batch(&pattern(48 << 20), 1 << 20);
    h.d.send(s, 3, big.clone());
    h.next();
    h.d.send(s, 3, big);
    let (r2, mut rc2) = h.pair();
    h.d.recv(r2, 4);
    rc2.write_all(b"unread").unwrap();
    // A connect to a listener whose accept queue is full stays pending.
    let (full, full_addr) = full_listener();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let cs = h.d.add_stream(TcpStream::from(sock)).unwrap();
    h.d.connect(cs, 5, full_addr);
    h.turn(Duration::from_millis(20));
    assert_eq!(h.d.in_flight(), 5, "every operation pending: {:?}", h.ready);
    // Leases held at drop are the driver's own memory.
    let started = Instant::now();
    drop(h);
    let took = started.elapsed();
    // Not a performance bound: a correct teardown takes milliseconds. On io_uring, one that
    // does not reap every cancelled operation waits out its full second.
    let bound = match f {
        Flavor::Poll => Duration::from_secs(2),
        _ => Duration::from_millis(900),
    };
    assert!(took < bound, "{f:?}: dropped in {took:?}");
    for peer in [rc, sc, rc2] {
        assert_closed(peer);
    }
    drop(full);
    assert_eq!(open_fds(), fds_before, "files left open (the test's own are closed)");
}

/// A tiny ring: more entries pushed than the submission queue holds, more completions
/// ready than the completion queue holds; each arrives exactly once.
fn full_submission_and_completion_queues(f: Flavor) {
    let mut c = config(f);
    c.sq_entries = 4; // completion queue: 16
    c.recv_buffers = 256;
    c.recv_buffer_size = 512;
    let Some(mut h) = H::new(f, c) else { return };
    let n = 64u64;
    let mut clients = Vec::new();
    for owner in 0..n {
        let (s, client) = h.pair();
        clients.push((s, client));
        h.d.recv(s, owner); // 64 entries into a queue of 4, before any wait
    }
    // Every socket readable at once: 64 completions for a queue of 16.
    for (_, client) in &mut clients {
        client.write_all(b"x").unwrap();
    }
    let mut got = vec![0usize; n as usize];
    while got.iter().sum::<usize>() < n as usize {
        let c = h.next();
        let CompletionKind::Recv { result: Ok(Some(lease)), armed: true } = c.kind else {
            panic!("{c:?}")
        };
        got[c.owner as usize] += lease.len as usize;
        h.d.release(lease);
    }
    assert!(got.iter().all(|&b| b == 1), "{got:?}");
    let uring = f != Flavor::Poll; // poll has no submission or completion queue
    if uring {
        // The paths this test is about: entries pushed into a full submission queue, and
        // completions beyond the completion queue (kept in the kernel's overflow list).
        let k = h.d.counters();
        assert!(k.sq_full > 0, "the submission queue never filled: {k:?}");
        assert!(k.cq_overflow > 0, "the completion queue never overflowed: {k:?}");
    }
    // A kernel that takes no more entries (EBUSY; recent kernels no longer refuse them for
    // a backed-up completion queue, so the testing hook plays that kernel): entries wait
    // in the driver's overflow queue, then go in, in order, each completing once.
    set_fail_submit(&mut h.d, Some(libc::EBUSY));
    for (owner, (s, _)) in clients.iter().enumerate() {
        h.d.send(*s, n + owner as u64, [Bytes::from_static(b"y")].into_iter().collect());
    }
    if uring {
        for _ in 0..3 {
            h.turn(Duration::from_millis(5));
        }
        assert!(h.ready.is_empty(), "completed while the kernel took nothing: {:?}", h.ready);
        let k = h.d.counters();
        assert!(k.busy > 0 && k.overflowed >= n - 4, "the overflow queue was not used: {k:?}");
    }
    set_fail_submit(&mut h.d, None);
    let mut sent = vec![false; n as usize];
    while !sent.iter().all(|&e| e) {
        let c = h.next();
        let CompletionKind::Send { result, bufs } = c.kind else { panic!("{c:?}") };
        assert_eq!(result.expect("send"), 1);
        assert_eq!(bufs.len(), 1, "the buffers come back");
        assert!(!std::mem::replace(&mut sent[(c.owner - n) as usize], true), "two ends");
    }
    for (_, client) in &mut clients {
        let mut y = [0u8; 1];
        client.read_exact(&mut y).expect("read");
        assert_eq!(&y, b"y");
    }
    // And every end exactly once.
    for (_, client) in &mut clients {
        client.shutdown(std::net::Shutdown::Write).unwrap();
    }
    let mut ended = vec![false; n as usize];
    while !ended.iter().all(|&e| e) {
        let c = h.next();
        assert!(matches!(c.kind, CompletionKind::Recv { result: Ok(None), armed: false }));
        assert!(!std::mem::replace(&mut ended[c.owner as usize], true), "two ends");
    }
    h.turn(Duration::from_millis(20));
    assert!(h.ready.is_empty(), "{:?}", h.ready);
    assert_eq!(h.d.in_flight(), 0);
}

/// Many wake-ups, then an idle wait blocks until its timeout: the wake-up signal is
/// consumed, not re-reported every turn (a busy loop). Counts turns, not time.
fn idle_wait_blocks_after_many_wakes(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let waker = h.d.waker();
    let t = std::thread::spawn(move || {
        for _ in 0..1000 {
            waker.wake();
        }
    });
    t.join().unwrap();
    // The first turns take the wake-ups; then a wait must sleep its full timeout.
    let timeout = Duration::from_millis(200);
    let mut turns = 0;
    loop {
        let started = Instant::now();
        h.turn(timeout);
        turns += 1;
        assert!(h.ready.is_empty(), "{:?}", h.ready);
        if started.elapsed() >= timeout {
            break;
        }
        assert!(turns < 10, "idle waits keep returning early: a busy loop");
    }
    // A wake-up after the reset wakes a blocked wait again.
    let waker = h.d.waker();
    let t = std::thread::spawn(move || waker.wake());
    let started = Instant::now();
    h.turn(DEADLINE);
    assert!(started.elapsed() < DEADLINE, "a wake-up was lost");
    t.join().unwrap();
}

/// A driver whose only entries are its own (the wake-up poll, a timed wait's timer on
/// kernels without EXT_ARG) has no operation in flight and drops at once.
fn internal_entries_are_not_operations(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    h.turn(Duration::from_millis(5));
    // A wait ended by a wake-up, its timer still pending.
    let waker = h.d.waker();
    let t = std::thread::spawn(move || waker.wake());
    h.turn(DEADLINE);
    t.join().unwrap();
    assert_eq!(h.d.in_flight(), 0);
    let started = Instant::now();
    drop(h);
    // Not a performance bound: a teardown that waits for its own entries takes its full
    // second (and then leaks the receive buffers).
    assert!(started.elapsed() < Duration::from_millis(900), "{:?}", started.elapsed());
}

/// A gather send of several buffers: all its bytes, in order, and the buffers back unchanged.
fn gather_send_arrives_in_order(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, mut client) = h.pair();
    let bufs: SendBatch =
        [&b"abc"[..], b"defg", b"hi"].into_iter().map(Bytes::from_static).collect();
    let (result, back) = h.send(s, bufs.clone());
    assert_eq!(result.expect("send"), 9);
    assert_eq!(back, bufs);
    let mut got = [0u8; 9];
    client.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"abcdefghi");
}

/// A connect to a listener establishes a connection that carries bytes both ways.
fn connect_to_a_listener(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (s, result) = h.connect(addr);
    result.expect("connected");
    let (mut peer, _) = l.accept().expect("accept");
    let (result, _) = h.send(s, [Bytes::from_static(b"ping")].into_iter().collect());
    assert_eq!(result.expect("send"), 4);
    let mut got = [0u8; 4];
    peer.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ping");
    peer.write_all(b"pong").expect("write");
    let op = h.d.recv(s, 3);
    assert_eq!(h.recv_exactly(3, 4), b"pong");
    h.cancel_recv(op, 3);
    h.d.close(s);
}

/// A connect to a port nobody listens on fails with `ConnectionRefused`.
fn connect_refused(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let addr = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let (s, result) = h.connect(addr);
    let e = result.expect_err("nobody listens");
    assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    assert_eq!(h.d.in_flight(), 0);
    h.d.close(s);
}

/// A recv armed after the peer sent and closed: the bytes, then the end, then nothing.
fn peer_close_ends_the_recv(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, mut client) = h.pair();
    client.write_all(b"bye").expect("write");
    drop(client);
    h.d.recv(s, 3);
    assert_eq!(h.recv_exactly(3, 3), b"bye");
    let c = h.next();
    assert_eq!(c.owner, 3);
    assert!(matches!(c.kind, CompletionKind::Recv { result: Ok(None), armed: false }), "{c:?}");
    assert_eq!(h.d.in_flight(), 0);
    assert!(h.poll_pool_all_free(), "the end holds no buffer");
    // Nothing more comes.
    h.turn(Duration::from_millis(20));
    assert!(h.ready.is_empty(), "{:?}", h.ready);
    h.d.close(s);
}

/// Sending to a peer that has gone fails, sooner or later, with a broken pipe or a reset,
/// and the buffers come back.
fn send_to_a_closed_peer_fails(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, client) = h.pair();
    client.shutdown(std::net::Shutdown::Both).expect("shutdown");
    drop(client);
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < DEADLINE, "sending to a closed peer never failed");
        match h.send(s, [Bytes::from_static(&[0u8; 4096])].into_iter().collect()) {
            (Ok(_), _) => continue,
            (Err(e), bufs) => {
                assert_eq!(bufs.len(), 1);
                assert!(
                    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset),
                    "{e}"
                );
                break;
            }
        }
    }
}

/// A pending recv cancelled twice ends once, with `ECANCELED`; cancelling it after its end
/// does nothing.
fn cancel_ends_the_recv(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, _client) = h.pair();
    let op = h.d.recv(s, 9);
    assert_eq!(h.d.in_flight(), 1);
    // Let the recv find nothing to read first, so it really is pending.
    h.turn(Duration::ZERO);
    assert!(h.ready.is_empty(), "{:?}", h.ready);
    h.d.cancel(op);
    h.d.cancel(op);
    let c = h.next();
    assert_eq!(c.owner, 9);
    let CompletionKind::Recv { result: Err(e), armed: false } = c.kind else { panic!("{c:?}") };
    assert!(is_cancelled(&e), "{e}");
    assert_eq!(h.d.in_flight(), 0);
    // Cancelling a finished operation does nothing.
    h.d.cancel(op);
    h.turn(Duration::ZERO);
    assert!(h.ready.is_empty(), "{:?}", h.ready);
}

/// Unread bytes on a socket with no recv pending do not make `wait` return early.
fn ready_socket_without_an_op_does_not_spin(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (_s, mut client) = h.pair();
    client.write_all(b"unread").expect("write");
    // Let the readable edge be seen with no recv pending.
    h.turn(Duration::from_millis(10));
    let start = Instant::now();
    h.turn(Duration::from_millis(60));
    assert!(h.ready.is_empty(), "{:?}", h.ready);
    assert!(start.elapsed() >= Duration::from_millis(50), "wait returned early");
}

/// A recv cancelled while its socket still holds unread bytes (on poll: a socket capped by
/// the fairness limit): once its end is in, `wait` blocks.
fn cancelled_recv_on_a_capped_socket_does_not_spin(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, mut client) = h.pair();
    fill(&mut client);
    let op = h.d.recv(s, 3);
    h.turn(Duration::from_secs(5));
    assert!(!h.ready.is_empty());
    h.release_ready();
    h.cancel_recv(op, 3);
    // Still readable, nothing pending: wait blocks.
    h.turn(Duration::from_millis(10));
    assert!(h.ready.is_empty(), "{:?}", h.ready);
    let start = Instant::now();
    h.turn(Duration::from_millis(60));
    assert!(h.ready.is_empty(), "{:?}", h.ready);
    assert!(start.elapsed() >= Duration::from_millis(50), "wait returned early");
}

/// A wake-up from another thread ends a `wait` without a timeout, whether it lands before
/// or during the wait; again and again.
fn waker_wakes_a_blocked_wait(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    for _ in 0..3 {
        let waker = h.d.waker();
        let t = std::thread::spawn(move || waker.wake());
        let mut out = Vec::new();
        h.d.wait(None, None, &mut out).expect("wait");
        assert!(out.is_empty(), "{out:?}");
        t.join().expect("waker thread");
    }
    assert_eq!(h.d.in_flight(), 0);
}

/// A receive parked for want of buffers (every buffer leased and held: on io_uring ENOBUFS
/// ended its multishot receive, on poll the pool is dry) is cancelled: it ends once, with
/// ECANCELED, and buffers coming back later do not resurrect it.
fn cancel_a_starved_recv(f: Flavor) {
    if f == Flavor::UringNoBufring {
        // The pool path gives each armed receive its own buffer: nothing starves.
        return;
    }
    let Some(mut h) = four_buffers(f) else { return };
    let (s, mut client) = h.pair();
    let op = h.d.recv(s, 3);
    fill(&mut client);
    let mut held = Vec::new();
    while held.len() < 4 {
        let c = h.next();
        assert_eq!(c.owner, 3);
        let CompletionKind::Recv { result: Ok(Some(lease)), armed: true } = c.kind else {
            panic!("{c:?}")
        };
        held.push(lease);
    }
    // Every buffer held, bytes waiting: the receive parks.
    let end = Instant::now() + DEADLINE;
    while h.d.counters().parked == 0 {
        assert!(Instant::now() < end, "the receive never parked: {:?}", h.d.counters());
        h.turn(Duration::from_millis(10));
        assert!(h.ready.is_empty(), "a chunk without a buffer: {:?}", h.ready);
    }
    assert!(h.d.counters().starved > 0, "{:?}", h.d.counters());
    h.d.cancel(op);
    if f != Flavor::Poll {
        // io_uring: the receive was not in the kernel; the driver ended it itself.
        assert_eq!(h.d.counters().parked_cancels, 1, "{:?}", h.d.counters());
    }
    h.d.cancel(op);
    let c = h.next();
    assert_eq!(c.owner, 3);
    let CompletionKind::Recv { result: Err(e), armed: false } = c.kind else { panic!("{c:?}") };
    assert!(is_cancelled(&e), "{e}");
    assert_eq!(h.d.in_flight(), 0);
    // Buffers back, bytes still waiting in the socket: the ended receive stays ended.
    for lease in held {
        h.d.release(lease);
    }
    h.d.cancel(op);
    for _ in 0..3 {
        h.turn(Duration::from_millis(20));
    }
    assert!(h.ready.is_empty(), "after the final completion: {:?}", h.ready);
    assert_eq!(h.d.in_flight(), 0);
    assert_eq!(h.d.counters().parked, 0, "{:?}", h.d.counters());
    // The bytes are still there for a new receive.
    let op = h.d.recv(s, 4);
    let c = h.next();
    assert_eq!(c.owner, 4);
    let CompletionKind::Recv { result: Ok(Some(lease)), armed: true } = c.kind else {
        panic!("{c:?}")
    };
    assert!(h.d.lease(&lease).iter().all(|&b| b == 0x5a));
    h.d.release(lease);
    h.cancel_recv(op, 4);
}

/// How a test lets a just-started operation progress before cancelling it, by round: not
/// at all, a submit, a turn that does not wait.
fn head_start(h: &mut H, round: u64) {
    match round % 3 {
        0 => {}
        1 => h.d.submit().expect("submit"),
        _ => h.turn(Duration::ZERO),
    }
}

/// Cancels racing connections arriving for an accept: exactly one end (`armed == false`)
/// per accept, ECANCELED or, single-shot, the connection; no connection lost; a stale
/// cancel, even with the slot reused, reaches nothing.
fn cancel_races_an_arriving_connection(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (l, addr) = h.listener();
    let mut keep = Vec::new();
    for round in 0..16u64 {
        let op = h.d.accept(l, round);
        let client = TcpStream::connect(addr).expect("connect");
        head_start(&mut h, round);
        h.d.cancel(op);
        let mut accepted = 0;
        loop {
            let c = h.next();
            assert_eq!(c.owner, round, "{c:?}");
            let CompletionKind::Accept { result, armed } = c.kind else { panic!("{c:?}") };
            match result {
                Ok(s) => {
                    accepted += 1;
                    keep.push(s);
                }
                Err(e) => {
                    assert!(is_cancelled(&e), "{e}");
                    assert!(!armed, "an error ends the accept");
                }
            }
            if !armed {
                break;
            }
        }
        assert!(accepted <= 1, "one connection, {accepted} accepted");
        h.d.cancel(op); // stale
        h.turn(Duration::ZERO);
        assert!(h.ready.is_empty(), "after the end: {:?}", h.ready);
        if accepted == 0 {
            // Not accepted: still in the listener's queue, for the next accept.
            let again = h.d.accept(l, 1000);
            let c = h.next();
            assert_eq!(c.owner, 1000, "{c:?}");
            let CompletionKind::Accept { result: Ok(s), armed } = c.kind else { panic!("{c:?}") };
            keep.push(s);
            if armed {
                h.d.cancel(again);
                let c = h.next();
                assert!(matches!(c.kind, CompletionKind::Accept { armed: false, .. }), "{c:?}");
            }
        }
        keep.push(client);
    }
    assert_eq!(h.d.in_flight(), 0);
    // The slot of a finished accept, reused.
    let old = h.d.accept(l, 200);
    h.d.cancel(old);
    let c = h.next();
    assert!(matches!(c.kind, CompletionKind::Accept { armed: false, .. }), "{c:?}");
    let new = h.d.accept(l, 201);
    assert_eq!(old.slot(), new.slot(), "the test wants the slot reused");
    h.d.cancel(old); // stale: must not touch `new`
    h.d.cancel(old);
    h.turn(Duration::from_millis(20));
    assert!(h.ready.is_empty(), "a stale cancel reached the new accept: {:?}", h.ready);
    let _client = TcpStream::connect(addr).expect("connect");
    let c = h.next();
    assert_eq!(c.owner, 201);
    let CompletionKind::Accept { result: Ok(_), armed } = c.kind else { panic!("{c:?}") };
    if armed {
        h.d.cancel(new);
        let c = h.next();
        assert_eq!(c.owner, 201);
        let CompletionKind::Accept { result: Err(e), armed: false } = c.kind else {
            panic!("{c:?}")
        };
        assert!(is_cancelled(&e), "{e}");
    }
    assert_eq!(h.d.in_flight(), 0);
}

/// Cancels racing sends that complete at once: exactly one completion each, the result or
/// ECANCELED, with the buffers; the peer gets exactly the bytes of the sends that
/// completed; a stale cancel, even with the slot reused, reaches nothing.
fn cancel_races_a_send(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let (s, mut client) = h.pair();
    let mut expected = Vec::new();
    for round in 0..16u64 {
        let data = vec![round as u8; 100 + round as usize];
        // One buffer (a plain send) or several (a gather write).
        let bufs = batch(&data, if round % 2 == 0 { 1024 } else { 32 });
        let op = h.d.send(s, round, bufs.clone());
        head_start(&mut h, round);
        h.d.cancel(op);
        let c = h.next();
        assert_eq!(c.owner, round, "{c:?}");
        let CompletionKind::Send { result, bufs: back } = c.kind else { panic!("{c:?}") };
        assert_eq!(back, bufs, "the buffers come back");
        match result {
            Ok(n) => {
                assert_eq!(n, data.len(), "a small send to an idle peer is whole");
                expected.extend_from_slice(&data);
            }
            Err(e) => assert!(is_cancelled(&e), "{e}"),
        }
        h.d.cancel(op); // stale
        h.turn(Duration::ZERO);
        assert!(h.ready.is_empty(), "a second completion: {:?}", h.ready);
    }
    let mut got = vec![0u8; expected.len()];
    client.read_exact(&mut got).expect("read");
    assert!(got == expected, "bytes of cancelled sends went out, or bytes were lost");
    client.set_nonblocking(true).expect("nonblocking");
    let extra = client.read(&mut [0u8; 1]);
    assert!(
        matches!(&extra, Err(e) if e.kind() == io::ErrorKind::WouldBlock),
        "more bytes than the completed sends: {extra:?}"
    );
    // The slot of a finished send, reused by a send that pends (the peer does not read).
    let old = h.d.send(s, 300, [Bytes::from_static(b"old")].into_iter().collect());
    let c = h.next();
    assert!(matches!(c.kind, CompletionKind::Send { result: Ok(3), .. }), "{c:?}");
    let big = batch(&pattern(48 << 20), 1 << 20);
    let (result, _) = h.send(s, big.clone());
    assert!(result.expect("send") < 48 << 20, "the peer's buffers did not fill");
    let new = h.d.send(s, 301, big.clone());
    assert_eq!(old.slot(), new.slot(), "the test wants the slot reused");
    h.turn(Duration::from_millis(20));
    h.d.cancel(old); // stale: must not touch `new`
    h.d.cancel(old);
    h.turn(Duration::from_millis(20));
    assert!(h.ready.is_empty(), "a stale cancel reached the new send: {:?}", h.ready);
    assert_eq!(h.d.in_flight(), 1);
    h.d.cancel(new);
    let c = h.next();
    assert_eq!(c.owner, 301);
    let CompletionKind::Send { result, bufs } = c.kind else { panic!("{c:?}") };
    assert_eq!(bufs.len(), big.len(), "the buffers come back");
    if let Err(e) = result {
        assert!(is_cancelled(&e), "{e}");
    }
    assert_eq!(h.d.in_flight(), 0);
}

/// Cancels racing connects to a listener: exactly one completion each, `Ok(())` or
/// ECANCELED; a stale cancel reaches nothing.
fn cancel_races_a_connect(f: Flavor) {
    let Some(mut h) = H::new(f, config(f)) else { return };
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    for round in 0..16u64 {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        let s = h.d.add_stream(TcpStream::from(sock)).expect("add stream");
        let op = h.d.connect(s, round, addr);
        head_start(&mut h, round);
        h.d.cancel(op);
        let c = h.next();
        assert_eq!(c.owner, round, "{c:?}");
        let CompletionKind::Connect { result } = c.kind else { panic!("{c:?}") };
        if let Err(e) = result {
            assert!(is_cancelled(&e), "{e}");
        }
        h.d.cancel(op); // stale
        h.turn(Duration::ZERO);
        assert!(h.ready.is_empty(), "a second completion: {:?}", h.ready);
        h.d.close(s);
    }
    assert_eq!(h.d.in_flight(), 0);
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        #[cfg(target_os = "linux")]
        mod uring {
            $( #[test] fn $name() { super::$name(super::Flavor::Uring) } )*
        }
        #[cfg(target_os = "linux")]
        mod uring_no_bufring {
            $( #[test] fn $name() { super::$name(super::Flavor::UringNoBufring) } )*
        }
        #[cfg(target_os = "linux")]
        mod uring_old_kernel {
            $( #[test] fn $name() { super::$name(super::Flavor::UringOld) } )*
        }
        mod poll {
            $( #[test] fn $name() { super::$name(super::Flavor::Poll) } )*
        }
    };
}

suite!(
    accept_several_then_cancel_ends_it,
    standing_recv_in_order_then_peer_close,
    starvation_pauses_and_resumes,
    short_writes_resume,
    cancel_each_kind,
    cancel_races_completion_and_stale_ids_are_ignored,
    drop_with_operations_in_flight,
    full_submission_and_completion_queues,
    idle_wait_blocks_after_many_wakes,
    internal_entries_are_not_operations,
    gather_send_arrives_in_order,
    connect_to_a_listener,
    connect_refused,
    peer_close_ends_the_recv,
    send_to_a_closed_peer_fails,
    cancel_ends_the_recv,
    ready_socket_without_an_op_does_not_spin,
    cancelled_recv_on_a_capped_socket_does_not_spin,
    waker_wakes_a_blocked_wait,
    cancel_a_starved_recv,
    cancel_races_an_arriving_connection,
    cancel_races_a_send,
    cancel_races_a_connect,
);
