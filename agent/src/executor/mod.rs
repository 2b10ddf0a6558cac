//! The Docker executor: runs one GitLab job in containers through the Docker Engine API.
//!
//! Invariant: only this module talks to Docker.
//!
//! Layout:
//! - [`docker`]: [`DockerExecutor`], the job flow (steps, timeouts, cancel, cleanup).
//! - [`api`]: the [`ContainerApi`] seam; `bollard_api` implements it on the engine.
//! - `script`: the POSIX script fed to the container's shell.
//! - `variables` + `expand`: the job environment.
//! - `host_config`: `[runners.docker]` → `HostConfig`.
//! - `image`: image choice, `allowed_images`, pull policies, registry credentials.
//! - `names`: container/volume names and labels.
//! - [`sources`]: the [`SourcesProvider`] hook for `clone`/`fetch`.

pub mod api;
mod bollard_api;
pub mod docker;
mod error;
mod expand;
#[cfg(test)]
mod fake;
mod host_config;
mod image;
pub mod names;
mod outcome;
mod script;
pub mod sources;
mod variables;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use drover_proto::spec::RunnerConfig;
use tokio_util::sync::CancellationToken;

use crate::gitlab::types::JobResponse;
use crate::trace::TraceSink;

pub use api::ContainerApi;
pub use bollard_api::BollardApi;
pub use docker::{CleanupReport, ConnectOptions, DockerExecutor};
pub use error::ExecutorError;
pub use outcome::{FailureReason, JobOutcome};
pub use sources::{GitStrategy, SourcesProvider};

/// Everything the executor needs to run one job.
#[derive(Debug, Clone)]
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
