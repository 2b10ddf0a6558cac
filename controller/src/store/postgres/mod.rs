//! [`Store`](super::Store) on PostgreSQL (`drover serve --database postgres://...`): the
//! pool, the bridge from the caller's thread and the value conversions here, the URL and
//! TLS in `url.rs`, the schema in `migrations.rs`, one file per aggregate.
//!
//! The client is the synchronous `postgres` crate in an r2d2 pool. Each connection drives
//! its socket on a small tokio runtime of its own, which must not be entered from a thread
//! that runs async tasks: [`PgStore::with`] runs a call in place on a plain thread or a
//! blocking-pool thread (how [`super::blocking`] calls it), under `block_in_place` on a
//! worker of a multi-threaded runtime, and on a scoped thread of its own otherwise. The
//! pool is dropped the same way.
//!
//! Several replicas share one database (`replicas.rs`): each holds a *shared* session
//! advisory lock for its life, which a controller of the earlier one-per-database build
//! (which takes it exclusively) cannot take, and which such a controller still running
//! refuses to this build: the two never write at once. The leader lease, its fencing, the
//! shared secrets and the fan-out channel are in `replicas.rs`; [`PgStore::fenced`] is a
//! handle whose leader-only writes check the lease in their own transaction.

mod agents;
mod batch_reads;
mod drains;
mod events;
mod images;
mod jobs;
mod migrations;
mod replicas;
mod rollouts;
mod runners;
#[cfg(any(test, feature = "pg-test-server"))]
pub mod test_server;
mod tls;
mod tokens;
mod upgrades;
mod url;

use std::sync::{Arc, Mutex};

use postgres::Client;
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;
pub use migrations::SCHEMA_VERSION;
pub use replicas::{CHANNEL, Listener};
pub use url::{DatabaseUrl, UrlError, redact};

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// Session advisory lock key: held shared by every replica of this build, exclusively by a
/// controller of the earlier one-per-database build. "drover1".
const CONTROLLER_LOCK: i64 = 0x0064_726f_7665_7231;

/// Connections kept open at most: the blocking pool runs a few store calls at once.
const POOL_SIZE: u32 = 8;

/// PostgreSQL-backed store. Every intent is one transaction on a pooled connection.
pub struct PgStore {
    /// `None` only while dropping.
    pool: Option<Pool>,
    /// The connection holding [`CONTROLLER_LOCK`]; `None` while dropping and in a
    /// [`PgStore::fenced`] handle (the store it came from holds it).
    lock: Mutex<Option<Client>>,
    /// Set in a [`PgStore::fenced`] handle: the leader's term its leader-only writes check.
    fence: Option<Arc<crate::replicas::Term>>,
    /// Where the store is (the listener connects there too).
    url: DatabaseUrl,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore")
    }
}

pub(super) use crate::store::columns::{from_ts, from_u, json, to_json, ts, u};

/// Runs `f` where a connection's own runtime may block: in place, under `block_in_place`,
/// or on a scoped thread (see the module doc).
fn off_runtime<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        // A plain thread, or tokio's blocking pool (no task runs there): `try_current`
        // errs on the first only, and both may block.
        Err(_) => f(),
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        Ok(_) => std::thread::scope(|s| match s.spawn(f).join() {
            Ok(r) => r,
            Err(panic) => std::panic::resume_unwind(panic),
        }),
    }
}

impl PgStore {
    /// Connects to `url`, takes the controller lock and migrates the database to
    /// [`SCHEMA_VERSION`]; refuses, unchanged, a database of a newer build or one another
    /// controller holds.
    pub fn open(url: &DatabaseUrl) -> Result<PgStore, StoreError> {
        off_runtime(|| PgStore::open_here(url))
    }

    fn open_here(url: &DatabaseUrl) -> Result<PgStore, StoreError> {
        let mut lock = take_controller_lock(url)?;
        migrations::migrate(&mut lock, &url.redacted())?;
        let manager = PostgresConnectionManager::new(url.config().clone(), url.tls());
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(std::time::Duration::from_secs(10))
            .build(manager)?;
        Ok(PgStore {
            pool: Some(pool),
            lock: Mutex::new(Some(lock)),
            fence: None,
            url: url.clone(),
        })
    }

    /// A handle on the same pool whose leader-only writes (advancing agents, rollout
    /// states, retired runners, event pruning) first check, in their own transaction,
    /// that `term` holds the lease: a replica that lost it (or whose lease expired by the
    /// database's clock) writes nothing, with [`StoreError::NotLeader`].
    pub fn fenced(&self, term: Arc<crate::replicas::Term>) -> PgStore {
        PgStore {
            pool: self.pool.clone(),
            lock: Mutex::new(None),
            fence: Some(term),
            url: self.url.clone(),
        }
    }

    /// Checks that the connection holding [`CONTROLLER_LOCK`] is alive, and when it is
    /// not (the database restarted, the link was cut: a session lock ends with its
    /// session) takes the lock again on a new connection, so a controller of the earlier
    /// one-per-database build still cannot start beside this replica. Refused with
    /// [`StoreError::InUse`] when such a controller took it meanwhile. Nothing to do in a
    /// [`PgStore::fenced`] handle. Called with every lease round trip.
    pub(super) fn keep_controller_lock(&self) -> Result<(), StoreError> {
        off_runtime(|| {
            let mut held = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some(client) = held.as_mut() else {
                return Ok(());
            };
            if !client.is_closed() && client.batch_execute("").is_ok() {
                return Ok(());
            }
            let fresh = take_controller_lock(&self.url)?;
            tracing::warn!(
                "the connection holding the controller lock was lost: took the lock again"
            );
            *held = Some(fresh);
            Ok(())
        })
    }

    /// Runs `f` on a pooled connection (see [`off_runtime`]).
    pub(super) fn with<R: Send>(
        &self,
        f: impl FnOnce(&mut Client) -> Result<R, StoreError> + Send,
    ) -> Result<R, StoreError> {
        let pool = self
            .pool
            .as_ref()
            .ok_or(StoreError::Interrupted("the store is closing".to_string()))?;
        off_runtime(|| {
            let mut conn = pool.get()?;
            f(&mut conn)
        })
    }
}

/// A new connection to `url` holding [`CONTROLLER_LOCK`] shared; [`StoreError::InUse`]
/// when a controller of the earlier build holds it.
fn take_controller_lock(url: &DatabaseUrl) -> Result<Client, StoreError> {
    let mut lock = url.config().connect(url.tls())?;
    let held: bool = lock
        .query_one(
            "SELECT pg_try_advisory_lock_shared($1)",
            &[&CONTROLLER_LOCK],
        )?
        .try_get(0)?;
    if !held {
        return Err(StoreError::InUse(url.redacted()));
    }
    Ok(lock)
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // Dropping a connection blocks on its runtime: off the caller's async thread.
        let pool = self.pool.take();
        let lock = self
            .lock
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        off_runtime(move || {
            drop(pool);
            drop(lock);
        });
    }
}

#[cfg(test)]
mod tests;
