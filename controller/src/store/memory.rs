//! [`Store`] in memory: the fake for fast unit tests of code above the store. It applies the
//! same token rules ([`crate::tokens::check`]) and the same all-or-nothing enrollment.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::{
    AckRecord, AgentRecord, AgentRollout, AgentStep, AgentStore, Assignment, EnrollmentStore,
    EventFilter, EventRecord, EventStore, Facts, GenerationRecord, Retention, Retired,
    RolloutState, RolloutStore, RunnerStore, StoreError,
};
use crate::tokens::{self, TokenRecord, TokenRefusal};

#[derive(Debug, Default)]
struct Inner {
    tokens: BTreeMap<String, TokenRecord>,
    agents: BTreeMap<String, AgentRecord>,
    generations: BTreeMap<u64, GenerationRecord>,
    assignments: BTreeMap<(String, String), Assignment>,
    retired: BTreeMap<i64, Retired>,
    next_retired: i64,
    rollouts: BTreeMap<String, AgentRollout>,
    events: BTreeMap<u64, EventRecord>,
    next_event: u64,
    /// A table whose every write fails (see [`MemoryStore::failing_on`]).
    fail_on: Option<&'static str>,
}

impl Inner {
    /// The injected failure of a write to `table`, checked before an operation changes
    /// anything (so a failed operation, as in SQLite, leaves nothing half done).
    fn fail_if_injected(&self, table: &'static str) -> Result<(), StoreError> {
        match self.fail_on {
            Some(t) if t == table => Err(StoreError::Injected(table)),
            _ => Ok(()),
        }
    }

    /// The agent's rollout progress, created at zero when it has none.
    fn rollout_mut(&mut self, agent_id: &str) -> &mut AgentRollout {
        self.rollouts
            .entry(agent_id.to_string())
            .or_insert_with(|| AgentRollout {
                agent_id: agent_id.to_string(),
                ..AgentRollout::default()
            })
    }

    fn add_retired(&mut self, r: &Retired) -> i64 {
        self.next_retired += 1;
        let id = self.next_retired;
        self.retired.insert(id, Retired { id, ..r.clone() });
        id
    }
}

/// An in-memory store.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// A store whose every write to `table` fails with [`StoreError::Injected`]: for tests
    /// showing that an operation fails whole.
    pub fn failing_on(table: &'static str) -> MemoryStore {
        let store = MemoryStore::default();
        store.lock().fail_on = Some(table);
        store
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl EnrollmentStore for MemoryStore {
    fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.lock().tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut v: Vec<TokenRecord> = self.lock().tokens.values().cloned().collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(v)
    }

    fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        Ok(self.lock().tokens.get(id).cloned())
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .tokens
            .get_mut(id)
            .map(|t| t.revoked = true)
            .is_some())
    }

    fn enroll(
        &self,
        token_id: &str,
        secret_hash: &[u8; 32],
        now: OffsetDateTime,
        mut agent: AgentRecord,
    ) -> Result<AgentRecord, StoreError> {
        let mut g = self.lock();
        let record = g
            .tokens
            .get(token_id)
            .ok_or_else(|| TokenRefusal::Unknown(token_id.to_string()))?;
        tokens::check(record, secret_hash, now)?;
        if g.agents.contains_key(&agent.id) {
            return Err(StoreError::AgentExists(agent.id));
        }
        agent.labels = record.labels.clone();
        if let Some(t) = g.tokens.get_mut(token_id) {
            t.uses_left = t.uses_left.saturating_sub(1);
        }
        g.agents.insert(agent.id.clone(), agent.clone());
        Ok(agent)
    }
}

impl AgentStore for MemoryStore {
    fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.lock().agents.get(id).cloned())
    }

    fn agent_labels(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        Ok(self.lock().agents.get(id).map(|a| a.labels.clone()))
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        Ok(self.lock().agents.values().cloned().collect())
    }

    fn agent_seen(
        &self,
        id: &str,
        at: OffsetDateTime,
        facts: Option<&Facts>,
        ips: Option<&[String]>,
        applied_generation: Option<u64>,
    ) -> Result<(), StoreError> {
        if let Some(a) = self.lock().agents.get_mut(id) {
            a.last_seen = Some(at);
            if let Some(f) = facts {
                a.facts = f.clone();
            }
            if let Some(ips) = ips {
                a.facts.ips = ips.to_vec();
            }
            if let Some(g) = applied_generation {
                a.applied_generation = g;
            }
        }
        Ok(())
    }

    fn agents_seen(&self, seen: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        let mut g = self.lock();
        for (id, at) in seen {
            if let Some(a) = g.agents.get_mut(id)
                && a.last_seen.is_none_or(|s| s < *at)
            {
                a.last_seen = Some(*at);
            }
        }
        Ok(())
    }

    fn agent_cert_renewed(
        &self,
        id: &str,
        serial: &str,
        not_after: OffsetDateTime,
    ) -> Result<(), StoreError> {
        if let Some(a) = self.lock().agents.get_mut(id) {
            a.cert_serial = serial.to_string();
            a.cert_not_after = not_after;
        }
        Ok(())
    }

    fn revoke_agent(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .agents
            .get_mut(id)
            .map(|a| {
                a.revoked_at.get_or_insert(at);
            })
            .is_some())
    }
}

impl RolloutStore for MemoryStore {
    fn add_generation(&self, g: &GenerationRecord) -> Result<(), StoreError> {
        let mut inner = self.lock();
        let newest = inner.generations.keys().next_back().copied().unwrap_or(0);
        if g.generation != newest + 1 {
            return Err(StoreError::GenerationConflict {
                newest,
                got: g.generation,
            });
        }
        inner.generations.insert(g.generation, g.clone());
        Ok(())
    }

    fn latest_generation(&self) -> Result<Option<GenerationRecord>, StoreError> {
        Ok(self.lock().generations.values().next_back().cloned())
    }

    fn get_generation(&self, generation: u64) -> Result<Option<GenerationRecord>, StoreError> {
        Ok(self.lock().generations.get(&generation).cloned())
    }

    fn set_rollout_state(
        &self,
        generation: u64,
        state: RolloutState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .generations
            .get_mut(&generation)
            .map(|g| {
                g.state = state;
                g.reason = reason.to_string();
            })
            .is_some())
    }

    fn agent_rollouts(&self) -> Result<Vec<AgentRollout>, StoreError> {
        Ok(self.lock().rollouts.values().cloned().collect())
    }

    fn agent_rollout(&self, agent_id: &str) -> Result<Option<AgentRollout>, StoreError> {
        Ok(self.lock().rollouts.get(agent_id).cloned())
    }

    fn advance_agents(&self, steps: &[AgentStep]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if steps
            .iter()
            .any(|s| !s.put.is_empty() || !s.delete.is_empty())
        {
            inner.fail_if_injected("assignments")?;
        }
        if steps.iter().any(|s| !s.retire.is_empty()) {
            inner.fail_if_injected("retired")?;
        }
        for step in steps {
            for a in &step.put {
                inner
                    .assignments
                    .insert((a.agent_id.clone(), a.runner.clone()), a.clone());
            }
            for runner in &step.delete {
                inner
                    .assignments
                    .remove(&(step.agent_id.clone(), runner.clone()));
            }
            for r in &step.retire {
                inner.add_retired(r);
            }
            inner.rollout_mut(&step.agent_id).target_generation = step.generation;
        }
        Ok(())
    }

    fn rollout_progress(&self) -> Result<Vec<AgentRollout>, StoreError> {
        let inner = self.lock();
        Ok(inner
            .agents
            .values()
            .filter(|a| a.revoked_at.is_none())
            .map(|a| {
                inner
                    .rollouts
                    .get(&a.id)
                    .cloned()
                    .unwrap_or_else(|| AgentRollout {
                        agent_id: a.id.clone(),
                        ..AgentRollout::default()
                    })
            })
            .collect())
    }

    fn record_acks(&self, acks: &[AckRecord]) -> Result<(), StoreError> {
        let mut inner = self.lock();
        for ack in acks {
            let r = inner.rollout_mut(&ack.agent_id);
            r.ack_generation = ack.generation;
            r.ack_error = ack.error.clone();
            if ack.error.is_none()
                && let Some(a) = inner.agents.get_mut(&ack.agent_id)
            {
                a.applied_generation = ack.generation;
            }
        }
        Ok(())
    }
}

impl RunnerStore for MemoryStore {
    fn assignments(&self, agent_id: &str) -> Result<Vec<Assignment>, StoreError> {
        Ok(self
            .lock()
            .assignments
            .values()
            .filter(|a| a.agent_id == agent_id)
            .cloned()
            .collect())
    }

    fn all_assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        Ok(self.lock().assignments.values().cloned().collect())
    }

    fn retire_agent_runners(&self, agent_id: &str) -> Result<usize, StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("assignments")?;
        let current: Vec<Assignment> = g
            .assignments
            .values()
            .filter(|a| a.agent_id == agent_id)
            .cloned()
            .collect();
        if current.iter().any(|a| a.registered) {
            g.fail_if_injected("retired")?;
        }
        let mut queued = 0;
        for a in current {
            g.assignments
                .remove(&(a.agent_id.clone(), a.runner.clone()));
            if a.registered {
                g.add_retired(&Retired {
                    id: 0,
                    assignment: a,
                    after_generation: 0,
                });
                queued += 1;
            }
        }
        Ok(queued)
    }

    fn replace_assignment(&self, fresh: &Assignment) -> Result<Option<Assignment>, StoreError> {
        let mut g = self.lock();
        let key = (fresh.agent_id.clone(), fresh.runner.clone());
        let old = g.assignments.get(&key).cloned();
        g.fail_if_injected("assignments")?;
        if old.as_ref().is_some_and(|a| a.registered) {
            g.fail_if_injected("retired")?;
        }
        g.assignments.insert(key, fresh.clone());
        if let Some(old) = old.as_ref().filter(|a| a.registered) {
            g.add_retired(&Retired {
                id: 0,
                assignment: old.clone(),
                after_generation: 0,
            });
        }
        Ok(old)
    }

    fn rotate_assignment_token(
        &self,
        expected: &Assignment,
        token_sealed: &[u8],
        token_expires_at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("assignments")?;
        let key = (expected.agent_id.clone(), expected.runner.clone());
        match g.assignments.get_mut(&key) {
            Some(a)
                if a.gitlab_runner_id == expected.gitlab_runner_id
                    && a.registration_key == expected.registration_key
                    && a.token_sealed == expected.token_sealed =>
            {
                a.token_sealed = token_sealed.to_vec();
                a.token_expires_at = token_expires_at;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    fn list_retired(&self) -> Result<Vec<Retired>, StoreError> {
        Ok(self.lock().retired.values().cloned().collect())
    }

    fn delete_retired(&self, id: i64) -> Result<(), StoreError> {
        self.lock().retired.remove(&id);
        Ok(())
    }
}

impl EventStore for MemoryStore {
    fn add_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let mut g = self.lock();
        for e in events {
            g.next_event += 1;
            let id = g.next_event;
            g.events.insert(id, EventRecord { id, ..e.clone() });
        }
        Ok(())
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        let g = self.lock();
        let mut v: Vec<EventRecord> = g
            .events
            .values()
            .rev()
            .filter(|e| filter.matches(e))
            .take(filter.limit)
            .cloned()
            .collect();
        v.reverse();
        Ok(v)
    }

    fn prune_events(&self, keep: Retention) -> Result<usize, StoreError> {
        let mut g = self.lock();
        let before = g.events.len();
        let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
        let mut drop = Vec::new();
        for (id, e) in g.events.iter().rev() {
            if e.agent_id.is_empty() {
                continue;
            }
            let c = per_agent.entry(e.agent_id.clone()).or_default();
            *c += 1;
            if *c > keep.per_agent {
                drop.push(*id);
            }
        }
        for id in &drop {
            g.events.remove(id);
        }
        let extra: Vec<u64> = g.events.keys().rev().skip(keep.total).copied().collect();
        for id in &extra {
            g.events.remove(id);
        }
        Ok(before - g.events.len())
    }
}
