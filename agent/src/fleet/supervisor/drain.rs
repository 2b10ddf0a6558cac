//! Drain and undrain: the controller's commands, persisted in `<state dir>/drain.json` so a
//! restarted agent keeps draining. Draining units take no new jobs, running jobs finish;
//! once the deadline (if any) passed, the jobs still running are canceled with a trace line
//! saying the agent is draining. Undrain starts the units again.
//!
//! A graceful stop (SIGQUIT, [`Supervisor::stop_gracefully`]) drains the same way without
//! persisting anything (the next start takes jobs unless the controller drained it); the
//! run ends once no loop runs, and an undrain does not start units while stopping.

use time::OffsetDateTime;

use super::{Supervisor, now};
use crate::fleet::drain_file::Drain;
use crate::fleet::messages::DrainDeadline;
use crate::units::Event;

/// The reason a job canceled at the drain deadline shows in its trace.
pub const DEADLINE_REASON: &str = "agent is draining (drover agent drain): drain deadline passed";

/// The reason a job canceled by a stop (SIGTERM/SIGINT, also during a graceful stop)
/// shows in its trace.
pub const STOP_REASON: &str = "agent is stopping (drover-agent stopped before the job finished)";

impl Supervisor {
    /// Stops taking jobs on every unit; running jobs finish (until `deadline`), then units
    /// are `stopped`. Generations pushed later are still validated, persisted and acked, but
    /// no unit starts until [`Supervisor::undrain`]. A drain received while draining only
    /// takes the new deadline.
    pub fn drain(&mut self, deadline: Option<DrainDeadline>) {
        let wall = self.deps.clock.now();
        let deadline = match deadline {
            None => None,
            Some(DrainDeadline::At(t)) => Some(t),
            Some(DrainDeadline::After(d)) => time::Duration::try_from(d)
                .ok()
                .and_then(|d| wall.checked_add(d)),
        };
        if self.draining && self.drain_deadline == deadline {
            return;
        }
        self.persist_drain(Some(Drain { deadline }));
        if self.draining {
            tracing::info!(deadline = ?deadline.map(super::rfc3339), "drain: new deadline");
            self.drain_deadline = deadline;
            self.drain_deadline_done = false;
            self.check_drain_deadline();
            self.dirty = true;
            return;
        }
        self.enter_drain(deadline, "drain requested by the controller");
    }

    /// Takes jobs again: every unit of the applied generation starts.
    pub fn undrain(&mut self) {
        if !self.draining {
            return;
        }
        self.persist_drain(None);
        if self.stopping {
            tracing::info!("undrain while stopping gracefully: the next start takes jobs");
            self.draining = false;
            self.drain_deadline = None;
            self.drain_deadline_done = false;
            self.dirty = true;
            return;
        }
        tracing::info!(units = self.units.len(), "undrain: taking jobs again");
        self.draining = false;
        self.drain_deadline = None;
        self.drain_deadline_done = false;
        let t = now(&self.deps.clock);
        let docker_up = self.docker_up;
        let mut changes = Vec::new();
        for (name, e) in self.units.iter_mut() {
            let before = e.unit.state;
            e.unit.handle(Event::Start, t, docker_up);
            e.log("undrain requested by the controller");
            changes.push((name.clone(), before, e.unit.state));
        }
        for (name, before, after) in changes {
            self.transition(&name, before, after);
        }
        self.sync_engine();
        self.dirty = true;
    }

    /// At start: a drain persisted by an earlier run is in force before any unit starts.
    pub(super) fn restore_drain(&mut self) -> anyhow::Result<()> {
        if let Some(d) = self.drain_file.load()? {
            tracing::info!(
                deadline = ?d.deadline.map(super::rfc3339),
                "draining since before the restart: taking no new jobs"
            );
            self.enter_drain(d.deadline, "draining (persisted drain)");
        }
        Ok(())
    }

    /// Once the deadline passed, cancels the jobs still running (once per deadline).
    pub(super) fn check_drain_deadline(&mut self) {
        let Some(deadline) = self.drain_deadline else {
            return;
        };
        if !self.draining || self.drain_deadline_done || self.deps.clock.now() < deadline {
            return;
        }
        self.drain_deadline_done = true;
        let Some(engine) = self.engine.as_mut() else {
            return;
        };
        tracing::warn!(
            loops = engine.running(),
            "drain deadline passed: canceling the jobs still running"
        );
        engine.cancel_jobs(DEADLINE_REASON);
        for e in self.units.values_mut() {
            e.log("drain deadline passed: running jobs canceled");
        }
        self.dirty = true;
    }

    /// Graceful stop (SIGQUIT): every unit stops taking jobs, running jobs finish; the
    /// report says draining. Nothing is persisted.
    pub fn stop_gracefully(&mut self) {
        if self.stopping {
            return;
        }
        tracing::info!(
            units = self.units.len(),
            "graceful stop: taking no new jobs; stopping when running jobs finish"
        );
        self.stopping = true;
        if !self.draining {
            self.drain_units("graceful stop (SIGQUIT): running jobs finish");
        }
        self.dirty = true;
    }

    fn enter_drain(&mut self, deadline: Option<OffsetDateTime>, why: &str) {
        tracing::info!(
            units = self.units.len(),
            deadline = ?deadline.map(super::rfc3339),
            "drain: taking no new jobs; running jobs finish"
        );
        self.draining = true;
        self.drain_deadline = deadline;
        self.drain_deadline_done = false;
        if !self.stopping {
            self.drain_units(why);
        }
        self.check_drain_deadline();
        self.dirty = true;
    }

    /// Sends every unit `Drain` (loops stop requesting; running jobs finish).
    fn drain_units(&mut self, why: &str) {
        let docker_up = self.docker_up;
        let mut changes = Vec::new();
        for (name, e) in self.units.iter_mut() {
            let before = e.unit.state;
            e.unit
                .handle(Event::Drain, now(&self.deps.clock), docker_up);
            e.log(why);
            changes.push((name.clone(), before, e.unit.state));
        }
        for (name, before, after) in changes {
            self.transition(&name, before, after);
        }
        self.sync_engine();
    }

    /// Writes (`Some`) or removes (`None`) `drain.json`; a failure is logged: the drain
    /// still holds in memory, and the controller sends it again on the next session.
    fn persist_drain(&self, drain: Option<Drain>) {
        let r = match drain {
            Some(d) => self.drain_file.save(&d),
            None => self.drain_file.clear(),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "persist the drain state");
        }
    }
}
