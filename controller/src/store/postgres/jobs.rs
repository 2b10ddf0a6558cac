//! The fleet's jobs and the agents-per-state samples.

use time::OffsetDateTime;

use super::{PgStore, from_ts, ts};
use crate::store::{FleetSample, JobFilter, JobRecord, JobRetention, JobStore, StoreError};

/// The upsert; the `ON CONFLICT` arm is [`JobRecord::merge`] in SQL.
const UPSERT: &str = "INSERT INTO jobs (agent_id, job_id, runner, state, failure_reason, started_at, finished_at, duration_ms, queue_wait_ms, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
ON CONFLICT (agent_id, job_id) DO UPDATE SET
    state = CASE WHEN excluded.state <> 'running' OR jobs.state = 'running' THEN excluded.state ELSE jobs.state END,
    failure_reason = CASE WHEN excluded.state <> 'running' OR jobs.state = 'running' THEN excluded.failure_reason ELSE jobs.failure_reason END,
    runner = excluded.runner,
    started_at = COALESCE(jobs.started_at, excluded.started_at),
    finished_at = COALESCE(excluded.finished_at, jobs.finished_at),
    duration_ms = COALESCE(excluded.duration_ms, jobs.duration_ms),
    queue_wait_ms = COALESCE(excluded.queue_wait_ms, jobs.queue_wait_ms),
    updated_at = GREATEST(jobs.updated_at, excluded.updated_at)";

fn count(v: i64) -> u32 {
    u32::try_from(v).unwrap_or(0)
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl JobStore for PgStore {
    fn upsert_jobs(&self, jobs: &[JobRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let stmt = tx.prepare(UPSERT)?;
            for j in jobs {
                tx.execute(
                    &stmt,
                    &[
                        &j.agent_id,
                        &j.job_id,
                        &j.runner,
                        &j.state,
                        &j.failure_reason,
                        &j.started_at.map(ts),
                        &j.finished_at.map(ts),
                        &j.duration_ms,
                        &j.queue_wait_ms,
                        &ts(j.updated_at),
                    ],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT agent_id, job_id, runner, state, failure_reason, started_at, finished_at, duration_ms, queue_wait_ms, updated_at
                 FROM jobs
                 WHERE ($1 = '' OR agent_id = $1) AND ($2 = '' OR runner = $2) AND ($3 = '' OR state = $3)
                   AND ($4::bigint IS NULL OR updated_at >= $4)
                 ORDER BY updated_at DESC, job_id DESC, agent_id LIMIT $5",
                &[
                    &filter.agent_id,
                    &filter.runner,
                    &filter.state,
                    &filter.since.map(ts),
                    &limit(filter.limit),
                ],
            )?;
            let opt_ts = |v: Option<i64>| v.map(|t| from_ts("jobs", t)).transpose();
            rows.iter()
                .map(|r| {
                    Ok(JobRecord {
                        agent_id: r.try_get(0)?,
                        job_id: r.try_get(1)?,
                        runner: r.try_get(2)?,
                        state: r.try_get(3)?,
                        failure_reason: r.try_get(4)?,
                        started_at: opt_ts(r.try_get(5)?)?,
                        finished_at: opt_ts(r.try_get(6)?)?,
                        duration_ms: r.try_get(7)?,
                        queue_wait_ms: r.try_get(8)?,
                        updated_at: from_ts("jobs", r.try_get(9)?)?,
                    })
                })
                .collect()
        })
    }

    fn prune_jobs(&self, keep: JobRetention, now: OffsetDateTime) -> Result<usize, StoreError> {
        let cutoff = now.checked_sub(keep.max_age).unwrap_or(now);
        self.with(|c| {
            let mut tx = c.transaction()?;
            let old = tx.execute("DELETE FROM jobs WHERE updated_at < $1", &[&ts(cutoff)])?;
            let per_agent = tx.execute(
                "DELETE FROM jobs WHERE (agent_id, job_id) IN (
                    SELECT agent_id, job_id FROM (
                        SELECT agent_id, job_id, ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY updated_at DESC, job_id DESC) AS rn
                        FROM jobs
                    ) ranked WHERE rn > $1)",
                &[&limit(keep.per_agent)],
            )?;
            let total = tx.execute(
                "DELETE FROM jobs WHERE (agent_id, job_id) IN (
                    SELECT agent_id, job_id FROM (
                        SELECT agent_id, job_id, ROW_NUMBER() OVER (ORDER BY updated_at DESC, job_id DESC, agent_id) AS rn
                        FROM jobs
                    ) ranked WHERE rn > $1)",
                &[&limit(keep.total)],
            )?;
            let samples = tx.execute(
                "DELETE FROM fleet_samples WHERE at <= (SELECT at FROM fleet_samples ORDER BY at DESC LIMIT 1 OFFSET $1)",
                &[&limit(keep.samples)],
            )?;
            tx.commit()?;
            Ok(usize::try_from(old + per_agent + total + samples).unwrap_or(usize::MAX))
        })
    }

    fn add_fleet_sample(&self, s: &FleetSample) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO fleet_samples (at, healthy, degraded, lost, revoked) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (at) DO UPDATE SET healthy = excluded.healthy, degraded = excluded.degraded,
                     lost = excluded.lost, revoked = excluded.revoked",
                &[
                    &ts(s.at),
                    &i64::from(s.healthy),
                    &i64::from(s.degraded),
                    &i64::from(s.lost),
                    &i64::from(s.revoked),
                ],
            )?;
            Ok(())
        })
    }

    fn list_fleet_samples(&self, since: OffsetDateTime) -> Result<Vec<FleetSample>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                "SELECT at, healthy, degraded, lost, revoked FROM fleet_samples WHERE at >= $1 ORDER BY at",
                &[&ts(since)],
            )?;
            rows.iter()
                .map(|r| {
                    Ok(FleetSample {
                        at: from_ts("fleet_samples", r.try_get(0)?)?,
                        healthy: count(r.try_get(1)?),
                        degraded: count(r.try_get(2)?),
                        lost: count(r.try_get(3)?),
                        revoked: count(r.try_get(4)?),
                    })
                })
                .collect()
        })
    }
}
