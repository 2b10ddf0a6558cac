//! The health gate of a rollout, pure: given what the agents that run the new generation
//! did since they applied it, may the next batch go, must the rollout wait, or halt?
//!
//! Rules (`drover runner apply --canary N --gate-window DUR --max-failure-ratio F
//! [--auto-rollback]`):
//! - Batches go one at a time: the first is `canary` agents, the next ones
//!   `max_unavailable`. A batch is pushed only when every agent pushed so far applied the
//!   generation and the newest of them applied it at least `window` ago.
//! - Watched: every agent that applied the generation, from the moment the leader saw it
//!   applied (a new leader starts the window again: it never passes a batch early).
//! - The rollout halts when, among the watched agents, the share of jobs that ended since
//!   they applied with a system-level failure ([`SYSTEM_FAILURES`]) is above the ratio
//!   (default 0: any such job halts), or a runner unit is in backoff, or an agent lost its
//!   session. A script failure is the job's own and never counts.
//! - The last batch is watched too: a gated rollout is complete only after its window.

use time::OffsetDateTime;

use crate::store::Gate;

/// Default `--gate-window`: 2 minutes.
pub const DEFAULT_WINDOW_SECS: u64 = 120;
/// Longest `--gate-window`: one day.
pub const MAX_WINDOW_SECS: u64 = 86_400;

/// GitLab failure reasons that mean the runner, not the job, failed: what a bad runner
/// spec (an image, a volume, the helper config) produces.
pub const SYSTEM_FAILURES: &[&str] = &[
    "runner_system_failure",
    "image_pull_failure",
    "api_failure",
    "unknown_failure",
];

/// What one watched agent did since it applied the generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Watched {
    /// The agent.
    pub agent_id: String,
    /// When the leader saw it applied.
    pub applied_at: Option<OffsetDateTime>,
    /// Jobs that finished since then.
    pub jobs_finished: u32,
    /// Of which ended with a system-level failure.
    pub system_failures: u32,
    /// Its runner units in backoff.
    pub backoff: Vec<String>,
    /// It has a session.
    pub connected: bool,
}

/// The gate's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The watched batch is in its window: nothing more is pushed yet.
    Hold,
    /// The window passed cleanly (or nothing is watched yet): the next batch may go.
    Pass,
    /// Halt the rollout, with the reason.
    Halt(String),
}

/// Judges the watched agents at `now`.
pub fn judge(gate: &Gate, now: OffsetDateTime, watched: &[Watched]) -> Verdict {
    let mut watched: Vec<&Watched> = watched.iter().collect();
    watched.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
    for w in &watched {
        if !w.connected {
            return Verdict::Halt(format!(
                "health gate: agent {} lost its session after applying the generation",
                w.agent_id
            ));
        }
        if let Some(unit) = w.backoff.first() {
            return Verdict::Halt(format!(
                "health gate: agent {}: runner {unit:?} is in backoff",
                w.agent_id
            ));
        }
    }
    let failures: u64 = watched.iter().map(|w| u64::from(w.system_failures)).sum();
    let finished: u64 = watched.iter().map(|w| u64::from(w.jobs_finished)).sum();
    // failures / finished > permille / 1000, in integers.
    if failures > 0 && failures * 1000 > u64::from(gate.max_failure_permille) * finished.max(1) {
        let agents: Vec<&str> = watched
            .iter()
            .filter(|w| w.system_failures > 0)
            .map(|w| w.agent_id.as_str())
            .collect();
        return Verdict::Halt(format!(
            "health gate: {failures} of {finished} jobs ended with a system failure ({}) on agent {}; at most {} allowed",
            SYSTEM_FAILURES.join(", "),
            agents.join(", "),
            ratio_text(gate.max_failure_permille)
        ));
    }
    let newest = watched.iter().filter_map(|w| w.applied_at).max();
    match newest {
        Some(t) if now < t + time::Duration::seconds(window_i64(gate.window_secs)) => Verdict::Hold,
        _ => Verdict::Pass,
    }
}

fn window_i64(secs: u64) -> i64 {
    i64::try_from(secs.min(MAX_WINDOW_SECS)).unwrap_or(i64::MAX)
}

/// A ratio in thousandths as people write it (`0`, `0.25`).
pub fn ratio_text(permille: u32) -> String {
    let whole = permille / 1000;
    let frac = permille % 1000;
    if frac == 0 {
        whole.to_string()
    } else {
        format!("{whole}.{frac:03}")
            .trim_end_matches('0')
            .to_string()
    }
}

/// Whether a job's failure reason is a system-level one.
pub fn is_system_failure(reason: &str) -> bool {
    SYSTEM_FAILURES.contains(&reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(permille: u32) -> Gate {
        Gate {
            canary: 1,
            window_secs: 10,
            max_failure_permille: permille,
            auto_rollback: false,
        }
    }

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(secs)
    }

    fn watched(id: &str, at: i64, finished: u32, failed: u32) -> Watched {
        Watched {
            agent_id: id.into(),
            applied_at: Some(t(at)),
            jobs_finished: finished,
            system_failures: failed,
            backoff: Vec::new(),
            connected: true,
        }
    }

    #[test]
    fn a_clean_batch_holds_for_the_window_then_passes() {
        let g = gate(0);
        assert_eq!(judge(&g, t(0), &[]), Verdict::Pass);
        let w = [watched("a", 100, 3, 0), watched("b", 105, 0, 0)];
        // The window runs from the newest apply (b at 105).
        assert_eq!(judge(&g, t(110), &w), Verdict::Hold);
        assert_eq!(judge(&g, t(114), &w), Verdict::Hold);
        assert_eq!(judge(&g, t(115), &w), Verdict::Pass);
    }

    #[test]
    fn a_system_failure_halts_above_the_ratio() {
        let w = [watched("a", 100, 1, 1)];
        let v = judge(&gate(0), t(101), &w);
        let Verdict::Halt(reason) = v else {
            panic!("{v:?}")
        };
        assert!(
            reason.contains("1 of 1 jobs ended with a system failure")
                && reason.contains("agent a"),
            "{reason}"
        );
        // 1 of 4 = 0.25: not above 0.25, above 0.2.
        let w = [watched("a", 100, 4, 1)];
        assert_eq!(judge(&gate(250), t(120), &w), Verdict::Pass);
        assert!(
            matches!(judge(&gate(200), t(120), &w), Verdict::Halt(r) if r.contains("at most 0.2 allowed"))
        );
    }

    #[test]
    fn backoff_and_a_lost_session_halt() {
        let mut w = watched("a", 100, 0, 0);
        w.backoff = vec!["edge".into()];
        assert_eq!(
            judge(&gate(1000), t(200), &[w]),
            Verdict::Halt("health gate: agent a: runner \"edge\" is in backoff".into())
        );
        let mut w = watched("b", 100, 0, 0);
        w.connected = false;
        assert!(
            matches!(judge(&gate(1000), t(200), &[w]), Verdict::Halt(r) if r.contains("agent b lost its session"))
        );
    }

    #[test]
    fn ratios_read_as_written() {
        assert_eq!(ratio_text(0), "0");
        assert_eq!(ratio_text(250), "0.25");
        assert_eq!(ratio_text(1000), "1");
        assert_eq!(ratio_text(5), "0.005");
        assert!(is_system_failure("runner_system_failure"));
        assert!(!is_system_failure("script_failure"));
    }
}
