//! Drained agents (`drover agent drain`).

use postgres::{Row, Transaction};
use time::OffsetDateTime;

use super::{PgStore, from_ts, ts};
use crate::store::{DrainRecord, DrainStore, StoreError};

const TABLE: &str = "agent_drains";

pub(super) fn drain_record(r: &Row) -> Result<DrainRecord, StoreError> {
    Ok(DrainRecord {
        agent_id: r.try_get(0)?,
        requested_at: from_ts(TABLE, r.try_get(1)?)?,
        deadline_at: r
            .try_get::<_, Option<i64>>(2)?
            .map(|d| from_ts(TABLE, d))
            .transpose()?,
    })
}

/// Refuses the first id of `ids` that names no agent or a revoked one (rows locked, so a
/// concurrent delete waits for this write).
fn live_agents(tx: &mut Transaction<'_>, ids: &[String]) -> Result<(), StoreError> {
    for id in ids {
        if tx
            .query_opt(
                "SELECT 1 FROM agents WHERE id = $1 AND revoked_at IS NULL FOR SHARE",
                &[id],
            )?
            .is_none()
        {
            return Err(StoreError::UnknownAgent(id.clone()));
        }
    }
    Ok(())
}

impl DrainStore for PgStore {
    fn drain_agents(
        &self,
        ids: &[String],
        requested_at: OffsetDateTime,
        deadline_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            live_agents(&mut tx, ids)?;
            for id in ids {
                tx.execute(
                    "INSERT INTO agent_drains (agent_id, requested_at, deadline_at) VALUES ($1, $2, $3)
                     ON CONFLICT (agent_id) DO UPDATE SET requested_at = excluded.requested_at, deadline_at = excluded.deadline_at",
                    &[id, &ts(requested_at), &deadline_at.map(ts)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn undrain_agents(&self, ids: &[String]) -> Result<Vec<String>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            live_agents(&mut tx, ids)?;
            let mut out = Vec::new();
            for id in ids {
                if tx.execute("DELETE FROM agent_drains WHERE agent_id = $1", &[id])? > 0 {
                    out.push(id.clone());
                }
            }
            tx.commit()?;
            out.sort();
            Ok(out)
        })
    }

    fn agent_drain(&self, id: &str) -> Result<Option<DrainRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT agent_id, requested_at, deadline_at FROM agent_drains WHERE agent_id = $1",
                &[&id],
            )?
            .as_ref()
            .map(drain_record)
            .transpose()
        })
    }

    fn list_drains(&self) -> Result<Vec<DrainRecord>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT agent_id, requested_at, deadline_at FROM agent_drains ORDER BY agent_id",
                &[],
            )?
            .iter()
            .map(drain_record)
            .collect()
        })
    }
}
