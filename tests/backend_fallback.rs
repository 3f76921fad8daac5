//! Backend fallback of the `servercore` binary (issue 4): a process whose io_uring system
//! calls fail starts on the poll backend and says so on stderr, and a forced io_uring there
//! is a clean startup error.
//!
//! The real refusal comes from a seccomp filter (`SERVERCORE_SECCOMP_DENY_IO_URING=1`, see
//! `servercore::sys::deny_io_uring`) that the child installs first thing in `main`, as
//! Docker's default profile refuses io_uring; the hook `SERVERCORE_TEST_DENY_IO_URING=1`
//! (which the CLI turns into the library's `Diagnostics::deny_io_uring`) is tested too.
//! Installing the filter in the test process would poison it, hence CLI tests only.
//!
//! The children's environment is set explicitly (`SERVERCORE_BACKEND`, the two deny
//! switches and `RUST_LOG` removed unless a test sets them), so these tests mean the same
//! whatever backend the outer run forces. Every child is killed on drop and every wait is
//! bounded.

#![cfg(target_os = "linux")]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_servercore");
/// Longest wait for the readiness line.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait for a server to exit after SIGTERM, or to fail at startup.
const EXIT_TIMEOUT: Duration = Duration::from_secs(15);
/// Socket timeouts of the test client.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables that change the backend choice or the log output; removed from
/// every child unless a test sets them.
const CONTROLLED_ENV: [&str; 4] = [
    "SERVERCORE_BACKEND",
    "SERVERCORE_SECCOMP_DENY_IO_URING",
    "SERVERCORE_TEST_DENY_IO_URING",
    "RUST_LOG",
];

/// The warn line of `BackendChoice::resolve` when the probe fails (driver/select.rs).
const FALLBACK_PREFIX: &str = "io_uring not usable (";
const FALLBACK_SUFFIX: &str = "); using the poll backend";

/// A running `servercore` child: stdout lines over a channel, stderr collected in the
/// background. Dropping it kills the child if it still runs, and reaps it.
struct Proc {
    child: Child,
    what: String,
    stdout: Receiver<String>,
    stdout_thread: Option<JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// What a finished child left behind.
struct Finished {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Finished {
    fn describe(&self) -> String {
        format!(
            "`servercore {}` exited with {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what, self.status, self.stdout, self.stderr
        )
    }
}

impl Proc {
    /// Starts `servercore args` with exactly `env` among [`CONTROLLED_ENV`].
    fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(BIN);
        cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        for k in CONTROLLED_ENV {
            cmd.env_remove(k);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("cannot start {BIN}: {e}"));
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        let stdout_thread = thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
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
        let what = format!("{} (env {env:?})", args.join(" "));
        Proc {
            child,
            what,
            stdout: rx,
            stdout_thread: Some(stdout_thread),
            stderr,
            stderr_thread: Some(stderr_thread),
        }
    }

    fn stderr_so_far(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The next stdout line, or a panic (the guard then kills the child).
    fn next_line(&mut self, timeout: Duration) -> String {
        match self.stdout.recv_timeout(timeout) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!(
                "`servercore {}`: no stdout line within {timeout:?}; stderr so far:\n{}",
                self.what,
                self.stderr_so_far()
            ),
            Err(RecvTimeoutError::Disconnected) => {
                let status = self.wait_timeout(Duration::from_secs(5));
                if let Some(t) = self.stderr_thread.take() {
                    let _ = t.join();
                }
                panic!(
                    "`servercore {}`: stdout closed before the readiness line (status {status:?}); stderr:\n{}",
                    self.what,
                    self.stderr_so_far()
                )
            }
        }
    }

    /// The `Seccomp:` mode of the child from /proc (0 none, 1 strict, 2 filter).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    fn seccomp_mode(&self) -> Option<u32> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        status.lines().find_map(|l| l.strip_prefix("Seccomp:")).and_then(|v| v.trim().parse().ok())
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) only sends a signal to our own child, which is not reaped yet (the
        // Child is still owned here), so the pid cannot have been reused.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed: {}", std::io::Error::last_os_error());
    }

    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait on the child") {
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
    fn finish(mut self, timeout: Duration) -> Finished {
        let Some(status) = self.wait_timeout(timeout) else {
            panic!(
                "`servercore {}` did not exit within {timeout:?}; stderr so far:\n{}",
                self.what,
                self.stderr_so_far()
            );
        };
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
        Finished { what: self.what.clone(), status, stdout, stderr: self.stderr_so_far() }
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

/// Checks the readiness line (PROTOCOL.md section 4) and returns the address, the backend
/// and the worker count it names.
fn parse_ready(line: &str) -> (SocketAddr, String, u32) {
    let bad = |why: &str| -> ! {
        panic!(
            "readiness line {line:?} {why}; expected \
             `listening on 127.0.0.1:<port> (backend: <io_uring|poll>, workers: <n>)`"
        )
    };
    let rest = line
        .strip_prefix("listening on 127.0.0.1:")
        .unwrap_or_else(|| bad("does not start with `listening on 127.0.0.1:`"));
    let (port, rest) =
        rest.split_once(" (backend: ").unwrap_or_else(|| bad("has no ` (backend: `"));
    let port: u16 = port.parse().unwrap_or_else(|_| bad("has no valid port"));
    if port == 0 {
        bad("names port 0 instead of the bound port");
    }
    let (backend, rest) =
        rest.split_once(", workers: ").unwrap_or_else(|| bad("has no `, workers: `"));
    let workers: u32 = rest
        .strip_suffix(')')
        .and_then(|w| w.parse().ok())
        .unwrap_or_else(|| bad("has no valid worker count"));
    if workers == 0 {
        bad("names 0 workers");
    }
    (SocketAddr::from(([127, 0, 0, 1], port)), backend.to_string(), workers)
}

/// Starts `echo-server --addr 127.0.0.1:0 [extra]` with `env` and waits for its readiness
/// line.
fn start_echo_server(extra: &[&str], env: &[(&str, &str)]) -> (Proc, SocketAddr, String, u32) {
    let mut args = vec!["echo-server", "--addr", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let mut server = Proc::spawn(&args, env);
    let line = server.next_line(LINE_TIMEOUT);
    let (addr, backend, workers) = parse_ready(&line);
    (server, addr, backend, workers)
}

/// One connection, a few echo round trips (small and larger than a socket buffer).
fn check_echo(addr: SocketAddr) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let big: Vec<u8> =
        (0..256 * 1024).map(|i: usize| (i.wrapping_mul(7) ^ (i >> 8)) as u8).collect();
    for payload in [b"hello from a sandbox".to_vec(), big] {
        let mut writer = stream.try_clone().expect("clone the client socket");
        let data = payload.clone();
        // A second thread writes, so that a large payload cannot deadlock against the echo.
        let w = thread::spawn(move || writer.write_all(&data));
        let mut back = vec![0u8; payload.len()];
        stream
            .read_exact(&mut back)
            .unwrap_or_else(|e| panic!("reading the {}-byte echo failed: {e}", payload.len()));
        w.join().expect("writer thread").expect("sending the payload");
        assert!(back == payload, "the echo of {} bytes differs from what was sent", payload.len());
    }
}

/// SIGTERM, then exit status 0 with no panic.
fn stop(server: Proc) -> Finished {
    server.signal(libc::SIGTERM);
    let f = server.finish(EXIT_TIMEOUT);
    assert_eq!(f.status.code(), Some(0), "expected exit status 0 after SIGTERM:\n{}", f.describe());
    assert_no_panic(&f);
    assert!(f.stderr.contains("SIGTERM received"), "no `SIGTERM received`:\n{}", f.describe());
    f
}

fn assert_no_panic(f: &Finished) {
    assert!(
        !f.stderr.contains("panicked") && !f.stdout.contains("panicked"),
        "the binary panicked:\n{}",
        f.describe()
    );
}

/// The reason in the fallback warn line on stderr, checking that there is exactly one.
fn fallback_reason(f: &Finished) -> String {
    let lines: Vec<&str> = f.stderr.lines().filter(|l| l.contains(FALLBACK_PREFIX)).collect();
    assert_eq!(lines.len(), 1, "expected one fallback line on stderr:\n{}", f.describe());
    let line = lines[0];
    assert!(line.contains("WARN"), "the fallback line is not a warning: {line:?}");
    let start = line.find(FALLBACK_PREFIX).unwrap() + FALLBACK_PREFIX.len();
    let len = line[start..].find(FALLBACK_SUFFIX).unwrap_or_else(|| {
        panic!("the fallback line does not end in `{FALLBACK_SUFFIX}`: {line:?}")
    });
    line[start..start + len].to_string()
}

/// Forced io_uring where the kernel refuses it: a clean non-zero exit naming io_uring, no
/// readiness line, no panic. Returns the stderr.
fn assert_forced_io_uring_fails(env: &[(&str, &str)]) -> Finished {
    let server = Proc::spawn(&["echo-server", "--addr", "127.0.0.1:0"], env);
    let f = server.finish(EXIT_TIMEOUT);
    assert!(
        matches!(f.status.code(), Some(c) if c != 0),
        "expected a non-zero exit code (not a signal):\n{}",
        f.describe()
    );
    assert_no_panic(&f);
    assert!(!f.stdout.contains("listening on"), "printed a readiness line:\n{}", f.describe());
    assert!(
        f.stderr.contains("error:")
            && f.stderr.contains("io_uring was requested but is not usable here"),
        "expected a startup error about io_uring on stderr:\n{}",
        f.describe()
    );
    f
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn seccomp_refused_io_uring_starts_on_poll_and_says_why() {
    let (server, addr, backend, workers) =
        start_echo_server(&[], &[("SERVERCORE_SECCOMP_DENY_IO_URING", "1")]);
    assert_eq!(
        server.seccomp_mode(),
        Some(2),
        "the child runs without a seccomp filter; stderr:\n{}",
        server.stderr_so_far()
    );
    assert_eq!(backend, "poll", "io_uring was refused, yet the server runs on {backend}");
    assert!(workers >= 1);
    check_echo(addr);
    let f = stop(server);
    let why = fallback_reason(&f);
    // A real kernel refusal: EPERM from io_uring_setup, not the test hook of the probe.
    assert!(
        why.contains("io_uring_setup") && why.contains("os error 1"),
        "expected io_uring_setup to fail with EPERM (os error 1), got {why:?}:\n{}",
        f.describe()
    );
    assert!(!why.contains("deny_io_uring"), "the hook, not seccomp: {why:?}");
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn seccomp_refused_io_uring_with_forced_io_uring_is_a_clean_error() {
    let f = assert_forced_io_uring_fails(&[
        ("SERVERCORE_SECCOMP_DENY_IO_URING", "1"),
        ("SERVERCORE_BACKEND", "io_uring"),
    ]);
    assert!(
        f.stderr.contains("io_uring_setup") && f.stderr.contains("os error 1"),
        "expected the error to name io_uring_setup and EPERM:\n{}",
        f.describe()
    );
}

#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[test]
fn seccomp_refused_io_uring_with_forced_poll_serves() {
    let (server, addr, backend, _) = start_echo_server(
        &["--workers", "2"],
        &[("SERVERCORE_SECCOMP_DENY_IO_URING", "1"), ("SERVERCORE_BACKEND", "poll")],
    );
    assert_eq!(backend, "poll");
    check_echo(addr);
    let f = stop(server);
    // A forced backend is not a fallback: nothing to explain.
    assert!(!f.stderr.contains(FALLBACK_PREFIX), "unexpected fallback line:\n{}", f.describe());
}

#[test]
fn probe_hook_starts_on_poll_and_says_why() {
    let (server, addr, backend, workers) =
        start_echo_server(&["--workers", "2"], &[("SERVERCORE_TEST_DENY_IO_URING", "1")]);
    assert_eq!(backend, "poll", "the probe hook denied io_uring, yet the server runs on {backend}");
    assert_eq!(workers, 2);
    check_echo(addr);
    let f = stop(server);
    let why = fallback_reason(&f);
    assert!(
        why.contains("denied by Diagnostics::deny_io_uring"),
        "expected the hook as the reason, got {why:?}"
    );
}

#[test]
fn probe_hook_with_forced_io_uring_is_a_clean_error() {
    let f = assert_forced_io_uring_fails(&[
        ("SERVERCORE_TEST_DENY_IO_URING", "1"),
        ("SERVERCORE_BACKEND", "io_uring"),
    ]);
    assert!(
        f.stderr.contains("denied by Diagnostics::deny_io_uring"),
        "expected the error to name the hook:\n{}",
        f.describe()
    );
}
