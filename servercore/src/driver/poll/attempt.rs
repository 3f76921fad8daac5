//! One non-blocking attempt at a read or a gather write: `WouldBlock` clears the socket's
//! readiness flag and reports "not ready" (`None`); `Interrupted` is retried.

use crate::driver::{SendBatch, MAX_IOVECS};
use socket2::SockRef;
use std::io::{self, IoSlice, Read};

/// Buffers per gather write here (a stack array); one send takes up to `MAX_IOVECS` in
/// several writes.
const SEND_SLICES: usize = 64;

/// One read into `buf`; `Ok(0)` is end of stream. `None`: not ready, wait for an edge.
pub(super) fn try_recv(
    stream: &mio::net::TcpStream,
    buf: &mut [u8],
    readable: &mut bool,
) -> Option<io::Result<usize>> {
    let mut reader = stream;
    loop {
        match reader.read(buf) {
            Ok(n) => return Some(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *readable = false;
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// One gather write of `bufs`. `None`: not ready, wait for an edge.
pub(super) fn try_send(
    stream: &mio::net::TcpStream,
    bufs: &SendBatch,
    writable: &mut bool,
) -> Option<io::Result<usize>> {
    // Slices on the stack (no allocation per send), SEND_SLICES buffers per write; while
    // each write takes all it was given, the next buffers follow in the same call.
    let mut total = 0;
    let mut rest = bufs.iter().take(MAX_IOVECS).peekable();
    while rest.peek().is_some() {
        let mut array = [IoSlice::new(&[]); SEND_SLICES];
        let (mut n, mut len) = (0, 0);
        for slot in array.iter_mut() {
            let Some(b) = rest.next() else { break };
            *slot = IoSlice::new(b);
            n += 1;
            len += b.len();
        }
        match write_once(stream, &array[..n], writable) {
            Some(Ok(w)) => {
                total += w;
                if w < len {
                    break;
                }
            }
            // Full after some bytes went: report those.
            None if total > 0 => break,
            // Full at once, or an error: an error is reported even after some bytes went
            // (the connection is gone, and only this first error says why: a reset is
            // reported once, later writes see a plain broken pipe).
            other => return other,
        }
    }
    Some(Ok(total))
}

/// One gather write: `None` when the socket is full (and no longer writable).
fn write_once(
    stream: &mio::net::TcpStream,
    slices: &[IoSlice<'_>],
    writable: &mut bool,
) -> Option<io::Result<usize>> {
    loop {
        match stream.try_io(|| gather_write(stream, slices)) {
            Ok(n) => return Some(Ok(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                *writable = false;
                return None;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Some(Err(e)),
        }
    }
}

/// `sendmsg` without raising SIGPIPE where the flag exists (elsewhere the socket carries
/// `SO_NOSIGPIPE`, or there is no SIGPIPE).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn gather_write(stream: &mio::net::TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(stream).send_vectored_with_flags(slices, libc::MSG_NOSIGNAL)
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn gather_write(stream: &mio::net::TcpStream, slices: &[IoSlice<'_>]) -> io::Result<usize> {
    SockRef::from(stream).send_vectored(slices)
}
