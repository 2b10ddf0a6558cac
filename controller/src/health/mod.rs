//! Fleet health: leases, their evaluation, and the events the controller records.
//!
//! - [`clock`]: the [`Clock`] seam ([`SystemClock`], [`FakeClock`]).
//! - [`evaluate`]: the pure [`evaluate::evaluate`] (state and reasons) and [`Thresholds`].
//! - [`leases`]: the in-memory lease table fed by the session stream.
//! - [`report`]: what an agent reports in a heartbeat (host, runner units).
//! - [`Health`] (here): the table, the store, buffered events and the periodic work (sweep
//!   every second; last contacts and event retention every [`FLUSH_INTERVAL`]).
//!
//! Invariant: a heartbeat writes nothing to the store by itself; only what must be durable
//! (hello facts, acks, IP and generation changes) is written at once.

pub mod clock;
pub mod evaluate;
pub mod leases;
pub mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, FakeClock, SystemClock};
pub use evaluate::{Evaluation, State, Thresholds};
pub use leases::Leases;

use crate::store::{
    self, AgentRecord, AgentRollout, EventRecord, Retention, RolloutState, Store, StoreError,
};

/// How often last contacts are written and old events pruned.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often leases are evaluated and buffered events written.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One agent as every read-only surface shows it: stored facts plus the live lease.
#[derive(Debug, Clone)]
pub struct AgentView {
    /// The stored agent.
    pub record: AgentRecord,
    /// State and reasons, evaluated now.
    pub eval: Evaluation,
    /// A session is open.
    pub connected: bool,
    /// Last contact (live).
    pub last_seen: Option<OffsetDateTime>,
    /// When the last heartbeat arrived (since the controller started).
    pub last_heartbeat: Option<OffsetDateTime>,
    /// The generation it runs.
    pub applied_generation: u64,
    /// The generation pushed to it.
    pub target_generation: u64,
    /// Its IP addresses.
    pub ips: Vec<String>,
    /// Host health of the last heartbeat.
    pub host: Option<report::HostHealth>,
}

/// Leases, events and their periodic work.
pub struct Health {
    /// The lease table.
    pub leases: Leases,
    /// Limits of `healthy`.
    pub thresholds: Thresholds,
    /// How many events are kept.
    pub retention: Retention,
    store: Arc<dyn Store>,
    pending: Mutex<Vec<EventRecord>>,
    rollout: Mutex<Option<(u64, RolloutState)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Health")
    }
}

impl Health {
    /// Leases for every stored agent, read through `clock`.
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        thresholds: Thresholds,
    ) -> Result<Health, StoreError> {
        let leases = Leases::new(clock);
        leases.load(&store.list_agents()?);
        let rollout = store.latest_generation()?.map(|g| (g.generation, g.state));
        Ok(Health {
            leases,
            thresholds,
            retention: Retention::default(),
            store,
            pending: Mutex::new(Vec::new()),
            rollout: Mutex::new(rollout),
        })
    }

    /// Buffers an event (written within a second); `at` defaults to now.
    pub fn record(&self, mut e: EventRecord) {
        if e.at.is_none() {
            e.at = Some(
                self.leases
                    .now()
                    .replace_nanosecond(0)
                    .unwrap_or(self.leases.now()),
            );
        }
        e.message = e.message.chars().take(1000).collect();
        tracing::debug!(agent = %e.agent_id, kind = %e.kind, message = %e.message, "event");
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(e);
    }

    /// Buffers an event about `agent_id`.
    pub fn agent_event(&self, agent_id: &str, kind: &str, runner: &str, message: String) {
        self.record(EventRecord {
            agent_id: agent_id.to_string(),
            kind: kind.to_string(),
            runner: runner.to_string(),
            message,
            ..EventRecord::default()
        });
    }

    /// Writes buffered events in one transaction.
    pub async fn flush_events(&self) {
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        if let Err(e) = store::blocking(&self.store, move |s| s.add_events(&batch)).await {
            tracing::warn!(error = %e, events = n, "store events");
        }
    }

    /// Writes changed last contacts in one transaction and prunes old events.
    pub async fn flush_seen(&self) {
        let seen = self.leases.take_seen();
        let n = seen.len();
        if !seen.is_empty()
            && let Err(e) = store::blocking(&self.store, move |s| s.agents_seen(&seen)).await
        {
            tracing::warn!(error = %e, agents = n, "store last seen");
        }
        let retention = self.retention;
        if let Err(e) = store::blocking(&self.store, move |s| s.prune_events(retention)).await {
            tracing::warn!(error = %e, "prune events");
        }
    }

    async fn rollouts(&self) -> HashMap<String, AgentRollout> {
        match store::blocking(&self.store, |s| s.agent_rollouts()).await {
            Ok(v) => v.into_iter().map(|r| (r.agent_id.clone(), r)).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "read rollout progress");
                HashMap::new()
            }
        }
    }

    /// Evaluates every lease, records state changes and rollout state changes, and writes
    /// buffered events.
    pub async fn sweep(&self) {
        let latest = store::blocking(&self.store, |s| s.latest_generation()).await;
        // Without any generation no agent has a target: skip reading rollout progress.
        let rollouts = match &latest {
            Ok(None) => HashMap::new(),
            _ => self.rollouts().await,
        };
        for tr in self.leases.sweep(&rollouts, &self.thresholds) {
            let to = tr.to.state;
            let why = if tr.to.reasons.is_empty() {
                String::new()
            } else {
                format!(": {}", tr.to.reasons.join("; "))
            };
            tracing::info!(agent = %tr.agent_id, from = %tr.from, to = %to, reasons = ?tr.to.reasons, "agent state changed");
            self.agent_event(
                &tr.agent_id,
                "agent-state",
                "",
                format!("{} -> {to}{why}", tr.from),
            );
        }
        match latest {
            Ok(Some(g)) => {
                let mut last = self.rollout.lock().unwrap_or_else(|p| p.into_inner());
                if *last != Some((g.generation, g.state)) {
                    let created = last.is_none_or(|(n, _)| n != g.generation);
                    *last = Some((g.generation, g.state));
                    drop(last);
                    let msg = match (created, g.state) {
                        (true, _) => format!(
                            "generation {} created{}",
                            g.generation,
                            if g.reason.is_empty() {
                                String::new()
                            } else {
                                format!(" ({})", g.reason)
                            }
                        ),
                        (false, RolloutState::Halted) => {
                            format!("generation {} halted: {}", g.generation, g.reason)
                        }
                        (false, s) => format!("generation {} {}", g.generation, s.as_str()),
                    };
                    self.record(EventRecord {
                        kind: "rollout".into(),
                        message: msg,
                        ..EventRecord::default()
                    });
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "read latest generation"),
        }
        self.flush_events().await;
    }

    /// Sweeps every [`SWEEP_INTERVAL`] and flushes every [`FLUSH_INTERVAL`] until `stop`.
    /// The caller flushes once more after the sessions have ended ([`Health::flush_all`]).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut flush = tokio::time::interval(FLUSH_INTERVAL);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        flush.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweep.tick() => self.sweep().await,
                _ = flush.tick() => self.flush_seen().await,
            }
        }
    }

    /// Writes everything buffered (at shutdown).
    pub async fn flush_all(&self) {
        self.flush_events().await;
        self.flush_seen().await;
    }

    fn view_of(&self, a: AgentRecord, rollout: Option<&AgentRollout>) -> AgentView {
        let eval = self
            .leases
            .evaluate(&a.id, rollout, &self.thresholds)
            .unwrap_or_else(|| {
                self.leases.load(std::slice::from_ref(&a));
                self.leases
                    .evaluate(&a.id, rollout, &self.thresholds)
                    .unwrap_or(Evaluation {
                        state: State::Lost,
                        reasons: vec!["no heartbeat: never connected".into()],
                    })
            });
        let lease = self.leases.get(&a.id).unwrap_or_default();
        let last_seen = match (lease.last_contact, a.last_seen) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        AgentView {
            eval,
            connected: lease.connected && !lease.revoked,
            last_seen,
            last_heartbeat: lease.heartbeat_at,
            applied_generation: if lease.seen_since_start {
                lease.applied_generation
            } else {
                a.applied_generation
            },
            target_generation: rollout.map_or(0, |r| r.target_generation),
            ips: if lease.ips.is_empty() {
                a.facts.ips.clone()
            } else {
                lease.ips.clone()
            },
            host: lease.heartbeat.and_then(|h| h.host),
            record: a,
        }
    }

    /// Every agent, evaluated now, by id.
    pub async fn views(&self) -> Result<Vec<AgentView>, StoreError> {
        let rollouts = self.rollouts().await;
        Ok(store::blocking(&self.store, |s| s.list_agents())
            .await?
            .into_iter()
            .map(|a| {
                let r = rollouts.get(&a.id);
                self.view_of(a, r)
            })
            .collect())
    }

    /// One agent, evaluated now.
    pub async fn view(&self, id: &str) -> Result<Option<AgentView>, StoreError> {
        let owned = id.to_string();
        let Some(a) = store::blocking(&self.store, move |s| s.get_agent(&owned)).await? else {
            return Ok(None);
        };
        let rollouts = self.rollouts().await;
        let r = rollouts.get(id);
        Ok(Some(self.view_of(a, r)))
    }

    /// The store (read-only views).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use crate::store::{AgentStore, EnrollmentStore, EventFilter, EventStore, Facts};
    use time::Duration;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    #[tokio::test]
    async fn state_changes_become_events_and_seen_is_flushed_in_batches() {
        let store = Arc::new(MemoryStore::new());
        store.create_token(&crate::store::suite::token(1)).unwrap();
        store
            .enroll(
                "0011223344556677",
                &crate::tokens::hash_secret("s"),
                t0(),
                AgentRecord {
                    id: "a1".into(),
                    labels: Default::default(),
                    facts: Facts::default(),
                    enrolled_at: t0(),
                    last_seen: None,
                    cert_serial: "01".into(),
                    cert_not_after: t0() + Duration::days(1),
                    revoked_at: None,
                    applied_generation: 0,
                },
            )
            .unwrap();
        let clock = Arc::new(FakeClock::new(t0()));
        let h = Health::new(store.clone(), clock.clone(), Thresholds::default()).unwrap();
        let s = h.leases.hello("a1", 0, &[]);
        h.leases.heartbeat("a1", &report::Heartbeat::default(), &[]);
        h.sweep().await;
        assert_eq!(h.views().await.unwrap()[0].eval.state, State::Healthy);
        assert_eq!(store.get_agent("a1").unwrap().unwrap().last_seen, None);
        h.leases.disconnected("a1", s);
        clock.advance(Duration::seconds(31));
        h.sweep().await;
        let v = h.view("a1").await.unwrap().unwrap();
        assert_eq!(v.eval.state, State::Lost);
        let events = store
            .list_events(&EventFilter {
                limit: 10,
                ..Default::default()
            })
            .unwrap();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].kind, "agent-state");
        assert!(
            events[0]
                .message
                .starts_with("healthy -> lost: no heartbeat")
        );
        h.flush_all().await;
        assert_eq!(
            store.get_agent("a1").unwrap().unwrap().last_seen,
            Some(t0())
        );
    }
}
