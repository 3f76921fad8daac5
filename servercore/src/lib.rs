//! servercore: a game-server network core.
#![warn(missing_docs)]

pub mod buffer;
mod config;
pub(crate) mod driver;
mod job;
pub mod packet;
mod reason;
mod room;
pub mod service;
mod session;
pub mod sys;
pub mod telemetry;
mod timer;
mod worker;

pub use buffer::SendBuffer;
pub use config::SendQueuePolicy;
pub use config::SessionConfig;
pub use driver::{Backend, BackendChoice};
pub use job::{JobQueue, JobTimer, WorkerGone};
pub use reason::DisconnectReason;
pub use room::Room;
pub use service::{ClientService, Reconnect, ServerService, ServiceRef, ServiceStats};
pub use session::{Ctx, SendError, Session, SessionHandle, SessionId};
pub use timer::TimerId;
