//! Abortive closes are counted by the reason the session closed with
//! (`servercore_aborted_total{reason}`): a close that began orderly and turned abortive
//! because its bytes missed the deadline shows under its orderly reason, one that was
//! abortive from the start under its own.

mod common;

use common::*;
use servercore::{Ctx, DisconnectReason, ServerService, SessionConfig};
use socket2::{Domain, Socket, Type};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Counts of `servercore_aborted_total` by its `reason` label (this test binary's own
/// recorder; one test, so no other service adds to them).
fn aborted() -> &'static Mutex<HashMap<String, u64>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

struct Count(String);

impl metrics::CounterFn for Count {
    fn increment(&self, value: u64) {
        *aborted().lock().unwrap().entry(self.0.clone()).or_default() += value;
    }
    fn absolute(&self, _: u64) {}
}

struct AbortRecorder;

impl metrics::Recorder for AbortRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        if key.name() != "servercore_aborted_total" {
            return metrics::Counter::noop();
        }
        let reason = key.labels().find(|l| l.key() == "reason").map(|l| l.value().to_string());
        metrics::Counter::from_arc(Arc::new(Count(reason.unwrap_or_default())))
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::noop()
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

/// A client with a tiny receive window that never reads.
fn slow_client(addr: SocketAddr) -> TcpStream {
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    s
}

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
    metrics::set_global_recorder(AbortRecorder).expect("the test's recorder");
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
        let counts = aborted().lock().unwrap().clone();
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
