//! A testing aid: a seccomp-BPF filter that makes the kernel refuse io_uring, as Docker's
//! default seccomp profile does.
//!
//! Tests of the backend fallback start a child process that installs this filter before it
//! does anything else; the probe then meets a real `EPERM` from `io_uring_setup` rather than a
//! simulated one. The filter cannot be removed again and applies to every thread of the
//! process, so never install it in a process that should keep io_uring (a test harness, a
//! production server).
//!
//! Linux on x86_64 and aarch64 only; elsewhere [`deny_io_uring`] returns
//! [`std::io::ErrorKind::Unsupported`].

use std::io;

/// Installs a seccomp filter on this process that makes `io_uring_setup`, `io_uring_enter`
/// and `io_uring_register` fail with `EPERM` and allows every other system call.
///
/// **A testing aid** (the CLI installs it when `SERVERCORE_SECCOMP_DENY_IO_URING=1`): it
/// reproduces a container whose seccomp profile blocks io_uring, so that the fallback to the
/// poll backend can be tested against a real kernel refusal. The filter is permanent and
/// inherited by children; it sets `PR_SET_NO_NEW_PRIVS` first (required to install a filter
/// without `CAP_SYS_ADMIN`), which also stops set-user-ID programs from gaining privileges.
///
/// The filter is synchronised to every thread of the process (`SECCOMP_FILTER_FLAG_TSYNC`),
/// but call it first thing in `main`, before any thread starts or any ring is created: it
/// does not tear down rings that already exist.
///
/// # Errors
///
/// The OS error of `prctl` or `seccomp` (e.g. `EINVAL` on a kernel without seccomp filters,
/// `EACCES` under a profile that forbids it), an error naming the thread that could not be
/// synchronised, or `Unsupported` on other platforms.
pub fn deny_io_uring() -> io::Result<()> {
    imp::deny_io_uring()
}

#[cfg(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")))]
mod imp {
    use std::io;

    /// `AUDIT_ARCH_X86_64` (`EM_X86_64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
    #[cfg(target_arch = "x86_64")]
    const NATIVE_ARCH: u32 = 0xC000_003E;
    /// `AUDIT_ARCH_I386`: 32-bit programs on the same kernel.
    #[cfg(target_arch = "x86_64")]
    const COMPAT_ARCH: u32 = 0x4000_0003;
    /// x86_64 runs x32 system calls under `AUDIT_ARCH_X86_64` with this bit set in the
    /// number; masking it off catches the x32 entry points of io_uring too.
    #[cfg(target_arch = "x86_64")]
    const NR_MASK: u32 = !0x4000_0000;

    /// `AUDIT_ARCH_AARCH64` (`EM_AARCH64 | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE`).
    #[cfg(target_arch = "aarch64")]
    const NATIVE_ARCH: u32 = 0xC000_00B7;
    /// `AUDIT_ARCH_ARM`: 32-bit programs on the same kernel.
    #[cfg(target_arch = "aarch64")]
    const COMPAT_ARCH: u32 = 0x4000_0028;
    #[cfg(target_arch = "aarch64")]
    const NR_MASK: u32 = u32::MAX;

    /// `io_uring_setup`, `io_uring_enter`, `io_uring_register`: the same numbers in every
    /// table involved (x86_64, x32, i386, aarch64, arm), since 424 and up are shared.
    pub(super) const IO_URING_SYSCALLS: [u32; 3] = [425, 426, 427];

    // Offsets into `struct seccomp_data`, the input of the filter.
    const OFFSET_NR: u32 = std::mem::offset_of!(libc::seccomp_data, nr) as u32;
    const OFFSET_ARCH: u32 = std::mem::offset_of!(libc::seccomp_data, arch) as u32;

    const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
    const RET_EPERM: u32 = libc::SECCOMP_RET_ERRNO | (libc::EPERM as u32 & libc::SECCOMP_RET_DATA);

    const fn stmt(code: u32, k: u32) -> libc::sock_filter {
        libc::sock_filter { code: code as u16, jt: 0, jf: 0, k }
    }

    const fn jump(code: u32, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
        libc::sock_filter { code: code as u16, jt, jf, k }
    }

    const LD_ABS: u32 = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    const JEQ: u32 = libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K;
    const AND: u32 = libc::BPF_ALU | libc::BPF_AND | libc::BPF_K;
    const RET: u32 = libc::BPF_RET | libc::BPF_K;

    /// The filter program. Jump offsets count instructions after the jump.
    pub(super) fn program() -> [libc::sock_filter; 10] {
        let [setup, enter, register] = IO_URING_SYSCALLS;
        [
            /* 0 */ stmt(LD_ABS, OFFSET_ARCH),
            /* 1 */ jump(JEQ, NATIVE_ARCH, 1, 0), // native: go to 3
            /* 2 */ jump(JEQ, COMPAT_ARCH, 0, 5), // compat: go to 3; else allow (8)
            /* 3 */ stmt(LD_ABS, OFFSET_NR),
            /* 4 */ stmt(AND, NR_MASK),
            /* 5 */ jump(JEQ, setup, 3, 0), // deny (9)
            /* 6 */ jump(JEQ, enter, 2, 0), // deny (9)
            /* 7 */ jump(JEQ, register, 1, 0), // deny (9)
            /* 8 */ stmt(RET, RET_ALLOW),
            /* 9 */ stmt(RET, RET_EPERM),
        ]
    }

    pub(super) fn deny_io_uring() -> io::Result<()> {
        // SAFETY: prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) takes only integers and touches no
        // memory of ours.
        let rc = unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut filter = program();
        let prog =
            libc::sock_fprog { len: filter.len() as libc::c_ushort, filter: filter.as_mut_ptr() };
        // SAFETY: `prog` points at `filter`, a live, initialised array of `len` instructions;
        // the kernel copies the program during the call and keeps no pointer to it.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_TSYNC,
                &prog as *const libc::sock_fprog,
            )
        };
        match rc {
            0 => Ok(()),
            rc if rc < 0 => Err(io::Error::last_os_error()),
            // With TSYNC, a positive result is the id of a thread that could not be
            // synchronised (it has a diverging filter); nothing was installed.
            tid => Err(io::Error::other(format!(
                "seccomp: thread {tid} could not be synchronised; the filter was not installed"
            ))),
        }
    }

    #[cfg(test)]
    mod tests {
        //! The program is checked by interpreting it here; installing it would poison the
        //! test process (the CLI tests install it in a child, tests/backend_fallback.rs).

        use super::*;

        /// Runs the classic-BPF subset the program uses on one `seccomp_data`.
        fn run(arch: u32, nr: u32) -> u32 {
            let prog = program();
            let (mut acc, mut pc) = (0u32, 0usize);
            loop {
                let ins = prog[pc];
                pc += 1;
                match u32::from(ins.code) {
                    LD_ABS if ins.k == OFFSET_ARCH => acc = arch,
                    LD_ABS if ins.k == OFFSET_NR => acc = nr,
                    AND => acc &= ins.k,
                    JEQ => pc += usize::from(if acc == ins.k { ins.jt } else { ins.jf }),
                    RET => return ins.k,
                    other => panic!("unexpected instruction {other:#x} at {}", pc - 1),
                }
            }
        }

        #[test]
        fn io_uring_calls_get_eperm_on_native_and_compat_arch() {
            for arch in [NATIVE_ARCH, COMPAT_ARCH] {
                for nr in IO_URING_SYSCALLS {
                    assert_eq!(run(arch, nr), RET_EPERM, "arch {arch:#x} nr {nr}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            for nr in IO_URING_SYSCALLS {
                assert_eq!(run(NATIVE_ARCH, nr | 0x4000_0000), RET_EPERM, "x32 nr {nr}");
            }
        }

        #[test]
        fn everything_else_is_allowed() {
            // read, write, close, epoll_wait (x86_64 232), epoll_pwait (aarch64 22),
            // io_pgetevents (x86_64 333), pidfd_send_signal (424), pidfd_open (434), seccomp.
            for nr in [0, 1, 3, 22, 63, 232, 281, 333, 424, 428, 434, libc::SYS_seccomp as u32] {
                assert_eq!(run(NATIVE_ARCH, nr), RET_ALLOW, "nr {nr}");
                assert_eq!(run(COMPAT_ARCH, nr), RET_ALLOW, "compat nr {nr}");
            }
            // An architecture the filter does not know: allowed, whatever the number.
            assert_eq!(run(0x1234, 425), RET_ALLOW);
        }

        #[test]
        fn eperm_is_encoded_in_the_return_value() {
            assert_eq!(RET_EPERM & libc::SECCOMP_RET_ACTION_FULL, libc::SECCOMP_RET_ERRNO);
            assert_eq!(RET_EPERM & libc::SECCOMP_RET_DATA, libc::EPERM as u32);
            assert_eq!((OFFSET_NR, OFFSET_ARCH), (0, 4));
        }
    }
}

#[cfg(not(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64"))))]
mod imp {
    use std::io;

    pub(super) fn deny_io_uring() -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the io_uring seccomp filter exists only on Linux x86_64 and aarch64",
        ))
    }
}
