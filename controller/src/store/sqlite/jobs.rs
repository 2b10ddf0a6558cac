//! The fleet's jobs and the agents-per-state samples.

use rusqlite::params;
use time::OffsetDateTime;

use super::{SqliteStore, from_ts, ts};
use crate::store::{FleetSample, JobFilter, JobRecord, JobRetention, JobStore, StoreError};

/// The upsert; the `ON CONFLICT` arm is [`JobRecord::merge`] in SQL.
const UPSERT: &str = "INSERT INTO jobs (agent_id, job_id, runner, state, failure_reason, started_at, finished_at, duration_ms, queue_wait_ms, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
ON CONFLICT (agent_id, job_id) DO UPDATE SET
    state = CASE WHEN excluded.state <> 'running' OR jobs.state = 'running' THEN excluded.state ELSE jobs.state END,
    failure_reason = CASE WHEN excluded.state <> 'running' OR jobs.state = 'running' THEN excluded.failure_reason ELSE jobs.failure_reason END,
    runner = excluded.runner,
    started_at = COALESCE(jobs.started_at, excluded.started_at),
    finished_at = COALESCE(excluded.finished_at, jobs.finished_at),
    duration_ms = COALESCE(excluded.duration_ms, jobs.duration_ms),
    queue_wait_ms = COALESCE(excluded.queue_wait_ms, jobs.queue_wait_ms),
    updated_at = MAX(jobs.updated_at, excluded.updated_at)";

fn count(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

impl JobStore for SqliteStore {
    fn upsert_jobs(&self, jobs: &[JobRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(UPSERT)?;
            for j in jobs {
                stmt.execute(params![
                    j.agent_id,
                    j.job_id,
                    j.runner,
                    j.state,
                    j.failure_reason,
                    j.started_at.map(ts),
                    j.finished_at.map(ts),
                    j.duration_ms,
                    j.queue_wait_ms,
                    ts(j.updated_at)
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, job_id, runner, state, failure_reason, started_at, finished_at, duration_ms, queue_wait_ms, updated_at
             FROM jobs
             WHERE (?1 = '' OR agent_id = ?1) AND (?2 = '' OR runner = ?2) AND (?3 = '' OR state = ?3)
               AND (?4 IS NULL OR updated_at >= ?4)
             ORDER BY updated_at DESC, job_id DESC, agent_id LIMIT ?5",
        )?;
        type Row = (
            String,
            i64,
            String,
            String,
            String,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            Option<i64>,
            i64,
        );
        let rows = stmt.query_map(
            params![
                filter.agent_id,
                filter.runner,
                filter.state,
                filter.since.map(ts),
                i64::try_from(filter.limit).unwrap_or(i64::MAX)
            ],
            |r| Row::try_from(r),
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (agent_id, job_id, runner, state, failure_reason, started, finished, d, q, up) =
                row?;
            out.push(JobRecord {
                agent_id,
                job_id,
                runner,
                state,
                failure_reason,
                started_at: started.map(|t| from_ts("jobs", t)).transpose()?,
                finished_at: finished.map(|t| from_ts("jobs", t)).transpose()?,
                duration_ms: d,
                queue_wait_ms: q,
                updated_at: from_ts("jobs", up)?,
            });
        }
        Ok(out)
    }

    fn prune_jobs(&self, keep: JobRetention, now: OffsetDateTime) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let cutoff = now.checked_sub(keep.max_age).unwrap_or(now);
        let old = tx.execute(
            "DELETE FROM jobs WHERE updated_at < ?1",
            params![ts(cutoff)],
        )?;
        let per_agent = tx.execute(
            "DELETE FROM jobs WHERE (agent_id, job_id) IN (
                SELECT agent_id, job_id FROM (
                    SELECT agent_id, job_id, ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY updated_at DESC, job_id DESC) AS rn
                    FROM jobs
                ) WHERE rn > ?1)",
            params![i64::try_from(keep.per_agent).unwrap_or(i64::MAX)],
        )?;
        let total = tx.execute(
            "DELETE FROM jobs WHERE (agent_id, job_id) IN (
                SELECT agent_id, job_id FROM (
                    SELECT agent_id, job_id, ROW_NUMBER() OVER (ORDER BY updated_at DESC, job_id DESC, agent_id) AS rn
                    FROM jobs
                ) WHERE rn > ?1)",
            params![i64::try_from(keep.total).unwrap_or(i64::MAX)],
        )?;
        let samples = tx.execute(
            "DELETE FROM fleet_samples WHERE at <= (SELECT at FROM fleet_samples ORDER BY at DESC LIMIT 1 OFFSET ?1)",
            params![i64::try_from(keep.samples).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(old + per_agent + total + samples)
    }

    fn add_fleet_sample(&self, s: &FleetSample) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO fleet_samples (at, healthy, degraded, lost, revoked) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (at) DO UPDATE SET healthy = excluded.healthy, degraded = excluded.degraded,
                 lost = excluded.lost, revoked = excluded.revoked",
            params![ts(s.at), s.healthy, s.degraded, s.lost, s.revoked],
        )?;
        Ok(())
    }

    fn list_fleet_samples(&self, since: OffsetDateTime) -> Result<Vec<FleetSample>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT at, healthy, degraded, lost, revoked FROM fleet_samples WHERE at >= ?1 ORDER BY at",
        )?;
        let rows = stmt.query_map(params![ts(since)], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (at, h, d, l, r) = row?;
            out.push(FleetSample {
                at: from_ts("fleet_samples", at)?,
                healthy: count(h),
                degraded: count(d),
                lost: count(l),
                revoked: count(r),
            });
        }
        Ok(out)
    }
}
