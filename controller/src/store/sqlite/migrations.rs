//! The schema as an ordered list of migrations, and applying them.

use rusqlite::Connection;

use crate::store::StoreError;

/// The schema, as an ordered list of migrations: `MIGRATIONS[i]` moves a database from
/// version `i` (its `user_version`) to `i + 1`. Append only; never edit one that shipped.
/// The first three keep `IF NOT EXISTS`: version 1 wrote no `user_version`, so a version-1
/// database reads as version 0 and migration 1 must leave its tables as they are.
const MIGRATIONS: &[&str] = &[
    // 1: enrollment tokens and agents.
    "
CREATE TABLE IF NOT EXISTS tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BLOB NOT NULL,
    labels      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    uses_left   INTEGER NOT NULL,
    revoked     INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS agents (
    id                 TEXT PRIMARY KEY,
    labels             TEXT NOT NULL,
    facts              TEXT NOT NULL,
    enrolled_at        INTEGER NOT NULL,
    last_seen          INTEGER,
    cert_serial        TEXT NOT NULL,
    cert_not_after     INTEGER NOT NULL,
    revoked_at         INTEGER,
    applied_generation INTEGER NOT NULL DEFAULT 0,
    token_id           TEXT NOT NULL
);
",
    // 2: runner spec generations, assignments, retired GitLab runners, rollout progress.
    "
CREATE TABLE IF NOT EXISTS generations (
    generation     INTEGER PRIMARY KEY,
    created_at     INTEGER NOT NULL,
    runners_sealed BLOB NOT NULL,
    strategy       TEXT NOT NULL,
    state          TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS assignments (
    agent_id         TEXT NOT NULL,
    runner           TEXT NOT NULL,
    url              TEXT NOT NULL,
    gitlab_runner_id INTEGER NOT NULL,
    token_sealed     BLOB NOT NULL,
    token_expires_at INTEGER,
    registration_key TEXT NOT NULL,
    registered       INTEGER NOT NULL,
    PRIMARY KEY (agent_id, runner)
);
CREATE TABLE IF NOT EXISTS retired (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    agent_id         TEXT NOT NULL,
    runner           TEXT NOT NULL,
    url              TEXT NOT NULL,
    gitlab_runner_id INTEGER NOT NULL,
    token_sealed     BLOB NOT NULL,
    token_expires_at INTEGER,
    registration_key TEXT NOT NULL,
    registered       INTEGER NOT NULL,
    after_generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS agent_rollouts (
    agent_id          TEXT PRIMARY KEY,
    target_generation INTEGER NOT NULL DEFAULT 0,
    ack_generation    INTEGER NOT NULL DEFAULT 0,
    ack_error         TEXT
);
",
    // 3: events (`drover events`), newest kept per agent and in all.
    "
CREATE TABLE IF NOT EXISTS events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    at        INTEGER,
    agent_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    runner    TEXT NOT NULL,
    message   TEXT NOT NULL,
    job_id    INTEGER NOT NULL DEFAULT 0,
    job_state TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_agent ON events (agent_id, id);
",
    // 4: the fleet's jobs (one row per agent and job) and agents-per-state samples.
    "
CREATE TABLE jobs (
    agent_id       TEXT NOT NULL,
    job_id         INTEGER NOT NULL,
    runner         TEXT NOT NULL,
    state          TEXT NOT NULL,
    failure_reason TEXT NOT NULL DEFAULT '',
    started_at     INTEGER,
    finished_at    INTEGER,
    duration_ms    INTEGER,
    queue_wait_ms  INTEGER,
    updated_at     INTEGER NOT NULL,
    PRIMARY KEY (agent_id, job_id)
);
CREATE INDEX jobs_updated ON jobs (updated_at);
CREATE TABLE fleet_samples (
    at       INTEGER PRIMARY KEY,
    healthy  INTEGER NOT NULL,
    degraded INTEGER NOT NULL,
    lost     INTEGER NOT NULL,
    revoked  INTEGER NOT NULL
);
",
    // 5: drained agents (`drover agent drain`): one row per drained agent, dropped on
    // undrain and when the agent is deleted.
    "
CREATE TABLE agent_drains (
    agent_id     TEXT PRIMARY KEY,
    requested_at INTEGER NOT NULL,
    deadline_at  INTEGER
);
",
    // 6: images pushed with `drover image push`: blobs by digest in chunks of
    // `BLOB_CHUNK_BYTES` (so every replica serves them), images by config digest, and their
    // delivery to each agent (`drover image ls`).
    "
CREATE TABLE image_blobs (
    digest  TEXT PRIMARY KEY,
    size    INTEGER NOT NULL
);
CREATE TABLE image_blob_chunks (
    digest  TEXT NOT NULL,
    idx     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (digest, idx)
);
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    reference   TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE TABLE image_deliveries (
    agent_id        TEXT NOT NULL,
    image_id        TEXT NOT NULL,
    reference       TEXT NOT NULL,
    state           TEXT NOT NULL,
    bytes_total     INTEGER NOT NULL,
    bytes_done      INTEGER NOT NULL,
    bytes_sent      INTEGER NOT NULL,
    layers_present  INTEGER NOT NULL,
    error           TEXT NOT NULL,
    rate_limit      INTEGER NOT NULL,
    updated_at      INTEGER,
    PRIMARY KEY (agent_id, image_id)
);
",
    // 7: agent binary upgrades: binaries (content-addressed, in 1 MiB chunks), upgrades and
    // each agent's progress.
    "
CREATE TABLE upgrade_binaries (
    sha256     TEXT PRIMARY KEY,
    arch       TEXT NOT NULL,
    version    TEXT NOT NULL,
    size       INTEGER NOT NULL,
    signature  BLOB NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE upgrade_chunks (
    sha256 TEXT NOT NULL,
    seq    INTEGER NOT NULL,
    data   BLOB NOT NULL,
    PRIMARY KEY (sha256, seq)
);
CREATE TABLE upgrades (
    id                     INTEGER PRIMARY KEY,
    created_at             INTEGER NOT NULL,
    selector               TEXT NOT NULL,
    max_unavailable        INTEGER NOT NULL,
    health_timeout_seconds INTEGER NOT NULL,
    binaries               TEXT NOT NULL,
    state                  TEXT NOT NULL,
    reason                 TEXT NOT NULL DEFAULT ''
);
CREATE TABLE upgrade_agents (
    upgrade_id INTEGER NOT NULL,
    agent_id   TEXT NOT NULL,
    state      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '',
    since      INTEGER NOT NULL,
    PRIMARY KEY (upgrade_id, agent_id)
);
",
    // 8: the host-health reasons the replica holding an agent's session evaluated (a JSON
    // list, empty when none), for the other replicas.
    "
ALTER TABLE agents ADD COLUMN host_reasons TEXT NOT NULL DEFAULT '';
",
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The database's schema version; refuses one newer than this build before anything is
/// written to it.
pub(super) fn check_version(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    let found: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            path: name.to_string(),
            found,
            supported: SCHEMA_VERSION,
        });
    }
    Ok(found)
}

/// Applies the migrations after `from`, each in its own transaction with its new
/// `user_version`, so a failure leaves the database at the last complete version.
pub(super) fn migrate(conn: &mut Connection, from: i64) -> Result<(), StoreError> {
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .skip(usize::try_from(from).unwrap_or(0))
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{
        AgentStore, EnrollmentStore, EventFilter, EventStore, RolloutState, RolloutStore,
        RunnerStore,
    };

    fn user_version(path: &Path) -> i64 {
        Connection::open(path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap()
    }

    /// A database file made from `fixture` (old DDL and rows, as that release wrote them).
    fn database_from(dir: &Path, fixture: &str) -> std::path::PathBuf {
        let path = dir.join("drover.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(fixture)
            .unwrap();
        path
    }

    #[test]
    fn upgrades_a_version_1_database_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = database_from(dir.path(), include_str!("fixtures/v1.sql"));
        assert_eq!(user_version(&path), 0, "version 1 wrote no user_version");
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        let tokens = s.list_tokens().unwrap();
        assert_eq!(tokens.len(), 1);
        assert_eq!(tokens[0].uses_left, 2);
        let a = s.get_agent("a1").unwrap().unwrap();
        assert_eq!(a.facts.hostname, "box");
        assert_eq!(a.facts.ips, ["10.0.0.1"]);
        assert_eq!(a.labels.get("site").map(String::as_str), Some("lab"));
        // The new tables are there and empty.
        assert_eq!(s.latest_generation().unwrap(), None);
        assert!(s.all_assignments().unwrap().is_empty());
        assert!(
            s.list_events(&EventFilter {
                limit: 10,
                ..EventFilter::default()
            })
            .unwrap()
            .is_empty()
        );
        drop(s);
        SqliteStore::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
    }

    #[test]
    fn opens_a_database_of_the_release_before_versioned_migrations() {
        let dir = tempfile::tempdir().unwrap();
        let path = database_from(dir.path(), include_str!("fixtures/v3.sql"));
        assert_eq!(user_version(&path), 3);
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(user_version(&path), SCHEMA_VERSION);
        assert_eq!(s.list_agents().unwrap().len(), 1);
        let g = s.latest_generation().unwrap().unwrap();
        assert_eq!((g.generation, g.state), (1, RolloutState::Complete));
        assert_eq!(g.runners_sealed, [1, 2, 3]);
        let a = &s.assignments("a1").unwrap()[0];
        assert_eq!((a.gitlab_runner_id, a.registered), (42, true));
        assert_eq!(a.token_sealed, [4, 5]);
        let r = &s.list_retired().unwrap()[0];
        assert_eq!(
            (r.assignment.runner.as_str(), r.after_generation),
            ("old", 1)
        );
        assert_eq!(s.agent_rollout("a1").unwrap().unwrap().ack_generation, 1);
        let events = s
            .list_events(&EventFilter {
                limit: 10,
                ..EventFilter::default()
            })
            .unwrap();
        assert_eq!(
            (events[0].job_id, events[0].job_state.as_str()),
            (7, "success")
        );
    }

    #[test]
    fn refuses_a_newer_database_and_leaves_it_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = database_from(
            dir.path(),
            &format!(
                "{}PRAGMA user_version = {};",
                include_str!("fixtures/v3.sql"),
                SCHEMA_VERSION + 1
            ),
        );
        let before = std::fs::read(&path).unwrap();
        let err = SqliteStore::open(&path).unwrap_err();
        assert!(matches!(err, StoreError::TooNew { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION));
        let text = err.to_string();
        assert!(text.contains(&path.display().to_string()), "{text}");
        assert!(
            text.contains(&format!("version {}", SCHEMA_VERSION + 1)),
            "{text}"
        );
        assert!(
            text.contains(&format!("the {SCHEMA_VERSION} this drover knows")),
            "{text}"
        );
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }

    #[test]
    fn a_failed_migration_leaves_the_last_complete_version() {
        let mut conn = Connection::open_in_memory().unwrap();
        // Version 2 already holds an `events` that is a view: migration 3's index fails.
        conn.execute_batch(MIGRATIONS[0]).unwrap();
        conn.execute_batch(MIGRATIONS[1]).unwrap();
        conn.execute_batch(
            "CREATE VIEW events AS SELECT 1 AS id, '' AS agent_id; PRAGMA user_version = 2;",
        )
        .unwrap();
        assert!(migrate(&mut conn, 2).is_err());
        let v: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 2);
    }
}
