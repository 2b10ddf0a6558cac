//! `dependencies`: downloading the artifacts of earlier jobs, each with that job's own token,
//! and turning each zip into a tar for the executor to put into `CI_PROJECT_DIR`.

use std::path::{Path, PathBuf};

use super::ArchiveError;
use super::extract::zip_to_tar;
use super::tar_writer::Owner;
use super::upload::Retry;
use crate::FailureReason;
use crate::trace::TraceSink;
use drover_gitlab::types::JobResponse;
use drover_gitlab::{GitLab, GitLabError};

/// Errors fetching dependency artifacts.
#[derive(Debug, thiserror::Error)]
pub enum DependencyError {
    /// GitLab has no artifacts for the dependency (`404`) or refuses its token (`403`):
    /// expired, erased, or never uploaded.
    #[error("dependency {name:?} (job {id}): artifacts missing: {source}")]
    Missing {
        name: String,
        id: i64,
        #[source]
        source: GitLabError,
    },
    #[error("dependency {name:?} (job {id}): download artifacts: {source}")]
    Download {
        name: String,
        id: i64,
        #[source]
        source: GitLabError,
    },
    /// The archive is not a valid zip or holds an entry that escapes the project directory.
    #[error("dependency {name:?} (job {id}): {source}")]
    Archive {
        name: String,
        id: i64,
        #[source]
        source: ArchiveError,
    },
    #[error("create temporary file in {dir}: {source}")]
    TempFile {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error("dependency worker task failed: {0}")]
    Task(String),
}

impl DependencyError {
    /// How the executor reports a job whose dependencies could not be fetched.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            DependencyError::Missing { .. } => FailureReason::MissingDependencyFailure,
            DependencyError::Download { .. } => FailureReason::ApiFailure,
            DependencyError::Archive { .. } => FailureReason::ScriptFailure,
            DependencyError::TempFile { .. } | DependencyError::Task(_) => {
                FailureReason::RunnerSystemFailure
            }
        }
    }
}

/// One dependency's artifacts as a tar (entries relative to `CI_PROJECT_DIR`), ready for
/// Docker's "put archive". The temporary file lives as long as this value.
#[derive(Debug)]
pub struct DependencyArchive {
    pub name: String,
    pub id: i64,
    /// Entries in the tar.
    pub entries: usize,
    pub tar: tempfile::NamedTempFile,
}

impl DependencyArchive {
    /// The tar file to stream into the container.
    pub fn path(&self) -> &Path {
        self.tar.path()
    }
}

fn temp_in(dir: &Path, prefix: &str) -> Result<tempfile::NamedTempFile, DependencyError> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempfile_in(dir)
        .map_err(|source| DependencyError::TempFile {
            dir: dir.display().to_string(),
            source,
        })
}

/// Downloads every dependency that has an `artifacts_file`, in payload order, and converts
/// each to a tar. Stops at the first failure.
pub async fn download_dependencies(
    gitlab: &dyn GitLab,
    job: &JobResponse,
    tmp_dir: &Path,
    owner: Owner,
    retry: Retry,
    trace: &TraceSink,
) -> Result<Vec<DependencyArchive>, DependencyError> {
    let mut out = Vec::new();
    for dep in &job.dependencies {
        if !dep.has_artifacts() {
            continue;
        }
        trace.write_line(&format!(
            "Downloading artifacts for {} ({})...",
            dep.name, dep.id
        ));
        let zip_file = temp_in(tmp_dir, "drover-dependency-zip-")?;
        let attempts = retry.attempts.max(1);
        let mut attempt = 1;
        let size = loop {
            match gitlab
                .download_artifacts(dep.id, &dep.token, zip_file.path())
                .await
            {
                Ok(size) => break size,
                Err(source @ (GitLabError::NotFound { .. } | GitLabError::Forbidden { .. })) => {
                    trace.write_line(&format!(
                        "\x1b[31;1mERROR: Downloading artifacts from coordinator... not found or forbidden  id={}  {source}\x1b[0;m",
                        dep.id
                    ));
                    return Err(DependencyError::Missing {
                        name: dep.name.clone(),
                        id: dep.id,
                        source,
                    });
                }
                Err(e) if e.is_retryable() && attempt < attempts => {
                    trace.write_line(&format!(
                        "\x1b[0;33mWARNING: Downloading artifacts from coordinator... failed: {e}; retrying (attempt {attempt}/{attempts})\x1b[0;m"
                    ));
                    tokio::time::sleep(retry.wait(&e, attempt)).await;
                    attempt += 1;
                }
                Err(source) => {
                    trace.write_line(&format!(
                        "\x1b[31;1mERROR: Downloading artifacts from coordinator... failed  id={}  {source}\x1b[0;m",
                        dep.id
                    ));
                    return Err(DependencyError::Download {
                        name: dep.name.clone(),
                        id: dep.id,
                        source,
                    });
                }
            }
        };
        trace.write_line(&format!(
            "Downloading artifacts from coordinator... ok  id={} size={size}",
            dep.id
        ));
        let tar_file = temp_in(tmp_dir, "drover-dependency-tar-")?;
        let (zip_path, tar_path): (PathBuf, PathBuf) =
            (zip_file.path().to_path_buf(), tar_file.path().to_path_buf());
        let converted = tokio::task::spawn_blocking(move || -> Result<usize, ArchiveError> {
            let input =
                std::fs::File::open(&zip_path).map_err(|e| ArchiveError::io(&zip_path, e))?;
            let output =
                std::fs::File::create(&tar_path).map_err(|e| ArchiveError::io(&tar_path, e))?;
            let mut w = std::io::BufWriter::new(output);
            let n = zip_to_tar(std::io::BufReader::new(input), &mut w, owner)?;
            std::io::Write::flush(&mut w).map_err(|e| ArchiveError::io(&tar_path, e))?;
            Ok(n)
        })
        .await
        .map_err(|e| DependencyError::Task(e.to_string()))?;
        let entries = converted.map_err(|source| {
            trace.write_line(&format!(
                "\x1b[31;1mERROR: extracting artifacts of {} ({}): {source}\x1b[0;m",
                dep.name, dep.id
            ));
            DependencyError::Archive {
                name: dep.name.clone(),
                id: dep.id,
                source,
            }
        })?;
        out.push(DependencyArchive {
            name: dep.name.clone(),
            id: dep.id,
            entries,
            tar: tar_file,
        });
    }
    Ok(out)
}
