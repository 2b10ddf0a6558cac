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
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use drover_proto::spec::{Config, RunnerConfig};
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::desired::{self, Applied, Assignment, Desired, Raw, Store, rfc3339};
use super::messages::{Command, DesiredState, JobState, RunnerEventKind, ToController};
use super::report::{self, Report, UnitReport};
use crate::clock::{Clock, Deadline};
use crate::engine::{Engine, GitLabFactory};
use crate::health::DockerStatus;
use crate::metrics::{Metrics, RunnerInfo, RunnerLabels};
use crate::runner::{
    RunnerError, RunnerEvent, RunnerSettings, RunnerState, RunnerStats, error_chain, short_token,
};
use crate::systemd::Heartbeat as Liveness;
use crate::units::{Action, Event, Now, RestartPolicy, Unit, UnitState};
use drover_gitlab::{GitLab, GitLabError, RunnerAuth};
use drover_job::executor::{Executor, JobOutcome};

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
    /// The controller said drain: no unit starts until the agent restarts.
    draining: bool,
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
            commands: None,
            metrics: None,
            liveness: None,
            ips,
            dirty: true,
        }
    }

    /// Takes commands (drain) from the controller.
    pub fn with_commands(mut self, rx: mpsc::UnboundedReceiver<Command>) -> Self {
        self.commands = Some(rx);
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
        loop {
            if let Some(l) = &self.liveness {
                l.beat();
            }
            let engine_busy = self.engine.as_ref().is_some_and(|e| e.running() > 0);
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(ds) = desired.recv() => self.apply(ds).await,
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
                _ = ping.tick() => self.check_docker().await,
                _ = ip_poll.tick() => self.check_ips(),
                _ = tick.tick() => self.tick().await,
                _ = status.tick() => self.dirty = true,
            }
            self.publish();
        }
        self.shutdown(drain).await;
    }

    async fn shutdown(&mut self, drain: Duration) {
        for e in self.units.values_mut() {
            e.unit
                .handle(Event::Stop, now(&self.deps.clock), self.docker_up);
        }
        if let Some(engine) = self.engine.as_mut() {
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
            Command::Drain => self.drain(),
        }
    }

    /// Stops taking jobs on every unit; running jobs finish, then units are `stopped`.
    /// Generations pushed later are still validated, persisted and acked, but no unit starts
    /// until the agent restarts.
    pub fn drain(&mut self) {
        if self.draining {
            return;
        }
        tracing::info!(
            units = self.units.len(),
            "drain: taking no new jobs; running jobs finish"
        );
        self.draining = true;
        let docker_up = self.docker_up;
        let mut changes = Vec::new();
        for (name, e) in self.units.iter_mut() {
            let before = e.unit.state;
            e.unit
                .handle(Event::Drain, now(&self.deps.clock), docker_up);
            e.log("drain requested by the controller");
            changes.push((name.clone(), before, e.unit.state));
        }
        for (name, before, after) in changes {
            self.transition(&name, before, after);
        }
        self.sync_engine();
        self.dirty = true;
    }

    /// Validates, verifies and applies a pushed generation; acks it either way.
    pub async fn apply(&mut self, ds: DesiredState) {
        let generation = ds.generation;
        match self.try_apply(ds).await {
            Ok(()) => {
                self.last_refusal = None;
                tracing::info!(generation, "generation applied");
                self.send(ToController::Ack {
                    generation,
                    refused: None,
                });
            }
            Err(e) => {
                tracing::error!(generation, error = %e, "generation refused; keeping the running one");
                self.last_refusal = Some(format!("generation {generation}: {e}"));
                self.send(ToController::Ack {
                    generation,
                    refused: Some(e),
                });
            }
        }
        self.dirty = true;
    }

    async fn try_apply(&mut self, ds: DesiredState) -> Result<(), String> {
        let now_t = self.deps.clock.now();
        let mut raws: Vec<Raw> = ds.runners;
        for r in &mut raws {
            if let Some(cur) = self.units.get(&r.name) {
                // A push still carrying the token this agent rotated away from keeps the
                // rotated one.
                if cur.rotated_from.as_deref() == Some(r.runner_token.as_str()) {
                    r.runner_token = cur.assignment.raw.runner_token.clone();
                    r.token_expires_at = cur.assignment.raw.token_expires_at.clone();
                }
                if cur.assignment.raw.runner_token == r.runner_token {
                    r.token_obtained_at = cur.assignment.raw.token_obtained_at.clone();
                }
            }
            if r.token_obtained_at.is_none() {
                r.token_obtained_at = Some(rfc3339(now_t));
            }
        }
        let desired = desired::validate_all(ds.generation, &raws).map_err(|e| e.to_string())?;
        if desired.generation == self.generation && self.same_as_running(&desired) {
            return Ok(());
        }
        // Verify every new or changed runner before touching anything.
        let changed: Vec<&Assignment> =
            desired.runners.iter().filter(|a| self.changed(a)).collect();
        let checks = changed.iter().map(|a| self.verify_new(a));
        let results = futures::future::join_all(checks).await;
        let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
        if !errors.is_empty() {
            return Err(errors.join("; "));
        }
        self.deps
            .store
            .save(&Applied {
                generation: desired.generation,
                runners: desired.runners.iter().map(|a| a.raw.clone()).collect(),
            })
            .map_err(|e| format!("persist the generation: {e}"))?;
        self.switch(desired);
        Ok(())
    }

    fn same_as_running(&self, d: &Desired) -> bool {
        d.runners.len() == self.units.len() && d.runners.iter().all(|a| !self.changed(a))
    }

    fn changed(&self, a: &Assignment) -> bool {
        match self.units.get(&a.raw.name) {
            None => true,
            Some(e) => {
                e.assignment.raw.spec_json != a.raw.spec_json
                    || e.assignment.raw.runner_token != a.raw.runner_token
            }
        }
    }

    /// Verifies a new runner's token before the generation is applied, as `gitlab-runner
    /// register` does with an authentication token. Only a `403` means the token is dead
    /// (gitlab-runner's `VerifyRunner`, `network/gitlab.go`): any other answer, no answer, or
    /// none within `apply_timeout` is logged and the runner is started anyway (its job loop
    /// meets a dead token as a `403` and takes the token-invalid path).
    async fn verify_new(&self, a: &Assignment) -> Result<(), String> {
        let name = &a.raw.name;
        let gl = (self.deps.gitlab)(&a.config).map_err(|e| format!("runner {name}: {e:#}"))?;
        let auth = RunnerAuth {
            token: a.token.clone(),
            system_id: self.deps.system_id.clone(),
        };
        match tokio::time::timeout(self.deps.timings.apply_timeout, gl.verify(&auth)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e @ GitLabError::Forbidden { .. })) => Err(format!(
                "runner {name}: gitlab refused the token ({})",
                error_chain(&e)
            )),
            Ok(Err(e)) => {
                tracing::warn!(
                    runner = %name,
                    error = %error_chain(&e),
                    "verify of a new runner failed; only a 403 refuses a token: starting it"
                );
                Ok(())
            }
            Err(_) => {
                tracing::warn!(
                    runner = %name,
                    timeout_s = self.deps.timings.apply_timeout.as_secs(),
                    "verify of a new runner did not answer in time; starting it"
                );
                Ok(())
            }
        }
    }

    /// Makes `desired` the running set: removed units stop, new and changed ones start,
    /// unchanged ones are untouched.
    fn switch(&mut self, desired: Desired) {
        let t = now(&self.deps.clock);
        let keep: Vec<String> = desired.runners.iter().map(|a| a.raw.name.clone()).collect();
        let removed: Vec<String> = self
            .units
            .keys()
            .filter(|k| !keep.contains(k))
            .cloned()
            .collect();
        for k in removed {
            if let Some(mut e) = self.units.remove(&k) {
                e.unit.handle(Event::Stop, t, self.docker_up);
                self.event(
                    &k,
                    RunnerEventKind::Stopped,
                    "removed from the desired state",
                );
            }
        }
        for a in desired.runners {
            let name = a.raw.name.clone();
            let changed = self.changed(&a);
            let docker_up = self.docker_up;
            let entry = self.units.entry(name.clone()).or_insert_with(|| UnitEntry {
                assignment: a.clone(),
                unit: Unit::new(self.deps.timings.policy.clone(), t),
                stats: None,
                base: (0, 0, 0),
                log: VecDeque::new(),
                rotated_from: None,
                rotate: None,
                rotation_retry: None,
                rotation_error: None,
                stop_loop: false,
                token_invalid_at: None,
                beat_seen: None,
            });
            let token_changed = entry.assignment.raw.runner_token != a.raw.runner_token;
            let draining = self.draining;
            if !draining
                && (changed || entry.unit.state == UnitState::Stopped && !entry.unit.loop_alive())
            {
                if token_changed {
                    entry.rotated_from = None;
                    entry.rotation_retry = None;
                    entry.rotation_error = None;
                    entry.token_invalid_at = None;
                }
                entry.assignment = a;
                entry.log(format!(
                    "assignment of generation {} applied",
                    desired.generation
                ));
                let before = entry.unit.state;
                entry.unit.handle(Event::Start, t, docker_up);
                let after = entry.unit.state;
                self.transition(&name, before, after);
            } else {
                // Same runner: keep the loop, take the new metadata (runner id).
                entry.assignment = a;
            }
        }
        self.generation = desired.generation;
        self.sync_engine();
        self.refresh_metrics();
        self.dirty = true;
    }

    /// Runner labels (short token, name, system id), limits, token expiry and `concurrent`
    /// for the metrics.
    fn refresh_metrics(&self) {
        let Some(m) = &self.metrics else {
            return;
        };
        let infos: Vec<RunnerInfo> = self
            .units
            .iter()
            .map(|(name, e)| RunnerInfo {
                labels: RunnerLabels {
                    runner: short_token(&e.assignment.token).into(),
                    runner_name: name.as_str().into(),
                    system_id: self.deps.system_id.as_str().into(),
                },
                limit: Some(e.assignment.limit()),
                token_expires_at: e
                    .assignment
                    .raw
                    .token_expires_at
                    .as_deref()
                    .and_then(|s| {
                        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .map(SystemTime::from),
            })
            .collect();
        m.set_runners(&infos);
        m.set_concurrent(
            self.units
                .values()
                .map(|e| e.assignment.limit())
                .sum::<u32>()
                .max(1),
        );
    }

    /// Brings the engine's runner set in line with the units that want a loop.
    fn sync_engine(&mut self) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let runners: Vec<RunnerConfig> = self
            .units
            .values()
            .filter(|e| e.unit.state.wants_loop() && !e.stop_loop)
            .map(|e| e.assignment.config.clone())
            .collect();
        let concurrent: u32 = self
            .units
            .values()
            .map(|e| e.assignment.limit())
            .sum::<u32>()
            .max(1);
        let config = Config {
            concurrent: Some(concurrent),
            runners,
            ..Config::default()
        };
        if let Err(e) = engine.apply(&config) {
            tracing::error!(error = %format!("{e:#}"), "apply runners to the engine");
        }
        let stats = engine.stats();
        for (name, s) in stats {
            if let Some(e) = self.units.get_mut(&name) {
                match &e.stats {
                    Some(old) if Arc::ptr_eq(old, &s) => {}
                    old => {
                        if let Some(old) = old {
                            let o = old.snapshot();
                            e.base.0 += o.jobs_succeeded;
                            e.base.1 += o.jobs_failed;
                            e.base.2 += o.jobs_canceled;
                        }
                        e.stats = Some(s);
                        e.beat_seen = None;
                    }
                }
            }
        }
    }

    fn make_engine(&self, executor: Arc<dyn Executor>) -> Engine {
        let factory = self.deps.gitlab.clone();
        let boxed: GitLabFactory = Box::new(move |rc| factory(rc));
        let mut engine = Engine::new(
            executor,
            boxed,
            self.deps.system_id.clone(),
            self.deps.agent_id.clone(),
        )
        .with_events(self.runner_events_tx.clone());
        if let Some(t) = self.deps.timings.tune.clone() {
            engine = engine.with_tuning(move |s| t(s));
        }
        engine
    }

    async fn check_docker(&mut self) {
        let up = match self.deps.docker.ping().await {
            Ok(status) => {
                self.docker = Some(status);
                true
            }
            Err(e) => {
                if self.docker_up || self.engine.is_none() {
                    tracing::warn!(error = %e, "docker engine unreachable");
                }
                for entry in self.units.values_mut() {
                    let before = entry.unit.state;
                    entry.unit.handle(
                        Event::DockerDown(format!("docker: {e}")),
                        now(&self.deps.clock),
                        false,
                    );
                    if before != entry.unit.state {
                        entry.log(format!("waiting for docker: {e}"));
                    }
                }
                false
            }
        };
        if up && self.engine.is_none() {
            match self.deps.docker.executor().await {
                Ok(ex) => {
                    self.engine = Some(self.make_engine(ex));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "connect the docker executor");
                    self.docker_up = false;
                    return;
                }
            }
        }
        if up != self.docker_up {
            self.dirty = true;
        }
        self.docker_up = up && self.engine.is_some();
    }

    async fn tick(&mut self) {
        let t = now(&self.deps.clock);
        let docker_up = self.docker_up;
        let mut changes = Vec::new();
        let watchdog = self.deps.timings.policy.watchdog;
        for (name, e) in self.units.iter_mut() {
            let before = e.unit.state;
            // The watchdog: a live loop (answered or not yet) with a free slot must show
            // activity.
            if before.wants_loop()
                && let Some(s) = &e.stats
            {
                let snap = s.snapshot();
                // Silence is timed from when the supervisor saw the count last move.
                let silent = match e.beat_seen {
                    Some((n, at)) if n == snap.beats => t.mono.saturating_sub(at),
                    _ => {
                        e.beat_seen = Some((snap.beats, t.mono));
                        Duration::ZERO
                    }
                };
                if matches!(snap.state, RunnerState::Running | RunnerState::Starting)
                    && snap.jobs_running < e.assignment.limit()
                    && snap.beats > 0
                    && silent > watchdog
                {
                    let msg = format!(
                        "watchdog: no job-request activity for over {}s; restarting",
                        watchdog.as_secs()
                    );
                    tracing::warn!(runner = %name, "{msg}");
                    e.log(&msg);
                    if e.unit.handle(Event::Stalled(msg), t, docker_up) == Action::StopLoop {
                        e.stop_loop = true;
                    }
                }
            }
            e.unit.handle(Event::Tick, t, docker_up);
            changes.push((name.clone(), before, e.unit.state));
        }
        for (name, before, after) in changes {
            self.transition(&name, before, after);
        }
        self.repeat_token_invalid(t);
        self.sync_engine();
        self.rotate_due().await;
    }

    /// Repeats `token-invalid` for units still waiting for a new token.
    fn repeat_token_invalid(&mut self, t: Now) {
        let every = self.deps.timings.token_invalid_repeat;
        let due: Vec<(String, String)> = self
            .units
            .iter_mut()
            .filter(|(_, e)| e.unit.state == UnitState::Degraded)
            .filter_map(|(name, e)| {
                let (at, why) = e.token_invalid_at.as_mut()?;
                if t.mono.saturating_sub(*at) >= every {
                    *at = t.mono;
                    Some((name.clone(), why.clone()))
                } else {
                    None
                }
            })
            .collect();
        for (name, why) in due {
            tracing::warn!(runner = %name, "still waiting for a new runner token; reporting token-invalid again");
            self.event(&name, RunnerEventKind::TokenInvalid, &why);
        }
    }

    /// Rotates the tokens that reached 75 % of their lifetime.
    async fn rotate_due(&mut self) {
        let clock = self.deps.clock.clone();
        let now_t = clock.now();
        for e in self.units.values_mut() {
            // Anchored when the point changes (a new token), not on every tick.
            let at = e.assignment.rotate_at(now_t);
            if e.rotate.map(|d| d.at()) != at {
                e.rotate = at.map(|a| Deadline::new(a, &*clock));
            }
        }
        let due: Vec<String> = self
            .units
            .iter()
            .filter(|(_, e)| e.unit.state.wants_loop())
            .filter(|(_, e)| e.rotation_retry.is_none_or(|r| r.due(&*clock)))
            .filter(|(_, e)| e.rotate.is_some_and(|r| r.due(&*clock)))
            .map(|(k, _)| k.clone())
            .collect();
        for name in due {
            self.rotate(&name).await;
        }
    }

    /// `reset_authentication_token`, persist, then use the new token; `TokenRotated` tells
    /// the controller.
    async fn rotate(&mut self, name: &str) {
        let Some(e) = self.units.get(name) else {
            return;
        };
        let old = e.assignment.token.clone();
        let config = e.assignment.config.clone();
        let gl = match (self.deps.gitlab)(&config) {
            Ok(g) => g,
            Err(err) => {
                tracing::error!(runner = %name, error = %format!("{err:#}"), "token rotation: gitlab client");
                return;
            }
        };
        let answer = tokio::time::timeout(Duration::from_secs(30), gl.reset_token(&old)).await;
        let creds = match answer {
            Ok(Ok(c)) => c,
            Ok(Err(err @ GitLabError::Forbidden { .. })) => {
                self.token_invalid(name, format!("token rotation: {}", error_chain(&err)));
                return;
            }
            Ok(Err(err)) => {
                self.rotation_failed(name, error_chain(&err));
                return;
            }
            Err(_) => {
                self.rotation_failed(name, "reset_authentication_token timed out".into());
                return;
            }
        };
        let now_t = self.deps.clock.now();
        let Some(e) = self.units.get_mut(name) else {
            return;
        };
        let mut raw = e.assignment.raw.clone();
        raw.runner_token = creds.token.expose_secret().to_string();
        raw.token_expires_at = creds
            .token_expires_at
            .as_deref()
            .and_then(|s| {
                OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
            })
            .filter(|t| t.unix_timestamp() > 0)
            .map(rfc3339);
        raw.token_obtained_at = Some(rfc3339(now_t));
        if let Some(id) = creds.id {
            raw.gitlab_runner_id = id;
        }
        let assignment = match desired::validate_one(&raw, 0) {
            Ok(a) => a,
            Err(err) => {
                self.rotation_failed(name, format!("new token unusable: {err}"));
                return;
            }
        };
        let old_raw = std::mem::replace(&mut e.assignment, assignment);
        e.rotated_from = Some(old_raw.raw.runner_token.clone());
        e.rotation_retry = None;
        e.rotation_error = None;
        e.log(format!(
            "token rotated; expires {}",
            raw.token_expires_at.as_deref().unwrap_or("never")
        ));
        // Persist BEFORE the runner uses the new token.
        let applied = Applied {
            generation: self.generation,
            runners: self
                .units
                .values()
                .map(|e| e.assignment.raw.clone())
                .collect(),
        };
        if let Err(err) = self.deps.store.save(&applied) {
            // The old token is already dead at GitLab: run with the new one anyway.
            tracing::error!(runner = %name, error = %err, "persist the rotated token");
        }
        tracing::info!(runner = %name, expires = raw.token_expires_at.as_deref().unwrap_or("never"), "runner token rotated");
        self.send(ToController::TokenRotated {
            runner: name.to_string(),
            token: raw.runner_token.clone().into(),
            token_expires_at: raw.token_expires_at.clone(),
            gitlab_runner_id: raw.gitlab_runner_id,
        });
        // The engine sees a changed runner table: the old loop drains, a new one starts.
        self.sync_engine();
        self.refresh_metrics();
        self.dirty = true;
    }

    /// A failed rotation is retried after a minute, or after a quarter of the token's
    /// remaining lifetime when that is sooner (at least 2 s), so a short-lived token gets
    /// more tries before it expires.
    fn rotation_failed(&mut self, name: &str, why: String) {
        let clock = self.deps.clock.clone();
        let now_t = clock.now();
        if let Some(e) = self.units.get_mut(name) {
            let left = e
                .assignment
                .token_expires_at
                .map_or(time::Duration::minutes(4), |exp| exp - now_t);
            let wait: time::Duration =
                (left / 4_i32).clamp(time::Duration::seconds(2), time::Duration::minutes(1));
            tracing::warn!(runner = %name, error = %why, retry_in_s = wait.whole_seconds(), "token rotation failed; will retry");
            e.rotation_retry = Some(Deadline::new(now_t + wait, &*clock));
            e.log(format!("token rotation failed: {why}"));
            e.rotation_error = Some(why);
        }
    }

    /// GitLab refused a runner's token: the unit degrades and waits for a new token.
    fn token_invalid(&mut self, name: &str, why: String) {
        let docker_up = self.docker_up;
        let Some(e) = self.units.get_mut(name) else {
            return;
        };
        if e.unit.state == UnitState::Degraded {
            return;
        }
        let before = e.unit.state;
        e.unit.handle(
            Event::TokenInvalid(why.clone()),
            now(&self.deps.clock),
            docker_up,
        );
        e.log(format!("token invalid: {why}"));
        e.token_invalid_at = Some((now(&self.deps.clock).mono, why.clone()));
        let after = e.unit.state;
        tracing::error!(runner = %name, error = %why, "gitlab refused the runner token; waiting for a new one from the controller");
        self.event(name, RunnerEventKind::TokenInvalid, &why);
        self.transition_quiet(name, before, after);
        self.sync_engine();
        self.dirty = true;
    }

    /// Compares the host's IPs; on a change tells the controller and restarts every job loop
    /// on fresh connections. Nothing is verified: GitLab records a runner manager's address
    /// from every authenticated request (`authenticate_runner!` in gitlabhq's
    /// `lib/api/ci/helpers/runner.rb`), so the restarted loops' first job request updates it,
    /// and a `403` there takes the token-invalid path.
    fn check_ips(&mut self) {
        let ips = (self.deps.ips)();
        let mut a = ips.clone();
        let mut b = self.ips.clone();
        a.sort();
        b.sort();
        if a == b {
            return;
        }
        let msg = format!("ips changed: [{}] -> [{}]", b.join(", "), a.join(", "));
        tracing::info!("{msg}");
        self.ips = ips;
        if let Some(f) = &self.deps.on_ips_changed {
            f();
        }
        let names: Vec<String> = self.units.keys().cloned().collect();
        for name in &names {
            self.event(name, RunnerEventKind::IpsChanged, &msg);
            if let Some(e) = self.units.get_mut(name) {
                e.log(&msg);
                if e.unit.state.wants_loop() {
                    e.log("job loop restarted on new connections after the ip change");
                }
            }
        }
        self.restart_loops();
        self.dirty = true;
    }

    /// Replaces every running job loop with a new one (new GitLab clients, new
    /// connections); running jobs finish in the old loops. Units keep their state.
    fn restart_loops(&mut self) {
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let concurrent: u32 = self
            .units
            .values()
            .map(|e| e.assignment.limit())
            .sum::<u32>()
            .max(1);
        let none = Config {
            concurrent: Some(concurrent),
            ..Config::default()
        };
        if let Err(e) = engine.apply(&none) {
            tracing::error!(error = %format!("{e:#}"), "stop runner loops for a restart");
        }
        self.sync_engine();
    }

    fn runner_event(&mut self, ev: RunnerEvent) {
        if let Some(m) = &self.metrics {
            m.observe_event(&ev);
        }
        let docker_up = self.docker_up;
        match ev {
            RunnerEvent::Connected { runner } => {
                if let Some(e) = self.units.get_mut(&runner) {
                    let before = e.unit.state;
                    e.unit
                        .handle(Event::Connected, now(&self.deps.clock), docker_up);
                    let after = e.unit.state;
                    self.transition(&runner, before, after);
                }
            }
            RunnerEvent::NeedsRegistration { runner, endpoint } => {
                self.token_invalid(&runner, format!("gitlab answered 403 on {endpoint}"));
            }
            RunnerEvent::JobStarted { runner, job_id } => {
                if let Some(e) = self.units.get_mut(&runner) {
                    e.log(format!("job {job_id} started"));
                }
                self.job_event(&runner, job_id, JobState::Running, "");
            }
            RunnerEvent::JobFinished {
                runner,
                job_id,
                outcome,
            } => {
                if let Some(e) = self.units.get_mut(&runner) {
                    e.log(format!("job {job_id} finished: {outcome:?}"));
                }
                match outcome {
                    JobOutcome::Success => self.job_event(&runner, job_id, JobState::Success, ""),
                    JobOutcome::Failed { reason, .. } => {
                        self.job_event(&runner, job_id, JobState::Failed, reason.as_str())
                    }
                    JobOutcome::Canceled => self.job_event(&runner, job_id, JobState::Canceled, ""),
                }
            }
            RunnerEvent::Stopped { .. } => {}
        }
        self.dirty = true;
    }

    fn loop_ended(&mut self, runner: String, result: Result<(), RunnerError>) {
        // A replaced loop (new settings, same unit) ends while its successor runs.
        let successor = self
            .engine
            .as_ref()
            .is_some_and(|e| e.stats().iter().any(|(n, _)| *n == runner));
        if successor || !self.units.contains_key(&runner) {
            return;
        }
        // The loop's 403 may arrive before its NeedsRegistration event: same path.
        if let Err(e @ RunnerError::Forbidden { .. }) = &result {
            self.token_invalid(&runner, e.to_string());
        }
        let err = result.err().map(|e| e.to_string());
        let docker_up = self.docker_up;
        let Some(e) = self.units.get_mut(&runner) else {
            return;
        };
        if let Some(s) = e.stats.take() {
            let o = s.snapshot();
            e.base.0 += o.jobs_succeeded;
            e.base.1 += o.jobs_failed;
            e.base.2 += o.jobs_canceled;
        }
        let before = e.unit.state;
        e.stop_loop = false;
        if let Some(er) = &err {
            e.log(format!("loop ended: {er}"));
        }
        e.unit
            .handle(Event::LoopEnded(err), now(&self.deps.clock), docker_up);
        let after = e.unit.state;
        self.transition(&runner, before, after);
        self.sync_engine();
    }

    /// Logs a state change and tells the controller.
    fn transition(&mut self, name: &str, before: UnitState, after: UnitState) {
        if before == after {
            return;
        }
        let kind = match after {
            UnitState::Running => Some(RunnerEventKind::Started),
            UnitState::Backoff => Some(RunnerEventKind::Backoff),
            UnitState::WaitingForDocker => Some(RunnerEventKind::WaitingForDocker),
            UnitState::Stopped => Some(RunnerEventKind::Stopped),
            UnitState::Draining => Some(RunnerEventKind::Draining),
            UnitState::Starting | UnitState::Degraded => None,
        };
        let message = self
            .units
            .get(name)
            .and_then(|e| match after {
                UnitState::Backoff | UnitState::Stopped | UnitState::WaitingForDocker => {
                    e.unit.last_error.clone()
                }
                _ => None,
            })
            .unwrap_or_default();
        if let Some(kind) = kind {
            self.event(name, kind, &message);
        }
        self.transition_quiet(name, before, after);
    }

    fn transition_quiet(&mut self, name: &str, before: UnitState, after: UnitState) {
        if before == after {
            return;
        }
        tracing::info!(runner = %name, from = %before, to = %after, "unit state");
        if let Some(e) = self.units.get_mut(name) {
            e.log(format!("{before} -> {after}"));
        }
        self.dirty = true;
    }

    /// Tells the controller a job started or ended (its "recent jobs").
    fn job_event(&self, runner: &str, job_id: i64, state: JobState, failure_reason: &str) {
        self.send(ToController::Job {
            runner: runner.to_string(),
            job_id,
            state,
            failure_reason: failure_reason.to_string(),
            at: OffsetDateTime::now_utc(),
        });
    }

    fn event(&self, runner: &str, kind: RunnerEventKind, message: &str) {
        self.send(ToController::Event {
            runner: runner.to_string(),
            kind,
            message: message.to_string(),
            at: OffsetDateTime::now_utc(),
        });
    }

    fn send(&self, msg: ToController) {
        if let Err(e) = self.deps.outbound.try_send(msg) {
            tracing::warn!(error = %e, "message for the controller dropped (queue full)");
        }
    }

    /// The current report.
    pub fn report(&self) -> Report {
        let now_t = self.deps.clock.now();
        let units = self
            .units
            .iter()
            .map(|(name, e)| {
                let snap = e.stats.as_ref().map(|s| s.snapshot());
                UnitReport {
                    name: name.clone(),
                    state: e.unit.state.as_str().to_string(),
                    since: rfc3339(OffsetDateTime::from(e.unit.since)),
                    last_error: e.unit.last_error.clone(),
                    gitlab_runner_id: e.assignment.raw.gitlab_runner_id,
                    token_expires_at: e.assignment.raw.token_expires_at.clone(),
                    token_rotate_at: e.assignment.rotate_at(now_t).map(rfc3339),
                    token_rotation_error: e.rotation_error.clone(),
                    jobs_running: snap.as_ref().map_or(0, |s| s.jobs_running),
                    jobs_succeeded: e.base.0 + snap.as_ref().map_or(0, |s| s.jobs_succeeded),
                    jobs_failed: e.base.1 + snap.as_ref().map_or(0, |s| s.jobs_failed),
                    jobs_canceled: e.base.2 + snap.as_ref().map_or(0, |s| s.jobs_canceled),
                    last_gitlab_contact: snap
                        .as_ref()
                        .and_then(|s| s.last_contact)
                        .map(|t| rfc3339(OffsetDateTime::from(t))),
                    log: e.log.iter().cloned().collect(),
                }
            })
            .collect();
        Report {
            agent_id: self.deps.agent_id.clone(),
            pid: std::process::id(),
            written_at: rfc3339(OffsetDateTime::now_utc()),
            applied_generation: self.generation,
            last_refusal: self.last_refusal.clone(),
            docker_reachable: self.docker_up,
            docker_version: self
                .docker
                .as_ref()
                .filter(|_| self.docker_up)
                .map(|d| d.version.clone()),
            docker_root_dir: self
                .docker
                .as_ref()
                .map(|d| d.root_dir.display().to_string()),
            draining: self.draining,
            units,
        }
    }

    /// Publishes the report to heartbeats and `status.json` when something changed.
    pub fn publish(&mut self) {
        let report = self.report();
        self.deps.report.send_replace(report.clone());
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if let Some(p) = &self.deps.status_path
            && let Err(e) = report::write(p, &report)
        {
            tracing::warn!(error = %format!("{e:#}"), path = %p.display(), "write status file");
        }
    }
}

#[cfg(test)]
mod tests;
