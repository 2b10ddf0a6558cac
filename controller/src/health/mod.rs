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
pub mod jobs;
pub mod leases;
pub mod report;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub use clock::{Clock, FakeClock, SystemClock};
pub use evaluate::{Evaluation, State, Thresholds};
pub use leases::Leases;

use crate::fleet::messages::JobEvent;
use crate::store::{
    self, AgentRecord, AgentRollout, DrainRecord, EventRecord, FleetSample, JobRecord,
    JobRetention, Retention, RolloutState, Store, StoreError,
};

/// How often last contacts are written and old events pruned.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// How often leases are evaluated and buffered events written.
pub const SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// How often agents per state are sampled into the store (the status page's history).
pub const SAMPLE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(60);

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
    /// Whether the agent drains: the controller holds a drain for it (`drain`, from the
    /// command on, before any heartbeat) or its last heartbeat said it drains (it may
    /// also drain on its own: a graceful stop on SIGQUIT).
    pub draining: bool,
    /// The drain the controller holds for it (`drover agent drain`), the source of truth
    /// of what was asked; `None` when none.
    pub drain: Option<DrainRecord>,
    /// The agent's last heartbeat said it drains (what it does, as of that heartbeat).
    pub heartbeat_draining: bool,
}

/// Leases, events and their periodic work.
pub struct Health {
    /// The lease table.
    pub leases: Leases,
    /// Limits of `healthy`.
    pub thresholds: Thresholds,
    /// How many events are kept.
    pub retention: Retention,
    /// How many jobs and fleet samples are kept.
    pub job_retention: JobRetention,
    store: Arc<dyn Store>,
    /// Where pruning writes: with several replicas a handle fenced by the lease.
    fenced: Arc<dyn Store>,
    /// How often last contacts are written ([`FLUSH_INTERVAL`] alone; a few seconds with
    /// several replicas, since the leader judges other replicas' agents by them).
    contacts_every: std::time::Duration,
    /// Several replicas share the store.
    replica: bool,
    pending: Mutex<Vec<EventRecord>>,
    pending_jobs: Mutex<Vec<JobRecord>>,
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
            job_retention: JobRetention::default(),
            fenced: store.clone(),
            contacts_every: FLUSH_INTERVAL,
            replica: false,
            store,
            pending: Mutex::new(Vec::new()),
            pending_jobs: Mutex::new(Vec::new()),
            rollout: Mutex::new(rollout),
        })
    }

    /// Health of one replica among several: last contacts written every `contacts_every`
    /// (the cost: one batched write per replica that often, of the agents heard from),
    /// other replicas' contacts merged from the store, pruning through `fenced`.
    pub fn in_cluster(
        mut self,
        contacts_every: std::time::Duration,
        fenced: Arc<dyn Store>,
    ) -> Health {
        self.contacts_every = contacts_every;
        self.fenced = fenced;
        self.replica = true;
        self
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

    /// Buffers the job row an agent's job event updates (written within a second, with
    /// the events); returns it, or `None` when the event names no job or the buffer is
    /// full ([`jobs::MAX_PENDING_JOBS`]).
    pub fn record_job(&self, agent_id: &str, ev: &JobEvent) -> Option<JobRecord> {
        let now = self.leases.now();
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let Some(row) = jobs::job_record(agent_id, ev, now) else {
            tracing::debug!(agent = %agent_id, job = ev.job_id, "job event without a job id dropped");
            return None;
        };
        let mut pending = self.pending_jobs.lock().unwrap_or_else(|p| p.into_inner());
        if pending.len() >= jobs::MAX_PENDING_JOBS {
            tracing::warn!(agent = %agent_id, job = ev.job_id, "job update dropped: {} waiting to be stored", pending.len());
            return None;
        }
        pending.push(row.clone());
        Some(row)
    }

    /// Writes buffered jobs in one transaction.
    async fn flush_jobs(&self) {
        let batch =
            std::mem::take(&mut *self.pending_jobs.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        if let Err(e) = store::blocking(&self.store, move |s| s.upsert_jobs(&batch)).await {
            tracing::warn!(error = %e, jobs = n, "store jobs");
        }
    }

    /// Records how many agents are in each state now (the status page's history).
    pub async fn sample(&self) {
        let counts = self.leases.counts();
        let n = |s: State| u32::try_from(counts.get(&s).copied().unwrap_or(0)).unwrap_or(u32::MAX);
        let now = self.leases.now();
        let sample = FleetSample {
            at: now.replace_nanosecond(0).unwrap_or(now),
            healthy: n(State::Healthy),
            degraded: n(State::Degraded),
            lost: n(State::Lost),
            revoked: n(State::Revoked),
        };
        if let Err(e) = store::blocking(&self.fenced, move |s| s.add_fleet_sample(&sample)).await {
            tracing::warn!(error = %e, "store fleet sample");
        }
    }

    /// Writes buffered events in one transaction (and buffered jobs in another).
    pub async fn flush_events(&self) {
        self.flush_jobs().await;
        let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        if let Err(e) = store::blocking(&self.store, move |s| s.add_events(&batch)).await {
            tracing::warn!(error = %e, events = n, "store events");
        }
    }

    /// Writes changed last contacts in one transaction.
    pub async fn flush_contacts(&self) {
        if self.replica {
            let reasons = self.leases.take_host_reasons(&self.thresholds);
            let n = reasons.len();
            if !reasons.is_empty()
                && let Err(e) =
                    store::blocking(&self.store, move |s| s.set_host_reasons(&reasons)).await
            {
                tracing::warn!(error = %e, agents = n, "store host-health reasons");
            }
        }
        let seen = self.leases.take_seen();
        let n = seen.len();
        if !seen.is_empty()
            && let Err(e) = store::blocking(&self.store, move |s| s.agents_seen(&seen)).await
        {
            tracing::warn!(error = %e, agents = n, "store last seen");
        }
    }

    /// Prunes old events (the leader's work).
    pub async fn prune(&self) {
        let retention = self.retention;
        if let Err(e) = store::blocking(&self.fenced, move |s| s.prune_events(retention)).await {
            tracing::warn!(error = %e, "prune events");
        }
        let keep = self.job_retention;
        let now = self.leases.now();
        if let Err(e) = store::blocking(&self.fenced, move |s| s.prune_jobs(keep, now)).await {
            tracing::warn!(error = %e, "prune jobs");
        }
    }

    /// Writes changed last contacts and prunes old events.
    pub async fn flush_seen(&self) {
        self.flush_contacts().await;
        self.prune().await;
    }

    /// Agents connected here or (with several replicas) on another replica lately: what a
    /// rollout may push to.
    pub fn live(&self) -> std::collections::HashSet<String> {
        self.leases.live(self.thresholds.grace)
    }

    /// With several replicas: the last contacts other replicas wrote, into the leases.
    async fn merge_stored(&self) {
        match store::blocking(&self.store, |s| Ok((s.list_agents()?, s.host_reasons()?))).await {
            Ok((agents, reasons)) => {
                self.leases.merge_stored(&agents);
                self.leases.merge_host_reasons(&reasons);
            }
            Err(e) => tracing::warn!(error = %e, "read last contacts"),
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

    /// The leader's loop until `stop`: sweeps every [`SWEEP_INTERVAL`] (with several
    /// replicas, after merging the last contacts they write, as often as they write them)
    /// and prunes
    /// every [`FLUSH_INTERVAL`].
    pub async fn run_leader(self: Arc<Self>, stop: CancellationToken) {
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut prune = tokio::time::interval(FLUSH_INTERVAL);
        prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        prune.tick().await;
        let mut sample = tokio::time::interval(SAMPLE_INTERVAL);
        sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut merged = tokio::time::Instant::now();
        if self.replica {
            self.merge_stored().await;
        }
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = sweep.tick() => {
                    if self.replica && merged.elapsed() >= self.contacts_every {
                        merged = tokio::time::Instant::now();
                        self.merge_stored().await;
                    }
                    self.sweep().await;
                }
                _ = prune.tick() => self.prune().await,
                _ = sample.tick() => self.sample().await,
            }
        }
    }

    /// Every replica's loop until `stop`: writes buffered events every [`SWEEP_INTERVAL`]
    /// and last contacts at the health's interval. The caller flushes once more after the
    /// sessions have ended ([`Health::flush_all`]).
    pub async fn run_replica(self: Arc<Self>, stop: CancellationToken) {
        let mut events = tokio::time::interval(SWEEP_INTERVAL);
        events.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut contacts = tokio::time::interval(self.contacts_every);
        contacts.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        contacts.tick().await;
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = events.tick() => self.flush_events().await,
                _ = contacts.tick() => self.flush_contacts().await,
            }
        }
    }

    /// Writes everything buffered (at shutdown).
    pub async fn flush_all(&self) {
        self.flush_events().await;
        self.flush_contacts().await;
    }

    fn view_of(
        &self,
        a: AgentRecord,
        rollout: Option<&AgentRollout>,
        drain: Option<DrainRecord>,
    ) -> AgentView {
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
        let heartbeat_draining = lease.heartbeat.as_ref().is_some_and(|h| h.draining);
        let live = lease.is_live(self.leases.now(), self.thresholds.grace);
        let last_seen = match (lease.last_contact, a.last_seen) {
            (Some(x), Some(y)) => Some(x.max(y)),
            (x, y) => x.or(y),
        };
        AgentView {
            eval,
            connected: live && !lease.revoked,
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
            draining: drain.is_some() || heartbeat_draining,
            heartbeat_draining,
            drain,
            host: lease.heartbeat.and_then(|h| h.host),
            record: a,
        }
    }

    /// Every agent, evaluated now, by id.
    pub async fn views(&self) -> Result<Vec<AgentView>, StoreError> {
        let rollouts = self.rollouts().await;
        let replica = self.replica;
        let (agents, drains, reasons) = store::blocking(&self.store, move |s| {
            Ok((
                s.list_agents()?,
                s.list_drains()?,
                others_reasons(s, replica)?,
            ))
        })
        .await?;
        if self.replica {
            self.leases.merge_stored(&agents);
            self.leases.merge_host_reasons(&reasons);
        }
        let mut drains: HashMap<String, DrainRecord> = drains
            .into_iter()
            .map(|d| (d.agent_id.clone(), d))
            .collect();
        Ok(agents
            .into_iter()
            .map(|a| {
                let r = rollouts.get(&a.id);
                let d = drains.remove(&a.id);
                self.view_of(a, r, d)
            })
            .collect())
    }

    /// One agent, evaluated now.
    pub async fn view(&self, id: &str) -> Result<Option<AgentView>, StoreError> {
        let owned = id.to_string();
        let replica = self.replica;
        let Some((a, drain, reasons)) = store::blocking(&self.store, move |s| {
            Ok(match s.get_agent(&owned)? {
                Some(a) => Some((a, s.agent_drain(&owned)?, others_reasons(s, replica)?)),
                None => None,
            })
        })
        .await?
        else {
            return Ok(None);
        };
        if self.replica {
            self.leases.merge_stored(std::slice::from_ref(&a));
            self.leases.merge_host_reasons(&reasons);
        }
        let rollouts = self.rollouts().await;
        let r = rollouts.get(id);
        Ok(Some(self.view_of(a, r, drain)))
    }

    /// The store (read-only views).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

/// With several replicas, the host-health reasons the replicas holding agents' sessions
/// stored (what [`Leases::merge_host_reasons`] takes); nothing to read with one controller.
fn others_reasons(
    s: &dyn Store,
    replica: bool,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, StoreError> {
    if replica {
        s.host_reasons()
    } else {
        Ok(Default::default())
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
