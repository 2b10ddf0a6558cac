//! Reads of many agents at once: what the sessions of a kicked batch look at, and what the
//! leader needs to advance a batch of agents. The default bodies call the one-agent reads
//! (cheap on an embedded store); [`super::postgres::PgStore`] answers each in a few
//! queries on one connection, whatever the number of agents, so a rollout's cost on a
//! database server does not grow with one round trip per agent and per read.

use std::collections::{BTreeMap, HashMap};

use super::{
    AgentRecord, AgentStore, Assignment, DeliveryRecord, DrainRecord, DrainStore, ImageStore,
    RolloutStore, RunnerStore, StoreError,
};

/// What an agent's session reads when it looks at its desired state again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRead {
    /// The agent's labels; `None` when it is not enrolled (nothing else is read then).
    pub labels: Option<BTreeMap<String, String>>,
    /// The generation it was advanced to (0: none yet).
    pub target_generation: u64,
    /// Its GitLab runners, by runner name order.
    pub assignments: Vec<Assignment>,
    /// Its drain, if it was told to drain.
    pub drain: Option<DrainRecord>,
    /// Its image deliveries, open or not.
    pub deliveries: Vec<DeliveryRecord>,
}

/// Reads of many agents at once.
pub trait BatchReadStore:
    AgentStore + RolloutStore + RunnerStore + DrainStore + ImageStore
{
    /// What the sessions of `ids` read, for each id given (an unknown agent has no labels).
    fn session_reads(&self, ids: &[String]) -> Result<HashMap<String, SessionRead>, StoreError> {
        let mut out = HashMap::with_capacity(ids.len());
        for id in ids {
            let mut read = SessionRead {
                labels: self.agent_labels(id)?,
                ..SessionRead::default()
            };
            if read.labels.is_some() {
                read.target_generation = self.agent_rollout(id)?.map_or(0, |r| r.target_generation);
                read.assignments = self.assignments(id)?;
                read.drain = self.agent_drain(id)?;
                read.deliveries = self.list_deliveries(Some(id))?;
            }
            out.insert(id.clone(), read);
        }
        Ok(out)
    }

    /// The agents of `ids` that exist, each with its assignments, in the order of `ids`.
    fn agents_with_assignments(
        &self,
        ids: &[String],
    ) -> Result<Vec<(AgentRecord, Vec<Assignment>)>, StoreError> {
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(agent) = self.get_agent(id)? {
                let assignments = self.assignments(id)?;
                out.push((agent, assignments));
            }
        }
        Ok(out)
    }
}
