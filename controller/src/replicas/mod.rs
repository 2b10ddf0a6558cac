//! Several `drover serve` replicas on one PostgreSQL database forming one controller.
//!
//! - [`lease`]: the leader lease (a row with an epoch and an expiry by the database's
//!   clock), the pure [`lease::Machine`] deciding this replica's [`Role`], and its loop.
//!   Only the leader runs the reconciler, the health sweeper and pruning; its leader-only
//!   writes go through a fenced store handle checking the [`Term`] in their transaction.
//! - [`fanout`]: what one replica changes that sessions on another must see (a pushed
//!   desired state, a closed session, a reconciliation to run) as `NOTIFY` payloads, with
//!   a periodic re-check so a lost notification only delays.
//! - [`shared_secrets`]: the CA, the secrets key and the key-encryption key's check value
//!   in the database, sealed under the key-encryption key every replica is given.
//!
//! With SQLite (one process, by the data dir's lock) the controller is its own leader
//! ([`Cluster::solo`]) and none of this runs.

pub mod fanout;
pub mod lease;
pub mod shared_secrets;

use std::sync::Mutex;

use tokio::sync::watch;

/// What this replica does now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Serves agents and admins; another replica (or none yet) leads.
    Follower,
    /// Serves, and runs the leader-only loops under this epoch.
    Leader {
        /// The lease's fencing epoch.
        epoch: i64,
    },
    /// Cut off from the database (or outdated by a newer schema): serves nothing, and its
    /// agent sessions are closed so the agents reconnect to another replica.
    Detached {
        /// Why, for logs and refusals.
        reason: String,
    },
}

/// The term this replica leads under, read by fenced store handles: (holder, epoch) while
/// leader, `None` otherwise. Cleared before a loss of the lease is announced.
#[derive(Debug, Default)]
pub struct Term {
    current: Mutex<Option<(String, i64)>>,
}

impl Term {
    /// The current term.
    pub fn get(&self) -> Option<(String, i64)> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sets or clears the term.
    pub fn set(&self, term: Option<(String, i64)>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = term;
    }
}

/// This replica's place in the controller: its role and the fan-out publisher. Cheap to
/// clone.
#[derive(Debug, Clone)]
pub struct Cluster {
    role: watch::Receiver<Role>,
    publisher: Option<fanout::Publisher>,
}

impl Cluster {
    /// A controller alone on its store (SQLite): always the leader, nothing to publish.
    pub fn solo() -> Cluster {
        let (tx, rx) = watch::channel(Role::Leader { epoch: 0 });
        // The receiver keeps the last value when the sender is gone.
        drop(tx);
        Cluster {
            role: rx,
            publisher: None,
        }
    }

    /// A replica whose role `role` follows, publishing changes through `publisher`.
    pub fn replica(role: watch::Receiver<Role>, publisher: fanout::Publisher) -> Cluster {
        Cluster {
            role,
            publisher: Some(publisher),
        }
    }

    /// The role now.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// A receiver of role changes.
    pub fn watch(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader { .. })
    }

    /// Whether several replicas may share the store.
    pub fn is_replica(&self) -> bool {
        self.publisher.is_some()
    }

    /// `Err(reason)` while detached from the database.
    pub fn serving(&self) -> Result<(), String> {
        match &*self.role.borrow() {
            Role::Detached { reason } => Err(reason.clone()),
            _ => Ok(()),
        }
    }

    /// Tells every replica (this one included) about `change`.
    pub fn publish(&self, change: fanout::Change) {
        if let Some(p) = &self.publisher {
            p.send(change);
        }
    }
}

/// A holder name unique to this process: the host name and random bits.
pub fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().chars().take(64).collect::<String>())
        .unwrap_or_default();
    format!("{host}/{}", hex::encode(rand::random::<[u8; 6]>()))
}
