//! Agent binary upgrades. Progress and state are leader-only writes, fenced.

use super::{PgStore, from_ts, from_u, json, to_json, ts, u};
use crate::store::StoreError;
use crate::store::upgrades::{
    AgentUpgrade, BinaryRecord, UpgradeRecord, UpgradeState, UpgradeStore, chunk_of, chunks, tail,
};

impl UpgradeStore for PgStore {
    fn add_binary(&self, b: &BinaryRecord, content: &[u8]) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "INSERT INTO upgrade_binaries (sha256, arch, version, size, signature, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (sha256) DO NOTHING",
                &[
                    &b.sha256,
                    &b.arch,
                    &b.version,
                    &u(b.size),
                    &b.signature,
                    &ts(b.created_at),
                ],
            )?;
            if n == 0 {
                return Ok(false);
            }
            let stmt =
                tx.prepare("INSERT INTO upgrade_chunks (sha256, seq, data) VALUES ($1, $2, $3)")?;
            for (seq, data) in chunks(content) {
                tx.execute(&stmt, &[&b.sha256, &seq, &data])?;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn get_binary(&self, sha256: &str) -> Result<Option<BinaryRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT arch, version, size, signature, created_at FROM upgrade_binaries WHERE sha256 = $1",
                &[&sha256],
            )?
            .map(|r| {
                Ok(BinaryRecord {
                    sha256: sha256.to_string(),
                    arch: r.try_get(0)?,
                    version: r.try_get(1)?,
                    size: from_u(r.try_get(2)?),
                    signature: r.try_get(3)?,
                    created_at: from_ts("upgrade_binaries", r.try_get(4)?)?,
                })
            })
            .transpose()
        })
    }

    fn binary_chunk(&self, sha256: &str, offset: u64) -> Result<Vec<u8>, StoreError> {
        let (seq, within) = chunk_of(offset);
        self.with(|c| {
            let chunk = c
                .query_opt(
                    "SELECT data FROM upgrade_chunks WHERE sha256 = $1 AND seq = $2",
                    &[&sha256, &seq],
                )?
                .map(|r| r.try_get::<_, Vec<u8>>(0))
                .transpose()?;
            Ok(tail(chunk, within))
        })
    }

    fn add_upgrade(&self, up: &UpgradeRecord) -> Result<u64, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("LOCK TABLE upgrades IN EXCLUSIVE MODE", &[])?;
            let id: i64 = tx
                .query_one(
                    "INSERT INTO upgrades (id, created_at, selector, max_unavailable, health_timeout_seconds, binaries, state, reason)
                     VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM upgrades), $1, $2, $3, $4, $5, $6, $7) RETURNING id",
                    &[
                        &ts(up.created_at),
                        &to_json(&up.selector),
                        &i64::from(up.max_unavailable),
                        &u(up.health_timeout_seconds),
                        &to_json(&up.binaries),
                        &up.state.as_str(),
                        &up.reason,
                    ],
                )?
                .try_get(0)?;
            tx.commit()?;
            Ok(from_u(id))
        })
    }

    fn latest_upgrade(&self) -> Result<Option<UpgradeRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT id, created_at, selector, max_unavailable, health_timeout_seconds, binaries, state, reason
                 FROM upgrades ORDER BY id DESC LIMIT 1",
                &[],
            )?
            .map(|r| {
                Ok(UpgradeRecord {
                    id: from_u(r.try_get(0)?),
                    created_at: from_ts("upgrades", r.try_get(1)?)?,
                    selector: json("upgrades", r.try_get(2)?)?,
                    max_unavailable: u32::try_from(r.try_get::<_, i64>(3)?).unwrap_or(u32::MAX),
                    health_timeout_seconds: from_u(r.try_get(4)?),
                    binaries: json("upgrades", r.try_get(5)?)?,
                    state: UpgradeState::parse(r.try_get(6)?)?,
                    reason: r.try_get(7)?,
                })
            })
            .transpose()
        })
    }

    fn set_upgrade_state(
        &self,
        id: u64,
        state: UpgradeState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            self.fence_check(&mut tx)?;
            let n = tx.execute(
                "UPDATE upgrades SET state = $2, reason = $3 WHERE id = $1",
                &[&u(id), &state.as_str(), &reason],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    fn set_agent_upgrades(&self, progress: &[AgentUpgrade]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            self.fence_check(&mut tx)?;
            let stmt = tx.prepare(
                "INSERT INTO upgrade_agents (upgrade_id, agent_id, state, detail, since) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (upgrade_id, agent_id) DO UPDATE SET state = excluded.state, detail = excluded.detail, since = excluded.since",
            )?;
            for p in progress {
                tx.execute(
                    &stmt,
                    &[&u(p.upgrade_id), &p.agent_id, &p.state, &p.detail, &ts(p.since)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn agent_upgrades(&self, upgrade_id: u64) -> Result<Vec<AgentUpgrade>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT agent_id, state, detail, since FROM upgrade_agents WHERE upgrade_id = $1 ORDER BY agent_id",
                &[&u(upgrade_id)],
            )?
            .iter()
            .map(|r| {
                Ok(AgentUpgrade {
                    upgrade_id,
                    agent_id: r.try_get(0)?,
                    state: r.try_get(1)?,
                    detail: r.try_get(2)?,
                    since: from_ts("upgrade_agents", r.try_get(3)?)?,
                })
            })
            .collect()
        })
    }

    fn agent_upgrade(
        &self,
        upgrade_id: u64,
        agent_id: &str,
    ) -> Result<Option<AgentUpgrade>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT state, detail, since FROM upgrade_agents WHERE upgrade_id = $1 AND agent_id = $2",
                &[&u(upgrade_id), &agent_id],
            )?
            .map(|r| {
                Ok(AgentUpgrade {
                    upgrade_id,
                    agent_id: agent_id.to_string(),
                    state: r.try_get(0)?,
                    detail: r.try_get(1)?,
                    since: from_ts("upgrade_agents", r.try_get(2)?)?,
                })
            })
            .transpose()
        })
    }
}
