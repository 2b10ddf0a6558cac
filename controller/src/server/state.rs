//! What every service shares.

use std::sync::Arc;

use time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sessions::Sessions;
use crate::fleet::Fleet;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::pki::ca::Ca;
use crate::store::Store;

/// Shared server state.
#[derive(Clone)]
pub struct AppState {
    /// Persistent state.
    pub store: Arc<dyn Store>,
    /// The CA that signs agent certificates.
    pub ca: Arc<Ca>,
    /// Open agent sessions.
    pub sessions: Sessions,
    /// Lifetime of issued agent certificates.
    pub cert_ttl: Duration,
    /// Heartbeat interval told to agents in Welcome.
    pub heartbeat_interval: std::time::Duration,
    /// The sessions' shutdown (a child of the server's): sessions end with it.
    pub shutdown: CancellationToken,
    /// Every task the server starts; shutdown waits for them.
    pub tasks: TaskTracker,
    /// Runner specs, rollouts and GitLab registrations.
    pub fleet: Arc<Fleet>,
    /// Leases and events.
    pub health: Arc<Health>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Image transfers (send pacing, bytes sent, the upload spool).
    pub transfers: Arc<crate::images::Transfers>,
    /// This replica's role among several on one database (alone: always the leader).
    pub cluster: crate::replicas::Cluster,
    /// Agent binary upgrades.
    pub upgrades: Arc<crate::upgrade::Upgrades>,
    /// The reads of kicked sessions, batched.
    pub session_reads: super::session_reads::SessionReads,
}

impl AppState {
    /// `unavailable` while this replica is cut off from its database: an agent or admin
    /// is sent to another replica rather than left waiting for a store that will not
    /// answer, and nothing is written from here.
    pub fn serving(&self) -> Result<(), tonic::Status> {
        self.cluster.serving().map_err(|reason| {
            tonic::Status::unavailable(format!(
                "this controller replica is not serving ({reason}); use another replica"
            ))
        })
    }

    /// The calling admin (see [`super::auth::admin`]), while this replica serves.
    pub fn admin<T>(&self, req: &tonic::Request<T>) -> Result<String, tonic::Status> {
        let admin = super::auth::admin(req)?;
        self.serving()?;
        Ok(admin)
    }
}
