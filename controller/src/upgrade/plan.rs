//! The upgrade planner, a pure function: from an upgrade, the agents it is for and their
//! progress, what to write, whom to send the upgrade to and whether the upgrade ends.
//! Like a spec rollout: one canary first; once an agent is healthy on the new binary, up
//! to `max_unavailable` at once; a failed agent (rolled back, refused, timed out) halts it.

use std::collections::{BTreeMap, HashSet};

use time::{Duration, OffsetDateTime};

use super::step::Step;
use crate::store::upgrades::{AgentUpgrade, UpgradeRecord, UpgradeState};

/// Time an agent gets beyond the health timeout to report (drain, download, report
/// delay) before the controller counts it timed out.
pub const GRACE: Duration = Duration::minutes(10);

/// An agent an upgrade is for.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub id: String,
    pub arch: String,
    /// The version it reports now.
    pub version: String,
}

/// What a pass decided.
#[derive(Debug, Default, PartialEq)]
pub struct Decision {
    /// Progress rows to write.
    pub writes: Vec<AgentUpgrade>,
    /// Agents to send the upgrade to now.
    pub send: Vec<String>,
    /// The upgrade's new state and reason.
    pub end: Option<(UpgradeState, String)>,
}

/// One pass. `versions` is the upgrade's version per architecture; `live` the connected
/// agents (only they are sent the upgrade); `progress` by agent id.
pub fn plan(
    up: &UpgradeRecord,
    versions: &BTreeMap<String, String>,
    agents: &[Candidate],
    live: &HashSet<String>,
    progress: &BTreeMap<String, AgentUpgrade>,
    now: OffsetDateTime,
) -> Decision {
    let mut d = Decision::default();
    let row = |agent: &str, step: Step, detail: String| AgentUpgrade {
        upgrade_id: up.id,
        agent_id: agent.to_string(),
        state: step.as_str().to_string(),
        detail,
        since: now,
    };
    let timeout = Duration::seconds(i64::try_from(up.health_timeout_seconds).unwrap_or(i64::MAX))
        .saturating_add(GRACE);
    let mut in_flight = 0usize;
    let mut upgraded = 0usize;
    let mut done = 0usize;
    let mut waiting = Vec::new();
    for a in agents {
        let step = progress
            .get(&a.id)
            .and_then(|p| Step::parse(&p.state).map(|s| (s, p)));
        match step {
            Some((s, p)) if s.failed() => {
                d.end = Some((
                    UpgradeState::Halted,
                    format!("agent {} {}: {}", a.id, s, p.detail),
                ));
                return d;
            }
            Some((Step::Healthy, p)) => {
                done += 1;
                if p.detail != already(&a.version) {
                    upgraded += 1;
                }
            }
            Some((s, p)) if s.in_flight() => {
                if now - p.since > timeout {
                    let why = format!(
                        "no healthy report within {}s of {s}",
                        timeout.whole_seconds()
                    );
                    d.writes.push(row(&a.id, Step::TimedOut, why.clone()));
                    d.end = Some((
                        UpgradeState::Halted,
                        format!("agent {} timed-out: {why}", a.id),
                    ));
                    return d;
                }
                in_flight += 1;
            }
            _ => match versions.get(&a.arch) {
                Some(v) if *v == a.version => {
                    d.writes.push(row(&a.id, Step::Healthy, already(v)));
                    done += 1;
                }
                Some(_) => waiting.push(a),
                None => {
                    let why = format!("no binary for architecture {:?}", a.arch);
                    d.writes.push(row(&a.id, Step::Refused, why.clone()));
                    d.end = Some((
                        UpgradeState::Halted,
                        format!("agent {} refused: {why}", a.id),
                    ));
                    return d;
                }
            },
        }
    }
    if done == agents.len() {
        d.end = Some((UpgradeState::Complete, String::new()));
        return d;
    }
    // The canary: one agent until one is healthy on the new binary.
    let width = if upgraded == 0 {
        1
    } else {
        usize::try_from(up.max_unavailable.max(1)).unwrap_or(1)
    };
    for a in waiting
        .into_iter()
        .filter(|a| live.contains(&a.id))
        .take(width.saturating_sub(in_flight))
    {
        d.writes.push(row(&a.id, Step::Pending, "sent".into()));
        d.send.push(a.id.clone());
    }
    d
}

/// The detail of an agent that already ran the version.
fn already(version: &str) -> String {
    format!("already on {version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn up(max_unavailable: u32) -> UpgradeRecord {
        UpgradeRecord {
            id: 3,
            created_at: now(),
            selector: BTreeMap::new(),
            max_unavailable,
            health_timeout_seconds: 60,
            binaries: BTreeMap::from([("x86_64".into(), "ab".into())]),
            state: UpgradeState::Running,
            reason: String::new(),
        }
    }

    fn agents(n: usize) -> Vec<Candidate> {
        (0..n)
            .map(|i| Candidate {
                id: format!("a{i}"),
                arch: "x86_64".into(),
                version: "1.0".into(),
            })
            .collect()
    }

    fn versions() -> BTreeMap<String, String> {
        BTreeMap::from([("x86_64".into(), "2.0".into())])
    }

    fn live(a: &[Candidate]) -> HashSet<String> {
        a.iter().map(|a| a.id.clone()).collect()
    }

    fn at(agent: &str, step: Step, detail: &str, since: OffsetDateTime) -> (String, AgentUpgrade) {
        (
            agent.to_string(),
            AgentUpgrade {
                upgrade_id: 3,
                agent_id: agent.into(),
                state: step.as_str().into(),
                detail: detail.into(),
                since,
            },
        )
    }

    #[test]
    fn a_canary_first_then_batches_then_complete() {
        let a = agents(5);
        let d = plan(&up(2), &versions(), &a, &live(&a), &BTreeMap::new(), now());
        assert_eq!(d.send, vec!["a0"]);
        assert_eq!(d.writes[0].state, "pending");
        // The canary in flight: nobody else.
        let p = BTreeMap::from([at("a0", Step::Downloading, "40%", now())]);
        let d = plan(&up(2), &versions(), &a, &live(&a), &p, now());
        assert!(d.send.is_empty() && d.end.is_none(), "{d:?}");
        // The canary healthy: two at once.
        let p = BTreeMap::from([at("a0", Step::Healthy, "2.0", now())]);
        let d = plan(&up(2), &versions(), &a, &live(&a), &p, now());
        assert_eq!(d.send, vec!["a1", "a2"]);
        let p: BTreeMap<_, _> = a
            .iter()
            .map(|x| at(&x.id, Step::Healthy, "2.0", now()))
            .collect();
        let d = plan(&up(2), &versions(), &a, &live(&a), &p, now());
        assert_eq!(d.end, Some((UpgradeState::Complete, String::new())));
    }

    #[test]
    fn agents_on_the_version_count_as_done_and_offline_ones_wait() {
        let mut a = agents(2);
        a[0].version = "2.0".into();
        let d = plan(
            &up(1),
            &versions(),
            &a,
            &HashSet::new(),
            &BTreeMap::new(),
            now(),
        );
        assert_eq!(d.writes.len(), 1);
        assert_eq!(
            (d.writes[0].state.as_str(), d.writes[0].detail.as_str()),
            ("healthy", "already on 2.0")
        );
        assert!(d.send.is_empty(), "a1 is offline");
        assert_eq!(d.end, None);
    }

    #[test]
    fn a_rollback_a_refusal_a_timeout_or_a_missing_arch_halts() {
        let a = agents(3);
        let p = BTreeMap::from([at("a0", Step::RolledBack, "exited at start", now())]);
        let d = plan(&up(2), &versions(), &a, &live(&a), &p, now());
        assert_eq!(
            d.end,
            Some((
                UpgradeState::Halted,
                "agent a0 rolled-back: exited at start".into()
            ))
        );
        assert!(d.send.is_empty());
        let old = now() - Duration::seconds(60) - GRACE - Duration::seconds(1);
        let p = BTreeMap::from([at("a0", Step::Switching, "", old)]);
        let d = plan(&up(2), &versions(), &a, &live(&a), &p, now());
        assert_eq!(d.writes[0].state, "timed-out");
        assert!(matches!(d.end, Some((UpgradeState::Halted, ref r)) if r.contains("a0 timed-out")));
        let mut arm = agents(1);
        arm[0].arch = "aarch64".into();
        let d = plan(
            &up(2),
            &versions(),
            &arm,
            &live(&arm),
            &BTreeMap::new(),
            now(),
        );
        assert!(matches!(d.end, Some((UpgradeState::Halted, ref r)) if r.contains("aarch64")));
    }
}
