//! The churn load: waves of connections that each connect, exchange one byte with the echo
//! server (proof that the server accepted and served it), and close.
//!
//! One thread, nonblocking sockets, `poll`. To keep ephemeral ports from running out while
//! closed client sockets sit in TIME_WAIT, connections to a loopback server are spread over
//! source addresses 127.0.0.1 ..= 127.0.0.250.

use hdrhistogram::Histogram;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct ChurnReport {
    /// `churn`, or `tls-churn` for the TLS variant.
    pub mode: &'static str,
    /// Completed connect + echo + close cycles.
    pub cycles: u64,
    pub failures: u64,
    pub secs: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub first_error: Option<String>,
}

impl ChurnReport {
    pub fn to_json(&self) -> String {
        let err = match &self.first_error {
            Some(e) => format!("\"{}\"", e.replace('\\', "\\\\").replace('"', "\\\"")),
            None => "null".into(),
        };
        format!(
            "{{\"mode\":\"{}\",\"cycles\":{},\"failures\":{},\"secs\":{:.3},\
             \"cycles_per_sec\":{:.1},\"p50_us\":{},\"p99_us\":{},\"errors\":{},\"first_error\":{}}}",
            self.mode,
            self.cycles,
            self.failures,
            self.secs,
            self.cycles as f64 / self.secs.max(1e-9),
            self.p50_us,
            self.p99_us,
            self.failures,
            err
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting,
    AwaitingEcho,
}

struct Conn {
    fd: libc::c_int,
    state: State,
    started: Instant,
}

pub(crate) fn last_error(what: &str) -> String {
    format!("{what}: {}", io::Error::last_os_error())
}

pub(crate) fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is a valid (unspecified) address.
    let mut sa: libc::sockaddr_in = unsafe { mem::zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = libc::in_addr { s_addr: u32::from(*addr.ip()).to_be() };
    sa
}

pub(crate) fn close(fd: libc::c_int) {
    // SAFETY: `fd` is a socket this module opened and closes exactly once.
    unsafe { libc::close(fd) };
}

/// Opens a nonblocking socket and starts connecting it to `to`, from `from` when given.
pub(crate) fn start_connect(
    to: &libc::sockaddr_in,
    from: Option<Ipv4Addr>,
) -> Result<libc::c_int, String> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0)
    };
    if fd < 0 {
        return Err(last_error("socket"));
    }
    if let Some(ip) = from {
        let one: libc::c_int = 1;
        let local = sockaddr_in(SocketAddrV4::new(ip, 0));
        // SAFETY: `one` and `local` are valid for the sizes passed and outlive the calls.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const _ as *const libc::c_void,
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            // A failed bind only means the kernel picks the source address itself.
            libc::bind(
                fd,
                &local as *const _ as *const libc::sockaddr,
                mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            );
        }
    }
    // SAFETY: `to` is a valid sockaddr_in of the size passed.
    let rc = unsafe {
        libc::connect(
            fd,
            to as *const _ as *const libc::sockaddr,
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINPROGRESS) {
            close(fd);
            return Err(format!("connect: {e}"));
        }
    }
    Ok(fd)
}

pub(crate) fn fail(report: &mut ChurnReport, msg: String) {
    report.failures += 1;
    if report.first_error.is_none() {
        report.first_error = Some(msg);
    }
}

pub(crate) fn socket_error(fd: libc::c_int) -> Option<io::Error> {
    let mut err: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid and writable for the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            &mut err as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc != 0 {
        Some(io::Error::last_os_error())
    } else if err != 0 {
        Some(io::Error::from_raw_os_error(err))
    } else {
        None
    }
}

/// The next source address of the spread (127.0.0.1 ..= 127.0.0.250), when it applies.
pub(crate) fn next_source(spread: bool, next: &mut u32) -> Option<Ipv4Addr> {
    spread.then(|| {
        *next = (*next + 1) % 250;
        Ipv4Addr::new(127, 0, 0, 1 + *next as u8)
    })
}

/// One poll of a wave: waits up to 100 ms for the events each of `conns` waits for
/// (`interest` gives its fd and events), then keeps, in order, the connections with no
/// event and those for which `on_ready` (given the connection and its `revents`) returns
/// true. An interrupted poll is a round with no event.
pub(crate) fn poll_round<C>(
    conns: &mut Vec<C>,
    pfds: &mut Vec<libc::pollfd>,
    interest: impl Fn(&C) -> (libc::c_int, libc::c_short),
    mut on_ready: impl FnMut(&mut C, libc::c_short) -> bool,
) -> Result<(), String> {
    pfds.clear();
    pfds.extend(conns.iter().map(|c| {
        let (fd, events) = interest(c);
        libc::pollfd { fd, events, revents: 0 }
    }));
    // SAFETY: `pfds` is a valid array of `pfds.len()` pollfd entries.
    let n = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 100) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(());
        }
        return Err(format!("poll: {e}"));
    }
    let mut k = 0;
    // `conns` and `pfds` are in the same order; walk both, removing finished conns.
    conns.retain_mut(|c| {
        let revents = pfds[k].revents;
        k += 1;
        if revents == 0 {
            return true;
        }
        on_ready(c, revents)
    });
    Ok(())
}

/// The histogram of cycle latencies, in µs (1 µs to a minute, 3 significant digits).
pub(crate) fn latency_histogram() -> Result<Histogram<u64>, String> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).map_err(|e| format!("histogram: {e}"))
}

/// The report of a run begun at `start`: its duration and latency quantiles filled in.
pub(crate) fn finish(
    mut report: ChurnReport,
    hist: &Histogram<u64>,
    start: Instant,
) -> ChurnReport {
    report.secs = start.elapsed().as_secs_f64();
    report.p50_us = hist.value_at_quantile(0.50);
    report.p99_us = hist.value_at_quantile(0.99);
    report
}

/// Counts a completed cycle begun at `started` and records its latency (in µs, capped at
/// a minute).
pub(crate) fn record_cycle(report: &mut ChurnReport, hist: &mut Histogram<u64>, started: Instant) {
    let us = started.elapsed().as_micros().max(1) as u64;
    let _ = hist.record(us.min(60_000_000));
    report.cycles += 1;
}

/// Runs waves of `wave` connections until `secs` have passed (the last wave is finished).
pub fn run(addr: SocketAddr, wave: usize, secs: f64) -> Result<ChurnReport, String> {
    let SocketAddr::V4(addr) = addr else {
        return Err(format!("churn-client supports IPv4 only, got {addr}"));
    };
    let to = sockaddr_in(addr);
    let spread = addr.ip().is_loopback();
    let mut hist = latency_histogram()?;
    let mut report = ChurnReport { mode: "churn", ..ChurnReport::default() };
    let mut next_source_ix = 0u32;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut conns: Vec<Conn> = Vec::with_capacity(wave);
    let mut pfds: Vec<libc::pollfd> = Vec::with_capacity(wave);
    while Instant::now() < deadline {
        for _ in 0..wave {
            let from = next_source(spread, &mut next_source_ix);
            let started = Instant::now();
            match start_connect(&to, from) {
                Ok(fd) => conns.push(Conn { fd, state: State::Connecting, started }),
                Err(e) => fail(&mut report, e),
            }
        }
        let wave_deadline = Instant::now() + Duration::from_secs(10);
        while !conns.is_empty() {
            if Instant::now() > wave_deadline {
                for c in conns.drain(..) {
                    close(c.fd);
                    fail(&mut report, "wave timed out after 10 s".into());
                }
                break;
            }
            let interest = |c: &Conn| {
                let events = match c.state {
                    State::Connecting => libc::POLLOUT,
                    State::AwaitingEcho => libc::POLLIN,
                };
                (c.fd, events)
            };
            poll_round(&mut conns, &mut pfds, interest, |c, _revents| {
                match c.state {
                    State::Connecting => {
                        if let Some(e) = socket_error(c.fd) {
                            close(c.fd);
                            fail(&mut report, format!("connect: {e}"));
                            return false;
                        }
                        let byte = [b'x'];
                        // SAFETY: `byte` is valid for 1 byte.
                        let sent = unsafe {
                            libc::send(c.fd, byte.as_ptr().cast(), 1, libc::MSG_NOSIGNAL)
                        };
                        if sent == 1 {
                            c.state = State::AwaitingEcho;
                            true
                        } else {
                            close(c.fd);
                            fail(&mut report, last_error("send"));
                            false
                        }
                    }
                    State::AwaitingEcho => {
                        let mut byte = [0u8; 1];
                        // SAFETY: `byte` is valid and writable for 1 byte.
                        let got = unsafe { libc::recv(c.fd, byte.as_mut_ptr().cast(), 1, 0) };
                        if got < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock
                        {
                            return true;
                        }
                        close(c.fd);
                        if got == 1 && byte[0] == b'x' {
                            record_cycle(&mut report, &mut hist, c.started);
                        } else if got == 0 {
                            fail(&mut report, "server closed before echoing".into());
                        } else {
                            fail(&mut report, last_error("recv"));
                        }
                        false
                    }
                }
            })?;
        }
    }
    Ok(finish(report, &hist, start))
}
