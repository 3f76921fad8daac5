//! What the `*_bad_input` tests share: an echo server whose sessions are recorded, one
//! healthy client kept beside the bad ones, the disconnect reasons counted since a mark,
//! and the final check that only the expected sessions got callbacks.

use super::tls::reason_counts;
use super::{recorder, wait_until, EventLog, Hooks};
use servercore::service::ServerBuilder;
use servercore::{DisconnectReason, ServerService, ServiceStats, SessionId};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A recording echo server with a healthy session, holding its test binary's lock (the
/// reason counts are process-wide). A test's bench holds one and derefs to it.
pub struct BadInput {
    pub server: ServerService,
    pub log: EventLog,
    pub healthy_id: SessionId,
    /// The reason counts when the last [`BadInput::mark`] was made.
    reasons: HashMap<String, u64>,
    _exclusive: MutexGuard<'static, ()>,
}

impl BadInput {
    /// Takes `exclusive`, installs the reason recorder, starts `builder` with recording
    /// echo sessions, connects the healthy client (`connect`), waits for its session, says
    /// hello with it (`hello`), waits until it is the only session, and marks.
    pub fn start<H>(
        exclusive: &'static Mutex<()>,
        builder: ServerBuilder,
        connect: impl FnOnce(&ServerService) -> H,
        hello: impl FnOnce(&mut H),
    ) -> (Self, H) {
        let exclusive = exclusive.lock().unwrap_or_else(|p| p.into_inner());
        reason_counts(); // the recorder is installed before the service starts
        let (factory, mut log) = recorder(Hooks::echo());
        let server = builder.start(factory).unwrap();
        let mut healthy = connect(&server);
        let (healthy_id, _) = log.next_connected();
        hello(&mut healthy);
        let mut base =
            BadInput { server, log, healthy_id, reasons: HashMap::new(), _exclusive: exclusive };
        base.wait_stats("the healthy session alone", |s| s.sessions == 1);
        base.mark();
        (base, healthy)
    }

    /// Takes the reason counts now, for [`BadInput::reasons_since_mark`].
    pub fn mark(&mut self) {
        self.reasons = reason_counts().snapshot();
    }

    /// The disconnect reasons counted (sessions that connected and handshakes or upgrades
    /// that failed) since the last mark, by label.
    pub fn reasons_since_mark(&self) -> BTreeMap<String, u64> {
        reason_counts().since(&self.reasons)
    }

    /// Checks the reasons counted since the last mark, then marks again.
    #[track_caller]
    pub fn assert_reasons(&mut self, what: &str, want: &[(&str, u64)]) {
        let want: BTreeMap<String, u64> = want.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        assert_eq!(self.reasons_since_mark(), want, "{what}: disconnect reasons counted");
        self.mark();
    }

    pub fn stats(&self) -> ServiceStats {
        self.server.stats()
    }

    /// Waits until the server's stats satisfy `cond`.
    pub fn wait_stats(&self, what: &str, cond: impl Fn(&ServiceStats) -> bool) {
        wait_until(what, || {
            let s = self.server.stats();
            if cond(&s) {
                Ok(())
            } else {
                Err(format!("{s:?}"))
            }
        });
    }

    /// Once the healthy client has closed in order: waits for its session's orderly end,
    /// shuts down, and checks that the only sessions that got callbacks are the healthy one
    /// and `connected` (each with one clean lifecycle).
    pub fn finish(mut self, connected: &[SessionId]) {
        assert_eq!(self.log.disconnected(self.healthy_id), DisconnectReason::PeerClosed);
        self.server.shutdown(Duration::from_secs(5)).unwrap();
        self.log.drain();
        let mut with_events: Vec<SessionId> = self.log.by_session().keys().copied().collect();
        with_events.sort();
        let mut want: Vec<SessionId> = connected.to_vec();
        want.push(self.healthy_id);
        want.sort();
        assert_eq!(with_events, want, "sessions that got callbacks: {:#?}", self.log.seen);
        for &id in &want {
            self.log.check_lifecycle(id);
        }
    }
}

/// Makes a bench type with a `base: BadInput` field deref to it.
#[macro_export]
macro_rules! deref_to_bad_input {
    ($bench:ty) => {
        impl std::ops::Deref for $bench {
            type Target = $crate::common::bad_input::BadInput;
            fn deref(&self) -> &Self::Target {
                &self.base
            }
        }

        impl std::ops::DerefMut for $bench {
            fn deref_mut(&mut self) -> &mut Self::Target {
                &mut self.base
            }
        }
    };
}
