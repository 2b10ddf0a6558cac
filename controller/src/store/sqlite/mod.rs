//! [`Store`](super::Store) on an embedded SQLite database (`DATA_DIR/drover.db`): the
//! connection and the value conversions here, the schema in `migrations.rs`, one file per
//! aggregate.

mod agents;
pub mod backup;
mod drains;
mod events;
mod images;
mod jobs;
mod migrations;
mod rollouts;
mod runners;
mod tokens;
mod upgrades;

use std::path::Path;
use std::sync::Mutex;

use rusqlite::Connection;

use super::StoreError;
pub use migrations::SCHEMA_VERSION;

/// SQLite-backed store. One connection behind a mutex: calls are short.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

/// One agent at a time: each read is a local call on the one connection.
impl crate::store::BatchReadStore for SqliteStore {}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

pub(super) use crate::store::columns::{from_ts, from_u, json, to_json, ts, u};

impl SqliteStore {
    /// Opens (creating if needed) the database file at `path`.
    /// Migrates it to [`SCHEMA_VERSION`]; refuses, unchanged, a database of a newer build.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open(path)?, &path.display().to_string())
    }

    /// A private in-memory database (tests).
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        SqliteStore::init(Connection::open_in_memory()?, ":memory:")
    }

    fn init(mut conn: Connection, name: &str) -> Result<SqliteStore, StoreError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let version = migrations::check_version(&conn, name)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // WAL with synchronous=NORMAL: a commit is one WAL append, fsynced at checkpoints,
        // not per transaction. The file stays consistent whatever happens; a crash of the
        // controller process loses nothing, a power loss at most the last commits (agents
        // re-report their applied generation in every hello). A rollout to 10,000 agents
        // is several writes per agent, which per-commit fsyncs made take minutes.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // 16 MiB of page cache (the default is 2 MiB): a fleet of 10,000 agents fits, so a
        // reconciliation reads no page twice from the file.
        conn.pragma_update(None, "cache_size", -16384)?;
        conn.set_prepared_statement_cache_capacity(64);
        migrations::migrate(&mut conn, version)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    pub(super) fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::EnrollmentStore;

    /// A store whose every write to `table` fails, as a constraint would.
    fn failing_on(table: &'static str) -> SqliteStore {
        let s = SqliteStore::open_in_memory().unwrap();
        s.conn()
            .execute_batch(&format!(
                "CREATE TRIGGER fail_insert BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, 'injected'); END;
                 CREATE TRIGGER fail_update BEFORE UPDATE ON {table} BEGIN SELECT RAISE(ABORT, 'injected'); END;
                 CREATE TRIGGER fail_delete BEFORE DELETE ON {table} BEGIN SELECT RAISE(ABORT, 'injected'); END;"
            ))
            .unwrap();
        s
    }

    #[test]
    fn suite() {
        crate::store::suite::run_all(
            &|| Box::new(SqliteStore::open_in_memory().unwrap()),
            &|table| Box::new(failing_on(table)),
        );
    }

    #[test]
    fn reopens_from_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("drover.db");
        let t = crate::store::suite::token(1);
        SqliteStore::open(&path).unwrap().create_token(&t).unwrap();
        assert_eq!(
            SqliteStore::open(&path).unwrap().list_tokens().unwrap(),
            vec![t]
        );
    }
}
