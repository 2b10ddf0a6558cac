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
    // 2: the fleet's jobs (one row per agent and job) and agents-per-state samples.
    "
CREATE TABLE jobs (
    agent_id       TEXT NOT NULL,
    job_id         BIGINT NOT NULL,
    runner         TEXT NOT NULL,
    state          TEXT NOT NULL,
    failure_reason TEXT NOT NULL DEFAULT '',
    started_at     BIGINT,
    finished_at    BIGINT,
    duration_ms    BIGINT,
    queue_wait_ms  BIGINT,
    updated_at     BIGINT NOT NULL,
    PRIMARY KEY (agent_id, job_id)
);
CREATE INDEX jobs_updated ON jobs (updated_at);
CREATE TABLE fleet_samples (
    at       BIGINT PRIMARY KEY,
    healthy  BIGINT NOT NULL,
    degraded BIGINT NOT NULL,
    lost     BIGINT NOT NULL,
    revoked  BIGINT NOT NULL
);
",
    // 3: several replicas on one database. `drover_secrets`: the shared CA, secrets key and
    // the key-encryption key's check value, each sealed under the key-encryption key.
    // `drover_leader`: the one lease row (holder, fencing epoch, expiry by the database's
    // clock). `drover_event_ids`: event ids handed out under a row lock, so ids commit in
    // order whichever replica writes (a sequence does not: `events --follow` would skip).
    "
CREATE TABLE drover_secrets (
    name   TEXT PRIMARY KEY,
    value  BYTEA NOT NULL
);
CREATE TABLE drover_leader (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    holder      TEXT NOT NULL,
    epoch       BIGINT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
INSERT INTO drover_leader (id, holder, epoch, expires_at) VALUES (1, '', 0, 'epoch');
CREATE TABLE drover_event_ids (last BIGINT NOT NULL);
INSERT INTO drover_event_ids (last) SELECT COALESCE(MAX(id), 0) FROM events;
",
    // 4: drained agents (`drover agent drain`): one row per drained agent, dropped on
    // undrain and when the agent is deleted.
    "
CREATE TABLE agent_drains (
    agent_id     TEXT PRIMARY KEY,
    requested_at BIGINT NOT NULL,
    deadline_at  BIGINT
);
",
    // 5: images pushed with `drover image push`: blobs by digest in chunks of
    // `BLOB_CHUNK_BYTES` (so every replica serves them), images by config digest, and their
    // delivery to each agent (`drover image ls`).
    "
CREATE TABLE image_blobs (
    digest  TEXT PRIMARY KEY,
    size    BIGINT NOT NULL
);
CREATE TABLE image_blob_chunks (
    digest  TEXT NOT NULL,
    idx     BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (digest, idx)
);
CREATE TABLE images (
    id          TEXT PRIMARY KEY,
    reference   TEXT NOT NULL,
    manifest    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE TABLE image_deliveries (
    agent_id        TEXT NOT NULL,
    image_id        TEXT NOT NULL,
    reference       TEXT NOT NULL,
    state           TEXT NOT NULL,
    bytes_total     BIGINT NOT NULL,
    bytes_done      BIGINT NOT NULL,
    bytes_sent      BIGINT NOT NULL,
    layers_present  BIGINT NOT NULL,
    error           TEXT NOT NULL,
    rate_limit      BIGINT NOT NULL,
    updated_at      BIGINT,
    PRIMARY KEY (agent_id, image_id)
);
",
    // 6: agent binary upgrades: binaries (content-addressed, in 1 MiB chunks), upgrades and
    // each agent's progress.
    "
CREATE TABLE upgrade_binaries (
    sha256     TEXT PRIMARY KEY,
    arch       TEXT NOT NULL,
    version    TEXT NOT NULL,
    size       BIGINT NOT NULL,
    signature  BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE TABLE upgrade_chunks (
    sha256 TEXT NOT NULL,
    seq    BIGINT NOT NULL,
    data   BYTEA NOT NULL,
    PRIMARY KEY (sha256, seq)
);
CREATE TABLE upgrades (
    id                     BIGINT PRIMARY KEY,
    created_at             BIGINT NOT NULL,
    selector               TEXT NOT NULL,
    max_unavailable        BIGINT NOT NULL,
    health_timeout_seconds BIGINT NOT NULL,
    binaries               TEXT NOT NULL,
    state                  TEXT NOT NULL,
    reason                 TEXT NOT NULL DEFAULT ''
);
CREATE TABLE upgrade_agents (
    upgrade_id BIGINT NOT NULL,
    agent_id   TEXT NOT NULL,
    state      TEXT NOT NULL,
    detail     TEXT NOT NULL DEFAULT '',
    since      BIGINT NOT NULL,
    PRIMARY KEY (upgrade_id, agent_id)
);
",
    // 7: the host-health reasons the replica holding an agent's session evaluated (a JSON
    // list, empty when none), for the other replicas.
    "
ALTER TABLE agents ADD COLUMN host_reasons TEXT NOT NULL DEFAULT '';
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
