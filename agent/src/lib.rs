//! `drover-agent`: runs GitLab CI jobs in Docker, supervised, on an edge box.
//!
//! Layout:
//! - [`gitlab`]: the GitLab runner API client (verify, job request, trace, update, tokens).
//! - [`executor`]: the Docker executor (the only module that talks to Docker).
//! - [`trace`]: the job trace pipeline (masking, limits, upload).
//! - [`sources`], [`cache`], [`artifacts`]: host-side git checkout, local caches and job
//!   artifacts as host files and tar streams (no Docker; the executor moves the tars).
//! - [`identity`]: the state dir (key, certificate, pinned CA) and TLS to the controller.
//! - [`control`]: the control stream (hello, heartbeats, renewal, reconnect backoff).
//! - [`host_facts`]: hostname, arch, kernel, IPs.
//! - [`inflight`]: jobs in flight on disk; a restarted agent reports them failed.
//! - [`janitor`]: removes this agent's Docker leftovers at start and periodically.
//! - [`health`]: host health snapshots (Docker, disk, memory, load, clock skew) and when a
//!   host is degraded.
//! - [`metrics`]: the Prometheus registry and the `/metrics` server.
//! - [`runner`]: one runner's job loop (verify, request, run jobs in slots, stats, events).
//! - [`standalone`]: standalone mode (`--config`), reload by difference.
//! - [`units`]: the runner unit state machine (fleet mode).
//! - [`fleet`]: fleet mode: desired state from the controller, applied as units.
//! - [`cli`]: one module per `drover-agent` subcommand.
//! - [`systemd`]: `sd_notify` readiness/stopping/status and the health-gated watchdog.

pub mod artifacts;
pub mod cache;
pub mod cli;
pub mod clock;
pub mod control;
pub mod executor;
pub mod fleet;
pub mod gitlab;
pub mod health;
pub mod host_facts;
pub mod identity;
pub mod inflight;
pub mod janitor;
pub mod metrics;
pub mod runner;
pub mod sources;
pub mod standalone;
pub mod systemd;
pub mod trace;
pub mod units;
