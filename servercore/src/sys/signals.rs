//! Waiting for SIGINT / SIGTERM without a signal handler: the signals are blocked in every
//! thread and one thread takes them with `sigwait`.

use std::io;

/// SIGINT and SIGTERM, blocked for the calling thread and every thread it starts later.
///
/// Call [`TerminationSignals::block`] first thing in `main`, before any thread starts, then
/// [`TerminationSignals::wait`] where the program should stop.
pub struct TerminationSignals {
    #[cfg(unix)]
    set: libc::sigset_t,
}

impl TerminationSignals {
    /// Blocks SIGINT and SIGTERM in the calling thread (inherited by threads it spawns).
    pub fn block() -> io::Result<Self> {
        #[cfg(unix)]
        {
            // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it in place and
            // pthread_sigmask only reads it. No memory is shared with the kernel afterwards.
            unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGINT);
                libc::sigaddset(&mut set, libc::SIGTERM);
                let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
                if rc != 0 {
                    return Err(io::Error::from_raw_os_error(rc));
                }
                Ok(TerminationSignals { set })
            }
        }
        #[cfg(not(unix))]
        {
            Ok(TerminationSignals {})
        }
    }

    /// Blocks until SIGINT or SIGTERM arrives; returns its name.
    pub fn wait(&self) -> io::Result<&'static str> {
        #[cfg(unix)]
        {
            let mut sig: libc::c_int = 0;
            // SAFETY: `self.set` is an initialised sigset_t and `sig` a live local.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(if sig == libc::SIGINT { "SIGINT" } else { "SIGTERM" })
        }
        #[cfg(not(unix))]
        {
            Err(io::Error::new(io::ErrorKind::Unsupported, "signals are unix-only"))
        }
    }
}
