//! [`Store`] on an embedded SQLite database (`DATA_DIR/drover.db`).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use time::OffsetDateTime;

use super::{
    AckRecord, AgentRecord, AgentRollout, AgentStep, Assignment, EventFilter, EventRecord, Facts,
    GenerationRecord, Retention, Retired, RolloutState, Store, StoreError, Strategy,
};
use crate::tokens::{self, TokenRecord, TokenRefusal};

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
];

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The database's schema version; refuses one newer than this build before anything is
/// written to it.
fn check_version(conn: &Connection, name: &str) -> Result<i64, StoreError> {
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
fn migrate(conn: &mut Connection, from: i64) -> Result<(), StoreError> {
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

/// SQLite-backed store. One connection behind a mutex: calls are short.
pub struct SqliteStore {
    conn: Mutex<Connection>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SqliteStore")
    }
}

fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

fn from_ts(table: &'static str, v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(v).map_err(|e| StoreError::Corrupt {
        table,
        detail: format!("timestamp {v}: {e}"),
    })
}

fn json<T: serde::de::DeserializeOwned>(table: &'static str, s: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

type TokenRow = (String, Vec<u8>, String, i64, i64, i64, bool);
type AgentRow = (
    String,
    String,
    String,
    i64,
    Option<i64>,
    String,
    i64,
    Option<i64>,
    i64,
);

const TOKEN_COLS: &str = "id, secret_hash, labels, created_at, expires_at, uses_left, revoked";
const AGENT_COLS: &str = "id, labels, facts, enrolled_at, last_seen, cert_serial, cert_not_after, revoked_at, applied_generation";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
    ))
}

/// `agent_id, target_generation, ack_generation, ack_error` as an [`AgentRollout`].
fn agent_rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRollout> {
    Ok(AgentRollout {
        agent_id: r.get(0)?,
        target_generation: from_u(r.get(1)?),
        ack_generation: from_u(r.get(2)?),
        ack_error: r.get(3)?,
    })
}

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
    ))
}

fn token_record(row: TokenRow) -> Result<TokenRecord, StoreError> {
    let (id, hash, labels, created, expires, uses, revoked) = row;
    let secret_hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Corrupt {
        table: "tokens",
        detail: "secret_hash is not 32 bytes".into(),
    })?;
    Ok(TokenRecord {
        id,
        secret_hash,
        labels: json("tokens", &labels)?,
        created_at: from_ts("tokens", created)?,
        expires_at: from_ts("tokens", expires)?,
        uses_left: u32::try_from(uses).unwrap_or(0),
        revoked,
    })
}

fn agent_record(row: AgentRow) -> Result<AgentRecord, StoreError> {
    let (id, labels, facts, enrolled, seen, serial, not_after, revoked, generation) = row;
    Ok(AgentRecord {
        id,
        labels: json::<BTreeMap<String, String>>("agents", &labels)?,
        facts: json::<Facts>("agents", &facts)?,
        enrolled_at: from_ts("agents", enrolled)?,
        last_seen: seen.map(|s| from_ts("agents", s)).transpose()?,
        cert_serial: serial,
        cert_not_after: from_ts("agents", not_after)?,
        revoked_at: revoked.map(|s| from_ts("agents", s)).transpose()?,
        applied_generation: u64::try_from(generation).unwrap_or(0),
    })
}

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
        let version = check_version(&conn, name)?;
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
        migrate(&mut conn, version)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions
        // roll back on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Store for SqliteStore {
    fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.conn().execute(
            "INSERT INTO tokens (id, secret_hash, labels, created_at, expires_at, uses_left, revoked) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                t.id,
                t.secret_hash.to_vec(),
                to_json(&t.labels),
                ts(t.created_at),
                ts(t.expires_at),
                i64::from(t.uses_left),
                t.revoked
            ],
        )?;
        Ok(())
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at DESC, id"
        ))?;
        let rows = stmt.query_map([], token_row)?;
        rows.map(|r| token_record(r?)).collect()
    }

    fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"))?;
        stmt.query_row(params![id], token_row)
            .optional()?
            .map(token_record)
            .transpose()
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .execute("UPDATE tokens SET revoked = 1 WHERE id = ?1", params![id])?;
        Ok(n > 0)
    }

    fn enroll(
        &self,
        token_id: &str,
        secret_hash: &[u8; 32],
        now: OffsetDateTime,
        mut agent: AgentRecord,
    ) -> Result<AgentRecord, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let row = tx
            .query_row(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = ?1"),
                params![token_id],
                token_row,
            )
            .optional()?;
        let record = match row {
            Some(row) => token_record(row)?,
            None => return Err(TokenRefusal::Unknown(token_id.to_string()).into()),
        };
        tokens::check(&record, secret_hash, now)?;
        let exists: bool = tx.query_row(
            "SELECT EXISTS(SELECT 1 FROM agents WHERE id = ?1)",
            params![agent.id],
            |r| r.get(0),
        )?;
        if exists {
            return Err(StoreError::AgentExists(agent.id));
        }
        agent.labels = record.labels.clone();
        tx.execute(
            "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = ?1 AND uses_left > 0",
            params![token_id],
        )?;
        tx.execute(
            &format!("INSERT INTO agents ({AGENT_COLS}, token_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)"),
            params![
                agent.id,
                to_json(&agent.labels),
                to_json(&agent.facts),
                ts(agent.enrolled_at),
                agent.last_seen.map(ts),
                agent.cert_serial,
                ts(agent.cert_not_after),
                agent.revoked_at.map(ts),
                i64::try_from(agent.applied_generation).unwrap_or(i64::MAX),
                token_id
            ],
        )?;
        tx.commit()?;
        Ok(agent)
    }

    fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents WHERE id = ?1"))?
            .query_row(params![id], agent_row)
            .optional()?;
        row.map(agent_record).transpose()
    }

    fn agent_labels(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        let conn = self.conn();
        let labels: Option<String> = conn
            .prepare_cached("SELECT labels FROM agents WHERE id = ?1")?
            .query_row(params![id], |r| r.get(0))
            .optional()?;
        labels
            .map(|l| json::<BTreeMap<String, String>>("agents", &l))
            .transpose()
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY id"))?;
        let rows = stmt.query_map([], agent_row)?;
        rows.map(|r| agent_record(r?)).collect()
    }

    fn agent_seen(
        &self,
        id: &str,
        at: OffsetDateTime,
        facts: Option<&Facts>,
        ips: Option<&[String]>,
        applied_generation: Option<u64>,
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "UPDATE agents SET last_seen = ?2 WHERE id = ?1",
            params![id, ts(at)],
        )?;
        let mut new_facts = facts.cloned();
        if let Some(ips) = ips {
            if new_facts.is_none() {
                let current: Option<String> = tx
                    .query_row("SELECT facts FROM agents WHERE id = ?1", params![id], |r| {
                        r.get(0)
                    })
                    .optional()?;
                if let Some(current) = current {
                    new_facts = Some(json::<Facts>("agents", &current)?);
                }
            }
            if let Some(f) = new_facts.as_mut() {
                f.ips = ips.to_vec();
            }
        }
        if let Some(f) = new_facts {
            tx.execute(
                "UPDATE agents SET facts = ?2 WHERE id = ?1",
                params![id, to_json(&f)],
            )?;
        }
        if let Some(g) = applied_generation {
            tx.execute(
                "UPDATE agents SET applied_generation = ?2 WHERE id = ?1",
                params![id, i64::try_from(g).unwrap_or(i64::MAX)],
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn agents_seen(&self, seen: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "UPDATE agents SET last_seen = ?2 WHERE id = ?1 AND (last_seen IS NULL OR last_seen < ?2)",
            )?;
            for (id, at) in seen {
                stmt.execute(params![id, ts(*at)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn agent_cert_renewed(
        &self,
        id: &str,
        serial: &str,
        not_after: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE agents SET cert_serial = ?2, cert_not_after = ?3 WHERE id = ?1",
            params![id, serial, ts(not_after)],
        )?;
        Ok(())
    }

    fn revoke_agent(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, ts(at)],
        )?;
        Ok(n > 0)
    }

    fn add_generation(&self, g: &GenerationRecord) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let newest: i64 = tx.query_row(
            "SELECT COALESCE(MAX(generation), 0) FROM generations",
            [],
            |r| r.get(0),
        )?;
        let newest = from_u(newest);
        if g.generation != newest + 1 {
            return Err(StoreError::GenerationConflict {
                newest,
                got: g.generation,
            });
        }
        tx.execute(
            &format!("INSERT INTO generations ({GEN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)"),
            params![
                u(g.generation),
                ts(g.created_at),
                g.runners_sealed,
                to_json(&g.strategy),
                state_name(g.state),
                g.reason
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    fn latest_generation(&self) -> Result<Option<GenerationRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {GEN_COLS} FROM generations ORDER BY generation DESC LIMIT 1"
            ))?
            .query_row([], generation_row)
            .optional()?;
        row.map(generation_record).transpose()
    }

    fn get_generation(&self, generation: u64) -> Result<Option<GenerationRecord>, StoreError> {
        let conn = self.conn();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {GEN_COLS} FROM generations WHERE generation = ?1"
            ))?
            .query_row(params![u(generation)], generation_row)
            .optional()?;
        row.map(generation_record).transpose()
    }

    fn set_rollout_state(
        &self,
        generation: u64,
        state: RolloutState,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let n = self.conn().execute(
            "UPDATE generations SET state = ?2, reason = ?3 WHERE generation = ?1",
            params![u(generation), state_name(state), reason],
        )?;
        Ok(n > 0)
    }

    fn assignments(&self, agent_id: &str) -> Result<Vec<Assignment>, StoreError> {
        self.query_assignments(
            &format!("SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = ?1 ORDER BY runner"),
            &[&agent_id],
        )
    }

    fn all_assignments(&self) -> Result<Vec<Assignment>, StoreError> {
        self.query_assignments(
            &format!("SELECT {ASSIGN_COLS} FROM assignments ORDER BY agent_id, runner"),
            &[],
        )
    }

    fn retire_agent_runners(&self, agent_id: &str) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current = select_assignments(
            &tx,
            &format!("SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = ?1 ORDER BY runner"),
            &[&agent_id],
        )?;
        let mut queued = 0;
        for a in current {
            delete_assignment(&tx, agent_id, &a.runner)?;
            if a.registered {
                add_retired(
                    &tx,
                    &Retired {
                        id: 0,
                        assignment: a,
                        after_generation: 0,
                    },
                )?;
                queued += 1;
            }
        }
        tx.commit()?;
        Ok(queued)
    }

    fn replace_assignment(&self, fresh: &Assignment) -> Result<Option<Assignment>, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let old = select_assignments(
            &tx,
            &format!("SELECT {ASSIGN_COLS} FROM assignments WHERE agent_id = ?1 AND runner = ?2"),
            &[&fresh.agent_id, &fresh.runner],
        )?
        .pop();
        put_assignment(&tx, fresh)?;
        if let Some(old) = old.as_ref().filter(|a| a.registered) {
            add_retired(
                &tx,
                &Retired {
                    id: 0,
                    assignment: old.clone(),
                    after_generation: 0,
                },
            )?;
        }
        tx.commit()?;
        Ok(old)
    }

    fn rotate_assignment_token(
        &self,
        expected: &Assignment,
        token_sealed: &[u8],
        token_expires_at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError> {
        let n = self
            .conn()
            .prepare_cached(
                "UPDATE assignments SET token_sealed = ?6, token_expires_at = ?7
                 WHERE agent_id = ?1 AND runner = ?2 AND gitlab_runner_id = ?3
                   AND registration_key = ?4 AND token_sealed = ?5",
            )?
            .execute(params![
                expected.agent_id,
                expected.runner,
                expected.gitlab_runner_id,
                expected.registration_key,
                expected.token_sealed,
                token_sealed,
                token_expires_at.map(ts)
            ])?;
        Ok(n > 0)
    }

    fn list_retired(&self) -> Result<Vec<Retired>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {ASSIGN_COLS}, after_generation, id FROM retired ORDER BY id"
        ))?;
        let rows = stmt.query_map([], |r| {
            Ok((assign_row(r)?, r.get::<_, i64>(8)?, r.get::<_, i64>(9)?))
        })?;
        rows.map(|row| {
            let (a, after, id) = row?;
            Ok(Retired {
                id,
                assignment: assignment("retired", a)?,
                after_generation: from_u(after),
            })
        })
        .collect()
    }

    fn delete_retired(&self, id: i64) -> Result<(), StoreError> {
        self.conn()
            .execute("DELETE FROM retired WHERE id = ?1", params![id])?;
        Ok(())
    }

    fn agent_rollouts(&self) -> Result<Vec<AgentRollout>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, target_generation, ack_generation, ack_error FROM agent_rollouts ORDER BY agent_id",
        )?;
        let rows = stmt.query_map([], agent_rollout_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn agent_rollout(&self, agent_id: &str) -> Result<Option<AgentRollout>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT agent_id, target_generation, ack_generation, ack_error FROM agent_rollouts WHERE agent_id = ?1",
        )?;
        Ok(stmt
            .query_row(params![agent_id], agent_rollout_row)
            .optional()?)
    }

    fn advance_agents(&self, steps: &[AgentStep]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for step in steps {
            for a in &step.put {
                put_assignment(&tx, a)?;
            }
            for runner in &step.delete {
                delete_assignment(&tx, &step.agent_id, runner)?;
            }
            for r in &step.retire {
                add_retired(&tx, r)?;
            }
            SqliteStore::rollout_row(&tx, &step.agent_id)?;
            tx.prepare_cached(
                "UPDATE agent_rollouts SET target_generation = ?2 WHERE agent_id = ?1",
            )?
            .execute(params![step.agent_id, u(step.generation)])?;
        }
        tx.commit()?;
        Ok(())
    }

    fn rollout_progress(&self) -> Result<Vec<AgentRollout>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT a.id, COALESCE(r.target_generation, 0), COALESCE(r.ack_generation, 0), r.ack_error
             FROM agents a LEFT JOIN agent_rollouts r ON r.agent_id = a.id
             WHERE a.revoked_at IS NULL ORDER BY a.id",
        )?;
        let rows = stmt.query_map([], agent_rollout_row)?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    fn record_acks(&self, acks: &[AckRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        for ack in acks {
            SqliteStore::rollout_row(&tx, &ack.agent_id)?;
            tx.prepare_cached(
                "UPDATE agent_rollouts SET ack_generation = ?2, ack_error = ?3 WHERE agent_id = ?1",
            )?
            .execute(params![ack.agent_id, u(ack.generation), ack.error])?;
            if ack.error.is_none() {
                tx.prepare_cached("UPDATE agents SET applied_generation = ?2 WHERE id = ?1")?
                    .execute(params![ack.agent_id, u(ack.generation)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn add_events(&self, events: &[EventRecord]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO events (at, agent_id, kind, runner, message, job_id, job_state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            for e in events {
                stmt.execute(params![
                    e.at.map(ts),
                    e.agent_id,
                    e.kind,
                    e.runner,
                    e.message,
                    e.job_id,
                    e.job_state
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, at, agent_id, kind, runner, message, job_id, job_state FROM events
             WHERE id > ?1 AND (?2 = '' OR agent_id = ?2) AND (?3 = '' OR kind = ?3)
               AND (?4 IS NULL OR at >= ?4)
             ORDER BY id DESC LIMIT ?5",
        )?;
        type Row = (
            i64,
            Option<i64>,
            String,
            String,
            String,
            String,
            i64,
            String,
        );
        let rows = stmt.query_map(
            params![
                u(filter.after_id),
                filter.agent_id,
                filter.kind,
                filter.since.map(ts),
                i64::try_from(filter.limit).unwrap_or(i64::MAX)
            ],
            |r| -> rusqlite::Result<Row> {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            },
        )?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, agent_id, kind, runner, message, job_id, job_state) = row?;
            out.push(EventRecord {
                id: from_u(id),
                at: at.map(|t| from_ts("events", t)).transpose()?,
                agent_id,
                kind,
                runner,
                message,
                job_id,
                job_state,
            });
        }
        out.reverse();
        Ok(out)
    }

    fn prune_events(&self, keep: Retention) -> Result<usize, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let per_agent = tx.execute(
            "DELETE FROM events WHERE id IN (
                SELECT id FROM (
                    SELECT id, ROW_NUMBER() OVER (PARTITION BY agent_id ORDER BY id DESC) AS rn
                    FROM events WHERE agent_id != ''
                ) WHERE rn > ?1)",
            params![i64::try_from(keep.per_agent).unwrap_or(i64::MAX)],
        )?;
        let total = tx.execute(
            "DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id DESC LIMIT 1 OFFSET ?1)",
            params![i64::try_from(keep.total).unwrap_or(i64::MAX)],
        )?;
        tx.commit()?;
        Ok(per_agent + total)
    }
}

fn u(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn from_u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn state_name(s: RolloutState) -> &'static str {
    s.as_str()
}

fn state_from(s: &str) -> Result<RolloutState, StoreError> {
    match s {
        "progressing" => Ok(RolloutState::Progressing),
        "complete" => Ok(RolloutState::Complete),
        "halted" => Ok(RolloutState::Halted),
        other => Err(StoreError::Corrupt {
            table: "generations",
            detail: format!("rollout state {other:?}"),
        }),
    }
}

const GEN_COLS: &str = "generation, created_at, runners_sealed, strategy, state, reason";
const ASSIGN_COLS: &str = "agent_id, runner, url, gitlab_runner_id, token_sealed, token_expires_at, registration_key, registered";

fn generation_row(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(i64, i64, Vec<u8>, String, String, String)> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
    ))
}

fn generation_record(
    row: (i64, i64, Vec<u8>, String, String, String),
) -> Result<GenerationRecord, StoreError> {
    let (generation, created, sealed, strategy, state, reason) = row;
    Ok(GenerationRecord {
        generation: from_u(generation),
        created_at: from_ts("generations", created)?,
        runners_sealed: sealed,
        strategy: json::<Strategy>("generations", &strategy)?,
        state: state_from(&state)?,
        reason,
    })
}

type AssignRow = (
    String,
    String,
    String,
    i64,
    Vec<u8>,
    Option<i64>,
    String,
    bool,
);

fn assign_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AssignRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

fn assignment(table: &'static str, row: AssignRow) -> Result<Assignment, StoreError> {
    let (agent_id, runner, url, id, sealed, expires, key, registered) = row;
    Ok(Assignment {
        agent_id,
        runner,
        url,
        gitlab_runner_id: id,
        token_sealed: sealed,
        token_expires_at: expires.map(|t| from_ts(table, t)).transpose()?,
        registration_key: key,
        registered,
    })
}

impl SqliteStore {
    fn query_assignments(
        &self,
        sql: &str,
        p: &[&dyn rusqlite::ToSql],
    ) -> Result<Vec<Assignment>, StoreError> {
        select_assignments(&self.conn(), sql, p)
    }

    fn rollout_row(tx: &rusqlite::Transaction<'_>, agent_id: &str) -> Result<(), StoreError> {
        tx.prepare_cached("INSERT OR IGNORE INTO agent_rollouts (agent_id) VALUES (?1)")?
            .execute(params![agent_id])?;
        Ok(())
    }
}

/// The assignments `sql` selects (alone or inside a transaction).
fn select_assignments(
    conn: &Connection,
    sql: &str,
    p: &[&dyn rusqlite::ToSql],
) -> Result<Vec<Assignment>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(p, assign_row)?;
    rows.map(|r| assignment("assignments", r?)).collect()
}

/// Inserts or replaces an assignment (alone or inside a transaction).
fn put_assignment(conn: &Connection, a: &Assignment) -> Result<(), StoreError> {
    conn.prepare_cached(&format!(
        "INSERT OR REPLACE INTO assignments ({ASSIGN_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"
    ))?
    .execute(params![
        a.agent_id,
        a.runner,
        a.url,
        a.gitlab_runner_id,
        a.token_sealed,
        a.token_expires_at.map(ts),
        a.registration_key,
        a.registered
    ])?;
    Ok(())
}

/// Removes an assignment; `false` when there was none.
fn delete_assignment(conn: &Connection, agent_id: &str, runner: &str) -> Result<bool, StoreError> {
    let n = conn
        .prepare_cached("DELETE FROM assignments WHERE agent_id = ?1 AND runner = ?2")?
        .execute(params![agent_id, runner])?;
    Ok(n > 0)
}

/// Queues a retired entry; returns its id.
fn add_retired(conn: &Connection, r: &Retired) -> Result<i64, StoreError> {
    let a = &r.assignment;
    conn.prepare_cached(&format!(
        "INSERT INTO retired ({ASSIGN_COLS}, after_generation) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"
    ))?
    .execute(params![
        a.agent_id,
        a.runner,
        a.url,
        a.gitlab_runner_id,
        a.token_sealed,
        a.token_expires_at.map(ts),
        a.registration_key,
        a.registered,
        u(r.after_generation)
    ])?;
    Ok(conn.last_insert_rowid())
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let path = database_from(dir.path(), include_str!("sqlite/fixtures/v1.sql"));
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
        let path = database_from(dir.path(), include_str!("sqlite/fixtures/v3.sql"));
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
                include_str!("sqlite/fixtures/v3.sql"),
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
