//! The desired state pushed to an agent: its target generation's runners, each with its
//! own token.

use std::collections::HashMap;

use super::{Fleet, FleetError, RUNNER_TOKEN};
use crate::fleet::messages::{DesiredState, RunnerAssignment};
use crate::fleet::selector;
use crate::fleet::spec;
use crate::store::{self, Assignment};

impl Fleet {
    /// The desired state pushed to `agent_id`: its target generation's runners that select
    /// it, each with its own token. `None` before it was targeted.
    pub async fn desired_state(&self, agent_id: &str) -> Result<Option<DesiredState>, FleetError> {
        let id = agent_id.to_string();
        let read = store::blocking(&self.store, move |s| {
            let Some(labels) = s.agent_labels(&id)? else {
                return Ok(None);
            };
            let target = s.agent_rollout(&id)?.map(|r| r.target_generation);
            match target {
                None | Some(0) => Ok(None),
                Some(target) => Ok(Some((labels, target, s.assignments(&id)?))),
            }
        });
        match read.await? {
            Some((labels, target, assignments)) => {
                self.desired_given(agent_id, &labels, target, assignments)
                    .await
            }
            None => Ok(None),
        }
    }

    /// The desired state of `agent_id` from what its session read (see
    /// [`crate::store::SessionRead`]): the same as [`Fleet::desired_state`] without reading
    /// the agent again.
    pub async fn desired_from(
        &self,
        agent_id: &str,
        read: &crate::store::SessionRead,
    ) -> Result<Option<DesiredState>, FleetError> {
        match &read.labels {
            Some(labels) if read.target_generation > 0 => {
                self.desired_given(
                    agent_id,
                    labels,
                    read.target_generation,
                    read.assignments.clone(),
                )
                .await
            }
            _ => Ok(None),
        }
    }

    async fn desired_given(
        &self,
        agent_id: &str,
        labels: &std::collections::BTreeMap<String, String>,
        target: u64,
        assignments: Vec<Assignment>,
    ) -> Result<Option<DesiredState>, FleetError> {
        let Some(runners) = self.generation_runners(target).await? else {
            return Ok(None);
        };
        let assignments: HashMap<String, Assignment> = assignments
            .into_iter()
            .map(|a| (a.runner.clone(), a))
            .collect();
        let mut out = Vec::new();
        for r in runners
            .iter()
            .filter(|r| selector::matches(&r.selector, labels))
        {
            let Some(a) = assignments.get(&r.name) else {
                tracing::warn!(agent = %agent_id, runner = %r.name, "no gitlab runner assigned; left out");
                continue;
            };
            let token = self.sealer.open_secret(RUNNER_TOKEN, &a.token_sealed)?;
            out.push(RunnerAssignment {
                name: r.name.clone(),
                spec_json: spec::agent_spec_json(r),
                runner_token: token,
                gitlab_runner_id: a.gitlab_runner_id,
                token_expires_at: a.token_expires_at,
                cache_secrets: spec::cache_secrets(r),
            });
        }
        Ok(Some(DesiredState {
            generation: target,
            runners: out,
        }))
    }
}
