//! Waiting: the wake-up poll, submitting what is queued, one `io_uring_enter` per turn
//! (with the gathering window and, before EXT_ARG, a wait timer), and reaping.

use super::*;

impl UringDriver {
    /// Arms the poll on the wake-up eventfd: POLL_ADD rather than a read, since a read of a
    /// non-blocking eventfd may complete at once with EAGAIN (a spin). Multishot where the
    /// kernel has it; the counter is drained when it fires (`complete_wake`).
    pub(super) fn arm_wake(&mut self) {
        let poll = opcode::PollAdd::new(types::Fd(self.wake_fd), libc::POLLIN as u32);
        let entry = poll.multi(self.multishot_poll).build().user_data(WAKE_UD);
        // SAFETY: a poll points at no user memory; the eventfd stays open while the ring
        // lives (the driver's `waker` holds it).
        unsafe { self.push(entry) };
        self.wake_armed = true;
    }

    /// The wake-up poll fired (or ended).
    pub(super) fn complete_wake(&mut self, res: i32, flags: u32) {
        if !cqueue::more(flags) {
            self.wake_armed = false; // re-armed by the next `wait`
        }
        if res < 0 {
            if res == -libc::EINVAL && self.multishot_poll {
                tracing::info!("multishot poll unsupported; re-arming the wake-up poll");
                self.multishot_poll = false;
            } else if res != -libc::ECANCELED {
                tracing::warn!("wake-up poll failed: {}", io::Error::from_raw_os_error(-res));
            }
            return;
        }
        // Consume the signal first, then reset the flag (the order matters: wake.rs).
        if let WakerInner::EventFd(fd) = &self.waker.inner {
            if let Err(e) = fd.drain() {
                tracing::error!("draining the wake-up eventfd failed: {e}");
            }
        }
        self.waker.reset();
    }

    /// Hands the queued submissions to the kernel now (sends run inline, so this is
    /// where most of a busy turn's work happens).
    pub(crate) fn submit(&mut self) -> io::Result<()> {
        if self.flush_overflow() {
            self.submit_now();
        }
        match self.submit_error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        gather: Option<Gather>,
        out: &mut Vec<Completion>,
    ) -> io::Result<()> {
        out.append(&mut self.backlog);
        let flushed = self.prepare_wait()?;
        // Completions already in hand, or entries the kernel did not take (reap first):
        // only submit and collect what else is ready.
        let timeout = if out.is_empty() && flushed { timeout } else { Some(Duration::ZERO) };
        let (timeout, want, gathering) = self.plan_wait(timeout, gather);
        self.enter(timeout, want)?;
        let before = out.len();
        self.reap(out);
        if let Some(key) = self.timer.take() {
            // The wait ended for another reason: the timer must not end a later one.
            self.cancel_ud(timer_ud(key));
        }
        // A busy fan-out turn that did not gather (see `reap_all_deferred`).
        if gather.is_some() && !gathering && out.len() - before >= BUSY_TURN {
            self.reap_all_deferred(out)?;
        }
        self.check_stalled(out.len() > before)
    }

    /// What a wait does before entering the kernel: re-arms the wake-up poll and starved
    /// receives, publishes returned ring buffers, and hands queued entries to the kernel.
    /// Returns whether every queued entry went in.
    pub(super) fn prepare_wait(&mut self) -> io::Result<bool> {
        if let Some(e) = self.submit_error.take() {
            return Err(e);
        }
        if !self.wake_armed && !self.dropping {
            self.arm_wake();
        }
        if self.bufring_dirty {
            self.bufring_dirty = false;
            if let Some(ring) = &self.bufring {
                ring.publish();
            }
        }
        if !self.dropping {
            for key in std::mem::take(&mut self.starved) {
                if self.ops.contains(key) {
                    self.push_recv(key);
                }
            }
        }
        let flushed = self.flush_overflow();
        match self.submit_error.take() {
            Some(e) => Err(e),
            None => Ok(flushed),
        }
    }

    /// The timeout and the number of completions to wait for, and whether this wait
    /// gathers. Without EXT_ARG the timeout becomes a TIMEOUT entry (armed here).
    pub(super) fn plan_wait(
        &mut self,
        mut timeout: Option<Duration>,
        gather: Option<Gather>,
    ) -> (Option<Duration>, usize, bool) {
        let mut want = 1;
        // Without EXT_ARG (before 5.11) the timeout is a TIMEOUT operation, whose one
        // completion would not end a wait for many: such kernels do not gather.
        let gathering = gather.filter(|g| !g.window.is_zero() && self.ext_arg);
        if let Some(g) = gathering {
            // Sleep through the window unless much is ready: those ready now plus a
            // submission queue's worth more (the work of a saturated turn).
            timeout = Some(timeout.map_or(g.window, |t| t.min(g.window)));
            // Also stop before receives could take half the buffer ring (ENOBUFS would
            // end multishot receives, to be re-armed).
            let cq = self.ring.params().cq_entries() as usize;
            let headroom =
                self.bufring.as_ref().map_or(self.sq_entries as usize, |b| b.count() / 2);
            want = (self.ring.completion().len() + headroom.max(1)).min(cq);
        }
        if !self.ext_arg {
            if let Some(d) = timeout.filter(|d| !d.is_zero()) {
                self.arm_timer(d);
                if !self.overflow.is_empty() {
                    timeout = Some(Duration::ZERO); // the timer is not in the kernel
                }
            }
        }
        (timeout, want, gathering.is_some())
    }

    /// Submits and waits for `want` completions or the timeout (`None`: no timeout; zero:
    /// do not wait). A wait cut short (timeout, signal, busy completion queue) is no error.
    pub(super) fn enter(&mut self, timeout: Option<Duration>, want: usize) -> io::Result<()> {
        let result = match timeout {
            // The testing hook's errno takes the path the kernel's would.
            #[cfg(test)]
            _ if self.fail_submit.is_some() => {
                Err(io::Error::from_raw_os_error(self.fail_submit.unwrap_or(0)))
            }
            None => self.ring.submit_and_wait(want),
            Some(d) if self.ext_arg => {
                let ts = types::Timespec::from(d);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(want, &args)
            }
            Some(d) if d.is_zero() => self.ring.submit(),
            Some(_) => self.ring.submit_and_wait(want),
        };
        match result.map_err(|e| (e.raw_os_error(), e)) {
            Ok(_) => Ok(()),
            Err((Some(libc::ETIME | libc::EINTR | libc::EBUSY | libc::EAGAIN), _)) => Ok(()),
            Err((_, e)) => Err(e),
        }
    }

    /// With DEFER_TASKRUN, one enter runs only a bounded batch of deferred completions
    /// (20 on recent kernels, unless more are asked for; a gathering wait asks for more).
    /// After a busy fan-out turn that did not gather, this asks once more, without waiting,
    /// for everything that is ready, so that the fan-out sees all ready sockets rather than
    /// 20. Other turns do not: for echo-like work, smaller turns cost less (BENCHMARKS.md).
    pub(super) fn reap_all_deferred(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        if !self.deferred_in_batches {
            return Ok(());
        }
        let ts = types::Timespec::new();
        let args = types::SubmitArgs::new().timespec(&ts);
        let want = self.ring.params().cq_entries() as usize;
        match self.ring.submitter().submit_with_args(want, &args) {
            Ok(_) => {}
            Err(e) => match e.raw_os_error() {
                Some(libc::ETIME) | Some(libc::EINTR) | Some(libc::EBUSY) => {}
                _ => return Err(e),
            },
        }
        self.reap(out);
        Ok(())
    }

    /// Entries the kernel keeps refusing while nothing completes: a broken ring, not a
    /// busy one (a backed-up completion queue drains as it is reaped).
    pub(super) fn check_stalled(&mut self, reaped: bool) -> io::Result<()> {
        if self.overflow.is_empty() || reaped {
            self.stalled = 0;
            return Ok(());
        }
        self.stalled += 1;
        if self.stalled >= STALL_LIMIT {
            return Err(io::Error::other(format!(
                "io_uring: the kernel took none of {} queued submissions in {STALL_LIMIT} waits",
                self.overflow.len()
            )));
        }
        Ok(())
    }

    /// A wait timer (kernels without EXT_ARG): a TIMEOUT that also ends once one other
    /// completion arrives, so it rarely outlives its wait.
    pub(super) fn arm_timer(&mut self, d: Duration) {
        let ts = types::Timespec::from(d);
        let boxed = match self.spare_timers.pop() {
            Some(mut b) => {
                *b = ts;
                b
            }
            None => Box::new(ts),
        };
        let key = self.timers.insert(boxed);
        let ptr: *const types::Timespec = &*self.timers[key];
        let entry = opcode::Timeout::new(ptr).count(1).build().user_data(timer_ud(key));
        // SAFETY: invariant 1: the boxed timespec stays in `timers` until this entry's
        // completion is reaped (or is leaked at teardown).
        unsafe { self.push(entry) };
        self.timer = Some(key);
    }

    /// Moves every ready completion out of the ring and turns it into a [`Completion`].
    pub(super) fn reap(&mut self, out: &mut Vec<Completion>) {
        #[cfg(test)]
        if self.ring.submission().cq_overflow() {
            self.counters.cq_overflow += 1;
        }
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion());
        for cqe in cqes.drain(..) {
            self.complete(cqe.user_data(), cqe.result(), cqe.flags(), out);
        }
        self.cqes = cqes;
    }
}
