//! Enrollment tokens and enrollment.

use postgres::Row;
use time::OffsetDateTime;

use super::agents::AGENT_COLS;
use super::{PgStore, from_ts, json, to_json, ts, u};
use crate::store::{AgentRecord, EnrollmentStore, StoreError};
use crate::tokens::{self, TokenRecord, TokenRefusal};

const TOKEN_COLS: &str = "id, secret_hash, labels, created_at, expires_at, uses_left, revoked";

fn token_record(r: &Row) -> Result<TokenRecord, StoreError> {
    let hash: Vec<u8> = r.try_get(1)?;
    let secret_hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Corrupt {
        table: "tokens",
        detail: "secret_hash is not 32 bytes".into(),
    })?;
    Ok(TokenRecord {
        id: r.try_get(0)?,
        secret_hash,
        labels: json("tokens", r.try_get(2)?)?,
        created_at: from_ts("tokens", r.try_get(3)?)?,
        expires_at: from_ts("tokens", r.try_get(4)?)?,
        uses_left: u32::try_from(r.try_get::<_, i64>(5)?).unwrap_or(0),
        revoked: r.try_get(6)?,
    })
}

impl EnrollmentStore for PgStore {
    fn create_token(&self, t: &TokenRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                &format!("INSERT INTO tokens ({TOKEN_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7)"),
                &[
                    &t.id,
                    &t.secret_hash.as_slice(),
                    &to_json(&t.labels),
                    &ts(t.created_at),
                    &ts(t.expires_at),
                    &i64::from(t.uses_left),
                    &t.revoked,
                ],
            )?;
            Ok(())
        })
    }

    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError> {
        self.with(|c| {
            c.query(
                &format!("SELECT {TOKEN_COLS} FROM tokens ORDER BY created_at DESC, id"),
                &[],
            )?
            .iter()
            .map(token_record)
            .collect()
        })
    }

    fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(token_record)
            .transpose()
        })
    }

    fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        self.with(|c| Ok(c.execute("UPDATE tokens SET revoked = TRUE WHERE id = $1", &[&id])? > 0))
    }

    fn enroll(
        &self,
        token_id: &str,
        secret_hash: &[u8; 32],
        now: OffsetDateTime,
        mut agent: AgentRecord,
    ) -> Result<AgentRecord, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            // FOR UPDATE: two enrollments with one token take its uses one after the other.
            let row = tx.query_opt(
                &format!("SELECT {TOKEN_COLS} FROM tokens WHERE id = $1 FOR UPDATE"),
                &[&token_id],
            )?;
            let record = match row {
                Some(row) => token_record(&row)?,
                None => return Err(TokenRefusal::Unknown(token_id.to_string()).into()),
            };
            tokens::check(&record, secret_hash, now)?;
            let exists = tx
                .query_opt("SELECT 1 FROM agents WHERE id = $1", &[&agent.id])?
                .is_some();
            if exists {
                return Err(StoreError::AgentExists(agent.id));
            }
            agent.labels = record.labels.clone();
            tx.execute(
                "UPDATE tokens SET uses_left = uses_left - 1 WHERE id = $1 AND uses_left > 0",
                &[&token_id],
            )?;
            tx.execute(
                &format!(
                    "INSERT INTO agents ({AGENT_COLS}, token_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
                ),
                &[
                    &agent.id,
                    &to_json(&agent.labels),
                    &to_json(&agent.facts),
                    &ts(agent.enrolled_at),
                    &agent.last_seen.map(ts),
                    &agent.cert_serial,
                    &ts(agent.cert_not_after),
                    &agent.revoked_at.map(ts),
                    &u(agent.applied_generation),
                    &token_id,
                ],
            )?;
            tx.commit()?;
            Ok(agent)
        })
    }
}
