//! Runner assignments and retired GitLab runners.

use rusqlite::{Connection, params};
use time::OffsetDateTime;

use super::{SqliteStore, from_ts, from_u, ts, u};
use crate::store::{Assignment, Retired, RunnerStore, StoreError};

const ASSIGN_COLS: &str = "agent_id, runner, url, gitlab_runner_id, token_sealed, token_expires_at, registration_key, registered";

type AssignRow = (
    String,
    String,
    String,
    i64,
    Vec<u8>,
    Option<i64>,
    String,
    bool,
);

fn assign_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AssignRow> {
    TryFrom::try_from(r)
}

fn assignment(table: &'static str, row: AssignRow) -> Result<Assignment, StoreError> {
    let (agent_id, runner, url, id, sealed, expires, key, registered) = row;
    Ok(Assignment {
        agent_id,
        runner,
        url,
        gitlab_runner_id: id,
        token_sealed: sealed,
        token_expires_at: expires.map(|t| from_ts(table, t)).transpose()?,
        registration_key: key,
        registered,
    })
}

impl RunnerStore for SqliteStore {
    fn assignments(&self, agent_id: &str) -> Result<Vec<Assignment>, StoreError> {
        self.query_assignments(
            &format!("SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = ?1 ORDER BY runner"),
            &[&agent_id],
        )
    }

    fn all_assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        self.query_assignments(
            &format!("SELECT {ASSIGN_COLS} FROM assignments ORDER BY agent_id, runner"),
            &[],
        )
    }

    fn retire_agent_runners(&self, agent_id: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current = select_assignments(
            &tx,
            &format!("SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = ?1 ORDER BY runner"),
            &[&agent_id],
        )?;
        let mut queued = 0;
        for a in current {
            delete_assignment(&tx, agent_id, &a.runner)?;
            if a.registered {
                add_retired(
                    &tx,
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
    }

    fn replace_assignment(&self, fresh: &Assignment) -> Result<Option<Assignment>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = select_assignments(
            &tx,
            &format!("SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = ?1 AND runner = ?2"),
            &[&fresh.agent_id, &fresh.runner],
        )?
        .pop();
        put_assignment(&tx, fresh)?;
        if let Some(old) = old.as_ref().filter(|a| a.registered) {
            add_retired(
                &tx,
                &Retired {
                    id: 0,
                    assignment: old.clone(),
                    after_generation: 0,
                },
            )?;
        }
        tx.commit()?;
        Ok(old)
    }

    fn rotate_assignment_token(
        &self,
        expected: &Assignment,
        token_sealed: &[u8],
        token_expires_at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE assignments SET token_sealed = ?6, token_expires_at = ?7
                 WHERE agent_id = ?1 AND runner = ?2 AND gitlab_runner_id = ?3
                   AND registration_key = ?4 AND token_sealed = ?5",
            )?
            .execute(params![
                expected.agent_id,
                expected.runner,
                expected.gitlab_runner_id,
                expected.registration_key,
                expected.token_sealed,
                token_sealed,
                token_expires_at.map(ts)
            ])?;
        Ok(n > 0)
    }

    fn list_retired(&self) -> Result<Vec<Retired>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ASSIGN_COLS}, after_generation, id FROM retired ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((assign_row(r)?, r.get::<_, i64>(8)?, r.get::<_, i64>(9)?))
        })?;
        rows.map(|row| {
            let (a, after, id) = row?;
            Ok(Retired {
                id,
                assignment: assignment("retired", a)?,
                after_generation: from_u(after),
            })
        })
        .collect()
    }

    fn delete_retired(&self, id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM retired WHERE id = ?1", params![id])?;
        Ok(())
    }
}

impl SqliteStore {
    fn query_assignments(
        &self,
        sql: &str,
        p: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Assignment>, StoreError> {
        select_assignments(&self.conn(), sql, p)
    }
}

/// The assignments `sql` selects (alone or inside a transaction).
fn select_assignments(
    conn: &Connection,
    sql: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Assignment>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(p, assign_row)?;
    rows.map(|r| assignment("assignments", r?)).collect()
}

/// Inserts or replaces an assignment (alone or inside a transaction).
pub(super) fn put_assignment(conn: &Connection, a: &Assignment) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO assignments ({ASSIGN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        a.agent_id,
        a.runner,
        a.url,
        a.gitlab_runner_id,
        a.token_sealed,
        a.token_expires_at.map(ts),
        a.registration_key,
        a.registered
    ])?;
    Ok(())
}

/// Removes an assignment; `false` when there was none.
pub(super) fn delete_assignment(
    conn: &Connection,
    agent_id: &str,
    runner: &str,
) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM assignments WHERE agent_id = ?1 AND runner = ?2")?
        .execute(params![agent_id, runner])?;
    Ok(n > 0)
}

/// Queues a retired entry; returns its id.
pub(super) fn add_retired(conn: &Connection, r: &Retired) -> Result<i64, StoreError> {
    let a = &r.assignment;
    conn.prepare_cached(&format!(
        "INSERT INTO retired ({ASSIGN_COLS}, after_generation) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        a.agent_id,
        a.runner,
        a.url,
        a.gitlab_runner_id,
        a.token_sealed,
        a.token_expires_at.map(ts),
        a.registration_key,
        a.registered,
        u(r.after_generation)
    ])?;
    Ok(conn.last_insert_rowid())
}
