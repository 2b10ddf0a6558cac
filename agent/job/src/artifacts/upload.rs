//! Building each `artifacts` entry of a job into an archive and uploading it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use super::ArchiveError;
use super::archive::{ArtifactFormat, write_gzip, write_raw, write_zip};
use super::project_tar::{ProjectEntry, ProjectTar, SelectSpec, select};
use super::when::When;
use crate::FailureReason;
use crate::expand::expand_vars;
use crate::sources::TrackedFiles;
use crate::trace::TraceSink;
use drover_gitlab::backoff::asked_wait;
use drover_gitlab::types::{Artifact, JobResponse, JobVariable};
use drover_gitlab::{ArtifactUpload, GitLab, GitLabError};

/// Errors collecting or uploading artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactsError {
    #[error("artifacts {name:?}: {source}")]
    Archive {
        name: String,
        #[source]
        source: ArchiveError,
    },
    #[error("create temporary file in {dir}: {source}")]
    TempFile {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    /// GitLab answered `413`: not retried.
    #[error("artifacts {filename:?} ({size} bytes): too large archive (413)")]
    TooLarge { filename: String, size: u64 },
    #[error("upload artifacts {filename:?}: {source}")]
    Upload {
        filename: String,
        #[source]
        source: GitLabError,
    },
    #[error("artifacts worker task failed: {0}")]
    Task(String),
}

impl ArtifactsError {
    /// How the executor reports a job whose artifacts failed.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            ArtifactsError::Upload { .. } => FailureReason::ApiFailure,
            ArtifactsError::TempFile { .. } | ArtifactsError::Task(_) => {
                FailureReason::RunnerSystemFailure
            }
            _ => FailureReason::ScriptFailure,
        }
    }
}

/// How often and how far apart retryable upload/download errors are retried.
#[derive(Debug, Clone, Copy)]
pub struct Retry {
    /// Total attempts (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each failure.
    pub backoff: Duration,
}

impl Default for Retry {
    /// Six attempts 1, 2, 4, 8 and 16 s apart: a transfer rides out 31 s of 5xx (a GitLab
    /// storm; `RELIABILITY.md`). gitlab-runner tries 3 times (6 on `503`,
    /// `commands/helpers/artifacts_uploader.go`), each try repeating a retried status up to
    /// 5 times from 100 ms on (`network/retry_requester.go`): about 10 s of 5xx.
    fn default() -> Self {
        Retry {
            attempts: 6,
            backoff: Duration::from_secs(1),
        }
    }
}

impl Retry {
    /// The wait after attempt `attempt` (1-based) failed with `e`: what GitLab asked for
    /// ([`asked_wait`]: `Retry-After`, `RateLimit-ResetTime`, bounded), else
    /// `backoff` doubled per failed attempt.
    pub fn wait(&self, e: &GitLabError, attempt: u32) -> Duration {
        asked_wait(e).unwrap_or_else(|| {
            self.backoff
                .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        })
    }
}

/// One archive ready to upload. The temporary file lives as long as this value.
#[derive(Debug)]
pub struct BuiltArtifact {
    pub upload: ArtifactUpload,
    /// Bytes in the archive.
    pub size: u64,
    /// Entries (files, directories, links) it holds.
    pub entries: usize,
    _file: tempfile::NamedTempFile,
}

fn temp_in(dir: &Path) -> Result<tempfile::NamedTempFile, ArtifactsError> {
    tempfile::Builder::new()
        .prefix("drover-artifacts-")
        .tempfile_in(dir)
        .map_err(|source| ArtifactsError::TempFile {
            dir: dir.display().to_string(),
            source,
        })
}

fn base_name(name: &str) -> &str {
    let b = name.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if b.is_empty() || b == "." {
        "artifacts"
    } else {
        b
    }
}

/// Builds the archive for one `artifacts` entry from the project tar (blocking IO: call it
/// from `spawn_blocking`). `entries` is `tar.entries()`. `Ok(None)` when nothing matched
/// (gitlab-runner then skips the upload with an error line but does not fail).
pub fn build_artifact(
    artifact: &Artifact,
    tar: &ProjectTar,
    entries: &[ProjectEntry],
    project_dir: &str,
    tracked: Option<&TrackedFiles>,
    tmp_dir: &Path,
    trace: &TraceSink,
) -> Result<Option<BuiltArtifact>, ArtifactsError> {
    let name = artifact.name.clone();
    let archive_err = |source| ArtifactsError::Archive {
        name: name.clone(),
        source,
    };
    let format = ArtifactFormat::parse(artifact.artifact_format.as_deref()).map_err(archive_err)?;
    let spec = SelectSpec {
        paths: artifact.paths.clone(),
        exclude: artifact.exclude.clone(),
        untracked: artifact.untracked,
        project_dir: project_dir.to_string(),
    };
    let selection = select(entries, &spec, tracked);
    for m in &selection.messages {
        trace.write_line(m);
    }
    let no_files = selection.entries.iter().all(|e| !e.is_file());
    if selection.entries.is_empty() || (no_files && format != ArtifactFormat::Zip) {
        trace.write_line("ERROR: No files to upload");
        return Ok(None);
    }
    let file = temp_in(tmp_dir)?;
    let handle = file
        .reopen()
        .map_err(|e| archive_err(ArchiveError::io(file.path(), e)))?;
    let filename = match format {
        ArtifactFormat::Zip => {
            write_zip(tar, &selection.entries, std::io::BufWriter::new(handle))
                .map_err(archive_err)?;
            format!("{}.zip", base_name(&artifact.name))
        }
        ArtifactFormat::Gzip => {
            write_gzip(tar, &selection.entries, std::io::BufWriter::new(handle))
                .map_err(archive_err)?;
            format!("{}.gz", base_name(&artifact.name))
        }
        // Like gitlab-runner: a raw artifact is named after the artifact, not the file.
        ArtifactFormat::Raw => {
            write_raw(tar, &selection.entries, std::io::BufWriter::new(handle))
                .map_err(archive_err)?;
            base_name(&artifact.name).to_string()
        }
    };
    let size = std::fs::metadata(file.path())
        .map_err(|e| archive_err(ArchiveError::io(file.path(), e)))?
        .len();
    let artifact_type = artifact
        .artifact_type
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| "archive".to_string());
    Ok(Some(BuiltArtifact {
        upload: ArtifactUpload {
            filename,
            artifact_format: format.as_str().to_string(),
            artifact_type,
            expire_in: artifact.expire_in.clone().filter(|e| !e.is_empty()),
            path: file.path().to_path_buf(),
        },
        size,
        entries: selection.entries.len(),
        _file: file,
    }))
}

/// Uploads one built archive: retries retryable errors per `retry`; a `413` is written to the
/// trace and returned at once as [`ArtifactsError::TooLarge`].
pub async fn upload_artifact(
    gitlab: &dyn GitLab,
    job_id: i64,
    job_token: &SecretString,
    built: &BuiltArtifact,
    retry: Retry,
    trace: &TraceSink,
) -> Result<(), ArtifactsError> {
    let what = format!(
        "Uploading artifacts as {:?} to coordinator...",
        built.upload.artifact_type
    );
    let attempts = retry.attempts.max(1);
    for attempt in 1..=attempts {
        match gitlab
            .upload_artifacts(job_id, job_token, &built.upload)
            .await
        {
            Ok(()) => {
                trace.write_line(&format!(
                    "{what} 201 Created  id={job_id} filename={} size={}",
                    built.upload.filename, built.size
                ));
                return Ok(());
            }
            Err(GitLabError::TooLarge { .. }) => {
                trace.write_line(&format!(
                    "\x1b[31;1mERROR: {what} too large archive  id={job_id} filename={} size={} responseStatus=413 Request Entity Too Large\x1b[0;m",
                    built.upload.filename, built.size
                ));
                trace.write_line(
                    "\x1b[31;1mERROR: the archive exceeds the maximum artifacts size GitLab accepts; upload fewer files or raise the limit\x1b[0;m",
                );
                return Err(ArtifactsError::TooLarge {
                    filename: built.upload.filename.clone(),
                    size: built.size,
                });
            }
            Err(e) if e.is_retryable() && attempt < attempts => {
                let wait = retry.wait(&e, attempt);
                trace.write_line(&format!(
                    "\x1b[0;33mWARNING: {what} failed: {e}; retrying in {}s (attempt {attempt}/{attempts})\x1b[0;m",
                    wait.as_secs_f32()
                ));
                tokio::time::sleep(wait).await;
            }
            Err(source) => {
                trace.write_line(&format!("\x1b[31;1mERROR: {what} failed: {source}\x1b[0;m"));
                return Err(ArtifactsError::Upload {
                    filename: built.upload.filename.clone(),
                    source,
                });
            }
        }
    }
    // The loop returns on its last attempt; this is reached only with attempts == 0.
    Err(ArtifactsError::Task(
        "no upload attempt was made".to_string(),
    ))
}

/// The whole "upload artifacts" step of a job: for every `artifacts` entry whose `when`
/// applies to `job_succeeded`, expands `vars` in its `name`/`paths`/`exclude`, builds the
/// archive from `tar` and uploads it. Tries every entry and returns the first error.
#[allow(clippy::too_many_arguments)]
pub async fn upload_job_artifacts(
    gitlab: &dyn GitLab,
    job: &JobResponse,
    vars: &[JobVariable],
    tar: &ProjectTar,
    project_dir: &str,
    tracked: Option<Arc<TrackedFiles>>,
    job_succeeded: bool,
    tmp_dir: &Path,
    retry: Retry,
    trace: &TraceSink,
) -> Result<(), ArtifactsError> {
    let mut wanted = Vec::new();
    for artifact in &job.artifacts {
        let when = When::parse(artifact.when.as_deref());
        if let When::Unknown(value) = &when {
            trace.write_line(&format!(
                "\x1b[0;33mWARNING: artifacts {:?}: unknown when {value:?}: not uploaded (as \
                 gitlab-runner; use on_success, on_failure or always)\x1b[0;m",
                artifact.name
            ));
        }
        if when.applies(job_succeeded) {
            let mut artifact = artifact.clone();
            artifact.name = expand_vars(&artifact.name, vars);
            artifact.paths = artifact
                .paths
                .iter()
                .map(|p| expand_vars(p, vars))
                .collect();
            artifact.exclude = artifact
                .exclude
                .iter()
                .map(|p| expand_vars(p, vars))
                .collect();
            wanted.push(artifact);
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    trace.write_line(if job_succeeded {
        "Uploading artifacts for successful job"
    } else {
        "Uploading artifacts for failed job"
    });
    let entries = {
        let tar = tar.clone();
        tokio::task::spawn_blocking(move || tar.entries())
            .await
            .map_err(|e| ArtifactsError::Task(e.to_string()))?
            .map_err(|source| ArtifactsError::Archive {
                name: "project archive".to_string(),
                source,
            })?
    };
    let entries = Arc::new(entries);
    let mut first_error = None;
    for artifact in wanted {
        trace.write_line("Uploading artifacts...");
        let built = {
            let (tar, entries, tracked) = (tar.clone(), entries.clone(), tracked.clone());
            let (project_dir, tmp_dir): (String, PathBuf) =
                (project_dir.to_string(), tmp_dir.to_path_buf());
            let trace = trace.clone();
            tokio::task::spawn_blocking(move || {
                build_artifact(
                    &artifact,
                    &tar,
                    &entries,
                    &project_dir,
                    tracked.as_deref(),
                    &tmp_dir,
                    &trace,
                )
            })
            .await
            .map_err(|e| ArtifactsError::Task(e.to_string()))?
        };
        let result = match built {
            Ok(Some(built)) => {
                upload_artifact(gitlab, job.id, &job.token, &built, retry, trace).await
            }
            Ok(None) => Ok(()),
            Err(e) => {
                trace.write_line(&format!("\x1b[31;1mERROR: {e}\x1b[0;m"));
                Err(e)
            }
        };
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> GitLabError {
        GitLabError::Status {
            endpoint: "upload_artifacts",
            status,
            body: String::new(),
        }
    }

    #[test]
    fn default_retries_ride_out_thirty_seconds_of_5xx() {
        let r = Retry::default();
        let waited: Duration = (1..r.attempts).map(|a| r.wait(&status(502), a)).sum();
        assert!(waited >= Duration::from_secs(30), "{waited:?}");
        assert_eq!(r.wait(&status(502), 1), Duration::from_secs(1));
        assert_eq!(r.wait(&status(502), 5), Duration::from_secs(16));
    }

    #[test]
    fn retry_after_replaces_the_doubling_within_its_bound() {
        let r = Retry::default();
        let later = |secs| GitLabError::RetryLater {
            endpoint: "upload_artifacts",
            status: 503,
            after: Duration::from_secs(secs),
            body: String::new(),
        };
        assert_eq!(r.wait(&later(7), 4), Duration::from_secs(7));
        assert_eq!(
            r.wait(&later(3600), 1),
            drover_gitlab::backoff::RETRY_AFTER_MAX
        );
    }

    #[test]
    fn archive_names_follow_gitlab_runner() {
        assert_eq!(base_name(""), "artifacts");
        assert_eq!(base_name("junit"), "junit");
        assert_eq!(base_name("a/b/report.xml"), "report.xml");
    }
}
