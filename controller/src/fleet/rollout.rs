//! Rollout planning, pure: given a generation, its strategy and every agent's progress,
//! which agents may receive it now, and where the rollout stands.
//!
//! Rules:
//! - An agent is *in flight* while it is connected, was pushed the generation and has not
//!   acknowledged it. Rolling lets at most `max_unavailable` agents be in flight.
//! - Agents that are offline are not waited for: they receive the newest generation when
//!   they reconnect (through the same budget).
//! - A refusal of the generation by any agent halts the rollout: nobody else receives it;
//!   `drover rollout undo` (or a fixed spec) is the way on.
//! - Complete: every connected agent applied it and none is waiting.
//! - Gated ([`plan_gated`], `Strategy::gate`): whole batches, one at a time, each watched by
//!   `crate::fleet::gate` before the next: the first batch is `canary` agents, the next ones
//!   `max_unavailable`; the gate's halt halts the rollout.

use super::gate::Verdict;
use crate::store::{RolloutState, Strategy, StrategyKind};

/// What the planner knows about one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentView {
    /// Agent id.
    pub id: String,
    /// Has a live session.
    pub connected: bool,
    /// Generation pushed to it.
    pub target: u64,
    /// Generation it last acknowledged.
    pub ack_generation: u64,
    /// Why it refused `ack_generation`.
    pub ack_error: Option<String>,
}

/// The planner's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Connected agents that may receive the generation, in order; the caller pushes to at
    /// most `budget` of them (a failed registration uses up a slot too).
    pub candidates: Vec<String>,
    /// How many candidates may be pushed now.
    pub budget: usize,
    /// Where the rollout stands.
    pub state: RolloutState,
    /// Why it halted.
    pub reason: String,
}

/// Default `max_unavailable`: a quarter of the agents, at least one.
pub fn default_max_unavailable(agents: usize) -> u32 {
    u32::try_from(agents.div_ceil(4).max(1)).unwrap_or(u32::MAX)
}

/// Plans generation `generation`.
pub fn plan(generation: u64, strategy: Strategy, agents: &[AgentView]) -> Plan {
    let mut agents: Vec<&AgentView> = agents.iter().collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(refused) = agents
        .iter()
        .find(|a| a.target == generation && a.ack_generation == generation && a.ack_error.is_some())
    {
        return Plan {
            candidates: Vec::new(),
            budget: 0,
            state: RolloutState::Halted,
            reason: format!(
                "agent {} refused generation {generation}: {}",
                refused.id,
                refused.ack_error.as_deref().unwrap_or_default()
            ),
        };
    }
    let applied = |a: &AgentView| a.ack_generation >= generation && a.ack_error.is_none();
    let in_flight = agents
        .iter()
        .filter(|a| a.connected && a.target >= generation && !applied(a))
        .count();
    let candidates: Vec<String> = agents
        .iter()
        .filter(|a| a.connected && a.target < generation)
        .map(|a| a.id.clone())
        .collect();
    let budget = match strategy.kind {
        StrategyKind::All => candidates.len(),
        StrategyKind::Rolling => {
            let max = usize::try_from(strategy.max_unavailable.max(1)).unwrap_or(usize::MAX);
            max.saturating_sub(in_flight)
        }
    };
    let state = if candidates.is_empty() && in_flight == 0 {
        RolloutState::Complete
    } else {
        RolloutState::Progressing
    };
    Plan {
        candidates,
        budget,
        state,
        reason: String::new(),
    }
}

/// Plans generation `generation` under its strategy's health gate, given the gate's
/// `verdict` on the agents that applied it; an ungated strategy plans as [`plan`] does.
pub fn plan_gated(
    generation: u64,
    strategy: Strategy,
    agents: &[AgentView],
    verdict: &Verdict,
) -> Plan {
    let base = plan(generation, strategy, agents);
    let Some(gate) = strategy.gate else {
        return base;
    };
    if base.state == RolloutState::Halted {
        return base;
    }
    if let Verdict::Halt(reason) = verdict {
        return Plan {
            candidates: Vec::new(),
            budget: 0,
            state: RolloutState::Halted,
            reason: reason.clone(),
        };
    }
    let applied = |a: &AgentView| a.ack_generation >= generation && a.ack_error.is_none();
    let pushed = agents.iter().filter(|a| a.target >= generation).count();
    let in_flight = agents
        .iter()
        .filter(|a| a.connected && a.target >= generation && !applied(a))
        .count();
    let batch = usize::try_from(strategy.max_unavailable.max(1)).unwrap_or(usize::MAX);
    let budget = if in_flight > 0 || *verdict == Verdict::Hold {
        0
    } else if pushed == 0 && gate.canary > 0 {
        usize::try_from(gate.canary).unwrap_or(usize::MAX)
    } else {
        batch
    };
    let state = if base.candidates.is_empty() && in_flight == 0 && *verdict == Verdict::Pass {
        RolloutState::Complete
    } else {
        RolloutState::Progressing
    };
    Plan {
        candidates: base.candidates,
        budget,
        state,
        reason: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, target: u64, ack: u64, err: Option<&str>) -> AgentView {
        AgentView {
            id: id.into(),
            connected: true,
            target,
            ack_generation: ack,
            ack_error: err.map(str::to_string),
        }
    }

    fn rolling(n: u32) -> Strategy {
        Strategy {
            kind: StrategyKind::Rolling,
            max_unavailable: n,
            gate: None,
        }
    }

    #[test]
    fn rolling_batches_wait_for_acks() {
        let agents = [
            view("c", 1, 1, None),
            view("a", 1, 1, None),
            view("b", 1, 1, None),
        ];
        let p = plan(2, rolling(1), &agents);
        assert_eq!(p.candidates, ["a", "b", "c"]);
        assert_eq!(p.budget, 1);
        assert_eq!(p.state, RolloutState::Progressing);
        // a was pushed and has not answered: nobody else yet.
        let agents = [
            view("a", 2, 1, None),
            view("b", 1, 1, None),
            view("c", 1, 1, None),
        ];
        assert_eq!(plan(2, rolling(1), &agents).budget, 0);
        // a applied: the next one.
        let agents = [
            view("a", 2, 2, None),
            view("b", 1, 1, None),
            view("c", 1, 1, None),
        ];
        let p = plan(2, rolling(1), &agents);
        assert_eq!((p.candidates.len(), p.budget), (2, 1));
        let agents = [
            view("a", 2, 2, None),
            view("b", 2, 2, None),
            view("c", 2, 2, None),
        ];
        assert_eq!(plan(2, rolling(1), &agents).state, RolloutState::Complete);
    }

    #[test]
    fn a_refusal_halts() {
        let agents = [
            view("a", 2, 2, Some("bad image")),
            view("b", 1, 1, None),
            view("c", 1, 1, None),
        ];
        let p = plan(2, rolling(2), &agents);
        assert_eq!(p.state, RolloutState::Halted);
        assert!(p.candidates.is_empty());
        assert!(
            p.reason.contains("agent a refused generation 2: bad image"),
            "{}",
            p.reason
        );
        // An older refusal does not halt a newer generation.
        let p = plan(3, rolling(2), &agents);
        assert_eq!(p.state, RolloutState::Progressing);
        assert_eq!(p.budget, 2);
    }

    #[test]
    fn offline_agents_do_not_block_and_all_pushes_everyone() {
        let mut off = view("a", 2, 1, None);
        off.connected = false;
        let agents = [off, view("b", 2, 2, None), view("c", 1, 1, None)];
        let p = plan(2, rolling(1), &agents);
        assert_eq!((p.candidates.clone(), p.budget), (vec!["c".to_string()], 1));
        let all = Strategy {
            kind: StrategyKind::All,
            max_unavailable: 0,
            gate: None,
        };
        let agents = [view("a", 0, 0, None), view("b", 0, 0, None)];
        assert_eq!(plan(1, all, &agents).budget, 2);
        assert_eq!(plan(1, all, &[]).state, RolloutState::Complete);
    }

    fn gated(canary: u32, batch: u32) -> Strategy {
        Strategy {
            kind: StrategyKind::Rolling,
            max_unavailable: batch,
            gate: Some(crate::store::Gate {
                canary,
                window_secs: 60,
                max_failure_permille: 0,
                auto_rollback: false,
            }),
        }
    }

    #[test]
    fn gated_rollouts_go_canary_first_then_batches_after_each_window() {
        let s = gated(1, 2);
        let fresh = [
            view("a", 1, 1, None),
            view("b", 1, 1, None),
            view("c", 1, 1, None),
            view("d", 1, 1, None),
        ];
        let p = plan_gated(2, s, &fresh, &Verdict::Pass);
        assert_eq!((p.budget, p.state), (1, RolloutState::Progressing));
        // The canary is in flight: nothing more.
        let canary_pushed = [
            view("a", 2, 1, None),
            view("b", 1, 1, None),
            view("c", 1, 1, None),
            view("d", 1, 1, None),
        ];
        assert_eq!(plan_gated(2, s, &canary_pushed, &Verdict::Pass).budget, 0);
        // Applied, in its window: held.
        let canary_applied = [
            view("a", 2, 2, None),
            view("b", 1, 1, None),
            view("c", 1, 1, None),
            view("d", 1, 1, None),
        ];
        let p = plan_gated(2, s, &canary_applied, &Verdict::Hold);
        assert_eq!((p.budget, p.state), (0, RolloutState::Progressing));
        // Window passed: a batch of max_unavailable.
        assert_eq!(plan_gated(2, s, &canary_applied, &Verdict::Pass).budget, 2);
        // The gate halts: nobody else, halted with its reason.
        let p = plan_gated(2, s, &canary_applied, &Verdict::Halt("bad".into()));
        assert_eq!(
            (p.budget, p.state, p.reason.as_str()),
            (0, RolloutState::Halted, "bad")
        );
        // Everyone applied: complete only once the last window passed.
        let done = [
            view("a", 2, 2, None),
            view("b", 2, 2, None),
            view("c", 2, 2, None),
            view("d", 2, 2, None),
        ];
        assert_eq!(
            plan_gated(2, s, &done, &Verdict::Hold).state,
            RolloutState::Progressing
        );
        assert_eq!(
            plan_gated(2, s, &done, &Verdict::Pass).state,
            RolloutState::Complete
        );
        // Ungated strategies ignore the verdict.
        assert_eq!(plan_gated(2, rolling(2), &fresh, &Verdict::Hold).budget, 2);
    }

    #[test]
    fn default_max_unavailable_is_a_quarter() {
        assert_eq!(default_max_unavailable(0), 1);
        assert_eq!(default_max_unavailable(3), 1);
        assert_eq!(default_max_unavailable(5), 2);
        assert_eq!(default_max_unavailable(8), 2);
    }
}
