//! Agent reports: acks, rotated tokens and runner events (a `token-invalid` re-registers
//! the runner). Every report is a claim, checked before anything is recorded.

use secrecy::ExposeSecret;

use super::reconcile::AdvanceError;
use super::{Fleet, FleetError, RUNNER_TOKEN};
use crate::fleet::messages::{Ack, RunnerEvent, RunnerEventKind, TokenRotated};
use crate::fleet::spec;
use crate::store::{self, AckRecord};

/// Least time between two re-registrations of one runner on one agent, so a confused (or
/// hostile) agent repeating `token-invalid` cannot fill GitLab with runners.
const HEAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

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

impl Fleet {
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
}
