//! The controller's state: enrollment tokens and agents.
//!
//! [`Store`] is the seam; [`sqlite::SqliteStore`] is the embedded implementation and
//! [`memory::MemoryStore`] the fake; both pass the same suite (`suite.rs`).
//! Invariant: the store knows nothing about gRPC or TLS, and holds no secret in clear
//! (tokens as SHA-256 of their secret).

pub mod memory;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::tokens::{TokenRecord, TokenRefusal};

/// What an agent reports about its host (domain form of `AgentFacts`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Facts {
    /// Host name.
    pub hostname: String,
    /// CPU architecture (`x86_64`, `aarch64`).
    pub arch: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Kernel release.
    pub kernel: String,
    /// Agent version.
    pub agent_version: String,
    /// Host IP addresses.
    pub ips: Vec<String>,
    /// Docker engine version, empty when unreachable.
    pub docker_version: String,
    /// Stable machine id.
    pub system_id: String,
}

/// An enrolled agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentRecord {
    /// Chosen by the controller at enrollment; the certificate's URI SAN.
    pub id: String,
    /// From the enrollment token.
    pub labels: BTreeMap<String, String>,
    /// Last reported host facts.
    pub facts: Facts,
    /// When it enrolled.
    pub enrolled_at: OffsetDateTime,
    /// Last hello, heartbeat or disconnect.
    pub last_seen: Option<OffsetDateTime>,
    /// Serial of the newest certificate issued to it (hex).
    pub cert_serial: String,
    /// Expiry of that certificate.
    pub cert_not_after: OffsetDateTime,
    /// Set by `drover agent delete`; from then on every call with its certificate fails.
    pub revoked_at: Option<OffsetDateTime>,
    /// The generation it last acknowledged.
    pub applied_generation: u64,
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database: {0}")]
    Db(#[from] rusqlite::Error),
    /// A stored row does not decode.
    #[error("corrupt row in {table}: {detail}")]
    Corrupt {
        /// Table name.
        table: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// The enrollment was refused because of its token; nothing was changed.
    #[error(transparent)]
    Token(#[from] TokenRefusal),
    /// An agent with this id already exists.
    #[error("agent {0} already exists")]
    AgentExists(String),
}

/// Persistent controller state.
pub trait Store: Send + Sync {
    /// Stores a new token.
    fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// All tokens, newest first.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// Revokes a token; `false` when no token has this id.
    fn revoke_token(&self, id: &str) -> Result<bool, StoreError>;
    /// In one transaction: checks the token (see [`crate::tokens::check`]), takes one use,
    /// and inserts the agent (labels from the token). Changes nothing when refused.
    fn enroll(
        &self,
        token_id: &str,
        secret_hash: &[u8; 32],
        now: OffsetDateTime,
        agent: AgentRecord,
    ) -> Result<AgentRecord, StoreError>;
    /// One agent.
    fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// All agents, by id.
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// Records that the agent was seen, with fresh facts when it sent them.
    fn agent_seen(
        &self,
        id: &str,
        at: OffsetDateTime,
        facts: Option<&Facts>,
        ips: Option<&[String]>,
        applied_generation: Option<u64>,
    ) -> Result<(), StoreError>;
    /// Records a renewed certificate.
    fn agent_cert_renewed(
        &self,
        id: &str,
        serial: &str,
        not_after: OffsetDateTime,
    ) -> Result<(), StoreError>;
    /// Marks the agent revoked; `false` when unknown. Idempotent.
    fn revoke_agent(&self, id: &str, at: OffsetDateTime) -> Result<bool, StoreError>;
}
