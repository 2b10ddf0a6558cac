//! What several replicas on one database share beyond the store's aggregates: the leader
//! lease and its fencing check, the shared secrets (sealed under the key-encryption key
//! before they reach here), the fan-out channel (`LISTEN`/`NOTIFY`) and the schema version
//! a running replica watches.
//!
//! Lease times are the database's (`now()`), so replicas' clocks do not matter; the epoch
//! grows by one with every new holder and is what fenced writes check.

use std::collections::BTreeMap;
use std::time::Duration;

use postgres::{Client, GenericClient};

use super::{DatabaseUrl, PgStore};
use crate::replicas::lease::{LeaseStore, LeaseTick};
use crate::replicas::shared_secrets::Vault;
use crate::store::StoreError;

/// The `LISTEN`/`NOTIFY` channel of the fan-out.
pub const CHANNEL: &str = "drover_fleet";

/// Advisory lock key (transaction level) serialising the first write of shared secrets.
const SECRETS_LOCK: i64 = 0x6472_6f76_7365_6372;

fn seconds(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl PgStore {
    /// In a fenced handle, checks inside `tx` that the term still holds the lease, and
    /// keeps the lease row share-locked until `tx` ends: a replica taking over waits for
    /// this transaction, so no write of an older epoch lands after a newer epoch exists.
    pub(super) fn fence_check(&self, tx: &mut impl GenericClient) -> Result<(), StoreError> {
        let Some(term) = &self.fence else {
            return Ok(());
        };
        let Some((holder, epoch)) = term.get() else {
            return Err(StoreError::NotLeader);
        };
        let held = tx.query_opt(
            "SELECT 1 FROM drover_leader
             WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now() FOR SHARE",
            &[&holder, &epoch],
        )?;
        match held {
            Some(_) => Ok(()),
            None => Err(StoreError::NotLeader),
        }
    }

    /// Sends `payload` on [`CHANNEL`] (delivered at commit; this is its own transaction).
    pub fn notify(&self, payload: &str) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])?;
            Ok(())
        })
    }

    /// A connection listening on [`CHANNEL`]. Blocking: use it off the async workers.
    pub fn listener(&self) -> Result<Listener, StoreError> {
        Listener::connect(&self.url)
    }
}

impl LeaseStore for PgStore {
    fn lease_tick(
        &self,
        holder: &str,
        held: Option<i64>,
        ttl: Duration,
    ) -> Result<LeaseTick, StoreError> {
        self.keep_controller_lock()?;
        self.with(|c| {
            let mut tx = c.transaction()?;
            let ttl = seconds(ttl);
            let mut epoch = None;
            if let Some(e) = held {
                let renewed = tx.execute(
                    "UPDATE drover_leader SET expires_at = now() + make_interval(secs => $3)
                     WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
                    &[&holder, &e, &ttl],
                )?;
                if renewed == 1 {
                    epoch = Some(e);
                }
            }
            if epoch.is_none() {
                epoch = tx
                    .query_opt(
                        "UPDATE drover_leader
                         SET holder = $1, epoch = epoch + 1, expires_at = now() + make_interval(secs => $2)
                         WHERE id = 1 AND (expires_at <= now() OR holder = '')
                         RETURNING epoch",
                        &[&holder, &ttl],
                    )?
                    .map(|r| r.try_get::<_, i64>(0))
                    .transpose()?;
            }
            let schema: i64 = tx
                .query_one("SELECT version FROM drover_schema", &[])?
                .try_get(0)?;
            tx.commit()?;
            Ok(LeaseTick { epoch, schema })
        })
    }

    fn lease_release(&self, holder: &str, epoch: i64) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "UPDATE drover_leader SET holder = '', expires_at = 'epoch'
                 WHERE id = 1 AND holder = $1 AND epoch = $2",
                &[&holder, &epoch],
            )?;
            Ok(())
        })
    }
}

impl Vault for PgStore {
    fn read_secrets(&self) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.with(read_secrets)
    }

    fn insert_missing(
        &self,
        rows: &BTreeMap<String, Vec<u8>>,
    ) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SECRETS_LOCK])?;
            // All or none: a replica that finds any shared secret keeps what it found.
            if read_secrets(&mut tx)?.is_empty() {
                for (name, value) in rows {
                    tx.execute(
                        "INSERT INTO drover_secrets (name, value) VALUES ($1, $2)",
                        &[name, value],
                    )?;
                }
            }
            let out = read_secrets(&mut tx)?;
            tx.commit()?;
            Ok(out)
        })
    }
}

fn read_secrets(c: &mut impl GenericClient) -> Result<BTreeMap<String, Vec<u8>>, StoreError> {
    c.query("SELECT name, value FROM drover_secrets", &[])?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// A connection listening on [`CHANNEL`].
pub struct Listener {
    client: Client,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listener")
    }
}

impl Listener {
    fn connect(url: &DatabaseUrl) -> Result<Listener, StoreError> {
        let mut client = url.config().connect(url.tls())?;
        client.batch_execute(&format!("LISTEN {CHANNEL}"))?;
        Ok(Listener { client })
    }

    /// The payloads that arrive within `timeout` (empty when none did); an error when the
    /// connection is gone.
    pub fn wait(&mut self, timeout: Duration) -> Result<Vec<String>, StoreError> {
        use postgres::fallible_iterator::FallibleIterator;
        let mut out = Vec::new();
        {
            let mut notes = self.client.notifications();
            if let Some(n) = notes.timeout_iter(timeout).next()? {
                out.push(n.payload().to_string());
            }
            // Whatever else is already buffered, without waiting again.
            let mut more = notes.iter();
            while let Some(n) = more.next()? {
                out.push(n.payload().to_string());
            }
        }
        // A connection cut without a reset shows only when used.
        if out.is_empty() {
            self.client.batch_execute("")?;
        }
        if self.client.is_closed() {
            return Err(StoreError::Interrupted(
                "the listening connection closed".into(),
            ));
        }
        Ok(out)
    }
}
