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
}
