//! Panics in user code (DESIGN.md invariant 7): a panic in a callback disconnects only
//! that session, with `DisconnectReason::Panic(message)`, and the worker carries on.
//!
//! (This file sorts last among the `engine_*` tests on purpose: its factory test fails
//! against the current library, and cargo stops at the first failing test binary.)

mod common;

use common::{any_port, connect, read_to_end, recorder, roundtrip, Checks, Ev, Hooks};
use servercore::{Ctx, DisconnectReason, ServerService, Session, SessionId};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn panic_in_callback_disconnects_only_that_session() {
    let hooks = Hooks::on_recv(|ctx, data| {
        if data.starts_with(b"panic") {
            panic!("boom {} from the test", 42);
        }
        let _ = ctx.send(data.to_vec());
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();

    let mut others: Vec<_> = (0..4).map(|_| connect(server.local_addr())).collect();
    for c in &mut others {
        roundtrip(c, b"hello");
    }
    let mut bad = connect(server.local_addr());
    roundtrip(&mut bad, b"fine so far");
    for _ in 0..5 {
        log.next_connected();
    }
    let bad_id = session_of(&mut log, b"fine so far");

    bad.write_all(b"panic now").unwrap();
    let (rest, end) = read_to_end(&mut bad);
    assert!(rest.is_empty());
    eprintln!("panicking session's connection ended with {end:?}");
    match log.disconnected(bad_id) {
        DisconnectReason::Panic(msg) => {
            assert!(msg.contains("boom 42 from the test"), "panic message: {msg:?}")
        }
        other => panic!("expected DisconnectReason::Panic, got {other:?}"),
    }

    // Everyone else carries on, on both workers.
    for round in 0..3 {
        for c in &mut others {
            roundtrip(c, format!("still here {round}").as_bytes());
        }
    }
    let mut fresh = connect(server.local_addr());
    roundtrip(&mut fresh, b"new session");
    drop((others, fresh));
    common::wait_no_sessions(&server);
    let stats = server.stats();
    assert_eq!(stats.disconnected, 6, "{stats:?}");
    assert_eq!(stats.disconnected_with_error, 1, "{stats:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    let (_, reason) = log.check_lifecycle(bad_id);
    assert!(matches!(reason, DisconnectReason::Panic(_)));
}

#[test]
fn panic_in_on_connected_disconnects_that_session() {
    let hooks = Hooks::echo().with_connected(|ctx| {
        if ctx.id().get() % 2 == 0 {
            panic!("refusing {}", ctx.id());
        }
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut clients: Vec<_> = (0..6).map(|_| connect(server.local_addr())).collect();
    let mut ids = Vec::new();
    for _ in 0..6 {
        ids.push(log.next_connected().0);
    }
    let panicked: Vec<SessionId> = ids.iter().copied().filter(|id| id.get() % 2 == 0).collect();
    for &id in &panicked {
        match log.disconnected(id) {
            DisconnectReason::Panic(msg) => assert_eq!(msg, format!("refusing {id}")),
            other => panic!("{id}: expected Panic, got {other:?}"),
        }
    }
    // The others echo (whichever client they belong to).
    let mut alive = 0;
    for c in &mut clients {
        let _ = c.write_all(b"are you there");
        let mut back = [0u8; 13];
        if c.read_exact(&mut back).is_ok() {
            assert_eq!(&back, b"are you there");
            alive += 1;
        }
    }
    assert_eq!(alive, 6 - panicked.len());
    drop(clients);
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
    log.drain();
    for id in panicked {
        let (recvs, _) = log.check_lifecycle(id);
        assert!(recvs.is_empty(), "{id}: no on_recv after a panicking on_connected");
    }
}

/// The id of the session that received `first` at the start of a call (waits for it).
fn session_of(log: &mut common::EventLog, first: &[u8]) -> SessionId {
    log.wait_for(
        "the session of a client",
        |e| matches!(&e.ev, Ev::Recv(d) if d.starts_with(first)),
    )
    .id
}

#[test]
fn panicking_session_factory_does_not_kill_the_worker() {
    // DESIGN.md invariant 7: a panic in user code is caught and the worker carries on. The
    // factory is user code too: here it panics for the second connection only.
    let made = Arc::new(AtomicUsize::new(0));
    let m = made.clone();
    let (inner, mut log) = recorder(Hooks::echo());
    let server = ServerService::builder(any_port())
        .workers(1)
        .start(move || {
            if m.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("factory failed for the second connection");
            }
            inner()
        })
        .unwrap();
    let mut first = connect(server.local_addr());
    roundtrip(&mut first, b"first");
    let (first_id, _) = log.next_connected();

    let mut second = connect(server.local_addr());
    let _ = second.write_all(b"second");
    let (rest, end) = read_to_end(&mut second);
    eprintln!("the second connection ended with {end:?} after {} bytes", rest.len());
    assert!(rest.is_empty(), "no session may serve the second connection");

    // Observe everything first, then judge, so that a failure says all that went wrong.
    let mut problems = Vec::new();
    let mut probe = [0u8; 13];
    let first_ok = first.write_all(b"still served?").is_ok()
        && first.read_exact(&mut probe).is_ok()
        && &probe == b"still served?";
    if !first_ok {
        problems.push("the first session (same worker) stopped being served".to_string());
    }
    let third_ok = std::net::TcpStream::connect(server.local_addr())
        .and_then(|mut t| {
            t.set_read_timeout(Some(common::TIMEOUT))?;
            t.write_all(b"third")?;
            let mut b = [0u8; 5];
            t.read_exact(&mut b)?;
            Ok(&b == b"third")
        })
        .unwrap_or(false);
    if !third_ok {
        problems.push("a new connection after the panic is not served".to_string());
    }
    drop(first);
    if first_ok {
        assert_eq!(log.disconnected(first_id), DisconnectReason::PeerClosed);
    }
    let count = server.session_count();
    let result = server.shutdown(Duration::from_secs(5));
    if let Err(e) = &result {
        problems.push(format!("shutdown failed: {e}"));
    }
    log.drain();
    let first_disconnects = log.count(|e| e.id == first_id && matches!(e.ev, Ev::Disconnected(_)));
    if first_disconnects != 1 {
        problems.push(format!(
            "the first session got {first_disconnects} on_disconnected calls (want 1)"
        ));
    }
    if !first_ok {
        problems.push(format!("session count when the clients had gone: {count}"));
    }
    assert!(problems.is_empty(), "a panicking factory broke the server: {problems:#?}");
}

/// Issue 11, point 9: an `assert!` inside a callback does not fail the test that runs it.
/// The engine catches the panic and only disconnects that session; the test thread sees a
/// closed connection and goes on. `common::Checks` reports both the failed check and the
/// panic to the test thread, which is how the tests check things inside callbacks.
#[test]
fn an_assert_in_a_callback_is_only_a_disconnect_checks_report_it() {
    struct Asserting(Checks);
    impl Session for Asserting {
        fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
            self.0.check(data != b"bad", format_args!("{} received {data:?}", ctx.id()));
            assert!(data != b"bad", "asserted inside on_recv");
            data.len()
        }
        fn on_disconnected(&mut self, _ctx: &mut Ctx<'_>, reason: &DisconnectReason) {
            self.0.disconnected(reason);
        }
    }
    let checks = Checks::new();
    let c = checks.clone();
    let server =
        ServerService::builder(any_port()).workers(1).start(move || Asserting(c.clone())).unwrap();
    let mut conn = connect(server.local_addr());
    conn.write_all(b"bad").unwrap();
    // All the test thread sees of the failed assert: the connection closes.
    let (rest, end) = read_to_end(&mut conn);
    assert!(rest.is_empty(), "{end:?}");
    server.shutdown(Duration::from_secs(5)).unwrap();

    let failures = checks.failures();
    assert_eq!(failures.len(), 2, "{failures:#?}");
    assert!(failures[0].contains("received [98, 97, 100]"), "{failures:#?}");
    assert!(failures[1].contains("asserted inside on_recv"), "{failures:#?}");
    let reported = std::panic::catch_unwind(|| checks.assert_ok());
    assert!(reported.is_err(), "assert_ok fails the test thread");
}
