//! Choosing a backend at start: forced by `SERVERCORE_BACKEND` or the builder, else probed.
//!
//! `SERVERCORE_BACKEND` is the only environment variable the library reads. Besides the
//! backend it may name diagnostic switches (see [`Diagnostics`]) after a colon:
//! `io_uring:no-bufring,no-ext-arg`, so that a test run covers the paths of older kernels
//! without any other variable.

use super::Diagnostics;
use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces a backend: `io_uring` or `poll`, optionally with
/// diagnostic switches (`io_uring:no-bufring`).
pub const BACKEND_ENV: &str = "SERVERCORE_BACKEND";

/// A driver backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Linux io_uring (completion based): the default where the kernel allows it.
    IoUring,
    /// Readiness notification (epoll, kqueue, IOCP via `mio`), emulating completions.
    Poll,
}

impl Backend {
    /// The name used in the readiness line and in `SERVERCORE_BACKEND`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::IoUring => "io_uring",
            Backend::Poll => "poll",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What the user asked for: a backend, or "probe and pick" ([`BackendChoice::Auto`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum BackendChoice {
    /// `SERVERCORE_BACKEND` if set, else io_uring when the kernel allows it, else poll.
    #[default]
    Auto,
    /// io_uring or a startup error saying why not.
    IoUring,
    /// The readiness backend.
    Poll,
}

impl FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "" | "auto" => Ok(BackendChoice::Auto),
            "io_uring" | "iouring" | "uring" => Ok(BackendChoice::IoUring),
            "poll" | "epoll" | "mio" => Ok(BackendChoice::Poll),
            other => Err(format!(
                "unknown backend {other:?}: expected \"io_uring\", \"poll\" or \"auto\""
            )),
        }
    }
}

impl BackendChoice {
    /// Resolves the choice to a backend that works on this machine.
    ///
    /// `Auto` reads `SERVERCORE_BACKEND` first. A forced io_uring that the kernel refuses is
    /// an error naming the reason; an automatic choice falls back to poll and logs why, once
    /// per process.
    ///
    /// ```
    /// use servercore::{Backend, BackendChoice};
    /// assert_eq!(BackendChoice::Poll.resolve().unwrap(), Backend::Poll);
    /// ```
    pub fn resolve(self) -> io::Result<Backend> {
        self.resolve_with(Diagnostics::default()).map(|(backend, _)| backend)
    }

    /// [`resolve`](Self::resolve) for a service with the diagnostic switches `diag`:
    /// returns the backend and the switches in force (`diag` plus those `SERVERCORE_BACKEND`
    /// names, when it is read).
    pub(crate) fn resolve_with(self, diag: Diagnostics) -> io::Result<(Backend, Diagnostics)> {
        let (choice, diag) = match self {
            BackendChoice::Auto => match std::env::var(BACKEND_ENV) {
                Ok(v) => {
                    let (choice, from_env) = parse_spec(&v).map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidInput, format!("{BACKEND_ENV}: {e}"))
                    })?;
                    (choice, diag.union(from_env))
                }
                Err(_) => (BackendChoice::Auto, diag),
            },
            forced => (forced, diag),
        };
        let usable = || if diag.deny_io_uring { Err(DENIED.to_string()) } else { probe_io_uring() };
        let backend = match choice {
            BackendChoice::Poll => Backend::Poll,
            BackendChoice::IoUring => match usable() {
                Ok(()) => Backend::IoUring,
                Err(why) => {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("io_uring was requested but is not usable here: {why}"),
                    ))
                }
            },
            BackendChoice::Auto => {
                static LOGGED: OnceLock<()> = OnceLock::new();
                match usable() {
                    Ok(()) => {
                        LOGGED.get_or_init(|| tracing::info!("backend: io_uring (probed)"));
                        Backend::IoUring
                    }
                    Err(why) => {
                        LOGGED.get_or_init(|| {
                            tracing::warn!("io_uring not usable ({why}); using the poll backend")
                        });
                        Backend::Poll
                    }
                }
            }
        };
        Ok((backend, diag))
    }
}

/// Why io_uring is not used when [`Diagnostics::deny_io_uring`] is set.
const DENIED: &str = "io_uring_setup skipped: denied by Diagnostics::deny_io_uring";

/// Parses a `SERVERCORE_BACKEND` value: a backend, then optionally a colon and
/// comma-separated switches. io_uring switches need io_uring (or `auto`).
fn parse_spec(spec: &str) -> Result<(BackendChoice, Diagnostics), String> {
    let (name, switches) = spec.split_once(':').unwrap_or((spec, ""));
    let choice: BackendChoice = name.parse()?;
    let mut d = Diagnostics::default();
    for switch in switches.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let flag = match switch.to_ascii_lowercase().as_str() {
            "no-bufring" => &mut d.uring_no_bufring,
            "no-defer-taskrun" => &mut d.uring_no_defer_taskrun,
            "no-ext-arg" => &mut d.uring_no_ext_arg,
            "no-multishot-poll" => &mut d.uring_no_multishot_poll,
            "no-room-coalesce" => &mut d.no_room_coalesce,
            other => {
                return Err(format!(
                    "unknown switch {other:?}: expected no-bufring, no-defer-taskrun, \
                     no-ext-arg, no-multishot-poll or no-room-coalesce"
                ))
            }
        };
        *flag = true;
    }
    let uring_only = d.uring_switches() != super::UringSwitches::default();
    if uring_only && choice == BackendChoice::Poll {
        return Err(format!("{spec:?}: io_uring switches with the poll backend"));
    }
    Ok((choice, d))
}

/// Probes io_uring once per process: ring creation plus every opcode the backend needs.
pub(crate) fn probe_io_uring() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            #[cfg(target_os = "linux")]
            {
                super::uring::probe()
            }
            #[cfg(not(target_os = "linux"))]
            {
                Err("io_uring exists only on Linux".to_string())
            }
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_spec_names_a_backend_and_switches() {
        let (c, d) = parse_spec("io_uring").unwrap();
        assert_eq!((c, d), (BackendChoice::IoUring, Diagnostics::default()));
        let (c, d) = parse_spec("io_uring:no-bufring, no-ext-arg").unwrap();
        assert_eq!(c, BackendChoice::IoUring);
        let want =
            Diagnostics { uring_no_bufring: true, uring_no_ext_arg: true, ..Default::default() };
        assert_eq!(d, want);
        let (c, d) = parse_spec("poll:no-room-coalesce").unwrap();
        assert_eq!((c, d.no_room_coalesce), (BackendChoice::Poll, true));
        let (c, d) = parse_spec("auto:no-multishot-poll,no-defer-taskrun").unwrap();
        assert!(c == BackendChoice::Auto && d.uring_no_multishot_poll && d.uring_no_defer_taskrun);
        assert!(parse_spec("poll:no-bufring").unwrap_err().contains("poll"));
        assert!(parse_spec("io_uring:deny").unwrap_err().contains("\"deny\""));
        assert!(parse_spec("bogus:no-bufring").unwrap_err().contains("bogus"));
    }

    #[test]
    fn denied_io_uring_falls_back_or_fails_without_probing() {
        let denied = Diagnostics { deny_io_uring: true, ..Default::default() };
        let e = BackendChoice::IoUring.resolve_with(denied).unwrap_err();
        assert!(e.to_string().contains("deny_io_uring"), "{e}");
        let (b, d) = BackendChoice::Poll.resolve_with(denied).unwrap();
        assert_eq!((b, d), (Backend::Poll, denied));
    }
}
