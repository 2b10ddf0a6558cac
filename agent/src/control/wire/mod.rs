//! The agent's edge: every conversion between the wire (`drover_proto::v1`) and the agent's
//! domain types happens here. Besides this module only the session (`control/mod.rs`) and
//! enrollment (`cli/enroll.rs`) name wire types, to send and receive them; a test
//! (`tests/tests/wire_boundary.rs`) keeps `v1::` out of every other module.
//!
//! - [`host`]: the host health snapshot of heartbeats.
//! - here: facts (Hello), runner units (heartbeats), pushed desired states and commands in,
//!   acks, events and rotated tokens out.
//!
//! Inward conversions refuse what no conforming controller sends with a [`WireError`]
//! naming the field and value; outward ones are `From`.

pub mod host;

use drover_proto::names::Named;
use drover_proto::v1;
use drover_proto::v1::agent_message::Kind as AgentKind;
use secrecy::ExposeSecret;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::fleet::desired::{Raw, rfc3339};
use crate::fleet::messages::{
    Command, DesiredState, DrainDeadline, JobState, RunnerEventKind, ToController,
};
use crate::fleet::report::UnitReport;
use crate::host_facts::HostFacts;

/// A message from the controller that no conforming controller sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct WireError {
    /// The field, as a path (`command.kind`).
    pub field: String,
    /// What is wrong with its value.
    pub problem: String,
}

/// A domain time on the wire (whole seconds, as the agent always sent).
fn time_out(t: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    }
}

/// Protobuf timestamp of an RFC 3339 string (`None` when absent or unparsable).
fn rfc3339_out(v: Option<&str>) -> Option<prost_types::Timestamp> {
    let t = OffsetDateTime::parse(v?, &Rfc3339).ok()?;
    Some(time_out(t))
}

/// Longest upgrade detail sent.
const MAX_UPGRADE_DETAIL: usize = 1024;

impl From<&crate::upgrade::Progress> for v1::UpgradeReport {
    fn from(p: &crate::upgrade::Progress) -> v1::UpgradeReport {
        use crate::upgrade::Step;
        let step = match p.step {
            Step::Downloading => v1::UpgradeStep::Downloading,
            Step::Draining => v1::UpgradeStep::Draining,
            Step::Switching => v1::UpgradeStep::Switching,
            Step::Healthy => v1::UpgradeStep::Healthy,
            Step::RolledBack => v1::UpgradeStep::RolledBack,
            Step::Refused => v1::UpgradeStep::Refused,
        };
        let mut detail = p.detail.clone();
        let mut end = detail.len().min(MAX_UPGRADE_DETAIL);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        detail.truncate(end);
        v1::UpgradeReport {
            upgrade_id: p.upgrade_id,
            step: step.into(),
            detail,
        }
    }
}

impl TryFrom<&v1::Upgrade> for crate::upgrade::Order {
    type Error = WireError;

    fn try_from(u: &v1::Upgrade) -> Result<crate::upgrade::Order, WireError> {
        let bad = |field: &str, problem: String| WireError {
            field: format!("upgrade.{field}"),
            problem,
        };
        if u.sha256.len() != 64 || !u.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad(
                "sha256",
                format!("{:?} is not 64 hex characters", u.sha256),
            ));
        }
        if u.size == 0 || u.size > MAX_UPGRADE_BYTES {
            return Err(bad(
                "size",
                format!("{} is not 1 to {MAX_UPGRADE_BYTES} bytes", u.size),
            ));
        }
        if u.signature.len() != 64 {
            return Err(bad(
                "signature",
                format!("{} bytes; expected 64", u.signature.len()),
            ));
        }
        drover_runtime::version_rule::check(&u.version).map_err(|e| bad("version", e))?;
        Ok(crate::upgrade::Order {
            upgrade_id: u.upgrade_id,
            sha256: u.sha256.to_ascii_lowercase(),
            size: u.size,
            signature: u.signature.clone(),
            version: u.version.clone(),
            health_timeout_seconds: u.health_timeout_seconds,
        })
    }
}

/// Largest binary an upgrade may announce (the controller's cap).
const MAX_UPGRADE_BYTES: u64 = 256 * 1024 * 1024;

impl From<&HostFacts> for v1::AgentFacts {
    fn from(f: &HostFacts) -> v1::AgentFacts {
        v1::AgentFacts {
            hostname: f.hostname.clone(),
            arch: f.arch.clone(),
            os: f.os.clone(),
            kernel: f.kernel.clone(),
            agent_version: drover_runtime::version().to_string(),
            ips: f.ips.clone(),
            docker_version: String::new(),
            system_id: f.system_id.clone(),
        }
    }
}

/// A runner event kind on the wire.
fn runner_event_kind(k: RunnerEventKind) -> v1::RunnerEventKind {
    match k {
        RunnerEventKind::Started => v1::RunnerEventKind::Started,
        RunnerEventKind::Stopped => v1::RunnerEventKind::Stopped,
        RunnerEventKind::Backoff => v1::RunnerEventKind::Backoff,
        RunnerEventKind::WaitingForDocker => v1::RunnerEventKind::WaitingForDocker,
        RunnerEventKind::Draining => v1::RunnerEventKind::Draining,
        RunnerEventKind::TokenInvalid => v1::RunnerEventKind::TokenInvalid,
        RunnerEventKind::VerifyFailed => v1::RunnerEventKind::VerifyFailed,
        RunnerEventKind::IpsChanged => v1::RunnerEventKind::IpsChanged,
    }
}

/// A job state on the wire.
fn job_state(s: JobState) -> v1::JobState {
    match s {
        JobState::Running => v1::JobState::Running,
        JobState::Success => v1::JobState::Success,
        JobState::Failed => v1::JobState::Failed,
        JobState::Canceled => v1::JobState::Canceled,
    }
}

/// A unit is reported by its state's name ([`crate::units::UnitState::as_str`], the wire's
/// names), sent in both fields: the enum for current controllers, the name for older ones.
impl From<&UnitReport> for v1::RunnerStatus {
    fn from(u: &UnitReport) -> v1::RunnerStatus {
        v1::RunnerStatus {
            name: u.name.clone(),
            unit_state: v1::UnitState::from_name(&u.state).map_or(0, Into::into),
            state: u.state.clone(),
            last_error: u.last_error.clone().unwrap_or_default(),
            gitlab_runner_id: u.gitlab_runner_id,
            token_expires_at: rfc3339_out(u.token_expires_at.as_deref()),
            jobs_running: u.jobs_running,
            jobs_succeeded: u.jobs_succeeded,
            jobs_failed: u.jobs_failed + u.jobs_canceled,
            last_gitlab_contact: rfc3339_out(u.last_gitlab_contact.as_deref()),
            token_rotate_at: rfc3339_out(u.token_rotate_at.as_deref()),
            token_rotation_error: u.token_rotation_error.clone().unwrap_or_default(),
        }
    }
}

/// A pushed generation as the supervisor reads it. Nothing is refused here: the supervisor
/// validates every runner and acks a refusal ([`crate::fleet::desired::validate_all`]); an
/// expiry that is absent, not positive or out of range reads as "never expires", as before.
impl From<v1::DesiredState> for DesiredState {
    fn from(ds: v1::DesiredState) -> DesiredState {
        DesiredState {
            generation: ds.generation,
            runners: ds.runners.into_iter().map(Raw::from).collect(),
        }
    }
}

impl From<v1::RunnerAssignment> for Raw {
    fn from(a: v1::RunnerAssignment) -> Raw {
        Raw {
            token_expires_at: a
                .token_expires_at
                .as_ref()
                .filter(|t| t.seconds > 0)
                .and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
                .map(rfc3339),
            name: a.name,
            spec_json: a.spec_json,
            runner_token: a.runner_token,
            gitlab_runner_id: a.gitlab_runner_id,
            token_obtained_at: None,
            cache_s3_access_key: a.cache_s3_access_key,
            cache_s3_secret_key: a.cache_s3_secret_key,
            cache_s3_session_token: a.cache_s3_session_token,
        }
    }
}

impl TryFrom<v1::Command> for Command {
    type Error = WireError;

    fn try_from(c: v1::Command) -> Result<Command, WireError> {
        match c.kind {
            Some(v1::command::Kind::Drain(d)) => Ok(Command::Drain {
                deadline: drain_deadline(&d)?,
            }),
            Some(v1::command::Kind::Undrain(_)) => Ok(Command::Undrain),
            // The control stream takes upgrades itself (`control::session`), never here.
            Some(v1::command::Kind::Upgrade(_)) => Err(WireError {
                field: "command.upgrade".into(),
                problem: "an upgrade is not a supervisor command".into(),
            }),
            Some(v1::command::Kind::FetchImage(_)) => Err(WireError {
                field: "command.kind".into(),
                problem: "fetch_image goes to the image fetcher, not the supervisor".into(),
            }),
            None => Err(WireError {
                field: "command.kind".into(),
                problem: "empty (a command this agent does not know?)".into(),
            }),
        }
    }
}

/// The longest drain deadline taken (36500 days, the controller's `MAX_DURATION`): no sum
/// with "now" leaves the range of a date.
const MAX_DRAIN_DEADLINE_SECS: u64 = 36_500 * 86_400;

/// A drain's deadline: `deadline_at` when set, else `deadline_seconds` (0 = none).
fn drain_deadline(d: &v1::Drain) -> Result<Option<DrainDeadline>, WireError> {
    if let Some(t) = &d.deadline_at {
        let at = OffsetDateTime::from_unix_timestamp(t.seconds).map_err(|_| WireError {
            field: "drain.deadline_at".into(),
            problem: format!("{} seconds is out of range", t.seconds),
        })?;
        return Ok(Some(DrainDeadline::At(at)));
    }
    match d.deadline_seconds {
        0 => Ok(None),
        s if s > MAX_DRAIN_DEADLINE_SECS => Err(WireError {
            field: "drain.deadline_seconds".into(),
            problem: format!("{s} is above {MAX_DRAIN_DEADLINE_SECS}"),
        }),
        s => Ok(Some(DrainDeadline::After(std::time::Duration::from_secs(
            s,
        )))),
    }
}

impl From<ToController> for v1::AgentMessage {
    fn from(m: ToController) -> v1::AgentMessage {
        let kind = match m {
            ToController::Ack {
                generation,
                refused,
            } => AgentKind::Ack(v1::Ack {
                generation,
                applied: refused.is_none(),
                error: refused.unwrap_or_default(),
            }),
            ToController::Event {
                runner,
                kind,
                message,
                at,
            } => {
                let kind = runner_event_kind(kind);
                AgentKind::RunnerEvent(v1::RunnerEvent {
                    runner,
                    kind: kind.name().into(),
                    event_kind: kind.into(),
                    message,
                    at: Some(time_out(at)),
                })
            }
            ToController::Job {
                runner,
                job_id,
                state,
                failure_reason,
                at,
                queue_wait,
                started_at,
                duration,
            } => {
                let state = job_state(state);
                AgentKind::JobEvent(v1::JobEvent {
                    runner,
                    job_id,
                    state: state.name().into(),
                    job_state: state.into(),
                    failure_reason,
                    at: Some(time_out(at)),
                    queue_wait_seconds: queue_wait.map(|d| d.as_secs_f64()),
                    started_at: started_at.map(time_out),
                    duration_seconds: duration.map(|d| d.as_secs_f64()),
                })
            }
            ToController::TokenRotated {
                runner,
                token,
                token_expires_at,
                gitlab_runner_id,
            } => AgentKind::TokenRotated(v1::TokenRotated {
                runner,
                token: token.expose_secret().to_string(),
                token_expires_at: rfc3339_out(token_expires_at.as_deref()),
                gitlab_runner_id,
            }),
            ToController::Image(r) => images::report(r),
        };
        v1::AgentMessage { kind: Some(kind) }
    }
}

pub mod images;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::units::UnitState;

    #[test]
    fn a_unit_goes_out_with_its_times_and_canceled_jobs_counted_as_failed() {
        let u = UnitReport {
            name: "a".into(),
            state: "running".into(),
            token_rotate_at: Some("2030-01-01T00:00:30Z".into()),
            token_expires_at: Some("not a time".into()),
            token_rotation_error: Some("reset token: 500".into()),
            jobs_failed: 1,
            jobs_canceled: 2,
            ..UnitReport::default()
        };
        let wire = v1::RunnerStatus::from(&u);
        assert_eq!(wire.token_rotation_error, "reset token: 500");
        assert_eq!(wire.token_rotate_at.unwrap().seconds, 1_893_456_030);
        assert_eq!(wire.token_expires_at, None);
        assert_eq!(wire.jobs_failed, 3);
    }

    #[test]
    fn an_empty_command_is_refused_naming_the_field() {
        let e = Command::try_from(v1::Command { kind: None }).unwrap_err();
        assert!(e.to_string().starts_with("command.kind: empty"), "{e}");
        let drain = v1::Command {
            kind: Some(v1::command::Kind::Drain(v1::Drain::default())),
        };
        assert_eq!(
            Command::try_from(drain),
            Ok(Command::Drain { deadline: None })
        );
        let drain = v1::Command {
            kind: Some(v1::command::Kind::Drain(v1::Drain {
                deadline_seconds: 90,
                deadline_at: None,
            })),
        };
        assert_eq!(
            Command::try_from(drain),
            Ok(Command::Drain {
                deadline: Some(DrainDeadline::After(std::time::Duration::from_secs(90)))
            })
        );
        let drain = v1::Command {
            kind: Some(v1::command::Kind::Drain(v1::Drain {
                deadline_seconds: 90,
                deadline_at: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 0,
                }),
            })),
        };
        assert_eq!(
            Command::try_from(drain),
            Ok(Command::Drain {
                deadline: Some(DrainDeadline::At(
                    OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
                ))
            })
        );
        let too_long = v1::Command {
            kind: Some(v1::command::Kind::Drain(v1::Drain {
                deadline_seconds: u64::MAX,
                deadline_at: None,
            })),
        };
        let e = Command::try_from(too_long).unwrap_err();
        assert_eq!(e.field, "drain.deadline_seconds");
        let out_of_range = v1::Command {
            kind: Some(v1::command::Kind::Drain(v1::Drain {
                deadline_seconds: 0,
                deadline_at: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
            })),
        };
        let e = Command::try_from(out_of_range).unwrap_err();
        assert_eq!(e.field, "drain.deadline_at");
        let undrain = v1::Command {
            kind: Some(v1::command::Kind::Undrain(v1::Undrain {})),
        };
        assert_eq!(Command::try_from(undrain), Ok(Command::Undrain));
    }

    #[test]
    fn messages_go_out_with_the_names_the_controller_reads() {
        let at = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let ev = v1::AgentMessage::from(ToController::Event {
            runner: "a".into(),
            kind: RunnerEventKind::TokenInvalid,
            message: "403".into(),
            at,
        });
        let Some(AgentKind::RunnerEvent(e)) = ev.kind else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (e.kind.as_str(), e.at.unwrap().seconds),
            ("token-invalid", 1_700_000_000)
        );
        let job = v1::AgentMessage::from(ToController::Job {
            runner: "a".into(),
            job_id: 5,
            state: JobState::Failed,
            failure_reason: "script_failure".into(),
            at,
            queue_wait: Some(std::time::Duration::from_millis(1500)),
            started_at: Some(at),
            duration: Some(std::time::Duration::from_secs(12)),
        });
        let Some(AgentKind::JobEvent(j)) = job.kind else {
            panic!("{job:?}")
        };
        assert_eq!(j.queue_wait_seconds, Some(1.5));
        assert_eq!(j.duration_seconds, Some(12.0));
        assert_eq!(j.started_at, j.at);
        assert_eq!(
            (j.state.as_str(), j.failure_reason.as_str()),
            ("failed", "script_failure")
        );
        let ack = v1::AgentMessage::from(ToController::Ack {
            generation: 2,
            refused: Some("bad".into()),
        });
        assert!(matches!(ack.kind, Some(AgentKind::Ack(a)) if !a.applied && a.error == "bad"));
    }

    #[test]
    fn a_pushed_expiry_that_is_not_a_time_reads_as_never() {
        let ds = DesiredState::from(v1::DesiredState {
            generation: 3,
            runners: vec![v1::RunnerAssignment {
                name: "a".into(),
                token_expires_at: Some(prost_types::Timestamp {
                    seconds: i64::MAX,
                    nanos: 0,
                }),
                ..Default::default()
            }],
        });
        assert_eq!(ds.generation, 3);
        assert_eq!(ds.runners[0].token_expires_at, None);
    }

    #[test]
    fn every_unit_state_kind_and_job_state_goes_out_in_both_fields() {
        // Every wire name is a unit state's name (the agent reads them with serde).
        for (v, name) in v1::UnitState::NAMES {
            let s: UnitState = serde_json::from_value(serde_json::json!(name)).unwrap();
            let wire = v1::RunnerStatus::from(&UnitReport {
                state: s.as_str().into(),
                ..UnitReport::default()
            });
            assert_eq!((wire.unit_state, wire.state.as_str()), ((*v).into(), *name));
        }
        // Every wire kind comes from exactly one of the agent's kinds.
        let from_wire = |k: v1::RunnerEventKind| match k {
            v1::RunnerEventKind::Unspecified => None,
            v1::RunnerEventKind::Started => Some(RunnerEventKind::Started),
            v1::RunnerEventKind::Stopped => Some(RunnerEventKind::Stopped),
            v1::RunnerEventKind::Backoff => Some(RunnerEventKind::Backoff),
            v1::RunnerEventKind::WaitingForDocker => Some(RunnerEventKind::WaitingForDocker),
            v1::RunnerEventKind::Draining => Some(RunnerEventKind::Draining),
            v1::RunnerEventKind::TokenInvalid => Some(RunnerEventKind::TokenInvalid),
            v1::RunnerEventKind::VerifyFailed => Some(RunnerEventKind::VerifyFailed),
            v1::RunnerEventKind::IpsChanged => Some(RunnerEventKind::IpsChanged),
        };
        let at = OffsetDateTime::UNIX_EPOCH;
        for (v, name) in v1::RunnerEventKind::NAMES {
            let kind = from_wire(*v).unwrap();
            let m = v1::AgentMessage::from(ToController::Event {
                runner: "a".into(),
                kind,
                message: String::new(),
                at,
            });
            let Some(AgentKind::RunnerEvent(e)) = m.kind else {
                panic!("{m:?}")
            };
            assert_eq!((e.event_kind, e.kind.as_str()), ((*v).into(), *name));
        }
        for state in [
            JobState::Running,
            JobState::Success,
            JobState::Failed,
            JobState::Canceled,
        ] {
            let m = v1::AgentMessage::from(ToController::Job {
                runner: "a".into(),
                job_id: 1,
                state,
                failure_reason: String::new(),
                at,
                queue_wait: None,
                started_at: None,
                duration: None,
            });
            let Some(AgentKind::JobEvent(j)) = m.kind else {
                panic!("{m:?}")
            };
            let read = drover_proto::names::read::<v1::JobState>(j.job_state, "");
            assert_eq!(read.name(), j.state, "{state:?}");
            assert_ne!(j.job_state, 0);
        }
    }
}
