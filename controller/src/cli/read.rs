//! What the controller answers, with every enum read as `drover_proto::names::read` says:
//! the enum field, else the deprecated string beside it (an older controller), a number
//! this CLI does not know shown by the name a newer controller wrote. The result lands in
//! the string field the printing code and `-o json` read, always the documented name, so
//! the output is the same whichever version answered.

use drover_proto::names::name_of;
use drover_proto::v1;

/// An agent and its runners.
pub fn agent(mut a: v1::AgentInfo) -> v1::AgentInfo {
    a.state = name_of::<v1::AgentState>(a.agent_state, &a.state);
    for r in &mut a.runners {
        r.state = name_of::<v1::UnitState>(r.unit_state, &r.state);
    }
    a
}

/// A rollout, its strategy and its agents.
pub fn rollout(mut s: v1::RolloutStatusResponse) -> v1::RolloutStatusResponse {
    s.state = name_of::<v1::RolloutState>(s.rollout_state, &s.state);
    if let Some(st) = &mut s.strategy {
        st.kind = name_of::<v1::RolloutStrategyKind>(st.strategy_kind, &st.kind);
    }
    for a in &mut s.agents {
        a.state = name_of::<v1::AgentRolloutState>(a.rollout_state, &a.state);
    }
    s
}

/// The fleet summary: state counts, problems and its rollout. `top_reasons` are free text.
pub fn fleet_status(mut s: v1::FleetStatusResponse) -> v1::FleetStatusResponse {
    for c in &mut s.counts {
        c.state = name_of::<v1::AgentState>(c.agent_state, &c.state);
    }
    for p in &mut s.problems {
        p.state = name_of::<v1::AgentState>(p.agent_state, &p.state);
    }
    s.rollout = s.rollout.map(rollout);
    s
}

/// A runner and its placements.
pub fn runner(mut r: v1::RunnerInfo) -> v1::RunnerInfo {
    for p in &mut r.placements {
        p.state = name_of::<v1::UnitState>(p.unit_state, &p.state);
    }
    r
}

/// A stored event.
pub fn event(mut e: v1::Event) -> v1::Event {
    e.job_state = name_of::<v1::JobState>(e.job_status, &e.job_state);
    e
}

/// A job: `state` from the enum, else the stored name.
pub fn job(mut j: v1::Job) -> v1::Job {
    j.state = name_of::<v1::JobState>(j.job_state, &j.state);
    j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_older_and_a_current_controllers_answers_print_the_same() {
        let current = v1::AgentInfo {
            state: "degraded".into(),
            agent_state: v1::AgentState::Degraded.into(),
            runners: vec![v1::RunnerStatus {
                state: "waiting-for-docker".into(),
                unit_state: v1::UnitState::WaitingForDocker.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let mut older = current.clone();
        older.agent_state = 0;
        older.runners[0].unit_state = 0;
        let printed = |a| crate::cli::agents::agent_json(&agent(a));
        assert_eq!(printed(older), printed(current.clone()));
        // Only the enum (a controller after the strings are gone).
        let mut newest = current.clone();
        newest.state.clear();
        newest.runners[0].state.clear();
        assert_eq!(printed(newest), printed(current));
    }

    #[test]
    fn a_value_only_a_newer_controller_knows_shows_its_name() {
        let s = rollout(v1::RolloutStatusResponse {
            state: "paused".into(),
            rollout_state: 99,
            strategy: Some(v1::RolloutStrategy {
                strategy_kind: v1::RolloutStrategyKind::All.into(),
                ..Default::default()
            }),
            agents: vec![v1::AgentRollout {
                rollout_state: 42,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(s.state, "paused");
        assert_eq!(s.strategy.unwrap().kind, "all");
        assert_eq!(s.agents[0].state, "42");
        let e = event(v1::Event {
            job_status: v1::JobState::Canceled.into(),
            ..Default::default()
        });
        assert_eq!(e.job_state, "canceled");
        let f = fleet_status(v1::FleetStatusResponse {
            top_reasons: vec![v1::StateCount {
                state: "no heartbeat".into(),
                agents: 2,
                ..Default::default()
            }],
            ..Default::default()
        });
        assert_eq!(f.top_reasons[0].state, "no heartbeat");
    }
}
