//! The controller's Prometheus metrics (`GET /metrics` on `--http-listen`, OpenMetrics text).
//!
//! Families:
//! - `drover_agents{state}`: agents per lease state (`healthy`, `degraded`, `lost`,
//!   `revoked`), as of the last sweep (every second); every state is always present.
//! - `drover_sessions_connected`: open agent sessions.
//! - `drover_heartbeat_lag_seconds`: histogram of the time between two heartbeats of one
//!   session (the interval asked is `drover serve --heartbeat-interval`).
//! - `drover_rollout_generation`: the newest generation; `drover_rollout_agents{state}`:
//!   agents that `applied` it, are `pending` (pushed or waiting) or `refused` it.
//! - `drover_enrollments_total`, `drover_enrollment_errors_total`.
//! - `drover_rpc_errors_total{method,code}`: gRPC calls answered with an error status.
//! - `drover_build_info{version,revision}`.
//!
//! - [`rpc`]: the tower layer that counts RPC errors.

pub mod rpc;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::health::{Health, State};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

struct Inner {
    registry: Registry,
    agents: Family<StateLabels, Gauge>,
    sessions: Gauge,
    lag: Histogram,
    generation: Gauge,
    rollout_agents: Family<StateLabels, Gauge>,
    enrollments: Counter,
    enrollment_errors: Counter,
    rpc_errors: Family<RpcLabels, Counter>,
}

/// The registry and its handles. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// Heartbeat gaps: around the default 10 s interval and well past a 30 s grace period.
const LAG_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 12.0, 15.0, 20.0, 30.0, 60.0, 120.0,
];

impl Metrics {
    /// Every family registered; build info set.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let agents = Family::<StateLabels, Gauge>::default();
        registry.register(
            "drover_agents",
            "Agents per lease state (healthy, degraded, lost, revoked).",
            agents.clone(),
        );
        let sessions = Gauge::default();
        registry.register(
            "drover_sessions_connected",
            "Open agent sessions.",
            sessions.clone(),
        );
        let lag = Histogram::new(LAG_BUCKETS);
        registry.register(
            "drover_heartbeat_lag_seconds",
            "Time between two heartbeats of one agent session.",
            lag.clone(),
        );
        let generation = Gauge::default();
        registry.register(
            "drover_rollout_generation",
            "The newest runner spec generation (0 = none).",
            generation.clone(),
        );
        let rollout_agents = Family::<StateLabels, Gauge>::default();
        registry.register(
            "drover_rollout_agents",
            "Agents of the newest generation's rollout per state (applied, pending, refused).",
            rollout_agents.clone(),
        );
        let enrollments = Counter::default();
        registry.register(
            "drover_enrollments",
            "Agents enrolled.",
            enrollments.clone(),
        );
        let enrollment_errors = Counter::default();
        registry.register(
            "drover_enrollment_errors",
            "Enrollments refused or failed.",
            enrollment_errors.clone(),
        );
        let rpc_errors = Family::<RpcLabels, Counter>::default();
        registry.register(
            "drover_rpc_errors",
            "gRPC calls answered with an error status, by method and code.",
            rpc_errors.clone(),
        );
        registry.register(
            "drover_build",
            "Drover controller build: constant 1 labeled by version and revision.",
            Info::new(BuildLabels {
                version: env!("CARGO_PKG_VERSION").into(),
                revision: option_env!("DROVER_REVISION").unwrap_or("").into(),
            }),
        );
        Metrics {
            inner: Arc::new(Inner {
                registry,
                agents,
                sessions,
                lag,
                generation,
                rollout_agents,
                enrollments,
                enrollment_errors,
                rpc_errors,
            }),
        }
    }

    /// A heartbeat came `gap` after the previous one.
    pub fn heartbeat_gap(&self, gap: time::Duration) {
        self.inner.lag.observe(gap.as_seconds_f64().max(0.0));
    }

    /// An enrollment succeeded (`true`) or not.
    pub fn enrollment(&self, ok: bool) {
        if ok {
            self.inner.enrollments.inc();
        } else {
            self.inner.enrollment_errors.inc();
        }
    }

    /// A gRPC call to `method` (`/drover.v1.Admin/ListAgents`) ended with `code`.
    pub fn rpc_error(&self, method: &str, code: tonic::Code) {
        self.inner
            .rpc_errors
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: format!("{code:?}"),
            })
            .inc();
    }

    /// Sets the scrape-time gauges from `health` and encodes everything.
    pub async fn render(&self, health: &Health) -> Result<String, std::fmt::Error> {
        let counts = health.leases.counts();
        for s in State::ALL {
            self.inner
                .agents
                .get_or_create(&StateLabels {
                    state: s.as_str().into(),
                })
                .set(i64::try_from(counts.get(&s).copied().unwrap_or(0)).unwrap_or(i64::MAX));
        }
        self.inner
            .sessions
            .set(i64::try_from(health.leases.connected()).unwrap_or(i64::MAX));
        let (generation, applied, pending, refused) = rollout_counts(health).await;
        self.inner
            .generation
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
        for (state, n) in [
            ("applied", applied),
            ("pending", pending),
            ("refused", refused),
        ] {
            self.inner
                .rollout_agents
                .get_or_create(&StateLabels {
                    state: state.into(),
                })
                .set(n);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }
}

/// (generation, applied, pending, refused) of the newest generation over agents not
/// revoked.
async fn rollout_counts(health: &Health) -> (u64, i64, i64, i64) {
    let read = crate::store::blocking(health.store(), |s| {
        let Some(g) = s.latest_generation()? else {
            return Ok(None);
        };
        Ok(Some((
            g,
            s.agent_rollouts().unwrap_or_default(),
            s.list_agents().unwrap_or_default(),
        )))
    });
    let Ok(Some((g, rollouts, agents))) = read.await else {
        return (0, 0, 0, 0);
    };
    let (mut applied, mut pending, mut refused) = (0, 0, 0);
    for a in agents.iter().filter(|a| a.revoked_at.is_none()) {
        match rollouts.iter().find(|r| r.agent_id == a.id) {
            Some(r) if r.ack_generation == r.target_generation && r.ack_error.is_some() => {
                refused += 1
            }
            Some(r) if r.target_generation == g.generation && r.ack_generation >= g.generation => {
                applied += 1
            }
            _ => pending += 1,
        }
    }
    (g.generation, applied, pending, refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_family_is_exposed() {
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::memory::MemoryStore::new());
        let h = Health::new(
            store,
            Arc::new(crate::health::SystemClock),
            crate::health::Thresholds::default(),
        )
        .unwrap();
        let m = Metrics::new();
        m.heartbeat_gap(time::Duration::seconds(10));
        m.enrollment(true);
        m.enrollment(false);
        m.rpc_error("/drover.v1.Admin/GetAgent", tonic::Code::NotFound);
        let text = m.render(&h).await.unwrap();
        for line in [
            "drover_agents{state=\"lost\"} 0",
            "drover_agents{state=\"healthy\"} 0",
            "drover_sessions_connected 0",
            "drover_heartbeat_lag_seconds_count 1",
            "drover_rollout_generation 0",
            "drover_enrollments_total 1",
            "drover_enrollment_errors_total 1",
            "drover_rpc_errors_total{method=\"/drover.v1.Admin/GetAgent\",code=\"NotFound\"} 1",
            "drover_build_info{version=",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
