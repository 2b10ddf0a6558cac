//! Jobs in flight, recorded on disk so a crashed or killed agent reports them failed at its
//! next start instead of leaving them running in GitLab until their timeout.
//!
//! One small JSON file per job in `<state dir>/inflight/<job id>.json`, written atomically
//! (temporary file + rename) with mode 0600 because it holds the job token. The runner loop
//! records a job when it starts and removes the record once GitLab accepted the final
//! update; a record left at start is a job the previous run of the agent did not finish.
//!
//! Invariant: a record is deleted only after GitLab accepted the failure (or said the job
//! is gone: 403/404), so a GitLab outage during recovery retries at the next start.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use drover_gitlab::{GitLab, GitLabError, JobUpdate, TraceAnswer};
use drover_job::executor::FailureReason;

/// Errors of the in-flight store.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an in-flight job record: {source}")]
    Parse {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

fn io(path: &Path, source: std::io::Error) -> InflightError {
    InflightError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One job this agent is running.
#[derive(Clone)]
pub struct InflightJob {
    pub job_id: i64,
    pub token: SecretString,
    /// The GitLab URL of the runner (`[[runners]] url`).
    pub url: String,
    /// The runner's `tls-ca-file`, to reach the same GitLab the same way.
    pub tls_ca_file: Option<String>,
    /// The runner's name, for logs.
    pub runner: String,
    /// RFC 3339 start time, for the recovery trace line.
    pub started_at: String,
}

impl std::fmt::Debug for InflightJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightJob")
            .field("job_id", &self.job_id)
            .field("url", &self.url)
            .field("runner", &self.runner)
            .field("started_at", &self.started_at)
            .finish_non_exhaustive()
    }
}

#[derive(Serialize, Deserialize)]
struct Record {
    job_id: i64,
    token: String,
    url: String,
    #[serde(default)]
    tls_ca_file: Option<String>,
    #[serde(default)]
    runner: String,
    #[serde(default)]
    started_at: String,
}

/// How the runner loop tells the rest of the agent which jobs run: an in-flight record per
/// job (crash recovery) and the ids the janitor must leave alone.
#[derive(Debug, Clone, Default)]
pub struct JobTracking {
    /// `None`: no records (tests, or no state dir).
    pub inflight: Option<InflightStore>,
    pub running: crate::janitor::RunningJobs,
}

/// Now, RFC 3339 (UTC).
pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// What recovery did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recovered {
    /// GitLab now has the job as failed (`runner_system_failure`).
    ReportedFailed { job_id: i64 },
    /// GitLab no longer lets this token update the job (403/404: finished or canceled).
    AlreadyGone { job_id: i64 },
    /// GitLab could not be told; the record stays for the next start.
    Kept { job_id: i64, error: String },
}

/// The on-disk set of jobs in flight.
#[derive(Debug, Clone)]
pub struct InflightStore {
    dir: PathBuf,
}

impl InflightStore {
    /// The store in `<state_dir>/inflight`.
    pub fn new(state_dir: &Path) -> Self {
        InflightStore {
            dir: state_dir.join("inflight"),
        }
    }

    fn path(&self, job_id: i64) -> PathBuf {
        self.dir.join(format!("{job_id}.json"))
    }

    /// Records `job` (atomically, mode 0600).
    pub fn record(&self, job: &InflightJob) -> Result<(), InflightError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io(&self.dir, e))?;
        let _ = std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700));
        let rec = Record {
            job_id: job.job_id,
            token: job.token.expose_secret().to_string(),
            url: job.url.clone(),
            tls_ca_file: job.tls_ca_file.clone(),
            runner: job.runner.clone(),
            started_at: job.started_at.clone(),
        };
        let body = serde_json::to_vec(&rec).map_err(|source| InflightError::Parse {
            path: self.path(job.job_id).display().to_string(),
            source,
        })?;
        let path = self.path(job.job_id);
        drover_runtime::atomic_file::write(&path, &body, 0o600).map_err(|e| io(&path, e))
    }

    /// Removes the record of `job_id` (a missing record is not an error).
    pub fn remove(&self, job_id: i64) -> Result<(), InflightError> {
        let path = self.path(job_id);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(&path, e)),
        }
    }

    /// Every record, by job id. Unreadable records are returned as errors beside the rest.
    pub fn list(&self) -> (Vec<InflightJob>, Vec<InflightError>) {
        let mut jobs = Vec::new();
        let mut errors = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (jobs, errors),
            Err(e) => return (jobs, vec![io(&self.dir, e)]),
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().to_string();
            if name.starts_with('.') || !name.ends_with(".json") {
                continue;
            }
            let parsed = std::fs::read(&path)
                .map_err(|e| io(&path, e))
                .and_then(|b| {
                    serde_json::from_slice::<Record>(&b).map_err(|source| InflightError::Parse {
                        path: path.display().to_string(),
                        source,
                    })
                });
            match parsed {
                Ok(r) => jobs.push(InflightJob {
                    job_id: r.job_id,
                    token: SecretString::from(r.token),
                    url: r.url,
                    tls_ca_file: r.tls_ca_file,
                    runner: r.runner,
                    started_at: r.started_at,
                }),
                Err(e) => errors.push(e),
            }
        }
        jobs.sort_by_key(|j| j.job_id);
        (jobs, errors)
    }

    /// Reports every recorded job to GitLab as failed (`runner_system_failure`) with a trace
    /// line saying why, then deletes its record. `gitlab_for` gives the client for a
    /// record's GitLab; `now` is the restart time shown in the trace.
    pub async fn recover(
        &self,
        gitlab_for: &(dyn Fn(&InflightJob) -> anyhow::Result<Arc<dyn GitLab>> + Send + Sync),
        now: &str,
    ) -> Vec<Recovered> {
        let (jobs, errors) = self.list();
        for e in errors {
            tracing::warn!("in-flight job record: {e}");
        }
        let mut out = Vec::new();
        for job in jobs {
            let result = match gitlab_for(&job) {
                Ok(gitlab) => report_failed(gitlab.as_ref(), &job, now).await,
                Err(e) => Err(format!("gitlab client for {}: {e:#}", job.url)),
            };
            let rec = match result {
                Ok(r) => r,
                Err(error) => Recovered::Kept {
                    job_id: job.job_id,
                    error,
                },
            };
            if !matches!(rec, Recovered::Kept { .. })
                && let Err(e) = self.remove(job.job_id)
            {
                tracing::warn!("{e}");
            }
            out.push(rec);
        }
        out
    }
}

/// The trace line a recovered job gets.
pub fn recovery_line(now: &str) -> String {
    format!(
        "\x1b[31;1mERROR: Job failed (system failure): the agent stopped while running this job (crash or kill); drover-agent restarted at {now}\x1b[0;m\n"
    )
}

fn gone(e: &GitLabError) -> bool {
    matches!(
        e,
        GitLabError::Forbidden { .. } | GitLabError::NotFound { .. }
    )
}

async fn report_failed(
    gitlab: &dyn GitLab,
    job: &InflightJob,
    now: &str,
) -> Result<Recovered, String> {
    let line = recovery_line(now);
    let bytes = line.as_bytes();
    // The trace GitLab holds is unknown: append at offset 0, and on 416 at the size GitLab
    // reports.
    let mut offset = 0u64;
    for _ in 0..3 {
        match gitlab
            .patch_trace(job.job_id, &job.token, offset, bytes)
            .await
        {
            Ok(TraceAnswer::Accepted { .. }) => break,
            Ok(TraceAnswer::RangeMismatch { remote_size }) => offset = remote_size,
            Err(e) if gone(&e) => return Ok(Recovered::AlreadyGone { job_id: job.job_id }),
            Err(e) => {
                tracing::warn!(job = job.job_id, "recovery trace line: {e}");
                break;
            }
        }
    }
    let update = JobUpdate {
        state: "failed",
        failure_reason: Some(FailureReason::RunnerSystemFailure.as_str()),
        exit_code: None,
        checksum: None,
        bytesize: None,
    };
    for _ in 0..5 {
        match gitlab.update_job(job.job_id, &job.token, &update).await {
            Ok(a) if a.accepted => {
                return Ok(Recovered::ReportedFailed { job_id: job.job_id });
            }
            Ok(a) => {
                tokio::time::sleep(
                    a.retry_after
                        .unwrap_or(std::time::Duration::from_secs(1))
                        .min(std::time::Duration::from_secs(5)),
                )
                .await;
            }
            Err(e) if gone(&e) => return Ok(Recovered::AlreadyGone { job_id: job.job_id }),
            Err(e) => return Err(e.to_string()),
        }
    }
    Err("GitLab did not accept the final update".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_gitlab::fake::FakeGitLab;

    fn job(id: i64) -> InflightJob {
        InflightJob {
            job_id: id,
            token: SecretString::from(format!("tok-{id}")),
            url: "https://gitlab.example.com".into(),
            tls_ca_file: None,
            runner: "r".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn records_are_private_listed_and_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = InflightStore::new(dir.path());
        store.record(&job(7)).expect("record");
        store.record(&job(3)).expect("record");
        let mode = std::fs::metadata(dir.path().join("inflight/7.json"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let (jobs, errors) = store.list();
        assert!(errors.is_empty());
        assert_eq!(
            jobs.iter().map(|j| j.job_id).collect::<Vec<_>>(),
            vec![3, 7]
        );
        assert_eq!(jobs[1].token.expose_secret(), "tok-7");
        assert!(!format!("{:?}", jobs[1]).contains("tok-7"));
        store.remove(7).expect("remove");
        store.remove(7).expect("remove twice");
        assert_eq!(store.list().0.len(), 1);
    }

    #[test]
    fn a_broken_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = InflightStore::new(dir.path());
        std::fs::create_dir_all(dir.path().join("inflight")).expect("mkdir");
        std::fs::write(dir.path().join("inflight/9.json"), b"{").expect("write");
        let (jobs, errors) = store.list();
        assert!(jobs.is_empty());
        assert!(errors[0].to_string().contains("9.json"), "{}", errors[0]);
    }

    #[tokio::test]
    async fn recovery_appends_the_line_fails_the_job_and_forgets_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = InflightStore::new(dir.path());
        let fake = Arc::new(FakeGitLab::new());
        let payload: drover_gitlab::types::JobResponse = serde_json::from_value(
            serde_json::json!({"id": 7, "token": "tok-7", "job_info": {}, "git_info": {}, "runner_info": {}}),
        )
        .expect("job");
        fake.push_job(payload);
        // Hand the job out so the fake knows it as running, with some trace already.
        let auth = drover_gitlab::RunnerAuth {
            token: SecretString::from("glrt-x".to_string()),
            system_id: "s_000000000000".into(),
        };
        let _ = fake.request_job(&auth, None).await.expect("request");
        let _ = fake
            .patch_trace(7, &SecretString::from("tok-7".to_string()), 0, b"partial\n")
            .await
            .expect("patch");
        store.record(&job(7)).expect("record");
        let f = fake.clone();
        let got = store
            .recover(
                &move |_| Ok(f.clone() as Arc<dyn GitLab>),
                "2026-11-25T17:00:00Z",
            )
            .await;
        assert_eq!(got, vec![Recovered::ReportedFailed { job_id: 7 }]);
        let j = fake.job(7).expect("job");
        assert_eq!(j.state, "failed");
        assert_eq!(j.failure_reason.as_deref(), Some("runner_system_failure"));
        let trace = String::from_utf8_lossy(&j.trace).to_string();
        assert!(trace.starts_with("partial\n"), "{trace}");
        assert!(
            trace.contains("the agent stopped while running this job"),
            "{trace}"
        );
        assert!(store.list().0.is_empty());
    }
}
