//! Job sources: the agent fetches the repository with the host `git` CLI into a host work
//! dir kept per runner, project and slot (so `GIT_STRATEGY=fetch` reuses it), then hands the
//! executor a tar of that dir to put into the build volume.
//!
//! - [`mod@plan`]: pure decisions from the payload and variables ([`SourcesPlan`]).
//! - [`git`]: running git ([`GitSource`]), with the job token only in git's environment.
//! - [`tarball`]: the work dir as a tar (modes, symlinks, `.git` kept).
//! - [`tracked`]: tracked files of the checkout, for `untracked: true`.
//!
//! Invariant: no Docker here, and the job token never appears in process arguments, in
//! URLs written to the trace, or in errors.
//!
//! # How the executor uses `sources`, `cache` and `artifacts` for one job
//! 1. `plan(&job, &vars, runner.clone_url)` then [`GitSource::get_sources`] into
//!    [`host_work_dir`]; unless the outcome is [`SourcesOutcome::Untouched`], empty
//!    `CI_PROJECT_DIR` in the container and put the tar from [`tar_work_dir`] there.
//!    Keep [`GitSource::tracked_files`] of the work dir for `untracked`.
//! 2. `artifacts::download_dependencies` → put each tar into `CI_PROJECT_DIR`.
//! 3. `cache::cache_plans` + `cache::restore_caches` → put each tar into `CI_PROJECT_DIR`.
//! 4. Run the script steps.
//! 5. Download `CI_PROJECT_DIR` as a tar to a file, wrap it in `artifacts::ProjectTar`
//!    (root = the directory's base name), then `cache::save_caches` and
//!    `artifacts::upload_job_artifacts`.

pub mod git;
pub mod plan;
pub mod tarball;
pub mod tracked;

use std::path::{Path, PathBuf};

pub use git::{GitSource, SourcesOutcome};
pub use plan::{GitStrategy, PlanError, SourcesPlan, SubmoduleStrategy, plan};
pub use tarball::write_dir_tar;
pub use tracked::TrackedFiles;

use crate::FailureReason;
use crate::artifacts::Owner;

/// Errors getting sources.
#[derive(Debug, thiserror::Error)]
pub enum SourcesError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// git exited non-zero; `output` is its last lines, credentials removed.
    #[error("git {step} failed ({status}): {output}")]
    Git {
        step: String,
        status: String,
        output: String,
    },
    #[error("run {git}: {source}")]
    Spawn {
        git: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("sources worker task failed: {0}")]
    Task(String),
}

impl SourcesError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SourcesError {
        SourcesError::Io {
            path: path.display().to_string(),
            source,
        }
    }

    /// How the executor reports a job whose sources could not be fetched.
    pub fn failure_reason(&self) -> FailureReason {
        match self {
            SourcesError::Plan(_) | SourcesError::Git { .. } => FailureReason::ScriptFailure,
            _ => FailureReason::RunnerSystemFailure,
        }
    }
}

/// The host work dir for one runner, project and concurrency slot:
/// `<root>/<runner>/project-<id>/slot-<n>`, `<runner>` as
/// [`crate::executor::names::dir_name`] derives it.
pub fn host_work_dir(root: &Path, runner: &str, project_id: i64, slot: u32) -> PathBuf {
    root.join(crate::executor::names::dir_name(runner))
        .join(format!("project-{project_id}"))
        .join(format!("slot-{slot}"))
}

/// Writes `work_dir` as a tar (entries under `prefix`, see [`write_dir_tar`]) to a new
/// temporary file in `tmp_dir`, for the executor to stream into Docker's "put archive".
pub async fn tar_work_dir(
    work_dir: &Path,
    prefix: &str,
    owner: Owner,
    tmp_dir: &Path,
) -> Result<tempfile::NamedTempFile, SourcesError> {
    let file = tempfile::Builder::new()
        .prefix("drover-sources-")
        .suffix(".tar")
        .tempfile_in(tmp_dir)
        .map_err(|e| SourcesError::io(tmp_dir, e))?;
    let handle = file
        .reopen()
        .map_err(|e| SourcesError::io(file.path(), e))?;
    let (dir, prefix) = (work_dir.to_path_buf(), prefix.to_string());
    tokio::task::spawn_blocking(move || {
        write_dir_tar(&dir, &prefix, owner, std::io::BufWriter::new(handle))
            .map_err(|e| SourcesError::io(&dir, e))
    })
    .await
    .map_err(|e| SourcesError::Task(e.to_string()))??;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_dirs_are_per_runner_project_and_slot() {
        let d = host_work_dir(Path::new("/var/lib/drover/builds"), "glrt-abc", 42, 1);
        assert_eq!(
            d,
            Path::new("/var/lib/drover/builds/glrt-abc/project-42/slot-1")
        );
        // Any text stays one component below the root; two texts that reduce to the same
        // characters stay apart.
        let root = Path::new("/var/lib/drover/builds");
        let a = host_work_dir(root, "ab/../cd", 42, 1);
        let b = host_work_dir(root, "ab_..-cd", 42, 1);
        assert_ne!(a, b);
        for d in [a, b] {
            assert_eq!(
                d.parent().and_then(Path::parent).and_then(Path::parent),
                Some(root)
            );
            assert!(!d.components().any(|c| c == std::path::Component::ParentDir));
        }
    }
}
