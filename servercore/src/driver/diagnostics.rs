//! Diagnostic switches: techniques a service can be told to do without.

use super::UringSwitches;

/// Techniques a service does without, so that the paths of older kernels are taken (and
/// tested) on this one, and so that the benchmark can measure what each technique brings.
/// All off by default; every switch only ever turns a technique off.
///
/// Not part of the documented API. The library reads no environment variable for these
/// except the switches named in `SERVERCORE_BACKEND` (README, "Backends"); the
/// `servercore` CLI also sets them from its own `SERVERCORE_*` variables. Switches set in
/// a [`SessionConfig`], on a builder and in `SERVERCORE_BACKEND` add up.
///
/// ```
/// let d = servercore::Diagnostics { uring_no_bufring: true, ..Default::default() };
/// let cfg = servercore::SessionConfig { diagnostics: d, ..Default::default() };
/// assert!(cfg.diagnostics.uring_no_bufring && !cfg.diagnostics.no_room_coalesce);
/// ```
#[doc(hidden)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// io_uring without a provided-buffer ring: single-shot receives into a pool (before
    /// 5.19).
    pub uring_no_bufring: bool,
    /// io_uring without DEFER_TASKRUN (before 6.1).
    pub uring_no_defer_taskrun: bool,
    /// io_uring without a timeout argument to `io_uring_enter` (before 5.11): timed waits
    /// use TIMEOUT entries.
    pub uring_no_ext_arg: bool,
    /// io_uring without a multishot POLL_ADD on the wake-up eventfd (before 5.13).
    pub uring_no_multishot_poll: bool,
    /// A room's broadcasts of one turn are queued on each member one by one, not joined.
    pub no_room_coalesce: bool,
    /// Treat io_uring as refused by the kernel: an automatic choice falls back to poll
    /// (saying why), a forced io_uring is a startup error. For tests of the fallback.
    pub deny_io_uring: bool,
}

impl Diagnostics {
    /// The switches set in either.
    pub fn union(self, other: Diagnostics) -> Diagnostics {
        Diagnostics {
            uring_no_bufring: self.uring_no_bufring || other.uring_no_bufring,
            uring_no_defer_taskrun: self.uring_no_defer_taskrun || other.uring_no_defer_taskrun,
            uring_no_ext_arg: self.uring_no_ext_arg || other.uring_no_ext_arg,
            uring_no_multishot_poll: self.uring_no_multishot_poll || other.uring_no_multishot_poll,
            no_room_coalesce: self.no_room_coalesce || other.no_room_coalesce,
            deny_io_uring: self.deny_io_uring || other.deny_io_uring,
        }
    }

    /// The io_uring techniques these switches turn off.
    pub(crate) fn uring_switches(&self) -> UringSwitches {
        UringSwitches {
            bufring: self.uring_no_bufring,
            defer_taskrun: self.uring_no_defer_taskrun,
            ext_arg: self.uring_no_ext_arg,
            multishot_poll: self.uring_no_multishot_poll,
        }
    }
}
