//! The slots a worker keeps its sessions in: the user's object with the engine's state,
//! under a generation (DESIGN.md invariant 2).

use super::*;

/// A session slot: the user's object and the engine's core.
pub(super) struct Conn<S> {
    pub(super) user: S,
    pub(super) core: SessionState,
}

pub(super) struct Slot<S> {
    pub(super) generation: u32,
    pub(super) conn: Option<Conn<S>>,
}

/// Notify policy: after the queue drained to the low watermark, sends are accepted again
/// and `on_writable` runs.
pub(super) fn check_writable<S: Session>(conn: &mut Conn<S>, local: &mut WorkerState) {
    let core = &mut conn.core;
    if core.congested && !core.notify_full && core.queued <= local.config.send_queue_low_watermark {
        core.congested = false;
        if let Some(f) = core.flags.get() {
            f.congested.store(false, Ordering::Release);
        }
        if core.is_open() {
            call(conn, local, |s, ctx| s.on_writable(ctx));
        }
    }
}

pub(super) fn conn_of<S>(slots: &mut [Slot<S>], key: u64) -> Option<&mut Conn<S>> {
    if key & LISTENER_TAG != 0 {
        return None;
    }
    let slot = slots.get_mut((key & 0xffff_ffff) as usize)?;
    if u64::from(slot.generation) != key >> 32 {
        return None;
    }
    slot.conn.as_mut()
}

/// The room fan-out reaches sessions by key through the slots.
impl<S: Session> Members for Vec<Slot<S>> {
    fn core(&mut self, key: u64) -> Option<&mut SessionState> {
        conn_of(self, key).map(|c| &mut c.core)
    }
}

#[cfg(all(test, not(servercore_loom)))]
mod sizes {
    use super::*;

    /// Prints the sizes of a session's per-session structures (`--ignored --nocapture`).
    #[test]
    #[ignore]
    fn print_session_sizes() {
        use std::mem::size_of;
        struct Zst;
        println!("Slot<()> {}", size_of::<Slot<Zst>>());
        println!("SessionState {}", size_of::<SessionState>());
        println!("SessionFlags {}", size_of::<crate::session::SessionFlags>());
        println!("DisconnectReason {}", size_of::<DisconnectReason>());
        println!("Option<DisconnectReason> {}", size_of::<Option<DisconnectReason>>());
        println!("Option<OpId> {}", size_of::<Option<OpId>>());
        println!("Option<TimerId> {}", size_of::<Option<TimerId>>());
        println!("Option<Instant> {}", size_of::<Option<Instant>>());
        println!("SocketAddr {}", size_of::<SocketAddr>());
        println!("SendBatch {}", size_of::<SendBatch>());
        println!("PeerAddr {}", size_of::<PeerAddr>());
    }

    /// A session's compact peer address gives back the address it was made from.
    #[test]
    fn peer_addr_round_trips() {
        let v6 = std::net::SocketAddrV6::new("fe80::1".parse().unwrap(), 7000, 3, 2);
        for a in ["192.0.2.7:65535".parse().unwrap(), SocketAddr::V6(v6)] {
            assert_eq!(PeerAddr::new(a).get(), a);
        }
        assert_eq!(std::mem::size_of::<PeerAddr>(), 16);
    }
}
