//! The lease table: per agent, in memory, what the controller last heard and when, and the
//! state last evaluated (to notice changes). Heartbeats touch only this table; the last
//! contact reaches the store in batches ([`Leases::take_seen`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use time::{Duration, OffsetDateTime};

use super::clock::Clock;
use super::evaluate::{Evaluation, Input, State, Thresholds, evaluate};
use super::report::Heartbeat;
use crate::store::{AgentRecord, AgentRollout};

/// What the table holds for one agent.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    /// Deleted by an admin.
    pub revoked: bool,
    /// A session is open.
    pub connected: bool,
    /// The open session's number (a replaced session's end must not disconnect the new one).
    session: u64,
    /// Heard from since the controller started.
    pub seen_since_start: bool,
    /// Last message of any kind (or the stored last_seen until one arrives).
    pub last_contact: Option<OffsetDateTime>,
    /// When the last heartbeat arrived.
    pub heartbeat_at: Option<OffsetDateTime>,
    /// The last heartbeat.
    pub heartbeat: Option<Heartbeat>,
    /// The generation it runs (hello, heartbeats, acks).
    pub applied_generation: u64,
    /// IP addresses last stored.
    pub ips: Vec<String>,
    /// Since when applied < target.
    pub behind_since: Option<OffsetDateTime>,
    /// The last evaluation (None before the first sweep).
    pub last: Option<Evaluation>,
    /// last_contact not yet written to the store.
    seen_dirty: bool,
    /// The process id (`Hello.instance`) of the session last admitted.
    instance: String,
    /// When a second process with this identity was last refused.
    pub duplicate_at: Option<OffsetDateTime>,
    /// Its session is on another replica: `last_contact` and `applied_generation` come
    /// from the store ([`Leases::merge_stored`]); its heartbeats are not seen here.
    pub elsewhere: bool,
    /// While `elsewhere`: the host-health reasons the replica holding its session stored
    /// ([`Leases::merge_host_reasons`]).
    pub elsewhere_reasons: Vec<String>,
    /// The host-health reasons this replica last stored for it ([`Leases::take_host_reasons`]).
    stored_reasons: Vec<String>,
}

impl Lease {
    /// Connected here, or on another replica that wrote its last contact within `within`.
    pub fn is_live(&self, now: OffsetDateTime, within: Duration) -> bool {
        self.connected || (self.elsewhere && self.last_contact.is_some_and(|at| now - at <= within))
    }
}

/// A second process presenting an agent's identity while the first is connected and
/// heard from (see [`Leases::admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The process (`Hello.instance`) holding the session.
    pub connected: String,
    /// When it was last heard from.
    pub last_contact: OffsetDateTime,
}

/// What a heartbeat changed that must be stored at once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeartbeatOutcome {
    /// Time since the previous heartbeat of this session.
    pub gap: Option<Duration>,
    /// The IP list changed: (old, new).
    pub ips_changed: Option<(Vec<String>, Vec<String>)>,
    /// The applied generation changed.
    pub generation_changed: bool,
}

/// A state change found by a sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The agent.
    pub agent_id: String,
    /// Before.
    pub from: State,
    /// Now, with its reasons.
    pub to: Evaluation,
}

/// The lease table. Cheap to share behind an `Arc`.
pub struct Leases {
    clock: Arc<dyn Clock>,
    started_at: OffsetDateTime,
    inner: Mutex<(u64, HashMap<String, Lease>)>,
}

impl std::fmt::Debug for Leases {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Leases")
    }
}

impl Leases {
    /// An empty table reading `clock`; the controller starts now.
    pub fn new(clock: Arc<dyn Clock>) -> Leases {
        let started_at = clock.now();
        Leases {
            clock,
            started_at,
            inner: Mutex::new((0, HashMap::new())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, HashMap<String, Lease>)> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Now, by the table's clock.
    pub fn now(&self) -> OffsetDateTime {
        self.clock.now()
    }

    /// Adds the stored agents (at start, and for one just enrolled).
    pub fn load(&self, agents: &[AgentRecord]) {
        let mut g = self.lock();
        for a in agents {
            let l = g.1.entry(a.id.clone()).or_default();
            l.revoked = a.revoked_at.is_some();
            if l.last_contact.is_none() {
                l.last_contact = a.last_seen;
            }
            if !l.seen_since_start {
                l.applied_generation = a.applied_generation;
                l.ips = a.facts.ips.clone();
            }
        }
    }

    /// With several replicas: agents whose stored last contact is newer than this table's
    /// and who have no session here are connected to another replica (which writes their
    /// last contact every few seconds): their lease follows the store.
    pub fn merge_stored(&self, agents: &[AgentRecord]) {
        let mut g = self.lock();
        for a in agents {
            let l = g.1.entry(a.id.clone()).or_default();
            l.revoked |= a.revoked_at.is_some();
            if l.connected {
                continue;
            }
            if let Some(seen) = a.last_seen
                && l.last_contact.is_none_or(|c| seen > c)
            {
                l.last_contact = Some(seen);
                l.heartbeat_at = None;
                l.heartbeat = None;
                l.seen_since_start = true;
                l.elsewhere = true;
                l.applied_generation = a.applied_generation;
                if !a.facts.ips.is_empty() {
                    l.ips = a.facts.ips.clone();
                }
            }
        }
    }

    /// With several replicas: the host-health reasons other replicas stored, for the agents
    /// connected to them.
    pub fn merge_host_reasons(&self, stored: &std::collections::BTreeMap<String, Vec<String>>) {
        let mut g = self.lock();
        for (id, l) in g.1.iter_mut() {
            if l.elsewhere && !l.connected {
                l.elsewhere_reasons = stored.get(id).cloned().unwrap_or_default();
            }
        }
    }

    /// With several replicas: the host-health reasons of the agents connected here, for the
    /// other replicas, evaluated from their heartbeats alone (no rollout, no lease state):
    /// every agent that has some (rewritten each time, so a replica that cleared them after
    /// the agent left does not hide them), and an empty list for one whose reasons went
    /// away or that left this replica.
    pub fn take_host_reasons(&self, t: &Thresholds) -> Vec<(String, Vec<String>)> {
        let now = self.clock.now();
        let started_at = self.started_at;
        let mut g = self.lock();
        let mut out = Vec::new();
        for (id, l) in g.1.iter_mut() {
            let reasons = if l.connected {
                evaluate(
                    &Input {
                        now,
                        started_at,
                        revoked: false,
                        connected: true,
                        seen_since_start: true,
                        last_contact: Some(now),
                        heartbeat: l.heartbeat.as_ref(),
                        heartbeat_at: Some(now),
                        applied_generation: l.applied_generation,
                        target_generation: l.applied_generation,
                        behind_since: None,
                        refusal: None,
                        duplicate_at: l.duplicate_at,
                        elsewhere_reasons: &[],
                    },
                    t,
                )
                .reasons
            } else {
                Vec::new()
            };
            if !reasons.is_empty() || !l.stored_reasons.is_empty() {
                l.stored_reasons = reasons.clone();
                out.push((id.clone(), reasons));
            }
        }
        out
    }

    /// A session opened with a hello; returns the session number for [`Leases::disconnected`].
    pub fn hello(&self, id: &str, applied_generation: u64, ips: &[String]) -> u64 {
        let now = self.clock.now();
        let mut g = self.lock();
        g.0 += 1;
        let session = g.0;
        let l = g.1.entry(id.to_string()).or_default();
        l.connected = true;
        l.elsewhere = false;
        l.elsewhere_reasons.clear();
        l.session = session;
        l.seen_since_start = true;
        l.last_contact = Some(now);
        l.heartbeat_at = None;
        l.applied_generation = applied_generation;
        if !ips.is_empty() {
            l.ips = ips.to_vec();
        }
        l.seen_dirty = true;
        session
    }

    /// Whether a session from process `instance` (`Hello.instance`, random per agent
    /// process) may open. A session of another process that is connected and was heard
    /// from within `live_within` means two processes share this identity (a copied state
    /// dir): the newcomer is refused and the lease notes when. The same process
    /// reconnecting, a connected session gone quiet, and agents that send no instance are
    /// admitted (the new session replaces the old one).
    pub fn admit(&self, id: &str, instance: &str, live_within: Duration) -> Result<(), Duplicate> {
        let now = self.clock.now();
        let mut g = self.lock();
        let l = g.1.entry(id.to_string()).or_default();
        if l.connected
            && !instance.is_empty()
            && !l.instance.is_empty()
            && l.instance != instance
            && let Some(at) = l.last_contact.filter(|at| now - *at <= live_within)
        {
            l.duplicate_at = Some(now);
            return Err(Duplicate {
                connected: l.instance.clone(),
                last_contact: at,
            });
        }
        l.instance = instance.to_string();
        Ok(())
    }

    /// A heartbeat arrived (`ips` already cleaned).
    pub fn heartbeat(&self, id: &str, hb: &Heartbeat, ips: &[String]) -> HeartbeatOutcome {
        let now = self.clock.now();
        let mut g = self.lock();
        let l = g.1.entry(id.to_string()).or_default();
        let mut out = HeartbeatOutcome {
            gap: l.heartbeat_at.map(|t| now - t),
            ..Default::default()
        };
        if !ips.is_empty() && l.ips != ips {
            out.ips_changed = Some((std::mem::take(&mut l.ips), ips.to_vec()));
            l.ips = ips.to_vec();
        }
        if l.applied_generation != hb.applied_generation {
            out.generation_changed = true;
            l.applied_generation = hb.applied_generation;
        }
        l.seen_since_start = true;
        l.last_contact = Some(now);
        l.heartbeat_at = Some(now);
        l.heartbeat = Some(hb.clone());
        l.seen_dirty = true;
        out
    }

    /// Any other message: the agent is alive.
    pub fn touch(&self, id: &str) {
        let now = self.clock.now();
        if let Some(l) = self.lock().1.get_mut(id) {
            l.last_contact = Some(now);
            l.seen_dirty = true;
        }
    }

    /// The agent applied `generation`.
    pub fn applied(&self, id: &str, generation: u64) {
        if let Some(l) = self.lock().1.get_mut(id) {
            l.applied_generation = generation;
        }
    }

    /// Session `session` of `id` ended; `false` when a newer session replaced it.
    pub fn disconnected(&self, id: &str, session: u64) -> bool {
        let now = self.clock.now();
        let mut g = self.lock();
        match g.1.get_mut(id) {
            Some(l) if l.session == session && l.connected => {
                l.connected = false;
                l.elsewhere = false;
                l.last_contact = Some(now);
                l.seen_dirty = true;
                true
            }
            _ => false,
        }
    }

    /// The agent was deleted.
    pub fn revoked(&self, id: &str) {
        let mut g = self.lock();
        let l = g.1.entry(id.to_string()).or_default();
        l.revoked = true;
        l.connected = false;
    }

    /// A copy of one lease.
    pub fn get(&self, id: &str) -> Option<Lease> {
        self.lock().1.get(id).cloned()
    }

    /// Agents with a session here, or on another replica that wrote their last contact
    /// within `within`: the agents a rollout may push to.
    pub fn live(&self, within: Duration) -> std::collections::HashSet<String> {
        let now = self.clock.now();
        self.lock()
            .1
            .iter()
            .filter(|(_, l)| !l.revoked && l.is_live(now, within))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Open sessions.
    pub fn connected(&self) -> usize {
        self.lock().1.values().filter(|l| l.connected).count()
    }

    /// Agents per state, as of the last sweep.
    pub fn counts(&self) -> HashMap<State, usize> {
        let mut out = HashMap::new();
        for l in self.lock().1.values() {
            if let Some(e) = &l.last {
                *out.entry(e.state).or_default() += 1;
            }
        }
        out
    }

    /// Last contacts not yet stored; they are marked stored.
    pub fn take_seen(&self) -> Vec<(String, OffsetDateTime)> {
        let mut g = self.lock();
        let mut out = Vec::new();
        for (id, l) in g.1.iter_mut() {
            if l.seen_dirty
                && let Some(at) = l.last_contact
            {
                l.seen_dirty = false;
                out.push((id.clone(), at));
            }
        }
        out
    }

    /// Evaluates one lease now.
    pub fn evaluate(
        &self,
        id: &str,
        rollout: Option<&AgentRollout>,
        t: &Thresholds,
    ) -> Option<Evaluation> {
        let now = self.clock.now();
        let mut g = self.lock();
        let l = g.1.get_mut(id)?;
        Some(self.eval_one(l, rollout, t, now))
    }

    fn eval_one(
        &self,
        l: &mut Lease,
        rollout: Option<&AgentRollout>,
        t: &Thresholds,
        now: OffsetDateTime,
    ) -> Evaluation {
        let target = rollout.map_or(0, |r| r.target_generation);
        let refusal = rollout
            .filter(|r| r.ack_generation == r.target_generation && r.target_generation > 0)
            .and_then(|r| r.ack_error.as_deref());
        if l.applied_generation < target && refusal.is_none() {
            l.behind_since.get_or_insert(now);
        } else {
            l.behind_since = None;
        }
        evaluate(
            &Input {
                now,
                started_at: self.started_at,
                revoked: l.revoked,
                connected: l.connected || l.elsewhere,
                seen_since_start: l.seen_since_start,
                last_contact: l.last_contact,
                heartbeat: l.heartbeat.as_ref(),
                heartbeat_at: l.heartbeat_at,
                applied_generation: l.applied_generation,
                target_generation: target,
                behind_since: l.behind_since,
                refusal,
                duplicate_at: l.duplicate_at,
                elsewhere_reasons: if l.elsewhere && !l.connected {
                    &l.elsewhere_reasons
                } else {
                    &[]
                },
            },
            t,
        )
    }

    /// Evaluates every lease and returns the state changes since the last sweep (the
    /// first evaluation of a lease is not a change). `rollouts` by agent id.
    pub fn sweep(
        &self,
        rollouts: &HashMap<String, AgentRollout>,
        t: &Thresholds,
    ) -> Vec<Transition> {
        let now = self.clock.now();
        let mut g = self.lock();
        let mut out = Vec::new();
        let ids: Vec<String> = g.1.keys().cloned().collect();
        for id in ids {
            let Some(l) = g.1.get_mut(&id) else { continue };
            let e = self.eval_one(l, rollouts.get(&id), t, now);
            if let Some(prev) = &l.last
                && (prev.state != e.state || kinds(prev) != kinds(&e))
            {
                out.push(Transition {
                    agent_id: id.clone(),
                    from: prev.state,
                    to: e.clone(),
                });
            }
            l.last = Some(e);
        }
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }
}

/// The kinds of problem (text before `:`), to tell a new problem from a changed number.
fn kinds(e: &Evaluation) -> Vec<&str> {
    e.reasons
        .iter()
        .map(|r| r.split(':').next().unwrap_or(r))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::clock::FakeClock;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn hb(docker: bool) -> Heartbeat {
        Heartbeat {
            host: Some(crate::health::report::HostHealth {
                docker_reachable: docker,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn setup() -> (Arc<FakeClock>, Leases, Thresholds) {
        let clock = Arc::new(FakeClock::new(t0()));
        let leases = Leases::new(clock.clone());
        let t = Thresholds::for_interval(Duration::seconds(10));
        (clock, leases, t)
    }

    fn sweep(l: &Leases, t: &Thresholds) -> Vec<(State, State, Vec<String>)> {
        l.sweep(&HashMap::new(), t)
            .into_iter()
            .map(|tr| (tr.from, tr.to.state, tr.to.reasons))
            .collect()
    }

    fn state(l: &Leases, t: &Thresholds) -> State {
        l.evaluate("a", None, t).unwrap().state
    }

    /// An agent connected to another replica: alive while the store's last contact is
    /// fresh, lost a grace period after it stops moving; a session here takes over.
    #[test]
    fn an_agent_on_another_replica_follows_the_store() {
        let (clock, l, t) = setup();
        let mut rec = AgentRecord {
            id: "a".into(),
            labels: Default::default(),
            facts: Default::default(),
            enrolled_at: t0(),
            last_seen: None,
            cert_serial: "01".into(),
            cert_not_after: t0(),
            revoked_at: None,
            applied_generation: 3,
        };
        l.load(std::slice::from_ref(&rec));
        clock.advance(Duration::seconds(5));
        rec.last_seen = Some(clock.now());
        l.merge_stored(std::slice::from_ref(&rec));
        let lease = l.get("a").unwrap();
        assert!(lease.elsewhere && !lease.connected);
        assert_eq!(lease.applied_generation, 3);
        assert_eq!(state(&l, &t), State::Healthy);
        assert!(l.live(t.grace).contains("a"), "a rollout may push to it");
        // The other replica stops writing it (the agent left): lost after the grace.
        clock.advance(t.grace + Duration::seconds(1));
        l.merge_stored(std::slice::from_ref(&rec));
        assert_eq!(state(&l, &t), State::Lost);
        assert!(l.live(t.grace).is_empty());
        // An older stored contact does not move the lease back; a session here wins.
        l.hello("a", 4, &[]);
        rec.last_seen = Some(t0());
        l.merge_stored(std::slice::from_ref(&rec));
        let lease = l.get("a").unwrap();
        assert!(lease.connected && !lease.elsewhere);
        assert_eq!(lease.applied_generation, 4);
    }

    /// Host-health reasons across replicas: the replica holding the session stores the
    /// reasons its heartbeats give (and clears them when they go or the agent leaves);
    /// another replica shows the agent degraded with them, and a session here ignores them.
    #[test]
    fn host_reasons_travel_between_replicas() {
        let (clock, holder, t) = setup();
        holder.hello("a", 1, &[]);
        holder.heartbeat("a", &hb(false), &[]);
        let written = holder.take_host_reasons(&t);
        assert_eq!(written.len(), 1, "{written:?}");
        assert!(
            written[0].1.iter().any(|r| r.starts_with("docker")),
            "{written:?}"
        );
        // Rewritten while they last, so a clear by another replica does not hide them.
        assert_eq!(holder.take_host_reasons(&t), written);

        let other = Leases::new(clock.clone());
        let rec = AgentRecord {
            id: "a".into(),
            labels: Default::default(),
            facts: Default::default(),
            enrolled_at: t0(),
            last_seen: Some(clock.now()),
            cert_serial: "01".into(),
            cert_not_after: t0(),
            revoked_at: None,
            applied_generation: 1,
        };
        other.load(std::slice::from_ref(&rec));
        clock.advance(Duration::seconds(1));
        let rec = AgentRecord {
            last_seen: Some(clock.now()),
            ..rec
        };
        other.merge_stored(std::slice::from_ref(&rec));
        let stored: std::collections::BTreeMap<String, Vec<String>> = written.into_iter().collect();
        other.merge_host_reasons(&stored);
        let e = other.evaluate("a", None, &t).unwrap();
        assert_eq!(e.state, State::Degraded, "{e:?}");
        assert_eq!(e.reasons, stored["a"]);

        // Healthy again on the holder: an empty list clears them, once.
        holder.heartbeat("a", &hb(true), &[]);
        assert_eq!(
            holder.take_host_reasons(&t),
            vec![("a".to_string(), vec![])]
        );
        assert!(holder.take_host_reasons(&t).is_empty());
        other.merge_host_reasons(&Default::default());
        assert_eq!(state(&other, &t), State::Healthy);

        // A session here: stored reasons of another replica no longer count.
        other.merge_host_reasons(&stored);
        other.hello("a", 1, &[]);
        other.heartbeat("a", &hb(true), &[]);
        assert_eq!(state(&other, &t), State::Healthy);
    }

    #[test]
    fn healthy_degraded_healthy() {
        let (clock, l, t) = setup();
        l.hello("a", 0, &[]);
        l.heartbeat("a", &hb(true), &[]);
        assert!(
            sweep(&l, &t).is_empty(),
            "the first evaluation is no change"
        );
        assert_eq!(state(&l, &t), State::Healthy);
        clock.advance(Duration::seconds(10));
        l.heartbeat("a", &hb(false), &[]);
        assert_eq!(
            sweep(&l, &t),
            [(
                State::Healthy,
                State::Degraded,
                vec!["docker unreachable".to_string()]
            )]
        );
        clock.advance(Duration::seconds(10));
        l.heartbeat("a", &hb(false), &[]);
        assert!(sweep(&l, &t).is_empty(), "same state, same reasons");
        clock.advance(Duration::seconds(10));
        l.heartbeat("a", &hb(true), &[]);
        assert_eq!(sweep(&l, &t), [(State::Degraded, State::Healthy, vec![])]);
    }

    #[test]
    fn healthy_lost_after_grace_then_healthy_on_reconnect() {
        let (clock, l, t) = setup();
        let s1 = l.hello("a", 0, &[]);
        l.heartbeat("a", &hb(true), &[]);
        sweep(&l, &t);
        // Killed: the stream drops, the lease survives the grace period as degraded.
        clock.advance(Duration::seconds(5));
        assert!(l.disconnected("a", s1));
        assert_eq!(
            sweep(&l, &t),
            [(
                State::Healthy,
                State::Degraded,
                vec!["disconnected: last heartbeat 5s ago".to_string()]
            )]
        );
        clock.advance(Duration::seconds(25));
        assert!(sweep(&l, &t).is_empty(), "still within the grace period");
        clock.advance(Duration::seconds(1));
        assert_eq!(
            sweep(&l, &t),
            [(
                State::Degraded,
                State::Lost,
                vec!["no heartbeat: last one 31s ago".to_string()]
            )]
        );
        clock.advance(Duration::minutes(5));
        assert!(sweep(&l, &t).is_empty());
        l.hello("a", 0, &[]);
        l.heartbeat("a", &hb(true), &[]);
        assert_eq!(sweep(&l, &t), [(State::Lost, State::Healthy, vec![])]);
    }

    #[test]
    fn silent_but_connected_is_lost_too() {
        let (clock, l, t) = setup();
        l.hello("a", 0, &[]);
        l.heartbeat("a", &hb(true), &[]);
        sweep(&l, &t);
        clock.advance(Duration::seconds(31));
        assert_eq!(sweep(&l, &t)[0].1, State::Lost);
    }

    #[test]
    fn replaced_session_end_does_not_disconnect() {
        let (_clock, l, _t) = setup();
        let old = l.hello("a", 0, &[]);
        let new = l.hello("a", 0, &[]);
        assert!(!l.disconnected("a", old));
        assert!(l.get("a").unwrap().connected);
        assert!(l.disconnected("a", new));
        assert!(!l.get("a").unwrap().connected);
    }

    #[test]
    fn heartbeats_are_batched_and_report_what_must_be_stored() {
        let (clock, l, _t) = setup();
        l.hello("a", 1, &["10.0.0.1".into()]);
        assert_eq!(l.take_seen(), [("a".to_string(), t0())]);
        assert!(l.take_seen().is_empty(), "taken once");
        clock.advance(Duration::seconds(10));
        let mut beat = hb(true);
        beat.applied_generation = 1;
        let out = l.heartbeat("a", &beat, &["10.0.0.1".into()]);
        assert_eq!(out, HeartbeatOutcome::default());
        clock.advance(Duration::seconds(10));
        l.heartbeat("a", &beat, &["10.0.0.1".into()]);
        clock.advance(Duration::seconds(12));
        beat.applied_generation = 2;
        let out = l.heartbeat("a", &beat, &["10.0.0.2".into()]);
        assert_eq!(out.gap, Some(Duration::seconds(12)));
        assert!(out.generation_changed);
        assert_eq!(
            out.ips_changed,
            Some((vec!["10.0.0.1".to_string()], vec!["10.0.0.2".to_string()]))
        );
        assert_eq!(
            l.take_seen(),
            [("a".to_string(), t0() + Duration::seconds(32))],
            "three heartbeats, one write"
        );
    }

    #[test]
    fn generation_behind_and_refused() {
        let (clock, l, t) = setup();
        l.hello("a", 1, &[]);
        l.heartbeat("a", &hb(true), &[]);
        let mut r = AgentRollout {
            agent_id: "a".into(),
            target_generation: 2,
            ack_generation: 1,
            ack_error: None,
        };
        let rollouts = HashMap::from([("a".to_string(), r.clone())]);
        assert!(l.sweep(&rollouts, &t).is_empty());
        clock.advance(Duration::seconds(20));
        l.heartbeat("a", &hb(true), &[]);
        assert!(
            l.sweep(&rollouts, &t).is_empty(),
            "behind for 20 s: rolling out"
        );
        clock.advance(Duration::seconds(20));
        l.heartbeat("a", &hb(true), &[]);
        let tr = l.sweep(&rollouts, &t);
        assert_eq!(tr[0].to.reasons, ["generation behind: runs 0, target 2"]);
        r.ack_generation = 2;
        r.ack_error = Some("bad spec".into());
        let e = l.evaluate("a", Some(&r), &t).unwrap();
        assert_eq!(e.reasons, ["generation refused: 2 (bad spec)"]);
    }

    #[test]
    fn stored_agents_get_one_grace_period_after_a_restart() {
        let (clock, l, t) = setup();
        let rec = AgentRecord {
            id: "a".into(),
            labels: Default::default(),
            facts: Default::default(),
            enrolled_at: t0(),
            last_seen: Some(t0() - Duration::minutes(1)),
            cert_serial: String::new(),
            cert_not_after: t0(),
            revoked_at: None,
            applied_generation: 0,
        };
        l.load(std::slice::from_ref(&rec));
        sweep(&l, &t);
        assert_eq!(state(&l, &t), State::Degraded);
        clock.advance(Duration::seconds(31));
        assert_eq!(
            sweep(&l, &t),
            [(
                State::Degraded,
                State::Lost,
                vec!["no heartbeat: last one 91s ago".to_string()]
            )]
        );
        l.revoked("a");
        assert_eq!(sweep(&l, &t)[0].1, State::Revoked);
        assert_eq!(l.counts().get(&State::Revoked), Some(&1));
    }

    #[test]
    fn a_second_process_with_the_same_identity_is_refused_while_the_first_is_live() {
        let clock = Arc::new(FakeClock::new(t0()));
        let leases = Leases::new(clock.clone());
        let live = Duration::seconds(2);
        assert_eq!(leases.admit("a1", "p1", live), Ok(()));
        leases.hello("a1", 0, &[]);
        // The same process reconnecting (new address, renewed certificate): admitted.
        assert_eq!(leases.admit("a1", "p1", live), Ok(()));
        // Another process while the first is heard from: refused, and noted.
        assert_eq!(
            leases.admit("a1", "p2", live),
            Err(Duplicate {
                connected: "p1".into(),
                last_contact: t0(),
            })
        );
        assert_eq!(leases.get("a1").unwrap().duplicate_at, Some(t0()));
        // An agent that sends no instance (older version) is never refused.
        assert_eq!(leases.admit("a1", "", live), Ok(()));
        // The first went quiet (its host died without closing TCP): the newcomer replaces it.
        leases.hello("a1", 0, &[]);
        assert_eq!(leases.admit("a1", "p1", live), Ok(()));
        clock.advance(Duration::seconds(3));
        assert_eq!(leases.admit("a1", "p2", live), Ok(()));
        // Or it disconnected.
        leases.hello("a1", 0, &[]);
        let s = leases.hello("a1", 0, &[]);
        assert!(leases.disconnected("a1", s));
        assert_eq!(leases.admit("a1", "p3", live), Ok(()));
    }
}
