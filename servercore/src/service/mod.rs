//! Services: a set of sessions served by a set of workers (the seed's `Service`).
//!
//! [`ServerService`] accepts connections; [`ClientService`] opens them. Both own their
//! worker threads, count their sessions, broadcast, and shut down gracefully.

mod client;
#[cfg(test)]
mod failure_tests;
mod running;
mod server;
mod settings;

pub use client::{ClientBuilder, ClientService};
pub use server::{ServerBuilder, ServerService};

use crate::buffer::SendBuffer;
use crate::driver::{Driver, DriverConfig};
use crate::error::SendError;
use crate::mailbox::{self, Command, WorkerRemote};
pub(crate) use crate::registry::ServiceShared;
pub use crate::registry::{Reconnect, ServiceStats};
use crate::session::{Ctx, Session};
use crate::worker::{Worker, WorkerDuties, WorkerInit};
use std::io;
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long dropping a service without calling `shutdown` lets queued sends drain.
pub const DEFAULT_DROP_SHUTDOWN: Duration = Duration::from_secs(1);

/// A session's weak view of its service: broadcast and counts, from inside callbacks.
///
/// Thread safety: `Send + Sync`; calls post messages to the workers.
#[derive(Clone)]
pub struct ServiceRef(pub(crate) Arc<ServiceShared>);

impl ServiceRef {
    /// Queues `buf` on every open session of the service (one message per worker, no copy
    /// of the payload per session). All or nothing: [`SendError::InboxFull`] when a worker
    /// is not keeping up.
    pub fn broadcast(&self, buf: impl Into<SendBuffer>) -> Result<(), SendError> {
        self.0.broadcast(buf.into())
    }

    /// The service's counters.
    pub fn stats(&self) -> ServiceStats {
        self.0.stats()
    }

    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.0.workers.get().map_or(0, Vec::len)
    }

    /// Runs `job` on worker `worker` (modulo the worker count), in order with the other
    /// messages to it.
    pub fn run_on_worker(
        &self,
        worker: usize,
        job: impl FnOnce() + Send + 'static,
    ) -> Result<(), crate::WorkerGone> {
        let workers = self.0.workers.get().ok_or(crate::WorkerGone)?;
        workers[worker % workers.len()]
            .post(Command::Job(Box::new(job)))
            .map_err(|_| crate::WorkerGone)
    }
}

/// The service of a session's context (it lives with services: the session layer below
/// holds the shared state only weakly and knows nothing of `ServiceRef`).
impl Ctx<'_> {
    /// The service this session belongs to, while it exists (sessions hold it weakly).
    pub fn service(&self) -> Option<ServiceRef> {
        self.local.service.upgrade().map(ServiceRef)
    }
}

/// What one worker thread needs to build its driver and worker.
struct WorkerStart<S> {
    index: usize,
    role: WorkerDuties,
    shared: Arc<ServiceShared>,
    factory: Arc<dyn Fn() -> S + Send + Sync>,
}

impl<S: Session> WorkerStart<S> {
    /// The worker thread: builds the driver (here: io_uring's single issuer) and the
    /// worker, reports its remote on `ready`, and runs once `go` says so.
    fn run(self, ready: mpsc::SyncSender<io::Result<Arc<WorkerRemote>>>, go: mpsc::Receiver<bool>) {
        let WorkerStart { index, role, shared, factory } = self;
        let config = &shared.config;
        let dc = DriverConfig {
            recv_buffers: config.recv_buffers_per_worker,
            recv_buffer_size: config.recv_buffer_size,
            uring_off: config.diagnostics.uring_switches(),
            ..DriverConfig::default()
        };
        let driver = match Driver::new(shared.backend, &dc) {
            Ok(d) => d,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let (tx, rx) = mpsc::channel();
        let session_type = mailbox::SessionType::of::<S>();
        let remote = mailbox::remote(index, config.clone(), tx, driver.waker(), session_type);
        let remote = Arc::new(remote);
        let init = WorkerInit { driver, rx, remote: remote.clone(), shared, factory, role };
        match Worker::new(init) {
            Ok(w) => {
                let _ = ready.send(Ok(remote));
                if go.recv() == Ok(true) {
                    w.run();
                }
            }
            Err(e) => {
                let _ = ready.send(Err(e));
            }
        }
    }
}

/// The workers of a running service.
pub(crate) struct Workers {
    shared: Arc<ServiceShared>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts one thread per role; each builds its driver and worker on its own thread
    /// (io_uring's single issuer) and reports back. Only once every worker is built is the
    /// worker set published and are the workers let run: no worker accepts, and no user
    /// code runs, before a session could see the whole service (a room bound then keeps
    /// its worker list for good).
    pub(crate) fn spawn<S, F>(
        shared: ServiceShared,
        roles: Vec<WorkerDuties>,
        factory: F,
        name: &str,
    ) -> io::Result<Workers>
    where
        S: Session,
        F: Fn() -> S + Send + Sync + 'static,
    {
        let shared = Arc::new(shared);
        let factory: Arc<dyn Fn() -> S + Send + Sync> = Arc::new(factory);
        let mut threads = Vec::new();
        let mut readies = Vec::new();
        let mut gates = Vec::new();
        let mut failure = None;
        // All worker threads build their drivers at once; their reports are then taken in
        // index order, so that `workers[i]` is worker `i`.
        for (index, role) in roles.into_iter().enumerate() {
            // `true`: run; `false` (or the sender gone): another worker failed, end.
            let (go_tx, go_rx) = mpsc::sync_channel::<bool>(1);
            let (ready_tx, ready_rx) = mpsc::sync_channel(1);
            let start =
                WorkerStart { index, role, shared: shared.clone(), factory: factory.clone() };
            let spawned = std::thread::Builder::new()
                .name(format!("{name}-{index}"))
                .spawn(move || start.run(ready_tx, go_rx));
            match spawned {
                Ok(t) => {
                    threads.push(t);
                    gates.push(go_tx);
                    readies.push(ready_rx);
                }
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        let mut remotes = Vec::new();
        for ready in readies {
            match ready.recv() {
                Ok(Ok(remote)) => remotes.push(remote),
                Ok(Err(e)) => {
                    let why = format!("starting a {} worker failed: {e}", shared.backend);
                    failure.get_or_insert(io::Error::new(e.kind(), why));
                }
                Err(_) => {
                    failure.get_or_insert(io::Error::other("a worker thread died while starting"));
                }
            }
        }
        let _ = shared.workers.set(remotes);
        for gate in gates {
            let _ = gate.send(failure.is_none());
        }
        let workers = Workers { shared, threads };
        match failure {
            Some(e) => {
                drop(workers); // shuts down the ones that started
                Err(e)
            }
            None => Ok(workers),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<ServiceShared> {
        &self.shared
    }

    pub(crate) fn post_all(&self, mut cmd: impl FnMut() -> Command) {
        for w in self.shared.workers.get().into_iter().flatten() {
            let _ = w.post(cmd());
        }
    }

    /// Graceful stop: every worker stops accepting, flushes up to `timeout`, disconnects
    /// its sessions with [`DisconnectReason::Shutdown`], and ends; then the threads are
    /// joined.
    pub(crate) fn shutdown(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        self.post_all(|| Command::Shutdown { deadline });
        let mut panicked = 0;
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                panicked += 1;
            }
        }
        if panicked > 0 {
            return Err(io::Error::other(format!("{panicked} worker threads panicked")));
        }
        let failures = self.shared.worker_failures.lock().map(|f| f.join("; ")).unwrap_or_default();
        if !failures.is_empty() {
            return Err(io::Error::other(failures));
        }
        Ok(())
    }

    pub(crate) fn is_running(&self) -> bool {
        !self.threads.is_empty()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if self.is_running() {
            let _ = self.shutdown(DEFAULT_DROP_SHUTDOWN);
        }
    }
}

/// The default number of workers: the available cores.
pub(crate) fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
