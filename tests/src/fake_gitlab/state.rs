//! The fake's state: runners, jobs, faults, counters. One `std::sync::Mutex`, never held
//! across an `.await`; a `watch` counter announces every change (job queued, job finished) so
//! long polls and test waiters wake without races.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;
use time::OffsetDateTime;

/// The runner API endpoints, for faults and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// `POST /runners`
    RegisterRunner,
    /// `POST /runners/verify`
    VerifyRunner,
    /// `POST /runners/reset_authentication_token`
    ResetToken,
    /// `DELETE /runners`
    UnregisterRunner,
    /// `DELETE /runners/managers`
    UnregisterManager,
    /// `POST /jobs/request`
    RequestJob,
    /// `PUT /jobs/:id`
    UpdateJob,
    /// `PATCH /jobs/:id/trace`
    PatchTrace,
    /// `POST /jobs/:id/artifacts`
    UploadArtifacts,
    /// `GET /jobs/:id/artifacts`
    DownloadArtifacts,
    /// `POST /user/runners` (REST API, access token)
    CreateRunner,
    /// `DELETE /runners/:id` (REST API, access token)
    DeleteRunner,
}

impl Endpoint {
    /// Which endpoint a request is, from method and path (`None` for anything else).
    pub fn classify(method: &axum::http::Method, path: &str) -> Option<Endpoint> {
        let rest = path.strip_prefix("/api/v4/")?;
        let parts: Vec<&str> = rest.split('/').collect();
        use axum::http::Method as M;
        Some(match (method, parts.as_slice()) {
            (&M::POST, ["runners"]) => Endpoint::RegisterRunner,
            (&M::POST, ["runners", "verify"]) => Endpoint::VerifyRunner,
            (&M::POST, ["runners", "reset_authentication_token"]) => Endpoint::ResetToken,
            (&M::DELETE, ["runners"]) => Endpoint::UnregisterRunner,
            (&M::DELETE, ["runners", "managers"]) => Endpoint::UnregisterManager,
            (&M::POST, ["jobs", "request"]) => Endpoint::RequestJob,
            (&M::PUT, ["jobs", _]) => Endpoint::UpdateJob,
            (&M::PATCH, ["jobs", _, "trace"]) => Endpoint::PatchTrace,
            (&M::POST, ["jobs", _, "artifacts"]) => Endpoint::UploadArtifacts,
            (&M::GET, ["jobs", _, "artifacts"]) => Endpoint::DownloadArtifacts,
            (&M::POST, ["user", "runners"]) => Endpoint::CreateRunner,
            (&M::DELETE, ["runners", _]) => Endpoint::DeleteRunner,
            _ => return None,
        })
    }
}

/// A job's state on the fake GitLab.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    /// Queued, not yet picked by a runner.
    Pending,
    Running,
    /// Canceled gracefully by the test: the runner may still finish it.
    Canceling,
    Canceled,
    Success,
    Failed,
}

impl JobState {
    /// The `Job-Status` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Running => "running",
            JobState::Canceling => "canceling",
            JobState::Canceled => "canceled",
            JobState::Success => "success",
            JobState::Failed => "failed",
        }
    }

    /// Success, failed or canceled.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            JobState::Canceled | JobState::Success | JobState::Failed
        )
    }
}

/// A registered runner.
#[derive(Debug, Clone)]
pub struct RunnerRecord {
    pub id: i64,
    pub token: String,
    pub token_expires_at: Option<OffsetDateTime>,
    /// Revoked by the test: the token is refused everywhere.
    pub revoked: bool,
    pub description: String,
    pub tag_list: Vec<String>,
    pub run_untagged: bool,
    /// `system_id`s seen on verify / job requests ("runner managers").
    pub managers: BTreeSet<String>,
}

impl RunnerRecord {
    pub(crate) fn token_valid(&self, now: OffsetDateTime) -> bool {
        !self.revoked && self.token_expires_at.is_none_or(|t| t > now)
    }

    fn takes(&self, job_tags: &[String]) -> bool {
        if job_tags.is_empty() {
            self.run_untagged
        } else {
            job_tags.iter().all(|t| self.tag_list.contains(t))
        }
    }
}

/// An uploaded artifacts file.
#[derive(Debug, Clone)]
pub struct StoredArtifact {
    pub filename: String,
    pub artifact_format: Option<String>,
    pub artifact_type: Option<String>,
    pub expire_in: Option<String>,
    pub content: Bytes,
}

/// A job, from enqueue to its final state.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub tags: Vec<String>,
    pub payload: Value,
    /// The `201` body served: `payload` as JSON, or [`super::JobSpec::raw_body`].
    pub body: Bytes,
    pub state: JobState,
    pub runner_id: Option<i64>,
    pub failure_reason: Option<String>,
    pub exit_code: Option<i64>,
    pub trace: Vec<u8>,
    /// Every `PUT /jobs/:id` body received, in order.
    pub updates: Vec<Value>,
    /// `Content-Type` of every trace patch received (`None` when absent).
    pub trace_content_types: Vec<Option<String>>,
    pub artifacts: Vec<StoredArtifact>,
    /// When the fake answered `201` to the `POST /jobs/request` that handed this job out
    /// (benchmarks measure job cost from here).
    pub picked_at: Option<Instant>,
    /// When the fake accepted the final `PUT /jobs/:id` (`success`/`failed`).
    pub finished_at: Option<Instant>,
}

impl JobRecord {
    /// The archive GitLab serves from `GET /jobs/:id/artifacts`.
    pub fn archive(&self) -> Option<&StoredArtifact> {
        self.artifacts
            .iter()
            .rev()
            .find(|a| a.artifact_type.as_deref().is_none_or(|t| t == "archive"))
    }
}

/// Fault injection for one endpoint.
#[derive(Debug, Clone, Default)]
pub(crate) struct Fault {
    /// Answer `status` to the next `remaining` requests.
    pub fail_next: Option<(u16, u32)>,
    /// Answer `status` to every request until the instant.
    pub fail_until: Option<(u16, Instant)>,
    /// Hold every answer this long.
    pub delay: Option<Duration>,
    /// Headers sent with every injected failure (`Retry-After`, `RateLimit-ResetTime`, ...).
    pub headers: Vec<(String, String)>,
    /// A share of requests failing until the storm ends (see `storm.rs`).
    pub storm: Option<super::storm::Raging>,
}

/// Server behaviour a test may change.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// Hold `POST /jobs/request` up to this long when no job is queued (Workhorse's long poll).
    pub long_poll: Duration,
    /// Largest artifacts upload accepted; larger gets `413`.
    pub max_artifact_size: u64,
    /// `X-GitLab-Trace-Update-Interval` value (GitLab: 60, or 3 while someone watches).
    pub trace_update_interval: u64,
    /// Trace size above which patches get `403` (GitLab's `ci_jobs_trace_size_limit`).
    pub max_trace_size: Option<u64>,
    /// Lifetime of tokens created by registration/reset; `None` = never expire.
    pub token_lifetime: Option<Duration>,
    /// Answer artifact downloads with `302` to `/_object_storage/...` on this base URL
    /// (as GitLab does with object storage).
    pub artifact_redirect_base: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            long_poll: Duration::ZERO,
            max_artifact_size: 100 * 1024 * 1024,
            trace_update_interval: 3,
            max_trace_size: None,
            token_lifetime: None,
            artifact_redirect_base: None,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct State {
    pub settings: Settings,
    pub registration_tokens: HashSet<String>,
    /// Access tokens accepted by `POST /user/runners` and `DELETE /runners/:id`.
    pub access_tokens: HashSet<String>,
    /// Runners made by `POST /user/runners` (not by a registration token).
    pub created_by_access_token: BTreeSet<i64>,
    pub runners: BTreeMap<i64, RunnerRecord>,
    pub next_runner_id: i64,
    pub jobs: BTreeMap<i64, JobRecord>,
    pub next_job_id: i64,
    pub queue: VecDeque<i64>,
    /// The `X-GitLab-Last-Update` cursor; bumped whenever the queue changes.
    pub queue_version: u64,
    pub faults: BTreeMap<Endpoint, Fault>,
    /// Forced `202`s on final job updates, per job.
    pub forced_update_202: BTreeMap<i64, u32>,
    pub counters: BTreeMap<(Endpoint, u16), u64>,
    /// `info.features` of every job request, in order.
    pub features: Vec<Value>,
    /// `info` of every job request and registration, in order.
    pub infos: Vec<Value>,
    /// `JOB-TOKEN` header (if any) of every object storage download, in order.
    pub storage_tokens: Vec<Option<String>>,
}

impl State {
    pub fn runner_by_token(&self, token: &str, now: OffsetDateTime) -> Option<&RunnerRecord> {
        self.runners
            .values()
            .find(|r| r.token == token && r.token_valid(now))
    }

    pub fn runner_by_token_mut(
        &mut self,
        token: &str,
        now: OffsetDateTime,
    ) -> Option<&mut RunnerRecord> {
        self.runners
            .values_mut()
            .find(|r| r.token == token && r.token_valid(now))
    }

    /// Takes the first queued job this runner may run and marks it running.
    pub fn dequeue_for(&mut self, runner_id: i64) -> Option<Bytes> {
        let runner = self.runners.get(&runner_id)?;
        let pos = self.queue.iter().position(|id| {
            self.jobs
                .get(id)
                .is_some_and(|j| j.state == JobState::Pending && runner.takes(&j.tags))
        })?;
        let id = self.queue.remove(pos)?;
        self.queue_version += 1;
        let job = self.jobs.get_mut(&id)?;
        job.state = JobState::Running;
        job.runner_id = Some(runner_id);
        job.picked_at = Some(Instant::now());
        Some(job.body.clone())
    }

    pub fn token_expiry(&self, now: OffsetDateTime) -> Option<OffsetDateTime> {
        self.settings.token_lifetime.map(|l| now + l)
    }
}

/// State plus the change signal, shared by the server and the test handle.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
    changes: tokio::sync::watch::Sender<u64>,
    /// Base URL the server answers on (for repo URLs in payloads).
    pub url: String,
}

impl Shared {
    pub fn new(url: String) -> Arc<Self> {
        Arc::new(Shared {
            state: Mutex::new(State {
                next_runner_id: 1,
                next_job_id: 1,
                queue_version: 1,
                ..State::default()
            }),
            changes: tokio::sync::watch::channel(0).0,
            url,
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes long polls and waiters.
    pub fn changed(&self) {
        self.changes.send_modify(|v| *v += 1);
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// Random token material.
pub(crate) fn random_alnum(len: usize) -> String {
    use rand::Rng;
    const CHARSET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-";
    let mut rng = rand::rng();
    (0..len)
        .map(|_| CHARSET[rng.random_range(0..CHARSET.len())] as char)
        .collect()
}

/// GitLab's `token_expires_at` format: `iso8601(3)` in UTC, e.g. `2026-01-02T03:04:05.000Z`.
pub(crate) fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}
