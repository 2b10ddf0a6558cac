//! `drover serve` as one replica among several on a PostgreSQL database: the lease loop,
//! the leader-only loops, the fan-out (publishing and listening) and what a replica does
//! when it loses its database (see `crate::replicas`).

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::spawn_essential;
use super::state::AppState;
use crate::fleet::Fleet;
use crate::health::Health;
use crate::replicas::fanout::{self, Change, Publisher};
use crate::replicas::{Cluster, Role, Term, lease};
use crate::store::Store;
use crate::store::postgres::{PgStore, SCHEMA_VERSION};

/// How often the fleet is reconciled besides after every event.
const RECONCILE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);
/// How often the leader passes over the running agent upgrade (reports also trigger one).
const UPGRADE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// How often a replica writes its agents' last contacts: the leader judges agents on
/// other replicas by them, so at most every heartbeat interval and every 5 s.
pub(super) fn contacts_every(heartbeat: std::time::Duration) -> std::time::Duration {
    heartbeat.clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(5),
    )
}

/// A replica's pieces, made before the server state so the fleet, health and sessions
/// can be given them.
pub(super) struct Parts {
    pub(super) cluster: Cluster,
    pub(super) fenced: Arc<dyn Store>,
    pub(super) publisher: Publisher,
    term: Arc<Term>,
    role: watch::Sender<Role>,
    queue: mpsc::UnboundedReceiver<Change>,
}

impl Parts {
    pub(super) fn new(pg: &Arc<PgStore>) -> Parts {
        let term = Arc::new(Term::default());
        let fenced: Arc<dyn Store> = Arc::new(pg.fenced(term.clone()));
        let (role, role_rx) = watch::channel(Role::Follower);
        let (publisher, queue) = Publisher::new();
        Parts {
            cluster: Cluster::replica(role_rx, publisher.clone()),
            fenced,
            publisher,
            term,
            role,
            queue,
        }
    }

    /// Starts the lease loop, the publisher, the listener and the loop applying what it
    /// hears, until `stop`; returns the essential tasks' handles.
    pub(super) fn start(
        self,
        pg: Arc<PgStore>,
        state: &AppState,
        stop: CancellationToken,
        root: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<Option<&'static str>>> {
        let tasks = &state.tasks;
        let holder = crate::replicas::holder_name();
        tracing::info!(%holder, "replica on a shared database");
        let lease_task = spawn_essential(
            tasks,
            "leader lease",
            lease::run(
                lease::Lease {
                    store: pg.clone(),
                    holder,
                    timing: lease::Timing::default(),
                    supported_schema: SCHEMA_VERSION,
                    term: self.term,
                    role: self.role,
                },
                tasks.clone(),
                stop.clone(),
            ),
            root.clone(),
        );
        let origin = fanout::Origin::random();
        tasks.spawn(fanout::publish(
            pg.clone(),
            origin.clone(),
            self.queue,
            stop.clone(),
        ));
        let (heard, changes) = mpsc::unbounded_channel();
        let listen_stop = stop.clone();
        tasks.spawn_blocking(move || fanout::listen(|| pg.listener(), &origin, heard, listen_stop));
        let apply_task = spawn_essential(
            tasks,
            "replica fan-out",
            apply_changes(changes, state.clone(), stop),
            root,
        );
        vec![lease_task, apply_task]
    }
}

/// Acts on what other replicas (and this one) published, looks again at every local
/// session every [`fanout::RECHECK`], and closes every local session when the replica is
/// detached from its database, so its agents reconnect to another replica.
async fn apply_changes(
    mut changes: mpsc::UnboundedReceiver<Change>,
    state: AppState,
    stop: CancellationToken,
) {
    let mut recheck = tokio::time::interval(fanout::RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut role = state.cluster.watch();
    let mut role_open = true;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            c = changes.recv() => match c {
                None => break,
                Some(Change::Kick(id)) => state.sessions.kick_local(&id),
                Some(Change::Close(id)) => {
                    state.sessions.close_local(&id);
                    state.health.leases.revoked(&id);
                }
                Some(Change::Reconcile) => {
                    if state.cluster.is_leader() {
                        let fleet = state.fleet.clone();
                        state.tasks.spawn(async move { fleet.reconcile().await });
                    }
                }
                Some(Change::All) => state.sessions.kick_all_local(),
            },
            _ = recheck.tick() => state.sessions.kick_all_local(),
            changed = role.changed(), if role_open => {
                if changed.is_err() {
                    role_open = false;
                    continue;
                }
                let now = role.borrow_and_update().clone();
                if let Role::Detached { reason } = now {
                    let closed = state.sessions.close_all_local();
                    tracing::error!(%reason, sessions = closed, "closed every agent session here: the agents reconnect to another replica");
                }
            }
        }
    }
}

/// Runs the leader-only loops (health sweep and pruning, the reconciliation tick) while
/// `role` says this replica leads, stopping them at once when it no longer does. A
/// controller alone is always the leader. A panic in a loop is resumed here, so the
/// controller stops (see [`spawn_essential`]).
pub(super) async fn leader_loops(
    mut role: watch::Receiver<Role>,
    health: Arc<Health>,
    fleet: Arc<Fleet>,
    upgrades: Arc<crate::upgrade::Upgrades>,
    tasks: TaskTracker,
    stop: CancellationToken,
) {
    loop {
        let leading = async {
            let changes = role
                .wait_for(|r| matches!(r, Role::Leader { .. }))
                .await
                .is_ok();
            if !changes {
                // The role no longer changes (a controller alone, or stopping).
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = leading => {}
            _ = stop.cancelled() => return,
        }
        let term = stop.child_token();
        let sweep = tasks.spawn(health.clone().run_leader(term.clone()));
        let tick_stop = term.clone();
        let tick_fleet = fleet.clone();
        let reconcile = tasks.spawn(async move {
            let mut every = tokio::time::interval(RECONCILE_INTERVAL);
            loop {
                tokio::select! {
                    _ = tick_stop.cancelled() => break,
                    _ = every.tick() => tick_fleet.reconcile().await,
                }
            }
        });
        let upgrade_stop = term.clone();
        let upgrades = upgrades.clone();
        let upgrade = tasks.spawn(async move {
            let mut every = tokio::time::interval(UPGRADE_INTERVAL);
            loop {
                tokio::select! {
                    _ = upgrade_stop.cancelled() => break,
                    _ = every.tick() => if let Err(e) = upgrades.drive().await {
                        tracing::warn!(error = %e, "agent upgrade pass");
                    },
                }
            }
        });
        let lost = async {
            let changes = role
                .wait_for(|r| !matches!(r, Role::Leader { .. }))
                .await
                .is_ok();
            if !changes {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = lost => tracing::warn!("leader loops stopped: this replica no longer leads"),
            _ = stop.cancelled() => {}
        }
        term.cancel();
        for t in [sweep, reconcile, upgrade] {
            if let Err(e) = t.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
        if stop.is_cancelled() {
            return;
        }
    }
}
