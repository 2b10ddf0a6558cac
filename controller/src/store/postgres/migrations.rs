//! The schema as an ordered list of migrations, and applying them.
//!
//! The version is the one row of `drover_schema`. Migrations run under a transaction-level
//! advisory lock, so two processes opening one fresh database do not both create it.

use postgres::Client;

use crate::store::StoreError;

/// `MIGRATIONS[i]` moves a database from version `i` to `i + 1`. Append only; never edit one
/// that shipped. Times are unix seconds (as in SQLite), JSON columns text.
const MIGRATIONS: &[&str] = &[
    // 1: the schema of SQLite's version 3, at once.
    "
CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    secret_hash BYTEA NOT NULL,
    labels      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    uses_left   BIGINT NOT NULL,
    revoked     BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE TABLE agents (
    id                 TEXT PRIMARY KEY,
    labels             TEXT NOT NULL,
    facts              TEXT NOT NULL,
    enrolled_at        BIGINT NOT NULL,
    last_seen          BIGINT,
    cert_serial        TEXT NOT NULL,
    cert_not_after     BIGINT NOT NULL,
    revoked_at         BIGINT,
    applied_generation BIGINT NOT NULL DEFAULT 0,
    token_id           TEXT NOT NULL
);
CREATE TABLE generations (
    generation     BIGINT PRIMARY KEY,
    created_at     BIGINT NOT NULL,
    runners_sealed BYTEA NOT NULL,
    strategy       TEXT NOT NULL,
    state          TEXT NOT NULL,
    reason         TEXT NOT NULL DEFAULT ''
);
CREATE TABLE assignments (
    agent_id         TEXT NOT NULL,
    runner           TEXT NOT NULL,
    url              TEXT NOT NULL,
    gitlab_runner_id BIGINT NOT NULL,
    token_sealed     BYTEA NOT NULL,
    token_expires_at BIGINT,
    registration_key TEXT NOT NULL,
    registered       BOOLEAN NOT NULL,
    PRIMARY KEY (agent_id, runner)
);
CREATE TABLE retired (
    id               BIGSERIAL PRIMARY KEY,
    agent_id         TEXT NOT NULL,
    runner           TEXT NOT NULL,
    url              TEXT NOT NULL,
    gitlab_runner_id BIGINT NOT NULL,
    token_sealed     BYTEA NOT NULL,
    token_expires_at BIGINT,
    registration_key TEXT NOT NULL,
    registered       BOOLEAN NOT NULL,
    after_generation BIGINT NOT NULL
);
CREATE TABLE agent_rollouts (
    agent_id          TEXT PRIMARY KEY,
    target_generation BIGINT NOT NULL DEFAULT 0,
    ack_generation    BIGINT NOT NULL DEFAULT 0,
    ack_error         TEXT
);
CREATE TABLE events (
    id        BIGSERIAL PRIMARY KEY,
    at        BIGINT,
    agent_id  TEXT NOT NULL,
    kind      TEXT NOT NULL,
    runner    TEXT NOT NULL,
    message   TEXT NOT NULL,
    job_id    BIGINT NOT NULL DEFAULT 0,
    job_state TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_agent ON events (agent_id, id);
",
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Advisory lock key (transaction level) serialising migrations: "drover" in ASCII.
const MIGRATION_LOCK: i64 = 0x6472_6f76_6572;

/// Brings the database to [`SCHEMA_VERSION`], each migration in its own transaction with
/// its new version, so a failure leaves the last complete version. A database of a newer
/// build is refused before anything is written to it.
pub(super) fn migrate(client: &mut Client, name: &str) -> Result<(), StoreError> {
    loop {
        let mut tx = client.transaction()?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS drover_schema (version BIGINT NOT NULL)")?;
        let found: i64 = match tx.query_opt("SELECT version FROM drover_schema", &[])? {
            Some(row) => row.try_get(0)?,
            None => {
                tx.execute("INSERT INTO drover_schema (version) VALUES (0)", &[])?;
                0
            }
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: name.to_string(),
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let Some(sql) = MIGRATIONS.get(usize::try_from(found).unwrap_or(0)) else {
            tx.commit()?;
            return Ok(());
        };
        tx.batch_execute(sql)?;
        tx.execute("UPDATE drover_schema SET version = $1", &[&(found + 1)])?;
        tx.commit()?;
    }
}
