//! Child-process helpers shared by the CLI integration tests: spawn `servercore` with its
//! output read in the background, wait for lines and exits with deadlines, kill on drop.
#![allow(dead_code)] // each test binary uses its own subset

/// A self-signed certificate as PEM files, for the TLS flags.
pub mod certs;
/// A real nats-server, shared with the library's tests.
#[path = "../../servercore/tests/common/nats.rs"]
pub mod nats;
/// Installs a missing Debian package a test needs (nats-server, chromium).
#[path = "../../servercore/tests/common/provision.rs"]
pub mod provision;

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_servercore");
/// Longest wait for one stdout line (the readiness line included).
pub const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to exit after a signal.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest run of a command expected to finish by itself.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(90);

/// A running `servercore` child: stdout as lines over a channel, stderr collected in the
/// background. Dropping it kills the child if it still runs, and reaps it.
pub struct Proc {
    pub child: Child,
    pub what: String,
    pub stdout: Receiver<String>,
    pub stdout_thread: Option<JoinHandle<()>>,
    pub stderr: Arc<Mutex<String>>,
    pub stderr_thread: Option<JoinHandle<()>>,
}

/// What a finished child left behind.
pub struct Finished {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "`servercore {}` exited with {:?} after {:.1} s\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            self.elapsed.as_secs_f64(),
            self.stdout,
            self.stderr
        )
    }
}

impl Proc {
    pub fn spawn(args: &[&str]) -> Proc {
        Proc::spawn_env(args, &[])
    }

    pub fn spawn_env(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                match line {
                    Ok(l) => {
                        if tx.send(l).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        });
        let mut err = child.stderr.take().expect("piped stderr");
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let stderr_thread = thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                match err.read(&mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => sink
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&String::from_utf8_lossy(&chunk[..n])),
                }
            }
        });
        Proc {
            child,
            what: args.join(" "),
            stdout: rx,
            stdout_thread: Some(stdout_thread),
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }

    pub fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next stdout line, or a panic (the guard then kills the child).
    pub fn next_line(&mut self, timeout: Duration) -> String {
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!(
                "`servercore {}`: no stdout line within {timeout:?}; stderr so far:\n{}",
                self.what,
                self.stderr_so_far()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                // Give the stderr reader a moment to catch the reason.
                let status = self.wait_timeout(Duration::from_secs(5));
                if let Some(t) = self.stderr_thread.take() {
                    let _ = t.join();
                }
                panic!(
                    "`servercore {}`: stdout closed before the expected line (status {status:?}); stderr:\n{}",
                    self.what,
                    self.stderr_so_far()
                )
            }
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) only sends a signal to our own child, which we have not reaped yet
        // (the Child is still owned here), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
    }

    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().expect("try_wait on the child")
    }

    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the child to exit (at most `timeout`, else panics and the guard kills it)
    /// and collects everything it printed.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let start = Instant::now();
        let Some(status) = self.wait_timeout(timeout) else {
            panic!(
                "`servercore {}` did not exit within {timeout:?}; stderr so far:\n{}",
                self.what,
                self.stderr_so_far()
            );
        };
        let elapsed = start.elapsed();
        if let Some(t) = self.stdout_thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.stderr_thread.take() {
            let _ = t.join();
        }
        let mut stdout = String::new();
        while let Ok(line) = self.stdout.try_recv() {
            stdout.push_str(&line);
            stdout.push('\n');
        }
        Finished { what: self.what.clone(), status, stdout, stderr: self.stderr_so_far(), elapsed }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The backend `SERVERCORE_BACKEND` forces on this test run, if any (diagnostic switches
/// after a colon do not change it).
pub fn forced_backend() -> Option<&'static str> {
    let spec = std::env::var("SERVERCORE_BACKEND").ok();
    match spec.as_deref().map(|s| s.split_once(':').map_or(s, |(name, _)| name)) {
        Some("io_uring") => Some("io_uring"),
        Some("poll") => Some("poll"),
        _ => None,
    }
}

/// Checks the readiness line of PROTOCOL.md section 4 exactly; returns the address and the
/// backend it names.
pub fn parse_ready(line: &str, workers: u32) -> (SocketAddr, String) {
    let bad = |why: &str| -> ! {
        panic!(
            "readiness line {line:?} {why}; expected \
             `listening on 127.0.0.1:<port> (backend: <io_uring|poll>, workers: {workers})`"
        )
    };
    let Some(rest) = line.strip_prefix("listening on 127.0.0.1:") else {
        bad("does not start with `listening on 127.0.0.1:`")
    };
    let Some((port, rest)) = rest.split_once(" (backend: ") else {
        bad("has no ` (backend: ` after the port")
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
        bad("has a port that is not a decimal number");
    }
    let port: u16 = port.parse().unwrap_or_else(|_| bad("has a port out of range"));
    if port == 0 {
        bad("names port 0 instead of the bound port");
    }
    let Some((backend, rest)) = rest.split_once(", workers: ") else {
        bad("has no `, workers: ` after the backend")
    };
    if backend != "io_uring" && backend != "poll" {
        bad("names a backend other than io_uring or poll");
    }
    if rest != format!("{workers})") {
        bad("has the wrong worker count or trailing text");
    }
    (SocketAddr::from(([127, 0, 0, 1], port)), backend.to_string())
}

/// Checks the readiness line of a WebSocket listener (PROTOCOL.md section 4) exactly:
/// `listening on 127.0.0.1:<port> (backend: <b>, workers: <n>[, tls], websocket)`.
pub fn parse_ready_ws(line: &str, workers: u32, tls: bool) -> (SocketAddr, String) {
    let suffix = if tls { ", tls, websocket)" } else { ", websocket)" };
    let Some(plain) = line.strip_suffix(suffix) else {
        panic!("WebSocket readiness line {line:?} does not end in `{suffix}`")
    };
    parse_ready(&format!("{plain})"), workers)
}

/// Reads the readiness lines of a server started with `--ws-addr`: the TCP listener's,
/// then the WebSocket listener's. Returns both addresses and the backend they name.
pub fn ready_tcp_and_ws(
    server: &mut Proc,
    workers: u32,
    tls: bool,
) -> (SocketAddr, SocketAddr, String) {
    let first = server.next_line(LINE_TIMEOUT);
    let tcp_line = if tls {
        match first.strip_suffix(", tls)") {
            Some(plain) => format!("{plain})"),
            None => panic!("readiness line {first:?} does not end in `, tls)`"),
        }
    } else {
        first
    };
    let (tcp, backend) = parse_ready(&tcp_line, workers);
    let second = server.next_line(LINE_TIMEOUT);
    let (ws, ws_backend) = parse_ready_ws(&second, workers, tls);
    assert_eq!(backend, ws_backend, "the two readiness lines name different backends");
    assert_ne!(tcp, ws, "the TCP and WebSocket listeners have one address");
    (tcp, ws, backend)
}

/// The process did not panic (no "panicked" in its output).
pub fn assert_no_panic(f: &Finished) {
    assert!(
        !f.stderr.contains("panicked") && !f.stdout.contains("panicked"),
        "the binary panicked:\n{}",
        f.describe()
    );
}

/// The process failed cleanly: a non-zero exit code (not a signal) and no panic.
pub fn assert_failed_cleanly(f: &Finished) {
    assert!(
        matches!(f.status.code(), Some(c) if c != 0),
        "expected a non-zero exit code (not a signal):\n{}",
        f.describe()
    );
    assert_no_panic(f);
}

/// The first line a server started with `SERVERCORE_BACKEND=backend` prints (its first
/// readiness line), with the server; or `None`, after saying why, when it exited without
/// one for want of io_uring (a forced io_uring is refused where the kernel lacks it, and
/// the test is then skipped).
pub fn first_line_or_skip(mut proc: Proc, backend: &str) -> Option<(Proc, String)> {
    match proc.stdout.recv_timeout(LINE_TIMEOUT) {
        Ok(line) => Some((proc, line)),
        Err(RecvTimeoutError::Disconnected) if backend == "io_uring" => {
            let f = proc.finish(EXIT_TIMEOUT);
            assert!(
                f.stderr.contains("io_uring"),
                "no readiness line, and not for want of io_uring:\n{}",
                f.describe()
            );
            eprintln!("skipped: io_uring is not available here:\n{}", f.stderr);
            None
        }
        Err(_) => {
            let line = proc.next_line(LINE_TIMEOUT); // panics with the details
            Some((proc, line))
        }
    }
}

/// Value of a non-negative integer field of a flat JSON object, by string search
/// (the first occurrence of the key).
pub fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let start = json.find(&pat)? + pat.len();
    let digits: String = json[start..]
        .chars()
        .skip_while(|c| c.is_whitespace())
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// SIGTERM, then a clean exit: status 0 and no panic.
pub fn stop_cleanly(server: Proc) -> Finished {
    server.signal(libc::SIGTERM);
    let f = server.finish(EXIT_TIMEOUT);
    assert_no_panic(&f);
    assert_eq!(f.status.code(), Some(0), "server did not exit cleanly:\n{}", f.describe());
    f
}

/// Runs `dummy-client args` on `backend` to completion.
pub fn dummy_on(backend: &str, args: &[&str]) -> Finished {
    let mut all = vec!["dummy-client"];
    all.extend_from_slice(args);
    Proc::spawn_env(&all, &[("SERVERCORE_BACKEND", backend)]).finish(RUN_TIMEOUT)
}
