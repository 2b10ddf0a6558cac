//! Unit transitions: timers and the watchdog, runner events, loop ends, `token-invalid` and
//! drain, each logged and (when the controller cares) reported.

use std::time::Duration;

use super::outbound::JobReport;
use super::{Supervisor, now};
use crate::fleet::messages::{JobState, RunnerEventKind};
use crate::runner::{RunnerError, RunnerEvent, RunnerState};
use crate::units::{Action, Event, Now, UnitState};
use drover_job::executor::JobOutcome;

impl Supervisor {
    pub(super) async fn tick(&mut self) {
        self.check_drain_deadline();
        let t = now(&self.deps.clock);
        let docker_up = self.docker_up;
        let mut changes = Vec::new();
        let watchdog = self.deps.timings.policy.watchdog;
        for (name, e) in self.units.iter_mut() {
            let before = e.unit.state;
            // The watchdog: a live loop (answered or not yet) with a free slot must show
            // activity.
            if before.wants_loop()
                && let Some(s) = &e.stats
            {
                let snap = s.snapshot();
                // Silence is timed from when the supervisor saw the count last move.
                let silent = match e.beat_seen {
                    Some((n, at)) if n == snap.beats => t.mono.saturating_sub(at),
                    _ => {
                        e.beat_seen = Some((snap.beats, t.mono));
                        Duration::ZERO
                    }
                };
                if matches!(snap.state, RunnerState::Running | RunnerState::Starting)
                    && snap.jobs_running < e.assignment.limit()
                    && snap.beats > 0
                    && silent > watchdog
                {
                    let msg = format!(
                        "watchdog: no job-request activity for over {}s; restarting",
                        watchdog.as_secs()
                    );
                    tracing::warn!(runner = %name, "{msg}");
                    e.log(&msg);
                    if e.unit.handle(Event::Stalled(msg), t, docker_up) == Action::StopLoop {
                        e.stop_loop = true;
                    }
                }
            }
            e.unit.handle(Event::Tick, t, docker_up);
            changes.push((name.clone(), before, e.unit.state));
        }
        for (name, before, after) in changes {
            self.transition(&name, before, after);
        }
        self.repeat_token_invalid(t);
        self.sync_engine();
        self.rotate_due().await;
    }

    /// Repeats `token-invalid` for units still waiting for a new token.
    fn repeat_token_invalid(&mut self, t: Now) {
        let every = self.deps.timings.token_invalid_repeat;
        let due: Vec<(String, String)> = self
            .units
            .iter_mut()
            .filter(|(_, e)| e.unit.state == UnitState::Degraded)
            .filter_map(|(name, e)| {
                let (at, why) = e.token_invalid_at.as_mut()?;
                if t.mono.saturating_sub(*at) >= every {
                    *at = t.mono;
                    Some((name.clone(), why.clone()))
                } else {
                    None
                }
            })
            .collect();
        for (name, why) in due {
            tracing::warn!(runner = %name, "still waiting for a new runner token; reporting token-invalid again");
            self.event(&name, RunnerEventKind::TokenInvalid, &why);
        }
    }

    /// GitLab refused a runner's token: the unit degrades and waits for a new token.
    pub(super) fn token_invalid(&mut self, name: &str, why: String) {
        let docker_up = self.docker_up;
        let Some(e) = self.units.get_mut(name) else {
            return;
        };
        if e.unit.state == UnitState::Degraded {
            return;
        }
        let before = e.unit.state;
        e.unit.handle(
            Event::TokenInvalid(why.clone()),
            now(&self.deps.clock),
            docker_up,
        );
        e.log(format!("token invalid: {why}"));
        e.token_invalid_at = Some((now(&self.deps.clock).mono, why.clone()));
        let after = e.unit.state;
        tracing::error!(runner = %name, error = %why, "gitlab refused the runner token; waiting for a new one from the controller");
        self.event(name, RunnerEventKind::TokenInvalid, &why);
        self.transition_quiet(name, before, after);
        self.sync_engine();
        self.dirty = true;
    }

    pub(super) fn runner_event(&mut self, ev: RunnerEvent) {
        if let Some(m) = &self.metrics {
            m.observe_event(&ev);
        }
        let docker_up = self.docker_up;
        match ev {
            RunnerEvent::Connected { runner } => {
                if let Some(e) = self.units.get_mut(&runner) {
                    let before = e.unit.state;
                    e.unit
                        .handle(Event::Connected, now(&self.deps.clock), docker_up);
                    let after = e.unit.state;
                    self.transition(&runner, before, after);
                }
            }
            RunnerEvent::NeedsRegistration { runner, endpoint } => {
                self.token_invalid(&runner, format!("gitlab answered 403 on {endpoint}"));
            }
            RunnerEvent::JobStarted {
                runner,
                job_id,
                queue_wait,
            } => {
                if let Some(e) = self.units.get_mut(&runner) {
                    e.log(format!("job {job_id} started"));
                }
                self.job_event(JobReport {
                    runner: &runner,
                    job_id,
                    state: JobState::Running,
                    failure_reason: "",
                    queue_wait,
                    duration: None,
                });
            }
            RunnerEvent::JobFinished {
                runner,
                job_id,
                outcome,
                duration,
                queue_wait,
            } => {
                if let Some(e) = self.units.get_mut(&runner) {
                    e.log(format!("job {job_id} finished: {outcome:?}"));
                }
                let (state, failure_reason) = match &outcome {
                    JobOutcome::Success => (JobState::Success, ""),
                    JobOutcome::Failed { reason, .. } => (JobState::Failed, reason.as_str()),
                    JobOutcome::Canceled => (JobState::Canceled, ""),
                };
                self.job_event(JobReport {
                    runner: &runner,
                    job_id,
                    state,
                    failure_reason,
                    queue_wait,
                    duration: Some(duration),
                });
            }
            RunnerEvent::Stopped { .. } => {}
        }
        self.dirty = true;
    }

    pub(super) fn loop_ended(&mut self, runner: String, result: Result<(), RunnerError>) {
        // A replaced loop (new settings, same unit) ends while its successor runs.
        let successor = self
            .engine
            .as_ref()
            .is_some_and(|e| e.stats().iter().any(|(n, _)| *n == runner));
        if successor || !self.units.contains_key(&runner) {
            return;
        }
        // The loop's 403 may arrive before its NeedsRegistration event: same path.
        if let Err(e @ RunnerError::Forbidden { .. }) = &result {
            self.token_invalid(&runner, e.to_string());
        }
        let err = result.err().map(|e| e.to_string());
        let docker_up = self.docker_up;
        let Some(e) = self.units.get_mut(&runner) else {
            return;
        };
        if let Some(s) = e.stats.take() {
            let o = s.snapshot();
            e.base.0 += o.jobs_succeeded;
            e.base.1 += o.jobs_failed;
            e.base.2 += o.jobs_canceled;
        }
        let before = e.unit.state;
        e.stop_loop = false;
        if let Some(er) = &err {
            e.log(format!("loop ended: {er}"));
        }
        e.unit
            .handle(Event::LoopEnded(err), now(&self.deps.clock), docker_up);
        let after = e.unit.state;
        self.transition(&runner, before, after);
        self.sync_engine();
    }

    /// Logs a state change and tells the controller.
    pub(super) fn transition(&mut self, name: &str, before: UnitState, after: UnitState) {
        if before == after {
            return;
        }
        let kind = match after {
            UnitState::Running => Some(RunnerEventKind::Started),
            UnitState::Backoff => Some(RunnerEventKind::Backoff),
            UnitState::WaitingForDocker => Some(RunnerEventKind::WaitingForDocker),
            UnitState::Stopped => Some(RunnerEventKind::Stopped),
            UnitState::Draining => Some(RunnerEventKind::Draining),
            UnitState::Starting | UnitState::Degraded => None,
        };
        let message = self
            .units
            .get(name)
            .and_then(|e| match after {
                UnitState::Backoff | UnitState::Stopped | UnitState::WaitingForDocker => {
                    e.unit.last_error.clone()
                }
                _ => None,
            })
            .unwrap_or_default();
        if let Some(kind) = kind {
            self.event(name, kind, &message);
        }
        self.transition_quiet(name, before, after);
    }

    fn transition_quiet(&mut self, name: &str, before: UnitState, after: UnitState) {
        if before == after {
            return;
        }
        tracing::info!(runner = %name, from = %before, to = %after, "unit state");
        if let Some(e) = self.units.get_mut(name) {
            e.log(format!("{before} -> {after}"));
        }
        self.dirty = true;
    }
}
