//! `drover agent drain` and `drover agent undrain` on the controller (`DrainAgents`,
//! `UndrainAgents`), and the drain command a session sends.
//!
//! The store's drain (`DrainStore`) is the source of truth of what was asked: it is
//! written first (all or nothing), then every named agent's session, on whichever replica
//! holds it, is kicked (`Sessions::kick`, fanned out by `NOTIFY`); a session looks at the
//! stored drain on every kick and sends `Drain` or `Undrain` when it differs from what it
//! sent last. A new session sends the agent's state at once (`Drain` with the absolute
//! deadline kept, or `Undrain`), so a drain or undrain given while the agent was away
//! reaches it when it comes back.

use std::collections::BTreeMap;

use time::{Duration, OffsetDateTime};
use tonic::Status;

use super::state::AppState;
use crate::fleet::selector;
use crate::store::{self, AgentRecord, DrainRecord};
use crate::timefmt;
use crate::tokens::MAX_DURATION;

/// Which agents a drain or undrain names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// One agent by id.
    One(String),
    /// Every agent (not deleted) whose labels match every entry.
    Matching(BTreeMap<String, String>),
}

/// Why a selection names no agent; nothing is changed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SelectionError {
    /// Both an id and a selector.
    #[error("give an agent id or --selector, not both")]
    Both,
    /// Neither.
    #[error("give an agent id or at least one --selector k=v")]
    Neither,
    /// A selector entry that is not a valid label.
    #[error("selector: {0}")]
    BadSelector(String),
    /// No agent (not deleted) has this id.
    #[error("agent {0:?} not found (or deleted): see `drover agents`")]
    Unknown(String),
    /// The selector matches no agent.
    #[error("no agent matches selector {0}: nothing changed (see `drover agents`)")]
    NoMatch(String),
}

impl From<SelectionError> for Status {
    fn from(e: SelectionError) -> Status {
        match e {
            SelectionError::Unknown(_) | SelectionError::NoMatch(_) => {
                Status::not_found(e.to_string())
            }
            _ => Status::invalid_argument(e.to_string()),
        }
    }
}

/// The agents `sel` names among `agents`; deleted agents are never named. An id that
/// names none, or a selector matching none, is refused.
pub fn choose<'a>(
    agents: &'a [AgentRecord],
    sel: &Selection,
) -> Result<Vec<&'a AgentRecord>, SelectionError> {
    let live = agents.iter().filter(|a| a.revoked_at.is_none());
    match sel {
        Selection::One(id) => live
            .filter(|a| &a.id == id)
            .map(|a| vec![a])
            .next()
            .ok_or_else(|| SelectionError::Unknown(id.clone())),
        Selection::Matching(m) => {
            let chosen: Vec<&AgentRecord> =
                live.filter(|a| selector::matches(m, &a.labels)).collect();
            if chosen.is_empty() {
                let text: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
                return Err(SelectionError::NoMatch(text.join(",")));
            }
            Ok(chosen)
        }
    }
}

/// The absolute deadline of a drain asked for at `now` with `seconds` (0 = none).
pub fn deadline(now: OffsetDateTime, seconds: u64) -> Result<Option<OffsetDateTime>, String> {
    if seconds == 0 {
        return Ok(None);
    }
    i64::try_from(seconds)
        .ok()
        .map(Duration::seconds)
        .filter(|d| *d <= MAX_DURATION)
        .and_then(|d| now.checked_add(d))
        .map(Some)
        .ok_or_else(|| format!("deadline_seconds {seconds} is too long (at most 36500d)"))
}

/// What a session sent last about the drain: `None` before it sent anything.
pub type Sent = Option<Option<DrainRecord>>;

/// The drain state a session must send now (`Some(None)`: undrain), given the agent's
/// stored drain (read with its session's batch, `session_reads.rs`), if it differs from
/// `sent`; `sent` is updated as if it was sent.
pub fn due(stored: Option<DrainRecord>, sent: &mut Sent) -> Option<Option<DrainRecord>> {
    if sent.as_ref() == Some(&stored) {
        return None;
    }
    *sent = Some(stored.clone());
    Some(stored)
}

async fn chosen(state: &AppState, sel: &Selection) -> Result<Vec<AgentRecord>, Status> {
    let agents = store::blocking(&state.store, |s| s.list_agents()).await?;
    Ok(choose(&agents, sel)?.into_iter().cloned().collect())
}

/// One agent a drain or undrain applied to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drained {
    /// The agent.
    pub agent_id: String,
    /// Its host name.
    pub hostname: String,
    /// A session is open: it was told now (else on its next session).
    pub connected: bool,
    /// Drain: when running jobs are canceled.
    pub deadline_at: Option<OffsetDateTime>,
    /// Undrain: `false` when it was not drained.
    pub changed: bool,
}

fn answer(
    state: &AppState,
    a: &AgentRecord,
    deadline_at: Option<OffsetDateTime>,
    changed: bool,
) -> Drained {
    Drained {
        agent_id: a.id.clone(),
        hostname: a.facts.hostname.clone(),
        connected: state.sessions.is_connected(&a.id)
            || state.health.leases.get(&a.id).is_some_and(|l| l.connected),
        deadline_at,
        changed,
    }
}

/// `DrainAgents`: stores the drain of every chosen agent (all or nothing), tells their
/// sessions, records an `agent-drained` event each.
pub async fn drain(
    state: &AppState,
    admin: &str,
    sel: &Selection,
    deadline_seconds: u64,
) -> Result<Vec<Drained>, Status> {
    let now = OffsetDateTime::now_utc();
    let now = now.replace_nanosecond(0).unwrap_or(now);
    let deadline_at = deadline(now, deadline_seconds).map_err(Status::invalid_argument)?;
    let agents = chosen(state, sel).await?;
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    let write = ids.clone();
    store::blocking(&state.store, move |s| {
        s.drain_agents(&write, now, deadline_at)
    })
    .await?;
    let until = deadline_at.map_or_else(
        || "running jobs finish".to_string(),
        |d| format!("running jobs canceled at {}", timefmt::rfc3339(d)),
    );
    for id in &ids {
        state.sessions.kick(id);
        state.health.agent_event(
            id,
            "agent-drained",
            "",
            format!("drained by admin {admin}: no new jobs, {until}"),
        );
    }
    tracing::info!(agents = ?ids, %admin, deadline = ?deadline_at.map(timefmt::rfc3339), "agents drained");
    Ok(agents
        .iter()
        .map(|a| answer(state, a, deadline_at, true))
        .collect())
}

/// `UndrainAgents`: ends the drain of every chosen agent (all or nothing), tells their
/// sessions, records an `agent-undrained` event for each that was drained.
pub async fn undrain(
    state: &AppState,
    admin: &str,
    sel: &Selection,
) -> Result<Vec<Drained>, Status> {
    let agents = chosen(state, sel).await?;
    let ids: Vec<String> = agents.iter().map(|a| a.id.clone()).collect();
    let write = ids.clone();
    let undrained = store::blocking(&state.store, move |s| s.undrain_agents(&write)).await?;
    for id in &ids {
        // Kicked even when not drained here: the agent may still drain from an earlier
        // session (its own drain.json), and the session sends what the store says.
        state.sessions.kick(id);
    }
    for id in &undrained {
        state.health.agent_event(
            id,
            "agent-undrained",
            "",
            format!("undrained by admin {admin}: taking jobs again"),
        );
    }
    tracing::info!(agents = ?undrained, %admin, "agents undrained");
    Ok(agents
        .iter()
        .map(|a| answer(state, a, None, undrained.contains(&a.id)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Facts;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn agent(id: &str, site: &str, revoked: bool) -> AgentRecord {
        AgentRecord {
            id: id.into(),
            labels: BTreeMap::from([("site".to_string(), site.to_string())]),
            facts: Facts::default(),
            enrolled_at: t0(),
            last_seen: None,
            cert_serial: "01".into(),
            cert_not_after: t0(),
            revoked_at: revoked.then(t0),
            applied_generation: 0,
        }
    }

    #[test]
    fn choose_skips_deleted_agents_and_refuses_an_empty_choice() {
        let agents = [
            agent("a1", "lab", false),
            agent("a2", "lab", true),
            agent("a3", "lab", false),
            agent("b1", "edge", false),
        ];
        let ids = |v: Vec<&AgentRecord>| v.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
        let lab = Selection::Matching(BTreeMap::from([("site".into(), "lab".into())]));
        assert_eq!(ids(choose(&agents, &lab).unwrap()), ["a1", "a3"]);
        assert_eq!(
            ids(choose(&agents, &Selection::One("b1".into())).unwrap()),
            ["b1"]
        );
        assert_eq!(
            choose(&agents, &Selection::One("a2".into())).unwrap_err(),
            SelectionError::Unknown("a2".into())
        );
        let none = Selection::Matching(BTreeMap::from([
            ("site".into(), "lab".into()),
            ("arch".into(), "arm64".into()),
        ]));
        let err = choose(&agents, &none).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no agent matches selector arch=arm64,site=lab: nothing changed (see `drover agents`)"
        );
        assert_eq!(Status::from(err).code(), tonic::Code::NotFound);
    }

    #[test]
    fn deadlines_are_absolute_and_bounded() {
        assert_eq!(deadline(t0(), 0), Ok(None));
        assert_eq!(deadline(t0(), 90), Ok(Some(t0() + Duration::seconds(90))));
        assert!(deadline(t0(), u64::MAX).is_err());
        assert!(deadline(t0(), 36_501 * 86_400).is_err());
    }
}
