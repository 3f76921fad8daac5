//! A worker whose driver fails (issue 11, point 2): the failure reaches the service, and
//! the worker's sessions are reset rather than left to the kernel.

use crate::worker::FAIL_WAITS;
use crate::{Ctx, SendBuffer, ServerService, Session};
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::Duration;

#[derive(Default)]
struct Echo;

impl Session for Echo {
    fn on_recv(&mut self, ctx: &mut Ctx<'_>, data: &[u8]) -> usize {
        let _ = ctx.send(SendBuffer::copy_from_slice(data));
        data.len()
    }
}

#[test]
fn a_failed_driver_is_reported_and_its_sessions_are_reset() {
    let server = ServerService::builder("127.0.0.1:0".parse().unwrap())
        .workers(1)
        .start(Echo::default)
        .unwrap();
    let mut client = TcpStream::connect(server.local_addr()).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    client.write_all(b"ping").unwrap();
    let mut got = [0u8; 4];
    client.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"ping");
    assert_eq!(server.stats().failed_workers, 0);
    // From the next wait on, the worker's driver fails as a broken ring would.
    let (done_tx, done_rx) = mpsc::channel();
    server
        .service()
        .run_on_worker(0, move || {
            FAIL_WAITS.with(|f| f.set(Some(libc::EINVAL)));
            done_tx.send(()).unwrap();
        })
        .unwrap();
    done_rx.recv_timeout(Duration::from_secs(10)).expect("the job ran");
    // The session is reset: the server gave up on it.
    let mut buf = [0u8; 16];
    loop {
        match client.read(&mut buf) {
            // A blocking read may be interrupted (EINTR) and is then simply retried.
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => break assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
            Ok(n) => panic!("read {n} bytes instead of a reset"),
        }
    }
    assert_eq!(server.stats().failed_workers, 1);
    let err = server.shutdown(Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("worker 0: driver wait failed"), "{err}");
}
