//! An in-memory [`GitLab`] for unit tests: hands out queued jobs, keeps each job's trace and
//! state with GitLab's rules (exact `Content-Range`, `416` with the size it holds, `403` with
//! `Job-Status` once a job is canceled), answers scripted failures, and records every call.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::{ExposeSecret, SecretString};

use super::api::{
    ArtifactUpload, GitLab, GitLabError, JobRequest, JobUpdate, RegisterOptions, RunnerAuth,
    RunnerCredentials, TraceAnswer, UpdateAnswer,
};
use super::decode::{JobDecode, decode_job};
use super::types::JobResponse;

/// The endpoints a failure can be scripted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Verify,
    RequestJob,
    UpdateJob,
    PatchTrace,
}

/// One recorded call (no secrets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Verify {
        system_id: String,
    },
    RequestJob {
        last_update: Option<String>,
    },
    UpdateJob {
        job_id: i64,
        state: String,
        failure_reason: Option<String>,
        exit_code: Option<i32>,
        checksum: Option<String>,
        bytesize: Option<u64>,
    },
    PatchTrace {
        job_id: i64,
        offset: u64,
        len: usize,
    },
}

/// A job the fake handed out.
#[derive(Debug, Clone, Default)]
pub struct FakeJob {
    /// The trace as GitLab holds it.
    pub trace: Vec<u8>,
    /// `running`, `success`, `failed`, `canceled`.
    pub state: String,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i32>,
    pub checksum: Option<String>,
    token: String,
}

/// A queued answer to `request_job`.
enum Queued {
    Job(Box<JobResponse>),
    /// A `201` body as bytes, read as the HTTP client reads it ([`decode_job`]).
    Raw(Vec<u8>),
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<Queued>,
    jobs: HashMap<i64, FakeJob>,
    /// Next answers per endpoint: an HTTP status to fail with (`0` = transport error) and
    /// the wait a `Retry-After` header would carry.
    failures: HashMap<Endpoint, VecDeque<(u16, Option<Duration>)>>,
    verify_forbidden: bool,
    request_forbidden: bool,
    /// Next `416`s: job id → how many trace bytes to claim (truncates the stored trace).
    mismatches: HashMap<i64, VecDeque<u64>>,
    /// How many final updates to answer `202` first.
    not_accepted: u32,
    update_interval: Option<Duration>,
    request_delay: Duration,
    cursor: u64,
    calls: Vec<Call>,
}

/// The fake. Share it as `Arc<FakeGitLab>`; the test keeps a clone to program and inspect.
#[derive(Default)]
pub struct FakeGitLab {
    inner: Mutex<Inner>,
}

impl FakeGitLab {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a job for the next `request_job`.
    pub fn push_job(&self, job: JobResponse) {
        self.lock().queue.push_back(Queued::Job(Box::new(job)));
    }

    /// Queues a raw `201` body (any bytes), decoded as [`super::HttpGitLab`] decodes it.
    pub fn push_raw(&self, body: impl Into<Vec<u8>>) {
        self.lock().queue.push_back(Queued::Raw(body.into()));
    }

    /// The next `count` calls to `endpoint` fail with `status` (`0` = transport error).
    pub fn fail_next(&self, endpoint: Endpoint, count: usize, status: u16) {
        let mut g = self.lock();
        let q = g.failures.entry(endpoint).or_default();
        q.extend(std::iter::repeat_n((status, None), count));
    }

    /// The next `count` calls to `endpoint` fail with `status` and `Retry-After: after`
    /// ([`GitLabError::RetryLater`]).
    pub fn fail_next_retry_after(
        &self,
        endpoint: Endpoint,
        count: usize,
        status: u16,
        after: Duration,
    ) {
        let mut g = self.lock();
        let q = g.failures.entry(endpoint).or_default();
        q.extend(std::iter::repeat_n((status, Some(after)), count));
    }

    /// `verify` answers `403`.
    pub fn set_verify_forbidden(&self, yes: bool) {
        self.lock().verify_forbidden = yes;
    }

    /// `request_job` answers `403`.
    pub fn set_request_forbidden(&self, yes: bool) {
        self.lock().request_forbidden = yes;
    }

    /// The next trace patch of `job_id` gets `416`; GitLab "lost" everything past
    /// `remote_size`.
    pub fn force_range_mismatch(&self, job_id: i64, remote_size: u64) {
        self.lock()
            .mismatches
            .entry(job_id)
            .or_default()
            .push_back(remote_size);
    }

    /// The next `n` final updates are answered `202` (trace not complete yet).
    pub fn answer_not_accepted(&self, n: u32) {
        self.lock().not_accepted = n;
    }

    /// `X-GitLab-Trace-Update-Interval` on trace answers.
    pub fn set_update_interval(&self, d: Option<Duration>) {
        self.lock().update_interval = d;
    }

    /// `request_job` waits this long before answering `204` (long polling).
    pub fn set_request_delay(&self, d: Duration) {
        self.lock().request_delay = d;
    }

    /// Cancels a job as a user would in the UI.
    pub fn cancel(&self, job_id: i64) {
        self.set_state(job_id, "canceled");
    }

    /// Sets a job's state as GitLab holds it (e.g. `success`: a final update GitLab took
    /// whose answer the runner never got).
    pub fn set_state(&self, job_id: i64, state: &str) {
        if let Some(j) = self.lock().jobs.get_mut(&job_id) {
            j.state = state.into();
        }
    }

    /// A job's state as GitLab sees it.
    pub fn job(&self, job_id: i64) -> Option<FakeJob> {
        self.lock().jobs.get(&job_id).cloned()
    }

    /// Every call so far.
    pub fn calls(&self) -> Vec<Call> {
        self.lock().calls.clone()
    }

    /// Jobs still queued.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Waits (polling) until `f` holds, at most `timeout`; `true` if it did.
    pub async fn wait_until(&self, timeout: Duration, f: impl Fn(&FakeGitLab) -> bool) -> bool {
        let end = tokio::time::Instant::now() + timeout;
        loop {
            if f(self) {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn scripted(g: &mut Inner, ep: Endpoint, name: &'static str) -> Result<(), GitLabError> {
        match g.failures.get_mut(&ep).and_then(|q| q.pop_front()) {
            None => Ok(()),
            Some((0, _)) => Err(GitLabError::Transport {
                endpoint: name,
                source: "connection reset (fake)".into(),
            }),
            Some((403, _)) => Err(GitLabError::Forbidden {
                endpoint: name,
                job_status: None,
            }),
            Some((404, _)) => Err(GitLabError::NotFound { endpoint: name }),
            Some((409, _)) => Err(GitLabError::Conflict { endpoint: name }),
            Some((status, Some(after))) => Err(GitLabError::RetryLater {
                endpoint: name,
                status,
                after,
                body: "fake failure".into(),
            }),
            Some((status, None)) => Err(GitLabError::Status {
                endpoint: name,
                status,
                body: "fake failure".into(),
            }),
        }
    }

    fn check_job<'a>(
        g: &'a mut Inner,
        job_id: i64,
        token: &SecretString,
        name: &'static str,
    ) -> Result<&'a mut FakeJob, GitLabError> {
        let j = g
            .jobs
            .get_mut(&job_id)
            .ok_or(GitLabError::NotFound { endpoint: name })?;
        if j.token != token.expose_secret() {
            return Err(GitLabError::Forbidden {
                endpoint: name,
                job_status: None,
            });
        }
        Ok(j)
    }
}

#[async_trait]
impl GitLab for FakeGitLab {
    async fn register(
        &self,
        _registration_token: &SecretString,
        _opts: &RegisterOptions,
    ) -> Result<RunnerCredentials, GitLabError> {
        Ok(RunnerCredentials {
            id: Some(1),
            token: SecretString::from("glrt-fake".to_string()),
            token_expires_at: None,
        })
    }

    async fn verify(&self, auth: &RunnerAuth) -> Result<RunnerCredentials, GitLabError> {
        let mut g = self.lock();
        g.calls.push(Call::Verify {
            system_id: auth.system_id.clone(),
        });
        Self::scripted(&mut g, Endpoint::Verify, "verify")?;
        if g.verify_forbidden {
            return Err(GitLabError::Forbidden {
                endpoint: "verify",
                job_status: None,
            });
        }
        Ok(RunnerCredentials {
            id: Some(1),
            token: auth.token.clone(),
            token_expires_at: None,
        })
    }

    async fn reset_token(&self, token: &SecretString) -> Result<RunnerCredentials, GitLabError> {
        Ok(RunnerCredentials {
            id: Some(1),
            token: token.clone(),
            token_expires_at: None,
        })
    }

    async fn unregister(&self, _token: &SecretString) -> Result<(), GitLabError> {
        Ok(())
    }

    async fn request_job(
        &self,
        _auth: &RunnerAuth,
        last_update: Option<&str>,
    ) -> Result<JobRequest, GitLabError> {
        let delay = {
            let mut g = self.lock();
            g.calls.push(Call::RequestJob {
                last_update: last_update.map(str::to_string),
            });
            Self::scripted(&mut g, Endpoint::RequestJob, "request job")?;
            if g.request_forbidden {
                return Err(GitLabError::Forbidden {
                    endpoint: "request job",
                    job_status: None,
                });
            }
            if let Some(next) = g.queue.pop_front() {
                let answer = match next {
                    Queued::Job(job) => JobRequest::Job(job),
                    Queued::Raw(body) => match decode_job(&body) {
                        JobDecode::Job(job) => JobRequest::Job(job),
                        JobDecode::Unrunnable(job) => JobRequest::Unrunnable(job),
                        JobDecode::Lost { reason } => JobRequest::Lost { reason },
                    },
                };
                let taken = match &answer {
                    JobRequest::Job(job) => Some((job.id, job.token.expose_secret().to_string())),
                    JobRequest::Unrunnable(job) => {
                        Some((job.id, job.token.expose_secret().to_string()))
                    }
                    _ => None,
                };
                if let Some((id, token)) = taken {
                    g.jobs.insert(
                        id,
                        FakeJob {
                            state: "running".into(),
                            token,
                            ..FakeJob::default()
                        },
                    );
                }
                return Ok(answer);
            }
            g.request_delay
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let mut g = self.lock();
        g.cursor += 1;
        Ok(JobRequest::NoJob {
            last_update: Some(format!("cursor-{}", g.cursor)),
        })
    }

    async fn update_job(
        &self,
        job_id: i64,
        job_token: &SecretString,
        update: &JobUpdate,
    ) -> Result<UpdateAnswer, GitLabError> {
        let mut g = self.lock();
        g.calls.push(Call::UpdateJob {
            job_id,
            state: update.state.to_string(),
            failure_reason: update.failure_reason.map(str::to_string),
            exit_code: update.exit_code,
            checksum: update.checksum.clone(),
            bytesize: update.bytesize,
        });
        Self::scripted(&mut g, Endpoint::UpdateJob, "update job")?;
        let final_update = update.state != "running";
        let not_accepted = final_update && g.not_accepted > 0;
        if not_accepted {
            g.not_accepted -= 1;
        }
        let j = Self::check_job(&mut g, job_id, job_token, "update job")?;
        if j.state != "running" {
            return Err(GitLabError::Forbidden {
                endpoint: "update job",
                job_status: Some(j.state.clone()),
            });
        }
        if not_accepted {
            return Ok(UpdateAnswer {
                accepted: false,
                retry_after: Some(Duration::from_millis(20)),
                job_status: Some(j.state.clone()),
            });
        }
        if final_update {
            j.state = update.state.to_string();
            j.failure_reason = update.failure_reason.map(str::to_string);
            j.exit_code = update.exit_code;
            j.checksum = update.checksum.clone();
        }
        Ok(UpdateAnswer {
            accepted: true,
            retry_after: None,
            job_status: Some(if final_update {
                j.state.clone()
            } else {
                "running".into()
            }),
        })
    }

    async fn patch_trace(
        &self,
        job_id: i64,
        job_token: &SecretString,
        offset: u64,
        bytes: &[u8],
    ) -> Result<TraceAnswer, GitLabError> {
        let mut g = self.lock();
        g.calls.push(Call::PatchTrace {
            job_id,
            offset,
            len: bytes.len(),
        });
        assert!(!bytes.is_empty(), "empty trace patch for job {job_id}");
        Self::scripted(&mut g, Endpoint::PatchTrace, "patch trace")?;
        let forced = g.mismatches.get_mut(&job_id).and_then(|q| q.pop_front());
        let interval = g.update_interval;
        let j = Self::check_job(&mut g, job_id, job_token, "patch trace")?;
        if let Some(size) = forced {
            j.trace
                .truncate(usize::try_from(size).unwrap_or(usize::MAX));
            return Ok(TraceAnswer::RangeMismatch {
                remote_size: j.trace.len() as u64,
            });
        }
        if j.state != "running" && j.state != "canceled" {
            return Err(GitLabError::Forbidden {
                endpoint: "patch trace",
                job_status: Some(j.state.clone()),
            });
        }
        if offset != j.trace.len() as u64 {
            return Ok(TraceAnswer::RangeMismatch {
                remote_size: j.trace.len() as u64,
            });
        }
        j.trace.extend_from_slice(bytes);
        Ok(TraceAnswer::Accepted {
            job_status: Some(if j.state == "canceled" {
                "canceling".into()
            } else {
                j.state.clone()
            }),
            update_interval: interval,
        })
    }

    async fn upload_artifacts(
        &self,
        _job_id: i64,
        _job_token: &SecretString,
        _upload: &ArtifactUpload,
    ) -> Result<(), GitLabError> {
        Ok(())
    }

    async fn download_artifacts(
        &self,
        _job_id: i64,
        _job_token: &SecretString,
        _dest: &std::path::Path,
    ) -> Result<u64, GitLabError> {
        Err(GitLabError::NotFound {
            endpoint: "download artifacts",
        })
    }
}

/// A minimal job payload: `script` lines, job token `job-token-<id>`, the failure reasons a
/// current GitLab lists.
pub fn job(id: i64, script: &[&str]) -> JobResponse {
    let v = serde_json::json!({
        "id": id,
        "token": format!("job-token-{id}"),
        "job_info": {"id": id, "name": "test", "stage": "test", "project_id": 7, "project_name": "p"},
        "runner_info": {"timeout": 3600},
        "variables": [],
        "steps": [{"name": "script", "script": script, "timeout": 3600, "when": "on_success", "allow_failure": false}],
        "features": {"trace_sections": true, "failure_reasons": [
            "unknown_failure", "script_failure", "api_failure", "stuck_or_timeout_failure",
            "runner_system_failure", "job_execution_timeout", "image_pull_failure"
        ]},
    });
    // The literal above matches `JobResponse`; a mismatch is a bug in this helper.
    serde_json::from_value(v).expect("fake job payload parses")
}
