//! [`Store`] in memory: the fake for fast unit tests of code above the store. It applies the
//! same token rules ([`crate::tokens::check`]) and the same all-or-nothing enrollment.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::upgrades::{
    AgentUpgrade, BinaryRecord, CHUNK_BYTES, UpgradeRecord, UpgradeState, UpgradeStore,
};
use super::{
    AckRecord, AgentRecord, AgentRollout, AgentStep, AgentStore, Assignment, DrainRecord,
    DrainStore, EnrollmentStore, EventFilter, EventRecord, EventStore, Facts, FleetSample,
    GenerationRecord, JobFilter, JobRecord, JobRetention, JobStore, Retention, Retired,
    RolloutState, RolloutStore, RunnerStore, StoreError,
};
use super::{BLOB_CHUNK_BYTES, DeliveryRecord, ImageRecord, ImageStore};
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
    jobs: BTreeMap<(String, i64), JobRecord>,
    samples: BTreeMap<OffsetDateTime, FleetSample>,
    drains: BTreeMap<String, DrainRecord>,
    blobs: BTreeMap<String, Vec<u8>>,
    images: BTreeMap<String, ImageRecord>,
    deliveries: BTreeMap<(String, String), DeliveryRecord>,
    binaries: BTreeMap<String, (BinaryRecord, Vec<u8>)>,
    upgrades: BTreeMap<u64, UpgradeRecord>,
    agent_upgrades: BTreeMap<(u64, String), AgentUpgrade>,
    host_reasons: BTreeMap<String, Vec<String>>,
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

impl super::BatchReadStore for MemoryStore {}

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

    fn set_host_reasons(&self, reasons: &[(String, Vec<String>)]) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("agents")?;
        for (id, r) in reasons {
            if !g.agents.contains_key(id) {
                continue;
            }
            if r.is_empty() {
                g.host_reasons.remove(id);
            } else {
                g.host_reasons.insert(id.clone(), r.clone());
            }
        }
        Ok(())
    }

    fn host_reasons(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        Ok(self.lock().host_reasons.clone())
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
        let mut g = self.lock();
        let Some(a) = g.agents.get_mut(id) else {
            return Ok(false);
        };
        a.revoked_at.get_or_insert(at);
        g.drains.remove(id);
        Ok(true)
    }
}

impl Inner {
    /// Refuses the first id of `ids` that is unknown or revoked.
    fn live_agents(&self, ids: &[String]) -> Result<(), StoreError> {
        match ids
            .iter()
            .find(|id| self.agents.get(*id).is_none_or(|a| a.revoked_at.is_some()))
        {
            Some(id) => Err(StoreError::UnknownAgent(id.clone())),
            None => Ok(()),
        }
    }
}

impl DrainStore for MemoryStore {
    fn drain_agents(
        &self,
        ids: &[String],
        requested_at: OffsetDateTime,
        deadline_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.live_agents(ids)?;
        g.fail_if_injected("agent_drains")?;
        for id in ids {
            g.drains.insert(
                id.clone(),
                DrainRecord {
                    agent_id: id.clone(),
                    requested_at,
                    deadline_at,
                },
            );
        }
        Ok(())
    }

    fn undrain_agents(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut g = self.lock();
        g.live_agents(ids)?;
        g.fail_if_injected("agent_drains")?;
        let mut out: Vec<String> = ids
            .iter()
            .filter(|id| g.drains.remove(*id).is_some())
            .cloned()
            .collect();
        out.sort();
        out.dedup();
        Ok(out)
    }

    fn agent_drain(&self, id: &str) -> Result<Option<DrainRecord>, StoreError> {
        Ok(self.lock().drains.get(id).cloned())
    }

    fn list_drains(&self) -> Result<Vec<DrainRecord>, StoreError> {
        Ok(self.lock().drains.values().cloned().collect())
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

/// Newest first: by `updated_at`, then job id, then agent (the SQL stores' order).
fn newest_first(a: &JobRecord, b: &JobRecord) -> std::cmp::Ordering {
    b.updated_at
        .cmp(&a.updated_at)
        .then(b.job_id.cmp(&a.job_id))
        .then(a.agent_id.cmp(&b.agent_id))
}

impl JobStore for MemoryStore {
    fn upsert_jobs(&self, jobs: &[JobRecord]) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("jobs")?;
        for j in jobs {
            match g.jobs.get_mut(&(j.agent_id.clone(), j.job_id)) {
                Some(old) => old.merge(j),
                None => {
                    g.jobs.insert((j.agent_id.clone(), j.job_id), j.clone());
                }
            }
        }
        Ok(())
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let g = self.lock();
        let mut v: Vec<JobRecord> = g
            .jobs
            .values()
            .filter(|j| filter.matches(j))
            .cloned()
            .collect();
        v.sort_by(newest_first);
        v.truncate(filter.limit);
        Ok(v)
    }

    fn prune_jobs(&self, keep: JobRetention, now: OffsetDateTime) -> Result<usize, StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("jobs")?;
        let before = g.jobs.len() + g.samples.len();
        let cutoff = now.checked_sub(keep.max_age).unwrap_or(now);
        g.jobs.retain(|_, j| j.updated_at >= cutoff);
        let mut all: Vec<JobRecord> = g.jobs.values().cloned().collect();
        all.sort_by(newest_first);
        let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
        let mut kept = 0usize;
        for j in all {
            let n = per_agent.entry(j.agent_id.clone()).or_default();
            *n += 1;
            let drop_it = *n > keep.per_agent || {
                // Counted only among the rows the per-agent rule kept, as the SQL does.
                kept += 1;
                kept > keep.total
            };
            if drop_it {
                g.jobs.remove(&(j.agent_id, j.job_id));
            }
        }
        let extra: Vec<OffsetDateTime> =
            g.samples.keys().rev().skip(keep.samples).copied().collect();
        for at in extra {
            g.samples.remove(&at);
        }
        Ok(before - g.jobs.len() - g.samples.len())
    }

    fn add_fleet_sample(&self, sample: &FleetSample) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("fleet_samples")?;
        g.samples.insert(sample.at, *sample);
        Ok(())
    }

    fn list_fleet_samples(&self, since: OffsetDateTime) -> Result<Vec<FleetSample>, StoreError> {
        Ok(self
            .lock()
            .samples
            .range(since..)
            .map(|(_, s)| *s)
            .collect())
    }
}

impl ImageStore for MemoryStore {
    fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        Ok(self.lock().blobs.get(digest).map(|b| b.len() as u64))
    }

    fn put_blob(
        &self,
        digest: &str,
        size: u64,
        data: &mut (dyn std::io::Read + Send),
    ) -> Result<bool, StoreError> {
        if self.lock().blobs.contains_key(digest) {
            return Ok(false);
        }
        let mut bytes = Vec::new();
        let read = std::io::Read::read_to_end(&mut std::io::Read::take(data, size), &mut bytes)
            .map_err(|e| StoreError::BlobRead {
                digest: digest.to_string(),
                detail: e.to_string(),
            })?;
        if read as u64 != size {
            return Err(StoreError::BlobRead {
                digest: digest.to_string(),
                detail: format!("{read} bytes of {size}"),
            });
        }
        let mut g = self.lock();
        g.fail_if_injected("image_blobs")?;
        g.blobs.insert(digest.to_string(), bytes);
        Ok(true)
    }

    fn blob_chunk(&self, digest: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let g = self.lock();
        let Some(b) = g.blobs.get(digest) else {
            return Ok(None);
        };
        let start = usize::try_from(index)
            .unwrap_or(usize::MAX)
            .saturating_mul(BLOB_CHUNK_BYTES);
        if start >= b.len() {
            return Ok(None);
        }
        let end = (start + BLOB_CHUNK_BYTES).min(b.len());
        Ok(Some(b[start..end].to_vec()))
    }

    fn add_push(
        &self,
        image: &ImageRecord,
        deliveries: &[DeliveryRecord],
    ) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("images")?;
        g.fail_if_injected("image_deliveries")?;
        g.images
            .entry(image.id.clone())
            .or_insert_with(|| image.clone());
        for d in deliveries {
            g.deliveries
                .insert((d.agent_id.clone(), d.image_id.clone()), d.clone());
        }
        Ok(())
    }

    fn get_image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        Ok(self.lock().images.get(id).cloned())
    }

    fn update_delivery(&self, d: &DeliveryRecord) -> Result<bool, StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("image_deliveries")?;
        match g
            .deliveries
            .get_mut(&(d.agent_id.clone(), d.image_id.clone()))
        {
            Some(old) => {
                *old = d.clone();
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn list_deliveries(&self, agent_id: Option<&str>) -> Result<Vec<DeliveryRecord>, StoreError> {
        let g = self.lock();
        let mut v: Vec<DeliveryRecord> = g
            .deliveries
            .values()
            .filter(|d| agent_id.is_none_or(|a| d.agent_id == a))
            .cloned()
            .collect();
        v.sort_by(|a, b| {
            (&a.agent_id, &a.reference, &a.image_id).cmp(&(&b.agent_id, &b.reference, &b.image_id))
        });
        Ok(v)
    }
}

impl UpgradeStore for MemoryStore {
    fn add_binary(&self, b: &BinaryRecord, content: &[u8]) -> Result<bool, StoreError> {
        let mut g = self.lock();
        if g.binaries.contains_key(&b.sha256) {
            return Ok(false);
        }
        g.fail_if_injected("upgrade_binaries")?;
        g.fail_if_injected("upgrade_chunks")?;
        g.binaries
            .insert(b.sha256.clone(), (b.clone(), content.to_vec()));
        Ok(true)
    }

    fn get_binary(&self, sha256: &str) -> Result<Option<BinaryRecord>, StoreError> {
        Ok(self.lock().binaries.get(sha256).map(|(b, _)| b.clone()))
    }

    fn binary_chunk(&self, sha256: &str, offset: u64) -> Result<Vec<u8>, StoreError> {
        let g = self.lock();
        let Some((_, content)) = g.binaries.get(sha256) else {
            return Ok(Vec::new());
        };
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        if start >= content.len() {
            return Ok(Vec::new());
        }
        let end = (start / CHUNK_BYTES + 1) * CHUNK_BYTES;
        Ok(content[start..end.min(content.len())].to_vec())
    }

    fn add_upgrade(&self, up: &UpgradeRecord) -> Result<u64, StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("upgrades")?;
        let id = g.upgrades.keys().next_back().copied().unwrap_or(0) + 1;
        g.upgrades.insert(id, UpgradeRecord { id, ..up.clone() });
        Ok(id)
    }

    fn latest_upgrade(&self) -> Result<Option<UpgradeRecord>, StoreError> {
        Ok(self.lock().upgrades.values().next_back().cloned())
    }

    fn set_upgrade_state(
        &self,
        id: u64,
        state: UpgradeState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("upgrades")?;
        Ok(match g.upgrades.get_mut(&id) {
            Some(up) => {
                up.state = state;
                up.reason = reason.to_string();
                true
            }
            None => false,
        })
    }

    fn set_agent_upgrades(&self, progress: &[AgentUpgrade]) -> Result<(), StoreError> {
        let mut g = self.lock();
        g.fail_if_injected("upgrade_agents")?;
        for p in progress {
            g.agent_upgrades
                .insert((p.upgrade_id, p.agent_id.clone()), p.clone());
        }
        Ok(())
    }

    fn agent_upgrades(&self, upgrade_id: u64) -> Result<Vec<AgentUpgrade>, StoreError> {
        Ok(self
            .lock()
            .agent_upgrades
            .range((upgrade_id, String::new())..)
            .take_while(|((id, _), _)| *id == upgrade_id)
            .map(|(_, p)| p.clone())
            .collect())
    }

    fn agent_upgrade(
        &self,
        upgrade_id: u64,
        agent_id: &str,
    ) -> Result<Option<AgentUpgrade>, StoreError> {
        Ok(self
            .lock()
            .agent_upgrades
            .get(&(upgrade_id, agent_id.to_string()))
            .cloned())
    }
}
