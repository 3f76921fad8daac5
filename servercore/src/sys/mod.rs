//! The sys layer: socket setup and the few OS calls that have no portable std API.
//!
//! This is the only module besides the driver backends that talks to the OS below std.
//! Socket creation and options go through `socket2` (portable); calls with no portable
//! equivalent (`eventfd`, CPU affinity, resource usage) are Linux-only and cfg-gated, each
//! with a portable path or a clear "unsupported" error.
//!
//! Helpers of the tests are not library API: they live in the tests (`open_fd_count`,
//! `set_linger_zero`) or behind the hidden feature `test-support` (the seccomp filter and the
//! signal waiting of the CLI).
//!
//! ```compile_fail
//! let _ = servercore::sys::open_fd_count();
//! ```
//!
//! ```compile_fail
//! let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
//! servercore::sys::set_linger_zero(&l).unwrap();
//! ```

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[cfg(target_os = "linux")]
mod eventfd;
#[cfg(target_os = "linux")]
pub(crate) use eventfd::EventFd;

// Not library API (feature `test-support`, for the CLI and its tests): waiting for
// SIGINT/SIGTERM, and a seccomp filter that makes the kernel refuse io_uring.
#[cfg(feature = "test-support")]
mod seccomp;
#[cfg(feature = "test-support")]
mod signals;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub use seccomp::deny_io_uring;
#[cfg(feature = "test-support")]
#[doc(hidden)]
pub use signals::TerminationSignals;

/// Listen backlog used for every listening socket.
pub(crate) const LISTEN_BACKLOG: i32 = 4096;

/// Creates `n` listening sockets on `addr`: one plain listener when `n == 1`, else a
/// `SO_REUSEPORT` group so that every worker owns a listener and the kernel spreads
/// connections among them.
///
/// `SO_REUSEPORT` would let a second process of the same user join the group silently;
/// a plain bind first makes "address in use" an error as it is without the option. (For
/// port 0 it also picks a port no one else uses.)
pub(crate) fn listen_group(addr: SocketAddr, n: usize) -> io::Result<Vec<TcpListener>> {
    if n <= 1 {
        return Ok(vec![listen(addr, false)?]);
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&SockAddr::from(addr)).map_err(|e| bind_error(addr, e))?;
    let addr = probe.local_addr()?.as_socket().unwrap_or(addr);
    drop(probe);
    (0..n).map(|_| listen(addr, true)).collect()
}

/// Creates a listening TCP socket with `SO_REUSEADDR` (and `SO_REUSEPORT` when asked).
pub(crate) fn listen(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        set_reuse_port(&socket)?;
    }
    socket.bind(&SockAddr::from(addr)).map_err(|e| bind_error(addr, e))?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(socket.into())
}

#[cfg(all(unix, not(target_os = "solaris"), not(target_os = "illumos")))]
fn set_reuse_port(socket: &Socket) -> io::Result<()> {
    socket.set_reuse_port(true)
}

#[cfg(not(all(unix, not(target_os = "solaris"), not(target_os = "illumos"))))]
fn set_reuse_port(_socket: &Socket) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "SO_REUSEPORT is not available on this platform",
    ))
}

/// Whether per-worker listeners on one port (`SO_REUSEPORT` with kernel load balancing)
/// are available.
pub(crate) const REUSE_PORT_BALANCES: bool = cfg!(any(target_os = "linux", target_os = "freebsd"));

fn bind_error(addr: SocketAddr, e: io::Error) -> io::Error {
    let hint = match e.kind() {
        io::ErrorKind::AddrInUse => "the address is already in use (another server running?)",
        io::ErrorKind::PermissionDenied => "permission denied (ports below 1024 need privileges)",
        io::ErrorKind::AddrNotAvailable => "the address is not one of this machine's",
        _ => "bind failed",
    };
    io::Error::new(e.kind(), format!("cannot bind {addr}: {hint} ({e})"))
}

/// Creates an unconnected TCP socket for an outgoing connection to `addr`.
pub(crate) fn stream_socket_for(addr: SocketAddr) -> io::Result<Socket> {
    Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
}

/// Whether accepted sockets inherit `TCP_NODELAY` from their listener (Linux copies the
/// listener's TCP state into the child), which spares a `setsockopt` per connection.
const ACCEPT_INHERITS_NODELAY: bool = cfg!(target_os = "linux");

/// Options set once on a listener so that accepted sockets inherit them.
pub(crate) fn configure_listener(listener: &TcpListener, nodelay: bool) -> io::Result<()> {
    socket2::SockRef::from(listener).set_tcp_nodelay(nodelay)
}

/// Per-connection options of an accepted socket (those it did not inherit).
pub(crate) fn configure_accepted(stream: &TcpStream, nodelay: bool) -> io::Result<()> {
    if ACCEPT_INHERITS_NODELAY {
        return Ok(());
    }
    stream.set_nodelay(nodelay)
}

/// Makes a later close of `sock` abortive (RST instead of FIN): `SO_LINGER` with a zero
/// timeout. The kernel then frees the socket's buffers (bytes still unsent) at close. The
/// drivers use it for peers the server gives up on.
pub(crate) fn set_linger_zero<'s, S>(sock: &'s S) -> io::Result<()>
where
    socket2::SockRef<'s>: From<&'s S>,
{
    socket2::SockRef::from(sock).set_linger(Some(Duration::ZERO))
}

/// Bytes the kernel still holds in `sock`'s send queue (written but not yet acknowledged
/// by the peer): `SIOCOUTQ`, on a live connection (ESTABLISHED or CLOSE_WAIT; a failed
/// or reset socket counts what will never be acknowledged, and is reported as 0). A close
/// while this is non-zero leaves those bytes, and the socket, in the kernel until the peer
/// reads them or TCP gives up. `0` where the OS does not tell.
#[cfg(unix)]
pub(crate) fn unsent_bytes<S: std::os::fd::AsRawFd>(sock: &S) -> usize {
    #[cfg(target_os = "linux")]
    {
        const TCP_ESTABLISHED: u8 = 1;
        const TCP_CLOSE_WAIT: u8 = 8;
        // The first byte of `struct tcp_info` is the state; the kernel copies only as many
        // bytes as asked for.
        let mut state: u8 = 0;
        let mut len = 1 as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` (1) bytes into the live local `state` and
        // updates the live local `len`; the fd belongs to a socket the caller holds open.
        let r = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                (&mut state as *mut u8).cast(),
                &mut len,
            )
        };
        if r < 0 || len < 1 || !(state == TCP_ESTABLISHED || state == TCP_CLOSE_WAIT) {
            return 0;
        }
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ (TIOCOUTQ) writes one int through the pointer, which points at a
        // live local; the fd belongs to a socket the caller holds open.
        let r = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        if r < 0 {
            0
        } else {
            n.max(0) as usize
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = sock;
        0
    }
}

/// See the unix version: unknown here.
#[cfg(not(unix))]
pub(crate) fn unsent_bytes<S>(_sock: &S) -> usize {
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `configure_accepted` relies on accepted sockets inheriting the listener's
    /// `TCP_NODELAY`; this checks the platform does so (both settings).
    #[test]
    fn accepted_sockets_get_the_listeners_nodelay() {
        for nodelay in [true, false] {
            let l = listen("127.0.0.1:0".parse().unwrap(), false).unwrap();
            configure_listener(&l, nodelay).unwrap();
            let _c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (s, _) = l.accept().unwrap();
            configure_accepted(&s, nodelay).unwrap();
            assert_eq!(s.nodelay().unwrap(), nodelay);
        }
    }
}
