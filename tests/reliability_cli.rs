//! Accept under file-descriptor exhaustion (issue 6), against the real binary: an
//! `echo-server` started with `RLIMIT_NOFILE` lowered to 64 runs out of descriptors; the
//! sessions it has keep being served, it does not spin (its CPU time over a one-second
//! window of exhaustion stays under 30 % of that window), it logs the failing accept once
//! for the burst, and once descriptors are free again it accepts and serves new clients.
//!
//! `SERVERCORE_BACKEND` is inherited from the test run, so
//! `SERVERCORE_BACKEND=poll cargo test -p servercore-cli --test reliability_cli` runs the
//! child on poll. Every wait is bounded; the child is killed if the test fails.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_servercore");
/// The child's soft limit on open files.
const NOFILE: u64 = 64;
/// Connections made beyond what the server can accept: they wait in the listen backlog.
const EXTRA: usize = 16;
/// The exhaustion window whose CPU time is measured.
const WINDOW: Duration = Duration::from_secs(1);
/// Largest share of the window the server may spend on the CPU while it cannot accept.
const MAX_CPU_SHARE: f64 = 0.30;
/// Safety net of every wait.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The child server; killed and reaped on drop.
struct Server {
    child: Child,
    stderr: Arc<Mutex<String>>,
    addr: SocketAddr,
}

impl Server {
    fn start() -> Server {
        let mut cmd = Command::new(BIN);
        cmd.args(["echo-server", "--addr", "127.0.0.1:0", "--workers", "1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: the closure runs in the forked child before `exec`, where only
        // async-signal-safe functions may be called: it makes two system calls
        // (getrlimit, setrlimit) on stack values, and its error path builds an
        // `io::Error` from the errno without allocating. It touches no lock and no memory
        // shared with the parent.
        unsafe {
            cmd.pre_exec(|| {
                let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
                if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
                    return Err(io::Error::last_os_error());
                }
                let lowered = libc::rlimit { rlim_cur: NOFILE.min(lim.rlim_max), ..lim };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lowered) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));

        let err = child.stderr.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        thread::spawn(move || {
            let mut err = err;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = err.read(&mut chunk) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut server = Server { child, stderr, addr: "0.0.0.0:0".parse().unwrap() };
        let line = rx
            .recv_timeout(TIMEOUT)
            .unwrap_or_else(|e| panic!("no readiness line ({e:?}); stderr: {}", server.stderr()));
        // "listening on 127.0.0.1:PORT (backend: B, workers: 1)"
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected readiness line {line:?}"));
        eprintln!("child {}: {line}", server.child.id());
        server.addr = addr;
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Open descriptors of the child below `NOFILE`, the ones the limit governs (a
    /// descriptor inherited above it, such as a build tool's jobserver pipe, does not
    /// count against it).
    fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("/proc/PID/fd")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .filter(|fd| *fd < NOFILE)
            .count()
    }

    /// User + system CPU time of the child (all threads), in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let after = &stat[stat.rfind(')').expect("comm") + 1..];
        let fields: Vec<&str> = after.split_whitespace().collect();
        // fields[0] is `state` (field 3 of proc(5)); utime and stime are fields 14 and 15.
        let utime: u64 = fields[11].parse().unwrap();
        let stime: u64 = fields[12].parse().unwrap();
        utime + stime
    }

    /// SIGTERM, then a bounded wait for a clean exit.
    fn terminate(mut self) {
        // SAFETY: kill(2) with the pid of a child this test owns and has not reaped.
        let r = unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        assert_eq!(r, 0, "kill: {}", io::Error::last_os_error());
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status:?}; stderr:\n{}", self.stderr());
                return;
            }
            assert!(Instant::now() < deadline, "no exit after SIGTERM; stderr:\n{}", self.stderr());
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s.set_write_timeout(Some(TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn roundtrip(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).expect("write to the server");
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).expect("read the echo");
    assert_eq!(back, msg);
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(t > 0);
    t as f64
}

fn wait_for(what: &str, server: &Server, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !cond() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; child stderr:\n{}",
            server.stderr()
        );
        thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn accept_survives_fd_exhaustion_without_spinning_and_recovers() {
    let server = Server::start();
    let addr = server.addr;
    let start_fds = server.fds();

    // Connect and round-trip one client at a time until the server holds NOFILE fds: each
    // round trip proves that client has a session (and an fd).
    let mut served: Vec<TcpStream> = Vec::new();
    while (server.fds() as u64) < NOFILE {
        assert!(served.len() < NOFILE as usize, "the fd limit does not seem to apply");
        let mut c = connect(addr);
        roundtrip(&mut c, format!("client {}", served.len()).as_bytes());
        served.push(c);
    }
    eprintln!(
        "server started with {start_fds} fds; {} sessions fill its limit of {NOFILE}",
        served.len()
    );

    // More connections: the kernel completes them into the backlog, the server cannot
    // take them (EMFILE).
    let mut waiting: Vec<TcpStream> = (0..EXTRA).map(|_| connect(addr)).collect();
    for (i, c) in waiting.iter_mut().enumerate() {
        c.write_all(format!("waiting {i}").as_bytes()).unwrap();
    }
    wait_for("the accept failure to be logged", &server, || {
        server.stderr().contains("accept failed")
    });

    // The window: accept keeps failing; the server must sleep between retries.
    let ticks_before = server.cpu_ticks();
    let t0 = Instant::now();
    thread::sleep(WINDOW);
    let ticks = server.cpu_ticks() - ticks_before;
    let wall = t0.elapsed().as_secs_f64();
    let share = ticks as f64 / clock_ticks_per_second() / wall;
    eprintln!("CPU during {wall:.2} s of exhaustion: {ticks} ticks = {:.1} %", share * 100.0);
    assert!(
        share < MAX_CPU_SHARE,
        "the server used {:.0} % of a CPU while out of fds (a busy loop?)",
        share * 100.0
    );
    assert_eq!(server.fds() as u64, NOFILE, "still exactly at the limit");
    // Logged once for the whole burst of failures.
    let logged = server.stderr().matches("accept failed").count();
    assert_eq!(logged, 1, "accept failure logged {logged} times:\n{}", server.stderr());

    // The sessions it has are still served.
    for (i, c) in served.iter_mut().enumerate() {
        roundtrip(c, format!("still served {i}").as_bytes());
    }

    // Free descriptors: the waiting connections go away (the server still has to accept
    // and close them) and so do half of the served ones.
    drop(waiting.drain(..));
    let keep = served.len() / 2;
    served.truncate(keep);
    let t1 = Instant::now();
    let mut fresh = connect(addr);
    roundtrip(&mut fresh, b"served again");
    eprintln!("a new client was served {:?} after fds were freed", t1.elapsed());
    for (i, c) in served.iter_mut().enumerate() {
        roundtrip(c, format!("and still {i}").as_bytes());
    }
    drop(served);
    drop(fresh);
    wait_for("the server to release every session's fd", &server, || server.fds() == start_fds);
    server.terminate();
}
