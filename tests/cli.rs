//! End-to-end tests of the `servercore` binary (DESIGN.md "Contract for the binary",
//! PROTOCOL.md sections 1 and 4): echo-server lifecycle and signals, dummy-client against a
//! live server and against nothing, the demo, flag validation, and a port already in use.
//!
//! Every child process is owned by a [`Proc`] guard that kills it on drop, and every wait
//! (a stdout line, an exit) is bounded, so a hung binary fails a test instead of hanging it.
//! `SERVERCORE_BACKEND` is inherited from the test run, so
//! `SERVERCORE_BACKEND=poll cargo test -p servercore-cli --test cli` runs everything on poll.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc::TryRecvError;
use std::thread::{self};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// Socket read/write timeout of the test clients.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a command to completion (bounded by [`RUN_TIMEOUT`]).
fn run(args: &[&str]) -> Finished {
    Proc::spawn(args).finish(RUN_TIMEOUT)
}

/// Starts `echo-server --addr 127.0.0.1:0 --workers N` and waits for its readiness line.
fn start_echo_server(workers: u32, env: &[(&str, &str)]) -> (Proc, SocketAddr, String) {
    let w = workers.to_string();
    let mut server =
        Proc::spawn_env(&["echo-server", "--addr", "127.0.0.1:0", "--workers", &w], env);
    let line = server.next_line(LINE_TIMEOUT);
    let (addr, backend) = parse_ready(&line, workers);
    (server, addr, backend)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s
}

/// Sends `payload` on `stream` (from a second thread, so that a large payload cannot
/// deadlock against the echo) and checks that exactly the same bytes come back.
fn echo_round_trip(stream: &mut TcpStream, payload: &[u8]) {
    let mut writer = stream.try_clone().expect("clone the client socket");
    let data = payload.to_vec();
    let w = thread::spawn(move || writer.write_all(&data));
    let mut back = vec![0u8; payload.len()];
    let mut got = 0;
    while got < back.len() {
        match stream.read(&mut back[got..]) {
            Ok(0) => panic!(
                "server closed the connection after echoing {got} of {} bytes",
                payload.len()
            ),
            Ok(n) => got += n,
            Err(e) => panic!("reading the echo failed after {got} of {} bytes: {e}", payload.len()),
        }
    }
    w.join()
        .expect("writer thread")
        .unwrap_or_else(|e| panic!("sending {} bytes failed: {e}", payload.len()));
    if let Some(i) = (0..payload.len()).find(|&i| back[i] != payload[i]) {
        panic!(
            "echo differs at byte {i} of {}: sent {:#04x}, got {:#04x}",
            payload.len(),
            payload[i],
            back[i]
        );
    }
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i.wrapping_mul(7) ^ (i >> 8)) as u8).collect()
}

fn assert_exit_code(f: &Finished, code: i32) {
    assert_eq!(f.status.code(), Some(code), "wrong exit status:\n{}", f.describe());
}

/// Sends `sig` to a running echo-server and checks that it exits with status 0 in time.
fn stop_with(server: Proc, sig: libc::c_int, sig_name: &str) -> Finished {
    server.signal(sig);
    let f = server.finish(EXIT_TIMEOUT);
    assert_exit_code(&f, 0);
    assert_no_panic(&f);
    assert!(
        f.stderr.contains(&format!("{sig_name} received")),
        "expected `{sig_name} received` on stderr:\n{}",
        f.describe()
    );
    f
}

/// Test 1: readiness line, backend, echo round trips, then a signal and exit status 0.
fn echo_server_lifecycle(sig: libc::c_int, sig_name: &str, client_open_at_signal: bool) {
    let (server, addr, backend) = start_echo_server(2, &[]);
    if let Some(forced) = forced_backend() {
        assert_eq!(
            backend, forced,
            "SERVERCORE_BACKEND={forced} but the readiness line names {backend}"
        );
    }

    let mut client = connect(addr);
    echo_round_trip(&mut client, b"hello, servercore");
    echo_round_trip(&mut client, &[0u8]);
    echo_round_trip(&mut client, &pattern(100 * 1024));
    // A second connection, concurrently open, is served too.
    let mut other = connect(addr);
    echo_round_trip(&mut other, &pattern(4096));
    echo_round_trip(&mut client, b"still echoing");
    drop(other);

    if client_open_at_signal {
        stop_with(server, sig, sig_name);
        // The graceful shutdown closes the open session: the client sees EOF (or a reset),
        // not a hang.
        let mut buf = [0u8; 16];
        match client.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => panic!("unexpected {n} bytes after shutdown"),
        }
    } else {
        drop(client);
        stop_with(server, sig, sig_name);
    }
}

#[test]
fn echo_server_ready_line_echo_and_sigterm_exit_0() {
    echo_server_lifecycle(libc::SIGTERM, "SIGTERM", false);
}

#[test]
fn echo_server_ready_line_echo_and_sigint_exit_0_with_client_open() {
    echo_server_lifecycle(libc::SIGINT, "SIGINT", true);
}

#[test]
fn echo_server_honours_forced_poll_backend() {
    let (server, addr, backend) = start_echo_server(2, &[("SERVERCORE_BACKEND", "poll")]);
    assert_eq!(backend, "poll");
    let mut client = connect(addr);
    echo_round_trip(&mut client, &pattern(100 * 1024));
    drop(client);
    stop_with(server, libc::SIGTERM, "SIGTERM");
}

#[test]
fn echo_server_single_worker_ready_line() {
    let (server, addr, _) = start_echo_server(1, &[]);
    let mut client = connect(addr);
    echo_round_trip(&mut client, b"one worker");
    drop(client);
    stop_with(server, libc::SIGTERM, "SIGTERM");
}

#[test]
fn unknown_backend_env_is_a_clear_error() {
    let f = Proc::spawn_env(
        &["echo-server", "--addr", "127.0.0.1:0"],
        &[("SERVERCORE_BACKEND", "bogus")],
    )
    .finish(RUN_TIMEOUT);
    assert_failed_cleanly(&f);
    assert!(
        f.stderr.contains("SERVERCORE_BACKEND") && f.stderr.contains("bogus"),
        "expected the error to name SERVERCORE_BACKEND and the bad value:\n{}",
        f.describe()
    );
    assert!(!f.stdout.contains("listening on"), "must not report readiness:\n{}", f.describe());
}

/// Test 2: the dummy client against a live echo server, JSON report.
#[test]
fn dummy_client_json_against_echo_server() {
    let (server, addr, _) = start_echo_server(2, &[]);
    let a = addr.to_string();
    let f = run(&[
        "dummy-client",
        "--addr",
        &a,
        "--mode",
        "echo",
        "--sessions",
        "50",
        "--size",
        "64",
        "--depth",
        "4",
        "--secs",
        "1",
        "--json",
    ]);
    assert_exit_code(&f, 0);
    assert_no_panic(&f);
    let json = f
        .stdout
        .lines()
        .find(|l| l.trim_start().starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON object on stdout:\n{}", f.describe()))
        .trim();
    assert!(json.ends_with('}'), "JSON not one line: {json}");
    let field =
        |k: &str| json_u64(json, k).unwrap_or_else(|| panic!("no integer field {k:?} in {json}"));
    assert_eq!(field("errors"), 0, "{json}");
    assert_eq!(field("connected"), 50, "{json}");
    assert_eq!(field("sessions"), 50, "{json}");
    assert!(field("messages") > 0, "{json}");
    assert!(json.contains("\"mode\":\"echo\""), "{json}");
    assert!(json.contains("\"first_error\":null"), "{json}");
    stop_with(server, libc::SIGTERM, "SIGTERM");
}

/// Open loop with a ramp: sessions connect over 0.3 s, then each sends 100 msg/s on a
/// timer. Timers never fire early, so the count cannot exceed the rate (plus the first
/// tick's rounding); it reaches a fair part of it unless the machine stalls badly.
#[test]
fn dummy_client_open_loop_rate_with_ramp() {
    let (server, addr, _) = start_echo_server(1, &[]);
    let a = addr.to_string();
    let f = run(&[
        "dummy-client",
        "--addr",
        &a,
        "--sessions",
        "10",
        "--rate",
        "100",
        "--depth",
        "4",
        "--ramp-secs",
        "0.3",
        "--secs",
        "1",
        "--json",
    ]);
    assert_exit_code(&f, 0);
    assert_no_panic(&f);
    let json = f.stdout.lines().find(|l| l.trim_start().starts_with('{')).expect("JSON").trim();
    let field = |k: &str| json_u64(json, k).unwrap_or_else(|| panic!("no {k:?} in {json}"));
    assert_eq!(field("errors"), 0, "{json}");
    assert_eq!(field("connected"), 10, "{json}");
    assert!(json.contains("\"rate\":100"), "{json}");
    let secs: f64 =
        json.split("\"secs\":").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    let most = (10.0 * 100.0 * secs) as u64 + 10 * 2;
    assert!(field("messages") <= most, "open loop sent over its rate: {json}");
    assert!(field("messages") > 0, "{json}");
    // Bad values are refused clearly.
    let bad = run(&["dummy-client", "--addr", &a, "--rate", "0"]);
    assert!(bad.status.code() != Some(0) && bad.stderr.contains("--rate"), "{}", bad.describe());
    stop_with(server, libc::SIGTERM, "SIGTERM");
}

#[test]
fn dummy_client_text_report_against_echo_server() {
    let (server, addr, _) = start_echo_server(2, &[]);
    let a = addr.to_string();
    let f =
        run(&["dummy-client", "--addr", &a, "--sessions", "10", "--size", "1000", "--secs", "1"]);
    assert_exit_code(&f, 0);
    assert_no_panic(&f);
    assert!(
        f.stdout.contains("10 sessions (10 connected)") && f.stdout.contains("errors    0 "),
        "unexpected report:\n{}",
        f.describe()
    );
    stop_with(server, libc::SIGTERM, "SIGTERM");
}

/// Test 3: nothing listens at the address.
#[test]
fn dummy_client_unreachable_address_fails_cleanly() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
        l.local_addr().unwrap().port()
    };
    let a = format!("127.0.0.1:{port}");
    let f = run(&["dummy-client", "--addr", &a, "--sessions", "4", "--secs", "1"]);
    assert_failed_cleanly(&f);
    let err = f.stderr.to_lowercase();
    assert!(
        err.contains("cannot reach") || err.contains("connection refused"),
        "expected `cannot reach` or a connection-refused message on stderr:\n{}",
        f.describe()
    );
    assert!(f.stderr.contains(&a), "the error should name the address {a}:\n{}", f.describe());
    assert!(
        f.elapsed < Duration::from_secs(20),
        "a refused connection should fail fast:\n{}",
        f.describe()
    );
}

/// Test 4: the demo.
#[test]
fn demo_runs_and_reports_no_errors() {
    let f = run(&["demo", "--secs", "1", "--sessions", "20"]);
    assert_exit_code(&f, 0);
    assert_no_panic(&f);
    assert!(
        f.stdout.contains("servercore demo: chat server on 127.0.0.1:"),
        "no demo banner:\n{}",
        f.describe()
    );
    assert!(
        f.stdout.contains("20 sessions (20 connected)"),
        "not every session connected:\n{}",
        f.describe()
    );
    assert!(
        f.stdout.contains("errors    0 "),
        "expected `errors    0` in the summary:\n{}",
        f.describe()
    );
    if let Some(forced) = forced_backend() {
        assert!(
            f.stdout.contains(&format!("(backend: {forced},")),
            "SERVERCORE_BACKEND={forced} not honoured by the demo:\n{}",
            f.describe()
        );
    }
}

#[test]
fn no_arguments_runs_the_demo() {
    // The default demo: 200 chat sessions for 10 s.
    let f = run(&[]);
    assert_exit_code(&f, 0);
    assert_no_panic(&f);
    assert!(
        f.stdout.contains("servercore demo: chat server on 127.0.0.1:")
            && f.stdout.contains("200 client sessions for 10 s")
            && f.stdout.contains("200 sessions (200 connected)")
            && f.stdout.contains("errors    0 "),
        "no arguments should run the default demo cleanly:\n{}",
        f.describe()
    );
}

/// Test 5: invalid flag values.
#[test]
fn invalid_flags_give_clear_errors() {
    // (arguments, text the error must contain)
    let cases: &[(&[&str], &str)] = &[
        (&["echo-server", "--addr", "nonsense"], "nonsense"),
        (&["echo-server", "--addr", "nonsense"], "--addr"),
        (&["dummy-client", "--addr", "127.0.0.1:1", "--sessions", "0"], "--sessions"),
        // clap reads `-1` as an unknown flag rather than a value of --secs.
        (&["demo", "--secs", "-1"], "-1"),
        (&["demo", "--secs=-1"], "--secs must be a positive"),
        (&["demo", "--secs", "0"], "--secs must be a positive"),
        (&["dummy-client", "--addr", "127.0.0.1:1", "--secs", "nan"], "--secs must be a positive"),
        (&["echo-server", "--workers", "0"], "--workers"),
        (&["demo", "--sessions", "0"], "--sessions"),
        (&["dummy-client", "--sessions", "5"], "--addr"),
        (&["no-such-command"], "no-such-command"),
    ];
    for (args, needle) in cases {
        let f = run(args);
        assert_failed_cleanly(&f);
        assert!(f.stderr.contains("error"), "no error message on stderr:\n{}", f.describe());
        assert!(f.stderr.contains(needle), "expected {needle:?} in the error:\n{}", f.describe());
        assert!(!f.stdout.contains("listening on"), "must not start serving:\n{}", f.describe());
    }
}

/// Test 6: a second server on a port that one already serves must fail with "in use".
fn second_server_on_same_port(workers: u32) {
    let (mut first, addr, _) = start_echo_server(workers, &[]);
    let w = workers.to_string();
    let a = addr.to_string();
    let mut second = Proc::spawn(&["echo-server", "--addr", &a, "--workers", &w]);
    let deadline = Instant::now() + LINE_TIMEOUT;
    loop {
        match second.stdout.try_recv() {
            Ok(line) => {
                // The bug: the second process bound the same port. Show that it really
                // serves it: stop the first, and the port still echoes.
                first.signal(libc::SIGTERM);
                let first_status = first.wait_timeout(EXIT_TIMEOUT);
                let still_served = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .ok()
                    .map(|mut s| {
                        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                        let _ = s.write_all(b"who?");
                        let mut b = [0u8; 4];
                        s.read_exact(&mut b).is_ok() && &b == b"who?"
                    })
                    .unwrap_or(false);
                panic!(
                    "BUG: a second `echo-server --addr {a} --workers {workers}` started on a port \
                     the first one already listens on; it printed {line:?} instead of failing \
                     with \"address in use\". Both processes listened on {a} at once (SO_REUSEPORT \
                     on every per-worker listener, same UID), so the kernel splits new \
                     connections between them. After SIGTERM to the first (status \
                     {first_status:?}), {a} still echoes: {still_served}."
                );
            }
            Err(TryRecvError::Disconnected) | Err(TryRecvError::Empty) => {}
        }
        if second.try_wait().is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "second server neither failed nor became ready within {LINE_TIMEOUT:?}; stderr:\n{}",
            second.stderr_so_far()
        );
        thread::sleep(Duration::from_millis(10));
    }
    let f = second.finish(EXIT_TIMEOUT);
    assert_failed_cleanly(&f);
    assert!(
        f.stderr.contains("in use"),
        "expected an `in use` error from the second server:\n{}",
        f.describe()
    );
    assert!(
        !f.stdout.contains("listening on"),
        "the second server reported readiness:\n{}",
        f.describe()
    );
    // The first server is unaffected.
    let mut client = connect(addr);
    echo_round_trip(&mut client, b"first server still serves");
    drop(client);
    stop_with(first, libc::SIGTERM, "SIGTERM");
}

#[test]
fn addr_in_use_single_worker_servers() {
    second_server_on_same_port(1);
}

#[test]
fn addr_in_use_multi_worker_servers() {
    second_server_on_same_port(2);
}
