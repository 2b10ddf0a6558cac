//! Enrollment tokens and enrollment.

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::agents::AGENT_COLS;
use super::{SqliteStore, from_ts, json, to_json, ts};
use crate::store::{AgentRecord, EnrollmentStore, StoreError};
use crate::tokens::{self, TokenRecord, TokenRefusal};

type TokenRow = (String, Vec<u8>, String, i64, i64, i64, bool);
const TOKEN_COLS: &str = "id, secret_hash, labels, created_at, expires_at, uses_left, revoked";

fn token_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRow> {
    TryFrom::try_from(r)
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

impl EnrollmentStore for SqliteStore {
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
}
