//! What the agent's janitor asks of the executor: remove a dead job's leftovers, list the
//! volumes kept between jobs on purpose.

use std::collections::HashMap;

use super::DockerExecutor;
use crate::executor::ExecutorError;
use crate::executor::names::{LABEL_AGENT, LABEL_JOB, LABEL_KIND, LABEL_PROJECT, LABEL_RUNNER};

/// What [`DockerExecutor::cleanup_orphans`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    pub containers_removed: Vec<String>,
    pub volumes_removed: Vec<String>,
    pub networks_removed: Vec<String>,
    /// Objects that could not be removed, with the error.
    pub errors: Vec<String>,
}

/// A volume kept between jobs on purpose (builds), as [`DockerExecutor::list_kept_volumes`]
/// lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptVolume {
    pub name: String,
    pub runner: Option<String>,
    pub project: Option<String>,
}

impl DockerExecutor {
    /// The volumes this agent keeps between jobs on purpose (builds volumes, reused by
    /// `GIT_STRATEGY=fetch`); the janitor leaves them. Remove them by hand to reclaim space.
    pub async fn list_kept_volumes(
        &self,
        agent_id: &str,
    ) -> Result<Vec<KeptVolume>, ExecutorError> {
        Ok(self
            .api
            .list_volumes(LABEL_AGENT, agent_id)
            .await?
            .into_iter()
            .filter(|v| v.labels.get(LABEL_KIND).map(String::as_str) == Some("builds"))
            .map(|v| KeptVolume {
                runner: v.labels.get(LABEL_RUNNER).cloned(),
                project: v.labels.get(LABEL_PROJECT).cloned(),
                name: v.name,
            })
            .collect())
    }

    /// Removes this agent's containers, networks and per-job volumes whose job is not in
    /// `keep_job_ids`. Only objects labelled `com.drover.agent=<agent_id>` are touched;
    /// builds volumes (kept between jobs on purpose) are left alone.
    pub async fn cleanup_orphans(
        &self,
        agent_id: &str,
        keep_job_ids: &[i64],
    ) -> Result<CleanupReport, ExecutorError> {
        let mut report = CleanupReport::default();
        let keep = |labels: &HashMap<String, String>| {
            labels
                .get(LABEL_JOB)
                .and_then(|j| j.parse::<i64>().ok())
                .is_some_and(|j| keep_job_ids.contains(&j))
        };
        for c in self.api.list_containers(LABEL_AGENT, agent_id).await? {
            if c.labels.get(LABEL_AGENT).map(String::as_str) != Some(agent_id) || keep(&c.labels) {
                continue;
            }
            match self.api.remove(&c.id).await {
                Ok(()) => report.containers_removed.push(c.name),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for v in self.api.list_volumes(LABEL_AGENT, agent_id).await? {
            if v.labels.get(LABEL_AGENT).map(String::as_str) != Some(agent_id)
                || v.labels.get(LABEL_KIND).map(String::as_str) != Some("tmp")
                || keep(&v.labels)
            {
                continue;
            }
            match self.api.remove_volume(&v.name).await {
                Ok(()) => report.volumes_removed.push(v.name),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        for n in self.api.list_networks(LABEL_AGENT, agent_id).await? {
            if n.labels.get(LABEL_AGENT).map(String::as_str) != Some(agent_id) || keep(&n.labels) {
                continue;
            }
            match self.api.remove_network(&n.id).await {
                Ok(()) => report.networks_removed.push(n.name),
                Err(e) => report.errors.push(e.to_string()),
            }
        }
        Ok(report)
    }
}
