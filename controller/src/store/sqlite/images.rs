//! Image blobs (chunked rows), images and their deliveries.

use rusqlite::{OptionalExtension, params};

use super::{SqliteStore, from_ts, from_u, ts, u};
use crate::store::columns::read_chunk;
use crate::store::{DeliveryRecord, ImageRecord, ImageStore, StoreError};

const DELIVERY_COLUMNS: &str = "agent_id, image_id, reference, state, bytes_total, bytes_done, bytes_sent, layers_present, error, rate_limit, updated_at";

type DeliveryRow = (
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    String,
    i64,
    Option<i64>,
);

/// A delivery's values in `DELIVERY_COLUMNS` order (?1 to ?11).
#[allow(clippy::type_complexity)]
fn delivery_values(
    d: &DeliveryRecord,
) -> (
    &str,
    &str,
    &str,
    &str,
    i64,
    i64,
    i64,
    i64,
    &str,
    i64,
    Option<i64>,
) {
    (
        &d.agent_id,
        &d.image_id,
        &d.reference,
        &d.state,
        u(d.bytes_total),
        u(d.bytes_done),
        u(d.bytes_sent),
        i64::from(d.layers_present),
        &d.error,
        u(d.rate_limit),
        d.updated_at.map(ts),
    )
}

fn delivery(r: DeliveryRow) -> Result<DeliveryRecord, StoreError> {
    Ok(DeliveryRecord {
        agent_id: r.0,
        image_id: r.1,
        reference: r.2,
        state: r.3,
        bytes_total: from_u(r.4),
        bytes_done: from_u(r.5),
        bytes_sent: from_u(r.6),
        layers_present: u32::try_from(r.7).unwrap_or(0),
        error: r.8,
        rate_limit: from_u(r.9),
        updated_at: r.10.map(|t| from_ts("image_deliveries", t)).transpose()?,
    })
}

impl ImageStore for SqliteStore {
    fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError> {
        let conn = self.conn();
        let size: Option<i64> = conn
            .query_row(
                "SELECT size FROM image_blobs WHERE digest = ?1",
                params![digest],
                |r| r.get(0),
            )
            .optional()?;
        Ok(size.map(from_u))
    }

    fn put_blob(
        &self,
        digest: &str,
        size: u64,
        data: &mut (dyn std::io::Read + Send),
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let added = tx.execute(
            "INSERT INTO image_blobs (digest, size) VALUES (?1, ?2) ON CONFLICT (digest) DO NOTHING",
            params![digest, u(size)],
        )?;
        if added == 0 {
            return Ok(false);
        }
        {
            let mut stmt = tx.prepare_cached(
                "INSERT INTO image_blob_chunks (digest, idx, data) VALUES (?1, ?2, ?3)",
            )?;
            let (mut left, mut idx) = (size, 0i64);
            while left > 0 {
                let chunk = read_chunk(digest, data, left)?;
                left -= chunk.len() as u64;
                stmt.execute(params![digest, idx, chunk])?;
                idx += 1;
            }
        }
        tx.commit()?;
        Ok(true)
    }

    fn blob_chunk(&self, digest: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let conn = self.conn();
        Ok(conn
            .query_row(
                "SELECT data FROM image_blob_chunks WHERE digest = ?1 AND idx = ?2",
                params![digest, u(index)],
                |r| r.get(0),
            )
            .optional()?)
    }

    fn add_push(
        &self,
        image: &ImageRecord,
        deliveries: &[DeliveryRecord],
    ) -> Result<(), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute(
            "INSERT INTO images (id, reference, manifest, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT (id) DO NOTHING",
            params![image.id, image.reference, image.manifest_json, ts(image.created_at)],
        )?;
        {
            let mut stmt = tx.prepare_cached(&format!(
                "INSERT OR REPLACE INTO image_deliveries ({DELIVERY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"
            ))?;
            for d in deliveries {
                stmt.execute(delivery_values(d))?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn get_image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError> {
        let conn = self.conn();
        let row: Option<(String, String, String, i64)> = conn
            .query_row(
                "SELECT id, reference, manifest, created_at FROM images WHERE id = ?1",
                params![id],
                |r| TryFrom::try_from(r),
            )
            .optional()?;
        row.map(|(id, reference, manifest_json, at)| {
            Ok(ImageRecord {
                id,
                reference,
                manifest_json,
                created_at: from_ts("images", at)?,
            })
        })
        .transpose()
    }

    fn update_delivery(&self, d: &DeliveryRecord) -> Result<bool, StoreError> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE image_deliveries SET reference = ?3, state = ?4, bytes_total = ?5, bytes_done = ?6, bytes_sent = ?7, layers_present = ?8, error = ?9, rate_limit = ?10, updated_at = ?11
             WHERE agent_id = ?1 AND image_id = ?2",
            delivery_values(d),
        )?;
        Ok(n > 0)
    }

    fn list_deliveries(&self, agent_id: Option<&str>) -> Result<Vec<DeliveryRecord>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM image_deliveries WHERE (?1 IS NULL OR agent_id = ?1) ORDER BY agent_id, reference, image_id"
        ))?;
        let rows = stmt.query_map(params![agent_id], |r| DeliveryRow::try_from(r))?;
        rows.map(|r| delivery(r?)).collect()
    }
}
