//! What both service builders share: the settings common to a server and a client, and the
//! builder methods that set them, defined once (`builder_setting!`).

use super::default_workers;
use crate::config::SessionConfig;
use crate::driver::{Backend, BackendChoice, Diagnostics};
use std::io;
use std::time::Duration;

/// The settings both builders have (each builder holds one in a `settings` field).
#[derive(Debug, Clone)]
pub(crate) struct BuilderSettings {
    pub(crate) workers: usize,
    pub(crate) backend: BackendChoice,
    pub(crate) config: SessionConfig,
    pub(crate) overrides: Overrides,
}

impl BuilderSettings {
    /// The defaults: a worker per available core, the backend probed, the default
    /// session config, nothing overridden.
    pub(crate) fn new() -> Self {
        BuilderSettings {
            workers: default_workers(),
            backend: BackendChoice::Auto,
            config: SessionConfig::default(),
            overrides: Overrides::default(),
        }
    }
}

/// The builder methods both builders have, defined once: `builder_setting!(backend)` and
/// `builder_setting!(diagnostics)`, whose docs are the same for both, and
/// `builder_setting!(/// doc.. workers)`, `nodelay` and `session_config`, whose docs (and
/// examples) each builder gives. The builder must hold a `settings: BuilderSettings` field,
/// and its module must have `BackendChoice`, `Diagnostics` and `SessionConfig` in scope:
/// the signatures and doc links name them there, as the hand-written methods did.
macro_rules! builder_setting {
    ($(#[$doc:meta])* workers) => {
        $(#[$doc])*
        pub fn workers(mut self, n: usize) -> Self {
            self.settings.workers = n.max(1);
            self
        }
    };
    (backend) => {
        /// The driver backend (default: [`BackendChoice::Auto`]).
        pub fn backend(mut self, choice: BackendChoice) -> Self {
            self.settings.backend = choice;
            self
        }
    };
    ($(#[$doc:meta])* nodelay) => {
        $(#[$doc])*
        pub fn nodelay(mut self, on: bool) -> Self {
            self.settings.overrides.nodelay = Some(on);
            self
        }
    };
    ($(#[$doc:meta])* session_config) => {
        $(#[$doc])*
        pub fn session_config(mut self, config: SessionConfig) -> Self {
            self.settings.config = config;
            self
        }
    };
    (diagnostics) => {
        /// Techniques to do without (added to those of the session config): see
        /// [`Diagnostics`].
        #[doc(hidden)]
        pub fn diagnostics(mut self, d: Diagnostics) -> Self {
            self.settings.overrides.diagnostics = self.settings.overrides.diagnostics.union(d);
            self
        }
    };
}
pub(super) use builder_setting;

/// Builder settings made one at a time. They are kept apart from the builder's
/// [`SessionConfig`] and applied over it at start, so that a later `session_config(..)`
/// does not undo an earlier `nodelay(..)`: the order of the calls does not matter.
#[derive(Debug, Clone, Default)]
pub(crate) struct Overrides {
    pub(crate) nodelay: Option<bool>,
    pub(crate) connect_timeout: Option<Duration>,
    /// Added to the config's own switches.
    pub(crate) diagnostics: Diagnostics,
}

impl Overrides {
    /// The config to start with, and the backend: `config` with these settings applied,
    /// the backend resolved, and the switches of `SERVERCORE_BACKEND` added.
    pub(crate) fn resolve(
        &self,
        mut config: SessionConfig,
        backend: BackendChoice,
    ) -> io::Result<(SessionConfig, Backend)> {
        if let Some(on) = self.nodelay {
            config.nodelay = on;
        }
        if let Some(d) = self.connect_timeout {
            config.connect_timeout = d;
        }
        let (backend, diagnostics) =
            backend.resolve_with(config.diagnostics.union(self.diagnostics))?;
        config.diagnostics = diagnostics;
        Ok((config, backend))
    }
}
