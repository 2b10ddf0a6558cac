//! Runner spec generations and each agent's rollout progress.

use postgres::{GenericClient, Row};

use super::runners::{add_retired, delete_assignment, put_assignment};
use super::{PgStore, from_ts, from_u, json, to_json, ts, u};
use crate::store::{
    AckRecord, AgentRollout, AgentStep, GenerationRecord, RolloutState, RolloutStore, StoreError,
    Strategy,
};

const GEN_COLS: &str = "generation, created_at, runners_sealed, strategy, state, reason";

/// `agent_id, target_generation, ack_generation, ack_error` as an [`AgentRollout`].
fn agent_rollout(r: &Row) -> Result<AgentRollout, StoreError> {
    Ok(AgentRollout {
        agent_id: r.try_get(0)?,
        target_generation: from_u(r.try_get(1)?),
        ack_generation: from_u(r.try_get(2)?),
        ack_error: r.try_get(3)?,
    })
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

fn generation_record(r: &Row) -> Result<GenerationRecord, StoreError> {
    Ok(GenerationRecord {
        generation: from_u(r.try_get(0)?),
        created_at: from_ts("generations", r.try_get(1)?)?,
        runners_sealed: r.try_get(2)?,
        strategy: json::<Strategy>("generations", r.try_get(3)?)?,
        state: state_from(r.try_get(4)?)?,
        reason: r.try_get(5)?,
    })
}

impl RolloutStore for PgStore {
    fn add_generation(&self, g: &GenerationRecord) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // Serialises concurrent applies: the second sees the first's generation.
            tx.execute("LOCK TABLE generations IN EXCLUSIVE MODE", &[])?;
            let newest: i64 = tx
                .query_one("SELECT COALESCE(MAX(generation), 0) FROM generations", &[])?
                .try_get(0)?;
            let newest = from_u(newest);
            if g.generation != newest + 1 {
                return Err(StoreError::GenerationConflict {
                    newest,
                    got: g.generation,
                });
            }
            tx.execute(
                &format!("INSERT INTO generations ({GEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6)"),
                &[
                    &u(g.generation),
                    &ts(g.created_at),
                    &g.runners_sealed,
                    &to_json(&g.strategy),
                    &g.state.as_str(),
                    &g.reason,
                ],
            )?;
            tx.commit()?;
            Ok(())
        })
    }

    fn latest_generation(&self) -> Result<Option<GenerationRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {GEN_COLS} FROM generations ORDER BY generation DESC LIMIT 1"),
                &[],
            )?
            .as_ref()
            .map(generation_record)
            .transpose()
        })
    }

    fn get_generation(&self, generation: u64) -> Result<Option<GenerationRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {GEN_COLS} FROM generations WHERE generation = $1"),
                &[&u(generation)],
            )?
            .as_ref()
            .map(generation_record)
            .transpose()
        })
    }

    fn set_rollout_state(
        &self,
        generation: u64,
        state: RolloutState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = c.execute(
                "UPDATE generations SET state = $2, reason = $3 WHERE generation = $1",
                &[&u(generation), &state.as_str(), &reason],
            )?;
            Ok(n > 0)
        })
    }

    fn agent_rollouts(&self) -> Result<Vec<AgentRollout>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT agent_id, target_generation, ack_generation, ack_error FROM agent_rollouts ORDER BY agent_id",
                &[],
            )?
            .iter()
            .map(agent_rollout)
            .collect()
        })
    }

    fn agent_rollout(&self, agent_id: &str) -> Result<Option<AgentRollout>, StoreError> {
        self.with(|c| {
            c.query_opt(
                "SELECT agent_id, target_generation, ack_generation, ack_error FROM agent_rollouts WHERE agent_id = $1",
                &[&agent_id],
            )?
            .as_ref()
            .map(agent_rollout)
            .transpose()
        })
    }

    fn advance_agents(&self, steps: &[AgentStep]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            for step in steps {
                for a in &step.put {
                    put_assignment(&mut tx, a)?;
                }
                for runner in &step.delete {
                    delete_assignment(&mut tx, &step.agent_id, runner)?;
                }
                for r in &step.retire {
                    add_retired(&mut tx, r)?;
                }
                tx.execute(
                    "INSERT INTO agent_rollouts (agent_id, target_generation) VALUES ($1, $2)
                     ON CONFLICT (agent_id) DO UPDATE SET target_generation = EXCLUDED.target_generation",
                    &[&step.agent_id, &u(step.generation)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn rollout_progress(&self) -> Result<Vec<AgentRollout>, StoreError> {
        self.with(|c| {
            c.query(
                "SELECT a.id, COALESCE(r.target_generation, 0), COALESCE(r.ack_generation, 0), r.ack_error
                 FROM agents a LEFT JOIN agent_rollouts r ON r.agent_id = a.id
                 WHERE a.revoked_at IS NULL ORDER BY a.id",
                &[],
            )?
            .iter()
            .map(agent_rollout)
            .collect()
        })
    }

    fn record_acks(&self, acks: &[AckRecord]) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            for ack in acks {
                record_ack(&mut tx, ack)?;
            }
            tx.commit()?;
            Ok(())
        })
    }
}

fn record_ack(tx: &mut impl GenericClient, ack: &AckRecord) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO agent_rollouts (agent_id, ack_generation, ack_error) VALUES ($1, $2, $3)
         ON CONFLICT (agent_id) DO UPDATE
         SET ack_generation = EXCLUDED.ack_generation, ack_error = EXCLUDED.ack_error",
        &[&ack.agent_id, &u(ack.generation), &ack.error],
    )?;
    if ack.error.is_none() {
        tx.execute(
            "UPDATE agents SET applied_generation = $2 WHERE id = $1",
            &[&ack.agent_id, &u(ack.generation)],
        )?;
    }
    Ok(())
}
