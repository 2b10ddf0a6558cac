//! Runner spec generations and each agent's rollout progress.

use rusqlite::{OptionalExtension, params};

use super::runners::{add_retired, delete_assignment, put_assignment};
use super::{SqliteStore, from_ts, from_u, json, to_json, ts, u};
use crate::store::{
    AckRecord, AgentRollout, AgentStep, GenerationRecord, RolloutState, RolloutStore, StoreError,
    Strategy,
};

const GEN_COLS: &str = "generation, created_at, runners_sealed, strategy, state, reason";

/// `agent_id, target_generation, ack_generation, ack_error` as an [`AgentRollout`].
fn agent_rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRollout> {
    Ok(AgentRollout {
        agent_id: r.get(0)?,
        target_generation: from_u(r.get(1)?),
        ack_generation: from_u(r.get(2)?),
        ack_error: r.get(3)?,
    })
}

fn state_name(s: RolloutState) -> &'static str {
    s.as_str()
}

fn state_from(s: &str) -> Result<RolloutState, StoreError> {
    match s {
        "progressing" => Ok(RolloutState::Progressing),
        "complete" => Ok(RolloutState::Complete),
        "halted" => Ok(RolloutState::Halted),
        other => Err(StoreError::Corrupt {
            table: "generations",
            detail: format!("rollout state {other:?}"),
        }),
    }
}

fn generation_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(i64, i64, Vec<u8>, String, String, String)> {
    TryFrom::try_from(r)
}

fn generation_record(
    row: (i64, i64, Vec<u8>, String, String, String),
) -> Result<GenerationRecord, StoreError> {
    let (generation, created, sealed, strategy, state, reason) = row;
    Ok(GenerationRecord {
        generation: from_u(generation),
        created_at: from_ts("generations", created)?,
        runners_sealed: sealed,
        strategy: json::<Strategy>("generations", &strategy)?,
        state: state_from(&state)?,
        reason,
    })
}

impl RolloutStore for SqliteStore {
    fn add_generation(&self, g: &GenerationRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let newest: i64 = tx.query_row(
            "SELECT COALESCE(MAX(generation), 0) FROM generations",
            [],
            |r| r.get(0),
        )?;
        let newest = from_u(newest);
        if g.generation != newest + 1 {
            return Err(StoreError::GenerationConflict {
                newest,
                got: g.generation,
            });
        }
        tx.execute(
            &format!("INSERT INTO generations ({GEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                u(g.generation),
                ts(g.created_at),
                g.runners_sealed,
                to_json(&g.strategy),
                state_name(g.state),
                g.reason
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn latest_generation(&self) -> Result<Option<GenerationRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {GEN_COLS} FROM generations ORDER BY generation DESC LIMIT 1"
            ))?
            .query_row([], generation_row)
            .optional()?;
        row.map(generation_record).transpose()
    }

    fn get_generation(&self, generation: u64) -> Result<Option<GenerationRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {GEN_COLS} FROM generations WHERE generation = ?1"
            ))?
            .query_row(params![u(generation)], generation_row)
            .optional()?;
        row.map(generation_record).transpose()
    }

    fn set_rollout_state(
        &self,
        generation: u64,
        state: RolloutState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE generations SET state = ?2, reason = ?3 WHERE generation = ?1",
            params![u(generation), state_name(state), reason],
        )?;
        Ok(n > 0)
    }

    fn agent_rollouts(&self) -> Result<Vec<AgentRollout>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, target_generation, ack_generation, ack_error FROM agent_rollouts ORDER BY agent_id",
        )?;
        let rows = stmt.query_map([], agent_rollout_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn agent_rollout(&self, agent_id: &str) -> Result<Option<AgentRollout>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, target_generation, ack_generation, ack_error FROM agent_rollouts WHERE agent_id = ?1",
        )?;
        Ok(stmt
            .query_row(params![agent_id], agent_rollout_row)
            .optional()?)
    }

    fn advance_agents(&self, steps: &[AgentStep]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for step in steps {
            for a in &step.put {
                put_assignment(&tx, a)?;
            }
            for runner in &step.delete {
                delete_assignment(&tx, &step.agent_id, runner)?;
            }
            for r in &step.retire {
                add_retired(&tx, r)?;
            }
            rollout_row(&tx, &step.agent_id)?;
            tx.prepare_cached(
                "UPDATE agent_rollouts SET target_generation = ?2 WHERE agent_id = ?1",
            )?
            .execute(params![step.agent_id, u(step.generation)])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn rollout_progress(&self) -> Result<Vec<AgentRollout>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT a.id, COALESCE(r.target_generation, 0), COALESCE(r.ack_generation, 0), r.ack_error
             FROM agents a LEFT JOIN agent_rollouts r ON r.agent_id = a.id
             WHERE a.revoked_at IS NULL ORDER BY a.id",
        )?;
        let rows = stmt.query_map([], agent_rollout_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn record_acks(&self, acks: &[AckRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for ack in acks {
            rollout_row(&tx, &ack.agent_id)?;
            tx.prepare_cached(
                "UPDATE agent_rollouts SET ack_generation = ?2, ack_error = ?3 WHERE agent_id = ?1",
            )?
            .execute(params![ack.agent_id, u(ack.generation), ack.error])?;
            if ack.error.is_none() {
                tx.prepare_cached("UPDATE agents SET applied_generation = ?2 WHERE id = ?1")?
                    .execute(params![ack.agent_id, u(ack.generation)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

/// Creates the agent's rollout row at zero when it has none.
fn rollout_row(tx: &rusqlite::Transaction<'_>, agent_id: &str) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT OR IGNORE INTO agent_rollouts (agent_id) VALUES (?1)")?
        .execute(params![agent_id])?;
    Ok(())
}
