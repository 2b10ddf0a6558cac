//! The job flow: variables → prepare (host config, image, services) → sources,
//! dependencies and caches (`job_files`) → each script step in its own container →
//! `after_script` in a fresh one → caches and artifacts (`job_files`). Every stage runs
//! under the job's cancel token and deadline (`interrupt`).

use std::time::Duration;

use drover_proto::spec::{DockerConfig, RunnerConfig};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::container_body::BuildBase;
use super::containers::StepEnd;
use super::interrupt::until_interrupted;
use super::job_files::{file_stream, job_variables};
use super::{
    DEFAULT_AFTER_SCRIPT_TIMEOUT, DEFAULT_JOB_TIMEOUT, DockerExecutor, End, JobState,
    MAX_TIMEOUT_SECS,
};
use crate::executor::api::ArchiveStream;
use crate::executor::host_config::host_config;
use crate::executor::image::{
    check_allowed, credentials_for, ensure_image_pulled, image_name, pull_policies,
};
use crate::executor::script::generate;
use crate::executor::services;
use crate::executor::spec::HostSpec;
use crate::executor::variables::{JobEnv, job_env};
use crate::executor::{ExecutorError, FailureReason, JobContext};
use crate::trace::TraceSink;
use drover_gitlab::types::{Step, StepWhen};

/// How long after a script died of a signal the engine is asked again whether it is going
/// down (see [`DockerExecutor::daemon_stopped_it`]).
const DAEMON_RECHECK: Duration = Duration::from_secs(1);

impl DockerExecutor {
    pub(super) async fn run_job(
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
        self.disk_job_started(st, &env.builds_dir, trace);

        // prepare_executor
        trace.section_start("prepare_executor", "Preparing the \"docker\" executor");
        let prepared = until_interrupted(cancel, deadline, self.prepare(ctx, &docker, trace))
            .await
            .unwrap_or_else(|i| Err(End::interrupted(i, || timeout_end(timeout))));
        let image_id_hc = match prepared {
            Ok((image, id, pulled, hc)) => {
                self.disk_image_used(st, &image, &id, pulled);
                Ok((id, hc))
            }
            Err(end) => Err(end),
        };
        let (image_id, mut hc) = match image_id_hc {
            Ok(p) => p,
            Err(end) => {
                trace.section_end("prepare_executor");
                return end;
            }
        };
        let services = self.start_services(ctx, st, &docker, &env, trace);
        let network = until_interrupted(cancel, deadline, services)
            .await
            .unwrap_or_else(|i| Err(End::interrupted(i, || timeout_end(timeout))));
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
            if !work.pending.is_empty() && !work.project_dir_made {
                self.make_project_dir(st, &base, false, trace, deadline, cancel)
                    .await?;
            }
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

    /// Runs `after_script` when its `when` says so; its result never changes `end`.
    pub(super) async fn after_script(
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
    pub(super) async fn prepare(
        &self,
        ctx: &JobContext,
        docker: &DockerConfig,
        trace: &TraceSink,
    ) -> Result<(String, String, bool, HostSpec), End> {
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
        let (id, pulled) =
            match ensure_image_pulled(self.api.as_ref(), &image, &policies, creds, trace).await {
                Ok(found) => found,
                Err(e @ ExecutorError::Image(_)) => return Err(pull_failure(e)),
                Err(e) => return Err(End::system(e)),
            };
        trace.write_line(&format!("Using docker image {id} for {image} ..."));
        Ok((image, id, pulled, hc))
    }

    /// Starts the job's services on a per-job network (or `network_mode`) and waits for
    /// them; returns the network the build containers join (`None`: no services).
    pub(super) async fn start_services(
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
            &|image: &str, id: &str, pulled: bool| self.disk_image_used(st, image, id, pulled),
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

    /// Whether a script that died of a signal (exit code above 128) was stopped by the Docker
    /// daemon shutting down rather than by its own doing. A daemon that shuts down closes its
    /// API first and then stops every container with SIGTERM, so the engine no longer
    /// answering right after such an exit (asked twice, [`DAEMON_RECHECK`] apart, in case
    /// the API was still closing) is the sign.
    pub(super) async fn daemon_stopped_it(&self, code: i64) -> bool {
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
    pub(super) async fn engine_answers(&self) -> bool {
        self.api.engine_info().await.is_ok()
    }

    /// Whether the job's containers run as root: `[runners.docker] user`, else the image's
    /// own user. Unknown (the inspection failed) counts as not root.
    pub(super) async fn runs_as_root(&self, docker: &DockerConfig, image_id: &str) -> bool {
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
}

pub(super) fn timeout_end(timeout: Duration) -> End {
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
pub(super) fn should_run(when: &StepWhen, end: &End) -> bool {
    match end {
        End::Canceled => false,
        End::Success => when.on_success(),
        End::Failed { .. } => when.on_failure(),
    }
}
