//! [`DockerExecutor`]: one job, start to end, in containers from the job image.
//!
//! Files: this one holds the executor, its options and the result line; `flow` the job
//! flow (prepare, services, script steps, `after_script`); `job_files` the helper-image
//! work done on the host (sources, dependencies, caches, artifacts); `containers` the
//! container lifecycle (create, feed, attach, start, wait, kill, remove); `container_body`
//! what a script container is made of; `janitor` orphan cleanup and kept volumes;
//! `interrupt` the cancel/deadline race every stage runs under.
//!
//! Flow: variables → prepare (host config, image, services on a per-job network) → sources
//! (host git, tar into the builds volume) → dependencies → cache restore → each script step
//! in its own container (first one is `-build`, receiving the queued tars) → `after_script`
//! in a fresh container → `CI_PROJECT_DIR` downloaded as a tar → cache save → artifacts
//! upload → remove every container, the network and the per-job volume → the result line.
//!
//! Invariants:
//! - Every container and network the job creates is removed before [`Executor::run`]
//!   returns, whatever happened (cancel, timeout, Docker errors); a killed agent's leftovers
//!   go with the agent's janitor (`drover_agent::janitor`).
//! - The executor prints everything the user sees, up to and including the result line
//!   (`Job succeeded` / `ERROR: Job failed: ...`); the runner loop prints nothing after it.
//! - After cancel nothing more runs but cleanup.

mod container_body;
mod containers;
mod disk_gc;
mod image_load;
pub use image_load::chain_ids;
mod flow;
mod interrupt;
mod janitor;
mod job_files;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

#[cfg(feature = "docker")]
use super::ExecutorError;
use super::api::ContainerApi;
#[cfg(feature = "docker")]
use super::engine::BollardApi;
use super::names::JobNames;
use super::{Executor, FailureReason, JobContext, JobOutcome};
use crate::cache;
use crate::disk::{DiskHook, Ledger};
use crate::sources::GitSource;
use crate::trace::TraceSink;

pub use disk_gc::{GcError, GcReport, GcRequest, KindUsage, Removed};
use interrupt::Interrupted;
pub use janitor::{CleanupReport, KeptVolume};

/// Job timeout when GitLab sends none (gitlab-runner's default: 1 hour).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// `after_script` timeout when its step sets none (gitlab-runner's default: 5 minutes).
pub const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeouts are capped (one year) so deadlines never overflow.
const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;

/// How to reach the Docker engine.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `[runners.docker] host`; `None` → `DOCKER_HOST`, else the local unix socket.
    pub host: Option<String>,
}

/// The Docker executor.
#[derive(Clone)]
pub struct DockerExecutor {
    pub(super) api: Arc<dyn ContainerApi>,
    storage: Arc<StorageOptions>,
    disk: Option<Arc<DiskHooks>>,
}

/// The disk ledger jobs record their uses in, and what runs before each job.
struct DiskHooks {
    ledger: Ledger,
    hook: Option<Arc<dyn DiskHook>>,
}

/// Where the agent keeps host-side job files, and their bounds.
#[derive(Debug, Clone)]
pub struct StorageOptions {
    /// The agent's data dir: `builds/` (git work dirs kept per runner, project and slot),
    /// `cache/` (cache zips per runner), `tmp/` (tars in transit, removed after each job).
    pub data_dir: PathBuf,
    /// Bound of each runner's cache store in bytes (least recently used evicted first).
    pub cache_max_bytes: u64,
    /// The git that fetches sources.
    pub git: GitSource,
}

impl StorageOptions {
    /// Where an agent keeps job files: `STATE_DIR/data`, in both modes, so two agents on a
    /// box (or a reboot clearing the temp dir) never share or lose caches and work dirs.
    pub fn in_state_dir(state_dir: &std::path::Path) -> Self {
        Self::new(state_dir.join("data"))
    }

    /// Storage below `data_dir`, default cache bound, `git` from `PATH`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageOptions {
            data_dir: data_dir.into(),
            cache_max_bytes: cache::DEFAULT_MAX_BYTES,
            git: GitSource::default(),
        }
    }
    pub(super) fn builds_root(&self) -> PathBuf {
        self.data_dir.join("builds")
    }
    pub(super) fn cache_root(&self) -> PathBuf {
        cache::default_cache_root(&self.data_dir)
    }
    pub(super) fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
}

/// How a job ended, with the text of its result line.
enum End {
    Success,
    Failed {
        reason: FailureReason,
        exit_code: Option<i32>,
        message: String,
    },
    Canceled,
}

impl End {
    /// The end of a job whose stage was interrupted; `on_deadline` words a passed deadline.
    fn interrupted(i: Interrupted, on_deadline: impl FnOnce() -> End) -> End {
        match i {
            Interrupted::Canceled => End::Canceled,
            Interrupted::DeadlinePassed => on_deadline(),
        }
    }

    fn system(e: impl std::fmt::Display) -> End {
        End::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
            message: format!("(system failure): {e}"),
        }
    }
}

/// What one job created, for cleanup.
struct JobState {
    pub(super) names: JobNames,
    /// Containers (script steps and services), removed at the end.
    pub(super) containers: Mutex<Vec<String>>,
    /// The per-job network's id, removed after the containers.
    pub(super) network: Mutex<Option<String>>,
    /// The last script container: `CI_PROJECT_DIR` is read from it for caches and artifacts.
    pub(super) last_script: Mutex<Option<String>>,
    /// Set once the first container received the directory and file-variable archive.
    pub(super) prepared: Mutex<bool>,
}

impl DockerExecutor {
    /// Connects to the engine (see [`ConnectOptions`]) and negotiates the API version.
    #[cfg(feature = "docker")]
    pub async fn connect(opts: ConnectOptions) -> Result<Self, ExecutorError> {
        let api = BollardApi::connect(opts.host.as_deref()).await?;
        Ok(Self::with_api(Arc::new(api)))
    }

    /// An executor on any [`ContainerApi`] (tests use a fake).
    /// Host files go below the system temp dir until [`DockerExecutor::with_storage`].
    pub fn with_api(api: Arc<dyn ContainerApi>) -> Self {
        DockerExecutor {
            api,
            storage: Arc::new(StorageOptions::new(
                std::env::temp_dir().join("drover-agent"),
            )),
            disk: None,
        }
    }

    /// Keeps host-side job files (git work dirs, caches, temp tars) as `storage` says.
    pub fn with_storage(mut self, storage: StorageOptions) -> Self {
        self.storage = Arc::new(storage);
        self
    }

    /// Jobs record the builds volume and images they use in `ledger` (and hold them while
    /// they run); `hook` runs around each job (the agent's collections).
    pub fn with_disk(mut self, ledger: Ledger, hook: Option<Arc<dyn DiskHook>>) -> Self {
        self.disk = Some(Arc::new(DiskHooks { ledger, hook }));
        self
    }

    /// Job `st` starts on the builds volume for `builds_dir`: recorded and held; when the
    /// collector removed that volume, the trace says what it costs.
    fn disk_job_started(&self, st: &JobState, builds_dir: &str, trace: &TraceSink) {
        let Some(d) = &self.disk else { return };
        let volume = st.names.builds_volume(builds_dir);
        match d.ledger.job_started(st.names.job_id, &volume, unix_now()) {
            Ok(Some(removed)) => trace.write_line(&format!(
                "\x1b[0;33mThe builds volume {volume} was removed by Drover's disk collector ({}, {}); this job starts from a fresh copy of the sources\x1b[0;m",
                removed.why,
                rfc3339(removed.at)
            )),
            Ok(None) => {}
            Err(e) => tracing::warn!(job = st.names.job_id, error = %e, "disk ledger"),
        }
    }

    /// Job `st` uses image `id` (named `reference`), pulled for it or not.
    fn disk_image_used(&self, st: &JobState, reference: &str, id: &str, pulled: bool) {
        let Some(d) = &self.disk else { return };
        if let Err(e) = d
            .ledger
            .image_used(st.names.job_id, reference, id, pulled, unix_now())
        {
            tracing::warn!(job = st.names.job_id, error = %e, "disk ledger");
        }
    }
}

/// Now, Unix seconds.
fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

#[async_trait]
impl Executor for DockerExecutor {
    async fn run(
        &self,
        ctx: &JobContext,
        trace: &TraceSink,
        cancel: CancellationToken,
    ) -> JobOutcome {
        let st = JobState {
            names: JobNames {
                agent_id: ctx.agent_id.clone(),
                runner_name: ctx.runner.name.clone(),
                short_token: ctx.runner_short_token.clone(),
                project_id: ctx.job.job_info.project_id,
                slot: ctx.slot,
                job_id: ctx.job.id,
            },
            containers: Mutex::new(Vec::new()),
            network: Mutex::new(None),
            last_script: Mutex::new(None),
            prepared: Mutex::new(false),
        };
        if let Some(b) = self.disk.as_ref().and_then(|d| d.hook.clone()) {
            b.before_job(trace).await;
        }
        let end = self.run_job(ctx, &st, trace, &cancel).await;
        self.cleanup(&st, trace).await;
        if let Some(d) = &self.disk {
            if let Err(e) = d.ledger.job_ended(st.names.job_id) {
                tracing::warn!(job = st.names.job_id, error = %e, "disk ledger");
            }
            if let Some(h) = &d.hook {
                h.after_job();
            }
        }
        match end {
            End::Success => {
                trace.write_line("\x1b[32;1mJob succeeded\x1b[0;m");
                JobOutcome::Success
            }
            End::Failed {
                reason,
                exit_code,
                message,
            } => {
                let sep = if message.starts_with('(') { " " } else { ": " };
                trace.write_line(&format!(
                    "\x1b[31;1mERROR: Job failed{sep}{message}\x1b[0;m"
                ));
                JobOutcome::Failed { reason, exit_code }
            }
            End::Canceled => {
                trace.write_line("\x1b[31;1mERROR: Job failed: canceled\x1b[0;m");
                JobOutcome::Canceled
            }
        }
    }
}
