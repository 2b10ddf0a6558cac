//! [`DockerExecutor`]: one job, start to end, in containers from the job image.
//!
//! Flow: prepare (host config, image) → variables → sources → each script step in its own
//! container (first one is `-build`) → `after_script` in a fresh container → remove every
//! container and the per-job volume → the result line.
//!
//! Invariants:
//! - Every container the job creates is removed before [`Executor::run`] returns, whatever
//!   happened (cancel, timeout, Docker errors).
//! - The executor prints everything the user sees, up to and including the result line
//!   (`Job succeeded` / `ERROR: Job failed: ...`); the runner loop prints nothing after it.
//! - After cancel nothing more runs but cleanup.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType, MountVolumeOptions};
use bytes::Bytes;
use drover_proto::spec::{DockerConfig, RunnerConfig};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::api::{ArchiveStream, ContainerApi};
use super::bollard_api::BollardApi;
use super::host_config::host_config;
use super::image::{check_allowed, credentials_for, ensure_image, image_name, pull_policies};
use super::names::{JobNames, LABEL_AGENT, LABEL_JOB, LABEL_KIND};
use super::script::{generate, quote, shell_command};
use super::sources::{GitStrategy, SourcesProvider};
use super::variables::{JobEnv, job_env};
use super::{Executor, ExecutorError, FailureReason, JobContext, JobOutcome};
use crate::gitlab::types::{Step, StepWhen};
use crate::trace::TraceSink;

/// Job timeout when GitLab sends none (gitlab-runner's default: 1 hour).
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3600);
/// `after_script` timeout when its step sets none (gitlab-runner's default: 5 minutes).
pub const DEFAULT_AFTER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Timeouts are capped (one year) so deadlines never overflow.
const MAX_TIMEOUT_SECS: u64 = 365 * 24 * 3600;
/// How long output may keep coming after a container exited.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);

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
    /// Objects that could not be removed, with the error.
    pub errors: Vec<String>,
}

/// The Docker executor.
#[derive(Clone)]
pub struct DockerExecutor {
    pub(super) api: Arc<dyn ContainerApi>,
    /// Checks out `clone`/`fetch` sources; `None` → sources are skipped with a warning.
    sources: Option<Arc<dyn SourcesProvider>>,
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

/// What one job created, for cleanup.
struct JobState {
    names: JobNames,
    containers: Mutex<Vec<String>>,
    /// Set once the first container received the directory and file-variable archive.
    prepared: Mutex<bool>,
}

impl DockerExecutor {
    /// Connects to the engine (see [`ConnectOptions`]) and negotiates the API version.
    pub async fn connect(opts: ConnectOptions) -> Result<Self, ExecutorError> {
        let api = BollardApi::connect(opts.host.as_deref()).await?;
        Ok(Self::with_api(Arc::new(api)))
    }

    /// An executor on any [`ContainerApi`] (tests use a fake).
    pub fn with_api(api: Arc<dyn ContainerApi>) -> Self {
        DockerExecutor { api, sources: None }
    }

    /// Plugs in the provider of `clone`/`fetch` sources.
    pub fn with_sources(mut self, provider: Arc<dyn SourcesProvider>) -> Self {
        self.sources = Some(provider);
        self
    }

    /// Removes this agent's containers (and per-job volumes) whose job is not in
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
        let timeout = match job.runner_info.timeout {
            0 => DEFAULT_JOB_TIMEOUT,
            s => Duration::from_secs(s.min(MAX_TIMEOUT_SECS)),
        };
        let deadline = Instant::now() + timeout;
        let docker = ctx.runner.docker.clone().unwrap_or_default();

        // prepare_executor
        trace.section_start("prepare_executor", "Preparing the \"docker\" executor");
        let prepared = tokio::select! {
            biased;
            _ = cancel.cancelled() => Err(End::Canceled),
            _ = tokio::time::sleep_until(deadline) => Err(timeout_end(timeout)),
            r = self.prepare(ctx, &docker, trace) => r,
        };
        trace.section_end("prepare_executor");
        let (image_id, hc) = match prepared {
            Ok(p) => p,
            Err(end) => return end,
        };

        // prepare_script
        trace.section_start("prepare_script", "Preparing environment");
        let env = match job_env(ctx, timeout.as_secs()) {
            Ok(env) => env,
            Err(e) => {
                trace.section_end("prepare_script");
                return End::system(e);
            }
        };
        trace.write_line(&format!("Running on {} ...", st.names.container("build")));
        trace.section_end("prepare_script");

        let base = BuildBase {
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

        // get_sources
        trace.section_start("get_sources", "Getting source from Git repository");
        let sources = self
            .get_sources(ctx, st, &base, trace, deadline, cancel)
            .await;
        trace.section_end("get_sources");
        let (preamble, sources_archive) = match sources {
            Ok(s) => s,
            Err(end) => {
                if matches!(end, End::Canceled) {
                    return end;
                }
                return self.after_script(ctx, st, &base, trace, cancel, end).await;
            }
        };
        let mut sources_archive = sources_archive;

        // Script steps, in order.
        let mut end = End::Success;
        let mut timed_out = false;
        for step in job.steps.iter().filter(|s| s.name != "after_script") {
            if timed_out || !should_run(step.when, &end) {
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
            let pre: &[String] = if step.name == "script" {
                &preamble
            } else {
                &[]
            };
            let script = generate(&env.project_dir, pre, &step_commands(step, &ctx.runner));
            let mut archives = Vec::new();
            if let Some(a) = sources_archive.take() {
                archives.push((env.project_dir.clone(), a));
            }
            let step_deadline = match step.timeout {
                Some(s) if s > 0 => {
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
                                step.name,
                                step.timeout.unwrap_or_default()
                            ),
                        }
                    };
                }
                Ok(StepEnd::Canceled) => return End::Canceled,
                Err(e) => end = End::system(e),
            }
        }
        self.after_script(ctx, st, &base, trace, cancel, end).await
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
        if step.script.iter().all(|c| c.trim().is_empty()) || !should_run(step.when, &end) {
            return end;
        }
        trace.section_start("after_script", "Running after_script");
        trace.write_line("Running after script...");
        let timeout = step
            .timeout
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
    ) -> Result<(String, HostConfig), End> {
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

    /// Handles `GIT_STRATEGY`: returns the preamble for the first script step and the
    /// sources archive to extract into `CI_PROJECT_DIR`.
    #[allow(clippy::type_complexity)]
    async fn get_sources(
        &self,
        ctx: &JobContext,
        st: &JobState,
        base: &BuildBase<'_>,
        trace: &TraceSink,
        deadline: Instant,
        cancel: &CancellationToken,
    ) -> Result<(Vec<String>, Option<ArchiveStream>), End> {
        let strategy =
            GitStrategy::from_variable(base.env.get("GIT_STRATEGY"), ctx.job.allow_git_fetch)
                .map_err(|e| End::Failed {
                    reason: FailureReason::ScriptFailure,
                    exit_code: None,
                    message: e,
                })?;
        let dir = quote(&base.env.project_dir);
        match strategy {
            GitStrategy::None => {
                trace.write_line("Skipping Git repository setup");
                Ok((Vec::new(), None))
            }
            GitStrategy::Empty => {
                trace.write_line(
                    "Skipping Git repository setup and creating an empty build directory",
                );
                Ok((vec![format!("rm -rf -- {dir}")], None))
            }
            GitStrategy::Clone | GitStrategy::Fetch => {
                let Some(provider) = &self.sources else {
                    trace.write_line(&format!(
                        "\x1b[0;33mWARNING: sources: fetching is not available; skipping (GIT_STRATEGY={})\x1b[0;m",
                        strategy.as_str()
                    ));
                    return Ok((Vec::new(), None));
                };
                if strategy == GitStrategy::Clone {
                    // Empty the directory in a container of its own, before the archive
                    // goes into the build container.
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
                }
                let archive = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Err(End::Canceled),
                    r = provider.checkout(&ctx.job, strategy, trace, cancel.clone()) => r,
                };
                match archive {
                    Ok(a) => Ok((Vec::new(), Some(a))),
                    Err(e) => Err(End::system(ExecutorError::Sources(e))),
                }
            }
        }
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
        let first = st
            .prepared
            .lock()
            .map(|mut p| !std::mem::replace(&mut *p, true))
            .unwrap_or(false);
        if first {
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

/// Whether a step with `when` runs given how the job stands.
fn should_run(when: StepWhen, end: &End) -> bool {
    match (when, end) {
        (_, End::Canceled) => false,
        (StepWhen::Always, _) => true,
        (StepWhen::OnSuccess, End::Success) => true,
        (StepWhen::OnFailure, End::Failed { .. }) => true,
        _ => false,
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
    hc: HostConfig,
    docker: &'a DockerConfig,
    env: &'a JobEnv,
    /// The job's `image.entrypoint` (empty = keep the image's).
    entrypoint: Vec<String>,
}

impl BuildBase<'_> {
    fn body(
        &self,
        names: &JobNames,
        kind: &str,
        extra_env: &[(&str, &str)],
    ) -> ContainerCreateBody {
        let mut hc = self.hc.clone();
        let mut mounts = hc.mounts.take().unwrap_or_default();
        let user_covers_builds = hc
            .binds
            .iter()
            .flatten()
            .any(|b| b.split(':').nth(1) == Some(self.env.builds_dir.as_str()))
            || mounts
                .iter()
                .any(|m| m.target.as_deref() == Some(self.env.builds_dir.as_str()));
        if !user_covers_builds {
            mounts.push(Mount {
                target: Some(self.env.builds_dir.clone()),
                source: Some(names.builds_volume(&self.env.builds_dir)),
                typ: Some(MountType::VOLUME),
                volume_options: Some(MountVolumeOptions {
                    labels: Some(names.labels("builds", false)),
                    ..Default::default()
                }),
                ..Default::default()
            });
        }
        mounts.push(Mount {
            target: Some(self.env.tmp_dir.clone()),
            source: Some(names.tmp_volume()),
            typ: Some(MountType::VOLUME),
            volume_options: Some(MountVolumeOptions {
                labels: Some(names.labels("tmp", true)),
                ..Default::default()
            }),
            ..Default::default()
        });
        hc.mounts = Some(mounts);
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
        ContainerCreateBody {
            image: Some(self.image_id.clone()),
            cmd: Some(shell_command()),
            entrypoint,
            env: Some(self.env.docker_env(extra_env)),
            working_dir: Some(self.env.builds_dir.clone()),
            user: self.docker.user.clone().filter(|u| !u.is_empty()),
            attach_stdin: Some(true),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            open_stdin: Some(true),
            stdin_once: Some(true),
            tty: Some(false),
            labels: Some(names.labels(kind, true)),
            host_config: Some(hc),
            ..Default::default()
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
