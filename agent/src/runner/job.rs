//! One job, start to end: trace sink with the job's secrets, uploader, executor, final
//! report.

use std::sync::Arc;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::{RunnerEvent, RunnerSettings, RunnerStats};
use drover_gitlab::GitLab;
use drover_gitlab::UnrunnableJob;
use drover_gitlab::types::JobResponse;
use drover_job::executor::{Executor, FailureReason, JobContext, JobOutcome};
use drover_job::trace::{FinalState, TraceSink, TraceUploader};

/// Everything one job task needs (the permits it holds are dropped when it ends).
pub(crate) struct JobRun {
    pub settings: Arc<RunnerSettings>,
    pub gitlab: Arc<dyn GitLab>,
    pub executor: Arc<dyn Executor>,
    pub stats: Arc<RunnerStats>,
    pub events: Option<tokio::sync::mpsc::UnboundedSender<RunnerEvent>>,
    /// In-flight record and running id for this job.
    pub tracking: crate::inflight::JobTracking,
    /// Fired by "stop at once".
    pub stop_now: CancellationToken,
    /// Why `stop_now` fired when it was not a shutdown.
    pub stop_reason: Arc<std::sync::OnceLock<String>>,
    pub slot: u32,
    /// The runner's job tracker: the trace uploader's task goes there.
    pub tasks: tokio_util::task::TaskTracker,
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

/// How long GitLab queued a job, from `job_info.time_in_queue_seconds`: `None` when GitLab
/// did not say (0, as Go reads `null`) or the value is not a duration.
pub fn queue_wait(info: &drover_gitlab::types::JobInfo) -> Option<std::time::Duration> {
    let v = info.time_in_queue_seconds;
    (v.is_finite() && v > 0.0 && v <= 31.0 * 86_400.0)
        .then(|| std::time::Duration::from_secs_f64(v))
}

/// A started job's trace and uploader.
struct Started {
    job_id: i64,
    began: std::time::Instant,
    queue_wait: Option<std::time::Duration>,
    sink: TraceSink,
    uploader: TraceUploader,
    cancel: CancellationToken,
}

/// A job GitLab handed out.
pub(crate) enum Taken {
    /// Run it.
    Run(Box<JobResponse>),
    /// It cannot run: report it failed.
    Report(Box<UnrunnableJob>),
}

impl JobRun {
    /// Runs or reports `taken`; returns how it ended.
    pub async fn handle(self, taken: Taken) -> JobOutcome {
        match taken {
            Taken::Run(job) => self.run(*job).await,
            Taken::Report(job) => self.report_unrunnable(*job).await,
        }
    }

    /// Runs `job` and reports it; returns how it ended.
    pub async fn run(self, job: JobResponse) -> JobOutcome {
        let secrets = job_secrets(&job);
        let started = self.begin(
            job.id,
            &job.token,
            &secrets,
            job.features.failure_reasons.clone(),
            queue_wait(&job.job_info),
        );
        let s = &self.settings;
        let ctx = JobContext {
            job,
            runner: s.config.clone(),
            agent_id: s.agent_id.clone(),
            runner_short_token: s.short_token.clone(),
            slot: self.slot,
            gitlab: self.gitlab.clone(),
        };
        let mut outcome = self
            .executor
            .run(&ctx, &started.sink, started.cancel.clone())
            .await;
        // The executor wrote the result line; only a shutdown adds why the job was canceled.
        if self.stop_now.is_cancelled() && outcome == JobOutcome::Canceled {
            let why = self
                .stop_reason
                .get()
                .map_or("shutting down", String::as_str);
            started.sink.write_line(&format!(
                "\x1b[31;1mERROR: Job failed: aborted: {why}\x1b[0;m"
            ));
            outcome = JobOutcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None,
            };
        }
        self.end(started, outcome).await
    }

    /// Reports a job the agent took but cannot run: `failed` with `runner_system_failure`
    /// (as `features.failure_reasons` allows) and a trace line saying why.
    pub async fn report_unrunnable(self, job: UnrunnableJob) -> JobOutcome {
        tracing::error!(
            runner = %self.settings.name,
            job = job.id,
            reason = %job.reason,
            "job taken but cannot run; reporting it failed"
        );
        let started = self.begin(
            job.id,
            &job.token,
            std::slice::from_ref(&job.token),
            job.failure_reasons,
            None,
        );
        started.sink.write_line(&format!(
            "\x1b[31;1mERROR: Job failed (system failure): {}\x1b[0;m",
            job.reason
        ));
        let outcome = JobOutcome::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
        };
        self.end(started, outcome).await
    }

    /// Starts the trace and its uploader, records the job in flight, writes the header.
    fn begin(
        &self,
        job_id: i64,
        token: &SecretString,
        secrets: &[SecretString],
        failure_reasons: Vec<String>,
        queue_wait: Option<std::time::Duration>,
    ) -> Started {
        let s = &self.settings;
        let sink = TraceSink::with_masks(secrets, s.output_limit);
        let cancel = self.stop_now.child_token();
        let uploader = TraceUploader::start(
            &self.tasks,
            self.gitlab.clone(),
            job_id,
            token.clone(),
            sink.clone(),
            cancel.clone(),
            failure_reasons,
            s.upload.clone(),
        );
        self.tracking.running.add(job_id);
        if let Some(store) = &self.tracking.inflight {
            let rec = crate::inflight::InflightJob {
                job_id,
                token: token.clone(),
                url: s.config.url.clone(),
                tls_ca_file: s.config.tls_ca_file.clone(),
                runner: s.name.clone(),
                started_at: crate::inflight::now_rfc3339(),
            };
            if let Err(e) = store.record(&rec) {
                tracing::warn!(runner = %s.name, job = job_id, "in-flight record: {e}");
            }
        }
        self.stats.job_started();
        self.emit(RunnerEvent::JobStarted {
            runner: s.name.clone(),
            job_id,
            queue_wait,
        });
        tracing::info!(runner = %s.name, job = job_id, slot = self.slot, "job started");
        sink.write_line(&format!(
            "\x1b[0KRunning with drover-agent {}\x1b[0;m",
            drover_runtime::version()
        ));
        sink.write_line(&format!(
            "\x1b[0K  on {} {}, system ID: {}\x1b[0;m",
            s.name, s.short_token, s.system_id
        ));
        Started {
            job_id,
            began: std::time::Instant::now(),
            queue_wait,
            sink,
            uploader,
            cancel,
        }
    }

    /// Sends the rest of the trace and the final state, then updates records and stats.
    async fn end(&self, started: Started, outcome: JobOutcome) -> JobOutcome {
        let s = &self.settings;
        let job_id = started.job_id;
        drop(started.cancel);
        self.tracking.running.remove(job_id);
        let report = started.uploader.finish(FinalState::from(&outcome)).await;
        if report.update_accepted
            && let Some(store) = &self.tracking.inflight
            && let Err(e) = store.remove(job_id)
        {
            tracing::warn!(runner = %s.name, job = job_id, "in-flight record: {e}");
        }
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
            duration: started.began.elapsed(),
            queue_wait: started.queue_wait,
        });
        outcome
    }

    fn emit(&self, e: RunnerEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }
}

#[cfg(test)]
mod queue_wait_tests {
    use drover_gitlab::types::JobInfo;

    #[test]
    fn queue_wait_is_known_only_when_gitlab_said() {
        let info = |v: f64| JobInfo {
            time_in_queue_seconds: v,
            ..JobInfo::default()
        };
        assert_eq!(
            super::queue_wait(&info(1.25)),
            Some(std::time::Duration::from_millis(1250))
        );
        for unknown in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e12] {
            assert_eq!(super::queue_wait(&info(unknown)), None, "{unknown}");
        }
    }
}
