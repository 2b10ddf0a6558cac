//! The Docker executor: runs one GitLab job in containers through the Docker Engine API.
//!
//! Invariant: only this module talks to Docker.

mod outcome;

use std::sync::Arc;

use async_trait::async_trait;
use drover_proto::spec::RunnerConfig;
use tokio_util::sync::CancellationToken;

use crate::gitlab::types::JobResponse;
use crate::trace::TraceSink;

pub use outcome::{FailureReason, JobOutcome};

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
