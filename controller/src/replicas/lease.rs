//! The leader lease: one row in the database (holder, epoch, expiry by the database's
//! clock). Every [`Timing::tick`] each replica sends one round trip ([`LeaseStore::lease_tick`]):
//! the leader renews, the others try to take an expired lease (a new holder adds one to
//! the epoch). [`Machine`] turns the answers, and the silence when none comes, into a
//! [`Role`]; [`run`] drives it and publishes the role.
//!
//! Safety margins: the leader steps down [`Timing::keep`] after it *sent* its last
//! successful renewal, before the lease can expire in the database ([`Timing::ttl`] after
//! the database received it), so two leaders never overlap; and fenced writes check the
//! lease in their own transaction besides. A replica that has no answer from the database
//! for [`Timing::detach_after`], or finds the schema newer than its build, is detached.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{Role, Term};
use crate::store::StoreError;

/// One lease round trip's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTick {
    /// The epoch this replica holds after the call; `None` when another replica does.
    pub epoch: Option<i64>,
    /// The database's schema version.
    pub schema: i64,
}

/// The lease seam (PostgreSQL: `store/postgres/replicas.rs`; tests: a fake).
pub trait LeaseStore: Send + Sync {
    /// Renews `held` when it is still this holder's and unexpired, else takes the lease
    /// when it expired or was released; reads the schema version. One transaction.
    fn lease_tick(
        &self,
        holder: &str,
        held: Option<i64>,
        ttl: Duration,
    ) -> Result<LeaseTick, StoreError>;
    /// Gives the lease up at once (a graceful stop), when `epoch` still holds it.
    fn lease_release(&self, holder: &str, epoch: i64) -> Result<(), StoreError>;
}

/// The lease's times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a renewal holds the lease, by the database's clock.
    pub ttl: Duration,
    /// Time between two round trips.
    pub tick: Duration,
    /// The leader leads until this long after it sent its last successful renewal
    /// (shorter than `ttl`).
    pub keep: Duration,
    /// Detached after this long without any answer from the database.
    pub detach_after: Duration,
}

impl Default for Timing {
    /// A killed leader is replaced within `ttl + tick` = 12 s.
    fn default() -> Self {
        Timing {
            ttl: Duration::from_secs(10),
            tick: Duration::from_secs(2),
            keep: Duration::from_secs(8),
            detach_after: Duration::from_secs(10),
        }
    }
}

/// The role decision, pure: fed answers with the instant their call was sent, asked for
/// the role at any instant.
#[derive(Debug, Clone)]
pub struct Machine {
    timing: Timing,
    supported_schema: i64,
    epoch: Option<i64>,
    leader_until: Option<Instant>,
    last_answer: Instant,
    newer_schema: Option<i64>,
}

impl Machine {
    /// A follower that heard from the database at `now` (start-up just opened it).
    pub fn new(timing: Timing, supported_schema: i64, now: Instant) -> Machine {
        Machine {
            timing,
            supported_schema,
            epoch: None,
            leader_until: None,
            last_answer: now,
            newer_schema: None,
        }
    }

    /// The epoch to renew in the next call.
    pub fn held(&self) -> Option<i64> {
        self.epoch
    }

    /// The answer to a call sent at `sent`; a failed call changes nothing (the deadlines
    /// decide).
    pub fn answered(&mut self, sent: Instant, answer: Result<LeaseTick, StoreError>) {
        let Ok(t) = answer else {
            return;
        };
        self.last_answer = self.last_answer.max(sent);
        self.newer_schema = (t.schema > self.supported_schema).then_some(t.schema);
        self.epoch = t.epoch;
        self.leader_until = t.epoch.map(|_| sent + self.timing.keep);
    }

    /// The role at `now`.
    pub fn role(&mut self, now: Instant) -> Role {
        if self.leader_until.is_some_and(|until| now >= until) {
            self.leader_until = None;
            self.epoch = None;
        }
        if let Some(found) = self.newer_schema {
            return Role::Detached {
                reason: format!(
                    "the database has schema version {found}, newer than the {} this replica knows: it was upgraded by a newer drover; upgrade this replica",
                    self.supported_schema
                ),
            };
        }
        let silent = now.saturating_duration_since(self.last_answer);
        if silent >= self.timing.detach_after {
            return Role::Detached {
                reason: format!(
                    "this replica has had no answer from its database for {} s",
                    silent.as_secs()
                ),
            };
        }
        match (self.epoch, self.leader_until) {
            (Some(epoch), Some(_)) => Role::Leader { epoch },
            _ => Role::Follower,
        }
    }
}

/// How often the role is judged again while a call is outstanding.
const JUDGE_EVERY: Duration = Duration::from_millis(250);

/// What the lease loop ([`run`]) works with.
pub struct Lease {
    /// The lease row.
    pub store: Arc<dyn LeaseStore>,
    /// This process's holder name ([`super::holder_name`]).
    pub holder: String,
    /// The lease's times.
    pub timing: Timing,
    /// The schema version this build knows.
    pub supported_schema: i64,
    /// Set while leading (fenced writes read it).
    pub term: Arc<Term>,
    /// Where the role is announced.
    pub role: watch::Sender<Role>,
}

/// Drives the lease until `stop`: one call every `timing.tick`, the role judged every
/// [`JUDGE_EVERY`] meanwhile (a call that hangs does not keep a leader leading), the
/// term set before a role is announced. A leader stopping gives the lease up.
pub async fn run(lease: Lease, tasks: TaskTracker, stop: CancellationToken) {
    let Lease {
        store,
        holder,
        timing,
        supported_schema,
        term,
        role,
    } = lease;
    let mut machine = Machine::new(timing, supported_schema, Instant::now());
    tracing::info!(%holder, "waiting for the leader lease");
    let publish = |machine: &mut Machine| {
        let now = machine.role(Instant::now());
        if *role.borrow() != now {
            term.set(match &now {
                Role::Leader { epoch } => Some((holder.clone(), *epoch)),
                _ => None,
            });
            match &now {
                Role::Leader { epoch } => tracing::info!(epoch, "this replica leads"),
                Role::Follower => tracing::info!("this replica follows"),
                Role::Detached { reason } => {
                    tracing::error!(%reason, "this replica stops serving")
                }
            }
            role.send_replace(now);
        }
    };
    loop {
        let sent = Instant::now();
        let (s, h, held) = (store.clone(), holder.clone(), machine.held());
        let mut call = tasks.spawn_blocking(move || s.lease_tick(&h, held, timing.ttl));
        let answer = loop {
            tokio::select! {
                r = &mut call => break r,
                _ = tokio::time::sleep(JUDGE_EVERY) => publish(&mut machine),
                _ = stop.cancelled() => break Ok(Err(StoreError::Interrupted("stopping".into()))),
            }
        };
        match answer {
            Ok(Err(e)) if !stop.is_cancelled() => {
                tracing::warn!(error = %e, "leader lease round trip failed");
                machine.answered(sent, Err(e));
            }
            Ok(a) => machine.answered(sent, a),
            Err(e) => tracing::warn!(error = %e, "leader lease call ended"),
        }
        if stop.is_cancelled() {
            break;
        }
        publish(&mut machine);
        let next = tokio::time::Instant::from_std(sent + timing.tick);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => break,
                _ = tokio::time::sleep(JUDGE_EVERY) => publish(&mut machine),
                _ = stop.cancelled() => break,
            }
        }
        if stop.is_cancelled() {
            break;
        }
    }
    // Stopping: no leader-only write from here on, and the next replica need not wait
    // for the lease to expire.
    term.set(None);
    if let Some(epoch) = machine.held() {
        let r = tasks
            .spawn_blocking(move || store.lease_release(&holder, epoch))
            .await;
        match r {
            Ok(Ok(())) => tracing::info!(epoch, "gave the leader lease up"),
            Ok(Err(e)) => tracing::warn!(error = %e, "give the leader lease up"),
            Err(e) => tracing::warn!(error = %e, "give the leader lease up"),
        }
    }
    role.send_replace(Role::Follower);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tick(epoch: Option<i64>) -> Result<LeaseTick, StoreError> {
        Ok(LeaseTick { epoch, schema: 2 })
    }

    #[test]
    fn a_leader_steps_down_before_its_lease_can_expire() {
        let t = Timing::default();
        let t0 = Instant::now();
        let mut m = Machine::new(t, 2, t0);
        assert_eq!(m.role(t0), Role::Follower);
        m.answered(t0, tick(Some(7)));
        assert_eq!(m.role(t0), Role::Leader { epoch: 7 });
        assert_eq!(m.held(), Some(7));
        // Renewals fail (the database is unreachable): leader until keep, then follower
        // (before the lease expires in the database at ttl), then detached.
        for s in 1..8 {
            m.answered(t0 + Duration::from_secs(s), Err(StoreError::NotLeader));
        }
        assert_eq!(
            m.role(t0 + t.keep - Duration::from_millis(1)),
            Role::Leader { epoch: 7 }
        );
        assert_eq!(m.role(t0 + t.keep), Role::Follower);
        assert!(t.keep < t.ttl);
        assert_eq!(m.held(), None, "a lost term is not renewed");
        assert!(matches!(
            m.role(t0 + t.detach_after),
            Role::Detached { reason } if reason.contains("no answer from its database for 10 s")
        ));
        // The database answers again: a follower (another replica took the lease).
        m.answered(t0 + Duration::from_secs(11), tick(None));
        assert_eq!(m.role(t0 + Duration::from_secs(11)), Role::Follower);
    }

    #[test]
    fn a_renewal_keeps_the_lead_from_when_it_was_sent() {
        let t = Timing::default();
        let t0 = Instant::now();
        let mut m = Machine::new(t, 2, t0);
        m.answered(t0, tick(Some(1)));
        // Sent at 2 s, answered late: the lead runs from 2 s, not from the answer.
        m.answered(t0 + Duration::from_secs(2), tick(Some(1)));
        assert_eq!(
            m.role(t0 + Duration::from_secs(2) + t.keep - Duration::from_millis(1)),
            Role::Leader { epoch: 1 }
        );
        assert_eq!(m.role(t0 + Duration::from_secs(2) + t.keep), Role::Follower);
        // Another replica holds it: follower at once.
        let mut m = Machine::new(t, 2, t0);
        m.answered(t0, tick(Some(1)));
        m.answered(t0 + Duration::from_secs(2), tick(None));
        assert_eq!(m.role(t0 + Duration::from_secs(2)), Role::Follower);
    }

    #[test]
    fn a_newer_schema_detaches_the_replica() {
        let t0 = Instant::now();
        let mut m = Machine::new(Timing::default(), 2, t0);
        m.answered(
            t0,
            Ok(LeaseTick {
                epoch: Some(3),
                schema: 3,
            }),
        );
        assert!(matches!(
            m.role(t0),
            Role::Detached { reason } if reason.contains("schema version 3, newer than the 2")
        ));
    }

    /// The loop over a fake lease: takes it, leads, gives it up when stopped.
    #[tokio::test]
    async fn the_loop_leads_and_gives_the_lease_up() {
        #[derive(Default)]
        struct Fake {
            released: std::sync::Mutex<Vec<i64>>,
        }
        impl LeaseStore for Fake {
            fn lease_tick(
                &self,
                _: &str,
                _: Option<i64>,
                _: Duration,
            ) -> Result<LeaseTick, StoreError> {
                Ok(LeaseTick {
                    epoch: Some(4),
                    schema: 2,
                })
            }
            fn lease_release(&self, _: &str, epoch: i64) -> Result<(), StoreError> {
                self.released.lock().unwrap().push(epoch);
                Ok(())
            }
        }
        let fake = Arc::new(Fake::default());
        let term = Arc::new(Term::default());
        let (tx, mut rx) = watch::channel(Role::Follower);
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        let looped = tasks.spawn(run(
            Lease {
                store: fake.clone(),
                holder: "me".into(),
                timing: Timing::default(),
                supported_schema: 2,
                term: term.clone(),
                role: tx,
            },
            tasks.clone(),
            stop.clone(),
        ));
        rx.wait_for(|r| *r == Role::Leader { epoch: 4 })
            .await
            .unwrap();
        assert_eq!(term.get(), Some(("me".to_string(), 4)));
        stop.cancel();
        looped.await.unwrap();
        assert_eq!(term.get(), None);
        assert_eq!(*fake.released.lock().unwrap(), [4]);
        assert_eq!(*rx.borrow(), Role::Follower);
    }
}
