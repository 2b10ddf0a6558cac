//! The engine that serves a set of `[[runners]]`: one job loop per runner, a shared
//! `concurrent` bound, reload by difference. Standalone mode feeds it a `config.toml`; fleet
//! mode feeds it the controller's runner specs.
//!
//! Invariants:
//! - A runner whose table (or `check_interval`) did not change keeps running untouched on
//!   [`Engine::apply`]; a changed one is stopped gracefully (its jobs finish) and a new loop
//!   starts at once; a removed one is stopped gracefully.
//! - [`Engine::join_next`] yields every loop that ended, also replaced ones.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::spec::{Config, RunnerConfig};
use secrecy::SecretString;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::runner::{
    self, DEFAULT_CHECK_INTERVAL, RunnerDeps, RunnerError, RunnerEvent, RunnerSettings,
    RunnerStats, Shutdown,
};
use crate::shutdown::Tasks;
use drover_gitlab::GitLab;
use drover_job::executor::Executor;

/// Builds the GitLab client a runner talks to (one per url and CA file, shared).
pub type GitLabFactory =
    Box<dyn Fn(&RunnerConfig) -> anyhow::Result<Arc<dyn GitLab>> + Send + Sync>;

/// Adjusts runner settings before start.
type Tuning = Box<dyn Fn(&mut RunnerSettings) + Send + Sync>;

/// A runner loop that ended.
#[derive(Debug)]
pub struct Ended {
    pub runner: String,
    /// `false` when the loop was replaced or removed by [`Engine::apply`].
    pub current: bool,
    pub result: Result<(), RunnerError>,
}

struct Active {
    generation: u64,
    /// What the loop was started from, to see whether a reload changed it.
    fingerprint: serde_json::Value,
    shutdown: Shutdown,
    stats: Arc<RunnerStats>,
}

/// Serves runners. See the module doc.
pub struct Engine {
    executor: Arc<dyn Executor>,
    gitlab: GitLabFactory,
    system_id: String,
    agent_id: String,
    concurrent: Arc<Semaphore>,
    concurrent_n: u32,
    /// Fired on every loop, current and retiring, by [`Engine::stop_now`] /
    /// [`Engine::stop_graceful`].
    root: Shutdown,
    /// The `now` token (child of the root's) and reason every loop started since the last
    /// [`Engine::cancel_jobs`] shares; that call fires it and starts a new one.
    epoch: Shutdown,
    active: HashMap<String, Active>,
    tasks: JoinSet<(String, u64, Result<(), RunnerError>)>,
    generation: u64,
    events: Option<mpsc::UnboundedSender<RunnerEvent>>,
    /// Test hook: runner settings are adjusted before start (shorter timings).
    tune: Option<Tuning>,
    /// In-flight records and running job ids, shared by every runner loop.
    tracking: crate::inflight::JobTracking,
    /// Where the engine's own helper tasks go (the agent's tracker in standalone mode).
    helpers: Tasks,
    /// Cancelled when the engine is dropped: its helper tasks end with it.
    dropped: CancellationToken,
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.dropped.cancel();
    }
}

impl Engine {
    /// An engine running jobs on `executor`, under this machine's `system_id`, labelling
    /// Docker objects with `agent_id`.
    pub fn new(
        executor: Arc<dyn Executor>,
        gitlab: GitLabFactory,
        system_id: String,
        agent_id: String,
    ) -> Self {
        let root = Shutdown::default();
        let epoch = Shutdown {
            now: root.now.child_token(),
            graceful: CancellationToken::new(),
            reason: Arc::default(),
        };
        Engine {
            executor,
            gitlab,
            system_id,
            agent_id,
            concurrent: Arc::new(Semaphore::new(0)),
            concurrent_n: 0,
            root,
            epoch,
            active: HashMap::new(),
            tasks: JoinSet::new(),
            generation: 0,
            events: None,
            tune: None,
            tracking: Default::default(),
            helpers: Tasks::new(),
            dropped: CancellationToken::new(),
        }
    }

    /// Starts the engine's helper tasks on `tasks` (the agent's tracker).
    pub fn with_tasks(mut self, tasks: Tasks) -> Self {
        self.helpers = tasks;
        self
    }

    /// Records jobs in flight and running job ids in `tracking`.
    pub fn with_tracking(mut self, tracking: crate::inflight::JobTracking) -> Self {
        self.tracking = tracking;
        self
    }

    /// Sends every runner's events to `tx`.
    pub fn with_events(mut self, tx: mpsc::UnboundedSender<RunnerEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// Adjusts each runner's settings before it starts (tests shorten timings).
    pub fn with_tuning(mut self, f: impl Fn(&mut RunnerSettings) + Send + Sync + 'static) -> Self {
        self.tune = Some(Box::new(f));
        self
    }

    /// Brings the running set in line with `config` (see the module doc). Errors (a GitLab
    /// client that cannot be built) name the runner; runners before it are applied.
    pub fn apply(&mut self, config: &Config) -> anyhow::Result<()> {
        let want = config.concurrent.unwrap_or(1).max(1);
        if want > self.concurrent_n {
            self.concurrent
                .add_permits((want - self.concurrent_n) as usize);
        } else if want < self.concurrent_n {
            // Permits held by running jobs are forgotten as they come back.
            let mut left = (self.concurrent_n - want) as usize;
            left -= self.concurrent.forget_permits(left);
            if left > 0 {
                let sem = self.concurrent.clone();
                let dropped = self.dropped.clone();
                self.helpers.spawn("engine permit release", async move {
                    tokio::select! {
                        p = sem.acquire_many_owned(left as u32) => {
                            if let Ok(p) = p {
                                p.forget();
                            }
                        }
                        _ = dropped.cancelled() => {}
                    }
                });
            }
        }
        self.concurrent_n = want;
        let check_interval = match config.check_interval {
            None | Some(0) => DEFAULT_CHECK_INTERVAL,
            Some(s) => Duration::from_secs(s),
        };

        let mut seen = Vec::new();
        for (i, rc) in config.runners.iter().enumerate() {
            let mut key = if rc.name.is_empty() {
                format!("runners[{i}]")
            } else {
                rc.name.clone()
            };
            if seen.contains(&key) {
                key = format!("{key}#{i}");
            }
            seen.push(key.clone());
            let fingerprint = serde_json::json!({
                "runner": serde_json::to_value(rc).unwrap_or_default(),
                "check_interval": check_interval.as_secs(),
            });
            if let Some(a) = self.active.get(&key) {
                if a.fingerprint == fingerprint {
                    continue;
                }
                tracing::info!(runner = %key, "runner configuration changed; restarting it");
                a.shutdown.graceful.cancel();
            }
            let gitlab =
                (self.gitlab)(rc).map_err(|e| e.context(format!("runner {key}: gitlab client")))?;
            let token = rc
                .token
                .clone()
                .unwrap_or_else(|| SecretString::from(String::new()));
            let mut settings = RunnerSettings::from_config(
                Arc::new(rc.clone()),
                i,
                token,
                self.system_id.clone(),
                self.agent_id.clone(),
                check_interval,
            );
            settings.name = key.clone();
            if let Some(t) = &self.tune {
                t(&mut settings);
            }
            self.generation += 1;
            let shutdown = Shutdown {
                now: self.epoch.now.child_token(),
                graceful: self.root.graceful.child_token(),
                reason: self.epoch.reason.clone(),
            };
            let stats = Arc::new(RunnerStats::default());
            let deps = RunnerDeps {
                gitlab,
                executor: self.executor.clone(),
                concurrent: self.concurrent.clone(),
                stats: stats.clone(),
                events: self.events.clone(),
                tracking: self.tracking.clone(),
            };
            let generation = self.generation;
            let k = key.clone();
            let sd = shutdown.clone();
            self.tasks
                .spawn(async move { (k, generation, runner::run(settings, deps, sd).await) });
            self.active.insert(
                key,
                Active {
                    generation,
                    fingerprint,
                    shutdown,
                    stats,
                },
            );
        }
        let removed: Vec<String> = self
            .active
            .keys()
            .filter(|k| !seen.contains(k))
            .cloned()
            .collect();
        for k in removed {
            if let Some(a) = self.active.remove(&k) {
                tracing::info!(runner = %k, "runner removed from the configuration; stopping it");
                a.shutdown.graceful.cancel();
            }
        }
        Ok(())
    }

    /// Stop at once: cancel every job (reported failed), end every loop.
    pub fn stop_now(&self) {
        self.root.now.cancel();
    }

    /// Cancels every job running now, current and retiring loops alike (reported failed
    /// with a trace line `aborted: REASON`), and ends their loops; loops started later are
    /// not affected.
    pub fn cancel_jobs(&mut self, reason: &str) {
        let _ = self.epoch.reason.set(reason.to_string());
        self.epoch.now.cancel();
        self.epoch = Shutdown {
            now: self.root.now.child_token(),
            graceful: CancellationToken::new(),
            reason: Arc::default(),
        };
        self.active.clear();
    }

    /// Stop requesting jobs; running jobs finish.
    pub fn stop_graceful(&self) {
        self.root.graceful.cancel();
    }

    /// `true` once a stop was requested.
    pub fn stopping(&self) -> bool {
        self.root.now.is_cancelled() || self.root.graceful.is_cancelled()
    }

    /// Loops (current or retiring) still running.
    pub fn running(&self) -> usize {
        self.tasks.len()
    }

    /// Stats of the current runners, by name.
    pub fn stats(&self) -> Vec<(String, Arc<RunnerStats>)> {
        let mut v: Vec<_> = self
            .active
            .iter()
            .map(|(k, a)| (k.clone(), a.stats.clone()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The next loop that ended; `None` when none is running.
    pub async fn join_next(&mut self) -> Option<Ended> {
        loop {
            let joined = self.tasks.join_next().await?;
            let (runner, generation, result) = match joined {
                Ok(v) => v,
                Err(e) => {
                    tracing::error!(error = %e, "runner task failed");
                    continue;
                }
            };
            let current = self
                .active
                .get(&runner)
                .is_some_and(|a| a.generation == generation);
            if current {
                self.active.remove(&runner);
            }
            return Some(Ended {
                runner,
                current,
                result,
            });
        }
    }
}

#[cfg(test)]
mod tests;
