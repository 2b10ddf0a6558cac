//! What the supervisor tells the world: messages for the controller, the report
//! (heartbeats, `status.json`) and the runner metrics.

use std::time::SystemTime;

use time::OffsetDateTime;

use super::Supervisor;
use crate::fleet::desired::rfc3339;
use crate::fleet::messages::{JobState, RunnerEventKind, ToController};
use crate::fleet::report::{self, Report, UnitReport};
use crate::metrics::{RunnerInfo, RunnerLabels};
use crate::runner::short_token;

impl Supervisor {
    /// Runner labels (short token, name, system id), limits, token expiry and `concurrent`
    /// for the metrics.
    pub(super) fn refresh_metrics(&self) {
        let Some(m) = &self.metrics else {
            return;
        };
        let infos: Vec<RunnerInfo> = self
            .units
            .iter()
            .map(|(name, e)| RunnerInfo {
                labels: RunnerLabels {
                    runner: short_token(&e.assignment.token).into(),
                    runner_name: name.as_str().into(),
                    system_id: self.deps.system_id.as_str().into(),
                },
                limit: Some(e.assignment.limit()),
                token_expires_at: e
                    .assignment
                    .raw
                    .token_expires_at
                    .as_deref()
                    .and_then(|s| {
                        OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                    .map(SystemTime::from),
            })
            .collect();
        m.set_runners(&infos);
        m.set_concurrent(self.concurrent());
    }

    /// Tells the controller a job started or ended (its "recent jobs" and the fleet's
    /// jobs): the start time is now less the duration of a finished job.
    pub(super) fn job_event(&self, r: JobReport<'_>) {
        let at = OffsetDateTime::now_utc();
        let started_at = match r.duration {
            Some(d) => at.checked_sub(time::Duration::try_from(d).unwrap_or(time::Duration::ZERO)),
            None => Some(at),
        };
        self.send(ToController::Job {
            runner: r.runner.to_string(),
            job_id: r.job_id,
            state: r.state,
            failure_reason: r.failure_reason.to_string(),
            at,
            queue_wait: r.queue_wait,
            started_at,
            duration: r.duration,
        });
    }

    pub(super) fn event(&self, runner: &str, kind: RunnerEventKind, message: &str) {
        self.send(ToController::Event {
            runner: runner.to_string(),
            kind,
            message: message.to_string(),
            at: OffsetDateTime::now_utc(),
        });
    }

    pub(super) fn send(&self, msg: ToController) {
        if let Err(e) = self.deps.outbound.try_send(msg) {
            tracing::warn!(error = %e, "message for the controller dropped (queue full)");
        }
    }

    /// The current report.
    pub fn report(&self) -> Report {
        let now_t = self.deps.clock.now();
        let units = self
            .units
            .iter()
            .map(|(name, e)| {
                let snap = e.stats.as_ref().map(|s| s.snapshot());
                UnitReport {
                    name: name.clone(),
                    state: e.unit.state.as_str().to_string(),
                    since: rfc3339(OffsetDateTime::from(e.unit.since)),
                    last_error: e.unit.last_error.clone(),
                    gitlab_runner_id: e.assignment.raw.gitlab_runner_id,
                    token_expires_at: e.assignment.raw.token_expires_at.clone(),
                    token_rotate_at: e.assignment.rotate_at(now_t).map(rfc3339),
                    token_rotation_error: e.rotation_error.clone(),
                    jobs_running: snap.as_ref().map_or(0, |s| s.jobs_running),
                    jobs_succeeded: e.base.0 + snap.as_ref().map_or(0, |s| s.jobs_succeeded),
                    jobs_failed: e.base.1 + snap.as_ref().map_or(0, |s| s.jobs_failed),
                    jobs_canceled: e.base.2 + snap.as_ref().map_or(0, |s| s.jobs_canceled),
                    last_gitlab_contact: snap
                        .as_ref()
                        .and_then(|s| s.last_contact)
                        .map(|t| rfc3339(OffsetDateTime::from(t))),
                    log: e.log.iter().cloned().collect(),
                }
            })
            .collect();
        Report {
            agent_id: self.deps.agent_id.clone(),
            pid: std::process::id(),
            written_at: rfc3339(OffsetDateTime::now_utc()),
            applied_generation: self.generation,
            last_refusal: self.last_refusal.clone(),
            docker_reachable: self.docker_up,
            docker_version: self
                .docker
                .as_ref()
                .filter(|_| self.docker_up)
                .map(|d| d.version.clone()),
            docker_root_dir: self
                .docker
                .as_ref()
                .map(|d| d.root_dir.display().to_string()),
            draining: self.draining || self.stopping,
            units,
        }
    }

    /// Publishes the report to heartbeats and `status.json` when something changed.
    pub fn publish(&mut self) {
        let report = self.report();
        self.deps.report.send_replace(report.clone());
        if !self.dirty {
            return;
        }
        self.dirty = false;
        if let Some(p) = &self.deps.status_path
            && let Err(e) = report::write(p, &report)
        {
            tracing::warn!(error = %format!("{e:#}"), path = %p.display(), "write status file");
        }
    }
}

/// A job's start or end, as the controller is told of it.
pub(super) struct JobReport<'a> {
    pub runner: &'a str,
    pub job_id: i64,
    pub state: JobState,
    /// GitLab's failure reason, empty unless failed.
    pub failure_reason: &'a str,
    pub queue_wait: Option<std::time::Duration>,
    /// How long it ran; `None` while running.
    pub duration: Option<std::time::Duration>,
}
