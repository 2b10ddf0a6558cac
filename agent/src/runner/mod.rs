//! One runner = one job loop: request jobs and run each in its own task. Like gitlab-runner's
//! `run` (`commands/multi.go`), nothing is verified first: the first `POST /jobs/request`
//! carrying `system_id` is what makes GitLab create the runner manager. How each answer is
//! handled, per endpoint and status: `agent/gitlab/src/STATUS.md`.
//!
//! Invariants:
//! - A slot of the global `concurrent` semaphore and of the runner's `limit` is taken
//!   BEFORE a job is requested (gitlab-runner's order), so GitLab never hands out a job the
//!   box cannot start.
//! - `last_update` from a `204` is sent back with the next request.
//! - A failed job request never stops the runner (only a `403` does): it is retried after a
//!   backoff of at most [`JOB_REQUEST_BACKOFF_MAX`] (or GitLab's `Retry-After`, bounded), so
//!   jobs are taken again within seconds of GitLab's return. Only a config that sets
//!   `unhealthy_requests_limit` / `unhealthy_interval` pauses a runner after failures.
//! - `request_concurrency` request workers per runner (default 1) share its `limit`, its
//!   `last_update` cursor and its failure count.
//! - A job GitLab handed out is run, or, when it cannot run (`JobRequest::Unrunnable`),
//!   reported failed with a trace line saying why: never dropped while GitLab shows it
//!   running. Only a body without a readable id and token is lost, logged and counted.
//! - "Stop at once" ([`Shutdown::now`]) cancels running jobs, which are then reported
//!   failed (`runner_system_failure`) through the normal trace path; "graceful"
//!   ([`Shutdown::graceful`]) only stops requesting. Either way [`run`] returns once every
//!   job task has reported.

#[cfg(test)]
pub(crate) mod fake_executor;
mod job;
mod slots;
mod stats;
pub mod unhealthy;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::spec::RunnerConfig;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use drover_gitlab::backoff::{Backoff, retry_delay};
use drover_gitlab::{GitLab, GitLabError, JobRequest, RunnerAuth};
use drover_job::executor::Executor;
use drover_job::trace::UploadOptions;
use unhealthy::{Health, UnhealthyPolicy};

pub use drover_proto::error_chain::error_chain;
pub use job::job_secrets;
pub use slots::{Slot, Slots};
pub use stats::{RunnerEvent, RunnerState, RunnerStats, RunnerStatsSnapshot};

/// gitlab-runner's default `check_interval`.
pub const DEFAULT_CHECK_INTERVAL: Duration = Duration::from_secs(3);

/// First delay after a failed job request.
pub const JOB_REQUEST_BACKOFF_MIN: Duration = Duration::from_secs(1);
/// Largest delay after failed job requests (drawn from `[max/2, max]`): after an outage the
/// first request reaches GitLab at most this long after it is back.
pub const JOB_REQUEST_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The longest single sleep of a request worker: longer waits (`Retry-After`, an unhealthy
/// pause) are cut into slices so the loop keeps beating for fleet mode's watchdog.
const BEAT_SLICE: Duration = Duration::from_secs(5);

/// The two ways to stop.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// Stop requesting, cancel running jobs, report them, return.
    pub now: CancellationToken,
    /// Stop requesting, let running jobs finish, return.
    pub graceful: CancellationToken,
    /// Why `now` fired when it was not a shutdown (set before it fires): the trace line of
    /// a job it cancels says so (`agent is draining ...`).
    pub reason: Arc<std::sync::OnceLock<String>>,
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
    /// First and largest delay after a failed job request.
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    /// Job requests in flight at once (`request_concurrency`, at least 1).
    pub request_concurrency: usize,
    /// Pause after failed requests (`unhealthy_requests_limit` / `unhealthy_interval`);
    /// `None` = never pause.
    pub unhealthy: Option<UnhealthyPolicy>,
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
            request_concurrency: config
                .request_concurrency
                .map_or(1, |n| usize::try_from(n).unwrap_or(usize::MAX).max(1)),
            unhealthy: UnhealthyPolicy::from_config(
                config.unhealthy_requests_limit,
                config.unhealthy_interval.map(|d| d.0),
            ),
            short_token: short_token(&token),
            limit: config.limit.filter(|l| *l > 0),
            output_limit: config
                .output_limit
                .map(|kib| usize::try_from(kib.saturating_mul(1024)).unwrap_or(usize::MAX))
                .unwrap_or(drover_job::trace::DEFAULT_OUTPUT_LIMIT),
            config,
            token,
            system_id,
            agent_id,
            check_interval,
            upload: UploadOptions::default(),
            backoff_min: JOB_REQUEST_BACKOFF_MIN,
            backoff_max: JOB_REQUEST_BACKOFF_MAX,
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

/// Why a runner's loop ended early.
#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(
        "runner {runner}: gitlab refused the token ({endpoint}: 403); register the runner again"
    )]
    Forbidden { runner: String, endpoint: String },
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

impl RunnerDeps {
    fn emit(&self, e: RunnerEvent) {
        if let Some(tx) = &self.events {
            let _ = tx.send(e);
        }
    }
}

/// What the request workers of one runner share.
struct Loop {
    settings: Arc<RunnerSettings>,
    deps: RunnerDeps,
    shutdown: Shutdown,
    auth: RunnerAuth,
    /// The runner's `limit`.
    limit: Arc<Semaphore>,
    slots: Slots,
    jobs: TaskTracker,
    last_update: Mutex<Option<String>>,
    health: Mutex<Health>,
    /// Fired on a `403`: every worker stops requesting.
    refused: CancellationToken,
    result: Mutex<Option<RunnerError>>,
    /// GitLab has answered a job request (`201`/`204`) since the loop started.
    connected: std::sync::atomic::AtomicBool,
}

/// Runs one runner until shutdown (or a `403`); returns when all its jobs have reported.
pub async fn run(
    settings: RunnerSettings,
    deps: RunnerDeps,
    shutdown: Shutdown,
) -> Result<(), RunnerError> {
    let settings = Arc::new(settings);
    let name = settings.name.clone();
    deps.stats.set_state(RunnerState::Starting);
    tracing::info!(
        runner = %name,
        request_concurrency = settings.request_concurrency,
        "requesting jobs"
    );
    let lp = Arc::new(Loop {
        auth: RunnerAuth {
            token: settings.token.clone(),
            system_id: settings.system_id.clone(),
        },
        limit: Arc::new(Semaphore::new(
            settings
                .limit
                .map(|l| l as usize)
                .unwrap_or(Semaphore::MAX_PERMITS),
        )),
        slots: Slots::default(),
        jobs: TaskTracker::new(),
        last_update: Mutex::new(None),
        health: Mutex::new(Health::default()),
        refused: CancellationToken::new(),
        result: Mutex::new(None),
        connected: std::sync::atomic::AtomicBool::new(false),
        settings,
        deps,
        shutdown,
    });
    let mut workers = JoinSet::new();
    for worker in 0..lp.settings.request_concurrency {
        let lp = Arc::clone(&lp);
        workers.spawn(async move { lp.request_worker(worker).await });
    }
    while let Some(r) = workers.join_next().await {
        if let Err(e) = r {
            tracing::error!(runner = %name, error = %e, "job request worker failed");
        }
    }

    let result = match lock(&lp.result).take() {
        Some(e) => Err(e),
        None => Ok(()),
    };
    if result.is_ok() {
        lp.deps.stats.set_state(RunnerState::Draining);
    }
    lp.jobs.close();
    if !lp.jobs.is_empty() {
        tracing::info!(
            runner = %name,
            jobs = lp.jobs.len(),
            cancel = lp.shutdown.now.is_cancelled(),
            "waiting for running jobs"
        );
    }
    lp.jobs.wait().await;
    if result.is_ok() {
        lp.deps.stats.set_state(RunnerState::Stopped);
    }
    lp.deps.emit(RunnerEvent::Stopped { runner: name });
    result
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Loop {
    /// Resolves when the worker must stop requesting (shutdown or a `403`).
    async fn stopped(&self) {
        tokio::select! {
            _ = self.shutdown.wait() => {}
            _ = self.refused.cancelled() => {}
        }
    }

    fn stop_requested(&self) -> bool {
        self.shutdown.requested() || self.refused.is_cancelled()
    }

    /// Sleeps `d` in slices, beating between them; `false` when told to stop meanwhile.
    async fn sleep(&self, d: Duration) -> bool {
        let end = tokio::time::Instant::now() + d;
        loop {
            let now = tokio::time::Instant::now();
            if now >= end {
                return true;
            }
            let slice = (end - now).min(BEAT_SLICE);
            tokio::select! {
                biased;
                _ = self.stopped() => return false,
                _ = tokio::time::sleep(slice) => {}
            }
            self.deps.stats.beat();
        }
    }

    /// GitLab answered a job request as it means to (`201`/`204`).
    fn answered(&self) {
        self.deps.stats.contact();
        lock(&self.health).ok();
        if !self
            .connected
            .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.deps.stats.set_state(RunnerState::Running);
            self.deps.emit(RunnerEvent::Connected {
                runner: self.settings.name.clone(),
            });
        }
    }

    /// Runs or reports a job GitLab handed out in its own task. The job (runnable or not)
    /// holds its permits and a slot until it has reported.
    fn take(
        &self,
        taken: job::Taken,
        local: OwnedSemaphorePermit,
        global: OwnedSemaphorePermit,
        backoff: &mut Backoff,
    ) -> Duration {
        self.answered();
        backoff.reset();
        let slot = self.slots.take();
        let run = job::JobRun {
            settings: self.settings.clone(),
            gitlab: self.deps.gitlab.clone(),
            executor: self.deps.executor.clone(),
            stats: self.deps.stats.clone(),
            events: self.deps.events.clone(),
            tracking: self.deps.tracking.clone(),
            stop_now: self.shutdown.now.clone(),
            stop_reason: self.shutdown.reason.clone(),
            slot: slot.number(),
            tasks: self.jobs.clone(),
        };
        self.jobs.spawn(async move {
            let outcome = run.handle(taken).await;
            drop((local, global, slot));
            outcome
        });
        Duration::ZERO
    }

    /// One request worker: take slots, request a job, run it in its own task, repeat.
    async fn request_worker(&self, worker: usize) {
        let settings = &self.settings;
        let deps = &self.deps;
        let name = &settings.name;
        let mut backoff = Backoff::new(settings.backoff_min, settings.backoff_max);
        'requests: loop {
            deps.stats.beat();
            if self.stop_requested() {
                break 'requests;
            }
            let paused = lock(&self.health).paused_until(tokio::time::Instant::now());
            if let Some(until) = paused {
                let d = until.saturating_duration_since(tokio::time::Instant::now());
                if !self.sleep(d).await {
                    break 'requests;
                }
                continue 'requests;
            }
            let permits = tokio::select! {
                biased;
                _ = self.stopped() => break 'requests,
                p = async {
                    let l = self.limit.clone().acquire_owned().await;
                    let g = deps.concurrent.clone().acquire_owned().await;
                    (l, g)
                } => p,
            };
            let (Ok(local), Ok(global)) = permits else {
                break 'requests;
            };
            let started = tokio::time::Instant::now();
            let cursor = lock(&self.last_update).clone();
            let answer = tokio::select! {
                biased;
                _ = self.stopped() => break 'requests,
                a = deps.gitlab.request_job(&self.auth, cursor.as_deref()) => a,
            };
            deps.stats.beat();
            let wait = match answer {
                Ok(JobRequest::Job(job)) => {
                    self.take(job::Taken::Run(job), local, global, &mut backoff)
                }
                Ok(JobRequest::Unrunnable(job)) => {
                    self.take(job::Taken::Report(job), local, global, &mut backoff)
                }
                Ok(JobRequest::Lost { reason }) => {
                    self.answered();
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
                    self.answered();
                    backoff.reset();
                    if lu.is_some() {
                        *lock(&self.last_update) = lu;
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
                    let e = RunnerError::Forbidden {
                        runner: name.clone(),
                        endpoint: endpoint.to_string(),
                    };
                    deps.stats.error(e.to_string());
                    let first = lock(&self.result).replace(e).is_none();
                    if first {
                        deps.emit(RunnerEvent::NeedsRegistration {
                            runner: name.clone(),
                            endpoint: endpoint.to_string(),
                        });
                    }
                    self.refused.cancel();
                    break 'requests;
                }
                Err(e) => {
                    let mut d = retry_delay(&e, &mut backoff);
                    let msg = error_chain(&e);
                    let pause = lock(&self.health)
                        .failed(settings.unhealthy.as_ref(), tokio::time::Instant::now());
                    if let Some(until) = pause {
                        d = d.max(until.saturating_duration_since(tokio::time::Instant::now()));
                        tracing::error!(
                            runner = %name,
                            error = %msg,
                            pause = ?d,
                            "runner is unhealthy (unhealthy_requests_limit failed job requests \
                             in a row); no requests for unhealthy_interval"
                        );
                    } else {
                        tracing::warn!(runner = %name, worker, error = %msg, retry_in = ?d, "job request failed");
                    }
                    deps.stats.error(msg);
                    d
                }
            };
            if !wait.is_zero() && !self.sleep(wait).await {
                break 'requests;
            }
        }
    }
}

#[cfg(test)]
mod tests;
