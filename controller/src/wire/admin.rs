//! What the admin calls answer: agents, tokens, events, the rollout status.

use drover_proto::v1;

use crate::fleet::progress::{AgentProgress, RolloutStatus};
use crate::health::AgentView;
use crate::health::report::RunnerStatus;
use crate::store::{EventRecord, Strategy, StrategyKind};
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
    v1::AgentInfo {
        id: a.id.clone(),
        labels: a.labels.clone().into_iter().collect(),
        facts: Some(facts),
        state: v.eval.state.as_str().to_string(),
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
        job_state: e.job_state.clone(),
    }
}

impl From<Strategy> for v1::RolloutStrategy {
    fn from(s: Strategy) -> v1::RolloutStrategy {
        v1::RolloutStrategy {
            kind: match s.kind {
                StrategyKind::Rolling => "rolling".into(),
                StrategyKind::All => "all".into(),
            },
            max_unavailable: s.max_unavailable,
        }
    }
}

impl From<RolloutStatus> for v1::RolloutStatusResponse {
    fn from(r: RolloutStatus) -> v1::RolloutStatusResponse {
        v1::RolloutStatusResponse {
            state: r.state_name().into(),
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
        v1::AgentRollout {
            state: a.state.as_str().into(),
            agent_id: a.agent_id,
            hostname: a.hostname,
            target_generation: a.target_generation,
            applied_generation: a.applied_generation,
            error: a.error,
            connected: a.connected,
        }
    }
}
