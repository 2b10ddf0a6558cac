//! A scripted [`Executor`] for unit tests of the runner loop and the engine.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use drover_job::executor::{Executor, JobContext, JobOutcome};
use drover_job::trace::TraceSink;

/// Writes the job's script lines to the trace, waits `hold`, and ends as scripted; counts
/// how many jobs run at once.
#[derive(Default)]
pub(crate) struct FakeExecutor {
    pub hold: Duration,
    pub outcome: Mutex<Option<JobOutcome>>,
    pub running: AtomicU32,
    pub max_running: AtomicU32,
    pub slots: Mutex<Vec<u32>>,
}

#[async_trait]
impl Executor for FakeExecutor {
    async fn run(
        &self,
        ctx: &JobContext,
        trace: &TraceSink,
        cancel: CancellationToken,
    ) -> JobOutcome {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.slots.lock().unwrap().push(ctx.slot);
        for step in &ctx.job.steps {
            for line in &step.script {
                trace.write_line(&format!("$ {line}"));
            }
        }
        let out = tokio::select! {
            _ = cancel.cancelled() => JobOutcome::Canceled,
            _ = tokio::time::sleep(self.hold) => {
                self.outcome.lock().unwrap().clone().unwrap_or(JobOutcome::Success)
            }
        };
        // Like the Docker executor, the executor writes the result line.
        trace.write_line(
            match &out {
                JobOutcome::Success => "Job succeeded".to_string(),
                JobOutcome::Failed {
                    exit_code: Some(c), ..
                } => format!("ERROR: Job failed: exit code {c}"),
                JobOutcome::Failed { reason, .. } => {
                    format!("ERROR: Job failed: {}", reason.as_str())
                }
                JobOutcome::Canceled => "ERROR: Job failed: canceled".to_string(),
            }
            .as_str(),
        );
        self.running.fetch_sub(1, Ordering::SeqCst);
        out
    }
}
