//! What both kinds of service share once started: their workers, backend and the methods
//! on them.

use super::{ServiceStats, Workers};
use crate::buffer::SendBuffer;
use crate::driver::Backend;
use std::io;
use std::time::Duration;

/// A started service's workers and the backend they run on.
pub(crate) struct Running {
    pub(crate) workers: Workers,
    pub(crate) backend: Backend,
    pub(crate) worker_count: usize,
}

impl Running {
    pub(crate) fn stats(&self) -> ServiceStats {
        self.workers.shared().stats()
    }

    pub(crate) fn service(&self) -> crate::ServiceRef {
        crate::ServiceRef(self.workers.shared().clone())
    }

    pub(crate) fn broadcast(&self, buf: SendBuffer) -> Result<(), crate::SendError> {
        self.workers.shared().broadcast(buf)
    }

    pub(crate) fn shutdown(&mut self, timeout: Duration) -> io::Result<()> {
        self.workers.shutdown(timeout)
    }
}

/// The public methods both services have, defined once (each type holds a `running:
/// Running` field).
macro_rules! running_methods {
    () => {
        /// The backend in use.
        pub fn backend(&self) -> crate::Backend {
            self.running.backend
        }

        /// Number of worker threads.
        pub fn workers(&self) -> usize {
            self.running.worker_count
        }

        /// Sessions holding a slot now (connecting, open or closing).
        pub fn session_count(&self) -> usize {
            self.stats().sessions
        }

        /// A shareable reference to this service (broadcast, jobs, counters).
        pub fn service(&self) -> crate::ServiceRef {
            self.running.service()
        }

        /// The service's counters.
        pub fn stats(&self) -> crate::ServiceStats {
            self.running.stats()
        }

        /// Queues `buf` on every open session: one message per worker, no payload copy per
        /// session. All or nothing: [`SendError::InboxFull`](crate::SendError::InboxFull)
        /// when a worker is not keeping up.
        pub fn broadcast(&self, buf: impl Into<crate::SendBuffer>) -> Result<(), crate::SendError> {
            self.running.broadcast(buf.into())
        }

        /// Stops accepting (server) or reconnecting (client), lets queued sends drain for up
        /// to `timeout`, disconnects every session with
        /// [`Shutdown`](crate::DisconnectReason::Shutdown), and joins the workers.
        pub fn shutdown(mut self, timeout: std::time::Duration) -> std::io::Result<()> {
            self.running.shutdown(timeout)
        }
    };
}
pub(super) use running_methods;
