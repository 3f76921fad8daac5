//! Choosing a backend at start: forced by `SERVERCORE_BACKEND` or the builder, else probed.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::OnceLock;

/// The environment variable that forces a backend: `io_uring` or `poll`.
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
    pub fn resolve(self) -> io::Result<Backend> {
        let choice = match self {
            BackendChoice::Auto => match std::env::var(BACKEND_ENV) {
                Ok(v) => v.parse().map_err(|e: String| {
                    io::Error::new(io::ErrorKind::InvalidInput, format!("{BACKEND_ENV}: {e}"))
                })?,
                Err(_) => BackendChoice::Auto,
            },
            forced => forced,
        };
        match choice {
            BackendChoice::Poll => Ok(Backend::Poll),
            BackendChoice::IoUring => match probe_io_uring() {
                Ok(()) => Ok(Backend::IoUring),
                Err(why) => Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring was requested but is not usable here: {why}"),
                )),
            },
            BackendChoice::Auto => {
                static LOGGED: OnceLock<()> = OnceLock::new();
                match probe_io_uring() {
                    Ok(()) => {
                        LOGGED.get_or_init(|| tracing::info!("backend: io_uring (probed)"));
                        Ok(Backend::IoUring)
                    }
                    Err(why) => {
                        LOGGED.get_or_init(|| {
                            tracing::warn!("io_uring not usable ({why}); using the poll backend")
                        });
                        Ok(Backend::Poll)
                    }
                }
            }
        }
    }
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
