//! The sample sessions the servers run.

pub mod chat;
pub mod echo;
