//! The few OS calls the bench needs: CPU pinning of children and of itself, the file limit.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// A set of CPU cores, for `sched_setaffinity`.
#[derive(Clone)]
pub struct CoreSet {
    set: libc::cpu_set_t,
}

impl CoreSet {
    pub fn new(cores: &[usize]) -> CoreSet {
        // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in cores {
            // SAFETY: CPU_SET only sets a bit in `set`; it ignores cores beyond its size.
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        CoreSet { set }
    }

    /// Pins the calling thread (and the threads and processes it starts later).
    pub fn pin_current_thread(&self) -> io::Result<()> {
        // SAFETY: `self.set` is a valid, initialised cpu_set_t of the size passed; pid 0 is
        // the calling thread.
        let rc = unsafe {
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.set)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Makes `cmd`'s process start pinned to these cores.
    pub fn apply(&self, cmd: &mut Command) {
        let set = self.set;
        // SAFETY: the closure runs in the child between fork and exec, where only
        // async-signal-safe calls are allowed: it makes one raw syscall on a cpu_set_t
        // copied into the closure before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
    }
}

/// Raises the soft limit on open files to the hard limit (children inherit it); returns the
/// new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    // SAFETY: an all-zero rlimit is a valid value for getrlimit to overwrite.
    let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit whose soft limit does not exceed its hard limit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur as u64)
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions; `pid` is a child we started and have not
    // yet reaped, so it cannot name another process.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// Number of online cores.
/// Number of online cores (of the machine, not of this process's affinity mask).
pub fn online_cores() -> usize {
    // SAFETY: sysconf only reads a configuration value.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 {
        n as usize
    } else {
        1
    }
}

/// CPU time (user + system) of all children this process has waited for, in seconds.
pub fn reaped_children_cpu_secs() -> f64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(ru.ru_utime) + secs(ru.ru_stime)
}
