//! The GitLab runner API as a trait, so the runner loop is tested with a fake and the HTTP
//! client ([`super::client::HttpGitLab`]) is tested against the fake GitLab server in `tests/`.

use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;

use super::decode::UnrunnableJob;
use super::types::JobResponse;

/// Errors from the GitLab runner API.
#[derive(Debug, thiserror::Error)]
pub enum GitLabError {
    /// `403`: runner token invalid/expired/revoked (runner endpoints) or job no longer
    /// running (job endpoints; `job_status` from the `Job-Status` header).
    #[error("{endpoint}: forbidden (403){}", job_status.as_deref().map(|s| format!(", job status {s}")).unwrap_or_default())]
    Forbidden {
        endpoint: &'static str,
        job_status: Option<String>,
    },
    /// `404`: job or runner gone.
    #[error("{endpoint}: not found (404)")]
    NotFound { endpoint: &'static str },
    /// `409`: conflict; retry.
    #[error("{endpoint}: conflict (409)")]
    Conflict { endpoint: &'static str },
    /// `413`: payload too large (artifacts); do not retry.
    #[error("{endpoint}: too large (413)")]
    TooLarge { endpoint: &'static str },
    /// Any other unexpected status (`422`, `5xx`, ...); retried when [`retried_status`].
    #[error("{endpoint}: unexpected status {status}: {body}")]
    Status {
        endpoint: &'static str,
        status: u16,
        body: String,
    },
    /// A retried status ([`retried_status`]: `429`, `503`, ...) whose `RateLimit-ResetTime`
    /// or `Retry-After` header says how long to wait (`after`, unbounded as GitLab sent it).
    #[error("{endpoint}: unexpected status {status}, retry after {}s: {body}", after.as_secs_f32())]
    RetryLater {
        endpoint: &'static str,
        status: u16,
        after: Duration,
        body: String,
    },
    /// Connection refused, reset, timed out, TLS failure.
    #[error("{endpoint}: {source}")]
    Transport {
        endpoint: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The response body did not parse.
    #[error("{endpoint}: decode response: {message}")]
    Decode {
        endpoint: &'static str,
        message: String,
    },
}

/// The statuses gitlab-runner retries (`network/retry_requester.go`, `retryStatuses` and
/// `shouldRetryRequest`): `408`, `429`, `500`, `502`, `503`, `504`, and `512` or above.
pub fn retried_status(status: u16) -> bool {
    matches!(status, 408 | 429 | 500 | 502 | 503 | 504) || status >= 512
}

impl GitLabError {
    /// Worth retrying later with backoff: no answer, `409`, or a [`retried_status`].
    pub fn is_retryable(&self) -> bool {
        match self {
            GitLabError::Transport { .. }
            | GitLabError::Conflict { .. }
            | GitLabError::RetryLater { .. } => true,
            GitLabError::Status { status, .. } => retried_status(*status),
            _ => false,
        }
    }

    /// The wait GitLab asked for (`RateLimit-ResetTime` / `Retry-After`), if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GitLabError::RetryLater { after, .. } => Some(*after),
            _ => None,
        }
    }

    /// The HTTP status GitLab answered; `None` when there was no (usable) answer.
    pub fn status(&self) -> Option<u16> {
        match self {
            GitLabError::Forbidden { .. } => Some(403),
            GitLabError::NotFound { .. } => Some(404),
            GitLabError::Conflict { .. } => Some(409),
            GitLabError::TooLarge { .. } => Some(413),
            GitLabError::Status { status, .. } | GitLabError::RetryLater { status, .. } => {
                Some(*status)
            }
            GitLabError::Transport { .. } | GitLabError::Decode { .. } => None,
        }
    }
}

/// `{id, token, token_expires_at}` from register/verify/reset.
#[derive(Debug, Clone)]
pub struct RunnerCredentials {
    pub id: Option<i64>,
    pub token: SecretString,
    /// RFC 3339; `None` = never expires.
    pub token_expires_at: Option<String>,
}

/// What `POST /runners` (legacy registration) and `POST /user/runners` send besides the
/// token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterOptions {
    /// Shown in GitLab's runner list.
    pub description: String,
    /// Runner tags.
    pub tag_list: Vec<String>,
    /// Take jobs without tags.
    pub run_untagged: bool,
    /// Locked to its projects.
    pub locked: bool,
    /// `not_protected` or `ref_protected`.
    pub access_level: Option<String>,
    /// Seconds.
    pub maximum_timeout: Option<u64>,
    /// Registered paused.
    pub paused: bool,
    /// Note for GitLab admins.
    pub maintenance_note: Option<String>,
}

/// Answer to `POST /jobs/request`.
#[derive(Debug)]
pub enum JobRequest {
    /// `201`: a job to run.
    Job(Box<JobResponse>),
    /// `201` with a job that cannot run (payload does not decode, or refused by
    /// [`super::decode::check`]): report it failed.
    Unrunnable(Box<UnrunnableJob>),
    /// `201` with a body from which not even the job's `id` and `token` could be read: the
    /// job cannot be reported and stays running in GitLab until its timeout.
    Lost { reason: String },
    /// `204`: nothing to do; send `last_update` back next time.
    NoJob { last_update: Option<String> },
}

/// `PUT /jobs/:id` body.
#[derive(Debug, Clone)]
pub struct JobUpdate {
    /// `running`, `success`, `failed`.
    pub state: &'static str,
    pub failure_reason: Option<&'static str>,
    pub exit_code: Option<i32>,
    /// `crc32:<hex>` of the whole trace as sent.
    pub checksum: Option<String>,
    /// Bytes of trace sent.
    pub bytesize: Option<u64>,
}

/// Answer to `PUT /jobs/:id` (`200`/`202`).
#[derive(Debug, Clone)]
pub struct UpdateAnswer {
    /// `false` on `202`: GitLab does not have the whole trace yet; retry after `retry_after`.
    pub accepted: bool,
    pub retry_after: Option<Duration>,
    /// `Job-Status` header (`canceled`, `canceling`, `running`, ...).
    pub job_status: Option<String>,
}

/// Answer to `PATCH /jobs/:id/trace`.
#[derive(Debug, Clone)]
pub enum TraceAnswer {
    /// `202`: stored. `update_interval` from `X-GitLab-Trace-Update-Interval`.
    Accepted {
        job_status: Option<String>,
        update_interval: Option<Duration>,
    },
    /// `416`: GitLab holds `remote_size` bytes (from the `Range: 0-<size>` header); resend
    /// from there.
    RangeMismatch { remote_size: u64 },
}

/// One artifacts archive to upload (`POST /jobs/:id/artifacts`, multipart).
#[derive(Debug, Clone)]
pub struct ArtifactUpload {
    /// File name GitLab shows (`artifacts.zip`, `junit.xml.gz`, ...).
    pub filename: String,
    /// `zip`, `gzip` or `raw`.
    pub artifact_format: String,
    /// `archive`, `junit`, ...
    pub artifact_type: String,
    pub expire_in: Option<String>,
    /// Local file holding the archive (streamed, not read into memory).
    pub path: std::path::PathBuf,
}

/// A runner's identity towards GitLab for job requests.
#[derive(Debug, Clone)]
pub struct RunnerAuth {
    pub token: SecretString,
    /// `s_` + 12 hex (gitlab-runner's format).
    pub system_id: String,
}

/// The GitLab runner API, one GitLab instance (base URL) per value.
#[async_trait]
pub trait GitLab: Send + Sync {
    /// `POST /runners` with a registration token.
    async fn register(
        &self,
        registration_token: &SecretString,
        opts: &RegisterOptions,
    ) -> Result<RunnerCredentials, GitLabError>;
    /// `POST /runners/verify`.
    async fn verify(&self, auth: &RunnerAuth) -> Result<RunnerCredentials, GitLabError>;
    /// `POST /runners/reset_authentication_token`: the old token stops working at once.
    async fn reset_token(&self, token: &SecretString) -> Result<RunnerCredentials, GitLabError>;
    /// `DELETE /runners`.
    async fn unregister(&self, token: &SecretString) -> Result<(), GitLabError>;
    /// `POST /jobs/request` (may long-poll ~50 s).
    async fn request_job(
        &self,
        auth: &RunnerAuth,
        last_update: Option<&str>,
    ) -> Result<JobRequest, GitLabError>;
    /// `PUT /jobs/:id`.
    async fn update_job(
        &self,
        job_id: i64,
        job_token: &SecretString,
        update: &JobUpdate,
    ) -> Result<UpdateAnswer, GitLabError>;
    /// `PATCH /jobs/:id/trace` with `Content-Range: <offset>-<offset+len-1>`. `bytes` is
    /// never empty.
    async fn patch_trace(
        &self,
        job_id: i64,
        job_token: &SecretString,
        offset: u64,
        bytes: &[u8],
    ) -> Result<TraceAnswer, GitLabError>;
    /// `POST /jobs/:id/artifacts`. `413` is [`GitLabError::TooLarge`].
    async fn upload_artifacts(
        &self,
        job_id: i64,
        job_token: &SecretString,
        upload: &ArtifactUpload,
    ) -> Result<(), GitLabError>;
    /// `GET /jobs/:id/artifacts` with the dependency's own token; writes the archive to
    /// `dest` and returns its size in bytes.
    async fn download_artifacts(
        &self,
        job_id: i64,
        job_token: &SecretString,
        dest: &std::path::Path,
    ) -> Result<u64, GitLabError>;
}
