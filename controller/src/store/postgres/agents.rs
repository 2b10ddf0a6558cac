//! Enrolled agents.

use std::collections::BTreeMap;

use postgres::Row;
use time::OffsetDateTime;

use super::{PgStore, from_ts, from_u, json, to_json, ts, u};
use crate::store::{AgentRecord, AgentStore, Facts, StoreError};

pub(super) const AGENT_COLS: &str = "id, labels, facts, enrolled_at, last_seen, cert_serial, cert_not_after, revoked_at, applied_generation";

pub(super) fn agent_record(r: &Row) -> Result<AgentRecord, StoreError> {
    Ok(AgentRecord {
        id: r.try_get(0)?,
        labels: json::<BTreeMap<String, String>>("agents", r.try_get(1)?)?,
        facts: json::<Facts>("agents", r.try_get(2)?)?,
        enrolled_at: from_ts("agents", r.try_get(3)?)?,
        last_seen: r
            .try_get::<_, Option<i64>>(4)?
            .map(|s| from_ts("agents", s))
            .transpose()?,
        cert_serial: r.try_get(5)?,
        cert_not_after: from_ts("agents", r.try_get(6)?)?,
        revoked_at: r
            .try_get::<_, Option<i64>>(7)?
            .map(|s| from_ts("agents", s))
            .transpose()?,
        applied_generation: from_u(r.try_get(8)?),
    })
}

impl AgentStore for PgStore {
    fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError> {
        self.with(|c| {
            c.query_opt(
                &format!("SELECT {AGENT_COLS} FROM agents WHERE id = $1"),
                &[&id],
            )?
            .as_ref()
            .map(agent_record)
            .transpose()
        })
    }

    fn agent_labels(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, StoreError> {
        self.with(|c| {
            let labels: Option<String> = c
                .query_opt("SELECT labels FROM agents WHERE id = $1", &[&id])?
                .map(|r| r.try_get(0))
                .transpose()?;
            labels
                .map(|l| json::<BTreeMap<String, String>>("agents", &l))
                .transpose()
        })
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.with(|c| {
            c.query(&format!("SELECT {AGENT_COLS} FROM agents ORDER BY id"), &[])?
                .iter()
                .map(agent_record)
                .collect()
        })
    }

    fn agent_seen(
        &self,
        id: &str,
        at: OffsetDateTime,
        facts: Option<&Facts>,
        ips: Option<&[String]>,
        applied_generation: Option<u64>,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "UPDATE agents SET last_seen = $2 WHERE id = $1",
                &[&id, &ts(at)],
            )?;
            let mut new_facts = facts.cloned();
            if let Some(ips) = ips {
                if new_facts.is_none() {
                    let current: Option<String> = tx
                        .query_opt("SELECT facts FROM agents WHERE id = $1 FOR UPDATE", &[&id])?
                        .map(|r| r.try_get(0))
                        .transpose()?;
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
                    "UPDATE agents SET facts = $2 WHERE id = $1",
                    &[&id, &to_json(&f)],
                )?;
            }
            if let Some(g) = applied_generation {
                tx.execute(
                    "UPDATE agents SET applied_generation = $2 WHERE id = $1",
                    &[&id, &u(g)],
                )?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn set_host_reasons(&self, reasons: &[(String, Vec<String>)]) -> Result<(), StoreError> {
        if reasons.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = reasons.iter().map(|(id, _)| id.as_str()).collect();
        let texts: Vec<String> = reasons
            .iter()
            .map(|(_, r)| crate::store::columns::host_reasons_column(r))
            .collect();
        self.with(|c| {
            c.execute(
                "UPDATE agents a SET host_reasons = s.reasons
                 FROM UNNEST($1::text[], $2::text[]) AS s(id, reasons)
                 WHERE a.id = s.id",
                &[&ids, &texts],
            )?;
            Ok(())
        })
    }

    fn host_reasons(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError> {
        self.with(|c| {
            let mut out = BTreeMap::new();
            for row in c.query(
                "SELECT id, host_reasons FROM agents WHERE host_reasons <> ''",
                &[],
            )? {
                let text: String = row.get(1);
                out.insert(row.get(0), json::<Vec<String>>("agents", &text)?);
            }
            Ok(out)
        })
    }

    fn agents_seen(&self, seen: &[(String, OffsetDateTime)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = seen.iter().map(|(id, _)| id.as_str()).collect();
        let ats: Vec<i64> = seen.iter().map(|(_, at)| ts(*at)).collect();
        // One statement for the whole batch; the newest time per id wins.
        self.with(|c| {
            c.execute(
                "UPDATE agents a SET last_seen = s.at
                 FROM (SELECT id, MAX(at) AS at FROM UNNEST($1::text[], $2::bigint[]) AS t(id, at)
                       GROUP BY id) s
                 WHERE a.id = s.id AND (a.last_seen IS NULL OR a.last_seen < s.at)",
                &[&ids, &ats],
            )?;
            Ok(())
        })
    }

    fn agent_cert_renewed(
        &self,
        id: &str,
        serial: &str,
        not_after: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE agents SET cert_serial = $2, cert_not_after = $3 WHERE id = $1",
                &[&id, &serial, &ts(not_after)],
            )?;
            Ok(())
        })
    }

    fn revoke_agent(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let n = tx.execute(
                "UPDATE agents SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1",
                &[&id, &ts(at)],
            )?;
            // A deleted agent's drain goes with it.
            tx.execute("DELETE FROM agent_drains WHERE agent_id = $1", &[&id])?;
            tx.commit()?;
            Ok(n > 0)
        })
    }
}
