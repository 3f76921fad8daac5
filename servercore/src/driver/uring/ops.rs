//! Starting and cancelling operations: each entry's memory moves into the operation table
//! first (DESIGN.md invariant 1).

use super::*;

impl UringDriver {
    pub(super) fn push_accept(&mut self, key: usize, fd: i32, multishot: bool) {
        let entry = if multishot {
            opcode::AcceptMulti::new(types::Fd(fd)).flags(libc::SOCK_CLOEXEC).build()
        } else {
            opcode::Accept::new(types::Fd(fd), std::ptr::null_mut(), std::ptr::null_mut())
                .flags(libc::SOCK_CLOEXEC)
                .build()
        };
        let ud = self.ud(key);
        // SAFETY: an accept without an address buffer points at no user memory.
        unsafe { self.push(entry.user_data(ud)) };
    }

    pub(crate) fn accept(&mut self, sock: SockId, owner: u64) -> OpId {
        let fd = self.fd(sock);
        let multishot = self.multishot_accept;
        let id = self.insert_op(owner, OpState::Accept { fd, multishot, cancelled: false });
        self.push_accept(id.slot(), fd, multishot);
        id
    }

    pub(crate) fn recv(&mut self, sock: SockId, owner: u64) -> OpId {
        let fd = self.fd(sock);
        let multishot = self.multishot_recv;
        let state = OpState::Recv { fd, multishot, buf: None, cancelled: false };
        let id = self.insert_op(owner, state);
        self.push_recv(id.slot());
        id
    }

    /// Arms (or re-arms) the receive `key`.
    pub(super) fn push_recv(&mut self, key: usize) {
        let OpState::Recv { fd, multishot, .. } = self.ops[key].state else { return };
        let ud = self.ud(key);
        if multishot {
            let bgid = self.bufring.as_ref().map_or(0, |b| b.bgid);
            let entry = opcode::RecvMulti::new(types::Fd(fd), bgid).build().user_data(ud);
            // SAFETY: the kernel writes only into buffer-ring buffers, which live until the
            // ring is closed (invariant 1); the entry points at no other memory.
            unsafe { self.push(entry) };
            return;
        }
        let index = match self.pool_free.pop() {
            Some(i) => i,
            None => {
                self.pool.push(vec![0u8; self.recv_size].into_boxed_slice());
                (self.pool.len() - 1) as u32
            }
        };
        let buf = &mut self.pool[index as usize];
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        if let OpState::Recv { buf, .. } = &mut self.ops[key].state {
            *buf = Some(index);
        }
        let entry = opcode::Recv::new(types::Fd(fd), ptr, len).build().user_data(ud);
        // SAFETY: invariant 1: pool buffer `index` is owned by this operation (off the free
        // list) until its completion is reaped; the pool's boxes never move or shrink.
        unsafe { self.push(entry) };
    }

    pub(crate) fn lease(&self, lease: &RecvLease) -> &[u8] {
        match &self.bufring {
            Some(ring) if lease.buf & POOL_BIT == 0 => {
                ring.data(lease.buf as u16, lease.len as usize)
            }
            _ => &self.pool[(lease.buf & !POOL_BIT) as usize][..lease.len as usize],
        }
    }

    pub(crate) fn release(&mut self, lease: RecvLease) {
        if lease.buf & POOL_BIT != 0 {
            self.pool_free.push(lease.buf & !POOL_BIT);
        } else if let Some(ring) = &mut self.bufring {
            ring.push(lease.buf as u16);
            self.bufring_dirty = true;
        }
    }

    pub(crate) fn send(&mut self, sock: SockId, owner: u64, bufs: SendBatch) -> OpId {
        let fd = self.fd(sock);
        let mut op = self.send_pool.pop().unwrap_or_else(|| {
            Box::new(SendOp {
                bufs: SendBatch::new(),
                iovs: Vec::new(),
                // SAFETY: msghdr is a plain C struct for which all-zero is a valid value.
                msg: unsafe { std::mem::zeroed() },
            })
        });
        op.bufs = bufs;
        op.iovs.clear();
        for b in &op.bufs {
            // Buffers carved one after another from a pooled chunk (PacketWriter,
            // SendBuffer::copy_from_slice) sit back to back in memory: one iovec covers them,
            // so the kernel imports fewer iovecs and copies larger runs.
            if let Some(last) = op.iovs.last_mut() {
                if (last.iov_base as usize).wrapping_add(last.iov_len) == b.as_ptr() as usize {
                    last.iov_len += b.len();
                    continue;
                }
            }
            op.iovs
                .push(libc::iovec { iov_base: b.as_ptr() as *mut libc::c_void, iov_len: b.len() });
        }
        op.msg.msg_iov = op.iovs.as_mut_ptr();
        op.msg.msg_iovlen = op.iovs.len() as _;
        let msg: *const libc::msghdr = &op.msg;
        // One buffer: a plain send, which spares the kernel the msghdr and iovec import.
        let single = match op.iovs.as_slice() {
            [one] if one.iov_len <= u32::MAX as usize => {
                Some((one.iov_base as *const u8, one.iov_len as u32))
            }
            _ => None,
        };
        let id = self.insert_op(owner, OpState::Send(op));
        let entry = match single {
            Some((ptr, len)) => {
                opcode::Send::new(types::Fd(fd), ptr, len).flags(libc::MSG_NOSIGNAL).build()
            }
            None => {
                opcode::SendMsg::new(types::Fd(fd), msg).flags(libc::MSG_NOSIGNAL as u32).build()
            }
        };
        // SAFETY: invariant 1: the boxed SendOp (msghdr, iovecs) and the Bytes the iovecs
        // and the single-buffer pointer point into stay in `ops[key]` until reaped. A merged
        // iovec spans only bytes of those buffers (adjacent ranges, each valid to read).
        unsafe { self.push(entry.user_data(id.to_u64())) };
        id
    }

    pub(crate) fn connect(&mut self, sock: SockId, owner: u64, addr: SocketAddr) -> OpId {
        let fd = self.fd(sock);
        let addr = Box::new(SockAddr::from(addr));
        let (ptr, len) = (addr.as_ptr().cast::<libc::sockaddr>(), addr.len());
        let id = self.insert_op(owner, OpState::Connect(addr));
        let entry = opcode::Connect::new(types::Fd(fd), ptr, len).build().user_data(id.to_u64());
        // SAFETY: invariant 1: the boxed address stays in `ops[key]` until reaped.
        unsafe { self.push(entry) };
        id
    }

    /// Cancels `op` if it is still in flight; an id whose operation has finished (its
    /// slot perhaps reused since) is ignored.
    pub(crate) fn cancel(&mut self, op: OpId) {
        let key = op.slot();
        match self.ops.get_mut(key) {
            Some(o) if o.gen == op.gen() => {
                match &mut o.state {
                    // Not re-armed after its next chunk, or not retried single-shot.
                    OpState::Recv { cancelled, .. } | OpState::Accept { cancelled, .. } => {
                        *cancelled = true
                    }
                    _ => {}
                }
            }
            _ => {
                tracing::debug!("cancel of a finished io_uring operation {op:?}: ignored");
                return;
            }
        }
        if let Some(i) = self.starved.iter().position(|&k| k == key) {
            // Not armed in the kernel (waiting for buffers): complete it here, for the next
            // `wait` to hand out.
            self.starved.swap_remove(i);
            #[cfg(test)]
            {
                self.counters.parked_cancels += 1;
            }
            let owner = self.ops.remove(key).owner;
            let result = Err(io::Error::from_raw_os_error(libc::ECANCELED));
            self.backlog
                .push(Completion { owner, kind: CompletionKind::Recv { result, armed: false } });
            return;
        }
        self.cancel_ud(op.to_u64());
    }

    /// Asks the kernel to cancel the entry with this `user_data`.
    pub(super) fn cancel_ud(&mut self, ud: u64) {
        let entry = opcode::AsyncCancel::new(ud).build().user_data(CANCEL_UD);
        // SAFETY: a cancel request points at no user memory.
        unsafe { self.push(entry) };
    }
}
