//! [`DockerExecutor`]: one job, start to end, in containers from the job image.
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

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use drover_proto::spec::{DockerConfig, RunnerConfig};
use futures::StreamExt;
use secrecy::SecretString;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{ArchiveStream, ContainerApi};
#[cfg(feature = "docker")]
use super::engine::BollardApi;
use super::host_config::host_config;
use super::image::{check_allowed, credentials_for, ensure_image, image_name, pull_policies};
use super::names::{JobNames, LABEL_AGENT, LABEL_JOB, LABEL_KIND, LABEL_PROJECT, LABEL_RUNNER};
use super::script::{generate, quote, shell_command};
use super::services;
use super::spec::{ContainerSpec, HostSpec, VolumeMount};
use super::variables::{JobEnv, job_env};
use super::{Executor, ExecutorError, FailureReason, JobContext, JobOutcome};
use crate::artifacts::{self, Owner, ProjectTar, Retry};
use crate::cache::{self, CachePlan, CacheStore};
use crate::sources::{self, GitSource, SourcesError, SourcesOutcome, TrackedFiles, host_work_dir};
use crate::trace::TraceSink;
use drover_gitlab::types::{JobVariable, Step, StepWhen};

/// Job timeout when GitLab sends none (gitlab-runner's default: 1 hour).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// `after_script` timeout when its step sets none (gitlab-runner's default: 5 minutes).
pub const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeouts are capped (one year) so deadlines never overflow.
const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// How long output may keep coming after a container exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// How long after a script died of a signal the engine is asked again whether it is going
/// down (see [`DockerExecutor::daemon_stopped_it`]).
const DAEMON_RECHECK: Duration = Duration::from_secs(1);

/// How to reach the Docker engine.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    /// `[runners.docker] host`; `None` → `DOCKER_HOST`, else the local unix socket.
    pub host: Option<String>,
}

/// What [`DockerExecutor::cleanup_orphans`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub containers_removed: Vec<String>,
    pub volumes_removed: Vec<String>,
    pub networks_removed: Vec<String>,
    /// Objects that could not be removed, with the error.
    pub errors: Vec<String>,
}

/// The Docker executor.
#[derive(Clone)]
pub struct DockerExecutor {
    pub(super) api: Arc<dyn ContainerApi>,
    storage: Arc<StorageOptions>,
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
    /// Storage below `data_dir`, default cache bound, `git` from `PATH`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        StorageOptions {
            data_dir: data_dir.into(),
            cache_max_bytes: cache::DEFAULT_MAX_BYTES,
            git: GitSource::default(),
        }
    }
    fn builds_root(&self) -> PathBuf {
        self.data_dir.join("builds")
    }
    fn cache_root(&self) -> PathBuf {
        cache::default_cache_root(&self.data_dir)
    }
    fn tmp_dir(&self) -> PathBuf {
        self.data_dir.join("tmp")
    }
}

/// A volume kept between jobs on purpose (builds), as [`DockerExecutor::list_kept_volumes`]
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptVolume {
    pub name: String,
    pub runner: Option<String>,
    pub project: Option<String>,
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
    fn system(e: impl std::fmt::Display) -> End {
        End::Failed {
            reason: FailureReason::RunnerSystemFailure,
            exit_code: None,
            message: format!("(system failure): {e}"),
        }
    }
}

/// How one script container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepEnd {
    Exited(i64),
    TimedOut,
    Canceled,
}

/// Host-side files and decisions of one job (temporary files live as long as this).
struct JobFiles {
    /// Owner written into tars put into the container (the job's numeric `user`, else root).
    owner: Owner,
    /// `CI_PROJECT_DIR` in the container.
    project_dir: String,
    tmp_dir: PathBuf,
    /// Tars for the first script container, in order: (path in the container, file).
    pending: Vec<(String, tempfile::NamedTempFile)>,
    /// Tracked files of the checkout, for `untracked: true`.
    tracked: Option<Arc<TrackedFiles>>,
    cache_store: CacheStore,
    cache_plans: Vec<CachePlan>,
}

/// What one job created, for cleanup.
struct JobState {
    names: JobNames,
    /// Containers (script steps and services), removed at the end.
    containers: Mutex<Vec<String>>,
    /// The per-job network's id, removed after the containers.
    network: Mutex<Option<String>>,
    /// The last script container: `CI_PROJECT_DIR` is read from it for caches and artifacts.
    last_script: Mutex<Option<String>>,
    /// Set once the first container received the directory and file-variable archive.
    prepared: Mutex<bool>,
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
        }
    }

    /// Keeps host-side job files (git work dirs, caches, temp tars) as `storage` says.
    pub fn with_storage(mut self, storage: StorageOptions) -> Self {
        self.storage = Arc::new(storage);
        self
    }

    /// The volumes this agent keeps between jobs on purpose (builds volumes, reused by
    /// `GIT_STRATEGY=fetch`); the janitor leaves them. Remove them by hand to reclaim space.
    pub async fn list_kept_volumes(
        &self,
        agent_id: &str,
    ) -> Result<Vec<KeptVolume>, ExecutorError> {
        Ok(self
            .api
            .list_volumes(LABEL_AGENT, agent_id)
            .await?
            .into_iter()
            .filter(|v| v.labels.get(LABEL_KIND).map(String::as_str) == Some("builds"))
            .map(|v| KeptVolume {
                runner: v.labels.get(LABEL_RUNNER).cloned(),
                project: v.labels.get(LABEL_PROJECT).cloned(),
                name: v.name,
            })
            .collect())
    }

    /// Removes this agent's containers, networks and per-job volumes whose job is not in
    /// `keep_job_ids`. Only objects labelled `com.drover.agent=<agent_id>` are touched;
    /// builds volumes (kept between jobs on purpose) are left alone.
    pub async fn cleanup_orphans(
        &self,
        agent_id: &str,
        keep_job_ids: &[i64],
    ) -> Result<CleanupReport, ExecutorError> {
        let mut report = CleanupReport::default();
        let keep = |labels: &std::collections::HashMap<String, String>| {
            labels
                .get(LABEL_JOB)
                .and_then(|j| j.parse::<i64>().ok())
                .is_some_and(|j| keep_job_ids.contains(&j))
        };
        for c in self.api.list_containers(LABEL_AGENT, agent_id).await? {
            if c.labels.get(LABEL_AGENT).map(String::as_str) != Some(agent_id) || keep(&c.labels) {
                continue;
            }
            match self.api.remove(&c.id).await {
                Ok(()) => report.containers_removed.push(c.name),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for v in self.api.list_volumes(LABEL_AGENT, agent_id).await? {
            if v.labels.get(LABEL_AGENT).map(String::as_str) != Some(agent_id)
                || v.labels.get(LABEL_KIND).map(String::as_str) != Some("tmp")
                || keep(&v.labels)
            {
                continue;
            }
            match self.api.remove_volume(&v.name).await {
                Ok(()) => report.volumes_removed.push(v.name),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for n in self.api.list_networks(LABEL_AGENT, agent_id).await? {
            if n.labels.get(LABEL_AGENT).map(String::as_str) != Some(agent_id) || keep(&n.labels) {
                continue;
            }
            match self.api.remove_network(&n.id).await {
                Ok(()) => report.networks_removed.push(n.name),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        Ok(report)
    }

    async fn run_job(
        &self,
        ctx: &JobContext,
        st: &JobState,
        trace: &TraceSink,
        cancel: &CancellationToken,
    ) -> End {
        let job = &ctx.job;
        // `0` (or less, which `drover_gitlab::decode::check` refuses) is gitlab-runner's default.
        let timeout = match u64::try_from(job.runner_info.timeout) {
            Ok(0) | Err(_) => DEFAULT_JOB_TIMEOUT,
            Ok(s) => Duration::from_secs(s.min(MAX_TIMEOUT_SECS)),
        };
        let deadline = Instant::now() + timeout;
        let docker = ctx.runner.docker.clone().unwrap_or_default();

        let env = match job_env(ctx, timeout.as_secs()) {
            Ok(env) => env,
            Err(e) => return End::system(e),
        };

        // prepare_executor
        trace.section_start("prepare_executor", "Preparing the \"docker\" executor");
        let prepared = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(End::Canceled),
            _ = tokio::time::sleep_until(deadline) => Err(timeout_end(timeout)),
            r = self.prepare(ctx, &docker, trace) => r,
        };
        let (image_id, mut hc) = match prepared {
            Ok(p) => p,
            Err(end) => {
                trace.section_end("prepare_executor");
                return end;
            }
        };
        let network = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(End::Canceled),
            _ = tokio::time::sleep_until(deadline) => Err(timeout_end(timeout)),
            r = self.start_services(ctx, st, &docker, &env, trace) => r,
        };
        trace.section_end("prepare_executor");
        match network {
            Ok(Some(net)) if hc.network_mode.is_none() => hc.network_mode = Some(net),
            Ok(_) => {}
            Err(end) => return end,
        }

        // prepare_script
        trace.section_start("prepare_script", "Preparing environment");
        trace.write_line(&format!("Running on {} ...", st.names.container("build")));
        trace.section_end("prepare_script");

        let layout = !env.files.is_empty() || !self.runs_as_root(&docker, &image_id).await;
        let base = BuildBase {
            layout,
            image_id,
            hc,
            docker: &docker,
            env: &env,
            entrypoint: job
                .image
                .as_ref()
                .map(|i| i.entrypoint.clone())
                .unwrap_or_default(),
        };
        let vars = job_variables(&env);
        let mut work = match self.job_files(ctx, &docker, &vars, &env.project_dir, trace) {
            Ok(w) => w,
            Err(e) => return End::system(e),
        };

        // get_sources (the section is written by `sources`), dependencies, caches.
        let prepared = async {
            self.get_sources(ctx, st, &base, &vars, &mut work, trace, deadline, cancel)
                .await?;
            self.download_dependencies(ctx, &mut work, trace).await?;
            self.restore_caches(ctx, &docker, &mut work, trace).await;
            Ok::<(), End>(())
        }
        .await;
        if let Err(end) = prepared {
            if matches!(end, End::Canceled) {
                return end;
            }
            return self.after_script(ctx, st, &base, trace, cancel, end).await;
        }
        let mut pending: Vec<(String, ArchiveStream)> = Vec::new();
        for (path, file) in &work.pending {
            match file_stream(file.path()) {
                Ok(stream) => pending.push((path.clone(), stream)),
                Err(e) => return End::system(e),
            }
        }
        let mut sources_archive = Some(pending);

        // Script steps, in order.
        let mut end = End::Success;
        let mut timed_out = false;
        for step in job.steps.iter().filter(|s| s.name != "after_script") {
            if timed_out || !should_run(&step.when, &end) {
                continue;
            }
            let section = format!("step_{}", step.name);
            trace.section_start(
                &section,
                &format!("Executing \"{section}\" stage of the job script"),
            );
            let kind = if step.name == "script" {
                "build".to_string()
            } else {
                step.name.replace('_', "-")
            };
            let script = generate(&env.project_dir, &[], &step_commands(step, &ctx.runner));
            let archives = sources_archive.take().unwrap_or_default();
            let step_deadline = match u64::try_from(step.timeout) {
                Ok(s) if s > 0 => {
                    deadline.min(Instant::now() + Duration::from_secs(s.min(MAX_TIMEOUT_SECS)))
                }
                _ => deadline,
            };
            let res = self
                .run_container(
                    st,
                    &base,
                    &kind,
                    &[],
                    script,
                    archives,
                    trace,
                    step_deadline,
                    cancel,
                )
                .await;
            trace.section_end(&section);
            match res {
                Ok(StepEnd::Exited(0)) => {}
                Ok(StepEnd::Exited(code)) if step.allow_failure => {
                    trace.write_line(&format!(
                        "\x1b[0;33mWARNING: step \"{}\" failed with exit code {code}, allowed to fail\x1b[0;m",
                        step.name
                    ));
                }
                Ok(StepEnd::Exited(code)) if self.daemon_stopped_it(code).await => {
                    end = End::system(format!(
                        "the script was stopped with exit code {code}; the Docker daemon stopped or restarted during the job"
                    ));
                }
                Ok(StepEnd::Exited(code)) => {
                    end = End::Failed {
                        reason: FailureReason::ScriptFailure,
                        exit_code: Some(code as i32),
                        message: format!("exit code {code}"),
                    };
                }
                Ok(StepEnd::TimedOut) => {
                    timed_out = true;
                    end = if Instant::now() >= deadline {
                        timeout_end(timeout)
                    } else {
                        End::Failed {
                            reason: FailureReason::JobExecutionTimeout,
                            exit_code: None,
                            message: format!(
                                "step \"{}\" took longer than {} seconds",
                                step.name, step.timeout
                            ),
                        }
                    };
                }
                Ok(StepEnd::Canceled) => return End::Canceled,
                Err(e) => {
                    // Say so when the engine itself went away (stopped or restarting).
                    end = if self.engine_answers().await {
                        End::system(e)
                    } else {
                        End::system(format!(
                            "{e}; the Docker daemon stopped or restarted during the job"
                        ))
                    };
                }
            }
        }
        let end = self.after_script(ctx, st, &base, trace, cancel, end).await;
        self.archive_results(ctx, st, &base, &vars, &work, trace, end)
            .await
    }

    /// The host-side files of one job: temp dir, tar owner, cache store and plans.
    fn job_files(
        &self,
        ctx: &JobContext,
        docker: &DockerConfig,
        vars: &[JobVariable],
        job_project_dir: &str,
        trace: &TraceSink,
    ) -> Result<JobFiles, ExecutorError> {
        let tmp_dir = self.storage.tmp_dir();
        std::fs::create_dir_all(&tmp_dir).map_err(|source| ExecutorError::Archive {
            what: format!("temporary directory {}", tmp_dir.display()),
            source,
        })?;
        let runner_key = if ctx.runner.name.is_empty() {
            ctx.runner_short_token.clone()
        } else {
            ctx.runner.name.clone()
        };
        Ok(JobFiles {
            owner: owner_of(docker.user.as_deref()),
            project_dir: job_project_dir.to_string(),
            tmp_dir,
            pending: Vec::new(),
            tracked: None,
            cache_store: CacheStore::new(
                &self.storage.cache_root(),
                &runner_key,
                self.storage.cache_max_bytes,
            ),
            cache_plans: cache::cache_plans(&ctx.job, vars, trace)
                .map_err(|e| ExecutorError::Cache(e.to_string()))?,
        })
    }

    /// `cache`: restores each pulled cache into the queue for the first script container.
    /// Never fails the job.
    async fn restore_caches(
        &self,
        ctx: &JobContext,
        docker: &DockerConfig,
        work: &mut JobFiles,
        trace: &TraceSink,
    ) {
        if !work.cache_plans.iter().any(|p| p.policy.pulls()) {
            return;
        }
        trace.section_start("restore_cache", "Restoring cache");
        let restored = cache::restore_caches(
            &work.cache_store,
            &work.cache_plans,
            ctx.job.job_info.project_id,
            docker.disable_cache == Some(true),
            work.owner,
            &work.tmp_dir,
            trace,
        )
        .await;
        trace.section_end("restore_cache");
        for r in restored {
            work.pending.push((work.project_dir.clone(), r.tar));
        }
    }

    /// Runs `after_script` when its `when` says so; its result never changes `end`.
    async fn after_script(
        &self,
        ctx: &JobContext,
        st: &JobState,
        base: &BuildBase<'_>,
        trace: &TraceSink,
        cancel: &CancellationToken,
        end: End,
    ) -> End {
        let Some(step) = ctx.job.steps.iter().find(|s| s.name == "after_script") else {
            return end;
        };
        if step.script.iter().all(|c| c.trim().is_empty()) || !should_run(&step.when, &end) {
            return end;
        }
        trace.section_start("after_script", "Running after_script");
        trace.write_line("Running after script...");
        let timeout = u64::try_from(step.timeout)
            .ok()
            .filter(|t| *t > 0)
            .map(|t| Duration::from_secs(t.min(MAX_TIMEOUT_SECS)))
            .unwrap_or(DEFAULT_AFTER_SCRIPT_TIMEOUT);
        let status = match &end {
            End::Success => "success",
            End::Failed { .. } => "failed",
            End::Canceled => "canceled",
        };
        let script = generate(&base.env.project_dir, &[], &step.script);
        let res = self
            .run_container(
                st,
                base,
                "after-script",
                &[("CI_JOB_STATUS", status)],
                script,
                Vec::new(),
                trace,
                Instant::now() + timeout,
                cancel,
            )
            .await;
        match res {
            Ok(StepEnd::Exited(0)) => {}
            Ok(StepEnd::Exited(code)) => trace.write_line(&format!(
                "\x1b[0;33mWARNING: after_script failed, but job will continue unaffected: exit code {code}\x1b[0;m"
            )),
            Ok(StepEnd::TimedOut) => trace.write_line(&format!(
                "\x1b[0;33mWARNING: after_script failed, but job will continue unaffected: execution took longer than {} seconds\x1b[0;m",
                timeout.as_secs()
            )),
            Ok(StepEnd::Canceled) => {
                trace.section_end("after_script");
                return End::Canceled;
            }
            Err(e) => trace.write_line(&format!(
                "\x1b[0;33mWARNING: after_script failed, but job will continue unaffected: {e}\x1b[0;m"
            )),
        }
        trace.section_end("after_script");
        end
    }

    /// Host config and image; an `Err` is the job's end.
    async fn prepare(
        &self,
        ctx: &JobContext,
        docker: &DockerConfig,
        trace: &TraceSink,
    ) -> Result<(String, HostSpec), End> {
        let hc = host_config(docker).map_err(End::system)?;
        let image = image_name(&ctx.job, docker).map_err(End::system)?;
        trace.write_line(&format!("Using Docker executor with image {image} ..."));
        let pull_failure = |e: ExecutorError| End::Failed {
            reason: FailureReason::ImagePullFailure,
            exit_code: None,
            message: e.to_string(),
        };
        check_allowed(&image, &docker.allowed_images).map_err(pull_failure)?;
        let job_policies = ctx
            .job
            .image
            .as_ref()
            .map(|i| i.pull_policy.clone())
            .unwrap_or_default();
        let policies = pull_policies(docker, &job_policies).map_err(pull_failure)?;
        let creds = credentials_for(&image, &ctx.job.credentials);
        let id = match ensure_image(self.api.as_ref(), &image, &policies, creds, trace).await {
            Ok(id) => id,
            Err(e @ ExecutorError::Image(_)) => return Err(pull_failure(e)),
            Err(e) => return Err(End::system(e)),
        };
        trace.write_line(&format!("Using docker image {id} for {image} ..."));
        Ok((id, hc))
    }

    /// Handles `GIT_STRATEGY` with the host git ([`crate::sources`]): the work dir kept per
    /// runner, project and slot is brought up to date, `CI_PROJECT_DIR` is emptied in a
    /// `get-sources` container, and the work dir's tar is queued for the first script
    /// container. `GIT_STRATEGY=none` touches nothing.
    #[allow(clippy::too_many_arguments)]
    async fn get_sources(
        &self,
        ctx: &JobContext,
        st: &JobState,
        base: &BuildBase<'_>,
        vars: &[JobVariable],
        work: &mut JobFiles,
        trace: &TraceSink,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(), End> {
        let storage = &self.storage;
        let sources_failure = |e: SourcesError| End::Failed {
            reason: e.failure_reason(),
            exit_code: None,
            message: e.to_string(),
        };
        let plan = sources::plan(&ctx.job, vars, ctx.runner.clone_url.as_deref())
            .map_err(|e| sources_failure(SourcesError::Plan(e)))?;
        let mut git = storage.git.clone();
        if let Some(ca) = ctx.runner.tls_ca_file.as_deref().filter(|c| !c.is_empty()) {
            git = git.with_ca_file(ca);
        }
        let work_dir = host_work_dir(
            &storage.builds_root(),
            &ctx.runner_short_token,
            ctx.job.job_info.project_id,
            ctx.slot,
        );
        let outcome = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(End::Canceled),
            _ = tokio::time::sleep_until(deadline) => return Err(End::Failed {
                reason: FailureReason::JobExecutionTimeout,
                exit_code: None,
                message: "execution took longer than the job timeout".to_string(),
            }),
            r = git.get_sources(&plan, &ctx.job.token, &work_dir, &base.env.project_dir, trace) => r,
        }
        .map_err(sources_failure)?;
        if outcome == SourcesOutcome::Untouched {
            return Ok(());
        }
        // Empty the directory in a container of its own, before the archive goes into the
        // first script container.
        let dir = quote(&base.env.project_dir);
        let script = generate(
            &base.env.builds_dir,
            &[format!("rm -rf -- {dir}"), format!("mkdir -p {dir}")],
            &[],
        );
        match self
            .run_container(
                st,
                base,
                "get-sources",
                &[],
                script,
                Vec::new(),
                trace,
                deadline,
                cancel,
            )
            .await
        {
            Ok(StepEnd::Exited(0)) => {}
            Ok(StepEnd::Exited(code)) => {
                return Err(End::system(format!(
                    "emptying {dir} failed with exit code {code}"
                )));
            }
            Ok(StepEnd::TimedOut) => {
                return Err(End::Failed {
                    reason: FailureReason::JobExecutionTimeout,
                    exit_code: None,
                    message: "execution took longer than the job timeout".to_string(),
                });
            }
            Ok(StepEnd::Canceled) => return Err(End::Canceled),
            Err(e) => return Err(End::system(e)),
        }
        let tar = sources::tar_work_dir(&work_dir, "", work.owner, &work.tmp_dir)
            .await
            .map_err(sources_failure)?;
        work.pending.push((base.env.project_dir.clone(), tar));
        if outcome == SourcesOutcome::Repository {
            match git.tracked_files(&work_dir).await {
                Ok(t) => work.tracked = Some(Arc::new(t)),
                Err(e) => tracing::warn!("tracked files of {}: {e}", work_dir.display()),
            }
        }
        Ok(())
    }

    /// `dependencies`: downloads each dependency's artifacts and queues them for the first
    /// script container.
    async fn download_dependencies(
        &self,
        ctx: &JobContext,
        work: &mut JobFiles,
        trace: &TraceSink,
    ) -> Result<(), End> {
        if !ctx.job.dependencies.iter().any(|d| d.has_artifacts()) {
            return Ok(());
        }
        trace.section_start("download_artifacts", "Downloading artifacts");
        let result = artifacts::download_dependencies(
            ctx.gitlab.as_ref(),
            &ctx.job,
            &work.tmp_dir,
            work.owner,
            Retry::default(),
            trace,
        )
        .await;
        trace.section_end("download_artifacts");
        match result {
            Ok(list) => {
                for d in list {
                    work.pending.push((work.project_dir.clone(), d.tar));
                }
                Ok(())
            }
            Err(e) => Err(End::Failed {
                reason: e.failure_reason(),
                exit_code: None,
                message: e.to_string(),
            }),
        }
    }

    /// Downloads `CI_PROJECT_DIR` from the last script container as a tar, then saves caches
    /// and uploads artifacts as the job's result says. Returns the (maybe changed) end.
    #[allow(clippy::too_many_arguments)]
    async fn archive_results(
        &self,
        ctx: &JobContext,
        st: &JobState,
        base: &BuildBase<'_>,
        vars: &[JobVariable],
        work: &JobFiles,
        trace: &TraceSink,
        end: End,
    ) -> End {
        if matches!(end, End::Canceled) {
            return end;
        }
        let succeeded = matches!(end, End::Success);
        let disable_cache = base.docker.disable_cache == Some(true);
        let cache_wanted = work.cache_plans.iter().any(|p| p.policy.pushes());
        // An unknown `when` is warned about by the upload step.
        let artifacts_wanted = ctx.job.artifacts.iter().any(|a| {
            let when = artifacts::When::parse(a.when.as_deref());
            when.applies(succeeded) || matches!(when, artifacts::When::Unknown(_))
        });
        if !cache_wanted && !artifacts_wanted {
            return end;
        }
        let Some(container) = st.last_script.lock().ok().and_then(|l| l.clone()) else {
            return end;
        };
        let project_tar = match self
            .download_project(&container, &base.env.project_dir, &work.tmp_dir)
            .await
        {
            Ok(t) => t,
            Err(e) => {
                trace.write_line(&format!(
                    "\x1b[0;33mWARNING: could not read {} for caches and artifacts: {e}\x1b[0;m",
                    base.env.project_dir
                ));
                return match end {
                    End::Success if artifacts_wanted => End::system(e),
                    other => other,
                };
            }
        };
        let root = base
            .env
            .project_dir
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let tar = ProjectTar::new(project_tar.path(), &root);
        if cache_wanted {
            let section = if succeeded {
                "archive_cache"
            } else {
                "archive_cache_on_failure"
            };
            trace.section_start(section, "Saving cache");
            cache::save_caches(
                &work.cache_store,
                &work.cache_plans,
                ctx.job.job_info.project_id,
                disable_cache,
                &tar,
                &base.env.project_dir,
                work.tracked.clone(),
                succeeded,
                trace,
            )
            .await;
            trace.section_end(section);
        }
        if artifacts_wanted {
            let section = if succeeded {
                "upload_artifacts_on_success"
            } else {
                "upload_artifacts_on_failure"
            };
            trace.section_start(section, "Uploading artifacts");
            let result = artifacts::upload_job_artifacts(
                ctx.gitlab.as_ref(),
                &ctx.job,
                vars,
                &tar,
                &base.env.project_dir,
                work.tracked.clone(),
                succeeded,
                &work.tmp_dir,
                Retry::default(),
                trace,
            )
            .await;
            trace.section_end(section);
            if let Err(e) = result
                && matches!(end, End::Success)
            {
                return End::Failed {
                    reason: e.failure_reason(),
                    exit_code: None,
                    message: e.to_string(),
                };
            }
        }
        end
    }

    /// `path` in container `id` as a tar file in `tmp_dir`.
    async fn download_project(
        &self,
        id: &str,
        path: &str,
        tmp_dir: &Path,
    ) -> Result<tempfile::NamedTempFile, ExecutorError> {
        let io_err = |source| ExecutorError::Archive {
            what: format!("download of {path}"),
            source,
        };
        let file = tempfile::Builder::new()
            .prefix("drover-project-")
            .suffix(".tar")
            .tempfile_in(tmp_dir)
            .map_err(io_err)?;
        let mut out = tokio::fs::File::create(file.path()).await.map_err(io_err)?;
        let mut stream = self.api.download_archive(id, path).await?;
        while let Some(chunk) = stream.next().await {
            out.write_all(&chunk.map_err(io_err)?)
                .await
                .map_err(io_err)?;
        }
        out.flush().await.map_err(io_err)?;
        Ok(file)
    }

    /// Starts the job's services on a per-job network (or `network_mode`) and waits for
    /// them; returns the network the build containers join (`None`: no services).
    async fn start_services(
        &self,
        ctx: &JobContext,
        st: &JobState,
        docker: &DockerConfig,
        env: &JobEnv,
        trace: &TraceSink,
    ) -> Result<Option<String>, End> {
        if ctx.job.services.is_empty() {
            return Ok(None);
        }
        let network = match docker.network_mode.as_deref().filter(|n| !n.is_empty()) {
            Some(n) => n.to_string(),
            None => {
                let name = st.names.network();
                let id = self
                    .api
                    .create_network(&name, st.names.labels("network", true))
                    .await
                    .map_err(End::system)?;
                if let Ok(mut n) = st.network.lock() {
                    *n = Some(id);
                }
                name
            }
        };
        let record = |id: String| {
            if let Ok(mut c) = st.containers.lock() {
                c.push(id);
            }
        };
        let started = services::start_services(
            self.api.as_ref(),
            &ctx.job,
            docker,
            env,
            &st.names,
            &network,
            trace,
            &record,
        )
        .await
        .map_err(|e| match e {
            ExecutorError::Image(_) => End::Failed {
                reason: FailureReason::ImagePullFailure,
                exit_code: None,
                message: e.to_string(),
            },
            e => End::system(e),
        })?;
        if let Some(timeout) = services::wait_timeout(docker) {
            services::wait_for_services(self.api.as_ref(), &started, &network, timeout, trace)
                .await;
        }
        Ok(Some(network))
    }

    /// Creates, feeds and runs one script container; output goes to `trace`. The container
    /// is recorded for removal at the end of the job.
    #[allow(clippy::too_many_arguments)]
    async fn run_container(
        &self,
        st: &JobState,
        base: &BuildBase<'_>,
        kind: &str,
        extra_env: &[(&str, &str)],
        script: String,
        archives: Vec<(String, ArchiveStream)>,
        trace: &TraceSink,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<StepEnd, ExecutorError> {
        if cancel.is_cancelled() {
            return Ok(StepEnd::Canceled);
        }
        let name = st.names.container(kind);
        let body = base.body(&st.names, kind, extra_env);
        let id = self.api.create(&name, body).await?;
        if let Ok(mut c) = st.containers.lock() {
            c.push(id.clone());
        }
        if let Ok(mut l) = st.last_script.lock() {
            *l = Some(id.clone());
        }
        let first = st
            .prepared
            .lock()
            .map(|mut p| !std::mem::replace(&mut *p, true))
            .unwrap_or(false);
        if first && base.layout {
            let tar = layout_archive(base.env)?;
            self.api.put_archive(&id, "/", single(tar)).await?;
        }
        for (path, archive) in archives {
            self.api.put_archive(&id, &path, archive).await?;
        }
        let attached = self.api.attach(&id).await?;
        let mut output = attached.output;
        let mut input = attached.input;
        self.api.start(&id).await?;
        let feeder = tokio::spawn(async move {
            // A shell that exits early closes stdin; that is not our error to report.
            let _ = input.write_all(script.as_bytes()).await;
            let _ = input.shutdown().await;
        });

        let wait = self.api.wait(&id);
        tokio::pin!(wait);
        let mut exit: Option<i64> = None;
        let mut output_done = false;
        let mut drain_until = deadline;
        let result = loop {
            if exit.is_some() && output_done {
                break Ok(StepEnd::Exited(exit.unwrap_or_default()));
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    self.kill_logged(&id).await;
                    break Ok(StepEnd::Canceled);
                }
                _ = tokio::time::sleep_until(deadline), if exit.is_none() => {
                    self.kill_logged(&id).await;
                    break Ok(StepEnd::TimedOut);
                }
                chunk = output.next(), if !output_done => match chunk {
                    Some(Ok(b)) => trace.write(&b),
                    Some(Err(e)) => {
                        tracing::warn!(container = %name, "output stream failed: {e}");
                        output_done = true;
                    }
                    None => output_done = true,
                },
                code = &mut wait, if exit.is_none() => match code {
                    Ok(c) => {
                        exit = Some(c);
                        drain_until = Instant::now() + OUTPUT_DRAIN;
                    }
                    Err(e) => {
                        self.kill_logged(&id).await;
                        break Err(e);
                    }
                },
                _ = tokio::time::sleep_until(drain_until), if exit.is_some() => {
                    break Ok(StepEnd::Exited(exit.unwrap_or_default()));
                }
            }
        };
        feeder.abort();
        result
    }

    /// Whether a script that died of a signal (exit code above 128) was stopped by the Docker
    /// daemon shutting down rather than by its own doing. A daemon that shuts down closes its
    /// API first and then stops every container with SIGTERM, so the engine no longer
    /// answering right after such an exit (asked twice, [`DAEMON_RECHECK`] apart, in case
    /// the API was still closing) is the sign.
    async fn daemon_stopped_it(&self, code: i64) -> bool {
        if code <= 128 {
            return false;
        }
        if !self.engine_answers().await {
            return true;
        }
        tokio::time::sleep(DAEMON_RECHECK).await;
        !self.engine_answers().await
    }

    /// Whether the Docker engine still answers (the one probe the job flow uses to tell a
    /// failed call or a killed script from a daemon that went away).
    async fn engine_answers(&self) -> bool {
        self.api.engine_info().await.is_ok()
    }

    /// Whether the job's containers run as root: `[runners.docker] user`, else the image's
    /// own user. Unknown (the inspection failed) counts as not root.
    async fn runs_as_root(&self, docker: &DockerConfig, image_id: &str) -> bool {
        let user = match docker.user.as_deref().filter(|u| !u.is_empty()) {
            Some(u) => u.to_string(),
            None => match self.api.image_user(image_id).await {
                Ok(u) => u,
                Err(e) => {
                    tracing::debug!("{e}");
                    return false;
                }
            },
        };
        matches!(user.split(':').next().unwrap_or(""), "" | "root" | "0")
    }

    async fn kill_logged(&self, id: &str) {
        if let Err(e) = self.api.kill(id).await {
            tracing::warn!("{e}");
        }
    }

    /// Removes the job's containers and its per-job volume.
    async fn cleanup(&self, st: &JobState, trace: &TraceSink) {
        let ids = st.containers.lock().map(|c| c.clone()).unwrap_or_default();
        for id in ids {
            if let Err(e) = self.api.remove(&id).await {
                tracing::warn!("{e}");
                trace.write_line(&format!("\x1b[0;33mWARNING: {e}\x1b[0;m"));
            }
        }
        let network = st.network.lock().ok().and_then(|mut n| n.take());
        if let Some(net) = network
            && let Err(e) = self.api.remove_network(&net).await
        {
            tracing::warn!("{e}");
            trace.write_line(&format!("\x1b[0;33mWARNING: {e}\x1b[0;m"));
        }
        let prepared = st.prepared.lock().map(|p| *p).unwrap_or(true);
        if prepared {
            trace.section_start(
                "cleanup_file_variables",
                "Cleaning up project directory and file based variables",
            );
            if let Err(e) = self.api.remove_volume(&st.names.tmp_volume()).await {
                tracing::warn!("{e}");
                trace.write_line(&format!("\x1b[0;33mWARNING: {e}\x1b[0;m"));
            }
            trace.section_end("cleanup_file_variables");
        }
    }
}

fn timeout_end(timeout: Duration) -> End {
    End::Failed {
        reason: FailureReason::JobExecutionTimeout,
        exit_code: None,
        message: format!("execution took longer than {} seconds", timeout.as_secs()),
    }
}

/// The commands of a script step: for `script`, the runner's `pre_build_script` before
/// and `post_build_script` after, in the same shell, as gitlab-runner does.
fn step_commands(step: &Step, runner: &RunnerConfig) -> Vec<String> {
    if step.name != "script" {
        return step.script.clone();
    }
    let extra = |s: &Option<String>| s.clone().filter(|s| !s.trim().is_empty());
    extra(&runner.pre_build_script)
        .into_iter()
        .chain(step.script.iter().cloned())
        .chain(extra(&runner.post_build_script))
        .collect()
}

/// Whether a step with `when` runs given how the job stands (gitlab-runner's
/// `StepWhen.OnSuccess`/`OnFailure`).
fn should_run(when: &StepWhen, end: &End) -> bool {
    match end {
        End::Canceled => false,
        End::Success => when.on_success(),
        End::Failed { .. } => when.on_failure(),
    }
}

fn single(b: Vec<u8>) -> ArchiveStream {
    futures::stream::once(async move { Ok(Bytes::from(b)) }).boxed()
}

/// A tar, extracted at `/`, creating the builds and project directories (world-writable
/// so a job `user` other than root can work in them) and the file variables.
fn layout_archive(env: &JobEnv) -> Result<Vec<u8>, ExecutorError> {
    let err = |source| ExecutorError::Archive {
        what: "project directory and file variables".to_string(),
        source,
    };
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs: Vec<String> = Vec::new();
    let rel = env.project_dir.trim_start_matches('/');
    let mut acc = String::new();
    for seg in rel.split('/') {
        if !acc.is_empty() {
            acc.push('/');
        }
        acc.push_str(seg);
        dirs.push(acc.clone());
    }
    dirs.push(env.tmp_dir.trim_start_matches('/').to_string());
    for d in &dirs {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o777);
        h.set_size(0);
        b.append_data(&mut h, format!("{d}/"), std::io::empty())
            .map_err(err)?;
    }
    for f in &env.files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(f.content.len() as u64);
        b.append_data(&mut h, f.path.trim_start_matches('/'), f.content.as_slice())
            .map_err(err)?;
    }
    b.into_inner().map_err(err)
}

/// What every script container of a job shares.
struct BuildBase<'a> {
    image_id: String,
    hc: HostSpec,
    docker: &'a DockerConfig,
    env: &'a JobEnv,
    /// The job's `image.entrypoint` (empty = keep the image's).
    entrypoint: Vec<String>,
    /// Whether the first container gets the layout archive (project and tmp dirs open to
    /// any user, file variables): needed unless there are no file variables and the
    /// containers run as root, which creates the dirs itself (`mkdir -p` in the script).
    layout: bool,
}

impl BuildBase<'_> {
    fn body(&self, names: &JobNames, kind: &str, extra_env: &[(&str, &str)]) -> ContainerSpec {
        let mut hc = self.hc.clone();
        let user_covers_builds = hc
            .binds
            .iter()
            .any(|b| b.split(':').nth(1) == Some(self.env.builds_dir.as_str()))
            || hc.mounts.iter().any(|m| m.target == self.env.builds_dir);
        if !user_covers_builds {
            hc.mounts.push(VolumeMount {
                target: self.env.builds_dir.clone(),
                volume: Some(names.builds_volume(&self.env.builds_dir)),
                labels: names.labels("builds", false),
            });
        }
        hc.mounts.push(VolumeMount {
            target: self.env.tmp_dir.clone(),
            volume: Some(names.tmp_volume()),
            labels: names.labels("tmp", true),
        });
        // The job trace is the build container's log: its output is read from the attach
        // stream, so the engine keeping a second copy (json-file) only halves throughput
        // and fills the disk.
        hc.log_driver = Some("none".to_string());
        let entrypoint = if self.docker.disable_entrypoint_overwrite == Some(true)
            || self.entrypoint.is_empty()
        {
            None
        } else {
            // `entrypoint: [""]` clears the image's entrypoint.
            Some(
                self.entrypoint
                    .iter()
                    .filter(|e| !e.is_empty())
                    .cloned()
                    .collect(),
            )
        };
        ContainerSpec {
            image: self.image_id.clone(),
            cmd: Some(shell_command()),
            entrypoint,
            env: self.env.docker_env(extra_env),
            working_dir: Some(self.env.builds_dir.clone()),
            user: self.docker.user.clone().filter(|u| !u.is_empty()),
            stdin: true,
            labels: names.labels(kind, true),
            host: hc,
            network_aliases: None,
        }
    }
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
        let end = self.run_job(ctx, &st, trace, &cancel).await;
        self.cleanup(&st, trace).await;
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

/// The job's resolved environment as variables for `sources`, `cache` and `artifacts`
/// (already expanded, so `raw`).
fn job_variables(env: &JobEnv) -> Vec<JobVariable> {
    env.vars
        .iter()
        .map(|(k, v)| JobVariable {
            key: k.clone(),
            value: SecretString::from(v.clone()),
            public: false,
            masked: false,
            file: false,
            raw: true,
        })
        .collect()
}

/// The owner of files put into the container: the numeric `user` (`uid[:gid]`), else root.
fn owner_of(user: Option<&str>) -> Owner {
    let Some(user) = user.map(str::trim).filter(|u| !u.is_empty()) else {
        return Owner::default();
    };
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    match (uid.parse::<u64>(), gid.parse::<u64>()) {
        (Ok(uid), Ok(gid)) => Owner { uid, gid },
        (Ok(uid), Err(_)) => Owner { uid, gid: uid },
        _ => Owner::default(),
    }
}

/// A host file streamed into Docker's "put archive".
fn file_stream(path: &Path) -> Result<ArchiveStream, ExecutorError> {
    let file = std::fs::File::open(path).map_err(|source| ExecutorError::Archive {
        what: path.display().to_string(),
        source,
    })?;
    Ok(tokio_util::io::ReaderStream::new(tokio::fs::File::from_std(file)).boxed())
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    #[test]
    fn owner_follows_a_numeric_user_else_root() {
        assert_eq!(owner_of(None), Owner::default());
        assert_eq!(
            owner_of(Some("1000")),
            Owner {
                uid: 1000,
                gid: 1000
            }
        );
        assert_eq!(owner_of(Some("1000:50")), Owner { uid: 1000, gid: 50 });
        assert_eq!(owner_of(Some("postgres")), Owner::default());
    }
}
