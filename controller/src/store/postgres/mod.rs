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
//! One controller per database: [`PgStore::open`] takes a session advisory lock on a
//! connection kept for the store's life, and refuses when another process holds it.
//! Several replicas on one database (a lease, fencing) are not supported yet.

mod agents;
mod events;
mod migrations;
mod rollouts;
mod runners;
#[cfg(any(test, feature = "pg-test-server"))]
pub mod test_server;
mod tls;
mod tokens;
mod url;

use std::sync::Mutex;

use postgres::Client;
use r2d2_postgres::PostgresConnectionManager;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::StoreError;
pub use migrations::SCHEMA_VERSION;
pub use url::{DatabaseUrl, UrlError, redact};

type Pool = r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>;

/// Session advisory lock key held by the one controller on a database: "drover1".
const CONTROLLER_LOCK: i64 = 0x0064_726f_7665_7231;

/// Connections kept open at most: the blocking pool runs a few store calls at once.
const POOL_SIZE: u32 = 8;

/// PostgreSQL-backed store. Every intent is one transaction on a pooled connection.
pub struct PgStore {
    /// `None` only while dropping.
    pool: Option<Pool>,
    /// The connection holding [`CONTROLLER_LOCK`]; `None` only while dropping.
    lock: Mutex<Option<Client>>,
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
        let tls = url.tls();
        let mut lock = url.config().connect(tls.clone())?;
        let held: bool = lock
            .query_one("SELECT pg_try_advisory_lock($1)", &[&CONTROLLER_LOCK])?
            .try_get(0)?;
        if !held {
            return Err(StoreError::InUse(url.redacted()));
        }
        migrations::migrate(&mut lock, &url.redacted())?;
        let manager = PostgresConnectionManager::new(url.config().clone(), tls);
        let pool = r2d2::Pool::builder()
            .max_size(POOL_SIZE)
            .min_idle(Some(1))
            .connection_timeout(std::time::Duration::from_secs(10))
            .build(manager)?;
        Ok(PgStore {
            pool: Some(pool),
            lock: Mutex::new(Some(lock)),
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
