//! The controller's state: enrollment tokens, agents, runner spec generations, per-agent
//! runner registrations and rollout progress.
//!
//! [`Store`] is the seam; [`sqlite::SqliteStore`] is the embedded implementation,
//! [`postgres::PgStore`] the one on a PostgreSQL server and [`memory::MemoryStore`] the
//! fake; all three pass the same suite (`suite.rs`).
//! Invariant: the store knows nothing about gRPC or TLS, and holds no secret in clear
//! (tokens as SHA-256 of their secret; runner specs and runner tokens sealed by
//! [`crate::secrets::Sealer`] before they reach the store).

mod batch_reads;
mod columns;
pub mod memory;
pub mod postgres;
pub mod sqlite;
#[cfg(test)]
pub(crate) mod suite;
#[cfg(test)]
mod suite_batch_reads;
#[cfg(test)]
mod suite_drains;
#[cfg(test)]
mod suite_images;
#[cfg(test)]
mod suite_jobs;
#[cfg(test)]
mod suite_upgrades;
pub mod upgrades;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::tokens::{TokenRecord, TokenRefusal};
pub use batch_reads::{BatchReadStore, SessionRead};
pub use upgrades::UpgradeStore;

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
    /// PostgreSQL failed (or could not be reached).
    #[error("postgresql: {0}")]
    Postgres(#[from] ::postgres::Error),
    /// No pooled PostgreSQL connection could be had in time.
    #[error("postgresql connection pool: {0}")]
    Pool(#[from] r2d2::Error),
    /// A controller of an earlier build, which runs one controller per database, holds the
    /// database (or, for that build, replicas of this one do).
    #[error(
        "database {0} is in use by a drover controller of an earlier version (one controller per database); stop it before starting replicas of this version"
    )]
    InUse(String),
    /// A leader-only write from a replica that does not hold the leader lease (lost, or
    /// expired by the database's clock); nothing was written.
    #[error("this replica does not hold the leader lease; nothing was written")]
    NotLeader,
    /// The database was written by a newer build; nothing was changed.
    #[error(
        "database {path} has schema version {found}, newer than the {supported} this drover knows: run a newer drover, or restore a backup taken before the upgrade"
    )]
    TooNew {
        /// The database file.
        path: String,
        /// Its `user_version`.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
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
    /// The blocking task running a store call ended without an answer (runtime shutdown).
    #[error("store call did not finish: {0}")]
    Interrupted(String),
    /// A failure injected by a test fake ([`memory::MemoryStore::failing_on`]).
    #[error("injected failure writing to {0}")]
    Injected(&'static str),
    /// An agent id that names no enrolled agent, or a revoked one; nothing was written.
    #[error("agent {0} not found (or deleted)")]
    UnknownAgent(String),
    /// A blob's bytes could not be read while storing it; nothing was stored.
    #[error("read blob {digest}: {detail}")]
    BlobRead {
        /// The blob.
        digest: String,
        /// What failed.
        detail: String,
    },
    /// A generation was added that does not follow the newest one (a concurrent apply).
    #[error("generation {got} does not follow the newest generation {newest}")]
    GenerationConflict {
        /// The newest stored generation.
        newest: u64,
        /// The one offered.
        got: u64,
    },
}

/// How a generation is rolled out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Strategy {
    /// Rolling (bounded batches) or all agents at once.
    pub kind: StrategyKind,
    /// Rolling: agents that may be pushed but not yet acknowledged at once.
    pub max_unavailable: u32,
    /// Health gate (`runner apply --canary/--gate-window/...`): `None` for an ungated
    /// rollout. Kept in the generation's strategy JSON (absent in earlier rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<Gate>,
}

/// A rollout gated on health (see `crate::fleet::gate`): batches go one at a time, each
/// watched for `window_secs` after it applied before the next is pushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// Agents in the first batch (0 = `max_unavailable`).
    pub canary: u32,
    /// How long each batch is watched after its last agent applied, seconds.
    pub window_secs: u64,
    /// Highest share of the watched agents' finished jobs that may end with a system-level
    /// failure, in thousandths (0: any such failure halts).
    pub max_failure_permille: u32,
    /// On a halt, undo the rollout (a new generation with the previous runners).
    pub auto_rollback: bool,
}

/// The rollout strategies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StrategyKind {
    /// At most `max_unavailable` agents in flight; a refusal halts the rollout.
    Rolling,
    /// Every agent at once; a refusal still halts pushing to agents that connect later.
    All,
}

/// Where a generation's rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RolloutState {
    /// Agents are still being pushed or have not acknowledged.
    Progressing,
    /// Every selected agent acknowledged it.
    Complete,
    /// An agent refused it: no further agent receives it.
    Halted,
}

impl RolloutState {
    /// The name shown by `drover rollout status`.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Progressing => "progressing",
            RolloutState::Complete => "complete",
            RolloutState::Halted => "halted",
        }
    }
}

/// One generation of the fleet's runner set. Every change is a new generation; old ones are
/// kept for `drover rollout undo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRecord {
    /// 1, 2, ... without gaps.
    pub generation: u64,
    /// When it was applied.
    pub created_at: OffsetDateTime,
    /// The runners (`Vec<RunnerConfig>` as JSON), sealed: they hold registration tokens.
    pub runners_sealed: Vec<u8>,
    /// How it is rolled out.
    pub strategy: Strategy,
    /// Rollout progress.
    pub state: RolloutState,
    /// Why it halted, or what it was (e.g. `undo to generation 2`).
    pub reason: String,
}

/// A GitLab runner the controller holds for one runner spec on one agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    /// The agent.
    pub agent_id: String,
    /// The runner spec's name.
    pub runner: String,
    /// GitLab URL it is registered with.
    pub url: String,
    /// GitLab's runner id (0 when unknown, e.g. a `token` used as is).
    pub gitlab_runner_id: i64,
    /// The runner authentication token, sealed.
    pub token_sealed: Vec<u8>,
    /// Expiry of that token, `None` = never.
    pub token_expires_at: Option<OffsetDateTime>,
    /// Digest of the spec fields the registration depends on; a change registers anew.
    pub registration_key: String,
    /// `true` when the controller registered it (and so unregisters it); `false` for a
    /// `token` given in the spec, which belongs to the operator.
    pub registered: bool,
}

/// A GitLab runner entry replaced or removed; unregistered once its agent runs
/// `after_generation` (so the old unit keeps working until the new one is up).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retired {
    /// Row id (0 before insert).
    pub id: i64,
    /// The entry, as it was assigned.
    pub assignment: Assignment,
    /// Unregister once the agent acknowledges this generation (0 = at once).
    pub after_generation: u64,
}

/// One agent's rollout progress.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentRollout {
    /// The agent.
    pub agent_id: String,
    /// The generation the controller pushes to it.
    pub target_generation: u64,
    /// The generation of its last acknowledgement.
    pub ack_generation: u64,
    /// Why it refused `ack_generation`; `None` when it applied it.
    pub ack_error: Option<String>,
}

/// An agent's answer to the generation it was pushed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AckRecord {
    /// The agent.
    pub agent_id: String,
    /// The generation it answered.
    pub generation: u64,
    /// Why it refused it; `None` when it applied it.
    pub error: Option<String>,
}

/// What moving one agent to a generation writes (see [`RolloutStore::advance_agents`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentStep {
    /// The agent.
    pub agent_id: String,
    /// Its new target generation.
    pub generation: u64,
    /// Assignments inserted or replaced.
    pub put: Vec<Assignment>,
    /// Runner names whose assignment is removed.
    pub delete: Vec<String>,
    /// GitLab runner entries to unregister later.
    pub retire: Vec<Retired>,
}

/// Something that happened in the fleet, as `drover events` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventRecord {
    /// Increasing row id (0 before insert); `drover events --follow` reads after it.
    pub id: u64,
    /// When it happened.
    pub at: Option<OffsetDateTime>,
    /// The agent it concerns; empty for fleet-wide events (rollouts).
    pub agent_id: String,
    /// `agent-state`, `agent-connected`, `agent-disconnected`, `agent-enrolled`,
    /// `agent-deleted`, `runner-<kind>`, `job`, `rollout`.
    pub kind: String,
    /// The runner it concerns, if any.
    pub runner: String,
    /// One line for people.
    pub message: String,
    /// For `job` events: GitLab's job id and its state.
    pub job_id: i64,
    /// `running`, `success`, `failed`, `canceled` for `job` events.
    pub job_state: String,
}

/// Which events to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this agent's (empty = all).
    pub agent_id: String,
    /// Only this kind (empty = all).
    pub kind: String,
    /// Only at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only with a larger id.
    pub after_id: u64,
    /// The newest `limit` matching, returned oldest first.
    pub limit: usize,
}

impl EventFilter {
    /// Whether `e` passes every condition but the limit.
    pub fn matches(&self, e: &EventRecord) -> bool {
        (self.agent_id.is_empty() || e.agent_id == self.agent_id)
            && (self.kind.is_empty() || e.kind == self.kind)
            && self.since.is_none_or(|s| e.at.is_some_and(|at| at >= s))
            && e.id > self.after_id
    }
}

/// How many events are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Newest events kept per agent.
    pub per_agent: usize,
    /// Newest events kept in all.
    pub total: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            per_agent: 500,
            total: 50_000,
        }
    }
}

/// One job on one agent (one row per agent and GitLab job id, updated as its state changes).
#[derive(Debug, Clone, PartialEq)]
pub struct JobRecord {
    /// The agent that ran it (from its certificate, never from a message).
    pub agent_id: String,
    /// GitLab's job id (positive).
    pub job_id: i64,
    /// The runner.
    pub runner: String,
    /// `running`, `success`, `failed`, `canceled`, or a newer agent's state by name.
    pub state: String,
    /// GitLab's failure reason, empty unless failed.
    pub failure_reason: String,
    /// When it started (agent clock).
    pub started_at: Option<OffsetDateTime>,
    /// When it ended (agent clock); `None` while running.
    pub finished_at: Option<OffsetDateTime>,
    /// How long it ran, milliseconds; `None` while running or unknown.
    pub duration_ms: Option<i64>,
    /// How long it waited in GitLab's queue, milliseconds; `None` when GitLab did not say.
    pub queue_wait_ms: Option<i64>,
    /// When the controller last heard of it (controller clock): order, `since`, age.
    pub updated_at: OffsetDateTime,
}

impl JobRecord {
    /// Whether the job's state is a final one (anything but `running`).
    pub fn finished(&self) -> bool {
        self.state != "running"
    }

    /// Folds a newer report of the same job into this row, as every store does on upsert:
    /// a final state is never replaced by `running` (events may arrive out of order), the
    /// first start time stays, known durations and waits are kept when the newer report
    /// lacks them.
    pub fn merge(&mut self, newer: &JobRecord) {
        if newer.finished() || !self.finished() {
            self.state = newer.state.clone();
            self.failure_reason = newer.failure_reason.clone();
        }
        self.runner = newer.runner.clone();
        self.started_at = self.started_at.or(newer.started_at);
        self.finished_at = newer.finished_at.or(self.finished_at);
        self.duration_ms = newer.duration_ms.or(self.duration_ms);
        self.queue_wait_ms = newer.queue_wait_ms.or(self.queue_wait_ms);
        self.updated_at = self.updated_at.max(newer.updated_at);
    }
}

/// Which jobs to read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only this agent's (empty = all).
    pub agent_id: String,
    /// Only this runner's (empty = all).
    pub runner: String,
    /// Only in this state (empty = all).
    pub state: String,
    /// Only updated at or after this time.
    pub since: Option<OffsetDateTime>,
    /// The newest `limit` matching (by `updated_at`), newest first.
    pub limit: usize,
}

impl JobFilter {
    /// Whether `j` passes every condition but the limit.
    pub fn matches(&self, j: &JobRecord) -> bool {
        (self.agent_id.is_empty() || j.agent_id == self.agent_id)
            && (self.runner.is_empty() || j.runner == self.runner)
            && (self.state.is_empty() || j.state == self.state)
            && self.since.is_none_or(|s| j.updated_at >= s)
    }
}

/// How many jobs and fleet samples are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobRetention {
    /// Newest jobs kept per agent.
    pub per_agent: usize,
    /// Newest jobs kept in all.
    pub total: usize,
    /// Jobs not updated for this long are dropped.
    pub max_age: time::Duration,
    /// Newest fleet samples kept.
    pub samples: usize,
}

impl Default for JobRetention {
    fn default() -> Self {
        JobRetention {
            per_agent: 1000,
            total: 50_000,
            max_age: time::Duration::days(7),
            samples: 1440,
        }
    }
}

/// Agents per state at one time (the status page's "agents per state over time").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FleetSample {
    /// When (controller clock, whole seconds); one sample per time.
    pub at: OffsetDateTime,
    /// Agents `healthy`.
    pub healthy: u32,
    /// Agents `degraded`.
    pub degraded: u32,
    /// Agents `lost`.
    pub lost: u32,
    /// Agents `revoked`.
    pub revoked: u32,
}

/// Runs store calls on tokio's blocking pool and waits for them: how async code calls the
/// store, so a transaction (or a wait for SQLite's lock or the disk) never holds an async
/// worker thread. Group the calls one decision needs in one closure. A panic in `f` is
/// resumed in the caller.
pub async fn blocking<R, F>(store: &Arc<dyn Store>, f: F) -> Result<R, StoreError>
where
    F: FnOnce(&dyn Store) -> Result<R, StoreError> + Send + 'static,
    R: Send + 'static,
{
    let store = Arc::clone(store);
    match tokio::task::spawn_blocking(move || f(store.as_ref())).await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(StoreError::Interrupted(e.to_string())),
    }
}

/// Persistent controller state: one handle over every aggregate, so callers keep one
/// `Arc<dyn Store>`. Each aggregate's trait is imported where its calls are made.
pub trait Store:
    EnrollmentStore
    + AgentStore
    + RolloutStore
    + RunnerStore
    + EventStore
    + JobStore
    + DrainStore
    + ImageStore
    + UpgradeStore
    + BatchReadStore
{
}

impl<
    T: EnrollmentStore
        + AgentStore
        + RolloutStore
        + RunnerStore
        + EventStore
        + JobStore
        + DrainStore
        + ImageStore
        + UpgradeStore
        + BatchReadStore,
> Store for T
{
}

/// Enrollment tokens, and enrollment (which takes a token use and inserts an agent).
pub trait EnrollmentStore: Send + Sync {
    /// Stores a new token.
    fn create_token(&self, token: &TokenRecord) -> Result<(), StoreError>;
    /// All tokens, newest first.
    fn list_tokens(&self) -> Result<Vec<TokenRecord>, StoreError>;
    /// One token by id.
    fn get_token(&self, id: &str) -> Result<Option<TokenRecord>, StoreError>;
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
}

/// Enrolled agents: facts, last contact, certificates, revocation.
pub trait AgentStore: Send + Sync {
    /// One agent.
    fn get_agent(&self, id: &str) -> Result<Option<AgentRecord>, StoreError>;
    /// All agents, by id.
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// One agent's labels (`None` when unknown): what choosing its runners needs, without
    /// decoding its facts.
    fn agent_labels(&self, id: &str) -> Result<Option<BTreeMap<String, String>>, StoreError>;
    /// Records that the agent was seen, with fresh facts when it sent them.
    fn agent_seen(
        &self,
        id: &str,
        at: OffsetDateTime,
        facts: Option<&Facts>,
        ips: Option<&[String]>,
        applied_generation: Option<u64>,
    ) -> Result<(), StoreError>;
    /// Records many agents' last contact in one transaction (the lease table flushes
    /// heartbeats this way instead of one write per heartbeat). Unknown ids are skipped; a
    /// time older than the stored one does not move it back.
    fn agents_seen(&self, seen: &[(String, OffsetDateTime)]) -> Result<(), StoreError>;
    /// Records the host-health reasons the replica holding each agent's session evaluated
    /// from its heartbeats (empty: none), so other replicas show the same state. Unknown ids
    /// are skipped.
    fn set_host_reasons(&self, reasons: &[(String, Vec<String>)]) -> Result<(), StoreError>;
    /// The stored host-health reasons of every agent that has any, by id.
    fn host_reasons(&self) -> Result<BTreeMap<String, Vec<String>>, StoreError>;
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

/// Runner spec generations and each agent's progress towards them. Advancing agents writes
/// their runner assignments too, in the same transaction.
pub trait RolloutStore: Send + Sync {
    /// Adds generation `g.generation`, which must be the newest + 1.
    fn add_generation(&self, g: &GenerationRecord) -> Result<(), StoreError>;
    /// The newest generation.
    fn latest_generation(&self) -> Result<Option<GenerationRecord>, StoreError>;
    /// One generation.
    fn get_generation(&self, generation: u64) -> Result<Option<GenerationRecord>, StoreError>;
    /// Records a generation's rollout state; `false` when unknown.
    fn set_rollout_state(
        &self,
        generation: u64,
        state: RolloutState,
        reason: &str,
    ) -> Result<bool, StoreError>;

    /// Every agent's rollout progress (agents never pushed are absent).
    fn agent_rollouts(&self) -> Result<Vec<AgentRollout>, StoreError>;
    /// One agent's rollout progress (`None` before it was first pushed).
    fn agent_rollout(&self, agent_id: &str) -> Result<Option<AgentRollout>, StoreError>;
    /// Moves agents to a generation, all in one transaction (all or nothing): each step's
    /// assignments put, its dropped assignments deleted, its retired entries queued, and
    /// its agent's target generation set.
    fn advance_agents(&self, steps: &[AgentStep]) -> Result<(), StoreError>;
    /// Every agent not revoked with its rollout progress (zeros before it was first
    /// pushed), by id: what a reconciliation plans from, without the agents' labels and
    /// facts.
    fn rollout_progress(&self) -> Result<Vec<AgentRollout>, StoreError>;
    /// Records acknowledgements in one transaction, in order; an applied one also sets its
    /// agent's `applied_generation`.
    fn record_acks(&self, acks: &[AckRecord]) -> Result<(), StoreError>;
}

/// The GitLab runners the controller holds per agent (assignments) and the ones waiting to
/// be unregistered (retired). Each write is one intent, done whole or not at all.
pub trait RunnerStore: Send + Sync {
    /// An agent's assignments, by runner name.
    fn assignments(&self, agent_id: &str) -> Result<Vec<Assignment>, StoreError>;
    /// Every assignment, by agent then runner.
    fn all_assignments(&self) -> Result<Vec<Assignment>, StoreError>;
    /// In one transaction: removes every assignment of `agent_id` and queues the ones the
    /// controller registered as retired at once (`after_generation` 0); returns how many
    /// were queued. All or nothing: a failure leaves every assignment in place.
    fn retire_agent_runners(&self, agent_id: &str) -> Result<usize, StoreError>;
    /// In one transaction: puts `fresh` in place of the assignment of (`fresh.agent_id`,
    /// `fresh.runner`) and queues the replaced one, when the controller registered it, as
    /// retired at once. Returns the replaced assignment. All or nothing.
    fn replace_assignment(&self, fresh: &Assignment) -> Result<Option<Assignment>, StoreError>;
    /// Compare-and-swap of a rotated runner token: sets the token and its expiry of the
    /// assignment of (`expected.agent_id`, `expected.runner`) only while that assignment is
    /// still `expected` (same GitLab runner, registration and token); `false` when it
    /// changed or is gone, and then nothing is written.
    fn rotate_assignment_token(
        &self,
        expected: &Assignment,
        token_sealed: &[u8],
        token_expires_at: Option<OffsetDateTime>,
    ) -> Result<bool, StoreError>;

    /// Every queued retired entry, oldest first.
    fn list_retired(&self) -> Result<Vec<Retired>, StoreError>;
    /// Drops a retired entry once unregistered.
    fn delete_retired(&self, id: i64) -> Result<(), StoreError>;
}

/// A drain of one agent (`drover agent drain`): it takes no new jobs; running ones finish,
/// or are canceled once `deadline_at` passed. Kept until `drover agent undrain` or the
/// agent's deletion; sent again on every new session of the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainRecord {
    /// The agent.
    pub agent_id: String,
    /// When the (newest) drain command was given.
    pub requested_at: OffsetDateTime,
    /// When running jobs are canceled; `None` = they finish whenever they do.
    pub deadline_at: Option<OffsetDateTime>,
}

/// Drained agents. Each write is one transaction over every agent it names: an unknown or
/// revoked id refuses the whole write ([`StoreError::UnknownAgent`]) and changes nothing.
/// Revoking an agent drops its drain.
pub trait DrainStore: Send + Sync {
    /// Drains every agent of `ids` from `requested_at`, with `deadline_at`; an agent
    /// already drained takes the newer time and deadline.
    fn drain_agents(
        &self,
        ids: &[String],
        requested_at: OffsetDateTime,
        deadline_at: Option<OffsetDateTime>,
    ) -> Result<(), StoreError>;
    /// Ends the drain of every agent of `ids`; returns those that were drained, by id.
    fn undrain_agents(&self, ids: &[String]) -> Result<Vec<String>, StoreError>;
    /// One agent's drain (`None`: not drained, unknown or revoked).
    fn agent_drain(&self, id: &str) -> Result<Option<DrainRecord>, StoreError>;
    /// Every drained agent's drain, by id.
    fn list_drains(&self) -> Result<Vec<DrainRecord>, StoreError>;
}

/// Fleet events (`drover events`).
pub trait EventStore: Send + Sync {
    /// Appends events in one transaction (ids and order as given).
    fn add_events(&self, events: &[EventRecord]) -> Result<(), StoreError>;
    /// The newest `filter.limit` events matching `filter`, oldest first.
    fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventRecord>, StoreError>;
    /// Drops all but the newest `per_agent` events of each agent and the newest `total` in
    /// all; returns how many were dropped.
    fn prune_events(&self, keep: Retention) -> Result<usize, StoreError>;
}

/// The fleet's jobs (`drover jobs`, the status page) and the agents-per-state history.
pub trait JobStore: Send + Sync {
    /// Inserts or updates jobs in one transaction, in order; an existing row (same agent
    /// and job id) is updated as [`JobRecord::merge`] says.
    fn upsert_jobs(&self, jobs: &[JobRecord]) -> Result<(), StoreError>;
    /// The newest `filter.limit` jobs matching `filter` (by `updated_at`, then agent and
    /// job id), newest first.
    fn list_jobs(&self, filter: &JobFilter) -> Result<Vec<JobRecord>, StoreError>;
    /// Drops jobs not updated since `now - keep.max_age`, then all but the newest
    /// `per_agent` of each agent and the newest `total` in all, and all but the newest
    /// `keep.samples` fleet samples; returns how many rows were dropped.
    fn prune_jobs(&self, keep: JobRetention, now: OffsetDateTime) -> Result<usize, StoreError>;
    /// Records a fleet sample (a second one at the same time replaces it).
    fn add_fleet_sample(&self, sample: &FleetSample) -> Result<(), StoreError>;
    /// Fleet samples at or after `since`, oldest first.
    fn list_fleet_samples(&self, since: OffsetDateTime) -> Result<Vec<FleetSample>, StoreError>;
}

/// Bytes per stored blob row: blobs are kept as consecutive chunks of this size (the last
/// one shorter), so any replica serves any range with one row per chunk.
pub const BLOB_CHUNK_BYTES: usize = 1024 * 1024;

/// An image the controller holds (`drover image push`), by its id (the config digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// `sha256:...` of the config blob.
    pub id: String,
    /// `name:tag`.
    pub reference: String,
    /// The layers and sizes ([`crate::images::Manifest`] as JSON).
    pub manifest_json: String,
    pub created_at: OffsetDateTime,
}

/// One image on one agent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DeliveryRecord {
    pub agent_id: String,
    pub image_id: String,
    pub reference: String,
    /// `pending`, `fetching`, `delivered` or `failed` ([`crate::images::DeliveryState`]).
    pub state: String,
    pub bytes_total: u64,
    pub bytes_done: u64,
    /// Blob bytes the controller sent for it.
    pub bytes_sent: u64,
    pub layers_present: u32,
    /// Why it failed.
    pub error: String,
    /// Bytes per second on the send side; 0 unlimited.
    pub rate_limit: u64,
    pub updated_at: Option<OffsetDateTime>,
}

/// Image blobs (content-addressed, chunked rows), images and their deliveries.
pub trait ImageStore: Send + Sync {
    /// The stored size of blob `digest`, `None` when it is not stored.
    fn blob_size(&self, digest: &str) -> Result<Option<u64>, StoreError>;
    /// Stores blob `digest` of `size` bytes read from `data`, in one transaction; a blob
    /// already stored is left as is (`false`). The caller checked the digest.
    fn put_blob(
        &self,
        digest: &str,
        size: u64,
        data: &mut (dyn std::io::Read + Send),
    ) -> Result<bool, StoreError>;
    /// Chunk `index` (of [`BLOB_CHUNK_BYTES`]) of blob `digest`.
    fn blob_chunk(&self, digest: &str, index: u64) -> Result<Option<Vec<u8>>, StoreError>;
    /// Stores `image` (kept when already stored) and starts its `deliveries` (replacing
    /// earlier ones of the same agent and image), in one transaction.
    fn add_push(
        &self,
        image: &ImageRecord,
        deliveries: &[DeliveryRecord],
    ) -> Result<(), StoreError>;
    fn get_image(&self, id: &str) -> Result<Option<ImageRecord>, StoreError>;
    /// Replaces the stored delivery of `d.agent_id` and `d.image_id`; `false` when there
    /// is none (nothing is written).
    fn update_delivery(&self, d: &DeliveryRecord) -> Result<bool, StoreError>;
    /// Deliveries, by agent then reference; only `agent_id`'s when given.
    fn list_deliveries(&self, agent_id: Option<&str>) -> Result<Vec<DeliveryRecord>, StoreError>;
}
