//! Runner assignments and retired GitLab runners.

use postgres::types::ToSql;
use postgres::{GenericClient, Row};
use time::OffsetDateTime;

use super::{PgStore, from_ts, from_u, ts, u};
use crate::store::{Assignment, Retired, RunnerStore, StoreError};

pub(super) const ASSIGN_COLS: &str = "agent_id, runner, url, gitlab_runner_id, token_sealed, token_expires_at, registration_key, registered";

pub(super) fn assignment(table: &'static str, r: &Row) -> Result<Assignment, StoreError> {
    Ok(Assignment {
        agent_id: r.try_get(0)?,
        runner: r.try_get(1)?,
        url: r.try_get(2)?,
        gitlab_runner_id: r.try_get(3)?,
        token_sealed: r.try_get(4)?,
        token_expires_at: r
            .try_get::<_, Option<i64>>(5)?
            .map(|t| from_ts(table, t))
            .transpose()?,
        registration_key: r.try_get(6)?,
        registered: r.try_get(7)?,
    })
}

/// The assignments `sql` selects (alone or inside a transaction).
fn select_assignments(
    c: &mut impl GenericClient,
    sql: &str,
    p: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Assignment>, StoreError> {
    c.query(sql, p)?
        .iter()
        .map(|r| assignment("assignments", r))
        .collect()
}

impl RunnerStore for PgStore {
    fn assignments(&self, agent_id: &str) -> Result<Vec<Assignment>, StoreError> {
        self.with(|c| {
            select_assignments(
                c,
                &format!(
                    "SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = $1 ORDER BY runner"
                ),
                &[&agent_id],
            )
        })
    }

    fn all_assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        self.with(|c| {
            select_assignments(
                c,
                &format!("SELECT {ASSIGN_COLS} FROM assignments ORDER BY agent_id, runner"),
                &[],
            )
        })
    }

    fn retire_agent_runners(&self, agent_id: &str) -> Result<usize, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let current = select_assignments(
                &mut tx,
                &format!(
                    "SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = $1 ORDER BY runner FOR UPDATE"
                ),
                &[&agent_id],
            )?;
            let mut queued = 0;
            for a in current {
                delete_assignment(&mut tx, agent_id, &a.runner)?;
                if a.registered {
                    add_retired(
                        &mut tx,
                        &Retired {
                            id: 0,
                            assignment: a,
                            after_generation: 0,
                        },
                    )?;
                    queued += 1;
                }
            }
            tx.commit()?;
            Ok(queued)
        })
    }

    fn replace_assignment(&self, fresh: &Assignment) -> Result<Option<Assignment>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let old = select_assignments(
                &mut tx,
                &format!(
                    "SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = $1 AND runner = $2 FOR UPDATE"
                ),
                &[&fresh.agent_id, &fresh.runner],
            )?
            .pop();
            put_assignment(&mut tx, fresh)?;
            if let Some(old) = old.as_ref().filter(|a| a.registered) {
                add_retired(
                    &mut tx,
                    &Retired {
                        id: 0,
                        assignment: old.clone(),
                        after_generation: 0,
                    },
                )?;
            }
            tx.commit()?;
            Ok(old)
        })
    }

    fn rotate_assignment_token(
        &self,
        expected: &Assignment,
        token_sealed: &[u8],
        token_expires_at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE assignments SET token_sealed = $6, token_expires_at = $7
                 WHERE agent_id = $1 AND runner = $2 AND gitlab_runner_id = $3
                   AND registration_key = $4 AND token_sealed = $5",
                &[
                    &expected.agent_id,
                    &expected.runner,
                    &expected.gitlab_runner_id,
                    &expected.registration_key,
                    &expected.token_sealed,
                    &token_sealed,
                    &token_expires_at.map(ts),
                ],
            )?;
            Ok(n > 0)
        })
    }

    fn list_retired(&self) -> Result<Vec<Retired>, StoreError> {
        self.with(|c| {
            c.query(
                &format!("SELECT {ASSIGN_COLS}, after_generation, id FROM retired ORDER BY id"),
                &[],
            )?
            .iter()
            .map(|r| {
                Ok(Retired {
                    id: r.try_get(9)?,
                    assignment: assignment("retired", r)?,
                    after_generation: from_u(r.try_get(8)?),
                })
            })
            .collect()
        })
    }

    fn delete_retired(&self, id: i64) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            self.fence_check(&mut tx)?;
            tx.execute("DELETE FROM retired WHERE id = $1", &[&id])?;
            tx.commit()?;
            Ok(())
        })
    }
}

/// Inserts or replaces an assignment (inside a transaction).
pub(super) fn put_assignment(c: &mut impl GenericClient, a: &Assignment) -> Result<(), StoreError> {
    c.execute(
        &format!(
            "INSERT INTO assignments ({ASSIGN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (agent_id, runner) DO UPDATE SET url = EXCLUDED.url,
               gitlab_runner_id = EXCLUDED.gitlab_runner_id, token_sealed = EXCLUDED.token_sealed,
               token_expires_at = EXCLUDED.token_expires_at,
               registration_key = EXCLUDED.registration_key, registered = EXCLUDED.registered"
        ),
        &[
            &a.agent_id,
            &a.runner,
            &a.url,
            &a.gitlab_runner_id,
            &a.token_sealed,
            &a.token_expires_at.map(ts),
            &a.registration_key,
            &a.registered,
        ],
    )?;
    Ok(())
}

/// Removes an assignment; `false` when there was none.
pub(super) fn delete_assignment(
    c: &mut impl GenericClient,
    agent_id: &str,
    runner: &str,
) -> Result<bool, StoreError> {
    let n = c.execute(
        "DELETE FROM assignments WHERE agent_id = $1 AND runner = $2",
        &[&agent_id, &runner],
    )?;
    Ok(n > 0)
}

/// Queues a retired entry; returns its id.
pub(super) fn add_retired(c: &mut impl GenericClient, r: &Retired) -> Result<i64, StoreError> {
    let a = &r.assignment;
    let row = c.query_one(
        &format!(
            "INSERT INTO retired ({ASSIGN_COLS}, after_generation) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING id"
        ),
        &[
            &a.agent_id,
            &a.runner,
            &a.url,
            &a.gitlab_runner_id,
            &a.token_sealed,
            &a.token_expires_at.map(ts),
            &a.registration_key,
            &a.registered,
            &u(r.after_generation),
        ],
    )?;
    Ok(row.try_get(0)?)
}
