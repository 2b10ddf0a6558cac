//! One runner = one job loop: verify, then request jobs and run each in its own task.
//!
//! Invariants:
//! - A slot of the global `concurrent` semaphore and of the runner's `limit` is taken
//!   BEFORE a job is requested (gitlab-runner's order), so GitLab never hands out a job the
//!   box cannot start.
//! - `last_update` from a `204` is sent back with the next request.
//! - A job GitLab handed out is run, or, when it cannot run (`JobRequest::Unrunnable`),
//!   reported failed with a trace line saying why: never dropped while GitLab shows it
//!   running. Only a body without a readable id and token is lost, logged and counted.
//! - "Stop at once" ([`Shutdown::now`]) cancels running jobs, which are then reported
//!   failed (`runner_system_failure`) through the normal trace path; "graceful"
//!   ([`Shutdown::graceful`]) only stops requesting. Either way [`run`] returns once every
//!   job task has reported.

pub mod backoff;
#[cfg(test)]
pub(crate) mod fake_executor;
mod job;
mod slots;
mod stats;

use std::sync::Arc;
use std::time::Duration;

use drover_proto::spec::RunnerConfig;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::executor::Executor;
use crate::gitlab::{GitLab, GitLabError, JobRequest, RunnerAuth};
use crate::trace::UploadOptions;
use backoff::Backoff;

pub use job::job_secrets;
pub use slots::{Slot, Slots};
pub use stats::{RunnerEvent, RunnerState, RunnerStats, RunnerStatsSnapshot};

/// gitlab-runner's default `check_interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// The two ways to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop requesting, cancel running jobs, report them, return.
    pub now: CancellationToken,
    /// Stop requesting, let running jobs finish, return.
    pub graceful: CancellationToken,
}

impl Shutdown {
    fn requested(&self) -> bool {
        self.now.is_cancelled() || self.graceful.is_cancelled()
    }

    async fn wait(&self) {
        tokio::select! {
            _ = self.now.cancelled() => {}
            _ = self.graceful.cancelled() => {}
        }
    }
}

/// Everything fixed about one runner while it runs.
#[derive(Debug, Clone)]
pub struct RunnerSettings {
    /// For logs and events (`name` from the file, or `runners[i]`).
    pub name: String,
    pub config: Arc<RunnerConfig>,
    pub token: SecretString,
    /// First 8 characters of the token after its `glrt-` prefix (container names).
    pub short_token: String,
    pub system_id: String,
    pub agent_id: String,
    /// Sleep between requests when GitLab answers `204` faster than this.
    pub check_interval: Duration,
    /// Jobs of this runner at once; `None` = only `concurrent` bounds it.
    pub limit: Option<u32>,
    /// Trace cap in bytes.
    pub output_limit: usize,
    pub upload: UploadOptions,
    /// First and largest delay after a failed request.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
}

impl RunnerSettings {
    /// Settings from a `[[runners]]` table; `index` names unnamed runners.
    pub fn from_config(
        config: Arc<RunnerConfig>,
        index: usize,
        token: SecretString,
        system_id: String,
        agent_id: String,
        check_interval: Duration,
    ) -> Self {
        let name = if config.name.is_empty() {
            format!("runners[{index}]")
        } else {
            config.name.clone()
        };
        RunnerSettings {
            name,
            short_token: short_token(&token),
            limit: config.limit.filter(|l| *l > 0),
            output_limit: config
                .output_limit
                .map(|kib| usize::try_from(kib.saturating_mul(1024)).unwrap_or(usize::MAX))
                .unwrap_or(crate::trace::DEFAULT_OUTPUT_LIMIT),
            config,
            token,
            system_id,
            agent_id,
            check_interval,
            upload: UploadOptions::default(),
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(60),
        }
    }
}

/// First 8 characters of a runner token after a `glrt-` prefix (gitlab-runner shortens
/// tokens the same way for names).
pub fn short_token(token: &SecretString) -> String {
    let t = token.expose_secret();
    let t = t.strip_prefix("glrt-").unwrap_or(t);
    t.chars().take(8).collect()
}

/// `e` and its sources, `: `-joined, each cause once (a source already in the text is not
/// repeated), so logs say "connection refused" rather than only "error sending request".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        src = s.source();
    }
    out
}

/// Why a runner's loop ended early.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(
        "runner {runner}: gitlab refused the token ({endpoint}: 403); register the runner again"
    )]
    Forbidden { runner: String, endpoint: String },
    #[error("runner {runner}: verify: {source}")]
    Verify {
        runner: String,
        #[source]
        source: GitLabError,
    },
}

/// The shared pieces a runner runs with.
#[derive(Clone)]
pub struct RunnerDeps {
    pub gitlab: Arc<dyn GitLab>,
    pub executor: Arc<dyn Executor>,
    /// The global `concurrent` bound, shared by all runners.
    pub concurrent: Arc<Semaphore>,
    pub stats: Arc<RunnerStats>,
    pub events: Option<mpsc::UnboundedSender<RunnerEvent>>,
    /// In-flight records and running ids (crash recovery, janitor).
    pub tracking: crate::inflight::JobTracking,
}

/// Runs one runner until shutdown (or a `403`); returns when all its jobs have reported.
pub async fn run(
    settings: RunnerSettings,
    deps: RunnerDeps,
    shutdown: Shutdown,
) -> Result<(), RunnerError> {
    let settings = Arc::new(settings);
    let name = settings.name.clone();
    let auth = RunnerAuth {
        token: settings.token.clone(),
        system_id: settings.system_id.clone(),
    };
    let emit = |e: RunnerEvent| {
        if let Some(tx) = &deps.events {
            let _ = tx.send(e);
        }
    };
    deps.stats.set_state(RunnerState::Starting);
    if let Err(e) = verify(&settings, &deps, &auth, &shutdown).await {
        let state = match &e {
            Some(RunnerError::Forbidden { endpoint, .. }) => {
                emit(RunnerEvent::NeedsRegistration {
                    runner: name.clone(),
                    endpoint: endpoint.clone(),
                });
                RunnerState::NeedsRegistration
            }
            Some(e) => RunnerState::Failed(e.to_string()),
            None => RunnerState::Stopped,
        };
        deps.stats.set_state(state);
        emit(RunnerEvent::Stopped {
            runner: name.clone(),
        });
        return match e {
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
    emit(RunnerEvent::Verified {
        runner: name.clone(),
    });
    deps.stats.set_state(RunnerState::Running);
    tracing::info!(runner = %name, "runner verified; requesting jobs");

    let limit = Arc::new(Semaphore::new(
        settings
            .limit
            .map(|l| l as usize)
            .unwrap_or(Semaphore::MAX_PERMITS),
    ));
    let slots = Slots::default();
    let mut jobs = JoinSet::new();
    let mut last_update: Option<String> = None;
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    let mut result = Ok(());

    'requests: loop {
        // Reap finished jobs so the set does not grow.
        while jobs.try_join_next().is_some() {}
        deps.stats.beat();
        let permits = tokio::select! {
            biased;
            _ = shutdown.wait() => break 'requests,
            p = async {
                let l = limit.clone().acquire_owned().await;
                let g = deps.concurrent.clone().acquire_owned().await;
                (l, g)
            } => p,
        };
        let (Ok(local), Ok(global)) = permits else {
            break 'requests;
        };
        let started = tokio::time::Instant::now();
        let answer = tokio::select! {
            biased;
            _ = shutdown.wait() => break 'requests,
            a = deps.gitlab.request_job(&auth, last_update.as_deref()) => a,
        };
        deps.stats.beat();
        // A job taken (runnable or not) holds its permits and a slot until it has reported.
        let take = |taken: job::Taken| {
            deps.stats.contact();
            backoff.reset();
            let slot = slots.take();
            let run = job::JobRun {
                settings: settings.clone(),
                gitlab: deps.gitlab.clone(),
                executor: deps.executor.clone(),
                stats: deps.stats.clone(),
                events: deps.events.clone(),
                tracking: deps.tracking.clone(),
                stop_now: shutdown.now.clone(),
                slot: slot.number(),
            };
            jobs.spawn(async move {
                let outcome = run.handle(taken).await;
                drop((local, global, slot));
                outcome
            });
            Duration::ZERO
        };
        let wait = match answer {
            Ok(JobRequest::Job(job)) => take(job::Taken::Run(job)),
            Ok(JobRequest::Unrunnable(job)) => take(job::Taken::Report(job)),
            Ok(JobRequest::Lost { reason }) => {
                deps.stats.contact();
                deps.stats.job_lost();
                let msg = format!(
                    "gitlab handed out a job whose id and token cannot be read; it stays \
                     running in gitlab until its timeout: {reason}"
                );
                tracing::error!(runner = %name, error = %msg, "job lost");
                deps.stats.error(msg);
                settings.check_interval.saturating_sub(started.elapsed())
            }
            Ok(JobRequest::NoJob { last_update: lu }) => {
                deps.stats.contact();
                backoff.reset();
                if lu.is_some() {
                    last_update = lu;
                }
                settings.check_interval.saturating_sub(started.elapsed())
            }
            Err(GitLabError::Forbidden { endpoint, .. }) => {
                tracing::error!(
                    runner = %name,
                    "gitlab refused the runner token on job request (403); no more requests: \
                     register the runner again"
                );
                deps.stats.set_state(RunnerState::NeedsRegistration);
                emit(RunnerEvent::NeedsRegistration {
                    runner: name.clone(),
                    endpoint: endpoint.to_string(),
                });
                result = Err(RunnerError::Forbidden {
                    runner: name.clone(),
                    endpoint: endpoint.to_string(),
                });
                break 'requests;
            }
            Err(e) => {
                let d = backoff.next_delay();
                let msg = error_chain(&e);
                tracing::warn!(runner = %name, error = %msg, retry_in = ?d, "job request failed");
                deps.stats.error(msg);
                d
            }
        };
        if !wait.is_zero() {
            tokio::select! {
                biased;
                _ = shutdown.wait() => break 'requests,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    if result.is_ok() {
        deps.stats.set_state(RunnerState::Draining);
    }
    if !jobs.is_empty() {
        tracing::info!(
            runner = %name,
            jobs = jobs.len(),
            cancel = shutdown.now.is_cancelled(),
            "waiting for running jobs"
        );
    }
    while let Some(r) = jobs.join_next().await {
        if let Err(e) = r {
            tracing::error!(runner = %name, error = %e, "job task failed");
        }
    }
    if result.is_ok() {
        deps.stats.set_state(RunnerState::Stopped);
    }
    emit(RunnerEvent::Stopped { runner: name });
    result
}

/// Verifies the token, retrying transient failures. `Err(None)` = shutdown meanwhile.
async fn verify(
    settings: &RunnerSettings,
    deps: &RunnerDeps,
    auth: &RunnerAuth,
    shutdown: &Shutdown,
) -> Result<(), Option<RunnerError>> {
    let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
    loop {
        if shutdown.requested() {
            return Err(None);
        }
        let answer = tokio::select! {
            _ = shutdown.wait() => return Err(None),
            a = deps.gitlab.verify(auth) => a,
        };
        match answer {
            Ok(_) => {
                deps.stats.contact();
                return Ok(());
            }
            Err(GitLabError::Forbidden { endpoint, .. }) => {
                let e = RunnerError::Forbidden {
                    runner: settings.name.clone(),
                    endpoint: endpoint.to_string(),
                };
                deps.stats.error(e.to_string());
                return Err(Some(e));
            }
            Err(e) if e.is_retryable() => {
                let d = backoff.next_delay();
                let msg = error_chain(&e);
                tracing::warn!(runner = %settings.name, error = %msg, retry_in = ?d, "verify failed");
                deps.stats.error(msg);
                tokio::select! {
                    _ = shutdown.wait() => return Err(None),
                    _ = tokio::time::sleep(d) => {}
                }
            }
            Err(e) => {
                deps.stats.error(e.to_string());
                return Err(Some(RunnerError::Verify {
                    runner: settings.name.clone(),
                    source: e,
                }));
            }
        }
    }
}

#[cfg(test)]
mod tests;
