//! The janitor: at start and every few minutes, removes this agent's Docker containers,
//! networks and per-job volumes that no running job owns (left by a `kill -9` of the agent,
//! a Docker daemon restart, or a cleanup that failed). Builds volumes are kept on purpose
//! (`GIT_STRATEGY=fetch` reuses them) and only listed.
//!
//! Invariant: only objects labelled with this agent's id are touched, and never those of a
//! job in [`RunningJobs`].

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use drover_job::executor::{CleanupReport, DockerExecutor};

/// How often the janitor runs when nobody says otherwise.
pub const DEFAULT_JANITOR_INTERVAL: Duration = Duration::from_secs(300);

/// The ids of the jobs this agent is running now; the runner loop adds and removes them.
#[derive(Debug, Clone, Default)]
pub struct RunningJobs {
    ids: Arc<Mutex<HashSet<i64>>>,
}

impl RunningJobs {
    pub fn add(&self, job_id: i64) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(job_id);
    }
    pub fn remove(&self, job_id: i64) {
        self.ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&job_id);
    }
    /// The ids now, sorted.
    pub fn snapshot(&self) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .ids
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}

/// Removes this agent's leftovers.
#[derive(Clone)]
pub struct Janitor {
    docker: DockerExecutor,
    agent_id: String,
    running: RunningJobs,
}

impl Janitor {
    pub fn new(docker: DockerExecutor, agent_id: String, running: RunningJobs) -> Self {
        Janitor {
            docker,
            agent_id,
            running,
        }
    }

    /// One pass; what it removed is logged.
    pub async fn sweep(&self) -> Option<CleanupReport> {
        let keep = self.running.snapshot();
        match self.docker.cleanup_orphans(&self.agent_id, &keep).await {
            Ok(r) => {
                if !r.containers_removed.is_empty()
                    || !r.networks_removed.is_empty()
                    || !r.volumes_removed.is_empty()
                {
                    tracing::info!(
                        containers = ?r.containers_removed,
                        networks = ?r.networks_removed,
                        volumes = ?r.volumes_removed,
                        "janitor removed objects no running job owns"
                    );
                }
                for e in &r.errors {
                    tracing::warn!(error = %e, "janitor");
                }
                Some(r)
            }
            Err(e) => {
                tracing::warn!(error = %e, "janitor: docker unreachable; will retry");
                None
            }
        }
    }

    /// Sweeps now (listing the kept builds volumes), then every `interval` until `cancel`.
    pub async fn run(self, interval: Duration, cancel: CancellationToken) {
        self.sweep().await;
        match self.docker.list_kept_volumes(&self.agent_id).await {
            Ok(v) if !v.is_empty() => tracing::info!(
                volumes = ?v.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(),
                "builds volumes kept between jobs (remove by hand to reclaim space)"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "list kept volumes"),
        }
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            self.sweep().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_jobs_snapshot_is_sorted_and_follows_add_remove() {
        let r = RunningJobs::default();
        r.add(9);
        r.add(3);
        r.add(9);
        assert_eq!(r.snapshot(), vec![3, 9]);
        r.remove(9);
        assert_eq!(r.snapshot(), vec![3]);
    }
}
