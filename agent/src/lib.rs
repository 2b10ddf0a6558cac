//! `drover-agent`: runs GitLab CI jobs in Docker, supervised, on an edge box.
//!
//! The GitLab runner API client is the `drover-gitlab` crate (`agent/gitlab/`); running one
//! job (executor, sources, caches, artifacts, trace) is the `drover-job` crate (`agent/job/`).
//! This crate keeps supervision, control and identity.
//!
//! Layout:
//! - [`identity`]: the state dir (key, certificate, pinned CA) and TLS to the controller.
//! - [`control`]: the control stream (hello, heartbeats, renewal, reconnect backoff).
//! - [`host_facts`]: hostname, arch, kernel, IPs.
//! - [`images`]: images the controller delivers (only missing layers fetched, resumable).
//! - [`inflight`]: jobs in flight on disk; a restarted agent reports them failed.
//! - [`janitor`]: removes this agent's Docker leftovers at start and periodically.
//! - [`disk`]: keeps builds volumes and pulled images within `[runners.drover_gc]` and
//!   reports the disk budgets.
//! - [`health`]: host health snapshots (Docker, disk, memory, load, clock skew) and when a
//!   host is degraded.
//! - [`metrics`]: the Prometheus registry and the `/metrics` server.
//! - [`runner`]: one runner's job loop (verify, request, run jobs in slots, stats, events).
//! - [`engine`]: serves a set of runners (one job loop each), reload by difference; both
//!   modes run on it.
//! - [`standalone`]: standalone mode (`--config`).
//! - [`units`]: the runner unit state machine (fleet mode).
//! - [`fleet`]: fleet mode: desired state from the controller, applied as units.
//! - [`shutdown`]: the shutdown tree (root token, child tokens, one task tracker).
//! - [`cli`]: one module per `drover-agent` subcommand.
//! - [`systemd`]: `sd_notify` readiness/stopping/status and the health-gated watchdog.

pub mod cli;
pub mod clock;
pub mod control;
pub mod disk;
pub mod engine;
pub mod fleet;
pub mod health;
pub mod host_facts;
pub mod identity;
pub mod images;
pub mod inflight;
pub mod janitor;
pub mod metrics;
pub mod runner;
pub mod shutdown;
pub mod standalone;
pub mod stop_signals;
pub mod systemd;
pub mod units;
pub mod upgrade;
