//! Abortive closes are counted by the reason the session closed with
//! (`servercore_aborted_total{reason}`): a close that began orderly and turned abortive
//! because its bytes missed the deadline shows under its orderly reason, one that was
//! abortive from the start under its own. (One test in this binary: the counts are
//! process-wide.)

mod common;

use common::*;
use servercore::{Ctx, DisconnectReason, ServerService, SessionConfig};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Reads until the connection ends; true if it ended with a reset.
fn ends_with_reset(c: &mut TcpStream) -> bool {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match c.read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }
}

#[test]
fn abortive_closes_are_counted_by_the_reason_they_closed_with() {
    let aborted = common::tls::aborted_counts(); // installs the recorder first
                                                 // "go": queue 2 MiB, then disconnect (orderly, but the peer never reads); "die": a
                                                 // protocol error (abortive from the start).
    let hooks = Hooks::on_recv(|ctx: &mut Ctx<'_>, data: &[u8]| {
        if data.starts_with(b"go") {
            for _ in 0..32 {
                ctx.send(vec![1u8; 64 << 10]).unwrap();
            }
            ctx.disconnect("done");
        } else {
            ctx.disconnect_with(DisconnectReason::Protocol("bad".into()));
        }
        data.len()
    });
    let (factory, mut log) = recorder(hooks);
    let cfg = SessionConfig {
        max_send_queue: 16 << 20,
        close_flush_timeout: Duration::from_millis(200),
        ..SessionConfig::default()
    };
    let server =
        ServerService::builder(any_port()).workers(1).session_config(cfg).start(factory).unwrap();
    let addr = server.local_addr();
    let mut late = slow_client(addr);
    let (late_id, _) = log.next_connected();
    let mut bad = slow_client(addr);
    let (bad_id, _) = log.next_connected();
    late.write_all(b"go").unwrap();
    bad.write_all(b"die").unwrap();
    assert_eq!(log.disconnected(late_id), DisconnectReason::Local("done".into()));
    assert_eq!(log.disconnected(bad_id), DisconnectReason::Protocol("bad".into()));
    wait_until("both closes to be counted", || {
        let counts = aborted.snapshot();
        let want = [("local".to_string(), 1), ("protocol_error".to_string(), 1)];
        if counts == want.into_iter().collect() {
            Ok(())
        } else {
            Err(format!("{counts:?}"))
        }
    });
    // Read only now: reading earlier would let the flush finish in time.
    assert!(ends_with_reset(&mut bad), "a protocol error resets the peer");
    assert!(ends_with_reset(&mut late), "a flush that missed its deadline resets the peer");
    assert_eq!(server.stats().aborted, 2);
    server.shutdown(Duration::from_secs(5)).unwrap();
}
