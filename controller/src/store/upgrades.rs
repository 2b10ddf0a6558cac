//! Agent binary upgrades (`drover agent upgrade`): the binaries, content-addressed by
//! SHA-256 and kept in chunks of [`CHUNK_BYTES`] (so PostgreSQL replicas share them and a
//! download reads one chunk at a time), the upgrades and each agent's progress.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::StoreError;

/// Bytes per stored chunk of a binary (and the most one read returns).
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// A stored agent binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BinaryRecord {
    /// SHA-256 of the content, lower-case hex: the binary's id.
    pub sha256: String,
    /// `x86_64` or `aarch64`, read from the ELF header.
    pub arch: String,
    /// The version read from the binary's stamp.
    pub version: String,
    /// Bytes.
    pub size: u64,
    /// Ed25519 signature of the raw SHA-256 by the controller's upgrade signing key.
    pub signature: Vec<u8>,
    pub created_at: OffsetDateTime,
}

/// Where an upgrade stands as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeState {
    /// Batches are being pushed.
    Running,
    /// Every matching agent runs the new binary.
    Complete,
    /// A batch failed (a rollback, a refusal or the health timeout): nothing more is pushed.
    Halted,
}

impl UpgradeState {
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeState::Running => "running",
            UpgradeState::Complete => "complete",
            UpgradeState::Halted => "halted",
        }
    }

    /// A stored name; anything else is a corrupt row.
    pub fn parse(s: &str) -> Result<UpgradeState, StoreError> {
        match s {
            "running" => Ok(UpgradeState::Running),
            "complete" => Ok(UpgradeState::Complete),
            "halted" => Ok(UpgradeState::Halted),
            other => Err(StoreError::Corrupt {
                table: "upgrades",
                detail: format!("state {other:?}"),
            }),
        }
    }
}

/// One `drover agent upgrade`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRecord {
    /// 1, 2, ... in order of creation (0 when offered to [`UpgradeStore::add_upgrade`]).
    pub id: u64,
    pub created_at: OffsetDateTime,
    /// Agents it is for (every label must match; empty: all).
    pub selector: BTreeMap<String, String>,
    /// Agents upgraded at once after the canary.
    pub max_unavailable: u32,
    /// How long an agent has to come back healthy on the new binary.
    pub health_timeout_seconds: u64,
    /// Binary per architecture: arch → SHA-256.
    pub binaries: BTreeMap<String, String>,
    pub state: UpgradeState,
    pub reason: String,
}

/// One agent's progress in an upgrade. `state` is one of [`crate::upgrade::progress`]'s
/// names (`pending`, `draining`, `downloading`, `switching`, `healthy`, `rolled-back`,
/// `refused`, `timed-out`); `detail` the percentage, version or reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentUpgrade {
    pub upgrade_id: u64,
    pub agent_id: String,
    pub state: String,
    pub detail: String,
    /// When the agent entered this state (the health timeout counts from `switching`).
    pub since: OffsetDateTime,
}

/// Binaries, upgrades and per-agent progress.
pub trait UpgradeStore: Send + Sync {
    /// Stores a binary and its content in chunks, in one transaction; a binary already
    /// stored (same SHA-256) is left as it is. Returns whether it was new.
    fn add_binary(&self, binary: &BinaryRecord, content: &[u8]) -> Result<bool, StoreError>;
    /// A stored binary's record.
    fn get_binary(&self, sha256: &str) -> Result<Option<BinaryRecord>, StoreError>;
    /// Bytes of a stored binary from `offset`, at most up to the end of the chunk holding
    /// `offset` (empty at or past the end).
    fn binary_chunk(&self, sha256: &str, offset: u64) -> Result<Vec<u8>, StoreError>;
    /// Stores a new upgrade; returns its id.
    fn add_upgrade(&self, upgrade: &UpgradeRecord) -> Result<u64, StoreError>;
    /// The newest upgrade.
    fn latest_upgrade(&self) -> Result<Option<UpgradeRecord>, StoreError>;
    /// Sets an upgrade's state and reason (leader only). Returns whether it exists.
    fn set_upgrade_state(
        &self,
        id: u64,
        state: UpgradeState,
        reason: &str,
    ) -> Result<bool, StoreError>;
    /// Writes agents' progress (insert or replace), in one transaction (leader only).
    fn set_agent_upgrades(&self, progress: &[AgentUpgrade]) -> Result<(), StoreError>;
    /// An upgrade's per-agent progress, by agent id.
    fn agent_upgrades(&self, upgrade_id: u64) -> Result<Vec<AgentUpgrade>, StoreError>;
    /// One agent's progress in an upgrade (the per-session paths: one row, not the fleet's).
    fn agent_upgrade(
        &self,
        upgrade_id: u64,
        agent_id: &str,
    ) -> Result<Option<AgentUpgrade>, StoreError>;
}

/// The chunks of `content`, in order.
pub(crate) fn chunks(content: &[u8]) -> impl Iterator<Item = (i64, &[u8])> {
    content
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(i, c)| (i64::try_from(i).unwrap_or(i64::MAX), c))
}

/// The chunk index holding `offset` and the offset within it.
pub(crate) fn chunk_of(offset: u64) -> (i64, usize) {
    let chunk = CHUNK_BYTES as u64;
    (
        i64::try_from(offset / chunk).unwrap_or(i64::MAX),
        usize::try_from(offset % chunk).unwrap_or(0),
    )
}

/// The part of a stored chunk from `within`.
pub(crate) fn tail(chunk: Option<Vec<u8>>, within: usize) -> Vec<u8> {
    match chunk {
        Some(c) if within < c.len() => c[within..].to_vec(),
        _ => Vec::new(),
    }
}
