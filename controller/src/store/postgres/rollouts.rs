//! Runner spec generations and each agent's rollout progress.

use postgres::{GenericClient, Row};

use std::collections::BTreeMap;

use super::runners::{ASSIGN_COLS, add_retired, delete_assignment, put_assignment};
use super::{PgStore, from_ts, from_u, json, to_json, ts, u};
use crate::store::{
    AckRecord, AgentRollout, AgentStep, Assignment, GenerationRecord, RolloutState, RolloutStore,
    StoreError, Strategy,
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
            let mut tx = c.transaction()?;
            self.fence_check(&mut tx)?;
            let n = tx.execute(
                "UPDATE generations SET state = $2, reason = $3 WHERE generation = $1",
                &[&u(generation), &state.as_str(), &reason],
            )?;
            tx.commit()?;
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
            self.fence_check(&mut tx)?;
            let mut agents: Vec<&str> = steps.iter().map(|s| s.agent_id.as_str()).collect();
            agents.sort_unstable();
            agents.dedup();
            let mut puts: Vec<(&str, &str)> = steps
                .iter()
                .flat_map(|s| &s.put)
                .map(|a| (a.agent_id.as_str(), a.runner.as_str()))
                .collect();
            let put_count = puts.len();
            puts.sort_unstable();
            puts.dedup();
            if agents.len() == steps.len() && puts.len() == put_count {
                // One step per agent (a reconciliation's batch) and each runner put once:
                // the writes touch disjoint rows, so each kind goes in one statement for
                // the whole batch.
                advance_at_once(&mut tx, steps)?;
                tx.commit()?;
                return Ok(());
            }
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

    /// Two statements for any number of acks: each agent's last ack is its progress, its
    /// last ack without an error its applied generation (as one write per ack, in order).
    fn record_acks(&self, acks: &[AckRecord]) -> Result<(), StoreError> {
        let mut last: BTreeMap<&str, &AckRecord> = BTreeMap::new();
        let mut applied: BTreeMap<&str, i64> = BTreeMap::new();
        for ack in acks {
            last.insert(&ack.agent_id, ack);
            if ack.error.is_none() {
                applied.insert(&ack.agent_id, u(ack.generation));
            }
        }
        let ids: Vec<&str> = last.keys().copied().collect();
        let generations: Vec<i64> = last.values().map(|a| u(a.generation)).collect();
        let errors: Vec<Option<&str>> = last.values().map(|a| a.error.as_deref()).collect();
        let applied_ids: Vec<&str> = applied.keys().copied().collect();
        let applied_generations: Vec<i64> = applied.values().copied().collect();
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO agent_rollouts (agent_id, ack_generation, ack_error)
                 SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[], $3::TEXT[])
                 ON CONFLICT (agent_id) DO UPDATE
                 SET ack_generation = EXCLUDED.ack_generation, ack_error = EXCLUDED.ack_error",
                &[&ids, &generations, &errors],
            )?;
            tx.execute(
                "UPDATE agents SET applied_generation = v.g
                 FROM UNNEST($1::TEXT[], $2::BIGINT[]) AS v(id, g) WHERE agents.id = v.id",
                &[&applied_ids, &applied_generations],
            )?;
            tx.commit()?;
            Ok(())
        })
    }
}

/// The writes of `steps`, one step per agent, a statement per kind of write.
fn advance_at_once(tx: &mut impl GenericClient, steps: &[AgentStep]) -> Result<(), StoreError> {
    let puts: Vec<&Assignment> = steps.iter().flat_map(|s| &s.put).collect();
    if !puts.is_empty() {
        let col = |f: &dyn Fn(&Assignment) -> String| puts.iter().map(|a| f(a)).collect::<Vec<_>>();
        let agent_ids = col(&|a| a.agent_id.clone());
        let runners = col(&|a| a.runner.clone());
        let urls = col(&|a| a.url.clone());
        let keys = col(&|a| a.registration_key.clone());
        let ids: Vec<i64> = puts.iter().map(|a| a.gitlab_runner_id).collect();
        let tokens: Vec<&[u8]> = puts.iter().map(|a| a.token_sealed.as_slice()).collect();
        let expires: Vec<Option<i64>> = puts.iter().map(|a| a.token_expires_at.map(ts)).collect();
        let registered: Vec<bool> = puts.iter().map(|a| a.registered).collect();
        tx.execute(
            &format!(
                "INSERT INTO assignments ({ASSIGN_COLS})
                 SELECT * FROM UNNEST($1::TEXT[], $2::TEXT[], $3::TEXT[], $4::BIGINT[], $5::BYTEA[], $6::BIGINT[], $7::TEXT[], $8::BOOLEAN[])
                 ON CONFLICT (agent_id, runner) DO UPDATE SET url = EXCLUDED.url,
                   gitlab_runner_id = EXCLUDED.gitlab_runner_id, token_sealed = EXCLUDED.token_sealed,
                   token_expires_at = EXCLUDED.token_expires_at,
                   registration_key = EXCLUDED.registration_key, registered = EXCLUDED.registered"
            ),
            &[
                &agent_ids,
                &runners,
                &urls,
                &ids,
                &tokens,
                &expires,
                &keys,
                &registered,
            ],
        )?;
    }
    let (del_agents, del_runners): (Vec<&str>, Vec<&str>) = steps
        .iter()
        .flat_map(|s| s.delete.iter().map(|r| (s.agent_id.as_str(), r.as_str())))
        .unzip();
    if !del_agents.is_empty() {
        tx.execute(
            "DELETE FROM assignments a USING UNNEST($1::TEXT[], $2::TEXT[]) AS d(agent_id, runner)
             WHERE a.agent_id = d.agent_id AND a.runner = d.runner",
            &[&del_agents, &del_runners],
        )?;
    }
    for r in steps.iter().flat_map(|s| &s.retire) {
        add_retired(tx, r)?;
    }
    let agents: Vec<&str> = steps.iter().map(|s| s.agent_id.as_str()).collect();
    let targets: Vec<i64> = steps.iter().map(|s| u(s.generation)).collect();
    tx.execute(
        "INSERT INTO agent_rollouts (agent_id, target_generation)
         SELECT * FROM UNNEST($1::TEXT[], $2::BIGINT[])
         ON CONFLICT (agent_id) DO UPDATE SET target_generation = EXCLUDED.target_generation",
        &[&agents, &targets],
    )?;
    Ok(())
}
