//! Echo correctness: random message sizes with random partial consumption, and 1,000
//! concurrent sessions of a `ClientService` talking to a `ServerService` in the same
//! process (the server-to-server link).

mod common;

use common::{any_port, seed, wait_until, Rng, TIMEOUT};
use servercore::{ClientService, Ctx, DisconnectReason, ServerService, Session, SessionId};
use std::collections::{HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

const MAX_MSG: usize = 256 * 1024;
/// Every stream starts with its own total length (8 bytes, little endian), so that the
/// session knows when no more bytes are coming and it must consume the rest.
const HEADER: usize = 8;

/// Consumes a random prefix of what it is given (sometimes nothing, sometimes all) and
/// echoes exactly what it consumed. Checks that unconsumed bytes are presented again, in
/// front.
struct PartialEcho {
    rng: Rng,
    total: Option<u64>,
    consumed: u64,
    /// What the previous call left unconsumed: the next `data` must start with it.
    leftover: Vec<u8>,
    violations: Arc<Mutex<Vec<String>>>,
    calls: Arc<AtomicUsize>,
    partial_calls: Arc<AtomicUsize>,
    /// Each session's last state, printed when a client fails.
    states: Arc<Mutex<HashMap<SessionId, String>>>,
}

impl Session for PartialEcho {
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        self.calls.fetch_add(1, Ordering::Relaxed);
        if !data.starts_with(&self.leftover) {
            self.violations.lock().unwrap().push(format!(
                "{}: data ({} bytes) does not start with the {} bytes left unconsumed",
                ctx.id(),
                data.len(),
                self.leftover.len()
            ));
            ctx.disconnect("test: unconsumed bytes not presented again");
            return data.len();
        }
        if data.len() <= self.leftover.len() {
            self.violations.lock().unwrap().push(format!(
                "{}: on_recv called with no new bytes ({} bytes, {} left over)",
                ctx.id(),
                data.len(),
                self.leftover.len()
            ));
        }
        if self.total.is_none() {
            if data.len() < HEADER {
                // Keep the header whole until it is complete; more bytes are coming.
                self.leftover = data.to_vec();
                return 0;
            }
            self.total = Some(u64::from_le_bytes(data[..HEADER].try_into().unwrap()));
        }
        let last = self.total.is_some_and(|t| self.consumed + data.len() as u64 >= t);
        let n = if last {
            data.len() // nothing more is coming: take everything
        } else {
            match self.rng.range(0, 7) {
                0 => 0,
                1 => data.len(),
                2 => self.rng.range(0, data.len().min(16)),
                _ => self.rng.range(0, data.len()),
            }
        };
        if n < data.len() {
            self.partial_calls.fetch_add(1, Ordering::Relaxed);
        }
        if n > 0 && ctx.send(data[..n].to_vec()).is_err() {
            self.violations.lock().unwrap().push(format!("{}: ctx.send failed", ctx.id()));
        }
        self.consumed += n as u64;
        self.leftover.clear();
        self.leftover.extend_from_slice(&data[n..]);
        self.states.lock().unwrap().insert(
            ctx.id(),
            format!(
                "total {:?}, consumed {}, last call: {} bytes, {n} consumed, send queue {}",
                self.total,
                self.consumed,
                data.len(),
                ctx.send_queue_bytes()
            ),
        );
        n
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if let Some(s) = self.states.lock().unwrap().get_mut(&ctx.id()) {
            s.push_str(&format!("; disconnected: {reason}"));
        }
        if *reason != DisconnectReason::PeerClosed {
            self.violations
                .lock()
                .unwrap()
                .push(format!("{}: unexpected disconnect reason {reason:?}", ctx.id()));
        }
    }
}

/// One client: a writer thread sends the stream in random-sized messages while this thread
/// reads the echo in random-sized reads and checks every byte in order.
fn run_partial_echo_client(addr: SocketAddr, seed: u64, messages: usize) -> usize {
    let mut rng = Rng::new(seed);
    let mut sizes = vec![1, MAX_MSG]; // the extremes, always
    for _ in 2..messages {
        sizes.push(if rng.one_in(3) { rng.range(1, MAX_MSG) } else { rng.size_log(MAX_MSG) });
    }
    // Shuffle the extremes in.
    for i in (1..sizes.len()).rev() {
        let j = rng.range(0, i);
        sizes.swap(i, j);
    }
    let total = HEADER + sizes.iter().sum::<usize>();
    let mut stream = rng.bytes(total);
    stream[..HEADER].copy_from_slice(&(total as u64).to_le_bytes());
    let stream = Arc::new(stream);

    let mut client = common::connect(addr);
    let mut writer_sock = client.try_clone().unwrap();
    let to_send = stream.clone();
    let writer = std::thread::spawn(move || {
        let mut at = 0;
        // The header goes out alone, split in two, so the session sees a short first call.
        writer_sock.write_all(&to_send[..3]).unwrap();
        writer_sock.write_all(&to_send[3..HEADER]).unwrap();
        at += HEADER;
        for size in sizes {
            writer_sock.write_all(&to_send[at..at + size]).unwrap();
            at += size;
        }
        assert_eq!(at, to_send.len());
    });

    let mut got = 0usize;
    let mut buf = vec![0u8; MAX_MSG];
    while got < total {
        let want = rng.size_log(MAX_MSG).min(total - got);
        let n = client.read(&mut buf[..want]).unwrap_or_else(|e| {
            panic!("client {seed}: read failed after {got} of {total} bytes: {e}")
        });
        assert!(n > 0, "client {seed}: server closed after {got} of {total} bytes");
        if buf[..n] != stream[got..got + n] {
            let at = (0..n).find(|&i| buf[i] != stream[got + i]).unwrap();
            panic!("client {seed}: echo differs at byte {} of {total}", got + at);
        }
        got += n;
    }
    writer.join().expect("writer thread");
    // Nothing more than what was sent comes back.
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (rest, _) = common::read_to_end(&mut client);
    assert!(rest.is_empty(), "client {seed}: {} extra bytes echoed", rest.len());
    total
}

#[test]
fn echo_random_sizes_with_random_partial_consumption() {
    let seed = seed("echo_random_sizes_with_random_partial_consumption");
    let violations = Arc::new(Mutex::new(Vec::new()));
    let calls = Arc::new(AtomicUsize::new(0));
    let partial_calls = Arc::new(AtomicUsize::new(0));
    let next = Arc::new(AtomicU64::new(0));
    let states = Arc::new(Mutex::new(HashMap::new()));
    let (v, c, p, st) = (violations.clone(), calls.clone(), partial_calls.clone(), states.clone());
    let server = ServerService::builder(any_port())
        .workers(2)
        .start(move || PartialEcho {
            rng: Rng::new(seed ^ (1000 + next.fetch_add(1, Ordering::Relaxed))),
            total: None,
            consumed: 0,
            leftover: Vec::new(),
            violations: v.clone(),
            calls: c.clone(),
            partial_calls: p.clone(),
            states: st.clone(),
        })
        .unwrap();
    let addr = server.local_addr();

    let clients: Vec<_> = (0..4u64)
        .map(|i| std::thread::spawn(move || run_partial_echo_client(addr, seed ^ i, 24)))
        .collect();
    let mut bytes = 0;
    let mut failed = 0;
    for c in clients {
        match c.join() {
            Ok(n) => bytes += n,
            Err(_) => failed += 1,
        }
    }
    if failed > 0 {
        panic!(
            "{failed} clients failed; server {:?}; sessions: {:#?}; violations: {:#?}",
            server.stats(),
            states.lock().unwrap(),
            violations.lock().unwrap()
        );
    }
    common::wait_no_sessions(&server);
    let stats = server.stats();
    server.shutdown(Duration::from_secs(5)).unwrap();

    let violations = violations.lock().unwrap();
    assert!(violations.is_empty(), "session saw contract violations: {violations:#?}");
    assert_eq!(stats.accepted, 4);
    assert_eq!(stats.disconnected, 4);
    assert_eq!(stats.disconnected_with_error, 0);
    eprintln!(
        "echoed {bytes} bytes in {} on_recv calls, {} of them partially consumed",
        calls.load(Ordering::Relaxed),
        partial_calls.load(Ordering::Relaxed)
    );
    assert!(partial_calls.load(Ordering::Relaxed) > 0, "partial consumption was not exercised");
}

// ----- 1,000 sessions ------------------------------------------------------------------

struct Echo;

impl Session for Echo {
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let _ = ctx.send(data.to_vec());
        data.len()
    }
}

/// A client session that sends a few random messages one after the other and checks each
/// echo; reports the outcome once.
struct Link {
    rng: Rng,
    expected: Vec<u8>,
    got: usize,
    left: usize,
    reported: bool,
    results: mpsc::Sender<Result<SessionId, String>>,
}

impl Link {
    fn report(&mut self, r: Result<SessionId, String>) {
        if !self.reported {
            self.reported = true;
            let _ = self.results.send(r);
        }
    }

    fn send_next(&mut self, ctx: &mut Ctx<'_>) {
        let n = self.rng.range(1, 8192);
        self.expected = self.rng.bytes(n);
        self.got = 0;
        // Split in two sends to exercise gather writes.
        let cut = self.rng.range(0, n);
        let a = ctx.send(self.expected[..cut].to_vec());
        let b = ctx.send(self.expected[cut..].to_vec());
        if a.is_err() || b.is_err() {
            self.report(Err(format!("{}: ctx.send failed: {a:?} {b:?}", ctx.id())));
        }
    }
}

impl Session for Link {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        self.send_next(ctx);
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let end = self.got + data.len();
        if end > self.expected.len() || data != &self.expected[self.got..end] {
            self.report(Err(format!("{}: wrong echo at byte {}", ctx.id(), self.got)));
            ctx.disconnect("wrong echo");
            return data.len();
        }
        self.got = end;
        if self.got == self.expected.len() {
            self.left -= 1;
            if self.left == 0 {
                // Done; stay connected so that all sessions are open at once.
                self.report(Ok(ctx.id()));
            } else {
                self.send_next(ctx);
            }
        }
        data.len()
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        self.report(Err(format!("{}: disconnected before done: {reason}", ctx.id())));
    }

    fn on_connect_failed(&mut self, addr: SocketAddr, error: &std::io::Error) {
        self.report(Err(format!("connect to {addr} failed: {error}")));
    }
}

#[test]
fn thousand_concurrent_client_sessions_echo() {
    const N: usize = 1000;
    if let Some(limit) = common::open_files_limit() {
        assert!(
            limit >= 2 * N + 200,
            "this test needs {} open files (both ends in one process); the limit is {limit}",
            2 * N + 200
        );
    }
    let seed = seed("thousand_concurrent_client_sessions_echo");
    let server = ServerService::builder(any_port()).workers(2).start(|| Echo).unwrap();
    let (tx, rx) = mpsc::channel();
    let next = AtomicU64::new(0);
    let tx = Mutex::new(tx);
    let client = ClientService::builder(server.local_addr())
        .sessions(N)
        .workers(2)
        .start(move || Link {
            rng: Rng::new(seed ^ next.fetch_add(1, Ordering::Relaxed)),
            expected: Vec::new(),
            got: 0,
            left: 3,
            reported: false,
            results: tx.lock().unwrap().clone(),
        })
        .unwrap();

    let mut ids = HashSet::new();
    let mut failures = Vec::new();
    for i in 0..N {
        match rx.recv_timeout(TIMEOUT) {
            Ok(Ok(id)) => assert!(ids.insert(id), "{id} reported twice"),
            Ok(Err(e)) => failures.push(e),
            Err(e) => panic!("only {i} of {N} sessions reported ({e:?}); failures: {failures:#?}"),
        }
    }
    assert!(failures.is_empty(), "{} sessions failed: {failures:#?}", failures.len());
    assert_eq!(ids.len(), N);

    // All of them are open at once, on both sides.
    assert_eq!(client.session_count(), N);
    wait_until("1,000 server sessions", || {
        let s = server.stats();
        if s.sessions == N && s.accepted == N as u64 {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    });
    let cs = client.stats();
    assert_eq!((cs.connected, cs.connect_failures), (N as u64, 0), "{cs:?}");

    // Closing the client side ends every server session in order.
    let stats_before = client.stats();
    assert_eq!(stats_before.disconnected, 0);
    client.shutdown(Duration::from_secs(5)).unwrap();
    common::wait_no_sessions(&server);
    let ss = server.stats();
    assert_eq!(ss.disconnected, N as u64, "{ss:?}");
    assert_eq!(ss.disconnected_with_error, 0, "{ss:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
    // The client sessions' on_disconnected (Shutdown) came after their report: no late
    // failures.
    let late: Vec<_> = rx.try_iter().filter_map(|r| r.err()).collect();
    assert!(late.is_empty(), "{late:#?}");
}

#[test]
fn many_small_sends_in_one_callback_arrive_in_order() {
    // More buffers than one gather write takes (1,024), of mixed sizes, larger in total
    // than the socket buffers so that short writes are resumed in the middle of a batch.
    struct Burst;
    impl Session for Burst {
        fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
            let mut rng = Rng::new(77);
            let mut seq = 0u32;
            for _ in 0..5000 {
                let n = rng.size_log(16 * 1024);
                let buf: Vec<u8> = (0..n).map(|i| (seq as usize + i) as u8).collect();
                seq = seq.wrapping_add(n as u32);
                ctx.send(buf).unwrap();
            }
            ctx.disconnect("burst sent");
            data.len()
        }
    }
    let server = ServerService::builder(any_port()).workers(2).start(|| Burst).unwrap();
    let mut c = common::connect(server.local_addr());
    c.write_all(b"go").unwrap();
    let (got, end) = common::read_to_end(&mut c);
    let mut rng = Rng::new(77);
    let expected: usize = (0..5000).map(|_| rng.size_log(16 * 1024)).sum();
    assert_eq!(got.len(), expected, "ended with {end:?}");
    for (i, &b) in got.iter().enumerate() {
        assert_eq!(b, i as u8, "byte {i} out of order");
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn one_worker_with_1200_sessions_all_sending_at_once() {
    // A burst of operations larger than one worker's submission queue.
    const N: usize = 1200;
    if let Some(limit) = common::open_files_limit() {
        assert!(limit >= 2 * N + 200, "needs {} open files, limit {limit}", 2 * N + 200);
    }
    let seed = seed("one_worker_with_1200_sessions_all_sending_at_once");
    let server = ServerService::builder(any_port()).workers(1).start(|| Echo).unwrap();
    let (tx, rx) = mpsc::channel();
    let next = AtomicU64::new(0);
    let client = ClientService::builder(server.local_addr())
        .sessions(N)
        .workers(1)
        .start(move || Link {
            rng: Rng::new(seed ^ next.fetch_add(1, Ordering::Relaxed)),
            expected: Vec::new(),
            got: 0,
            left: 2,
            reported: false,
            results: tx.clone(),
        })
        .unwrap();
    let mut failures = Vec::new();
    for i in 0..N {
        match rx.recv_timeout(TIMEOUT) {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => failures.push(e),
            Err(e) => panic!("only {i} of {N} sessions reported ({e:?}); failures: {failures:#?}"),
        }
    }
    assert!(failures.is_empty(), "{} sessions failed: {failures:#?}", failures.len());
    client.shutdown(Duration::from_secs(5)).unwrap();
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
}
