//! Applying a pushed generation: validate every assignment, verify every new or changed
//! runner's token, persist, then switch the running set (all or nothing).

use std::collections::VecDeque;

use super::{Supervisor, UnitEntry, now};
use crate::fleet::desired::{self, Applied, Assignment, Desired, Raw, rfc3339};
use crate::fleet::messages::{DesiredState, RunnerEventKind, ToController};
use crate::runner::error_chain;
use crate::units::{Event, Unit, UnitState};
use drover_gitlab::{GitLabError, RunnerAuth};

impl Supervisor {
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
        // Pre-flight of the new and changed runners (unchanged ones passed theirs when they
        // were applied, and the disk collector keeps their images).
        let configs: Vec<drover_proto::spec::RunnerConfig> =
            changed.iter().map(|a| a.config.clone()).collect();
        for w in self.deps.docker.preflight(&configs).await? {
            tracing::warn!(generation = ds.generation, "pre-flight: {w}");
        }
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
                    || e.assignment.raw.cache_s3_access_key != a.raw.cache_s3_access_key
                    || e.assignment.raw.cache_s3_secret_key != a.raw.cache_s3_secret_key
                    || e.assignment.raw.cache_s3_session_token != a.raw.cache_s3_session_token
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
    pub(super) fn switch(&mut self, desired: Desired) {
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
            let draining = self.draining || self.stopping;
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
}
