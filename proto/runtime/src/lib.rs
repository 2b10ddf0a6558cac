//! What both Drover binaries do as Linux processes, beside their wire contract
//! (`drover-proto`):
//!
//! - [`log`]: the stderr subscriber and its filter (`DROVER_LOG`, else `RUST_LOG`, else
//!   `info`; a bare level above `info` stops at Drover's own code).
//! - [`signal`]: waiting for the signals that stop a process (SIGINT, SIGTERM).
//! - [`atomic_file`]: crash-safe file replacement with an exact mode.
//! - [`backoff`]: exponential retry backoff with jitter.
//! - [`version()`]: the version both binaries report (`DROVER_BUILD_VERSION` at build
//!   time, else the workspace version).
//! - [`binary_file`]: the architecture and version of a binary file (ELF header, stamp).
//! - [`environment`]: the table of environment variables a binary reads, for `--help`.
//! - [`completion`], [`man_pages`]: shell completions and man pages from the clap
//!   definition.

pub mod atomic_file;
pub mod backoff;
pub mod binary_file;
pub mod completion;
pub mod environment;
pub mod log;
pub mod man_pages;
pub mod signal;
mod version;
pub mod version_rule;

pub use version::version;
