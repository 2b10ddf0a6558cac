//! Ships a job's trace to GitLab while it runs, then reports how the job ended.
//!
//! Invariants:
//! - `sent` is the number of bytes GitLab confirmed; every patch starts there, so the
//!   `Content-Range` is exact. On `416` GitLab tells its size and we resend from it (the sink
//!   keeps the whole masked trace).
//! - A failed patch never advances `sent`: bytes are retried, not lost.
//! - `Job-Status: canceled|canceling` on any answer, or `403` on a job endpoint, fires the
//!   job's cancellation token.

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::TraceSink;
use crate::outcome::{FailureReason, JobOutcome};
use drover_gitlab::backoff::Backoff;
use drover_gitlab::{GitLab, GitLabError, JobUpdate, TraceAnswer};

/// Timing of the uploader (defaults are gitlab-runner's).
#[derive(Debug, Clone)]
pub struct UploadOptions {
    /// Between patches while the job runs (GitLab may change it with
    /// `X-GitLab-Trace-Update-Interval`).
    pub interval: Duration,
    /// With no new output, send `PUT /jobs/:id` `running` this often so cancellation is seen.
    pub keepalive: Duration,
    /// Largest single patch.
    pub max_patch: usize,
    /// First and largest delay after a failed call.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// How long the final flush and update keep retrying before giving up.
    pub final_deadline: Duration,
}

impl Default for UploadOptions {
    fn default() -> Self {
        UploadOptions {
            interval: Duration::from_secs(3),
            keepalive: Duration::from_secs(10),
            max_patch: 1024 * 1024,
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(30),
            final_deadline: Duration::from_secs(600),
        }
    }
}

/// How the job ended, as reported in the final `PUT /jobs/:id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinalState {
    Success,
    Failed {
        reason: FailureReason,
        exit_code: Option<i32>,
    },
}

impl From<&JobOutcome> for FinalState {
    fn from(o: &JobOutcome) -> Self {
        match o {
            JobOutcome::Success => FinalState::Success,
            JobOutcome::Failed { reason, exit_code } => FinalState::Failed {
                reason: *reason,
                exit_code: *exit_code,
            },
            JobOutcome::Canceled => FinalState::Failed {
                reason: FailureReason::UnknownFailure,
                exit_code: None,
            },
        }
    }
}

/// What the uploader achieved, for stats and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// GitLab confirmed every byte of the trace.
    pub trace_complete: bool,
    /// GitLab accepted the final update (`200`).
    pub update_accepted: bool,
    /// Bytes of trace GitLab holds.
    pub bytes_sent: u64,
    /// Last `Job-Status` GitLab told.
    pub job_status: Option<String>,
}

/// The background task shipping one job's trace. Call [`TraceUploader::finish`] when the
/// job has ended.
pub struct TraceUploader {
    stop: CancellationToken,
    task: JoinHandle<Uploader>,
}

impl TraceUploader {
    /// Starts shipping `sink` for job `job_id`. `job_cancel` fires when GitLab cancels the
    /// job. `failure_reasons` is the payload's `features.failure_reasons`.
    pub fn start(
        gitlab: Arc<dyn GitLab>,
        job_id: i64,
        job_token: SecretString,
        sink: TraceSink,
        job_cancel: CancellationToken,
        failure_reasons: Vec<String>,
        opts: UploadOptions,
    ) -> Self {
        let stop = CancellationToken::new();
        let up = Uploader {
            backoff: Backoff::new(opts.backoff_min, opts.backoff_max),
            interval: opts.interval,
            gitlab,
            job_id,
            job_token,
            sink,
            job_cancel,
            failure_reasons,
            opts,
            sent: 0,
            mismatches: 0,
            gone: false,
            job_status: None,
            last_contact: Instant::now(),
        };
        let task = tokio::spawn(up.run(stop.clone()));
        TraceUploader { stop, task }
    }

    /// Closes the sink, sends the rest of the trace, then the final update with `state`.
    pub async fn finish(self, state: FinalState) -> UploadReport {
        self.stop.cancel();
        let mut up = match self.task.await {
            Ok(up) => up,
            Err(e) => {
                tracing::error!(error = %e, "trace uploader task failed");
                return UploadReport {
                    trace_complete: false,
                    update_accepted: false,
                    bytes_sent: 0,
                    job_status: None,
                };
            }
        };
        up.sink.close();
        let deadline = Instant::now() + up.opts.final_deadline;
        up.flush(deadline).await;
        let update_accepted = up.final_update(&state, deadline).await;
        UploadReport {
            trace_complete: up.sent == up.sink.len(),
            update_accepted,
            bytes_sent: up.sent,
            job_status: up.job_status,
        }
    }
}

struct Uploader {
    gitlab: Arc<dyn GitLab>,
    job_id: i64,
    job_token: SecretString,
    sink: TraceSink,
    job_cancel: CancellationToken,
    failure_reasons: Vec<String>,
    opts: UploadOptions,
    interval: Duration,
    backoff: Backoff,
    /// Bytes GitLab confirmed.
    sent: u64,
    /// `416`s in a row (a GitLab that keeps refusing is backed off from).
    mismatches: u32,
    /// GitLab said the job is no longer running (`403`/`404`): stop sending.
    gone: bool,
    job_status: Option<String>,
    last_contact: Instant,
}

/// Result of one attempt to send the pending trace.
enum Step {
    /// Nothing new to send.
    Idle,
    /// Progress (or a `416` to act on at once).
    Sent,
    /// Failed; try again after this long.
    Retry(Duration),
    /// The job is no longer running on GitLab's side.
    Gone,
}

impl Uploader {
    async fn run(mut self, stop: CancellationToken) -> Self {
        let mut delay = self.interval;
        let mut retrying = false;
        loop {
            // A full patch of new output is sent at once instead of waiting for the update
            // interval, so a job printing fast is shipped as it goes and the agent holds
            // about one patch of it (not when backing off from an error).
            let full_patch = async {
                if retrying {
                    return std::future::pending().await;
                }
                self.sink
                    .wait_for_len(self.sent.saturating_add(self.opts.max_patch as u64))
                    .await
            };
            tokio::select! {
                biased;
                _ = stop.cancelled() => return self,
                _ = tokio::time::sleep(delay) => {}
                _ = full_patch => {}
            }
            retrying = false;
            delay = match self.push().await {
                Step::Sent => {
                    if self.sent < self.sink.len() {
                        Duration::ZERO
                    } else {
                        self.interval
                    }
                }
                Step::Idle => {
                    let retry = if self.last_contact.elapsed() >= self.opts.keepalive {
                        self.keepalive().await
                    } else {
                        None
                    };
                    // A failed keepalive backs off like a failed patch: a quiet job on a
                    // failing GitLab does not send one update per interval.
                    retrying = retry.is_some();
                    retry.unwrap_or(self.interval)
                }
                Step::Retry(d) => {
                    retrying = true;
                    d
                }
                Step::Gone => {
                    stop.cancelled().await;
                    return self;
                }
            };
        }
    }

    /// Sends what GitLab does not have yet (one patch).
    async fn push(&mut self) -> Step {
        if self.gone {
            return Step::Gone;
        }
        let data = self.sink.read_at(self.sent, self.opts.max_patch);
        if data.is_empty() {
            return Step::Idle;
        }
        let answer = self
            .gitlab
            .patch_trace(self.job_id, &self.job_token, self.sent, &data)
            .await;
        match answer {
            Ok(TraceAnswer::Accepted {
                job_status,
                update_interval,
            }) => {
                self.last_contact = Instant::now();
                self.sent += data.len() as u64;
                // GitLab holds these bytes now: out of memory, into the spool file.
                self.sink.release_before(self.sent);
                self.mismatches = 0;
                self.backoff.reset();
                if let Some(i) = update_interval {
                    self.interval = i.clamp(Duration::from_millis(100), Duration::from_secs(300));
                }
                self.observe(job_status);
                Step::Sent
            }
            Ok(TraceAnswer::RangeMismatch { remote_size }) => {
                self.last_contact = Instant::now();
                let local = self.sink.len();
                tracing::warn!(
                    job = self.job_id,
                    sent = self.sent,
                    remote_size,
                    "gitlab holds a different trace size (416); resending from its size"
                );
                self.sent = remote_size.min(local);
                self.mismatches += 1;
                if self.mismatches > 3 {
                    Step::Retry(self.backoff.next_delay())
                } else {
                    Step::Sent
                }
            }
            Err(e) => self.on_error(e, "patch trace"),
        }
    }

    fn on_error(&mut self, e: GitLabError, what: &str) -> Step {
        match e {
            GitLabError::Forbidden { job_status, .. } => {
                tracing::info!(job = self.job_id, "{what}: job is no longer running (403)");
                self.job_status = job_status.or(self.job_status.take());
                self.gone = true;
                self.job_cancel.cancel();
                Step::Gone
            }
            GitLabError::NotFound { .. } => {
                tracing::warn!(job = self.job_id, "{what}: job not found (404)");
                self.gone = true;
                self.job_cancel.cancel();
                Step::Gone
            }
            e => {
                let d = drover_gitlab::backoff::retry_delay(&e, &mut self.backoff);
                let msg = drover_proto::error_chain::error_chain(&e);
                tracing::warn!(job = self.job_id, error = %msg, retry_in = ?d, "{what} failed");
                Step::Retry(d)
            }
        }
    }

    fn observe(&mut self, job_status: Option<String>) {
        if let Some(s) = job_status {
            if s == "canceled" || s == "canceling" {
                if !self.job_cancel.is_cancelled() {
                    tracing::info!(job = self.job_id, status = %s, "gitlab canceled the job");
                }
                self.job_cancel.cancel();
            }
            self.job_status = Some(s);
        }
    }

    /// `PUT /jobs/:id` `running`: tells GitLab we are alive and learns about cancellation.
    /// `Some(wait)` when it failed and the next attempt should wait that long.
    async fn keepalive(&mut self) -> Option<Duration> {
        let (checksum, bytesize) = self.sink.checksum();
        let update = JobUpdate {
            state: "running",
            failure_reason: None,
            exit_code: None,
            checksum: Some(checksum),
            bytesize: Some(bytesize),
        };
        match self
            .gitlab
            .update_job(self.job_id, &self.job_token, &update)
            .await
        {
            Ok(a) => {
                self.last_contact = Instant::now();
                self.backoff.reset();
                self.observe(a.job_status);
                None
            }
            Err(e) => match self.on_error(e, "keepalive update") {
                Step::Retry(d) => Some(d),
                _ => None,
            },
        }
    }

    /// Sends everything left, retrying until `deadline`.
    async fn flush(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            match self.push().await {
                Step::Idle | Step::Gone => return,
                Step::Sent => {}
                Step::Retry(d) => {
                    tokio::time::sleep_until((Instant::now() + d).min(deadline)).await
                }
            }
        }
        tracing::error!(
            job = self.job_id,
            sent = self.sent,
            total = self.sink.len(),
            "gave up sending the trace"
        );
    }

    /// The final `PUT /jobs/:id`; `true` when GitLab accepted it.
    async fn final_update(&mut self, state: &FinalState, deadline: Instant) -> bool {
        if self.gone {
            return false;
        }
        let (checksum, bytesize) = self.sink.checksum();
        let update = match state {
            FinalState::Success => JobUpdate {
                state: "success",
                failure_reason: None,
                exit_code: None,
                checksum: Some(checksum),
                bytesize: Some(bytesize),
            },
            FinalState::Failed { reason, exit_code } => JobUpdate {
                state: "failed",
                failure_reason: supported_reason(*reason, &self.failure_reasons),
                exit_code: *exit_code,
                checksum: Some(checksum),
                bytesize: Some(bytesize),
            },
        };
        self.backoff.reset();
        while Instant::now() < deadline {
            let wait = match self
                .gitlab
                .update_job(self.job_id, &self.job_token, &update)
                .await
            {
                Ok(a) => {
                    self.observe(a.job_status);
                    if a.accepted {
                        return true;
                    }
                    // 202: GitLab is still assembling the trace; make sure it has it all.
                    if self.sent < self.sink.len() {
                        self.flush(deadline).await;
                    }
                    a.retry_after
                        .unwrap_or(self.interval)
                        .clamp(Duration::from_millis(100), Duration::from_secs(60))
                }
                // GitLab already holds the state we send: an earlier attempt was applied
                // but its answer was lost (a proxy's `502` after its backend took it).
                Err(GitLabError::Forbidden {
                    job_status: Some(s),
                    ..
                }) if s == update.state => {
                    tracing::info!(
                        job = self.job_id,
                        state = %s,
                        "final job update: gitlab already holds this state (an earlier answer was lost)"
                    );
                    self.job_status = Some(s);
                    return true;
                }
                Err(e) => match self.on_error(e, "final job update") {
                    Step::Retry(d) => d,
                    _ => return false,
                },
            };
            tokio::time::sleep_until((Instant::now() + wait).min(deadline)).await;
        }
        tracing::error!(job = self.job_id, "gave up reporting the job's result");
        false
    }
}

/// The `failure_reason` to send, as gitlab-runner's `failureReasonMapper`
/// (`common/failure_reason_mapper.go`): a reason this GitLab lists in
/// `features.failure_reasons`, or one every GitLab accepts (`script_failure`,
/// `runner_system_failure`, `job_execution_timeout`), is sent as is; `image_pull_failure`
/// not listed falls back to `runner_system_failure`; anything else to `unknown_failure`.
pub fn supported_reason(reason: FailureReason, supported: &[String]) -> Option<&'static str> {
    const ALWAYS: [FailureReason; 3] = [
        FailureReason::ScriptFailure,
        FailureReason::RunnerSystemFailure,
        FailureReason::JobExecutionTimeout,
    ];
    let accepted =
        |r: FailureReason| ALWAYS.contains(&r) || supported.iter().any(|s| s == r.as_str());
    let sent = if accepted(reason) {
        reason
    } else if reason == FailureReason::ImagePullFailure {
        FailureReason::RunnerSystemFailure
    } else {
        FailureReason::UnknownFailure
    };
    Some(sent.as_str())
}

#[cfg(test)]
mod tests;
