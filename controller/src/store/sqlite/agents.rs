//! Enrolled agents.

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, params};
use time::OffsetDateTime;

use super::{SqliteStore, from_ts, json, to_json, ts};
use crate::store::{AgentRecord, AgentStore, Facts, StoreError};

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

pub(super) const AGENT_COLS: &str = "id, labels, facts, enrolled_at, last_seen, cert_serial, cert_not_after, revoked_at, applied_generation";

fn agent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<AgentRow> {
    TryFrom::try_from(r)
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

impl AgentStore for SqliteStore {
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

    fn set_host_reasons(&self, reasons: &[(String, Vec<String>)]) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        {
            let mut stmt =
                tx.prepare_cached("UPDATE agents SET host_reasons = ?2 WHERE id = ?1")?;
            for (id, r) in reasons {
                stmt.execute(params![id, crate::store::columns::host_reasons_column(r)])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn host_reasons(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        let conn = self.conn();
        let mut stmt =
            conn.prepare_cached("SELECT id, host_reasons FROM agents WHERE host_reasons <> ''")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (id, text) = row?;
            out.insert(id, json::<Vec<String>>("agents", &text)?);
        }
        Ok(out)
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
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let n = tx.execute(
            "UPDATE agents SET revoked_at = COALESCE(revoked_at, ?2) WHERE id = ?1",
            params![id, ts(at)],
        )?;
        // A deleted agent's drain goes with it.
        tx.execute("DELETE FROM agent_drains WHERE agent_id = ?1", params![id])?;
        tx.commit()?;
        Ok(n > 0)
    }
}
