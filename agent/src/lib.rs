//! `drover-agent`: runs GitLab CI jobs in Docker, supervised, on an edge box.
//!
//! Layout:
//! - [`gitlab`]: the GitLab runner API client (verify, job request, trace, update, tokens).
//! - [`executor`]: the Docker executor (the only module that talks to Docker).
//! - [`trace`]: the job trace pipeline (masking, limits, upload).
//! - [`cli`]: one module per `drover-agent` subcommand.
//! - [`systemd`]: `sd_notify` readiness/stopping/status and the health-gated watchdog.

pub mod cli;
pub mod executor;
pub mod fleet;
pub mod gitlab;
pub mod standalone;
pub mod systemd;
pub mod trace;
