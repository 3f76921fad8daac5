//! The bare io_uring echo loop (`servercore-bench bare-echo`, issue 16), end to end: echo of
//! various sizes (larger than a provided buffer, and large enough to fill the socket buffers
//! so that sends come back short), many connections at once, and peers that close.

mod common;

use common::Server;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::Duration;

/// Starts `servercore-bench bare-echo --addr 127.0.0.1:0` and reads its readiness line.
fn start() -> (Server, SocketAddr) {
    common::start(["bare-echo", "--addr", "127.0.0.1:0"], "(backend: bare-io_uring, workers: 1)")
}

fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Bytes that tell their position apart (a reordering or a lost chunk shows).
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Writes `data` from a second thread while reading the echo, and checks it.
fn echo(s: &TcpStream, data: &[u8]) {
    let mut w = s.try_clone().unwrap();
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || w.write_all(&owned).unwrap());
    let mut got = vec![0; data.len()];
    (&*s).read_exact(&mut got).unwrap();
    writer.join().unwrap();
    assert!(got == data, "echo of {} bytes differs", data.len());
}

#[test]
fn echoes_various_sizes_in_order() {
    let (_server, addr) = start();
    let s = connect(addr);
    for (i, len) in [1, 63, 64, 1024, 2047, 2048, 2049, 10_000, 65_536].into_iter().enumerate() {
        echo(&s, &pattern(len, i as u32));
    }
    // Far more than the socket buffers hold, written without reading first: the server's
    // sends come back short or wait, and the echo must still be whole and in order.
    echo(&s, &pattern(16 << 20, 99));
}

#[test]
fn many_connections_at_once() {
    let (_server, addr) = start();
    let conns: Vec<TcpStream> = (0..500).map(|_| connect(addr)).collect();
    for round in 0..3u32 {
        for (i, c) in conns.iter().enumerate() {
            (&*c).write_all(&pattern(64 + i % 1000, round * 1000 + i as u32)).unwrap();
        }
        for (i, c) in conns.iter().enumerate() {
            let want = pattern(64 + i % 1000, round * 1000 + i as u32);
            let mut got = vec![0; want.len()];
            (&*c).read_exact(&mut got).unwrap();
            assert!(got == want, "connection {i}, round {round}");
        }
    }
    // In parallel, from threads, larger messages.
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let s = connect(addr);
                for k in 0..20 {
                    echo(&s, &pattern(1000 * (k + 1), t * 100 + k as u32));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn peers_that_close() {
    let (server, addr) = start();
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", server.0.id())).unwrap().count();
    // A peer that half-closes gets its echo, then the end of stream.
    let s = connect(addr);
    (&s).write_all(b"hello").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut got = Vec::new();
    (&s).read_to_end(&mut got).unwrap();
    assert_eq!(got, b"hello");
    // Peers that close at once, with data in flight and unread echoes (the server's sends
    // then fail), over and over: the server keeps serving, and frees their slots.
    for i in 0..300u32 {
        let s = connect(addr);
        let _ = (&s).write_all(&pattern(if i % 3 == 0 { 1 << 20 } else { 100 }, i));
        drop(s);
    }
    let s = connect(addr);
    echo(&s, &pattern(100_000, 7));
    // The closed ones are closed on the server's side too: it holds no sockets of them.
    drop(s);
    let mut open = fds();
    for _ in 0..100 {
        if open < 20 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
        open = fds();
    }
    assert!(open < 20, "the server still has {open} descriptors open");
    let fresh = connect(addr);
    echo(&fresh, b"still here");
}
