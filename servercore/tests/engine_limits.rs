//! Limits and isolation: `max_sessions`, `max_recv_buffer`, `max_send_queue`, and
//! broadcast to every session.

mod common;

use common::{any_port, connect, read_to_end, recorder, roundtrip, Checks, End, Hooks};
use servercore::{Ctx, DisconnectReason, SendBuffer, ServerService, Session, SessionConfig};
use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[test]
fn max_sessions_is_enforced() {
    struct Counted(Arc<AtomicUsize>);
    impl Session for Counted {
        fn on_connected(&mut self, _ctx: &mut Ctx<'_>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
            let _ = ctx.send(data.to_vec());
            data.len()
        }
    }
    let connected = Arc::new(AtomicUsize::new(0));
    let c2 = connected.clone();
    let server = ServerService::builder(any_port())
        .workers(2)
        .max_sessions(5)
        .start(move || Counted(c2.clone()))
        .unwrap();

    let mut clients: Vec<_> = (0..8).map(|_| connect(server.local_addr())).collect();
    let mut served = 0;
    let mut refused = 0;
    for (i, c) in clients.iter_mut().enumerate() {
        // A write to a connection the server closed may fail already (reset).
        let wrote = c.write_all(b"ping");
        let mut back = [0u8; 4];
        match (wrote, c.read(&mut back)) {
            (Ok(()), Ok(4)) => {
                assert_eq!(&back, b"ping");
                served += 1;
            }
            (Ok(()), Ok(n)) if n > 0 => {
                // A short read of the echo: finish it.
                c.read_exact(&mut back[n..]).unwrap();
                assert_eq!(&back, b"ping");
                served += 1;
            }
            (_, Ok(0)) => refused += 1,
            (_, Err(e)) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("client {i}: neither served nor closed within the timeout")
            }
            (_, Err(_)) => refused += 1,
            (w, r) => panic!("client {i}: unexpected outcome {w:?} {r:?}"),
        }
    }
    assert_eq!((served, refused), (5, 3));
    assert_eq!(connected.load(Ordering::SeqCst), 5);
    let stats = server.stats();
    assert_eq!(stats.rejected, 3, "{stats:?}");
    assert_eq!(stats.accepted, 5, "{stats:?}");
    assert_eq!(stats.sessions, 5, "{stats:?}");

    // Once places are free, new connections are served again.
    drop(clients);
    common::wait_no_sessions(&server);
    let mut again = connect(server.local_addr());
    roundtrip(&mut again, b"again");
    assert_eq!(connected.load(Ordering::SeqCst), 6);
    server.shutdown(Duration::from_secs(5)).unwrap();
}

#[test]
fn unconsumed_bytes_beyond_max_recv_buffer_disconnect_that_session_only() {
    const LIMIT: usize = 64 * 1024;
    // A session whose first byte is 'H' hoards: it never consumes anything. Others echo.
    let checks = Checks::new();
    let c = checks.clone();
    let hooks = Hooks::on_recv(move |ctx, data| {
        if data[0] == b'H' {
            c.check(
                data.len() <= LIMIT,
                format_args!("presented {} bytes, over the limit", data.len()),
            );
            return 0;
        }
        let _ = ctx.send(data.to_vec());
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port())
        .workers(2)
        .session_config(SessionConfig { max_recv_buffer: LIMIT, ..Default::default() })
        .start(factory)
        .unwrap();

    let mut good = connect(server.local_addr());
    roundtrip(&mut good, b"before");
    let (good_id, _) = log.next_connected();

    let hoarder = connect(server.local_addr());
    let (hoarder_id, _) = {
        let mut w = hoarder.try_clone().unwrap();
        // The writer sends far more than the limit; the server stops reading and closes,
        // so its writes end with an error: ignore it.
        let writer = std::thread::spawn(move || {
            let mut block = vec![b'H'; 16 * 1024];
            block[1] = b'!';
            for _ in 0..64 {
                if w.write_all(&block).is_err() {
                    break;
                }
            }
        });
        let ids = log.next_connected();
        let reason = log.disconnected(ids.0);
        assert_eq!(reason, DisconnectReason::RecvBufferFull { limit: LIMIT });
        writer.join().unwrap();
        ids
    };
    let mut hoarder = hoarder;
    let (_, end) = read_to_end(&mut hoarder);
    eprintln!("hoarder's connection ended with {end:?}");

    // The other session is unaffected.
    roundtrip(&mut good, b"after");
    roundtrip(&mut good, &vec![7u8; 200 * 1024]); // more than the limit, but consumed
    drop(good);
    assert_eq!(log.disconnected(good_id), DisconnectReason::PeerClosed);
    common::wait_no_sessions(&server);
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
    log.drain();
    let (recvs, _) = log.check_lifecycle(hoarder_id);
    let most = recvs.iter().map(Vec::len).max().unwrap();
    assert!(most <= LIMIT, "a call presented {most} bytes, over the {LIMIT} limit");
    log.check_lifecycle(good_id);
}

#[test]
fn broadcast_reaches_every_connected_session() {
    const N: usize = 12;
    let on_workers = Arc::new(std::sync::Mutex::new(Vec::new()));
    let w = on_workers.clone();
    let hooks = Hooks::echo().with_connected(move |ctx| w.lock().unwrap().push(ctx.worker_index()));
    let (factory, mut log) = recorder(hooks);
    // One acceptor handing connections to the workers in turn: sessions on both workers,
    // deterministically.
    let server =
        ServerService::builder(any_port()).workers(2).reuse_port(false).start(factory).unwrap();
    let mut clients: Vec<_> = (0..N).map(|_| connect(server.local_addr())).collect();
    for _ in 0..N {
        log.next_connected();
    }
    let mut workers = on_workers.lock().unwrap().clone();
    workers.sort();
    workers.dedup();
    assert_eq!(workers, vec![0, 1], "sessions should be spread over both workers");

    server.broadcast(SendBuffer::from_static(b"news!")).unwrap();
    let big = SendBuffer::from(common::Rng::new(9).bytes(300 * 1024));
    server.broadcast(big.clone()).unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = vec![0u8; 5 + big.len()];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(&got[..5], b"news!", "client {i}");
        assert!(got[5..] == big[..], "client {i}: big broadcast differs");
    }

    // A closed session does not disturb the next broadcast.
    drop(clients.pop());
    common::wait_until("one session to end", || {
        let n = server.session_count();
        if n == N - 1 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    });
    server.broadcast(&b"again"[..]).unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = [0u8; 5];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(&got, b"again", "client {i}");
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
    for c in &mut clients {
        let (rest, end) = read_to_end(c);
        assert!(rest.is_empty());
        assert!(matches!(end, End::Eof));
    }
}

#[test]
fn broadcast_from_a_callback_via_service_ref() {
    const N: usize = 6;
    let checks = Checks::new();
    let c = checks.clone();
    let hooks = Hooks::on_recv(move |ctx, data| {
        if let Some(pos) = data.iter().position(|&b| b == b'\n') {
            let line = data[..=pos].to_vec();
            match ctx.service() {
                Some(service) => {
                    c.check_eq(service.workers(), 2, "the service's workers");
                    c.check(service.broadcast(line).is_ok(), "the broadcast is accepted");
                }
                None => {
                    c.check(false, "ctx.service() is None while the service is alive");
                }
            }
            return pos + 1;
        }
        0
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port()).workers(2).start(factory).unwrap();
    let mut clients: Vec<_> = (0..N).map(|_| connect(server.local_addr())).collect();
    for _ in 0..N {
        log.next_connected();
    }
    clients[0].write_all(b"hello everyone\n").unwrap();
    for (i, c) in clients.iter_mut().enumerate() {
        let mut got = [0u8; 15];
        c.read_exact(&mut got).unwrap_or_else(|e| panic!("client {i}: {e}"));
        assert_eq!(&got, b"hello everyone\n", "client {i}");
    }
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
}

#[test]
fn send_queue_overflow_disconnects_a_peer_that_does_not_read() {
    const LIMIT: usize = 256 * 1024;
    // On "flood", queues 64 KiB blocks until the queue refuses; the client never reads.
    let checks = Checks::new();
    let c = checks.clone();
    let hooks = Hooks::on_recv(move |ctx, data| {
        if data == b"flood" {
            let block = SendBuffer::from(vec![0xAB; 64 * 1024]);
            for i in 0.. {
                match ctx.send(block.clone()) {
                    Ok(()) if i < 10_000 => {}
                    Ok(()) => {
                        c.check(false, "the send queue never refused");
                        break;
                    }
                    Err(servercore::SendError::QueueFull { limit }) => {
                        c.check_eq(limit, LIMIT, "the refusal's limit");
                        c.check(!ctx.is_connected(), "still connected after the overflow");
                        break;
                    }
                    Err(e) => {
                        c.check(false, format_args!("unexpected send error {e:?}"));
                        break;
                    }
                }
            }
            return data.len();
        }
        let _ = ctx.send(data.to_vec());
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let server = ServerService::builder(any_port())
        .workers(2)
        .session_config(SessionConfig { max_send_queue: LIMIT, ..Default::default() })
        .start(factory)
        .unwrap();
    let mut good = connect(server.local_addr());
    roundtrip(&mut good, b"hi");
    let (good_id, _) = log.next_connected();
    let mut flooded = connect(server.local_addr());
    flooded.write_all(b"flood").unwrap();
    let (id, _) = log.next_connected();
    assert_eq!(log.disconnected(id), DisconnectReason::SendQueueOverflow { limit: LIMIT });
    let (_, end) = read_to_end(&mut flooded);
    eprintln!("flooded connection ended with {end:?}");
    roundtrip(&mut good, b"unaffected");
    drop(good);
    assert_eq!(log.disconnected(good_id), DisconnectReason::PeerClosed);
    server.shutdown(Duration::from_secs(5)).unwrap();
    checks.assert_ok();
    log.drain();
    log.check_lifecycle(id);
}
