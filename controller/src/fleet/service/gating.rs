//! Health-gated rollouts on the leader: what the agents that applied the newest generation
//! did since (jobs from the store, units from their heartbeats, sessions), judged by
//! `crate::fleet::gate`; and the automatic undo of a halted gated rollout.

use std::collections::HashMap;

use time::OffsetDateTime;

use super::{Fleet, FleetError};
use crate::fleet::gate::{self, Verdict, Watched};
use crate::fleet::rollout::AgentView;
use crate::health::report::UnitState;
use crate::store::{self, Gate, GenerationRecord, JobFilter, RolloutState, Strategy, StrategyKind};

/// Most jobs read for one verdict (the newest first): far more than a batch finishes in a
/// window.
const JOBS_READ: usize = 10_000;

/// How many earlier generations an auto-rollback looks through for one that did not halt.
const ROLLBACK_LOOKBACK: u64 = 100;

impl Fleet {
    /// The gate's verdict on generation `generation`'s agents at this pass. Agents are
    /// watched from the first pass that saw them applied (kept in memory by the leader: a
    /// new leader starts their window again).
    pub(super) async fn gate_verdict(
        &self,
        gate: &Gate,
        generation: u64,
        views: &[AgentView],
    ) -> Result<Verdict, FleetError> {
        let t = self.gate_clock.now();
        let applied: Vec<&AgentView> = views
            .iter()
            .filter(|v| {
                v.target >= generation && v.ack_generation >= generation && v.ack_error.is_none()
            })
            .collect();
        let since: HashMap<String, OffsetDateTime> = {
            let mut seen = self.gate_seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.retain(|_, (g, _)| *g == generation);
            applied
                .iter()
                .map(|v| {
                    let at = seen.entry(v.id.clone()).or_insert((generation, t)).1;
                    (v.id.clone(), at)
                })
                .collect()
        };
        let Some(earliest) = since.values().min().copied() else {
            return Ok(gate::judge(gate, t, &[]));
        };
        let jobs = store::blocking(&self.store, move |s| {
            s.list_jobs(&JobFilter {
                since: Some(earliest),
                limit: JOBS_READ,
                ..JobFilter::default()
            })
        })
        .await?;
        let runtime = self.runtime();
        let watched: Vec<Watched> = applied
            .iter()
            .map(|v| {
                let from = since.get(&v.id).copied();
                let mine = jobs.iter().filter(|j| {
                    j.agent_id == v.id && j.finished() && from.is_some_and(|f| j.updated_at >= f)
                });
                let (mut finished, mut failed) = (0u32, 0u32);
                for j in mine {
                    finished = finished.saturating_add(1);
                    if j.state == "failed" && gate::is_system_failure(&j.failure_reason) {
                        failed = failed.saturating_add(1);
                    }
                }
                let backoff = runtime
                    .get(&v.id)
                    .map(|rt| {
                        rt.runners
                            .iter()
                            .filter(|r| r.state == Some(UnitState::Backoff))
                            .map(|r| r.name.clone())
                            .collect()
                    })
                    .unwrap_or_default();
                Watched {
                    agent_id: v.id.clone(),
                    applied_at: from,
                    jobs_finished: finished,
                    system_failures: failed,
                    backoff,
                    connected: v.connected,
                }
            })
            .collect();
        drop(runtime);
        Ok(gate::judge(gate, t, &watched))
    }

    /// Undoes the halted gated rollout of `halted`: a new generation with the runners of
    /// the newest earlier generation whose rollout did not halt (what the fleet ran before;
    /// `rollout undo` takes the one just before), pushed to every agent at once and
    /// ungated. The caller holds `lock`. `false` when there is nothing to go back to.
    pub(super) async fn auto_rollback(
        &self,
        halted: &GenerationRecord,
        reason: &str,
    ) -> Result<bool, FleetError> {
        let newest = halted.generation;
        let found = store::blocking(&self.store, move |s| {
            let mut g = newest.saturating_sub(1);
            let oldest = newest.saturating_sub(ROLLBACK_LOOKBACK).max(1);
            while g >= oldest {
                match s.get_generation(g)? {
                    Some(r) if r.state != RolloutState::Halted => return Ok(Some(r)),
                    _ => g -= 1,
                }
            }
            Ok(None)
        })
        .await?;
        let Some(g) = found else {
            tracing::warn!(
                generation = halted.generation,
                "auto-rollback: no earlier generation that did not halt"
            );
            return Ok(false);
        };
        let previous = g.generation;
        let runners = self.runners_of(&g)?;
        let strategy = Strategy {
            kind: StrategyKind::All,
            max_unavailable: halted.strategy.max_unavailable,
            gate: None,
        };
        let (generation, _) = self
            .add_generation_locked(
                runners,
                Some(strategy),
                format!(
                    "auto-rollback of generation {}: runners of generation {previous} ({reason})",
                    halted.generation
                ),
                true,
            )
            .await?;
        tracing::warn!(
            halted = halted.generation,
            generation,
            "auto-rollback: runners of generation {previous}"
        );
        Ok(true)
    }
}
