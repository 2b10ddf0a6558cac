//! Fleet events.

use rusqlite::params;

use super::{SqliteStore, from_ts, from_u, ts, u};
use crate::store::{EventFilter, EventRecord, EventStore, Retention, StoreError};

impl EventStore for SqliteStore {
    fn add_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (at, agent_id, kind, runner, message, job_id, job_state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in events {
                stmt.execute(params![
                    e.at.map(ts),
                    e.agent_id,
                    e.kind,
                    e.runner,
                    e.message,
                    e.job_id,
                    e.job_state
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, agent_id, kind, runner, message, job_id, job_state FROM events
             WHERE id > ?1 AND (?2 = '' OR agent_id = ?2) AND (?3 = '' OR kind = ?3)
               AND (?4 IS NULL OR at >= ?4)
             ORDER BY id DESC LIMIT ?5",
        )?;
        type Row = (
            i64,
            Option<i64>,
            String,
            String,
            String,
            String,
            i64,
            String,
        );
        let rows = stmt.query_map(
            params![
                u(filter.after_id),
                filter.agent_id,
                filter.kind,
                filter.since.map(ts),
                i64::try_from(filter.limit).unwrap_or(i64::MAX)
            ],
            |r| Row::try_from(r),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, agent_id, kind, runner, message, job_id, job_state) = row?;
            out.push(EventRecord {
                id: from_u(id),
                at: at.map(|t| from_ts("events", t)).transpose()?,
                agent_id,
                kind,
                runner,
                message,
                job_id,
                job_state,
            });
        }
        out.reverse();
        Ok(out)
    }

    fn prune_events(&self, keep: Retention) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let per_agent = tx.execute(
            "DELETE FROM events WHERE id IN (
                SELECT id FROM (
                    SELECT id, ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY id DESC) AS rn
                    FROM events WHERE agent_id != ''
                ) WHERE rn > ?1)",
            params![i64::try_from(keep.per_agent).unwrap_or(i64::MAX)],
        )?;
        let total = tx.execute(
            "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![i64::try_from(keep.total).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(per_agent + total)
    }
}
