//! Shared helpers of the `engine_*` integration tests: a tiny PRNG, a recording session
//! whose behaviour is given by closures, an event log that tests synchronise on, checks
//! made inside callbacks and reported to the test thread ([`Checks`]), and blocking-client
//! helpers with safety-net timeouts.
//!
//! Nothing here forces a backend: services are built with the default
//! `BackendChoice::Auto`, so `SERVERCORE_BACKEND=io_uring|poll` picks the backend.

#![allow(dead_code)]

pub mod bad_input;
pub mod cycles;
pub mod nats;
pub mod provision;
pub mod rooms;
pub mod tls;
pub mod workers;
pub mod ws;

use servercore::{Ctx, DisconnectReason, ServerService, Session, SessionHandle, SessionId};
use std::collections::HashMap;
use std::fmt::Display;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::panic::Location;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The safety net of every wait: a healthy run never comes close to it.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// The loopback address with an ephemeral port.
pub fn any_port() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// ----- randomness ----------------------------------------------------------------------

/// xorshift64*: small, fast, deterministic for a seed.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Never zero, and decorrelate neighbouring seeds.
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        assert!(lo <= hi);
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    /// True with probability `1 / n`.
    pub fn one_in(&mut self, n: u64) -> bool {
        self.next_u64() % n == 0
    }

    /// A size in `1..=max`, log-uniform so that small and large sizes are both common.
    pub fn size_log(&mut self, max: usize) -> usize {
        let bits = usize::BITS - max.leading_zeros(); // max < 2^bits
        let b = self.range(0, bits as usize);
        let hi = if b >= usize::BITS as usize { max } else { ((1usize << b) - 1).min(max) };
        self.range(1, hi.max(1))
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.fill(&mut v);
        v
    }
}

/// A seed: `ENGINE_TEST_SEED` if set (to replay a failure), else from the clock. Printed so
/// a failing run can be replayed.
pub fn seed(test: &str) -> u64 {
    let seed = match std::env::var("ENGINE_TEST_SEED") {
        Ok(s) => s.parse().expect("ENGINE_TEST_SEED must be a u64"),
        Err(_) => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
                as u64
        }
    };
    eprintln!("{test}: seed {seed} (replay with ENGINE_TEST_SEED={seed})");
    seed
}

// ----- polling with a deadline ---------------------------------------------------------

/// Receives events (keeping them in `seen`) until `pick` accepts one; panics after
/// `TIMEOUT`.
pub fn wait_event<E: std::fmt::Debug, T>(
    rx: &Receiver<E>,
    seen: &mut Vec<E>,
    what: &str,
    mut pick: impl FnMut(&E) -> Option<T>,
) -> T {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(e) => {
                let hit = pick(&e);
                seen.push(e);
                if let Some(t) = hit {
                    return t;
                }
            }
            Err(e) => panic!("waiting for {what}: {e:?}; events so far: {seen:#?}"),
        }
    }
}

/// Polls `cond` until it holds; panics with `what` (and the last observation) after
/// `TIMEOUT`. The polling interval is a yield or a 1 ms nap, never the synchronisation.
pub fn wait_until(what: &str, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + TIMEOUT;
    let mut spins = 0u32;
    loop {
        let last = match cond() {
            Ok(()) => return,
            Err(e) => e,
        };
        if Instant::now() > deadline {
            panic!("timed out after {TIMEOUT:?} waiting for {what}; last seen: {last}");
        }
        spins += 1;
        if spins < 100 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Waits until the server holds no session.
pub fn wait_no_sessions(server: &ServerService) {
    wait_until("the server's session count to reach 0", || {
        let n = server.session_count();
        if n == 0 {
            Ok(())
        } else {
            Err(format!("{n} sessions"))
        }
    });
}

// ----- checks made inside callbacks ---------------------------------------------------

/// Checks made inside session callbacks, asserted on the test thread.
///
/// An `assert!` in a callback cannot fail a test: the engine catches its panic (DESIGN.md
/// invariant 7), disconnects that session with `DisconnectReason::Panic`, and the test
/// thread goes on, and may pass (in `on_disconnected` the panic is not even reported).
/// So a callback calls [`check`](Self::check), which records a failure and carries on,
/// passes every reason to [`disconnected`](Self::disconnected), which records a panic in
/// a callback, and the test thread calls [`assert_ok`](Self::assert_ok) once the service
/// has shut down (its workers joined, every callback has run).
#[derive(Clone, Default)]
pub struct Checks(Arc<Mutex<Vec<String>>>);

impl Checks {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a failure, with the caller's location, unless `cond` holds; returns `cond`.
    #[track_caller]
    pub fn check(&self, cond: bool, what: impl Display) -> bool {
        if !cond {
            self.fail(Location::caller(), what);
        }
        cond
    }

    /// `check(left == right, ..)` that shows both values.
    #[track_caller]
    pub fn check_eq<T: PartialEq + std::fmt::Debug>(&self, left: T, right: T, what: impl Display) {
        if left != right {
            self.fail(Location::caller(), format_args!("{what}: {left:?} != {right:?}"));
        }
    }

    /// To call from `on_disconnected`: a `Panic` reason is a failed assert or unwrap in an
    /// earlier callback of that session.
    #[track_caller]
    pub fn disconnected(&self, reason: &DisconnectReason) {
        if let DisconnectReason::Panic(msg) = reason {
            self.fail(Location::caller(), format_args!("a callback panicked: {msg}"));
        }
    }

    fn fail(&self, at: &Location<'_>, what: impl Display) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(format!("{at}: {what}"));
    }

    /// The failures recorded so far.
    pub fn failures(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Panics (on the test thread) with every failure recorded.
    #[track_caller]
    pub fn assert_ok(&self) {
        let failures = self.failures();
        assert!(failures.is_empty(), "checks failed inside callbacks: {failures:#?}");
    }
}

// ----- a recording session -------------------------------------------------------------

/// One callback, as the tests see it.
#[derive(Debug, Clone)]
pub enum Ev {
    Connected(SessionHandle),
    Recv(Vec<u8>),
    Disconnected(DisconnectReason),
    /// A callback after `on_disconnected` (always a bug; recorded to be caught).
    LateCallback(&'static str),
}

#[derive(Debug, Clone)]
pub struct Event {
    pub id: SessionId,
    pub ev: Ev,
}

type ConnectedHook = dyn Fn(&mut Ctx<'_>) + Send + Sync;
type RecvHook = dyn Fn(&mut Ctx<'_>, &[u8]) -> usize + Send + Sync;
type DisconnectedHook = dyn Fn(&mut Ctx<'_>, &DisconnectReason) + Send + Sync;

/// What a recording session does besides recording.
#[derive(Clone)]
pub struct Hooks {
    pub on_connected: Option<Arc<ConnectedHook>>,
    pub on_recv: Arc<RecvHook>,
    pub on_disconnected: Option<Arc<DisconnectedHook>>,
}

impl Hooks {
    /// Echoes everything it receives.
    pub fn echo() -> Self {
        Hooks::on_recv(|ctx, data| {
            let _ = ctx.send(data.to_vec());
            data.len()
        })
    }

    pub fn on_recv(f: impl Fn(&mut Ctx<'_>, &[u8]) -> usize + Send + Sync + 'static) -> Self {
        Hooks { on_connected: None, on_recv: Arc::new(f), on_disconnected: None }
    }

    pub fn with_connected(mut self, f: impl Fn(&mut Ctx<'_>) + Send + Sync + 'static) -> Self {
        self.on_connected = Some(Arc::new(f));
        self
    }

    pub fn with_disconnected(
        mut self,
        f: impl Fn(&mut Ctx<'_>, &DisconnectReason) + Send + Sync + 'static,
    ) -> Self {
        self.on_disconnected = Some(Arc::new(f));
        self
    }
}

/// Records every callback to a channel (the record is sent before the hook runs, so a
/// hook that panics is still recorded), then runs its hooks.
pub struct Recorder {
    tx: Sender<Event>,
    hooks: Hooks,
    done: bool,
}

impl Recorder {
    fn record(&self, ctx: &Ctx<'_>, ev: Ev) {
        let _ = self.tx.send(Event { id: ctx.id(), ev });
    }
}

impl Session for Recorder {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        if self.done {
            self.record(ctx, Ev::LateCallback("on_connected"));
        }
        self.record(ctx, Ev::Connected(ctx.handle()));
        if let Some(h) = self.hooks.on_connected.clone() {
            h(ctx);
        }
    }

    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if self.done {
            self.record(ctx, Ev::LateCallback("on_recv"));
        }
        self.record(ctx, Ev::Recv(data.to_vec()));
        let h = self.hooks.on_recv.clone();
        h(ctx, data)
    }

    fn on_disconnected(&mut self, ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        if self.done {
            self.record(ctx, Ev::LateCallback("on_disconnected"));
        }
        self.done = true;
        self.record(ctx, Ev::Disconnected(reason.clone()));
        if let Some(h) = self.hooks.on_disconnected.clone() {
            h(ctx, reason);
        }
    }
}

/// A factory of recording sessions, and the receiving end of their events.
pub fn recorder(hooks: Hooks) -> (impl Fn() -> Recorder + Send + Sync + 'static, EventLog) {
    let (tx, rx) = mpsc::channel();
    let factory = move || Recorder { tx: tx.clone(), hooks: hooks.clone(), done: false };
    (factory, EventLog { rx, seen: Vec::new() })
}

/// Every event received so far, and a way to wait for more.
pub struct EventLog {
    rx: Receiver<Event>,
    pub seen: Vec<Event>,
}

impl EventLog {
    /// Receives events until one satisfies `pred`; returns a clone of it. Panics after
    /// `TIMEOUT`.
    pub fn wait_for(&mut self, what: &str, mut pred: impl FnMut(&Event) -> bool) -> Event {
        // Maybe it already arrived.
        if let Some(e) = self.seen.iter().find(|e| pred(e)) {
            return e.clone();
        }
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(e) => {
                    let hit = pred(&e);
                    self.seen.push(e.clone());
                    if hit {
                        return e;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out waiting for {what}; events so far: {:#?}", self.seen)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("event channel closed waiting for {what}; events: {:#?}", self.seen)
                }
            }
        }
    }

    /// Waits for the next `on_connected` of a session not seen connected before.
    pub fn next_connected(&mut self) -> (SessionId, SessionHandle) {
        let before = self.count(|e| matches!(e.ev, Ev::Connected(_)));
        let mut n = 0;
        let e = self.wait_for("on_connected", |e| {
            if matches!(e.ev, Ev::Connected(_)) {
                n += 1;
                n > before
            } else {
                false
            }
        });
        match e.ev {
            Ev::Connected(h) => (e.id, h),
            _ => unreachable!(),
        }
    }

    /// Waits for `on_disconnected` of `id` and returns its reason.
    pub fn disconnected(&mut self, id: SessionId) -> DisconnectReason {
        let e = self.wait_for(&format!("on_disconnected of {id}"), |e| {
            e.id == id && matches!(e.ev, Ev::Disconnected(_))
        });
        match e.ev {
            Ev::Disconnected(r) => r,
            _ => unreachable!(),
        }
    }

    /// Waits until the concatenation of `id`'s received bytes is at least `n` long.
    pub fn wait_recv_len(&mut self, id: SessionId, n: usize) {
        let mut have: usize = self
            .seen
            .iter()
            .filter(|e| e.id == id)
            .map(|e| if let Ev::Recv(d) = &e.ev { d.len() } else { 0 })
            .sum();
        if have >= n {
            return;
        }
        self.wait_for(&format!("{n} received bytes on {id}"), |e| {
            if e.id == id {
                if let Ev::Recv(d) = &e.ev {
                    have += d.len();
                }
            }
            have >= n
        });
    }

    pub fn count(&self, pred: impl Fn(&Event) -> bool) -> usize {
        self.seen.iter().filter(|e| pred(e)).count()
    }

    /// Takes whatever else is queued, without waiting (call after the service shut down:
    /// its workers are joined, so every event is in the channel).
    pub fn drain(&mut self) {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push(e);
        }
    }

    /// Events grouped by session, each in order.
    pub fn by_session(&self) -> HashMap<SessionId, Vec<Ev>> {
        let mut m: HashMap<SessionId, Vec<Ev>> = HashMap::new();
        for e in &self.seen {
            m.entry(e.id).or_default().push(e.ev.clone());
        }
        m
    }

    /// Checks the lifecycle of one session: `Connected` first and once, then only `Recv`s,
    /// then exactly one `Disconnected`, last, and no callback after it. Returns the data of
    /// every `on_recv` call (each as presented, unconsumed bytes included) and the reason.
    pub fn check_lifecycle(&self, id: SessionId) -> (Vec<Vec<u8>>, DisconnectReason) {
        let all = self.by_session();
        let evs = all.get(&id).unwrap_or_else(|| panic!("no events for {id}"));
        assert!(
            matches!(evs.first(), Some(Ev::Connected(_))),
            "{id}: first event must be Connected: {evs:#?}"
        );
        let n_conn = evs.iter().filter(|e| matches!(e, Ev::Connected(_))).count();
        assert_eq!(n_conn, 1, "{id}: on_connected must be called once: {evs:#?}");
        let n_disc = evs.iter().filter(|e| matches!(e, Ev::Disconnected(_))).count();
        assert_eq!(n_disc, 1, "{id}: on_disconnected must be called exactly once: {evs:#?}");
        assert!(
            !evs.iter().any(|e| matches!(e, Ev::LateCallback(_))),
            "{id}: callback after on_disconnected: {evs:#?}"
        );
        let reason = match evs.last() {
            Some(Ev::Disconnected(r)) => r.clone(),
            other => panic!("{id}: last event must be Disconnected, got {other:?}: {evs:#?}"),
        };
        let recvs = evs
            .iter()
            .filter_map(|e| if let Ev::Recv(d) = e { Some(d.clone()) } else { None })
            .collect();
        (recvs, reason)
    }
}

// ----- small sessions of the engine tests ----------------------------------------------

/// What a [`ByeEcho`] reports.
#[derive(Debug)]
pub enum LifeEv {
    Connected,
    Disconnected(DisconnectReason),
}

/// Echoes; "bye" asks for a local disconnect after a last message ("last words"). Reports
/// its connect and its disconnect's reason.
pub struct ByeEcho(pub Sender<LifeEv>);

impl Session for ByeEcho {
    fn on_connected(&mut self, _ctx: &mut Ctx<'_>) {
        let _ = self.0.send(LifeEv::Connected);
    }
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if data == b"bye" {
            let _ = ctx.send(&b"last words"[..]);
            ctx.disconnect("bye");
        } else {
            let _ = ctx.send(data.to_vec());
        }
        data.len()
    }
    fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
        let _ = self.0.send(LifeEv::Disconnected(reason.clone()));
    }
}

/// A client session that sends `greeting` once connected and reports the answer once it
/// has as many bytes.
pub struct Greeter {
    pub greeting: &'static [u8],
    pub answers: Sender<Vec<u8>>,
}

impl Session for Greeter {
    fn on_connected(&mut self, ctx: &mut Ctx<'_>) {
        let _ = ctx.send(self.greeting);
    }
    fn on_recv(&mut self, _ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        if data.len() < self.greeting.len() {
            return 0;
        }
        let _ = self.answers.send(data.to_vec());
        data.len()
    }
}

// ----- blocking clients ----------------------------------------------------------------

/// Connects a std client with `TIMEOUT` as read/write safety net.
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `msg` and reads back exactly as many bytes, which must equal it.
pub fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write to server");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read echo from server");
    assert!(back == msg, "echo differs from what was sent");
}

/// How reading to the end went.
#[derive(Debug)]
pub enum End {
    /// An orderly end of stream.
    Eof,
    /// The connection ended with an error (reset, ...).
    Error(io::ErrorKind),
}

/// Reads until the stream ends; returns the bytes and how it ended. A read timeout (the
/// safety net) panics.
pub fn read_to_end(s: &mut TcpStream) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (out, End::Eof),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                panic!("no end of stream within {TIMEOUT:?} ({} bytes read)", out.len())
            }
            Err(e) => return (out, End::Error(e.kind())),
        }
    }
}

/// Soft limit on open files, from `/proc/self/limits` (Linux), if known.
pub fn open_files_limit() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

// ----- sockets and descriptors -----------------------------------------------------------

/// Makes a later close of `sock` abortive (`SO_LINGER` 0: RST instead of FIN), to simulate
/// a peer that resets.
pub fn set_linger_zero<'s, S>(sock: &'s S) -> io::Result<()>
where
    socket2::SockRef<'s>: From<&'s S>,
{
    socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO))
}

/// Number of open file descriptors of this process: Linux reads `/proc/self/fd`;
/// elsewhere `None`.
pub fn open_fd_count() -> Option<usize> {
    if cfg!(target_os = "linux") {
        std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count().saturating_sub(1))
    } else {
        None
    }
}

/// A client with a tiny receive window (4 KiB) that never reads unless asked: a peer the
/// server cannot flush to.
pub fn slow_client(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}
