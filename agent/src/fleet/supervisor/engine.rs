//! Engine sync: the shared engine is built once Docker answers, and its runner set follows
//! the units that want a loop.

use std::sync::Arc;

use drover_proto::spec::{Config, RunnerConfig};

use super::{Supervisor, now};
use crate::engine::{Engine, GitLabFactory};
use crate::units::Event;
use drover_job::executor::Executor;

impl Supervisor {
    /// The engine's `concurrent`: the units' limits summed, at least 1.
    pub(super) fn concurrent(&self) -> u32 {
        self.units
            .values()
            .map(|e| e.assignment.limit())
            .sum::<u32>()
            .max(1)
    }

    /// Brings the engine's runner set in line with the units that want a loop.
    pub(super) fn sync_engine(&mut self) {
        let concurrent = self.concurrent();
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let runners: Vec<RunnerConfig> = self
            .units
            .values()
            .filter(|e| e.unit.state.wants_loop() && !e.stop_loop)
            .map(|e| e.assignment.config.clone())
            .collect();
        let config = Config {
            concurrent: Some(concurrent),
            runners,
            ..Config::default()
        };
        if let Err(e) = engine.apply(&config) {
            tracing::error!(error = %format!("{e:#}"), "apply runners to the engine");
        }
        let stats = engine.stats();
        for (name, s) in stats {
            if let Some(e) = self.units.get_mut(&name) {
                match &e.stats {
                    Some(old) if Arc::ptr_eq(old, &s) => {}
                    old => {
                        if let Some(old) = old {
                            let o = old.snapshot();
                            e.base.0 += o.jobs_succeeded;
                            e.base.1 += o.jobs_failed;
                            e.base.2 += o.jobs_canceled;
                        }
                        e.stats = Some(s);
                        e.beat_seen = None;
                    }
                }
            }
        }
    }

    fn make_engine(&self, executor: Arc<dyn Executor>) -> Engine {
        let factory = self.deps.gitlab.clone();
        let boxed: GitLabFactory = Box::new(move |rc| factory(rc));
        let mut engine = Engine::new(
            executor,
            boxed,
            self.deps.system_id.clone(),
            self.deps.agent_id.clone(),
        )
        .with_events(self.runner_events_tx.clone());
        if let Some(t) = self.deps.timings.tune.clone() {
            engine = engine.with_tuning(move |s| t(s));
        }
        engine
    }

    pub(super) async fn check_docker(&mut self) {
        let up = match self.deps.docker.ping().await {
            Ok(status) => {
                self.docker = Some(status);
                true
            }
            Err(e) => {
                if self.docker_up || self.engine.is_none() {
                    tracing::warn!(error = %e, "docker engine unreachable");
                }
                for entry in self.units.values_mut() {
                    let before = entry.unit.state;
                    entry.unit.handle(
                        Event::DockerDown(format!("docker: {e}")),
                        now(&self.deps.clock),
                        false,
                    );
                    if before != entry.unit.state {
                        entry.log(format!("waiting for docker: {e}"));
                    }
                }
                false
            }
        };
        if up && self.engine.is_none() {
            match self.deps.docker.executor().await {
                Ok(ex) => {
                    self.engine = Some(self.make_engine(ex));
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "connect the docker executor");
                    self.docker_up = false;
                    return;
                }
            }
        }
        if up != self.docker_up {
            self.dirty = true;
        }
        self.docker_up = up && self.engine.is_some();
    }

    /// Replaces every running job loop with a new one (new GitLab clients, new
    /// connections); running jobs finish in the old loops. Units keep their state.
    pub(super) fn restart_loops(&mut self) {
        let concurrent = self.concurrent();
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        let none = Config {
            concurrent: Some(concurrent),
            ..Config::default()
        };
        if let Err(e) = engine.apply(&none) {
            tracing::error!(error = %format!("{e:#}"), "stop runner loops for a restart");
        }
        self.sync_engine();
    }
}
