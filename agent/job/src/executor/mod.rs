//! The Docker executor: runs one GitLab job in containers through the Docker Engine API.
//!
//! Invariant: only this module of the job crate talks to Docker, and within it only
//! `engine` (the rest goes through [`ContainerApi`]).
//!
//! Layout:
//! - [`docker`]: [`DockerExecutor`]: the job flow, host-side job files, the container
//!   lifecycle, orphan cleanup (one file each).
//! - [`api`]: the [`ContainerApi`] seam, over the executor's own types ([`spec`]);
//!   `engine` implements it on the Docker engine and is the only module naming bollard.
//! - `script`: the POSIX script fed to the container's shell.
//! - `variables`: the job environment (values expanded by [`crate::expand`]).
//! - `host_config`: `[runners.docker]` → [`spec::HostSpec`].
//! - `image`: image choice, `allowed_images`, pull policies, registry credentials.
//! - `names`: container/volume names and labels.
//! - `services`: the per-job network, service containers, aliases and the port wait.
//! - Sources, dependencies, caches and artifacts come from [`crate::sources`],
//!   [`crate::artifacts`] and [`crate::cache`]: host files moved as tars through the
//!   engine's archive API (see [`StorageOptions`]).
//!
//! Choices (differences from gitlab-runner are deliberate and listed here):
//! - No helper image: the job image does everything; the script is fed to its shell over
//!   stdin (bash when the image has it, else `sh`).
//! - Builds directory: a named volume per runner + project + slot
//!   (`runner-<short>-project-<pid>-concurrent-<slot>-cache-<hash>`, kind `builds`) mounted at
//!   `builds_dir` and kept between jobs so `fetch` can reuse it; `cleanup_orphans` leaves it.
//!   File variables live in a per-job volume (kind `tmp`) at `<CI_PROJECT_DIR>.tmp`, removed
//!   when the job ends.
//! - `pull_policy` defaults to `always`, as in gitlab-runner; on a box without a registry set
//!   `if-not-present` or `never`.
//! - Failure reasons: pull errors, `allowed_images` and `allowed_pull_policies` refusals →
//!   `image_pull_failure`; bad `[runners.docker]` values, a missing image name and Docker
//!   errors → `runner_system_failure`; script exit codes → `script_failure`.
//! - Sources: the host's `git` fetches into `<data dir>/builds/<runner>/project-<id>/slot-<n>`
//!   (kept, so `fetch` is incremental); each job empties `CI_PROJECT_DIR` in the builds
//!   volume and receives the work dir as a tar. Caches live in `<data dir>/cache`.
//! - Services: see `services` (per-job network, port wait from the host).
//! - The executor writes the result line (`Job succeeded` / `ERROR: Job failed: ...`); the
//!   runner loop must not print another one.

pub mod api;
pub mod docker;
#[cfg(feature = "docker")]
mod engine;
mod error;
#[cfg(test)]
mod fake;
mod host_config;
mod image;
pub mod names;
mod ping;
pub mod preflight;
mod script;
mod services;
pub mod spec;
#[cfg(test)]
mod tests;
mod variables;

use std::sync::Arc;

use async_trait::async_trait;
use drover_proto::spec::RunnerConfig;
use tokio_util::sync::CancellationToken;

use crate::trace::TraceSink;
use drover_gitlab::GitLab;
use drover_gitlab::types::JobResponse;

/// How a job ended lives in [`crate::outcome`] (shared with sources, artifacts and trace);
/// re-exported here because [`Executor::run`] returns it.
pub use crate::outcome::{FailureReason, JobOutcome};
pub use api::ContainerApi;
pub use docker::{
    CleanupReport, ConnectOptions, DockerExecutor, GcError, GcReport, GcRequest, KeptVolume,
    KindUsage, Removed, StorageOptions, chain_ids,
};
#[cfg(feature = "docker")]
pub use engine::BollardApi;
pub use error::{EngineError, ExecutorError};
pub use ping::DockerInfo;
pub use services::{derived_names, service_aliases};

/// Everything the executor needs to run one job.
#[derive(Clone)]
pub struct JobContext {
    /// The job payload from GitLab.
    pub job: JobResponse,
    /// The `[[runners]]` table this job was taken for (its `[runners.docker]` settings).
    pub runner: Arc<RunnerConfig>,
    /// This agent's id: every Docker object carries it in a label.
    pub agent_id: String,
    /// First 8 characters of the runner token, for container names (`runner-<short>-...`).
    pub runner_short_token: String,
    /// The concurrency slot this job occupies (0-based), for names and build dirs.
    pub slot: u32,
    /// The GitLab this job came from: artifacts are uploaded and dependencies downloaded
    /// through it.
    pub gitlab: Arc<dyn GitLab>,
}

impl std::fmt::Debug for JobContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobContext")
            .field("job", &self.job)
            .field("runner", &self.runner.name)
            .field("agent_id", &self.agent_id)
            .field("runner_short_token", &self.runner_short_token)
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// Runs jobs. The real one is Docker; tests use fakes.
#[async_trait]
pub trait Executor: Send + Sync {
    /// Runs `ctx.job` to the end and returns how it ended. Writes everything the user should
    /// see to `trace`. Enforces `runner_info.timeout`. When `cancel` fires, kills the job's
    /// containers within seconds and returns [`JobOutcome::Canceled`]. Removes every
    /// container it created before returning.
    async fn run(
        &self,
        ctx: &JobContext,
        trace: &TraceSink,
        cancel: CancellationToken,
    ) -> JobOutcome;
}
