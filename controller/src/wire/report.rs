//! What agents send (heartbeats, acks, runner events, rotated tokens) and the desired state
//! pushed to them.

use drover_proto::v1;
use secrecy::{ExposeSecret, SecretString};

use super::enums::{job_state_in, runner_event_kind_in, unit_state_in, unit_state_out};
use super::{WireError, ips, time_in, time_out};
use crate::fleet::messages::{
    Ack, DesiredState, JobEvent, RunnerAssignment, RunnerEvent, TokenRotated, job_seconds,
};
use crate::health::report::{BudgetUse, DiskBudgets, Heartbeat, HostHealth, RunnerStatus};

impl TryFrom<v1::Heartbeat> for Heartbeat {
    type Error = WireError;

    fn try_from(hb: v1::Heartbeat) -> Result<Heartbeat, WireError> {
        let runners = hb
            .runners
            .into_iter()
            .enumerate()
            .map(|(i, r)| RunnerStatus::try_from(r).map_err(|e| e.within(&format!("runners[{i}]"))))
            .collect::<Result<_, _>>()?;
        Ok(Heartbeat {
            sent_at: time_in("sent_at", hb.sent_at.as_ref())?,
            applied_generation: hb.applied_generation,
            host: hb.host.map(HostHealth::from),
            runners,
            ips: ips(&hb.ips),
            agent_version: hb.agent_version,
            draining: hb.draining,
        })
    }
}

impl From<v1::HostHealth> for HostHealth {
    fn from(h: v1::HostHealth) -> HostHealth {
        HostHealth {
            docker_reachable: h.docker_reachable,
            docker_version: h.docker_version,
            disk_free_bytes: h.disk_free_bytes,
            disk_total_bytes: h.disk_total_bytes,
            memory_available_bytes: h.memory_available_bytes,
            memory_total_bytes: h.memory_total_bytes,
            load1: h.load1,
            builds_disk_free_bytes: h.builds_disk_free_bytes,
            builds_disk_total_bytes: h.builds_disk_total_bytes,
            clock_skew_seconds: h.clock_skew_seconds,
            disk_budgets: h.disk_budgets.as_ref().map(disk_budgets_in),
        }
    }
}

fn use_in(u: Option<&v1::DiskBudgetUse>) -> BudgetUse {
    u.map(|u| BudgetUse {
        used_bytes: u.used_bytes,
        max_bytes: u.max_bytes,
        count: u.count,
    })
    .unwrap_or_default()
}

fn use_out(u: &BudgetUse) -> v1::DiskBudgetUse {
    v1::DiskBudgetUse {
        used_bytes: u.used_bytes,
        max_bytes: u.max_bytes,
        count: u.count,
    }
}

/// An agent's disk budgets; an absent or out-of-range time reads as unknown (0): display
/// only, nothing is decided on it.
pub fn disk_budgets_in(p: &v1::DiskBudgets) -> DiskBudgets {
    DiskBudgets {
        volumes: use_in(p.volumes.as_ref()),
        images: use_in(p.images.as_ref()),
        cache: use_in(p.cache.as_ref()),
        collected_at: p.collected_at.as_ref().map_or(0, |t| t.seconds.max(0)),
        last_freed_bytes: p.last_freed_bytes,
        last_removed: p.last_removed,
        agents: p.agents,
    }
}

/// Disk budgets on the wire.
pub fn disk_budgets_out(b: &DiskBudgets) -> v1::DiskBudgets {
    v1::DiskBudgets {
        volumes: Some(use_out(&b.volumes)),
        images: Some(use_out(&b.images)),
        cache: Some(use_out(&b.cache)),
        collected_at: (b.collected_at > 0).then_some(prost_types::Timestamp {
            seconds: b.collected_at,
            nanos: 0,
        }),
        last_freed_bytes: b.last_freed_bytes,
        last_removed: b.last_removed,
        agents: b.agents,
    }
}

impl From<HostHealth> for v1::HostHealth {
    fn from(h: HostHealth) -> v1::HostHealth {
        v1::HostHealth {
            docker_reachable: h.docker_reachable,
            docker_version: h.docker_version,
            disk_free_bytes: h.disk_free_bytes,
            disk_total_bytes: h.disk_total_bytes,
            memory_available_bytes: h.memory_available_bytes,
            memory_total_bytes: h.memory_total_bytes,
            load1: h.load1,
            builds_disk_free_bytes: h.builds_disk_free_bytes,
            builds_disk_total_bytes: h.builds_disk_total_bytes,
            clock_skew_seconds: h.clock_skew_seconds,
            disk_budgets: h.disk_budgets.as_ref().map(disk_budgets_out),
        }
    }
}

impl TryFrom<v1::RunnerStatus> for RunnerStatus {
    type Error = WireError;

    fn try_from(r: v1::RunnerStatus) -> Result<RunnerStatus, WireError> {
        Ok(RunnerStatus {
            state: unit_state_in(r.unit_state, &r.state),
            token_expires_at: time_in("token_expires_at", r.token_expires_at.as_ref())?,
            last_gitlab_contact: time_in("last_gitlab_contact", r.last_gitlab_contact.as_ref())?,
            token_rotate_at: time_in("token_rotate_at", r.token_rotate_at.as_ref())?,
            name: r.name,
            last_error: r.last_error,
            gitlab_runner_id: r.gitlab_runner_id,
            jobs_running: r.jobs_running,
            jobs_succeeded: r.jobs_succeeded,
            jobs_failed: r.jobs_failed,
            token_rotation_error: r.token_rotation_error,
        })
    }
}

impl From<RunnerStatus> for v1::RunnerStatus {
    fn from(r: RunnerStatus) -> v1::RunnerStatus {
        let (unit_state, state) = unit_state_out(r.state.as_ref());
        v1::RunnerStatus {
            state,
            unit_state,
            name: r.name,
            last_error: r.last_error,
            gitlab_runner_id: r.gitlab_runner_id,
            token_expires_at: r.token_expires_at.map(time_out),
            jobs_running: r.jobs_running,
            jobs_succeeded: r.jobs_succeeded,
            jobs_failed: r.jobs_failed,
            last_gitlab_contact: r.last_gitlab_contact.map(time_out),
            token_rotate_at: r.token_rotate_at.map(time_out),
            token_rotation_error: r.token_rotation_error,
        }
    }
}

impl From<v1::Ack> for Ack {
    fn from(a: v1::Ack) -> Ack {
        Ack {
            generation: a.generation,
            refused: (!a.applied).then_some(a.error),
        }
    }
}

impl TryFrom<v1::TokenRotated> for TokenRotated {
    type Error = WireError;

    fn try_from(t: v1::TokenRotated) -> Result<TokenRotated, WireError> {
        Ok(TokenRotated {
            token_expires_at: time_in("token_expires_at", t.token_expires_at.as_ref())?,
            runner: t.runner,
            token: SecretString::from(t.token),
            gitlab_runner_id: t.gitlab_runner_id,
        })
    }
}

impl TryFrom<v1::RunnerEvent> for RunnerEvent {
    type Error = WireError;

    fn try_from(ev: v1::RunnerEvent) -> Result<RunnerEvent, WireError> {
        Ok(RunnerEvent {
            at: time_in("at", ev.at.as_ref())?,
            kind: runner_event_kind_in(ev.event_kind, &ev.kind),
            runner: ev.runner,
            message: ev.message,
        })
    }
}

/// Nothing is refused: a time absent or out of range reads as `None`, as before the edge.
impl From<v1::JobEvent> for JobEvent {
    fn from(j: v1::JobEvent) -> JobEvent {
        JobEvent {
            state: job_state_in(j.job_state, &j.state),
            at: time_in("at", j.at.as_ref()).unwrap_or(None),
            runner: j.runner,
            job_id: j.job_id,
            failure_reason: j.failure_reason,
            queue_wait: job_seconds(j.queue_wait_seconds),
            started_at: time_in("started_at", j.started_at.as_ref()).unwrap_or(None),
            duration: job_seconds(j.duration_seconds),
        }
    }
}

impl From<DesiredState> for v1::DesiredState {
    fn from(d: DesiredState) -> v1::DesiredState {
        v1::DesiredState {
            generation: d.generation,
            runners: d
                .runners
                .into_iter()
                .map(v1::RunnerAssignment::from)
                .collect(),
        }
    }
}

impl From<RunnerAssignment> for v1::RunnerAssignment {
    fn from(r: RunnerAssignment) -> v1::RunnerAssignment {
        let [
            cache_s3_access_key,
            cache_s3_secret_key,
            cache_s3_session_token,
        ] = r.cache_secrets.exposed();
        v1::RunnerAssignment {
            cache_s3_access_key,
            cache_s3_secret_key,
            cache_s3_session_token,
            runner_token: r.runner_token.expose_secret().to_string(),
            name: r.name,
            spec_json: r.spec_json,
            gitlab_runner_id: r.gitlab_runner_id,
            token_expires_at: r.token_expires_at.map(time_out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::messages::{JobState, RunnerEventKind};
    use crate::health::report::UnitState;

    #[test]
    fn a_heartbeat_says_whether_the_agent_is_draining() {
        let hb = |draining| v1::Heartbeat {
            draining,
            ..Default::default()
        };
        assert!(Heartbeat::try_from(hb(true)).unwrap().draining);
        assert!(!Heartbeat::try_from(hb(false)).unwrap().draining);
    }

    #[test]
    fn a_time_out_of_range_is_refused_naming_the_field_and_value() {
        let hb = v1::Heartbeat {
            runners: vec![
                v1::RunnerStatus::default(),
                v1::RunnerStatus {
                    token_expires_at: Some(prost_types::Timestamp {
                        seconds: i64::MAX,
                        nanos: 0,
                    }),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let e = Heartbeat::try_from(hb).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "runners[1].token_expires_at: {}s 0ns is not a valid time",
                i64::MAX
            )
        );
        let bad_nanos = v1::RunnerEvent {
            at: Some(prost_types::Timestamp {
                seconds: 0,
                nanos: -1,
            }),
            ..Default::default()
        };
        assert_eq!(
            RunnerEvent::try_from(bad_nanos).unwrap_err().to_string(),
            "at: 0s -1ns is not a valid time"
        );
    }

    #[test]
    fn unknown_unit_states_and_event_kinds_are_kept_for_display() {
        let r = RunnerStatus::try_from(v1::RunnerStatus {
            state: "hibernating".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(r.state, Some(UnitState::Unknown("hibernating".into())));
        let back = v1::RunnerStatus::from(r);
        assert_eq!((back.unit_state, back.state.as_str()), (0, "hibernating"));
        let unreported = RunnerStatus::try_from(v1::RunnerStatus::default()).unwrap();
        assert_eq!(unreported.state, None);
        // A newer agent: a number this build does not know, with its name beside it.
        let newer = RunnerStatus::try_from(v1::RunnerStatus {
            unit_state: 99,
            state: "hibernating".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(newer.state, Some(UnitState::Unknown("hibernating".into())));
        let ev = RunnerEvent::try_from(v1::RunnerEvent {
            event_kind: 99,
            kind: "new kind!\n".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(ev.kind, RunnerEventKind::Other("newkind".into()));
        let job = JobEvent::from(v1::JobEvent {
            job_state: 99,
            state: "paused".into(),
            ..Default::default()
        });
        assert_eq!(job.state, JobState::Other("paused".into()));
    }

    #[test]
    fn job_durations_from_an_agent_are_bounded() {
        let j = JobEvent::from(v1::JobEvent {
            job_id: 3,
            state: "success".into(),
            queue_wait_seconds: Some(1.5),
            duration_seconds: Some(60.0),
            ..Default::default()
        });
        assert_eq!(j.queue_wait, Some(std::time::Duration::from_millis(1500)));
        assert_eq!(j.duration, Some(std::time::Duration::from_secs(60)));
        for bad in [-1.0, f64::NAN, f64::INFINITY, 1e300, 32.0 * 86_400.0] {
            let j = JobEvent::from(v1::JobEvent {
                queue_wait_seconds: Some(bad),
                duration_seconds: Some(bad),
                ..Default::default()
            });
            assert_eq!((j.queue_wait, j.duration), (None, None), "{bad}");
        }
    }

    #[test]
    fn an_older_agents_message_reads_as_a_current_ones() {
        for s in UnitState::KNOWN {
            let current = v1::RunnerStatus::from(RunnerStatus {
                state: Some(s.clone()),
                ..Default::default()
            });
            assert_ne!(current.unit_state, 0);
            let older = v1::RunnerStatus {
                unit_state: 0,
                ..current.clone()
            };
            let read = RunnerStatus::try_from(current).unwrap();
            assert_eq!(read.state, Some(s));
            assert_eq!(RunnerStatus::try_from(older).unwrap(), read);
        }
        let older = RunnerEvent::try_from(v1::RunnerEvent {
            kind: "token-invalid".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(older.kind, RunnerEventKind::TokenInvalid);
        let current = RunnerEvent::try_from(v1::RunnerEvent {
            event_kind: v1::RunnerEventKind::TokenInvalid.into(),
            kind: "token-invalid".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(current, older);
        let older = JobEvent::from(v1::JobEvent {
            state: "failed".into(),
            failure_reason: "script_failure".into(),
            ..Default::default()
        });
        assert_eq!(older.state, JobState::Failed);
        assert_eq!(older.failure_reason, "script_failure");
    }
}
