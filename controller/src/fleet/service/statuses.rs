//! Runner statuses for `drover agents`: the assignments joined with what the last
//! heartbeat said.

use std::collections::HashMap;

use super::Fleet;
use crate::health::report::RunnerStatus;
use crate::store::{self, Assignment};

impl Fleet {
    /// Keeps the runner statuses of a heartbeat for `drover agents`.
    pub fn on_heartbeat(&self, agent_id: &str, runners: &[RunnerStatus]) {
        self.runtime()
            .entry(agent_id.to_string())
            .or_default()
            .runners = runners.to_vec();
    }

    /// The agent's runners for `drover agents`. The assignments say which GitLab runner
    /// each one is and when its token expires (a heartbeat sent while an old unit was
    /// still stopping would name the retired runner); the last heartbeat says how the unit
    /// runs. Units the agent still reports but no longer has an assignment for (being
    /// stopped) follow, as reported.
    pub async fn runner_statuses(&self, agent_id: &str) -> Vec<RunnerStatus> {
        let id = agent_id.to_string();
        let assignments = store::blocking(&self.store, move |s| s.assignments(&id))
            .await
            .unwrap_or_default();
        self.statuses_of(agent_id, assignments)
    }

    /// [`Fleet::runner_statuses`] of every agent in `ids`, from one read of the store.
    pub async fn runner_statuses_of(&self, ids: &[String]) -> Vec<Vec<RunnerStatus>> {
        let all = store::blocking(&self.store, |s| s.all_assignments())
            .await
            .unwrap_or_default();
        let mut by_agent = self.statuses_by_agent(&all);
        ids.iter()
            .map(|id| {
                by_agent
                    .remove(id)
                    .unwrap_or_else(|| self.statuses_of(id, Vec::new()))
            })
            .collect()
    }

    /// [`Fleet::runner_statuses`] of every agent holding one of `assignments`.
    pub fn statuses_by_agent(
        &self,
        assignments: &[Assignment],
    ) -> HashMap<String, Vec<RunnerStatus>> {
        let mut grouped: HashMap<String, Vec<Assignment>> = HashMap::new();
        for a in assignments {
            grouped
                .entry(a.agent_id.clone())
                .or_default()
                .push(a.clone());
        }
        grouped
            .into_iter()
            .map(|(id, a)| {
                let statuses = self.statuses_of(&id, a);
                (id, statuses)
            })
            .collect()
    }

    /// The statuses of `agent_id`'s runners, given its assignments.
    fn statuses_of(&self, agent_id: &str, assignments: Vec<Assignment>) -> Vec<RunnerStatus> {
        let mut reported = self
            .runtime()
            .get(agent_id)
            .map(|rt| rt.runners.clone())
            .unwrap_or_default();
        let mut out: Vec<RunnerStatus> = assignments
            .into_iter()
            .map(|a| {
                let unit = reported
                    .iter()
                    .position(|r| {
                        r.name == a.runner
                            && (r.gitlab_runner_id == 0 || r.gitlab_runner_id == a.gitlab_runner_id)
                    })
                    .map(|i| reported.remove(i))
                    .unwrap_or_default();
                RunnerStatus {
                    name: a.runner,
                    gitlab_runner_id: a.gitlab_runner_id,
                    token_expires_at: a.token_expires_at,
                    ..unit
                }
            })
            .collect();
        out.extend(reported);
        out
    }

    /// The last error advancing this agent (e.g. GitLab refused the registration).
    pub fn agent_error(&self, agent_id: &str) -> Option<String> {
        self.runtime().get(agent_id).and_then(|r| r.error.clone())
    }
}
