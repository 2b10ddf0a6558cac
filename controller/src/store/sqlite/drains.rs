//! Drained agents (`drover agent drain`).

use rusqlite::{OptionalExtension, Transaction, params};
use time::OffsetDateTime;

use super::{SqliteStore, from_ts, ts};
use crate::store::{DrainRecord, DrainStore, StoreError};

const TABLE: &str = "agent_drains";

fn drain_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, i64, Option<i64>)> {
    TryFrom::try_from(r)
}

fn drain_record(row: (String, i64, Option<i64>)) -> Result<DrainRecord, StoreError> {
    let (agent_id, requested, deadline) = row;
    Ok(DrainRecord {
        agent_id,
        requested_at: from_ts(TABLE, requested)?,
        deadline_at: deadline.map(|d| from_ts(TABLE, d)).transpose()?,
    })
}

/// Refuses the first id of `ids` that names no agent or a revoked one.
fn live_agents(tx: &Transaction<'_>, ids: &[String]) -> Result<(), StoreError> {
    let mut stmt =
        tx.prepare_cached("SELECT 1 FROM agents WHERE id = ?1 AND revoked_at IS NULL")?;
    for id in ids {
        if stmt
            .query_row(params![id], |_| Ok(()))
            .optional()?
            .is_none()
        {
            return Err(StoreError::UnknownAgent(id.clone()));
        }
    }
    Ok(())
}

impl DrainStore for SqliteStore {
    fn drain_agents(
        &self,
        ids: &[String],
        requested_at: OffsetDateTime,
        deadline_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        live_agents(&tx, ids)?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO agent_drains (agent_id, requested_at, deadline_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (agent_id) DO UPDATE SET requested_at = excluded.requested_at, deadline_at = excluded.deadline_at",
            )?;
            for id in ids {
                stmt.execute(params![id, ts(requested_at), deadline_at.map(ts)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn undrain_agents(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        live_agents(&tx, ids)?;
        let mut out = Vec::new();
        {
            let mut stmt = tx.prepare_cached("DELETE FROM agent_drains WHERE agent_id = ?1")?;
            for id in ids {
                if stmt.execute(params![id])? > 0 {
                    out.push(id.clone());
                }
            }
        }
        tx.commit()?;
        out.sort();
        Ok(out)
    }

    fn agent_drain(&self, id: &str) -> Result<Option<DrainRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(
                "SELECT agent_id, requested_at, deadline_at FROM agent_drains WHERE agent_id = ?1",
            )?
            .query_row(params![id], drain_row)
            .optional()?;
        row.map(drain_record).transpose()
    }

    fn list_drains(&self) -> Result<Vec<DrainRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, requested_at, deadline_at FROM agent_drains ORDER BY agent_id",
        )?;
        let rows = stmt.query_map([], drain_row)?;
        rows.map(|r| drain_record(r?)).collect()
    }
}
