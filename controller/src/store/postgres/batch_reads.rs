//! Reads of many agents at once: a few `= ANY($1)` queries on one connection, whatever
//! the number of agents.

use std::collections::{BTreeMap, HashMap};

use postgres::Client;

use super::agents::{AGENT_COLS, agent_record};
use super::drains::drain_record;
use super::images::{DELIVERY_COLUMNS, delivery};
use super::runners::{ASSIGN_COLS, assignment};
use super::{PgStore, from_u, json};
use crate::store::{AgentRecord, Assignment, BatchReadStore, SessionRead, StoreError};

/// The assignments of `ids`, by agent, each agent's by runner name.
fn assignments_of(
    c: &mut Client,
    ids: &[String],
) -> Result<HashMap<String, Vec<Assignment>>, StoreError> {
    let mut out: HashMap<String, Vec<Assignment>> = HashMap::new();
    for r in c.query(
        &format!(
            "SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = ANY($1) ORDER BY agent_id, runner"
        ),
        &[&ids],
    )? {
        let a = assignment("assignments", &r)?;
        out.entry(a.agent_id.clone()).or_default().push(a);
    }
    Ok(out)
}

impl BatchReadStore for PgStore {
    fn session_reads(&self, ids: &[String]) -> Result<HashMap<String, SessionRead>, StoreError> {
        self.with(|c| {
            let mut out: HashMap<String, SessionRead> = ids
                .iter()
                .map(|id| (id.clone(), SessionRead::default()))
                .collect();
            for r in c.query(
                "SELECT a.id, a.labels, COALESCE(r.target_generation, 0)
                 FROM agents a LEFT JOIN agent_rollouts r ON r.agent_id = a.id
                 WHERE a.id = ANY($1)",
                &[&ids],
            )? {
                let id: String = r.try_get(0)?;
                let labels = json::<BTreeMap<String, String>>("agents", r.try_get(1)?)?;
                if let Some(read) = out.get_mut(&id) {
                    read.labels = Some(labels);
                    read.target_generation = from_u(r.try_get(2)?);
                }
            }
            for (id, assignments) in assignments_of(c, ids)? {
                if let Some(read) = out.get_mut(&id).filter(|r| r.labels.is_some()) {
                    read.assignments = assignments;
                }
            }
            for r in c.query(
                "SELECT agent_id, requested_at, deadline_at FROM agent_drains WHERE agent_id = ANY($1)",
                &[&ids],
            )? {
                let d = drain_record(&r)?;
                if let Some(read) = out.get_mut(&d.agent_id).filter(|r| r.labels.is_some()) {
                    read.drain = Some(d);
                }
            }
            for r in c.query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM image_deliveries WHERE agent_id = ANY($1)
                     ORDER BY agent_id, reference, image_id"
                ),
                &[&ids],
            )? {
                let d = delivery(&r)?;
                if let Some(read) = out.get_mut(&d.agent_id).filter(|r| r.labels.is_some()) {
                    read.deliveries.push(d);
                }
            }
            Ok(out)
        })
    }

    fn agents_with_assignments(
        &self,
        ids: &[String],
    ) -> Result<Vec<(AgentRecord, Vec<Assignment>)>, StoreError> {
        self.with(|c| {
            let mut agents: HashMap<String, AgentRecord> = HashMap::new();
            for r in c.query(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE id = ANY($1)"),
                &[&ids],
            )? {
                let a = agent_record(&r)?;
                agents.insert(a.id.clone(), a);
            }
            let mut assignments = assignments_of(c, ids)?;
            Ok(ids
                .iter()
                .filter_map(|id| {
                    let agent = agents.remove(id)?;
                    Some((agent, assignments.remove(id).unwrap_or_default()))
                })
                .collect())
        })
    }
}
