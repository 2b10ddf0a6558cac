//! [`Fleet`]: applies spec files as generations, advances rollouts, registers and retires
//! GitLab runners, builds each agent's `DesiredState`, and handles what agents report.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use drover_proto::spec::RunnerConfig;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::messages::{
    Ack, DesiredState, RunnerAssignment, RunnerEvent, RunnerEventKind, TokenRotated,
};
use super::registrar::{Registrar, RegistrarError, RunnerScope};
use super::rollout::{self, AgentView};
use super::selector;
use super::spec::{self, Change, SpecRefusal};
use crate::health::report::RunnerStatus;
use crate::secrets::{Sealer, SecretsError};
use crate::server::sessions::Sessions;
use crate::store::{
    self, AckRecord, AgentRecord, AgentStep, Assignment, GenerationRecord, Retired, RolloutState,
    Store, StoreError, Strategy, StrategyKind,
};

/// Sealing purpose of a generation's runner list.
pub const SPECS: &str = "drover runner specs";
/// Sealing purpose of a runner authentication token.
pub const RUNNER_TOKEN: &str = "drover runner token";

/// Errors of fleet operations.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The spec file was refused; nothing changed.
    #[error(transparent)]
    Spec(#[from] SpecRefusal),
    /// No such runner.
    #[error("no runner named {0:?}")]
    NoRunner(String),
    /// `rollout undo` with fewer than two generations.
    #[error("nothing to undo: generation {0} has no predecessor")]
    NothingToUndo(u64),
    /// A bad argument (strategy).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed value did not open.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A stored generation does not decode.
    #[error("generation {generation}: stored runners do not decode: {detail}")]
    Corrupt {
        /// Which.
        generation: u64,
        /// Why.
        detail: String,
    },
}

/// `drover runner apply` / `import`.
#[derive(Debug, Clone, Default)]
pub struct ApplyRequest {
    /// File name for messages.
    pub file: String,
    /// File content.
    pub text: String,
    /// Validate and diff only.
    pub dry_run: bool,
    /// Import: selector for runners without one.
    pub selector: BTreeMap<String, String>,
    /// Keep runners the file does not name.
    pub merge: bool,
    /// `None` = default strategy.
    pub strategy: Option<Strategy>,
}

/// What an apply did.
#[derive(Debug, Clone)]
pub struct ApplyOutcome {
    /// New generation, 0 when nothing was stored.
    pub generation: u64,
    /// Per-runner changes.
    pub changes: Vec<Change>,
    /// Ignored keys.
    pub warnings: Vec<String>,
}

/// Least time between two re-registrations of one runner on one agent, so a confused (or
/// hostile) agent repeating `token-invalid` cannot fill GitLab with runners.
const HEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// What the controller knows of an agent's runners from its last heartbeat.
#[derive(Debug, Clone, Default)]
struct Runtime {
    runners: Vec<RunnerStatus>,
    /// Last failure to advance this agent (registration).
    error: Option<String>,
    /// Last `token-invalid` acted on (checked with GitLab) per runner.
    healed: HashMap<String, std::time::Instant>,
}

/// The fleet service. Cheap to share behind an `Arc`.
pub struct Fleet {
    store: Arc<dyn Store>,
    sealer: Sealer,
    registrar: Arc<dyn Registrar>,
    sessions: Sessions,
    /// Serializes applies and reconciliations (registration included), so two never
    /// interleave their store writes.
    lock: tokio::sync::Mutex<()>,
    /// A reconciliation is waiting for `lock` and has not read the store yet: it will see
    /// every change recorded before it starts, so callers meanwhile need not queue another.
    /// (10,000 acks arriving together cost a few passes, not 10,000.)
    reconcile_queued: std::sync::atomic::AtomicBool,
    runtime: Mutex<HashMap<String, Runtime>>,
    /// Unsealed runners of recently used generations (generations never change once
    /// stored), so pushing one generation to 10,000 agents opens it once.
    unsealed: Mutex<BTreeMap<u64, Arc<Vec<RunnerConfig>>>>,
    /// Acknowledgements not yet written (see [`Fleet::on_ack`]).
    acks: Mutex<Vec<AckRecord>>,
    /// No reconciliation pass starts before this instant (see [`Fleet::reconcile`]).
    pass_gap: Mutex<std::time::Instant>,
}

/// The longest pause between two reconciliation passes.
const PASS_GAP_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// How many unsealed generations [`Fleet`] keeps (the newest and the ones agents are
/// still being moved from).
const UNSEALED_KEPT: usize = 4;

/// Agents advanced per store transaction in a reconciliation; each batch is pushed as soon
/// as it is written, so the first agents need not wait for the last.
const ADVANCE_BATCH: usize = 256;

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fleet")
    }
}

/// The spec's runner-creation token, when set and not empty.
fn creation_token(r: &RunnerConfig) -> Option<SecretString> {
    r.runner_creation_token
        .clone()
        .filter(|t| !t.expose_secret().trim().is_empty())
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl Fleet {
    /// A fleet over `store`, sealing with `sealer`, registering through `registrar`, and
    /// pushing through `sessions`.
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Sealer,
        registrar: Arc<dyn Registrar>,
        sessions: Sessions,
    ) -> Fleet {
        Fleet {
            store,
            sealer,
            registrar,
            sessions,
            lock: tokio::sync::Mutex::new(()),
            reconcile_queued: std::sync::atomic::AtomicBool::new(false),
            runtime: Mutex::new(HashMap::new()),
            unsealed: Mutex::new(BTreeMap::new()),
            acks: Mutex::new(Vec::new()),
            pass_gap: Mutex::new(std::time::Instant::now()),
        }
    }

    fn runtime(&self) -> std::sync::MutexGuard<'_, HashMap<String, Runtime>> {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The runners of a stored generation, unsealed.
    pub fn runners_of(&self, g: &GenerationRecord) -> Result<Vec<RunnerConfig>, FleetError> {
        let plain = self.sealer.open(SPECS, &g.runners_sealed)?;
        serde_json::from_slice(&plain).map_err(|e| FleetError::Corrupt {
            generation: g.generation,
            detail: e.to_string(),
        })
    }

    /// The runners of generation `generation` (`None` when there is no such generation),
    /// unsealed once and then kept.
    async fn generation_runners(
        &self,
        generation: u64,
    ) -> Result<Option<Arc<Vec<RunnerConfig>>>, FleetError> {
        if let Some(r) = self.unsealed_cache().get(&generation) {
            return Ok(Some(r.clone()));
        }
        match store::blocking(&self.store, move |s| s.get_generation(generation)).await? {
            Some(g) => Ok(Some(self.unsealed_runners(&g)?)),
            None => Ok(None),
        }
    }

    /// The runners of `g`, unsealed once and then kept.
    fn unsealed_runners(&self, g: &GenerationRecord) -> Result<Arc<Vec<RunnerConfig>>, FleetError> {
        if let Some(r) = self.unsealed_cache().get(&g.generation) {
            return Ok(r.clone());
        }
        let runners = Arc::new(self.runners_of(g)?);
        let mut cache = self.unsealed_cache();
        cache.insert(g.generation, runners.clone());
        while cache.len() > UNSEALED_KEPT {
            cache.pop_first();
        }
        Ok(runners)
    }

    fn unsealed_cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Vec<RunnerConfig>>>> {
        self.unsealed.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The newest generation and its runners (`None` before the first apply).
    pub async fn current(
        &self,
    ) -> Result<Option<(GenerationRecord, Vec<RunnerConfig>)>, FleetError> {
        match store::blocking(&self.store, |s| s.latest_generation()).await? {
            Some(g) => {
                let r = self.unsealed_runners(&g)?.as_ref().clone();
                Ok(Some((g, r)))
            }
            None => Ok(None),
        }
    }

    async fn default_strategy(&self) -> Result<Strategy, FleetError> {
        let agents = store::blocking(&self.store, |s| s.list_agents())
            .await?
            .iter()
            .filter(|a| a.revoked_at.is_none())
            .count();
        Ok(Strategy {
            kind: StrategyKind::Rolling,
            max_unavailable: rollout::default_max_unavailable(agents),
        })
    }

    /// Stores `runners` as the next generation (unless identical to the newest) and starts
    /// its rollout.
    async fn store_generation(
        &self,
        runners: Vec<RunnerConfig>,
        strategy: Option<Strategy>,
        reason: String,
        force: bool,
    ) -> Result<(u64, Vec<Change>), FleetError> {
        let generation = {
            let _g = self.lock.lock().await;
            let current = self.current().await?;
            let old = current.as_ref().map(|c| c.1.clone()).unwrap_or_default();
            let changes = spec::diff(&old, &runners);
            if !force && changes.iter().all(|c| c.kind == "unchanged") && current.is_some() {
                return Ok((0, changes));
            }
            let strategy = match strategy {
                Some(s) => s,
                None => self.default_strategy().await?,
            };
            // RunnerConfig serializes its tokens in clear: that is what gets sealed.
            let json = serde_json::to_vec(&runners)
                .map_err(|e| FleetError::Invalid(format!("serialize runners: {e}")))?;
            let g = GenerationRecord {
                generation: current.map(|c| c.0.generation).unwrap_or(0) + 1,
                created_at: now(),
                runners_sealed: self.sealer.seal(SPECS, &json),
                strategy,
                state: RolloutState::Progressing,
                reason,
            };
            let generation = g.generation;
            store::blocking(&self.store, move |s| s.add_generation(&g)).await?;
            tracing::info!(generation, "runner specs stored");
            (generation, changes)
        };
        self.reconcile().await;
        Ok(generation)
    }

    /// `drover runner apply` / `import`: validates everything first; a refusal changes
    /// nothing.
    pub async fn apply(&self, req: ApplyRequest) -> Result<ApplyOutcome, FleetError> {
        let file = spec::parse_spec(&req.text, &req.file, &req.selector)?;
        let mut runners = file.runners;
        if req.merge
            && let Some((_, current)) = self.current().await?
        {
            let named: Vec<String> = runners.iter().map(|r| r.name.clone()).collect();
            let mut kept: Vec<RunnerConfig> = current
                .into_iter()
                .filter(|r| !named.contains(&r.name))
                .collect();
            kept.append(&mut runners);
            runners = kept;
        }
        crate::wire::fits::check_runner_set(&runners)
            .map_err(|e| FleetError::Invalid(format!("{}: {e}", req.file)))?;
        if req.dry_run {
            let old = self.current().await?.map(|c| c.1).unwrap_or_default();
            return Ok(ApplyOutcome {
                generation: 0,
                changes: spec::diff(&old, &runners),
                warnings: file.warnings,
            });
        }
        let (generation, changes) = self
            .store_generation(
                runners,
                req.strategy,
                format!("applied {}", req.file),
                false,
            )
            .await?;
        Ok(ApplyOutcome {
            generation,
            changes,
            warnings: file.warnings,
        })
    }

    /// `drover runner delete NAME`: a new generation without it.
    pub async fn delete_runner(
        &self,
        name: &str,
        strategy: Option<Strategy>,
    ) -> Result<ApplyOutcome, FleetError> {
        let current = self.current().await?.map(|c| c.1).unwrap_or_default();
        if !current.iter().any(|r| r.name == name) {
            return Err(FleetError::NoRunner(name.to_string()));
        }
        let runners = current.into_iter().filter(|r| r.name != name).collect();
        let (generation, changes) = self
            .store_generation(runners, strategy, format!("deleted runner {name}"), false)
            .await?;
        Ok(ApplyOutcome {
            generation,
            changes,
            warnings: Vec::new(),
        })
    }

    /// `drover rollout undo`: a new generation with the runners of the one before the
    /// newest.
    pub async fn undo(&self, strategy: Option<Strategy>) -> Result<ApplyOutcome, FleetError> {
        let latest = store::blocking(&self.store, |s| s.latest_generation())
            .await?
            .map(|g| g.generation)
            .unwrap_or(0);
        let previous = match latest.checked_sub(1).filter(|p| *p > 0) {
            Some(p) => p,
            None => return Err(FleetError::NothingToUndo(latest)),
        };
        let g = store::blocking(&self.store, move |s| s.get_generation(previous))
            .await?
            .ok_or(FleetError::NothingToUndo(latest))?;
        let runners = self.runners_of(&g)?;
        let (generation, changes) = self
            .store_generation(
                runners,
                strategy,
                format!("undo: runners of generation {previous}"),
                true,
            )
            .await?;
        Ok(ApplyOutcome {
            generation,
            changes,
            warnings: Vec::new(),
        })
    }

    /// Advances the newest generation's rollout as far as its plan allows, records its
    /// state, and unregisters retired GitLab runners no agent needs any more. Errors are
    /// logged: this runs after every event and on a timer.
    pub async fn reconcile(&self) {
        use std::sync::atomic::Ordering;
        if self.reconcile_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        // Passes are spaced by twice the last one's duration: while 10,000 acks stream in,
        // passes that each read the whole fleet take at most a third of a core, and every
        // ack that arrives meanwhile joins the waiting pass.
        let gap = *self.pass_gap.lock().unwrap_or_else(|p| p.into_inner());
        if gap > std::time::Instant::now() {
            tokio::time::sleep_until(tokio::time::Instant::from_std(gap)).await;
        }
        let result = {
            let _g = self.lock.lock().await;
            self.reconcile_queued.store(false, Ordering::Release);
            let started = std::time::Instant::now();
            self.record_pending_acks().await;
            let result = self.try_reconcile().await;
            let took = started.elapsed().min(PASS_GAP_MAX);
            *self.pass_gap.lock().unwrap_or_else(|p| p.into_inner()) =
                std::time::Instant::now() + 2 * took;
            result
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "reconcile fleet");
        }
        self.unregister_retired().await;
    }

    /// One reconciliation pass; the caller holds `lock`.
    async fn try_reconcile(&self) -> Result<(), FleetError> {
        let Some((generation, runners)) = self.current().await? else {
            return Ok(());
        };
        let connected = self.sessions.connected();
        let views: Vec<AgentView> = store::blocking(&self.store, |s| s.rollout_progress())
            .await?
            .into_iter()
            .map(|p| AgentView {
                connected: connected.contains(&p.agent_id),
                id: p.agent_id,
                target: p.target_generation,
                ack_generation: p.ack_generation,
                ack_error: p.ack_error,
            })
            .collect();
        if generation.state == RolloutState::Halted {
            return Ok(());
        }
        let plan = rollout::plan(generation.generation, generation.strategy, &views);
        if plan.state != generation.state {
            let (g, state, reason) = (generation.generation, plan.state, plan.reason.clone());
            store::blocking(&self.store, move |s| s.set_rollout_state(g, state, &reason)).await?;
            if plan.state == RolloutState::Halted {
                tracing::warn!(generation = generation.generation, reason = %plan.reason, "rollout halted");
            }
        }
        let chosen = &plan.candidates[..plan.budget.min(plan.candidates.len())];
        for batch in chosen.chunks(ADVANCE_BATCH) {
            let ids = batch.to_vec();
            // The batch's agents and their assignments in one read.
            let agents = store::blocking(&self.store, move |s| {
                let mut out = Vec::with_capacity(ids.len());
                for id in &ids {
                    if let Some(agent) = s.get_agent(id)? {
                        let assignments = s.assignments(id)?;
                        out.push((agent, assignments));
                    }
                }
                Ok(out)
            })
            .await?;
            let mut steps = Vec::with_capacity(agents.len());
            for (agent, assignments) in agents {
                match self
                    .step(&agent, assignments, generation.generation, &runners)
                    .await
                {
                    Ok(step) => steps.push(step),
                    Err(e) => {
                        tracing::warn!(agent = %agent.id, generation = generation.generation, error = %e, "advance agent");
                        self.runtime().entry(agent.id.clone()).or_default().error =
                            Some(e.to_string());
                    }
                }
            }
            let steps = store::blocking(&self.store, move |s| {
                s.advance_agents(&steps)?;
                Ok(steps)
            })
            .await?;
            let mut runtime = self.runtime();
            for step in &steps {
                if let Some(rt) = runtime.get_mut(&step.agent_id) {
                    rt.error = None;
                }
            }
            drop(runtime);
            for step in &steps {
                self.sessions.kick(&step.agent_id);
            }
        }
        Ok(())
    }

    /// What moving `agent` to `generation` writes: a GitLab runner for every runner of the
    /// generation it selects (reusing ones whose registration still fits), the retirement
    /// of what it no longer uses, and its new target.
    async fn step(
        &self,
        agent: &AgentRecord,
        assignments: Vec<Assignment>,
        generation: u64,
        runners: &[RunnerConfig],
    ) -> Result<AgentStep, AdvanceError> {
        let current: HashMap<String, Assignment> = assignments
            .into_iter()
            .map(|a| (a.runner.clone(), a))
            .collect();
        let selected: Vec<&RunnerConfig> = runners
            .iter()
            .filter(|r| selector::matches(&r.selector, &agent.labels))
            .collect();
        let mut step = AgentStep {
            agent_id: agent.id.clone(),
            generation,
            ..AgentStep::default()
        };
        let retire = |old: &Assignment| Retired {
            id: 0,
            assignment: old.clone(),
            after_generation: generation,
        };
        for r in &selected {
            let key = spec::registration_key(r);
            let old = current.get(&r.name);
            if old.is_some_and(|a| a.registration_key == key) {
                continue;
            }
            step.put.push(self.obtain(agent, r, key).await?);
            if let Some(old) = old.filter(|a| a.registered) {
                step.retire.push(retire(old));
            }
        }
        for (name, old) in &current {
            if selected.iter().any(|r| &r.name == name) {
                continue;
            }
            // Unregistered once the agent runs the generation without it.
            step.delete.push(name.clone());
            if old.registered {
                step.retire.push(retire(old));
            }
        }
        Ok(step)
    }

    /// A GitLab runner for `r` on `agent`: the spec's `token` as is, a runner created with
    /// the spec's `runner_creation_token`, or a registration with its `registration_token`.
    async fn obtain(
        &self,
        agent: &AgentRecord,
        r: &RunnerConfig,
        key: String,
    ) -> Result<Assignment, AdvanceError> {
        if let Some(token) = r.token.as_ref().filter(|t| !t.expose_secret().is_empty()) {
            return Ok(Assignment {
                agent_id: agent.id.clone(),
                runner: r.name.clone(),
                url: r.url.clone(),
                gitlab_runner_id: r.id.unwrap_or(0),
                token_sealed: self.sealer.seal_secret(RUNNER_TOKEN, token),
                token_expires_at: r.token_expires_at.as_deref().and_then(parse_time),
                registration_key: key,
                registered: false,
            });
        }
        let registration = spec::registration(r, &agent.facts.hostname, &agent.id);
        let got = if let Some(access) = creation_token(r) {
            let scope = RunnerScope {
                runner_type: r
                    .runner_type
                    .clone()
                    .unwrap_or_else(|| "instance_type".into()),
                scope_id: match r.runner_type.as_deref() {
                    Some("group_type") => r.group_id,
                    Some("project_type") => r.project_id,
                    _ => None,
                },
            };
            self.registrar
                .create(&r.url, &access, &scope, &registration)
                .await?
        } else {
            let reg_token = r
                .registration_token
                .as_ref()
                .ok_or_else(|| AdvanceError::NoToken(r.name.clone()))?;
            self.registrar
                .register(&r.url, reg_token, &registration)
                .await?
        };
        tracing::info!(agent = %agent.id, runner = %r.name, gitlab_runner_id = got.id, "registered gitlab runner");
        Ok(Assignment {
            agent_id: agent.id.clone(),
            runner: r.name.clone(),
            url: r.url.clone(),
            gitlab_runner_id: got.id,
            token_sealed: self.sealer.seal_secret(RUNNER_TOKEN, &got.token),
            token_expires_at: got.token_expires_at,
            registration_key: key,
            registered: true,
        })
    }

    /// The runner-creation token of the spec a retired runner was created from, found by
    /// its registration key in the stored generations (newest first, at most 100 back).
    async fn creation_token_for(&self, a: &Assignment) -> Option<SecretString> {
        let newest = store::blocking(&self.store, |s| s.latest_generation())
            .await
            .ok()??
            .generation;
        for g in (1..=newest).rev().take(100) {
            let Ok(Some(rec)) = store::blocking(&self.store, move |s| s.get_generation(g)).await
            else {
                continue;
            };
            let Ok(runners) = self.runners_of(&rec) else {
                continue;
            };
            if let Some(r) = runners.iter().find(|r| {
                r.name == a.runner
                    && r.url == a.url
                    && spec::registration_key(r) == a.registration_key
            }) {
                return creation_token(r);
            }
        }
        None
    }

    /// Unregisters retired GitLab runners whose agent runs a generation without them (or
    /// is gone). A runner created with a runner-creation token is deleted by id with it
    /// (whatever its own token's state); otherwise it is unregistered with its own token,
    /// and a 403 means GitLab no longer accepts that token: nothing more can be done.
    async fn unregister_retired(&self) {
        let retired = match store::blocking(&self.store, |s| s.list_retired()).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "list retired runners");
                return;
            }
        };
        for r in retired {
            let a = &r.assignment;
            let agent_id = a.agent_id.clone();
            let due = r.after_generation == 0
                || match store::blocking(&self.store, move |s| s.get_agent(&agent_id)).await {
                    Ok(Some(agent)) => {
                        agent.revoked_at.is_some() || agent.applied_generation >= r.after_generation
                    }
                    Ok(None) => true,
                    Err(_) => false,
                };
            if !due {
                continue;
            }
            let token = match self.sealer.open_secret(RUNNER_TOKEN, &a.token_sealed) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(agent = %a.agent_id, runner = %a.runner, error = %e, "retired runner token");
                    self.drop_retired(r.id).await;
                    continue;
                }
            };
            let result = match self.creation_token_for(a).await {
                Some(access) if a.gitlab_runner_id > 0 => {
                    self.registrar
                        .delete(&a.url, &access, a.gitlab_runner_id)
                        .await
                }
                _ => match self.registrar.verify(&a.url, &token).await {
                    // The token may have come from the agent (a rotation kept unverified):
                    // unregister with it only when GitLab says it is the recorded runner's.
                    Ok(v) if v.id != a.gitlab_runner_id => {
                        tracing::warn!(agent = %a.agent_id, runner = %a.runner, gitlab_runner_id = a.gitlab_runner_id, token_of = v.id, "the retired runner's token belongs to another gitlab runner; not unregistered");
                        self.drop_retired(r.id).await;
                        continue;
                    }
                    Ok(_) => self.registrar.unregister(&a.url, &token).await,
                    Err(e) => Err(e),
                },
            };
            match result {
                Ok(()) => {
                    tracing::info!(agent = %a.agent_id, runner = %a.runner, gitlab_runner_id = a.gitlab_runner_id, "unregistered gitlab runner");
                    self.drop_retired(r.id).await;
                }
                Err(e) if e.forbidden => {
                    tracing::info!(agent = %a.agent_id, runner = %a.runner, gitlab_runner_id = a.gitlab_runner_id, "gitlab no longer accepts the retired runner's token; nothing to unregister");
                    self.drop_retired(r.id).await;
                }
                Err(e) => {
                    tracing::warn!(agent = %a.agent_id, runner = %a.runner, error = %e, "unregister gitlab runner; will retry");
                }
            }
        }
    }

    /// The desired state pushed to `agent_id`: its target generation's runners that select
    /// it, each with its own token. `None` before it was targeted.
    pub async fn desired_state(&self, agent_id: &str) -> Result<Option<DesiredState>, FleetError> {
        let id = agent_id.to_string();
        let read = store::blocking(&self.store, move |s| {
            let Some(labels) = s.agent_labels(&id)? else {
                return Ok(None);
            };
            let target = s.agent_rollout(&id)?.map(|r| r.target_generation);
            match target {
                None | Some(0) => Ok(None),
                Some(target) => Ok(Some((labels, target, s.assignments(&id)?))),
            }
        });
        let Some((labels, target, assignments)) = read.await? else {
            return Ok(None);
        };
        let Some(runners) = self.generation_runners(target).await? else {
            return Ok(None);
        };
        let assignments: HashMap<String, Assignment> = assignments
            .into_iter()
            .map(|a| (a.runner.clone(), a))
            .collect();
        let mut out = Vec::new();
        for r in runners
            .iter()
            .filter(|r| selector::matches(&r.selector, &labels))
        {
            let Some(a) = assignments.get(&r.name) else {
                tracing::warn!(agent = %agent_id, runner = %r.name, "no gitlab runner assigned; left out");
                continue;
            };
            let token = self.sealer.open_secret(RUNNER_TOKEN, &a.token_sealed)?;
            out.push(RunnerAssignment {
                name: r.name.clone(),
                spec_json: spec::agent_spec_json(r),
                runner_token: token,
                gitlab_runner_id: a.gitlab_runner_id,
                token_expires_at: a.token_expires_at,
            });
        }
        Ok(Some(DesiredState {
            generation: target,
            runners: out,
        }))
    }

    /// Writes the acknowledgements that arrived since the last pass, in one transaction;
    /// if the store fails they stay queued for the next pass.
    async fn record_pending_acks(&self) {
        let acks = std::mem::take(&mut *self.pending_acks());
        if acks.is_empty() {
            return;
        }
        let written = store::blocking(&self.store, move |s| Ok((s.record_acks(&acks), acks)));
        match written.await {
            Ok((Ok(()), _)) => {}
            Ok((Err(e), acks)) => {
                tracing::warn!(error = %e, acks = acks.len(), "record acknowledgements; kept for the next pass");
                let mut pending = self.pending_acks();
                let newer = std::mem::replace(&mut *pending, acks);
                pending.extend(newer);
            }
            Err(e) => tracing::warn!(error = %e, "record acknowledgements"),
        }
    }

    fn pending_acks(&self) -> std::sync::MutexGuard<'_, Vec<AckRecord>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An agent acknowledged (or refused) a generation: queued, and written by the
    /// reconciliation pass this starts (or the one already waiting), so acks arriving
    /// together share one transaction.
    pub async fn on_ack(&self, agent_id: &str, ack: &Ack) {
        let error = ack.refused.as_ref().map(|e| {
            if e.is_empty() {
                "refused without a reason".to_string()
            } else {
                e.chars().take(1000).collect::<String>()
            }
        });
        if let Some(e) = &error {
            tracing::warn!(agent = %agent_id, generation = ack.generation, error = %e, "agent refused generation");
        } else {
            tracing::info!(agent = %agent_id, generation = ack.generation, "agent applied generation");
        }
        self.pending_acks().push(AckRecord {
            agent_id: agent_id.to_string(),
            generation: ack.generation,
            error,
        });
        self.reconcile().await;
    }

    /// The agent reports that it rotated a runner token. Everything in the message is a
    /// claim: the runner must be one this agent is assigned, a runner id (when given) must
    /// be the one the controller recorded from GitLab, and GitLab itself must say the new
    /// token belongs to that runner (its expiry is then GitLab's, not the agent's). Only
    /// the token is kept; the recorded runner id never changes here. While GitLab cannot
    /// be asked, the token is kept unverified (the old one is already dead at GitLab):
    /// nothing acts on it in GitLab before [`Fleet::unregister_retired`] checks it again.
    pub async fn on_token_rotated(&self, agent_id: &str, t: &TokenRotated) -> Claim {
        let outcome = self.check_rotation(agent_id, t).await;
        match &outcome {
            Ok(Claim::Refused(why)) => {
                tracing::warn!(agent = %agent_id, runner = %t.runner, reason = %why, "rotated token refused")
            }
            Ok(Claim::Accepted(how)) => {
                tracing::info!(agent = %agent_id, runner = %t.runner, how = %how, "runner token rotated")
            }
            Err(e) => {
                tracing::warn!(agent = %agent_id, runner = %t.runner, error = %e, "record rotated token")
            }
        }
        outcome.unwrap_or_else(|e| Claim::Refused(format!("not recorded: {e}")))
    }

    async fn check_rotation(&self, agent_id: &str, t: &TokenRotated) -> Result<Claim, FleetError> {
        // Held across the GitLab check, like a reconciliation's registrations: a pass that
        // replaces this runner meanwhile would retire it with the token that just died.
        let _g = self.lock.lock().await;
        let id = agent_id.to_string();
        let Some(a) = store::blocking(&self.store, move |s| s.assignments(&id))
            .await?
            .into_iter()
            .find(|a| a.runner == t.runner)
        else {
            return Ok(Claim::Refused(format!(
                "token rotation for runner {:?}, which is not assigned to this agent",
                t.runner
            )));
        };
        if t.gitlab_runner_id != 0 && t.gitlab_runner_id != a.gitlab_runner_id {
            return Ok(Claim::Refused(format!(
                "token rotation names gitlab runner {}, but this agent's runner {} is gitlab runner {}",
                t.gitlab_runner_id, a.runner, a.gitlab_runner_id
            )));
        }
        if t.token.expose_secret().trim().is_empty() {
            return Ok(Claim::Refused("token rotation without a token".into()));
        }
        let token = t.token.clone();
        let claimed_expiry = t.token_expires_at;
        let expires_at;
        let how = match self.registrar.verify(&a.url, &token).await {
            Ok(v) if a.gitlab_runner_id != 0 && v.id != a.gitlab_runner_id => {
                return Ok(Claim::Refused(format!(
                    "the reported token belongs to gitlab runner {}, not to this agent's runner {} (gitlab runner {})",
                    v.id, a.runner, a.gitlab_runner_id
                )));
            }
            Ok(v) => {
                expires_at = v.token_expires_at;
                "verified with gitlab".to_string()
            }
            Err(e) if e.forbidden => {
                return Ok(Claim::Refused(
                    "gitlab does not accept the reported token".into(),
                ));
            }
            Err(e) => {
                expires_at = claimed_expiry;
                format!("kept unverified: {}", e.message)
            }
        };
        let sealed = self.sealer.seal_secret(RUNNER_TOKEN, &token);
        let runner = a.runner.clone();
        if !store::blocking(&self.store, move |s| {
            s.rotate_assignment_token(&a, &sealed, expires_at)
        })
        .await?
        {
            return Ok(Claim::Refused(format!(
                "runner {runner} was changed while its rotated token was checked"
            )));
        }
        Ok(Claim::Accepted(how))
    }

    /// A runner event. `token-invalid` is a claim too: when GitLab still accepts the token
    /// the controller recorded for that runner, it is refused; otherwise the runner is
    /// registered anew, the new token pushed, and the old GitLab runner (the one the
    /// controller recorded) retired at once (best effort: GitLab may refuse its dead token).
    pub async fn on_runner_event(&self, agent_id: &str, ev: &RunnerEvent) -> Claim {
        tracing::info!(agent = %agent_id, runner = %ev.runner, kind = %ev.kind, message = %ev.message, "runner event");
        if ev.kind != RunnerEventKind::TokenInvalid {
            return Claim::Accepted(String::new());
        }
        let claim = match self.heal(agent_id, &ev.runner).await {
            Ok(Heal::Done) => {
                self.sessions.kick(agent_id);
                Claim::Accepted("re-registered".into())
            }
            Ok(Heal::Skipped) => Claim::Accepted(String::new()),
            Ok(Heal::Refused(why)) => {
                tracing::warn!(agent = %agent_id, runner = %ev.runner, reason = %why, "token-invalid refused");
                Claim::Refused(why)
            }
            Err(e) => {
                tracing::warn!(agent = %agent_id, runner = %ev.runner, error = %e, "re-register runner");
                Claim::Accepted(String::new())
            }
        };
        self.unregister_retired().await;
        claim
    }

    async fn heal(&self, agent_id: &str, runner: &str) -> Result<Heal, AdvanceError> {
        let _g = self.lock.lock().await;
        let (id, name) = (agent_id.to_string(), runner.to_string());
        let read = store::blocking(&self.store, move |s| {
            let Some(agent) = s.get_agent(&id)? else {
                return Ok(None);
            };
            let old = s.assignments(&id)?.into_iter().find(|a| a.runner == name);
            let target = s.agent_rollout(&id)?.map(|r| r.target_generation);
            Ok(old.map(|old| (agent, old, target.unwrap_or(0))))
        });
        let Some((agent, old, target)) = read.await? else {
            return Ok(Heal::Skipped);
        };
        if let Some(at) = self
            .runtime()
            .get(agent_id)
            .and_then(|r| r.healed.get(runner).copied())
            && at.elapsed() < HEAL_INTERVAL
        {
            tracing::warn!(agent = %agent_id, runner, "token-invalid again within {} s of the last one acted on; ignored", HEAL_INTERVAL.as_secs());
            return Ok(Heal::Skipped);
        }
        if !old.registered {
            tracing::warn!(agent = %agent_id, runner, "the runner token given in the spec is invalid; put a valid `token` in the spec, or use `registration_token` or `runner_creation_token`");
            return Ok(Heal::Skipped);
        }
        let Some(runners) = self.generation_runners(target).await? else {
            return Ok(Heal::Skipped);
        };
        let Some(r) = runners.iter().find(|r| r.name == runner) else {
            return Ok(Heal::Skipped);
        };
        // GitLab still accepting the recorded token of the recorded runner means the claim
        // is false: nothing is registered or deleted.
        let recorded = self.sealer.open_secret(RUNNER_TOKEN, &old.token_sealed)?;
        let checked = self.registrar.verify(&old.url, &recorded).await;
        // Attempts, refused ones included, are spaced by HEAL_INTERVAL: a repeated false
        // claim costs GitLab one verify per interval.
        self.runtime()
            .entry(agent_id.to_string())
            .or_default()
            .healed
            .insert(runner.to_string(), std::time::Instant::now());
        if let Ok(v) = checked
            && v.id == old.gitlab_runner_id
        {
            return Ok(Heal::Refused(format!(
                "token-invalid, but gitlab accepts the token of gitlab runner {}",
                old.gitlab_runner_id
            )));
        }
        let fresh = self.obtain(&agent, r, spec::registration_key(r)).await?;
        // The fresh runner and the retirement of the old one land together: a failure
        // between them would leave a GitLab runner that nothing unregisters.
        let gitlab_runner_id = fresh.gitlab_runner_id;
        store::blocking(&self.store, move |s| s.replace_assignment(&fresh)).await?;
        tracing::info!(agent = %agent_id, runner, gitlab_runner_id, "re-registered runner after token-invalid");
        Ok(Heal::Done)
    }

    /// Keeps the runner statuses of a heartbeat for `drover agents`.
    pub fn on_heartbeat(&self, agent_id: &str, runners: &[RunnerStatus]) {
        self.runtime()
            .entry(agent_id.to_string())
            .or_default()
            .runners = runners.to_vec();
    }

    /// The agent's runners for `drover agents`. The assignments say which GitLab runner
    /// each one is and when its token expires (a heartbeat sent while an old unit was
    /// still stopping would name the retired runner); the last heartbeat says how the unit
    /// runs. Units the agent still reports but no longer has an assignment for (being
    /// stopped) follow, as reported.
    pub async fn runner_statuses(&self, agent_id: &str) -> Vec<RunnerStatus> {
        let id = agent_id.to_string();
        let assignments = store::blocking(&self.store, move |s| s.assignments(&id))
            .await
            .unwrap_or_default();
        self.statuses_of(agent_id, assignments)
    }

    /// [`Fleet::runner_statuses`] of every agent in `ids`, from one read of the store.
    pub async fn runner_statuses_of(&self, ids: &[String]) -> Vec<Vec<RunnerStatus>> {
        let all = store::blocking(&self.store, |s| s.all_assignments())
            .await
            .unwrap_or_default();
        let mut by_agent = self.statuses_by_agent(&all);
        ids.iter()
            .map(|id| {
                by_agent
                    .remove(id)
                    .unwrap_or_else(|| self.statuses_of(id, Vec::new()))
            })
            .collect()
    }

    /// [`Fleet::runner_statuses`] of every agent holding one of `assignments`.
    pub fn statuses_by_agent(
        &self,
        assignments: &[Assignment],
    ) -> HashMap<String, Vec<RunnerStatus>> {
        let mut grouped: HashMap<String, Vec<Assignment>> = HashMap::new();
        for a in assignments {
            grouped
                .entry(a.agent_id.clone())
                .or_default()
                .push(a.clone());
        }
        grouped
            .into_iter()
            .map(|(id, a)| {
                let statuses = self.statuses_of(&id, a);
                (id, statuses)
            })
            .collect()
    }

    /// The statuses of `agent_id`'s runners, given its assignments.
    fn statuses_of(&self, agent_id: &str, assignments: Vec<Assignment>) -> Vec<RunnerStatus> {
        let mut reported = self
            .runtime()
            .get(agent_id)
            .map(|rt| rt.runners.clone())
            .unwrap_or_default();
        let mut out: Vec<RunnerStatus> = assignments
            .into_iter()
            .map(|a| {
                let unit = reported
                    .iter()
                    .position(|r| {
                        r.name == a.runner
                            && (r.gitlab_runner_id == 0 || r.gitlab_runner_id == a.gitlab_runner_id)
                    })
                    .map(|i| reported.remove(i))
                    .unwrap_or_default();
                RunnerStatus {
                    name: a.runner,
                    gitlab_runner_id: a.gitlab_runner_id,
                    token_expires_at: a.token_expires_at,
                    ..unit
                }
            })
            .collect();
        out.extend(reported);
        out
    }

    /// The last error advancing this agent (e.g. GitLab refused the registration).
    pub fn agent_error(&self, agent_id: &str) -> Option<String> {
        self.runtime().get(agent_id).and_then(|r| r.error.clone())
    }

    /// A deleted agent: retire every GitLab runner it had and unregister them now.
    pub async fn on_agent_deleted(&self, agent_id: &str) {
        {
            // After a pass that was advancing this agent: what it registered is retired too
            // (the agent is revoked already, so no later pass selects it).
            let _g = self.lock.lock().await;
            let id = agent_id.to_string();
            if let Err(e) = store::blocking(&self.store, move |s| s.retire_agent_runners(&id)).await
            {
                tracing::warn!(agent = %agent_id, error = %e, "retire runners of deleted agent");
            }
        }
        self.runtime().remove(agent_id);
        self.reconcile().await;
    }

    /// Drops a retired entry once unregistered (or found beyond help); a failure leaves it
    /// for the next pass.
    async fn drop_retired(&self, id: i64) {
        if let Err(e) = store::blocking(&self.store, move |s| s.delete_retired(id)).await {
            tracing::warn!(error = %e, retired = id, "drop retired runner entry");
        }
    }

    /// The store (for read-only admin views).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// What the controller made of an agent's report (a rotated token, a runner event).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Taken (how it was checked, or empty).
    Accepted(String),
    /// Refused, and why: nothing was recorded and nothing done in GitLab.
    Refused(String),
}

/// The outcome of a `token-invalid`.
#[derive(Debug)]
enum Heal {
    /// Registered anew.
    Done,
    /// Nothing to do (no such runner, a spec token, rate-limited).
    Skipped,
    /// The claim is false.
    Refused(String),
}

/// Why an agent could not be advanced.
#[derive(Debug, thiserror::Error)]
enum AdvanceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Fleet(#[from] FleetError),
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    #[error("register runner: {0}")]
    Register(#[from] RegistrarError),
    #[error("runner {0}: none of token, registration_token, runner_creation_token")]
    NoToken(String),
}

#[cfg(test)]
mod tests;
