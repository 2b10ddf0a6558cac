//! [`Store`] in memory: the fake for fast unit tests of code above the store. It applies the
//! same token rules ([`crate::tokens::check`]) and the same all-or-nothing enrollment.

use std::collections::BTreeMap;
use std::sync::Mutex;

use time::OffsetDateTime;

use super::{AgentRecord, Facts, Store, StoreError};
use crate::tokens::{self, TokenRecord, TokenRefusal};

#[derive(Debug, Default)]
struct Inner {
    tokens: BTreeMap<String, TokenRecord>,
    agents: BTreeMap<String, AgentRecord>,
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

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for MemoryStore {
    fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError> {
        self.lock().tokens.insert(token.id.clone(), token.clone());
        Ok(())
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let mut v: Vec<TokenRecord> = self.lock().tokens.values().cloned().collect();
        v.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(v)
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

    fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        Ok(self.lock().agents.get(id).cloned())
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
