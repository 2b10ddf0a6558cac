//! Agent binary upgrades.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, from_ts, from_u, json, to_json, ts, u};
use crate::store::StoreError;
use crate::store::upgrades::{
    AgentUpgrade, BinaryRecord, UpgradeRecord, UpgradeState, UpgradeStore, chunk_of, chunks, tail,
};

impl UpgradeStore for SqliteStore {
    fn add_binary(&self, b: &BinaryRecord, content: &[u8]) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "INSERT INTO upgrade_binaries (sha256, arch, version, size, signature, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (sha256) DO NOTHING",
            params![
                b.sha256,
                b.arch,
                b.version,
                u(b.size),
                b.signature,
                ts(b.created_at)
            ],
        )?;
        if n == 0 {
            return Ok(false);
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO upgrade_chunks (sha256, seq, data) VALUES (?1, ?2, ?3)",
            )?;
            for (seq, data) in chunks(content) {
                stmt.execute(params![b.sha256, seq, data])?;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    fn get_binary(&self, sha256: &str) -> Result<Option<BinaryRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT arch, version, size, signature, created_at FROM upgrade_binaries WHERE sha256 = ?1",
                [sha256],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, i64>(2)?,
                        r.get::<_, Vec<u8>>(3)?,
                        r.get::<_, i64>(4)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(arch, version, size, signature, at)| {
            Ok(BinaryRecord {
                sha256: sha256.to_string(),
                arch,
                version,
                size: from_u(size),
                signature,
                created_at: from_ts("upgrade_binaries", at)?,
            })
        })
        .transpose()
    }

    fn binary_chunk(&self, sha256: &str, offset: u64) -> Result<Vec<u8>, StoreError> {
        let (seq, within) = chunk_of(offset);
        let conn = self.conn();
        let chunk = conn
            .query_row(
                "SELECT data FROM upgrade_chunks WHERE sha256 = ?1 AND seq = ?2",
                params![sha256, seq],
                |r| r.get::<_, Vec<u8>>(0),
            )
            .optional()?;
        Ok(tail(chunk, within))
    }

    fn add_upgrade(&self, up: &UpgradeRecord) -> Result<u64, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO upgrades (id, created_at, selector, max_unavailable, health_timeout_seconds, binaries, state, reason)
             VALUES ((SELECT COALESCE(MAX(id), 0) + 1 FROM upgrades), ?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                ts(up.created_at),
                to_json(&up.selector),
                up.max_unavailable,
                u(up.health_timeout_seconds),
                to_json(&up.binaries),
                up.state.as_str(),
                up.reason
            ],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(from_u(id))
    }

    fn latest_upgrade(&self) -> Result<Option<UpgradeRecord>, StoreError> {
        let conn = self.conn();
        type Row = (i64, i64, String, u32, i64, String, String, String);
        let row: Option<Row> = conn
            .query_row(
                "SELECT id, created_at, selector, max_unavailable, health_timeout_seconds, binaries, state, reason
                 FROM upgrades ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    TryFrom::try_from(r)
                },
            )
            .optional()?;
        row.map(
            |(id, at, selector, max_unavailable, timeout, binaries, state, reason)| {
                Ok(UpgradeRecord {
                    id: from_u(id),
                    created_at: from_ts("upgrades", at)?,
                    selector: json("upgrades", &selector)?,
                    max_unavailable,
                    health_timeout_seconds: from_u(timeout),
                    binaries: json("upgrades", &binaries)?,
                    state: UpgradeState::parse(&state)?,
                    reason,
                })
            },
        )
        .transpose()
    }

    fn set_upgrade_state(
        &self,
        id: u64,
        state: UpgradeState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE upgrades SET state = ?2, reason = ?3 WHERE id = ?1",
            params![u(id), state.as_str(), reason],
        )?;
        Ok(n > 0)
    }

    fn set_agent_upgrades(&self, progress: &[AgentUpgrade]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO upgrade_agents (upgrade_id, agent_id, state, detail, since) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (upgrade_id, agent_id) DO UPDATE SET state = excluded.state, detail = excluded.detail, since = excluded.since",
            )?;
            for p in progress {
                stmt.execute(params![
                    u(p.upgrade_id),
                    p.agent_id,
                    p.state,
                    p.detail,
                    ts(p.since)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn agent_upgrades(&self, upgrade_id: u64) -> Result<Vec<AgentUpgrade>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, state, detail, since FROM upgrade_agents WHERE upgrade_id = ?1 ORDER BY agent_id",
        )?;
        let rows = stmt.query_map([u(upgrade_id)], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, i64>(3)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (agent_id, state, detail, since) = row?;
            out.push(AgentUpgrade {
                upgrade_id,
                agent_id,
                state,
                detail,
                since: from_ts("upgrade_agents", since)?,
            });
        }
        Ok(out)
    }

    fn agent_upgrade(
        &self,
        upgrade_id: u64,
        agent_id: &str,
    ) -> Result<Option<AgentUpgrade>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT state, detail, since FROM upgrade_agents WHERE upgrade_id = ?1 AND agent_id = ?2",
        )?;
        let row = stmt
            .query_row(params![u(upgrade_id), agent_id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                ))
            })
            .optional()?;
        row.map(|(state, detail, since)| {
            Ok(AgentUpgrade {
                upgrade_id,
                agent_id: agent_id.to_string(),
                state,
                detail,
                since: from_ts("upgrade_agents", since)?,
            })
        })
        .transpose()
    }
}
