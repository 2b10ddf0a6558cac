//! [`Fleet`]: applies spec files as generations, advances rollouts, registers and retires
//! GitLab runners, builds each agent's `DesiredState`, and handles what agents report.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use drover_proto::spec::RunnerConfig;
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

use super::registrar::Registrar;
use super::spec::SpecRefusal;
use crate::health::report::RunnerStatus;
use crate::secrets::{Sealer, SecretsError};
use crate::server::sessions::Sessions;
use crate::store::{AckRecord, Store, StoreError};

mod desired;
mod gating;
mod generations;
mod reconcile;
mod reports;
mod retirement;
mod statuses;

pub use generations::{ApplyOutcome, ApplyRequest};
pub use reports::Claim;

/// Sealing purpose of a generation's runner list.
pub const SPECS: &str = "drover runner specs";
/// Sealing purpose of a runner authentication token.
pub const RUNNER_TOKEN: &str = "drover runner token";

/// Errors of fleet operations.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    /// The spec file was refused; nothing changed.
    #[error(transparent)]
    Spec(#[from] SpecRefusal),
    /// No such runner.
    #[error("no runner named {0:?}")]
    NoRunner(String),
    /// `rollout undo` with fewer than two generations.
    #[error("nothing to undo: generation {0} has no predecessor")]
    NothingToUndo(u64),
    /// A bad argument (strategy).
    #[error("{0}")]
    Invalid(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A sealed value did not open.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// A stored generation does not decode.
    #[error("generation {generation}: stored runners do not decode: {detail}")]
    Corrupt {
        /// Which.
        generation: u64,
        /// Why.
        detail: String,
    },
}

/// What the controller knows of an agent's runners from its last heartbeat.
#[derive(Debug, Clone, Default)]
struct Runtime {
    runners: Vec<RunnerStatus>,
    /// Last failure to advance this agent (registration).
    error: Option<String>,
    /// Last `token-invalid` acted on (checked with GitLab) per runner.
    healed: HashMap<String, std::time::Instant>,
}

/// Which agents are connected to some replica.
pub type Presence = Arc<dyn Fn() -> std::collections::HashSet<String> + Send + Sync>;

/// The fleet service. Cheap to share behind an `Arc`.
pub struct Fleet {
    store: Arc<dyn Store>,
    /// The store for the leader's writes (advancing agents, rollout states, retired
    /// runners): with several replicas a handle fenced by the lease's epoch.
    fenced: Arc<dyn Store>,
    /// This replica's role: only the leader reconciles.
    cluster: crate::replicas::Cluster,
    /// With several replicas: the agents connected to any replica (else the sessions here).
    presence: Option<Presence>,
    sealer: Sealer,
    registrar: Arc<dyn Registrar>,
    sessions: Sessions,
    /// Serializes applies and reconciliations (registration included), so two never
    /// interleave their store writes.
    lock: tokio::sync::Mutex<()>,
    /// A reconciliation is waiting for `lock` and has not read the store yet: it will see
    /// every change recorded before it starts, so callers meanwhile need not queue another.
    /// (10,000 acks arriving together cost a few passes, not 10,000.)
    reconcile_queued: std::sync::atomic::AtomicBool,
    /// A replica that does not lead is writing queued acks: an ack queued meanwhile is
    /// written by that writer's next round (see [`Fleet::reconcile`]).
    acks_writing: std::sync::atomic::AtomicBool,
    runtime: Mutex<HashMap<String, Runtime>>,
    /// Unsealed runners of recently used generations (generations never change once
    /// stored), so pushing one generation to 10,000 agents opens it once.
    unsealed: Mutex<BTreeMap<u64, Arc<Vec<RunnerConfig>>>>,
    /// Acknowledgements not yet written (see [`Fleet::on_ack`]).
    acks: Mutex<Vec<AckRecord>>,
    /// No reconciliation pass starts before this instant (see [`Fleet::reconcile`]).
    pass_gap: Mutex<std::time::Instant>,
    /// Gated rollouts (leader): when a pass first saw each agent applied the generation
    /// (`gating.rs`).
    gate_seen: Mutex<HashMap<String, (u64, OffsetDateTime)>>,
    /// The gate's clock (a fake in tests).
    gate_clock: Arc<dyn crate::health::clock::Clock>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Fleet")
    }
}

/// The spec's runner-creation token, when set and not empty.
fn creation_token(r: &RunnerConfig) -> Option<SecretString> {
    r.runner_creation_token
        .clone()
        .filter(|t| !t.expose_secret().trim().is_empty())
}

fn now() -> OffsetDateTime {
    let t = OffsetDateTime::now_utc();
    t.replace_nanosecond(0).unwrap_or(t)
}

fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

impl Fleet {
    /// A fleet over `store`, sealing with `sealer`, registering through `registrar`, and
    /// pushing through `sessions`.
    pub fn new(
        store: Arc<dyn Store>,
        sealer: Sealer,
        registrar: Arc<dyn Registrar>,
        sessions: Sessions,
    ) -> Fleet {
        Fleet {
            fenced: store.clone(),
            cluster: crate::replicas::Cluster::solo(),
            presence: None,
            store,
            sealer,
            registrar,
            sessions,
            lock: tokio::sync::Mutex::new(()),
            reconcile_queued: std::sync::atomic::AtomicBool::new(false),
            acks_writing: std::sync::atomic::AtomicBool::new(false),
            runtime: Mutex::new(HashMap::new()),
            unsealed: Mutex::new(BTreeMap::new()),
            acks: Mutex::new(Vec::new()),
            pass_gap: Mutex::new(std::time::Instant::now()),
            gate_seen: Mutex::new(HashMap::new()),
            gate_clock: Arc::new(crate::health::clock::SystemClock),
        }
    }

    /// The same fleet judging gated rollouts on `clock` (tests).
    #[cfg(test)]
    pub(crate) fn with_gate_clock(mut self, clock: Arc<dyn crate::health::clock::Clock>) -> Fleet {
        self.gate_clock = clock;
        self
    }

    /// The fleet of one replica among several: reconciles only while `cluster` leads,
    /// writing the leader's writes through `fenced`, pushing to the agents `presence`
    /// says are connected to any replica.
    pub fn in_cluster(
        mut self,
        cluster: crate::replicas::Cluster,
        fenced: Arc<dyn Store>,
        presence: Option<Presence>,
    ) -> Fleet {
        self.cluster = cluster;
        self.fenced = fenced;
        self.presence = presence;
        self
    }

    /// The agents connected now (to any replica).
    pub fn connected_agents(&self) -> std::collections::HashSet<String> {
        match &self.presence {
            Some(p) => p(),
            None => self.sessions.connected(),
        }
    }

    fn runtime(&self) -> std::sync::MutexGuard<'_, HashMap<String, Runtime>> {
        self.runtime.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The store (for read-only admin views).
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }
}

#[cfg(test)]
mod tests;
