//! The sample sessions the servers run.

pub mod echo;
