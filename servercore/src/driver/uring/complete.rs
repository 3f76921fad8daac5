//! Turning completion queue entries into [`Completion`]s: stale ids ignored, standing
//! receives re-armed or ended, memory handed back.

use super::*;

impl UringDriver {
    pub(super) fn complete(
        &mut self,
        user_data: u64,
        res: i32,
        flags: u32,
        out: &mut Vec<Completion>,
    ) {
        // Never 0: every `user_data` this driver gives has a nonzero half.
        let Some(id) = OpId::from_u64(user_data) else { return };
        match user_data as u32 {
            CANCEL_SLOT => return,
            WAKE_SLOT => return self.complete_wake(res, flags),
            TIMER_SLOT => {
                let key = id.gen() as usize;
                if let Some(b) = self.timers.try_remove(key) {
                    self.spare_timers.push(b);
                }
                if self.timer == Some(key) {
                    self.timer = None;
                }
                return;
            }
            _ => {}
        }
        let key = id.slot();
        if !self.ops.get(key).is_some_and(|op| op.gen == id.gen()) {
            // Every operation completes once; this would be a kernel or driver error.
            tracing::debug!("io_uring completion of no current operation ({id:?}): ignored");
            return;
        }
        // The kernel keeps a multishot operation armed after this completion.
        let kernel_armed = cqueue::more(flags);
        let owner = self.ops[key].owner;
        let err = || io::Error::from_raw_os_error(-res);
        if let OpState::Accept { fd, multishot, cancelled } = self.ops[key].state {
            if multishot && res == -libc::EINVAL && !kernel_armed {
                // Kernel without multishot accept (before 5.19): single-shot from now on.
                tracing::info!("multishot accept unsupported; using single-shot accept");
                self.multishot_accept = false;
                self.ops[key].state = OpState::Accept { fd, multishot: false, cancelled };
                if !self.dropping && !cancelled {
                    self.push_accept(key, fd, false);
                    return;
                }
            }
            let armed = multishot && kernel_armed;
            let result = if res >= 0 {
                // SAFETY: a successful accept's result is a new fd that nobody else owns.
                Ok(TcpStream::from(unsafe { OwnedFd::from_raw_fd(res) }))
            } else {
                Err(err())
            };
            if !armed {
                self.ops.remove(key);
            }
            out.push(Completion { owner, kind: CompletionKind::Accept { result, armed } });
            return;
        }
        if let OpState::Recv { .. } = self.ops[key].state {
            return self.complete_recv(key, res, flags, out);
        }
        let op = self.ops.remove(key);
        let kind = match op.state {
            OpState::Accept { .. } => unreachable!("handled above"),
            OpState::Recv { .. } => unreachable!("handled above"),
            OpState::Send(mut send) => {
                let bufs = std::mem::take(&mut send.bufs);
                send.iovs.clear();
                self.send_pool.push(send);
                let result = if res >= 0 { Ok(res as usize) } else { Err(err()) };
                CompletionKind::Send { result, bufs }
            }
            OpState::Connect(_addr) => {
                let result = if res >= 0 { Ok(()) } else { Err(err()) };
                CompletionKind::Connect { result }
            }
        };
        out.push(Completion { owner, kind });
    }
}

impl UringDriver {
    /// One completion of the standing receive in slot `key`.
    ///
    /// A standing receive is re-armed after each chunk the kernel ends it with, unless it
    /// was cancelled (or the driver is going away): then that chunk is its final
    /// completion (`armed == false`), so a cancel always ends it even while bytes keep
    /// arriving.
    fn complete_recv(&mut self, key: usize, res: i32, flags: u32, out: &mut Vec<Completion>) {
        let owner = self.ops[key].owner;
        let OpState::Recv { multishot, buf, cancelled, .. } = self.ops[key].state else {
            unreachable!("complete_recv of a receive")
        };
        let stop = cancelled || self.dropping;
        // The kernel keeps this multishot receive armed after this completion.
        let kernel_armed = multishot && cqueue::more(flags);
        if res > 0 {
            let Some(lease) = recv_lease(multishot, buf, res, flags) else {
                // Bytes without a buffer to name (a kernel anomaly): the receive cannot go
                // on. Ended here, or cancelled and ended by its final completion.
                if kernel_armed {
                    self.cancel(OpId::new(key, self.ops[key].gen));
                } else {
                    self.ops.remove(key);
                    let result = Err(io::Error::from_raw_os_error(libc::EIO));
                    let kind = CompletionKind::Recv { result, armed: false };
                    out.push(Completion { owner, kind });
                }
                return;
            };
            let armed = kernel_armed || self.rearm_recv(key, stop);
            out.push(Completion {
                owner,
                kind: CompletionKind::Recv { result: Ok(Some(lease)), armed },
            });
            return;
        }
        if let Some(index) = buf {
            self.pool_free.push(index);
        }
        if kernel_armed {
            return; // an empty, non-final completion carries nothing
        }
        if multishot && !stop && self.retry_multishot_recv(key, res) {
            return;
        }
        self.ops.remove(key);
        let result = match res {
            0 => Ok(None),
            e if e == -libc::ENOBUFS || e == -libc::EINVAL => {
                Err(io::Error::from_raw_os_error(libc::ECANCELED))
            }
            e => Err(io::Error::from_raw_os_error(-e)),
        };
        out.push(Completion { owner, kind: CompletionKind::Recv { result, armed: false } });
    }

    /// After a chunk that ended a receive: arms it again, or (`stop`) lets it end.
    /// Returns whether the receive goes on.
    fn rearm_recv(&mut self, key: usize, stop: bool) -> bool {
        if stop {
            self.ops.remove(key);
            false
        } else {
            self.push_recv(key); // keep receiving
            true
        }
    }

    /// A multishot receive the kernel ended without bytes: whether it goes on, either
    /// re-armed at the next wait (ENOBUFS) or as single-shot receives (EINVAL).
    fn retry_multishot_recv(&mut self, key: usize, res: i32) -> bool {
        if res == -libc::ENOBUFS {
            // Every buffer is in use: re-armed at the next wait, after the worker has given
            // buffers back. The bytes wait in the socket meanwhile.
            #[cfg(test)]
            {
                self.counters.starved += 1;
            }
            self.starved.push(key);
            return true;
        }
        if res == -libc::EINVAL {
            // A kernel without multishot receive (before 6.0): single-shot from now on. The
            // ring stays registered (and alive) until the io_uring closes.
            tracing::info!("multishot receive unsupported; using single-shot receives");
            self.multishot_recv = false;
            if let OpState::Recv { multishot, buf, .. } = &mut self.ops[key].state {
                *multishot = false;
                *buf = None;
            }
            self.push_recv(key);
            return true;
        }
        false
    }
}

/// The lease of a receive completion with `res` bytes: a buffer-ring buffer (multishot) or
/// the pool buffer the receive was given.
fn recv_lease(multishot: bool, buf: Option<u32>, res: i32, flags: u32) -> Option<RecvLease> {
    if multishot {
        let Some(bid) = cqueue::buffer_select(flags) else {
            tracing::error!("multishot receive completed without a buffer id");
            return None;
        };
        Some(RecvLease { buf: u32::from(bid), len: res as u32 })
    } else {
        Some(RecvLease { buf: buf? | POOL_BIT, len: res as u32 })
    }
}
