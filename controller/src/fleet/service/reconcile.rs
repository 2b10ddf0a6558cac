//! Reconciliation: passes that move agents to the newest generation in batches, registering
//! the GitLab runners they need and writing the queued acks.

use std::collections::HashMap;

use drover_proto::spec::RunnerConfig;
use secrecy::ExposeSecret;

use super::{Fleet, FleetError, RUNNER_TOKEN, creation_token, parse_time};
use crate::fleet::gate::Verdict;
use crate::fleet::registrar::{RegistrarError, RunnerScope};
use crate::fleet::rollout::{self, AgentView};
use crate::fleet::selector;
use crate::fleet::spec;
use crate::secrets::SecretsError;
use crate::store::{
    self, AckRecord, AgentRecord, AgentStep, Assignment, Retired, RolloutState, StoreError,
};

/// The longest pause between two reconciliation passes.
const PASS_GAP_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// Agents advanced per store transaction in a reconciliation; each batch is pushed as soon
/// as it is written, so the first agents need not wait for the last.
const ADVANCE_BATCH: usize = 256;

/// Why an agent could not be advanced.
#[derive(Debug, thiserror::Error)]
pub(super) enum AdvanceError {
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

impl Fleet {
    /// Advances the newest generation's rollout as far as its plan allows, records its
    /// state, and unregisters retired GitLab runners no agent needs any more. Errors are
    /// logged: this runs after every event and on a timer.
    ///
    /// On a replica that does not lead, only the queued acks are written; the leader is
    /// asked (through the fan-out) to run the pass.
    pub async fn reconcile(&self) {
        use std::sync::atomic::Ordering;
        if !self.cluster.is_leader() {
            self.write_acks_for_the_leader().await;
            return;
        }
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
            let mut result = self.try_reconcile().await;
            // An auto-rollback stored a new generation: plan it in the same pass.
            if matches!(result, Ok(true)) {
                result = self.try_reconcile().await;
            }
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

    /// One reconciliation pass; the caller holds `lock`. `true` when it halted a gated
    /// rollout and rolled it back (a new generation to plan).
    async fn try_reconcile(&self) -> Result<bool, FleetError> {
        let Some((generation, runners)) = self.current().await? else {
            return Ok(false);
        };
        let connected = self.connected_agents();
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
            return Ok(false);
        }
        let verdict = match &generation.strategy.gate {
            Some(gate) => {
                self.gate_verdict(gate, generation.generation, &views)
                    .await?
            }
            None => Verdict::Pass,
        };
        let plan =
            rollout::plan_gated(generation.generation, generation.strategy, &views, &verdict);
        if plan.state != generation.state {
            // A halt says why; otherwise the generation keeps what it was (`undo: ...`,
            // `auto-rollback of ...`).
            let reason = if plan.reason.is_empty() {
                generation.reason.clone()
            } else {
                plan.reason.clone()
            };
            let (g, state) = (generation.generation, plan.state);
            store::blocking(&self.fenced, move |s| {
                s.set_rollout_state(g, state, &reason)
            })
            .await?;
            if plan.state == RolloutState::Halted {
                tracing::warn!(generation = generation.generation, reason = %plan.reason, "rollout halted");
                if generation.strategy.gate.is_some_and(|g| g.auto_rollback) {
                    return self.auto_rollback(&generation, &plan.reason).await;
                }
            }
        }
        let chosen = &plan.candidates[..plan.budget.min(plan.candidates.len())];
        for batch in chosen.chunks(ADVANCE_BATCH) {
            // Registrations call GitLab, which the lease's fencing does not cover: a
            // replica that lost the lease stops before the next batch.
            if !self.cluster.is_leader() {
                return Err(FleetError::Store(StoreError::NotLeader));
            }
            let ids = batch.to_vec();
            // The batch's agents and their assignments in one read.
            let agents =
                store::blocking(&self.store, move |s| s.agents_with_assignments(&ids)).await?;
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
            let steps = store::blocking(&self.fenced, move |s| {
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
        Ok(false)
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
    pub(super) async fn obtain(
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

    /// On a replica that does not lead: writes the queued acks and asks the leader for a
    /// pass. One writer at a time: acks queued while it writes are taken by its next
    /// round, so 5,000 acks arriving together cost a few transactions, not 5,000. A
    /// failed write leaves them queued for the next ack.
    async fn write_acks_for_the_leader(&self) {
        use std::sync::atomic::Ordering;
        if self.acks_writing.swap(true, Ordering::AcqRel) {
            return;
        }
        loop {
            let written = self.record_pending_acks().await;
            self.cluster
                .publish(crate::replicas::fanout::Change::Reconcile);
            self.acks_writing.store(false, Ordering::Release);
            if !written || self.pending_acks().is_empty() {
                return;
            }
            if self.acks_writing.swap(true, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// Writes the acknowledgements that arrived since the last pass, in one transaction;
    /// if the store fails they stay queued for the next pass (`false`).
    async fn record_pending_acks(&self) -> bool {
        let acks = std::mem::take(&mut *self.pending_acks());
        if acks.is_empty() {
            return true;
        }
        let written = store::blocking(&self.store, move |s| Ok((s.record_acks(&acks), acks)));
        match written.await {
            Ok((Ok(()), _)) => true,
            Ok((Err(e), acks)) => {
                tracing::warn!(error = %e, acks = acks.len(), "record acknowledgements; kept for the next pass");
                let mut pending = self.pending_acks();
                let newer = std::mem::replace(&mut *pending, acks);
                pending.extend(newer);
                false
            }
            Err(e) => {
                tracing::warn!(error = %e, "record acknowledgements");
                false
            }
        }
    }

    pub(super) fn pending_acks(&self) -> std::sync::MutexGuard<'_, Vec<AckRecord>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }
}
