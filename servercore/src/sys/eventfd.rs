//! A Linux eventfd: the cross-thread wake-up of the io_uring backend.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd; `Send + Sync` (the kernel object is thread safe).
#[derive(Debug)]
pub(crate) struct EventFd(OwnedFd);

impl EventFd {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new fd we own alone.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by eventfd and is owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Adds 1 to the counter, waking whoever reads it.
    pub(crate) fn notify(&self) -> io::Result<()> {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live local u64 to an fd this struct owns.
        let n = unsafe {
            libc::write(self.0.as_raw_fd(), (&one as *const u64).cast(), std::mem::size_of::<u64>())
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            // EAGAIN means the counter is saturated: the reader is already due to wake.
            if e.kind() != io::ErrorKind::WouldBlock {
                return Err(e);
            }
        }
        Ok(())
    }
}

impl EventFd {
    /// Resets the counter to 0 (one non-blocking read), so that a readiness poll on the
    /// eventfd fires again only for a later `notify`. Ok when it was 0 already.
    pub(crate) fn drain(&self) -> io::Result<()> {
        let mut value: u64 = 0;
        loop {
            // SAFETY: reads at most 8 bytes into a live local u64 from an fd this struct
            // owns; no memory outlives the call (invariant 1 holds trivially).
            let n = unsafe {
                libc::read(
                    self.0.as_raw_fd(),
                    (&mut value as *mut u64).cast(),
                    std::mem::size_of::<u64>(),
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(()),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }
}

impl AsRawFd for EventFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
