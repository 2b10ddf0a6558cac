//! The controller's enums on the wire: each domain enum to and from its proto enum, whose
//! documented names live in `drover_proto::names` (one table for both sides). A writer sets
//! the enum and its name (the deprecated string field beside it, for older peers); a reader
//! takes the enum, else the string ([`names::read`]); a value only a newer peer knows is
//! kept as that peer's name where the domain has room for it (`UnitState::Unknown`,
//! `RunnerEventKind::Other`, `JobState::Other`).

use drover_proto::names::{self, Named, Read};
use drover_proto::v1;

use crate::fleet::messages::{JobState, RunnerEventKind};
use crate::fleet::progress::AgentRolloutState;
use crate::health::evaluate::State;
use crate::health::report::UnitState;
use crate::store::{RolloutState, StrategyKind};

/// A known value as its two wire fields: the number and the documented name.
pub fn pair<E: Named>(e: E) -> (i32, String) {
    (e.into(), e.name().to_string())
}

/// Reads an enum field and its string twin into a domain value: `known` maps a value this
/// build knows (`None` only for `*_UNSPECIFIED`, which [`names::read`] never gives),
/// `unknown` keeps a newer peer's name; `None` when the peer set neither.
fn read_with<E: Named, D>(
    value: i32,
    name: &str,
    known: impl Fn(E) -> Option<D>,
    unknown: impl Fn(String) -> D,
) -> Option<D> {
    match names::read::<E>(value, name) {
        Read::Unset => None,
        Read::Known(e) => known(e),
        Read::Unknown(raw) => Some(unknown(raw)),
    }
}

/// A unit state from the wire; `None` when not reported.
pub fn unit_state_in(value: i32, name: &str) -> Option<UnitState> {
    read_with(value, name, unit_state_from, UnitState::Unknown)
}

fn unit_state_from(s: v1::UnitState) -> Option<UnitState> {
    Some(match s {
        v1::UnitState::Unspecified => return None,
        v1::UnitState::Starting => UnitState::Starting,
        v1::UnitState::Running => UnitState::Running,
        v1::UnitState::Degraded => UnitState::Degraded,
        v1::UnitState::Backoff => UnitState::Backoff,
        v1::UnitState::WaitingForDocker => UnitState::WaitingForDocker,
        v1::UnitState::Draining => UnitState::Draining,
        v1::UnitState::Stopped => UnitState::Stopped,
    })
}

/// A unit state as `(unit_state, state)`: a state only a newer agent knows is passed on by
/// name with the enum unspecified, so a reader that knows it reads it from the name.
pub fn unit_state_out(s: Option<&UnitState>) -> (i32, String) {
    let known = match s {
        None => return (0, String::new()),
        Some(UnitState::Unknown(raw)) => return (0, raw.clone()),
        Some(UnitState::Starting) => v1::UnitState::Starting,
        Some(UnitState::Running) => v1::UnitState::Running,
        Some(UnitState::Degraded) => v1::UnitState::Degraded,
        Some(UnitState::Backoff) => v1::UnitState::Backoff,
        Some(UnitState::WaitingForDocker) => v1::UnitState::WaitingForDocker,
        Some(UnitState::Draining) => v1::UnitState::Draining,
        Some(UnitState::Stopped) => v1::UnitState::Stopped,
    };
    pair(known)
}

/// A runner event kind from the wire; one this controller does not know, or none at all,
/// is [`RunnerEventKind::Other`] (cleaned), as before the enum.
pub fn runner_event_kind_in(value: i32, name: &str) -> RunnerEventKind {
    let known = |k: v1::RunnerEventKind| {
        Some(match k {
            v1::RunnerEventKind::Unspecified => return None,
            v1::RunnerEventKind::Started => RunnerEventKind::Started,
            v1::RunnerEventKind::Stopped => RunnerEventKind::Stopped,
            v1::RunnerEventKind::Backoff => RunnerEventKind::Backoff,
            v1::RunnerEventKind::WaitingForDocker => RunnerEventKind::WaitingForDocker,
            v1::RunnerEventKind::Draining => RunnerEventKind::Draining,
            v1::RunnerEventKind::TokenInvalid => RunnerEventKind::TokenInvalid,
            v1::RunnerEventKind::VerifyFailed => RunnerEventKind::VerifyFailed,
            v1::RunnerEventKind::IpsChanged => RunnerEventKind::IpsChanged,
        })
    };
    read_with(value, name, known, |raw| RunnerEventKind::other(&raw))
        .unwrap_or_else(|| RunnerEventKind::other(""))
}

/// A job state from the wire; one this controller does not know is
/// [`JobState::Other`] (its first 40 characters), an unset one `Other("")`, as before.
pub fn job_state_in(value: i32, name: &str) -> JobState {
    let known = |s: v1::JobState| {
        Some(match s {
            v1::JobState::Unspecified => return None,
            v1::JobState::Running => JobState::Running,
            v1::JobState::Success => JobState::Success,
            v1::JobState::Failed => JobState::Failed,
            v1::JobState::Canceled => JobState::Canceled,
        })
    };
    let other = |raw: String| JobState::Other(raw.chars().take(40).collect());
    read_with(value, name, known, other).unwrap_or_else(|| JobState::Other(String::new()))
}

/// A stored job state name (an event's) as the enum; unspecified for any other name.
pub fn job_state_number(stored: &str) -> i32 {
    v1::JobState::from_name(stored).map_or(0, Into::into)
}

/// A rollout strategy kind from the wire: `Ok(None)` when unset, `Err` with the name of
/// one this controller does not know.
pub fn strategy_kind_in(value: i32, name: &str) -> Result<Option<StrategyKind>, String> {
    let known = |k: v1::RolloutStrategyKind| {
        Some(match k {
            v1::RolloutStrategyKind::Unspecified => return None,
            v1::RolloutStrategyKind::Rolling => Ok(StrategyKind::Rolling),
            v1::RolloutStrategyKind::All => Ok(StrategyKind::All),
        })
    };
    read_with(value, name, known, Err).transpose()
}

/// A rollout strategy kind as `(strategy_kind, kind)`.
pub fn strategy_kind_out(k: StrategyKind) -> (i32, String) {
    pair(match k {
        StrategyKind::Rolling => v1::RolloutStrategyKind::Rolling,
        StrategyKind::All => v1::RolloutStrategyKind::All,
    })
}

/// A rollout's state as `(rollout_state, state)`; `None` (no generation) is `none`.
pub fn rollout_state_out(s: Option<RolloutState>) -> (i32, String) {
    pair(match s {
        None => v1::RolloutState::None,
        Some(RolloutState::Progressing) => v1::RolloutState::Progressing,
        Some(RolloutState::Complete) => v1::RolloutState::Complete,
        Some(RolloutState::Halted) => v1::RolloutState::Halted,
    })
}

/// One agent's rollout state as `(rollout_state, state)`.
pub fn agent_rollout_state_out(s: AgentRolloutState) -> (i32, String) {
    pair(match s {
        AgentRolloutState::Waiting => v1::AgentRolloutState::Waiting,
        AgentRolloutState::Pushed => v1::AgentRolloutState::Pushed,
        AgentRolloutState::Applied => v1::AgentRolloutState::Applied,
        AgentRolloutState::Refused => v1::AgentRolloutState::Refused,
        AgentRolloutState::Offline => v1::AgentRolloutState::Offline,
        AgentRolloutState::Failed => v1::AgentRolloutState::Failed,
    })
}

/// An agent's health state as `(agent_state, state)`.
pub fn agent_state_out(s: State) -> (i32, String) {
    pair(match s {
        State::Healthy => v1::AgentState::Healthy,
        State::Degraded => v1::AgentState::Degraded,
        State::Lost => v1::AgentState::Lost,
        State::Revoked => v1::AgentState::Revoked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_unit_state_round_trips_with_its_domain_name() {
        for s in UnitState::KNOWN {
            let (n, name) = unit_state_out(Some(&s));
            assert_ne!(n, 0, "{s}");
            assert_eq!(name, s.as_str(), "the wire name is the domain's");
            assert_eq!(unit_state_in(n, &name), Some(s.clone()));
            assert_eq!(unit_state_in(n, ""), Some(s.clone()), "the enum alone");
            assert_eq!(unit_state_in(0, &name), Some(s), "an older agent's name");
        }
        assert_eq!(unit_state_out(None), (0, String::new()));
        assert_eq!(unit_state_in(0, ""), None);
    }

    #[test]
    fn a_unit_state_only_a_newer_agent_knows_is_kept_and_passed_on_by_name() {
        assert_eq!(
            unit_state_in(42, "hibernating"),
            Some(UnitState::Unknown("hibernating".into()))
        );
        assert_eq!(unit_state_in(42, ""), Some(UnitState::Unknown("42".into())));
        let s = UnitState::Unknown("hibernating".into());
        assert_eq!(unit_state_out(Some(&s)), (0, "hibernating".into()));
    }

    #[test]
    fn every_runner_event_kind_and_job_state_reads_from_either_field() {
        for k in RunnerEventKind::KNOWN {
            let n: i32 = v1::RunnerEventKind::from_name(k.as_str())
                .expect("a wire name per kind")
                .into();
            assert_eq!(runner_event_kind_in(n, ""), k);
            assert_eq!(runner_event_kind_in(0, k.as_str()), k);
        }
        assert_eq!(
            runner_event_kind_in(42, "new kind!\n"),
            RunnerEventKind::Other("newkind".into())
        );
        for s in JobState::KNOWN {
            let n = job_state_number(s.as_str());
            assert_ne!(n, 0, "{s}");
            assert_eq!(job_state_in(n, ""), s);
            assert_eq!(job_state_in(0, s.as_str()), s);
        }
        assert_eq!(job_state_in(42, "paused"), JobState::Other("paused".into()));
        assert_eq!(job_state_in(0, ""), JobState::Other(String::new()));
    }

    #[test]
    fn every_admin_state_goes_out_with_its_domain_name() {
        for s in State::ALL {
            let (n, name) = agent_state_out(s);
            assert_eq!(names::read::<v1::AgentState>(n, "").name(), s.as_str());
            assert_eq!(name, s.as_str());
        }
        for s in AgentRolloutState::ALL {
            let (n, name) = agent_rollout_state_out(s);
            assert_eq!(
                names::read::<v1::AgentRolloutState>(n, "").name(),
                s.as_str()
            );
            assert_eq!(name, s.as_str());
        }
        for s in [
            None,
            Some(RolloutState::Progressing),
            Some(RolloutState::Complete),
            Some(RolloutState::Halted),
        ] {
            let (n, name) = rollout_state_out(s);
            assert_ne!(n, 0);
            assert_eq!(name, s.map_or("none", RolloutState::as_str));
        }
        for k in [StrategyKind::Rolling, StrategyKind::All] {
            let (n, name) = strategy_kind_out(k);
            assert_eq!(strategy_kind_in(n, ""), Ok(Some(k)));
            assert_eq!(strategy_kind_in(0, &name), Ok(Some(k)));
        }
        assert_eq!(strategy_kind_in(0, ""), Ok(None));
        assert_eq!(strategy_kind_in(42, ""), Err("42".into()));
        assert_eq!(strategy_kind_in(0, "canary"), Err("canary".into()));
    }
}
