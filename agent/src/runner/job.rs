//! One job, start to end: trace sink with the job's secrets, uploader, executor, final
//! report.

use std::sync::Arc;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::{RunnerEvent, RunnerSettings, RunnerStats};
use crate::executor::{Executor, FailureReason, JobContext, JobOutcome};
use crate::gitlab::GitLab;
use crate::gitlab::types::JobResponse;
use crate::trace::{FinalState, TraceSink, TraceUploader};

/// Everything one job task needs (the permits it holds are dropped when it ends).
pub(crate) struct JobRun {
    pub settings: Arc<RunnerSettings>,
    pub gitlab: Arc<dyn GitLab>,
    pub executor: Arc<dyn Executor>,
    pub stats: Arc<RunnerStats>,
    pub events: Option<tokio::sync::mpsc::UnboundedSender<RunnerEvent>>,
    /// Fired by "stop at once".
    pub stop_now: CancellationToken,
    pub slot: u32,
}

/// The secret values a job's trace must never show: masked variables and the job token.
pub fn job_secrets(job: &JobResponse) -> Vec<SecretString> {
    let mut v: Vec<SecretString> = job
        .variables
        .iter()
        .filter(|v| v.masked)
        .map(|v| v.value.clone())
        .collect();
    v.push(job.token.clone());
    v
}

impl JobRun {
    /// Runs `job` and reports it; returns how it ended.
    pub async fn run(self, job: JobResponse) -> JobOutcome {
        let s = &self.settings;
        let job_id = job.id;
        let secrets = job_secrets(&job);
        let sink = TraceSink::with_masks(&secrets, s.output_limit);
        let cancel = self.stop_now.child_token();
        let uploader = TraceUploader::start(
            self.gitlab.clone(),
            job_id,
            job.token.clone(),
            sink.clone(),
            cancel.clone(),
            job.features.failure_reasons.clone(),
            s.upload.clone(),
        );
        self.stats.job_started();
        self.emit(RunnerEvent::JobStarted {
            runner: s.name.clone(),
            job_id,
        });
        tracing::info!(runner = %s.name, job = job_id, slot = self.slot, "job started");
        sink.write_line(&format!(
            "\x1b[0KRunning with drover-agent {}\x1b[0;m",
            env!("CARGO_PKG_VERSION")
        ));
        sink.write_line(&format!(
            "\x1b[0K  on {} {}, system ID: {}\x1b[0;m",
            s.name, s.short_token, s.system_id
        ));

        let ctx = JobContext {
            job,
            runner: s.config.clone(),
            agent_id: s.agent_id.clone(),
            runner_short_token: s.short_token.clone(),
            slot: self.slot,
        };
        let mut outcome = self.executor.run(&ctx, &sink, cancel.clone()).await;
        // The executor wrote the result line; only a shutdown adds why the job was canceled.
        if self.stop_now.is_cancelled() && outcome == JobOutcome::Canceled {
            sink.write_line("\x1b[31;1mERROR: Job failed: aborted: shutting down\x1b[0;m");
            outcome = JobOutcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None,
            };
        }
        let report = uploader.finish(FinalState::from(&outcome)).await;
        tracing::info!(
            runner = %s.name,
            job = job_id,
            outcome = ?outcome,
            trace_bytes = report.bytes_sent,
            trace_complete = report.trace_complete,
            update_accepted = report.update_accepted,
            "job finished"
        );
        self.stats.job_finished(&outcome);
        self.emit(RunnerEvent::JobFinished {
            runner: s.name.clone(),
            job_id,
            outcome: outcome.clone(),
        });
        outcome
    }

    fn emit(&self, e: RunnerEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }
}
