//! The fleet supervisor: turns desired states into runner units and runs them on the shared
//! [`Engine`] (the same engine standalone mode uses).
//!
//! Invariants:
//! - A generation is applied all or nothing: every assignment is validated, and every new or
//!   changed runner's token is verified with GitLab (bounded by `apply_timeout`) before
//!   anything changes. A refusal is acked `applied=false` with the reason; the running units
//!   are not touched.
//! - The applied generation (tokens included) is persisted before it runs; a rotated token
//!   is persisted before the runner uses it.
//! - The engine only ever runs the units whose state wants a loop (`starting`, `running`);
//!   every other state (backoff, degraded, waiting-for-docker, stopped) has no loop.
//! - Only one task touches the units: everything arrives as a message or a tick.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use drover_proto::spec::RunnerConfig;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::desired::{self, Assignment, Store, rfc3339};
use super::drain_file::DrainFile;
use super::messages::{Command, DesiredState, ToController};
use super::report::Report;
use crate::clock::{Clock, Deadline};
use crate::engine::Engine;
use crate::health::DockerStatus;
use crate::metrics::Metrics;
use crate::runner::{RunnerEvent, RunnerSettings, RunnerStats};
use crate::systemd::Heartbeat as Liveness;
use crate::units::{Event, Now, RestartPolicy, Unit};
use drover_gitlab::GitLab;
use drover_job::executor::Executor;

mod apply;
mod drain;
mod engine;
mod ips;
mod outbound;
mod rotation;
mod transitions;

/// Builds (and shares) the GitLab client of a runner table.
pub type SharedGitLabFactory =
    Arc<dyn Fn(&RunnerConfig) -> anyhow::Result<Arc<dyn GitLab>> + Send + Sync>;

/// The Docker engine as the supervisor depends on it.
#[async_trait]
pub trait DockerDep: Send + Sync {
    /// The engine's version and root dir when it answers.
    async fn ping(&self) -> Result<DockerStatus, String>;
    /// The executor jobs run on (called once, after a successful ping).
    async fn executor(&self) -> anyhow::Result<Arc<dyn Executor>>;
    /// Pre-flight of runners about to be applied (`drover_job::executor::preflight`): the
    /// engine answers and every image they name is usable under their `pull_policy`.
    /// `Ok(warnings)` or the refusal, naming the runner and the image.
    async fn preflight(
        &self,
        runners: &[drover_proto::spec::RunnerConfig],
    ) -> Result<Vec<String>, String>;
}

/// Adjusts runner settings before a loop starts.
pub type Tuning = Arc<dyn Fn(&mut RunnerSettings) + Send + Sync>;

/// Timings and policies (tests shorten them).
#[derive(Clone)]
pub struct Timings {
    /// How often timers (restarts, watchdog, rotation) are checked.
    pub tick: Duration,
    /// How often Docker is pinged.
    pub docker_ping: Duration,
    /// How often the host's IP addresses are compared.
    pub ip_poll: Duration,
    /// How long new runners of a pushed generation get to verify.
    pub apply_timeout: Duration,
    /// `status.json` is rewritten at least this often.
    pub status_every: Duration,
    /// A unit degraded by a refused token repeats `token-invalid` this often until a new
    /// token arrives (the controller may have been away, or rate-limited the first one).
    pub token_invalid_repeat: Duration,
    pub policy: RestartPolicy,
    /// Adjusts runner settings before start (tests shorten the loop's timings).
    pub tune: Option<Tuning>,
}

impl Default for Timings {
    fn default() -> Self {
        Timings {
            tick: Duration::from_secs(1),
            docker_ping: Duration::from_secs(5),
            ip_poll: Duration::from_secs(15),
            apply_timeout: Duration::from_secs(60),
            status_every: Duration::from_secs(5),
            token_invalid_repeat: Duration::from_secs(30),
            policy: RestartPolicy::default(),
            tune: None,
        }
    }
}

/// Everything the supervisor runs with.
pub struct Deps {
    pub gitlab: SharedGitLabFactory,
    pub docker: Arc<dyn DockerDep>,
    pub store: Store,
    /// Where `status.json` goes (`None`: not written).
    pub status_path: Option<std::path::PathBuf>,
    pub system_id: String,
    pub agent_id: String,
    /// Messages for the controller (acks, events, rotated tokens); kept while disconnected
    /// up to the channel's bound, then dropped with a warning.
    pub outbound: mpsc::Sender<ToController>,
    /// The current report, for heartbeats.
    pub report: watch::Sender<Report>,
    /// This host's IP addresses.
    pub ips: Arc<dyn Fn() -> Vec<String> + Send + Sync>,
    /// Called when the IP addresses changed, before anything talks to GitLab again:
    /// connections made from a vanished address are dead, so the GitLab clients drop them.
    pub on_ips_changed: Option<Arc<dyn Fn() + Send + Sync>>,
    pub timings: Timings,
    /// Where "now" comes from for token rotation: its points are [`Deadline`]s, so a wall
    /// clock jump neither skips nor delays one (see `crate::clock`).
    pub clock: Arc<dyn Clock>,
}

const LOG_LINES: usize = 10;

struct UnitEntry {
    assignment: Assignment,
    unit: Unit,
    /// The stats of the loop currently running (replaced on restart).
    stats: Option<Arc<RunnerStats>>,
    /// Counters of loops that ended, so totals survive restarts.
    base: (u64, u64, u64),
    log: VecDeque<String>,
    /// The token this runner had before the agent rotated it: a push that still carries it
    /// (the controller has not seen `TokenRotated` yet) keeps the rotated one.
    rotated_from: Option<String>,
    /// The rotation point of the current token, held on both clocks.
    rotate: Option<Deadline>,
    /// No rotation attempt before this time (after a failed one).
    rotation_retry: Option<Deadline>,
    /// Why the last rotation attempt failed; `None` after a success or a new token.
    rotation_error: Option<String>,
    /// The unit asked for its loop to stop (watchdog) while its state still wants one: the
    /// engine leaves it out until the loop ended.
    stop_loop: bool,
    /// When `token-invalid` was last reported (monotonic), while the unit waits for a new
    /// token.
    token_invalid_at: Option<(Duration, String)>,
    /// The loop's beat count as last seen and when it was seen (monotonic): the watchdog
    /// times a loop's silence on the supervisor's clock, never on the wall clock.
    beat_seen: Option<(u64, Duration)>,
}

impl UnitEntry {
    fn log(&mut self, line: impl AsRef<str>) {
        if self.log.len() == LOG_LINES {
            self.log.pop_front();
        }
        self.log.push_back(format!(
            "{} {}",
            rfc3339(OffsetDateTime::now_utc()),
            line.as_ref()
        ));
    }
}

/// See the module doc.
pub struct Supervisor {
    deps: Deps,
    engine: Option<Engine>,
    runner_events: mpsc::UnboundedReceiver<RunnerEvent>,
    runner_events_tx: mpsc::UnboundedSender<RunnerEvent>,
    units: BTreeMap<String, UnitEntry>,
    generation: u64,
    last_refusal: Option<String>,
    docker_up: bool,
    /// What the last successful ping said.
    docker: Option<DockerStatus>,
    /// The controller said drain (persisted in `drain.json`): no unit starts until it
    /// says undrain.
    draining: bool,
    /// When the jobs still running while draining are canceled.
    drain_deadline: Option<OffsetDateTime>,
    /// The deadline passed and running jobs were canceled.
    drain_deadline_done: bool,
    drain_file: DrainFile,
    /// Cancelled to stop gracefully (SIGQUIT; see `drain.rs`).
    graceful: Option<CancellationToken>,
    /// Stopping gracefully: no unit starts, the run ends once no loop runs.
    stopping: bool,
    commands: Option<mpsc::UnboundedReceiver<Command>>,
    metrics: Option<Metrics>,
    liveness: Option<Liveness>,
    ips: Vec<String>,
    dirty: bool,
}

/// Now on `clock`: units time restarts on its monotonic side (see `units`).
fn now(clock: &Arc<dyn Clock>) -> Now {
    Now::of(clock.as_ref())
}

impl Supervisor {
    /// A supervisor with no units; call [`Supervisor::restore`] to run the persisted
    /// generation.
    pub fn new(deps: Deps) -> Supervisor {
        let (tx, rx) = mpsc::unbounded_channel();
        let ips = (deps.ips)();
        let drain_file = DrainFile::new(
            deps.store
                .path()
                .parent()
                .unwrap_or(std::path::Path::new(".")),
        );
        Supervisor {
            deps,
            engine: None,
            runner_events: rx,
            runner_events_tx: tx,
            units: BTreeMap::new(),
            generation: 0,
            last_refusal: None,
            docker_up: false,
            docker: None,
            draining: false,
            drain_deadline: None,
            drain_deadline_done: false,
            drain_file,
            graceful: None,
            stopping: false,
            commands: None,
            metrics: None,
            liveness: None,
            ips,
            dirty: true,
        }
    }

    /// Takes commands (drain, undrain) from the controller.
    pub fn with_commands(mut self, rx: mpsc::UnboundedReceiver<Command>) -> Self {
        self.commands = Some(rx);
        self
    }

    /// Stops gracefully once `token` is cancelled (SIGQUIT): no new jobs, the report says
    /// draining, and [`Supervisor::run`] returns once the running jobs finished.
    pub fn with_graceful_stop(mut self, token: CancellationToken) -> Self {
        self.graceful = Some(token);
        self
    }

    /// Feeds runner events, runner labels and `concurrent` into `metrics`.
    pub fn with_metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Beats `liveness` on every turn of the loop (the systemd watchdog's health check).
    pub fn with_liveness(mut self, liveness: Liveness) -> Self {
        self.liveness = Some(liveness);
        self
    }

    /// The generation it runs.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Runs the persisted generation (offline autonomy): no verification round, units start
    /// at once (their loops verify). A missing file is no generation; an unreadable or
    /// invalid one is an error naming the file.
    pub async fn restore(&mut self) -> anyhow::Result<()> {
        self.restore_drain()?;
        let Some(applied) = self.deps.store.load()? else {
            return Ok(());
        };
        let desired = desired::validate_all(applied.generation, &applied.runners)
            .map_err(|e| anyhow::anyhow!("{}: {e}", self.deps.store.path().display()))?;
        tracing::info!(
            generation = desired.generation,
            runners = desired.runners.len(),
            "running the persisted generation"
        );
        self.check_docker().await;
        self.switch(desired);
        Ok(())
    }

    /// Serves until `shutdown`: desired states from `desired`, runner events, timers. On
    /// shutdown running jobs are canceled and reported (bounded by `drain`).
    pub async fn run(
        mut self,
        mut desired: mpsc::UnboundedReceiver<DesiredState>,
        shutdown: CancellationToken,
        drain: Duration,
    ) {
        let mut tick = tokio::time::interval(self.deps.timings.tick);
        let mut ping = tokio::time::interval(self.deps.timings.docker_ping);
        let mut ip_poll = tokio::time::interval(self.deps.timings.ip_poll);
        let mut status = tokio::time::interval(self.deps.timings.status_every);
        ip_poll.tick().await;
        let mut commands = self.commands.take();
        let graceful = self.graceful.take().unwrap_or_default();
        loop {
            if let Some(l) = &self.liveness {
                l.beat();
            }
            let engine_busy = self.engine.as_ref().is_some_and(|e| e.running() > 0);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = graceful.cancelled(), if !self.stopping => self.stop_gracefully(),
                // The awaited work below is bounded (pre-flight 20 s, a token check 60 s,
                // a Docker ping 10 s, a token rotation 30 s) and may outlast WatchdogSec:
                // the loop beats meanwhile, so systemd does not kill an agent that waits
                // on a slow GitLab or Docker.
                Some(ds) = desired.recv() => alive(self.liveness.clone(), self.apply(ds)).await,
                Some(cmd) = async {
                    match commands.as_mut() {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                } => self.command(cmd),
                Some(ev) = self.runner_events.recv() => self.runner_event(ev),
                Some(ended) = async {
                    match self.engine.as_mut() {
                        Some(e) => e.join_next().await,
                        None => None,
                    }
                }, if engine_busy => self.loop_ended(ended.runner, ended.result),
                _ = ping.tick() => alive(self.liveness.clone(), self.check_docker()).await,
                _ = ip_poll.tick() => self.check_ips(),
                _ = tick.tick() => alive(self.liveness.clone(), self.tick()).await,
                _ = status.tick() => self.dirty = true,
            }
            self.publish();
            if self.stopping && self.engine.as_ref().is_none_or(|e| e.running() == 0) {
                tracing::info!("graceful stop: no job running; stopping");
                break;
            }
        }
        self.shutdown(drain).await;
    }

    async fn shutdown(&mut self, drain: Duration) {
        for e in self.units.values_mut() {
            e.unit
                .handle(Event::Stop, now(&self.deps.clock), self.docker_up);
        }
        if let Some(engine) = self.engine.as_mut() {
            // Jobs still running are canceled; their traces say why.
            engine.cancel_jobs(drain::STOP_REASON);
            engine.stop_now();
            let ended =
                tokio::time::timeout(drain, async { while engine.join_next().await.is_some() {} })
                    .await;
            if ended.is_err() {
                tracing::warn!(
                    runners = engine.running(),
                    "runners still stopping after {}s; exiting",
                    drain.as_secs()
                );
            }
        }
        for e in self.units.values_mut() {
            e.unit.handle(
                Event::LoopEnded(None),
                now(&self.deps.clock),
                self.docker_up,
            );
        }
        self.dirty = true;
        self.publish();
    }

    /// A command from the controller.
    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Drain { deadline } => self.drain(deadline),
            Command::Undrain => self.undrain(),
        }
    }
}

/// `work`, with `liveness` beaten while it runs (see [`Liveness::beat_while`]).
async fn alive<F: std::future::Future>(liveness: Option<Liveness>, work: F) -> F::Output {
    match liveness {
        Some(l) => l.beat_while(work).await,
        None => work.await,
    }
}

#[cfg(test)]
mod tests;
