//! What agents send (heartbeats, acks, runner events, rotated tokens) and the desired state
//! pushed to them.

use drover_proto::v1;
use secrecy::{ExposeSecret, SecretString};

use super::enums::{job_state_in, runner_event_kind_in, unit_state_in, unit_state_out};
use super::{WireError, ips, time_in, time_out};
use crate::fleet::messages::{
    Ack, DesiredState, JobEvent, RunnerAssignment, RunnerEvent, TokenRotated,
};
use crate::health::report::{Heartbeat, HostHealth, RunnerStatus};

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
        }
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
        v1::RunnerAssignment {
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
