//! Jobs and timers on worker threads (the seed's `JobQueue` / `JobTimer`).
//!
//! A [`JobQueue`] is an actor: its state lives on one worker, and the closures posted to
//! it run there one at a time, in the order they were posted (per posting thread; the
//! worker's inbox is FIFO). Timed jobs run on the same worker after a delay or
//! repeatedly, until cancelled.

use crate::mailbox::{Command, WorkerRemote};
use crate::service::ServiceRef;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The worker has ended (its service shut down); the job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerGone;

impl fmt::Display for WorkerGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the worker has ended; job not queued")
    }
}

impl std::error::Error for WorkerGone {}

/// State `T` owned by one worker, changed only by jobs that run there in order.
///
/// Thread safety: `Send + Sync` and `Clone`; post from any thread. Jobs of one queue never
/// run at the same time.
///
/// ```
/// use servercore::{JobQueue, ServerService, Session, Ctx};
/// use std::sync::mpsc;
/// # struct Nop; impl Session for Nop { fn on_recv(&mut self, _: &mut Ctx<'_>, d: &[u8]) -> usize { d.len() } }
///
/// let server = ServerService::builder("127.0.0.1:0".parse().unwrap()).workers(2).start(|| Nop).unwrap();
/// let scores = JobQueue::new(&server.service(), 0, Vec::<u32>::new());
/// let (tx, rx) = mpsc::channel();
/// for i in 0..10 {
///     scores.post(move |v| v.push(i)).unwrap();
/// }
/// scores.post(move |v| tx.send(v.clone()).unwrap()).unwrap();
/// assert_eq!(rx.recv().unwrap(), (0..10).collect::<Vec<_>>()); // in order
/// # server.shutdown(std::time::Duration::from_secs(1)).unwrap();
/// ```
pub struct JobQueue<T> {
    state: Arc<Mutex<T>>,
    worker: Arc<WorkerRemote>,
}

impl<T> Clone for JobQueue<T> {
    fn clone(&self) -> Self {
        JobQueue { state: self.state.clone(), worker: self.worker.clone() }
    }
}

impl<T: Send + 'static> JobQueue<T> {
    /// A queue whose jobs run on worker `worker` (modulo the worker count) of `service`.
    pub fn new(service: &ServiceRef, worker: usize, state: T) -> Self {
        let workers = service.0.workers.get().expect("a started service has workers");
        JobQueue {
            state: Arc::new(Mutex::new(state)),
            worker: workers[worker % workers.len()].clone(),
        }
    }

    /// Runs `job` on the queue's worker after the jobs posted before it.
    pub fn post(&self, job: impl FnOnce(&mut T) + Send + 'static) -> Result<(), WorkerGone> {
        let state = self.state.clone();
        self.worker
            .post(Command::Job(Box::new(move || {
                // The lock is only ever taken on this worker: never contended.
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                job(&mut s);
            })))
            .map_err(|_| WorkerGone)
    }

    /// Runs `job` once after `delay` (millisecond resolution), unless cancelled first.
    pub fn post_after(
        &self,
        delay: Duration,
        job: impl FnOnce(&mut T) + Send + 'static,
    ) -> Result<JobTimer, WorkerGone> {
        let mut job = Some(job);
        self.schedule(delay, None, move |s| {
            if let Some(j) = job.take() {
                j(s)
            }
        })
    }

    /// Runs `job` every `period` (first after one period), until cancelled.
    pub fn post_every(
        &self,
        period: Duration,
        job: impl FnMut(&mut T) + Send + 'static,
    ) -> Result<JobTimer, WorkerGone> {
        self.schedule(period, Some(period.max(Duration::from_millis(1))), job)
    }

    fn schedule(
        &self,
        delay: Duration,
        period: Option<Duration>,
        mut job: impl FnMut(&mut T) + Send + 'static,
    ) -> Result<JobTimer, WorkerGone> {
        let cancelled = Arc::new(AtomicBool::new(false));
        let state = self.state.clone();
        self.worker
            .post(Command::TimedJob {
                delay,
                period,
                cancelled: cancelled.clone(),
                job: Box::new(move || {
                    let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                    job(&mut s);
                }),
            })
            .map_err(|_| WorkerGone)?;
        Ok(JobTimer { cancelled })
    }
}

/// A scheduled job; [`cancel`](JobTimer::cancel) stops it from running (again).
#[derive(Debug, Clone)]
pub struct JobTimer {
    cancelled: Arc<AtomicBool>,
}

impl JobTimer {
    /// Stops the job: it does not run again once its worker has seen the cancel (a run that
    /// already started, or that races with this call, completes).
    pub fn cancel(&self) {
        self.cancelled.store(true, Ordering::Release);
    }

    /// Whether `cancel` was called.
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire)
    }
}
