//! The bare io_uring echo server (issue 16): the honest reference for echo, what the kernel
//! allows on this machine with no framework at all.
//!
//! One thread, one ring (SINGLE_ISSUER + DEFER_TASKRUN when the kernel takes them), a
//! multishot accept, and per connection a multishot receive from one provided-buffer ring
//! (IORING_REGISTER_PBUF_RING). Each received buffer is sent straight back with one SEND;
//! the buffer returns to the ring when that send completes (a short send sends the rest
//! first). Nothing else: no framing, no copies, no timers. One send per connection is in
//! flight at a time, so that the echo keeps its order even when a send comes back short:
//! a buffer received while its connection's send is in flight waits, linked through the
//! buffer ids (no allocation), and goes out when that send completes (at depth 1 this never
//! happens). A connection is closed once its receive has ended (end of stream or an error)
//! and none of its buffers is in flight or waiting.
//!
//! Prints the readiness line of PROTOCOL.md section 4 (`listening on ADDR (backend:
//! bare-io_uring, workers: 1)`); SIGTERM / SIGINT end it (default disposition).

use io_uring::{cqueue, opcode, squeue, types, IoUring};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};

/// Same backlog as servercore's listeners and the tokio servers.
const BACKLOG: i32 = 4096;
/// Submission queue entries (the completion queue is twice as large, and the kernel keeps
/// overflowed completions: none is lost).
const RING_ENTRIES: u32 = 4096;
/// Provided buffers: a power of two (the ring's mask), at most 32768.
const BUFFERS: u16 = 4096;
/// Bytes per provided buffer: a 1 KiB message, or 16 pipelined 64 B ones, in one.
const BUF_SIZE: usize = 2048;
/// The buffer group of the provided-buffer ring.
const BGID: u16 = 0;
/// No buffer (the end of a waiting list).
const NONE: u16 = u16::MAX;

/// Operation kinds in the top bits of `user_data`; the connection index in bits 16..48, the
/// buffer id (sends) in bits 0..16.
const ACCEPT: u64 = 0;
const RECV: u64 = 1 << 62;
const SEND: u64 = 2 << 62;
const KIND: u64 = 3 << 62;

fn user_data(kind: u64, conn: usize, bid: u16) -> u64 {
    kind | ((conn as u64) << 16) | u64::from(bid)
}

/// An anonymous private mapping, unmapped on drop (page-aligned, as the buffer ring must
/// be).
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping { ptr: ptr.cast(), len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are the mapping made in `new`, unmapped once. `Server` drops
        // its ring (which unregisters the buffer ring and ends every request) before its
        // mappings, so the kernel no longer uses them.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// One accepted connection.
struct Conn {
    fd: RawFd,
    /// Its multishot receive is armed (no final completion yet).
    receiving: bool,
    /// Buffers held: the send in flight and those waiting for it.
    sending: u32,
    /// A send is in flight.
    busy: bool,
    /// Buffers waiting for the send in flight, oldest first (`NONE`: none), linked through
    /// `Server::next`.
    head: u16,
    tail: u16,
    /// End of stream or an error seen: close once nothing is in flight.
    done: bool,
}

/// A send in flight or waiting, by buffer id: which bytes of the buffer are left.
#[derive(Clone, Copy, Default)]
struct Pending {
    off: u32,
    len: u32,
}

struct Server {
    // Declared first, so dropped first: the kernel lets go of the buffer ring and every
    // buffer before `ring_mem` and `bufs` are unmapped.
    ring: IoUring,
    listener: TcpListener,
    /// The provided-buffer ring: `BUFFERS` entries of `io_uring_buf` (16 bytes each; the
    /// tail is the `resv` field of entry 0).
    ring_mem: Mapping,
    /// `BUFFERS` buffers of `BUF_SIZE` bytes.
    bufs: Mapping,
    /// Our copy of the buffer ring's tail.
    tail: u16,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    sends: Vec<Pending>,
    /// The next waiting buffer after each buffer id, per connection's list.
    next: Vec<u16>,
    /// Connections whose receive ended for lack of buffers: re-armed when buffers return.
    starved: Vec<usize>,
    cqes: Vec<(u64, i32, u32)>,
}

impl Server {
    fn new(addr: SocketAddr) -> io::Result<Server> {
        let ring = IoUring::builder()
            .setup_single_issuer()
            .setup_defer_taskrun()
            .build(RING_ENTRIES)
            .or_else(|_| IoUring::new(RING_ENTRIES))?;
        let listener = TcpListener::bind(addr)?;
        // A second listen() on a listening socket sets its backlog.
        // SAFETY: plain syscall on a socket we own.
        if unsafe { libc::listen(listener.as_raw_fd(), BACKLOG) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let ring_mem = Mapping::new(usize::from(BUFFERS) * 16)?;
        let bufs = Mapping::new(usize::from(BUFFERS) * BUF_SIZE)?;
        // SAFETY: `ring_mem` is page-aligned, `BUFFERS` entries long, and stays mapped until
        // after the ring is dropped (field order of `Server`), which is as long as the
        // registration lasts.
        unsafe {
            ring.submitter().register_buf_ring_with_flags(ring_mem.ptr as u64, BUFFERS, BGID, 0)?;
        }
        let mut server = Server {
            ring,
            listener,
            ring_mem,
            bufs,
            tail: 0,
            conns: Vec::new(),
            free: Vec::new(),
            sends: vec![Pending::default(); usize::from(BUFFERS)],
            next: vec![NONE; usize::from(BUFFERS)],
            starved: Vec::new(),
            cqes: Vec::with_capacity(RING_ENTRIES as usize * 2),
        };
        for bid in 0..BUFFERS {
            server.provide(bid);
        }
        Ok(server)
    }

    /// Puts buffer `bid` back into the buffer ring (the kernel sees it at the next tail
    /// store).
    fn provide(&mut self, bid: u16) {
        let mask = BUFFERS - 1;
        let slot = usize::from(self.tail & mask);
        // SAFETY: `slot` < BUFFERS, inside `ring_mem`; the kernel reads only entries between
        // its head and our published tail, and this slot is past that tail. The buffer
        // (`bid` < BUFFERS) lies inside `bufs`, mapped as long as the ring lives.
        unsafe {
            let entry = self.ring_mem.ptr.add(slot * 16);
            let addr = self.bufs.ptr.add(usize::from(bid) * BUF_SIZE) as u64;
            std::ptr::write(entry.cast::<u64>(), addr);
            std::ptr::write(entry.add(8).cast::<u32>(), BUF_SIZE as u32);
            std::ptr::write(entry.add(12).cast::<u16>(), bid);
        }
        self.tail = self.tail.wrapping_add(1);
        // SAFETY: the tail is the u16 at offset 14 of entry 0, 2-byte aligned inside
        // `ring_mem`; the kernel reads it with acquire ordering, so this release store
        // publishes the entry written above.
        unsafe {
            let tail = &*self.ring_mem.ptr.add(14).cast::<std::sync::atomic::AtomicU16>();
            tail.store(self.tail, std::sync::atomic::Ordering::Release);
        }
    }

    /// Queues `entry`, submitting first when the submission queue is full.
    ///
    /// # Safety
    /// Whatever memory `entry` points to must stay valid until its completion.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: the caller keeps the entry's memory valid until its completion.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            self.ring.submit()?;
        }
    }

    fn arm_accept(&mut self) -> io::Result<()> {
        let e = opcode::AcceptMulti::new(types::Fd(self.listener.as_raw_fd()))
            .build()
            .user_data(ACCEPT);
        // SAFETY: a multishot accept without an address buffer points to no memory; the
        // listener outlives the ring's requests (dropped after `ring`).
        unsafe { self.push(&e) }
    }

    fn arm_recv(&mut self, conn: usize) -> io::Result<()> {
        let Some(c) = self.conns[conn].as_mut() else { return Ok(()) };
        c.receiving = true;
        let e = opcode::RecvMulti::new(types::Fd(c.fd), BGID)
            .build()
            .user_data(user_data(RECV, conn, 0));
        // SAFETY: the receive writes only into provided buffers, which live as long as the
        // ring; the fd stays open until this receive's final completion (`maybe_close`).
        unsafe { self.push(&e) }
    }

    /// Sends bytes `off..off + len` of buffer `bid` to `conn`'s socket.
    fn send(&mut self, conn: usize, bid: u16, off: u32, len: u32) -> io::Result<()> {
        let Some(c) = self.conns[conn].as_ref() else { return Ok(()) };
        self.sends[usize::from(bid)] = Pending { off, len };
        // SAFETY: `bid` < BUFFERS and off + len <= BUF_SIZE, inside `bufs`.
        let ptr = unsafe { self.bufs.ptr.add(usize::from(bid) * BUF_SIZE + off as usize) };
        let e = opcode::Send::new(types::Fd(c.fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(user_data(SEND, conn, bid));
        // SAFETY: buffer `bid` is out of the buffer ring (the kernel handed it to us) and is
        // given back only when this send completes (`on_send`), so neither the kernel nor a
        // receive writes it meanwhile; `bufs` lives as long as the ring. The fd stays open
        // while a send is in flight (`maybe_close`).
        unsafe { self.push(&e) }
    }

    fn run(&mut self) -> io::Result<()> {
        self.arm_accept()?;
        loop {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            let mut cqes = std::mem::take(&mut self.cqes);
            cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result(), c.flags())));
            for &(ud, res, flags) in &cqes {
                let conn = ((ud >> 16) & 0xffff_ffff) as usize;
                match ud & KIND {
                    ACCEPT => self.on_accept(res, flags)?,
                    RECV => self.on_recv(conn, res, flags)?,
                    SEND => self.on_send(conn, ud as u16, res)?,
                    _ => {}
                }
            }
            cqes.clear();
            self.cqes = cqes;
        }
    }

    fn on_accept(&mut self, res: i32, flags: u32) -> io::Result<()> {
        if !cqueue::more(flags) {
            self.arm_accept()?;
        }
        if res < 0 {
            return Ok(()); // EMFILE, ECONNABORTED ..: keep accepting
        }
        let fd = res;
        let one: libc::c_int = 1;
        // SAFETY: `one` lives across the call; `fd` is the socket just accepted.
        unsafe {
            libc::setsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let conn = Conn {
            fd,
            receiving: false,
            sending: 0,
            busy: false,
            head: NONE,
            tail: NONE,
            done: false,
        };
        let idx = match self.free.pop() {
            Some(i) => {
                self.conns[i] = Some(conn);
                i
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        self.arm_recv(idx)
    }

    fn on_recv(&mut self, conn: usize, res: i32, flags: u32) -> io::Result<()> {
        let more = cqueue::more(flags);
        let Some(c) = self.conns[conn].as_mut() else { return Ok(()) };
        if !more {
            c.receiving = false;
        }
        if res > 0 {
            let Some(bid) = cqueue::buffer_select(flags) else { return Ok(()) };
            c.sending += 1;
            let wait = c.busy;
            if wait {
                // Behind the send in flight.
                self.sends[usize::from(bid)] = Pending { off: 0, len: res as u32 };
                self.next[usize::from(bid)] = NONE;
                if c.tail == NONE {
                    c.head = bid;
                } else {
                    self.next[usize::from(c.tail)] = bid;
                }
                c.tail = bid;
            } else {
                c.busy = true;
            }
            if !more && !c.done {
                self.arm_recv(conn)?; // the kernel ended it (say, a full CQ): go on
            }
            return if wait { Ok(()) } else { self.send(conn, bid, 0, res as u32) };
        }
        if res == -libc::ENOBUFS && !c.done {
            // Out of buffers: receive again once sends have returned some.
            if !more {
                self.starved.push(conn);
            }
            return Ok(());
        }
        // End of stream (0) or an error: no more receiving.
        c.done = true;
        if more {
            // A multishot receive ends itself on 0 or an error; should it not, stop it.
            // SAFETY: plain syscall on a socket we own.
            unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
        }
        self.maybe_close(conn);
        Ok(())
    }

    fn on_send(&mut self, conn: usize, bid: u16, res: i32) -> io::Result<()> {
        let p = self.sends[usize::from(bid)];
        let alive = self.conns[conn].as_ref().is_some_and(|c| !c.done);
        if res > 0 && (res as u32) < p.len && alive {
            // Short send: the rest, from the same buffer.
            return self.send(conn, bid, p.off + res as u32, p.len - res as u32);
        }
        self.provide(bid);
        let mut next = None;
        let mut dropped = Vec::new();
        if let Some(c) = self.conns[conn].as_mut() {
            c.sending -= 1;
            c.busy = false;
            if res <= 0 && !c.done {
                c.done = true;
                if c.receiving {
                    // SAFETY: plain syscall on a socket we own; ends the receive.
                    unsafe { libc::shutdown(c.fd, libc::SHUT_RDWR) };
                }
            }
            if c.head != NONE {
                let b = c.head;
                c.head = self.next[usize::from(b)];
                if c.head == NONE {
                    c.tail = NONE;
                }
                if c.done {
                    // The peer is gone: give the waiting buffers back unsent.
                    c.sending -= 1;
                    dropped.push(b);
                    while c.head != NONE {
                        let b = c.head;
                        c.head = self.next[usize::from(b)];
                        c.sending -= 1;
                        dropped.push(b);
                    }
                    c.tail = NONE;
                } else {
                    c.busy = true;
                    next = Some(b);
                }
            }
        }
        for b in dropped {
            self.provide(b);
        }
        if let Some(b) = next {
            let p = self.sends[usize::from(b)];
            self.send(conn, b, 0, p.len)?;
        }
        self.maybe_close(conn);
        // Buffers came back: re-arm receives that ran out of them.
        while let Some(s) = self.starved.pop() {
            if self.conns[s].as_ref().is_some_and(|c| !c.done && !c.receiving) {
                self.arm_recv(s)?;
            }
        }
        Ok(())
    }

    /// Closes `conn` once its stream has ended and no request of it is in flight (so no
    /// request can reach a reused fd number or slot).
    fn maybe_close(&mut self, conn: usize) {
        let ready =
            self.conns[conn].as_ref().is_some_and(|c| c.done && !c.receiving && c.sending == 0);
        if ready {
            if let Some(c) = self.conns[conn].take() {
                // SAFETY: the fd is ours and nothing in flight uses it.
                unsafe { libc::close(c.fd) };
                self.free.push(conn);
            }
        }
    }
}

/// `servercore-bench bare-echo`: serves until killed.
pub fn run(addr: SocketAddr) -> Result<(), String> {
    let mut server = Server::new(addr).map_err(|e| format!("cannot set up: {e}"))?;
    let local = server.listener.local_addr().map_err(|e| e.to_string())?;
    {
        let mut out = io::stdout().lock();
        writeln!(out, "listening on {local} (backend: bare-io_uring, workers: 1)")
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
    }
    server.run().map_err(|e| e.to_string())
}
