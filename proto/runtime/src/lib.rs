//! What both Drover binaries do as Linux processes, beside their wire contract
//! (`drover-proto`):
//!
//! - [`log`]: the stderr subscriber and its filter (`DROVER_LOG`, else `RUST_LOG`, else
//!   `info`; a bare level above `info` stops at Drover's own code).
//! - [`signal`]: waiting for the signals that stop a process (SIGINT, SIGTERM).
//! - [`atomic_file`]: crash-safe file replacement with an exact mode.
//! - [`backoff`]: exponential retry backoff with jitter.

pub mod atomic_file;
pub mod backoff;
pub mod log;
pub mod signal;
