//! How both SQL stores keep values in columns: times as unix seconds, maps and facts as
//! JSON text, counts and generations as signed 64-bit integers.

use time::OffsetDateTime;

use super::StoreError;

/// A time as stored: unix seconds.
pub(crate) fn ts(t: OffsetDateTime) -> i64 {
    t.unix_timestamp()
}

/// A stored time; a value out of range is a corrupt row of `table`.
pub(crate) fn from_ts(table: &'static str, v: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(v).map_err(|e| StoreError::Corrupt {
        table,
        detail: format!("timestamp {v}: {e}"),
    })
}

/// A JSON column of `table`, decoded.
pub(crate) fn json<T: serde::de::DeserializeOwned>(
    table: &'static str,
    s: &str,
) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

/// A value as a JSON column.
pub(crate) fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "{}".into())
}

/// A count or generation as a 64-bit column (saturating).
pub(crate) fn u(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A stored count or generation (a negative one reads as 0).
pub(crate) fn from_u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Reads one chunk's worth of `data` (less only at its end).
pub(crate) fn read_chunk(
    digest: &str,
    data: &mut (dyn std::io::Read + Send),
    left: u64,
) -> Result<Vec<u8>, StoreError> {
    let want = usize::try_from(left)
        .unwrap_or(usize::MAX)
        .min(super::BLOB_CHUNK_BYTES);
    let mut buf = vec![0u8; want];
    data.read_exact(&mut buf)
        .map_err(|e| StoreError::BlobRead {
            digest: digest.to_string(),
            detail: e.to_string(),
        })?;
    Ok(buf)
}

/// The `agents.host_reasons` column: a JSON list, or empty when there are none (so a read
/// skips the agents without any).
pub(crate) fn host_reasons_column(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        to_json(&reasons)
    }
}
