//! Fleet events.

use super::{PgStore, from_ts, from_u, ts, u};
use crate::store::{EventFilter, EventRecord, EventStore, Retention, StoreError};

impl EventStore for PgStore {
    fn add_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            if events.is_empty() {
                return Ok(());
            }
            let mut tx = c.transaction()?;
            // Ids from a counter row locked until commit, not a sequence: replicas writing
            // at once commit their ids in order, so a reader following `id > last` never
            // skips a row that commits later with a smaller id.
            let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
            let last: i64 = tx
                .query_one(
                    "UPDATE drover_event_ids SET last = last + $1 RETURNING last",
                    &[&n],
                )?
                .try_get(0)?;
            let stmt = tx.prepare(
                "INSERT INTO events (id, at, agent_id, kind, runner, message, job_id, job_state) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )?;
            for (i, e) in events.iter().enumerate() {
                let id = last - n + 1 + i64::try_from(i).unwrap_or(0);
                tx.execute(
                    &stmt,
                    &[
                        &id,
                        &e.at.map(ts),
                        &e.agent_id,
                        &e.kind,
                        &e.runner,
                        &e.message,
                        &e.job_id,
                        &e.job_state,
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT id, at, agent_id, kind, runner, message, job_id, job_state FROM events
                 WHERE id > $1 AND ($2 = '' OR agent_id = $2) AND ($3 = '' OR kind = $3)
                   AND ($4::bigint IS NULL OR at >= $4)
                 ORDER BY id DESC LIMIT $5",
                &[
                    &u(filter.after_id),
                    &filter.agent_id,
                    &filter.kind,
                    &filter.since.map(ts),
                    &i64::try_from(filter.limit).unwrap_or(i64::MAX),
                ],
            )?;
            let mut out = rows
                .iter()
                .map(|r| {
                    Ok(EventRecord {
                        id: from_u(r.try_get(0)?),
                        at: r
                            .try_get::<_, Option<i64>>(1)?
                            .map(|t| from_ts("events", t))
                            .transpose()?,
                        agent_id: r.try_get(2)?,
                        kind: r.try_get(3)?,
                        runner: r.try_get(4)?,
                        message: r.try_get(5)?,
                        job_id: r.try_get(6)?,
                        job_state: r.try_get(7)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            out.reverse();
            Ok(out)
        })
    }

    fn prune_events(&self, keep: Retention) -> Result<usize, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            self.fence_check(&mut tx)?;
            let per_agent = tx.execute(
                "DELETE FROM events WHERE id IN (
                    SELECT id FROM (
                        SELECT id, ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY id DESC) AS rn
                        FROM events WHERE agent_id <> ''
                    ) ranked WHERE rn > $1)",
                &[&i64::try_from(keep.per_agent).unwrap_or(i64::MAX)],
            )?;
            let total = tx.execute(
                "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET $1)",
                &[&i64::try_from(keep.total).unwrap_or(i64::MAX)],
            )?;
            tx.commit()?;
            Ok(usize::try_from(per_agent + total).unwrap_or(usize::MAX))
        })
    }
}
