//! `drover-job`: runs one GitLab job, from the payload to the final trace update.
//!
//! Layout:
//! - [`executor`]: the Docker executor behind the [`executor::Executor`] trait; only its
//!   engine module talks to Docker (through bollard), behind [`executor::ContainerApi`].
//! - [`outcome`]: how a job ended ([`JobOutcome`], GitLab's [`FailureReason`]), shared by
//!   every module that can fail a job.
//! - [`sources`], [`cache`], [`artifacts`]: host-side git checkout, local caches and job
//!   artifacts as host files and tar streams (no Docker; the executor moves the tars).
//! - [`disk`]: the disk budget of builds volumes and pulled images, the last-use ledger
//!   and the collector's policy.
//! - [`trace`]: the job trace pipeline (masking, limits, upload).
//! - [`expand`]: `$VAR` expansion with gitlab-runner's rules, for variables, artifacts and
//!   caches alike.
//!
//! The crate knows nothing of supervision, fleets or the controller: the agent's runner loop
//! hands it a job and a [`trace::TraceSink`] and gets a [`JobOutcome`] back.

pub mod artifacts;
pub mod cache;
pub mod disk;
pub mod executor;
pub mod expand;
pub mod outcome;
pub mod sources;
pub mod trace;

pub use outcome::{FailureReason, JobOutcome};
