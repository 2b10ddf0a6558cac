//! What the admin calls answer: agents, tokens, events, the rollout status.

use drover_proto::names::Named;
use drover_proto::v1;

use super::WireError;
use super::enums::{
    agent_rollout_state_out, agent_state_out, job_state_number, rollout_state_out,
    strategy_kind_in, strategy_kind_out,
};
use crate::fleet::gate;
use crate::fleet::progress::{AgentProgress, RolloutStatus};
use crate::health::AgentView;
use crate::health::report::RunnerStatus;
use crate::store::{EventRecord, Gate, JobRecord, Strategy, StrategyKind};
use crate::timefmt;
use crate::tokens::TokenRecord;

/// The token as `drover token list` shows it (never its secret or hash).
pub fn token_info(t: &TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        id: t.id.clone(),
        labels: t.labels.clone().into_iter().collect(),
        created_at: Some(timefmt::to_proto(t.created_at)),
        expires_at: Some(timefmt::to_proto(t.expires_at)),
        uses_left: t.uses_left,
        revoked: t.revoked,
    }
}

/// The agent as `drover agents` shows it: stored facts with the live lease state.
pub fn agent_info(v: &AgentView, runners: Vec<RunnerStatus>) -> v1::AgentInfo {
    let a = &v.record;
    let mut facts: v1::AgentFacts = (&a.facts).into();
    facts.ips = v.ips.clone();
    let (agent_state, state) = agent_state_out(v.eval.state);
    v1::AgentInfo {
        // Set by `ListAgents`/`GetAgent` from the newest upgrade (`wire::upgrade`).
        upgrade_step: 0,
        upgrade_detail: String::new(),
        id: a.id.clone(),
        labels: a.labels.clone().into_iter().collect(),
        facts: Some(facts),
        state,
        agent_state,
        reasons: v.eval.reasons.clone(),
        connected: v.connected,
        last_seen: v.last_seen.map(timefmt::to_proto),
        enrolled_at: Some(timefmt::to_proto(a.enrolled_at)),
        cert_not_after: Some(timefmt::to_proto(a.cert_not_after)),
        applied_generation: v.applied_generation,
        runners: runners.into_iter().map(v1::RunnerStatus::from).collect(),
        host: v.host.clone().map(v1::HostHealth::from),
        target_generation: v.target_generation,
        last_heartbeat: v.last_heartbeat.map(timefmt::to_proto),
        draining: v.draining,
        drain_requested_at: v.drain.as_ref().map(|d| timefmt::to_proto(d.requested_at)),
        drain_deadline_at: v
            .drain
            .as_ref()
            .and_then(|d| d.deadline_at)
            .map(timefmt::to_proto),
        heartbeat_draining: v.heartbeat_draining,
    }
}

/// A stored event on the wire.
pub fn event(e: &EventRecord) -> v1::Event {
    v1::Event {
        id: e.id,
        at: e.at.map(timefmt::to_proto),
        agent_id: e.agent_id.clone(),
        kind: e.kind.clone(),
        runner: e.runner.clone(),
        message: e.message.clone(),
        job_id: e.job_id,
        job_status: job_state_number(&e.job_state),
        job_state: e.job_state.clone(),
    }
}

/// A stored job on the wire.
pub fn job(j: &JobRecord) -> v1::Job {
    v1::Job {
        agent_id: j.agent_id.clone(),
        runner: j.runner.clone(),
        job_id: j.job_id,
        job_state: job_state_number(&j.state),
        state: j.state.clone(),
        failure_reason: j.failure_reason.clone(),
        started_at: j.started_at.map(timefmt::to_proto),
        finished_at: j.finished_at.map(timefmt::to_proto),
        duration_seconds: j.duration_ms.map(|ms| ms as f64 / 1000.0),
        queue_wait_seconds: j.queue_wait_ms.map(|ms| ms as f64 / 1000.0),
        updated_at: Some(timefmt::to_proto(j.updated_at)),
    }
}

/// The state a `ListJobs` call filters on: empty for unspecified (all); a number this
/// controller does not know is refused.
pub fn job_state_filter(value: i32) -> Result<String, WireError> {
    match v1::JobState::try_from(value) {
        Ok(v1::JobState::Unspecified) => Ok(String::new()),
        Ok(s) => Ok(s.name().to_string()),
        Err(_) => Err(WireError::new(
            "job_state",
            format!("{value}: expected running, success, failed or canceled"),
        )),
    }
}

/// The strategy a call asks for; `None` lets the controller choose (neither a kind nor
/// `max_unavailable` nor a gate given). A kind this controller does not know is refused,
/// and so are a gated `all`, a window over a day and a ratio outside 0..=1.
pub fn strategy_in(s: Option<&v1::RolloutStrategy>) -> Result<Option<Strategy>, WireError> {
    let Some(s) = s else { return Ok(None) };
    let kind = match strategy_kind_in(s.strategy_kind, &s.kind) {
        Ok(None) if s.max_unavailable == 0 && !s.gated => return Ok(None),
        Ok(None) => StrategyKind::Rolling,
        Ok(Some(kind)) => kind,
        Err(other) => {
            return Err(WireError::new(
                "strategy",
                format!("{other:?}: expected rolling or all"),
            ));
        }
    };
    let gate = if s.gated {
        Some(gate_in(s, kind)?)
    } else {
        None
    };
    Ok(Some(Strategy {
        kind,
        max_unavailable: s.max_unavailable.max(1),
        gate,
    }))
}

fn gate_in(s: &v1::RolloutStrategy, kind: StrategyKind) -> Result<Gate, WireError> {
    if kind == StrategyKind::All {
        return Err(WireError::new(
            "strategy",
            "a gated rollout goes in batches: use the rolling strategy",
        ));
    }
    if s.gate_window_seconds > gate::MAX_WINDOW_SECS {
        return Err(WireError::new(
            "gate_window_seconds",
            format!(
                "{}: at most {} (one day)",
                s.gate_window_seconds,
                gate::MAX_WINDOW_SECS
            ),
        ));
    }
    let ratio = s.max_failure_ratio;
    if !(0.0..=1.0).contains(&ratio) {
        return Err(WireError::new(
            "max_failure_ratio",
            format!("{ratio}: expected a number from 0 to 1"),
        ));
    }
    Ok(Gate {
        canary: s.canary,
        window_secs: match s.gate_window_seconds {
            0 => gate::DEFAULT_WINDOW_SECS,
            w => w,
        },
        // In 0..=1000 by the check above.
        max_failure_permille: (ratio * 1000.0).round() as u32,
        auto_rollback: s.auto_rollback,
    })
}

impl From<Strategy> for v1::RolloutStrategy {
    fn from(s: Strategy) -> v1::RolloutStrategy {
        let (strategy_kind, kind) = strategy_kind_out(s.kind);
        let g = s.gate;
        v1::RolloutStrategy {
            kind,
            strategy_kind,
            max_unavailable: s.max_unavailable,
            gated: g.is_some(),
            canary: g.map_or(0, |g| g.canary),
            gate_window_seconds: g.map_or(0, |g| g.window_secs),
            max_failure_ratio: g.map_or(0.0, |g| f64::from(g.max_failure_permille) / 1000.0),
            auto_rollback: g.is_some_and(|g| g.auto_rollback),
        }
    }
}

impl From<RolloutStatus> for v1::RolloutStatusResponse {
    fn from(r: RolloutStatus) -> v1::RolloutStatusResponse {
        let (rollout_state, state) = rollout_state_out(r.state);
        v1::RolloutStatusResponse {
            state,
            rollout_state,
            generation: r.generation,
            reason: r.reason,
            strategy: r.strategy.map(v1::RolloutStrategy::from),
            agents: r.agents.into_iter().map(v1::AgentRollout::from).collect(),
            created_at: r.created_at.map(timefmt::to_proto),
        }
    }
}

impl From<AgentProgress> for v1::AgentRollout {
    fn from(a: AgentProgress) -> v1::AgentRollout {
        let (rollout_state, state) = agent_rollout_state_out(a.state);
        v1::AgentRollout {
            state,
            rollout_state,
            agent_id: a.agent_id,
            hostname: a.hostname,
            target_generation: a.target_generation,
            applied_generation: a.applied_generation,
            error: a.error,
            connected: a.connected,
        }
    }
}

/// One runner's placement on an agent, with the unit state of its last heartbeat.
pub fn placement(
    a: crate::store::Assignment,
    status: Option<&RunnerStatus>,
) -> v1::RunnerPlacement {
    let (unit_state, state) = super::enums::unit_state_out(status.and_then(|s| s.state.as_ref()));
    v1::RunnerPlacement {
        agent_id: a.agent_id,
        gitlab_runner_id: a.gitlab_runner_id,
        token_expires_at: a.token_expires_at.map(crate::timefmt::to_proto),
        state,
        unit_state,
    }
}

/// An agent state count of `drover status`.
pub fn state_count(s: crate::health::State, agents: u32) -> v1::StateCount {
    let (agent_state, state) = agent_state_out(s);
    v1::StateCount {
        state,
        agents,
        agent_state,
    }
}

/// A lost or degraded agent of `drover status`.
pub fn problem(v: &AgentView) -> v1::Problem {
    let (agent_state, state) = agent_state_out(v.eval.state);
    v1::Problem {
        agent_id: v.record.id.clone(),
        hostname: v.record.facts.hostname.clone(),
        state,
        reasons: v.eval.reasons.clone(),
        agent_state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gate_round_trips_with_defaults_and_bounds() {
        let wire = |ratio: f64, window: u64, kind: &str| v1::RolloutStrategy {
            kind: kind.into(),
            gated: true,
            canary: 1,
            gate_window_seconds: window,
            max_failure_ratio: ratio,
            auto_rollback: true,
            ..v1::RolloutStrategy::default()
        };
        let s = strategy_in(Some(&wire(0.25, 0, ""))).unwrap().unwrap();
        assert_eq!(s.kind, StrategyKind::Rolling);
        assert_eq!(
            s.gate,
            Some(Gate {
                canary: 1,
                window_secs: gate::DEFAULT_WINDOW_SECS,
                max_failure_permille: 250,
                auto_rollback: true,
            })
        );
        let back = v1::RolloutStrategy::from(s);
        assert!(back.gated && back.auto_rollback);
        assert_eq!((back.canary, back.gate_window_seconds), (1, 120));
        assert!((back.max_failure_ratio - 0.25).abs() < 1e-9);
        assert_eq!(strategy_in(Some(&back)), Ok(Some(s)));
        for bad in [
            wire(1.5, 10, ""),
            wire(f64::NAN, 10, ""),
            wire(0.0, 86_401, ""),
        ] {
            assert!(strategy_in(Some(&bad)).is_err(), "{bad:?}");
        }
        let e = strategy_in(Some(&wire(0.0, 10, "all"))).unwrap_err();
        assert!(e.to_string().contains("rolling"), "{e}");
    }

    #[test]
    fn a_strategy_reads_from_either_field_and_an_unknown_kind_is_refused() {
        let s = |strategy_kind: i32, kind: &str, max_unavailable| v1::RolloutStrategy {
            strategy_kind,
            kind: kind.into(),
            max_unavailable,
            ..v1::RolloutStrategy::default()
        };
        let all = Strategy {
            kind: StrategyKind::All,
            max_unavailable: 1,
            gate: None,
        };
        let current = v1::RolloutStrategy::from(all);
        assert_eq!((current.kind.as_str(), current.strategy_kind), ("all", 2));
        assert_eq!(strategy_in(Some(&current)), Ok(Some(all)));
        assert_eq!(
            strategy_in(Some(&s(0, "all", 0))),
            Ok(Some(all)),
            "an older CLI"
        );
        assert_eq!(strategy_in(Some(&s(0, "", 0))), Ok(None));
        assert_eq!(strategy_in(None), Ok(None));
        assert_eq!(
            strategy_in(Some(&s(0, "", 3))).unwrap().unwrap().kind,
            StrategyKind::Rolling
        );
        let e = strategy_in(Some(&s(9, "canary", 0))).unwrap_err();
        assert_eq!(
            e.to_string(),
            "strategy: \"canary\": expected rolling or all"
        );
    }
}
