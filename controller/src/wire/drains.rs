//! Drains on the wire: the selection of `DrainAgents`/`UndrainAgents` in, their answer
//! out, and the `Drain`/`Undrain` command a session sends.

use drover_proto::v1;
use time::OffsetDateTime;

use crate::server::drains::{Drained, Selection, SelectionError};
use crate::store::DrainRecord;
use crate::timefmt;

/// The selection of a request: an id, or a selector (validated as labels are).
pub fn selection_in(s: Option<&v1::AgentSelection>) -> Result<Selection, SelectionError> {
    let Some(s) = s else {
        return Err(SelectionError::Neither);
    };
    match (s.id.is_empty(), s.selector.is_empty()) {
        (false, false) => Err(SelectionError::Both),
        (true, true) => Err(SelectionError::Neither),
        (false, true) => Ok(Selection::One(s.id.clone())),
        (true, false) => {
            drover_proto::spec::validate_labels(s.selector.iter())
                .map_err(|e| SelectionError::BadSelector(e.to_string()))?;
            Ok(Selection::Matching(
                s.selector.clone().into_iter().collect(),
            ))
        }
    }
}

/// The answer of a drain or undrain.
pub fn drained_out(agents: &[Drained]) -> v1::DrainAgentsResponse {
    v1::DrainAgentsResponse {
        agents: agents
            .iter()
            .map(|a| v1::DrainedAgent {
                agent_id: a.agent_id.clone(),
                hostname: a.hostname.clone(),
                connected: a.connected,
                deadline_at: a.deadline_at.map(timefmt::to_proto),
                changed: a.changed,
            })
            .collect(),
    }
}

/// The command telling an agent its drain state at `now`: `Drain` with the absolute
/// deadline (and the seconds left, at least 1, for an agent that reads only those), or
/// `Undrain`.
pub fn drain_command_out(drain: Option<&DrainRecord>, now: OffsetDateTime) -> v1::Command {
    use v1::command::Kind;
    let kind = match drain {
        None => Kind::Undrain(v1::Undrain {}),
        Some(d) => Kind::Drain(v1::Drain {
            deadline_seconds: d.deadline_at.map_or(0, |at| {
                u64::try_from((at - now).whole_seconds())
                    .unwrap_or(0)
                    .max(1)
            }),
            deadline_at: d.deadline_at.map(timefmt::to_proto),
        }),
    };
    v1::Command { kind: Some(kind) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::Duration;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn wire(id: &str, sel: &[(&str, &str)]) -> v1::AgentSelection {
        v1::AgentSelection {
            id: id.into(),
            selector: sel
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn a_selection_is_an_id_or_a_selector() {
        assert_eq!(
            selection_in(Some(&wire("a1", &[]))),
            Ok(Selection::One("a1".into()))
        );
        assert_eq!(selection_in(None), Err(SelectionError::Neither));
        assert_eq!(
            selection_in(Some(&wire("", &[]))),
            Err(SelectionError::Neither)
        );
        assert_eq!(
            selection_in(Some(&wire("a1", &[("site", "lab")]))),
            Err(SelectionError::Both)
        );
        assert!(matches!(
            selection_in(Some(&wire("", &[("bad key!", "x")]))),
            Err(SelectionError::BadSelector(_))
        ));
    }

    #[test]
    fn the_command_keeps_the_absolute_deadline() {
        use v1::command::Kind;
        let d = DrainRecord {
            agent_id: "a1".into(),
            requested_at: t0(),
            deadline_at: Some(t0() + Duration::seconds(60)),
        };
        let later = t0() + Duration::seconds(45);
        match drain_command_out(Some(&d), later).kind {
            Some(Kind::Drain(v1::Drain {
                deadline_seconds,
                deadline_at,
            })) => {
                assert_eq!(deadline_seconds, 15);
                assert_eq!(
                    deadline_at,
                    Some(timefmt::to_proto(t0() + Duration::seconds(60)))
                );
            }
            other => panic!("{other:?}"),
        }
        // Past the deadline: still a deadline (now), never "no deadline".
        match drain_command_out(Some(&d), t0() + Duration::seconds(600)).kind {
            Some(Kind::Drain(v1::Drain {
                deadline_seconds, ..
            })) => assert_eq!(deadline_seconds, 1),
            other => panic!("{other:?}"),
        }
        let open = DrainRecord {
            deadline_at: None,
            ..d
        };
        assert_eq!(
            drain_command_out(Some(&open), later).kind,
            Some(Kind::Drain(v1::Drain {
                deadline_seconds: 0,
                deadline_at: None
            }))
        );
        assert_eq!(
            drain_command_out(None, later).kind,
            Some(Kind::Undrain(v1::Undrain {}))
        );
    }
}
