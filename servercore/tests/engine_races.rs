//! Exactly-once `on_disconnected` when the ways a session can end race each other: peer
//! close, peer reset, a local disconnect from a callback, a disconnect through a handle
//! from another thread, and shutdown, on many sessions at once.

mod common;

use common::{any_port, connect, recorder, roundtrip, wait_until, Hooks, Rng};
use servercore::{DisconnectReason, ServerService, SessionHandle, SessionId};
use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    ClientClose,
    ClientReset,
    HandleDisconnect,
    CallbackDisconnect,
    /// The handle disconnects while the client closes, from two threads.
    HandleVsClose,
    /// The handle queues data and disconnects while the client resets.
    SendDisconnectVsReset,
    /// Left for the shutdown.
    Shutdown,
}

const MODES: [Mode; 7] = [
    Mode::ClientClose,
    Mode::ClientReset,
    Mode::HandleDisconnect,
    Mode::CallbackDisconnect,
    Mode::HandleVsClose,
    Mode::SendDisconnectVsReset,
    Mode::Shutdown,
];

fn allowed(mode: Mode, reason: &DisconnectReason) -> bool {
    use DisconnectReason as R;
    match mode {
        Mode::ClientClose => *reason == R::PeerClosed,
        Mode::ClientReset => *reason == R::Reset,
        Mode::HandleDisconnect => *reason == R::Local("handle".into()),
        Mode::CallbackDisconnect => *reason == R::Local("callback".into()),
        Mode::HandleVsClose => {
            matches!(reason, R::PeerClosed | R::Reset) || *reason == R::Local("race".into())
        }
        Mode::SendDisconnectVsReset => {
            matches!(reason, R::Reset | R::PeerClosed) || *reason == R::Local("race".into())
        }
        Mode::Shutdown => *reason == R::Shutdown,
    }
}

fn act(mode: Mode, mut c: TcpStream, h: SessionHandle) -> Option<TcpStream> {
    match mode {
        Mode::ClientClose => drop(c),
        Mode::ClientReset => {
            common::set_linger_zero(&c).unwrap();
            drop(c);
        }
        Mode::HandleDisconnect => {
            h.disconnect("handle").unwrap();
            return Some(c); // the client keeps its end until the server closed
        }
        Mode::CallbackDisconnect => {
            c.write_all(b"q").unwrap();
            return Some(c);
        }
        Mode::HandleVsClose => {
            let t = std::thread::spawn(move || {
                let _ = h.disconnect("race");
            });
            drop(c);
            t.join().unwrap();
        }
        Mode::SendDisconnectVsReset => {
            let t = std::thread::spawn(move || {
                let _ = h.send(vec![9u8; 512 * 1024]);
                let _ = h.disconnect("race");
            });
            common::set_linger_zero(&c).unwrap();
            drop(c);
            t.join().unwrap();
        }
        Mode::Shutdown => return Some(c),
    }
    None
}

#[test]
fn racing_ends_give_exactly_one_on_disconnected_with_a_valid_reason() {
    const N: usize = 350;
    const THREADS: usize = 4;
    let seed = common::seed("racing_ends_give_exactly_one_on_disconnected_with_a_valid_reason");
    let hooks = Hooks::on_recv(|ctx, data| {
        if data.ends_with(b"q") {
            ctx.disconnect("callback");
        } else {
            let _ = ctx.send(data.to_vec());
        }
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();

    // Connect everyone and learn which session serves which client.
    let mut clients = Vec::new();
    for i in 0..N {
        let mut c = connect(server.local_addr());
        roundtrip(&mut c, format!("hi {i}").as_bytes());
        clients.push(c);
    }
    let mut handles: HashMap<SocketAddr, (SessionId, SessionHandle)> = HashMap::new();
    for _ in 0..N {
        let (id, h) = log.next_connected();
        handles.insert(h.peer_addr(), (id, h));
    }
    let mut rng = Rng::new(seed);
    let mut plan: Vec<Vec<(Mode, TcpStream, SessionHandle)>> =
        (0..THREADS).map(|_| Vec::new()).collect();
    let mut mode_of = HashMap::new();
    for (i, c) in clients.into_iter().enumerate() {
        let (id, h) = handles[&c.local_addr().unwrap()].clone();
        let mode = MODES[rng.range(0, MODES.len() - 1)];
        mode_of.insert(id, mode);
        plan[i % THREADS].push((mode, c, h));
    }
    let left_for_shutdown = mode_of.values().filter(|&&m| m == Mode::Shutdown).count();

    // All the ends at once, from several threads.
    let threads: Vec<_> = plan
        .into_iter()
        .map(|items| {
            std::thread::spawn(move || {
                items.into_iter().filter_map(|(m, c, h)| act(m, c, h)).collect::<Vec<_>>()
            })
        })
        .collect();
    let kept: Vec<TcpStream> =
        threads.into_iter().flat_map(|t| t.join().expect("client thread")).collect();

    wait_until("every session but those left for shutdown to end", || {
        let n = server.session_count();
        if n == left_for_shutdown {
            Ok(())
        } else {
            Err(format!("{n} sessions, want {left_for_shutdown}"))
        }
    });
    server.shutdown(Duration::from_secs(5)).unwrap();
    drop(kept);
    log.drain();

    let mut bad = Vec::new();
    for (id, mode) in &mode_of {
        let (_, reason) = log.check_lifecycle(*id);
        if !allowed(*mode, &reason) {
            bad.push(format!("{id}: {mode:?} ended with {reason:?}"));
        }
    }
    assert!(bad.is_empty(), "unexpected reasons: {bad:#?}");
    assert_eq!(log.by_session().len(), N);
}

#[test]
fn abortive_disconnect_while_sending_to_an_active_reader() {
    // Each session keeps its send queue busy (refilled from on_send) while its client reads
    // as fast as it can; a handle then ends it with a non-graceful reason, so the close
    // drops the queue and cancels a send that may be completing at that very moment.
    const N: usize = 40;
    let hooks = Hooks::on_recv(|ctx, data| {
        for _ in 0..4 {
            let _ = ctx.send(vec![3u8; 64 * 1024]);
        }
        data.len()
    });
    // Refill whenever something went out, so a send is nearly always in flight.
    let (factory, mut log) = recorder(hooks);
    let refill = move || {
        struct Refill<S>(S);
        impl<S: servercore::Session> servercore::Session for Refill<S> {
            fn on_connected(&mut self, ctx: &mut servercore::Ctx<'_>) {
                self.0.on_connected(ctx)
            }
            fn on_recv(&mut self, ctx: &mut servercore::Ctx<'_>, data: &[u8]) -> usize {
                self.0.on_recv(ctx, data)
            }
            fn on_send(&mut self, ctx: &mut servercore::Ctx<'_>, _bytes: usize) {
                if ctx.send_queue_bytes() < 256 * 1024 {
                    let _ = ctx.send(vec![3u8; 64 * 1024]);
                }
            }
            fn on_disconnected(
                &mut self,
                ctx: &mut servercore::Ctx<'_>,
                reason: &DisconnectReason,
            ) {
                self.0.on_disconnected(ctx, reason)
            }
        }
        Refill(factory())
    };
    let server = ServerService::builder(any_port()).workers(2).start(refill).unwrap();
    let mut rng = Rng::new(common::seed("abortive_disconnect_while_sending_to_an_active_reader"));
    let mut readers = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..N {
        let mut c = connect(server.local_addr());
        c.write_all(b"go").unwrap();
        let (id, h) = log.next_connected();
        ids.push(id);
        let after = rng.range(1, 4 << 20);
        readers.push(std::thread::spawn(move || {
            // Read `after` bytes, then end the session abortively from this thread while
            // still reading.
            let mut buf = vec![0u8; 64 * 1024];
            let mut got = 0;
            let mut sent_disconnect = false;
            loop {
                match std::io::Read::read(&mut c, &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got += n,
                }
                if got >= after && !sent_disconnect {
                    sent_disconnect = true;
                    let _ = h.disconnect_with(DisconnectReason::Protocol("enough".into()));
                }
            }
            got
        }));
    }
    for r in readers {
        r.join().expect("reader thread");
    }
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).expect("no worker may have died");
    log.drain();
    for id in ids {
        let (_, reason) = log.check_lifecycle(id);
        assert_eq!(reason, DisconnectReason::Protocol("enough".into()), "{id}");
    }
}
