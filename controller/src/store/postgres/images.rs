//! Image blobs (chunked rows), images and their deliveries.

use super::{PgStore, from_ts, from_u, ts, u};
use crate::store::columns::read_chunk;
use crate::store::{DeliveryRecord, ImageRecord, ImageStore, StoreError};

pub(super) const DELIVERY_COLUMNS: &str = "agent_id, image_id, reference, state, bytes_total, bytes_done, bytes_sent, layers_present, error, rate_limit, updated_at";

/// Calls `f` with a delivery's values in `DELIVERY_COLUMNS` order ($1 to $11).
fn with_delivery_values<R>(
    d: &DeliveryRecord,
    f: impl FnOnce(&[&(dyn postgres::types::ToSql + Sync)]) -> R,
) -> R {
    let (total, done, sent) = (u(d.bytes_total), u(d.bytes_done), u(d.bytes_sent));
    let (layers, rate, at) = (
        i64::from(d.layers_present),
        u(d.rate_limit),
        d.updated_at.map(ts),
    );
    f(&[
        &d.agent_id,
        &d.image_id,
        &d.reference,
        &d.state,
        &total,
        &done,
        &sent,
        &layers,
        &d.error,
        &rate,
        &at,
    ])
}

pub(super) fn delivery(r: &postgres::Row) -> Result<DeliveryRecord, StoreError> {
    let at: Option<i64> = r.try_get(10)?;
    Ok(DeliveryRecord {
        agent_id: r.try_get(0)?,
        image_id: r.try_get(1)?,
        reference: r.try_get(2)?,
        state: r.try_get(3)?,
        bytes_total: from_u(r.try_get(4)?),
        bytes_done: from_u(r.try_get(5)?),
        bytes_sent: from_u(r.try_get(6)?),
        layers_present: u32::try_from(r.try_get::<_, i64>(7)?).unwrap_or(0),
        error: r.try_get(8)?,
        rate_limit: from_u(r.try_get(9)?),
        updated_at: at.map(|t| from_ts("image_deliveries", t)).transpose()?,
    })
}

impl ImageStore for PgStore {
    fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        self.with(|c| {
            let row = c.query_opt("SELECT size FROM image_blobs WHERE digest = $1", &[&digest])?;
            Ok(row
                .map(|r| r.try_get::<_, i64>(0).map(from_u))
                .transpose()?)
        })
    }

    fn put_blob(
        &self,
        digest: &str,
        size: u64,
        data: &mut (dyn std::io::Read + Send),
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            let added = tx.execute(
                "INSERT INTO image_blobs (digest, size) VALUES ($1, $2) ON CONFLICT (digest) DO NOTHING",
                &[&digest, &u(size)],
            )?;
            if added == 0 {
                return Ok(false);
            }
            let stmt =
                tx.prepare("INSERT INTO image_blob_chunks (digest, idx, data) VALUES ($1, $2, $3)")?;
            let (mut left, mut idx) = (size, 0i64);
            while left > 0 {
                let chunk = read_chunk(digest, data, left)?;
                left -= chunk.len() as u64;
                tx.execute(&stmt, &[&digest, &idx, &chunk])?;
                idx += 1;
            }
            tx.commit()?;
            Ok(true)
        })
    }

    fn blob_chunk(&self, digest: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        self.with(|c| {
            let row = c.query_opt(
                "SELECT data FROM image_blob_chunks WHERE digest = $1 AND idx = $2",
                &[&digest, &u(index)],
            )?;
            Ok(row.map(|r| r.try_get::<_, Vec<u8>>(0)).transpose()?)
        })
    }

    fn add_push(
        &self,
        image: &ImageRecord,
        deliveries: &[DeliveryRecord],
    ) -> Result<(), StoreError> {
        self.with(|c| {
            let mut tx = c.transaction()?;
            tx.execute(
                "INSERT INTO images (id, reference, manifest, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (id) DO NOTHING",
                &[&image.id, &image.reference, &image.manifest_json, &ts(image.created_at)],
            )?;
            let stmt = tx.prepare(&format!(
                "INSERT INTO image_deliveries ({DELIVERY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                 ON CONFLICT (agent_id, image_id) DO UPDATE SET reference = excluded.reference, state = excluded.state,
                 bytes_total = excluded.bytes_total, bytes_done = excluded.bytes_done, bytes_sent = excluded.bytes_sent,
                 layers_present = excluded.layers_present, error = excluded.error, rate_limit = excluded.rate_limit,
                 updated_at = excluded.updated_at"
            ))?;
            for d in deliveries {
                with_delivery_values(d, |v| tx.execute(&stmt, v))?;
            }
            tx.commit()?;
            Ok(())
        })
    }

    fn get_image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        self.with(|c| {
            let row = c.query_opt(
                "SELECT id, reference, manifest, created_at FROM images WHERE id = $1",
                &[&id],
            )?;
            row.map(|r| {
                Ok(ImageRecord {
                    id: r.try_get(0)?,
                    reference: r.try_get(1)?,
                    manifest_json: r.try_get(2)?,
                    created_at: from_ts("images", r.try_get(3)?)?,
                })
            })
            .transpose()
        })
    }

    fn update_delivery(&self, d: &DeliveryRecord) -> Result<bool, StoreError> {
        self.with(|c| {
            let n = with_delivery_values(d, |v| {
                c.execute(
                    "UPDATE image_deliveries SET reference = $3, state = $4, bytes_total = $5, bytes_done = $6, bytes_sent = $7, layers_present = $8, error = $9, rate_limit = $10, updated_at = $11
                     WHERE agent_id = $1 AND image_id = $2",
                    v,
                )
            })?;
            Ok(n > 0)
        })
    }

    fn list_deliveries(&self, agent_id: Option<&str>) -> Result<Vec<DeliveryRecord>, StoreError> {
        self.with(|c| {
            let rows = c.query(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM image_deliveries WHERE ($1::TEXT IS NULL OR agent_id = $1) ORDER BY agent_id, reference, image_id"
                ),
                &[&agent_id],
            )?;
            rows.iter().map(delivery).collect()
        })
    }
}
