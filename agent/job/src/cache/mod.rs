//! Job caches kept on the agent's disk, per runner and project, as zip files.
//!
//! - [`key`]: cache keys as safe file names.
//! - [`policy`]: pure decisions (`policy`, `when`, fallback keys, `disable_cache`).
//! - [`store`]: the on-disk [`CacheStore`] with atomic writes and LRU eviction.
//! - [`remote`]: the distributed cache (`[runners.cache] Type = "s3"`) behind a store:
//!   restore downloads the archive into the local store first, save uploads what it wrote.
//!
//! [`restore_caches`] and [`save_caches`] are the two steps the executor calls around the
//! job's script. A cache problem never fails a job: it is written to the trace as a warning,
//! as gitlab-runner does.
//!
//! Invariant: no Docker here; caches enter and leave the container as tar files the executor
//! moves.

pub mod key;
pub mod policy;
pub mod remote;
pub mod store;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use key::{KeyError, sanitize_key};
pub use policy::{CachePlan, CachePlanError, CachePolicy};
pub use remote::{ObjectNames, Remote, RemoteCache, RemoteError, S3Remote};
pub use store::{CacheHit, CacheStore, DEFAULT_MAX_BYTES, SHARED_DIR, SaveOutcome};

use crate::artifacts::{ArchiveError, Owner, ProjectTar, SelectSpec};
use crate::expand::expand_vars;
use crate::sources::TrackedFiles;
use crate::sources::plan::variable;
use crate::trace::TraceSink;
use drover_gitlab::types::{JobResponse, JobVariable};

/// Errors of the cache store.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cache archive: {0}")]
    Archive(ArchiveError),
    #[error("cache worker task failed: {0}")]
    Task(String),
}

impl CacheError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> CacheError {
        CacheError::Io {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The decided `cache` entries of a job, with `vars` expanded in keys, paths and policy (as
/// gitlab-runner does). An unknown `when` is warned about (that cache is restored but never
/// saved, as in gitlab-runner); an unknown `policy` is an error that fails the job, as
/// gitlab-runner's `CheckPolicy` error does.
pub fn cache_plans(
    job: &JobResponse,
    vars: &[JobVariable],
    trace: &TraceSink,
) -> Result<Vec<CachePlan>, CachePlanError> {
    let fallback = variable(vars, "CACHE_FALLBACK_KEY").map(|k| expand_vars(k, vars));
    job.cache
        .iter()
        .map(|c| {
            let mut c = c.clone();
            c.key = expand_vars(&c.key, vars);
            c.paths = c.paths.iter().map(|p| expand_vars(p, vars)).collect();
            c.fallback_keys = c
                .fallback_keys
                .iter()
                .map(|k| expand_vars(k, vars))
                .collect();
            c.policy = c.policy.as_deref().map(|p| expand_vars(p, vars));
            c
        })
        .map(|c| {
            let plan = CachePlan::new(&c, fallback.as_deref())?;
            if let crate::artifacts::When::Unknown(value) = &plan.when {
                warn(
                    trace,
                    &format!(
                        "cache {:?}: unknown when {value:?}: never saved (as gitlab-runner; use \
                         on_success, on_failure or always)",
                        plan.key
                    ),
                );
            }
            Ok(plan)
        })
        .collect()
}

/// A restored cache as a tar for Docker's "put archive" into `CI_PROJECT_DIR`.
#[derive(Debug)]
pub struct RestoredCache {
    pub key: String,
    pub entries: usize,
    pub tar: tempfile::NamedTempFile,
}

fn warn(trace: &TraceSink, text: &str) {
    trace.write_line(&format!("\x1b[0;33mWARNING: {text}\x1b[0;m"));
}

/// The "restore cache" step: for every cache entry whose policy pulls, finds the first
/// existing key (`key`, `fallback_keys`, `CACHE_FALLBACK_KEY`) and converts its archive into
/// a tar in `tmp_dir`. Problems become warnings in the trace.
pub async fn restore_caches(
    store: &CacheStore,
    plans: &[CachePlan],
    project_id: i64,
    disable_cache: bool,
    owner: Owner,
    tmp_dir: &Path,
    trace: &TraceSink,
) -> Vec<RestoredCache> {
    let mut out = Vec::new();
    let wanted: Vec<&CachePlan> = plans.iter().filter(|p| p.policy.pulls()).collect();
    if wanted.is_empty() {
        return out;
    }
    if disable_cache {
        trace.write_line("Cache is disabled for this runner (disable_cache); not restoring");
        return out;
    }
    for plan in wanted {
        if let Some(remote) = store.remote() {
            download_first(store, remote, project_id, &plan.restore_keys, trace).await;
        }
        let (store, keys, tmp_dir) = (
            store.clone(),
            plan.restore_keys.clone(),
            tmp_dir.to_path_buf(),
        );
        let checked = keys.clone();
        // One "Checking cache" line per key tried, each followed by why it missed.
        let report_checks = |skipped: &[String]| {
            for (i, key) in checked.iter().enumerate() {
                trace.write_line(&format!("\x1b[32;1mChecking cache for {key}...\x1b[0;m"));
                match skipped.get(i) {
                    Some(reason) => warn(trace, reason),
                    None => break,
                }
            }
        };
        let result = tokio::task::spawn_blocking(move || -> Result<_, CacheError> {
            let mut skipped = Vec::new();
            let Some(hit) = store.restore(project_id, &keys, &mut skipped)? else {
                return Ok((None, skipped));
            };
            let tar = tempfile::Builder::new()
                .prefix("drover-cache-")
                .suffix(".tar")
                .tempfile_in(&tmp_dir)
                .map_err(|e| CacheError::io(&tmp_dir, e))?;
            let handle = tar.reopen().map_err(|e| CacheError::io(tar.path(), e))?;
            let mut w = std::io::BufWriter::new(handle);
            let entries = CacheStore::restore_tar(&hit, owner, &mut w)?;
            std::io::Write::flush(&mut w).map_err(|e| CacheError::io(tar.path(), e))?;
            Ok((Some((hit, entries, tar)), skipped))
        })
        .await
        .map_err(|e| CacheError::Task(e.to_string()))
        .and_then(|r| r);
        match result {
            Ok((Some((hit, entries, tar)), skipped)) => {
                report_checks(&skipped);
                trace.write_line(&format!(
                    "\x1b[32;1mSuccessfully extracted cache {}\x1b[0;m",
                    hit.key
                ));
                out.push(RestoredCache {
                    key: hit.key,
                    entries,
                    tar,
                });
            }
            Ok((None, skipped)) => {
                report_checks(&skipped);
                warn(trace, "no cache found; continuing without it");
            }
            Err(e) => warn(trace, &format!("Failed to extract cache: {e}")),
        }
    }
    out
}

/// The "save cache" step: for every cache entry whose policy pushes and whose `when` fits
/// the job result, archives the matching files of the project tar under its key.
#[allow(clippy::too_many_arguments)]
pub async fn save_caches(
    store: &CacheStore,
    plans: &[CachePlan],
    project_id: i64,
    disable_cache: bool,
    tar: &ProjectTar,
    project_dir: &str,
    tracked: Option<Arc<TrackedFiles>>,
    job_succeeded: bool,
    trace: &TraceSink,
) -> Vec<SaveOutcome> {
    let mut out = Vec::new();
    let wanted: Vec<&CachePlan> = plans
        .iter()
        .filter(|p| p.should_save(disable_cache, job_succeeded))
        .collect();
    if disable_cache && plans.iter().any(|p| p.policy.pushes()) {
        trace.write_line("Cache is disabled for this runner (disable_cache); not saving");
        return out;
    }
    if wanted.is_empty() {
        return out;
    }
    trace.write_line(if job_succeeded {
        "Saving cache for successful job"
    } else {
        "Saving cache for failed job"
    });
    let remote = store.remote().cloned();
    for plan in wanted {
        trace.write_line(&format!("\x1b[32;1mCreating cache {}...\x1b[0;m", plan.key));
        let spec = SelectSpec {
            paths: plan.paths.clone(),
            exclude: Vec::new(),
            untracked: plan.untracked,
            project_dir: project_dir.to_string(),
        };
        let (store, key, tar, tracked) = (
            store.clone(),
            plan.key.clone(),
            tar.clone(),
            tracked.clone(),
        );
        let result = tokio::task::spawn_blocking(move || {
            let mut messages = Vec::new();
            let r = store.save(
                project_id,
                &key,
                &tar,
                &spec,
                tracked.as_deref(),
                &mut messages,
            );
            (r, messages)
        })
        .await;
        let (result, messages) = match result {
            Ok(pair) => pair,
            Err(e) => (Err(CacheError::Task(e.to_string())), Vec::new()),
        };
        for m in &messages {
            trace.write_line(m);
        }
        match result {
            Ok(outcome) => {
                match &outcome {
                    SaveOutcome::Saved { size, evicted, .. } => {
                        if !evicted.is_empty() {
                            trace.write_line(&format!(
                                "Removed {} least recently used cache archive(s) to stay within the cache size bound",
                                evicted.len()
                            ));
                        }
                        trace
                            .write_line(&format!("\x1b[32;1mCreated cache\x1b[0;m ({size} bytes)"));
                        if let (Some(remote), SaveOutcome::Saved { path, size, .. }) =
                            (remote.as_ref(), &outcome)
                        {
                            upload(remote, project_id, &plan.key, path, *size, trace).await;
                        }
                    }
                    SaveOutcome::Empty { .. } => {
                        warn(trace, "Skipping cache archiving due to empty cache")
                    }
                    SaveOutcome::TooLarge { size, max_bytes } => warn(
                        trace,
                        &format!(
                            "cache archive is {size} bytes, more than this runner's cache size bound of {max_bytes} bytes; not stored"
                        ),
                    ),
                }
                out.push(outcome);
            }
            Err(e) => warn(trace, &format!("Failed to create cache {}: {e}", plan.key)),
        }
    }
    out
}

/// Downloads the first of `keys` the distributed cache holds into the local store (where the
/// local restore then finds it). A missing object is a line in the trace; a failure (server
/// down, refused, too large) is a warning and the local cache is used as it is.
async fn download_first(
    store: &CacheStore,
    remote: &Remote,
    project_id: i64,
    keys: &[String],
    trace: &TraceSink,
) {
    for key in keys {
        let (Ok(path), Ok(object)) = (
            store.archive_path(project_id, key),
            remote.names.object(project_id, key),
        ) else {
            // An unsafe key: the local restore says why.
            continue;
        };
        let at = remote.client.describe(&object);
        trace.write_line(&format!("Downloading cache from {at}"));
        match remote
            .client
            .download(&object, &path, store.max_bytes())
            .await
        {
            Ok(true) => {
                trace.write_line(&format!(
                    "\x1b[32;1mSuccessfully downloaded cache {key}\x1b[0;m"
                ));
                return;
            }
            Ok(false) => trace.write_line(&format!("No cache at {at}")),
            Err(e) => {
                warn(
                    trace,
                    &format!(
                        "could not download cache {key:?} from the distributed cache: {e}; using the cache on this box"
                    ),
                );
                return;
            }
        }
    }
}

/// Uploads a saved archive to the distributed cache, unless it is over
/// `MaxUploadedArchiveSize`; a failure is a warning (the job goes on, as with gitlab-runner).
async fn upload(
    remote: &Remote,
    project_id: i64,
    key: &str,
    path: &Path,
    size: u64,
    trace: &TraceSink,
) {
    if let Some(max) = remote.max_upload_bytes
        && size > max
    {
        warn(
            trace,
            &format!(
                "cache archive is {size} bytes, more than MaxUploadedArchiveSize = {max}; not uploaded (kept on this box)"
            ),
        );
        return;
    }
    let object = match remote.names.object(project_id, key) {
        Ok(o) => o,
        Err(e) => return warn(trace, &format!("Failed to upload cache: {e}")),
    };
    let at = remote.client.describe(&object);
    trace.write_line(&format!("Uploading cache to {at}"));
    match remote.client.upload(&object, path).await {
        Ok(()) => trace.write_line(&format!("\x1b[32;1mUploaded cache\x1b[0;m to {at}")),
        Err(e) => warn(
            trace,
            &format!(
                "Failed to upload cache {key:?} to the distributed cache: {e}; kept on this box only"
            ),
        ),
    }
}

/// Where a runner's caches live when the runner sets no `cache_dir`: `<data_dir>/cache`.
pub fn default_cache_root(data_dir: &Path) -> PathBuf {
    data_dir.join("cache")
}
