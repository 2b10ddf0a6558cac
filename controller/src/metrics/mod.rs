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
//! - `drover_jobs_total{outcome,reason}`: jobs that ended on any agent, by outcome
//!   (`success`, `failed`, `canceled`, or a newer agent's state) and GitLab's failure reason
//!   (empty unless failed; at most [`MAX_REASONS`] distinct reasons, the rest `other`).
//! - `drover_job_duration_seconds`: histogram of how long finished jobs ran;
//!   `drover_job_queue_wait_seconds`: of how long started jobs waited in GitLab's queue
//!   (when GitLab said).
//!
//! - the image-delivery families (`drover_image_*`), listed in [`images`].
//!
//! - [`rpc`]: the tower layer that counts RPC errors.
//! - [`images`]: the image-delivery families.

pub mod images;
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
struct JobLabels {
    outcome: String,
    reason: String,
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
    jobs: Family<JobLabels, Counter>,
    job_duration: Histogram,
    queue_wait: Histogram,
    images: images::ImageMetrics,
    reasons: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Job updates already observed, so an agent that repeats an event (a resend after a
    /// reconnect) is counted once.
    observed: std::sync::Mutex<ObservedJobs>,
}

/// How many (agent, job, ended) keys are remembered to count each job once.
const OBSERVED_JOBS: usize = 20_000;

/// The newest [`OBSERVED_JOBS`] job updates observed: a set with its insertion order.
#[derive(Default)]
struct ObservedJobs {
    keys: std::collections::HashSet<(String, i64, bool)>,
    order: std::collections::VecDeque<(String, i64, bool)>,
}

impl ObservedJobs {
    /// True the first time `key` is seen (among the newest [`OBSERVED_JOBS`]).
    fn first(&mut self, key: (String, i64, bool)) -> bool {
        if self.keys.contains(&key) {
            return false;
        }
        if self.order.len() >= OBSERVED_JOBS
            && let Some(old) = self.order.pop_front()
        {
            self.keys.remove(&old);
        }
        self.keys.insert(key.clone());
        self.order.push_back(key);
        true
    }
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

/// Distinct failure reasons counted as labels; agents are untrusted, so any further reason
/// is counted as `other` instead of growing the series without bound.
pub const MAX_REASONS: usize = 64;

/// Job durations: seconds to hours.
const DURATION_BUCKETS: [f64; 12] = [
    5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0, 14400.0,
];

/// Queue waits: under a second to an hour.
const QUEUE_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0,
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
        let jobs = Family::<JobLabels, Counter>::default();
        registry.register(
            "drover_jobs",
            "Jobs that ended on the fleet's agents, by outcome and GitLab failure reason.",
            jobs.clone(),
        );
        let job_duration = Histogram::new(DURATION_BUCKETS);
        registry.register(
            "drover_job_duration_seconds",
            "How long finished jobs ran on their agent.",
            job_duration.clone(),
        );
        let queue_wait = Histogram::new(QUEUE_BUCKETS);
        registry.register(
            "drover_job_queue_wait_seconds",
            "How long started jobs waited in GitLab's queue (when GitLab said).",
            queue_wait.clone(),
        );
        let images = images::ImageMetrics::register(&mut registry);
        registry.register(
            "drover_build",
            "Drover controller build: constant 1 labeled by version and revision.",
            Info::new(BuildLabels {
                version: drover_runtime::version().into(),
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
                jobs,
                job_duration,
                queue_wait,
                images,
                reasons: Default::default(),
                observed: Default::default(),
            }),
        }
    }

    /// The image-delivery families.
    pub fn images(&self) -> &images::ImageMetrics {
        &self.inner.images
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

    /// A job row was updated: a start observes its queue wait, an end counts the job and
    /// observes its duration.
    /// An update seen before (the same agent, job and start or end) changes nothing.
    pub fn job(&self, j: &crate::store::JobRecord) {
        let key = (j.agent_id.clone(), j.job_id, j.finished());
        if !self
            .inner
            .observed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .first(key)
        {
            return;
        }
        if !j.finished() {
            if let Some(ms) = j.queue_wait_ms {
                self.inner.queue_wait.observe(ms as f64 / 1000.0);
            }
            return;
        }
        let reason = {
            let mut seen = self.inner.reasons.lock().unwrap_or_else(|p| p.into_inner());
            if j.failure_reason.is_empty() || seen.contains(&j.failure_reason) {
                j.failure_reason.clone()
            } else if seen.len() < MAX_REASONS {
                seen.insert(j.failure_reason.clone());
                j.failure_reason.clone()
            } else {
                "other".to_string()
            }
        };
        self.inner
            .jobs
            .get_or_create(&JobLabels {
                outcome: j.state.clone(),
                reason,
            })
            .inc();
        if let Some(ms) = j.duration_ms {
            self.inner.job_duration.observe(ms as f64 / 1000.0);
        }
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
        let deliveries = crate::store::blocking(health.store(), |s| s.list_deliveries(None)).await;
        match deliveries {
            Ok(rows) => self.inner.images.set_deliveries(&rows),
            Err(e) => tracing::warn!(error = %e, "metrics: image deliveries"),
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

    fn health(store: Arc<dyn crate::store::Store>) -> Health {
        Health::new(
            store,
            Arc::new(crate::health::SystemClock),
            crate::health::Thresholds::default(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn image_families_count_pushes_sent_bytes_and_deliveries_by_state() {
        use crate::images::DeliveryState;
        let store: Arc<dyn crate::store::Store> =
            Arc::new(crate::store::memory::MemoryStore::new());
        let image = crate::store::ImageRecord {
            id: "sha256:c".into(),
            reference: "app:1".into(),
            manifest_json: "{}".into(),
            created_at: time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
        };
        let delivery = |agent: &str, state: DeliveryState| crate::store::DeliveryRecord {
            agent_id: agent.into(),
            image_id: image.id.clone(),
            state: state.as_str().into(),
            ..Default::default()
        };
        store
            .add_push(
                &image,
                &[
                    delivery("a1", DeliveryState::Pending),
                    delivery("a2", DeliveryState::Fetching),
                    delivery("a3", DeliveryState::Delivered),
                    delivery("a4", DeliveryState::Delivered),
                ],
            )
            .unwrap();
        let h = health(store);
        let m = Metrics::new();
        let before = m.render(&h).await.unwrap();
        for line in [
            "drover_image_pushes_total 0",
            "drover_image_push_bytes_sent_total 0",
            "drover_image_deliveries_finished_total{state=\"failed\"} 0",
        ] {
            assert!(before.contains(line), "missing {line:?} in:\n{before}");
        }
        m.images().push(300);
        m.images().push(0);
        m.images().sent(65_536);
        m.images().sent(100);
        m.images().finished(DeliveryState::Delivered);
        m.images().finished(DeliveryState::Failed);
        // An open state is no end.
        m.images().finished(DeliveryState::Fetching);
        let text = m.render(&h).await.unwrap();
        for line in [
            "drover_image_pushes_total 2",
            "drover_image_push_stored_bytes_total 300",
            "drover_image_push_bytes_sent_total 65636",
            "drover_image_deliveries{state=\"pending\"} 1",
            "drover_image_deliveries{state=\"fetching\"} 1",
            "drover_image_deliveries{state=\"delivered\"} 2",
            "drover_image_deliveries{state=\"failed\"} 0",
            "drover_image_deliveries_finished_total{state=\"delivered\"} 1",
            "drover_image_deliveries_finished_total{state=\"failed\"} 1",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("drover_image_deliveries_finished_total{state=\"fetching\"}"),
            "{text}"
        );
    }

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
        let t = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let row = |job_id: i64, state: &str, reason: &str| crate::store::JobRecord {
            agent_id: "a1".into(),
            job_id,
            runner: "r".into(),
            state: state.into(),
            failure_reason: reason.into(),
            started_at: None,
            finished_at: None,
            duration_ms: Some(90_000),
            queue_wait_ms: Some(3_000),
            updated_at: t,
        };
        m.job(&row(1, "running", ""));
        m.job(&row(1, "success", ""));
        m.job(&row(2, "failed", "script_failure"));
        // An agent that repeats its events (a resend after a reconnect) counts once.
        m.job(&row(1, "running", ""));
        m.job(&row(1, "success", ""));
        m.job(&row(2, "failed", "script_failure"));
        for i in 0..MAX_REASONS + 3 {
            m.job(&row(10 + i as i64, "failed", &format!("reason_{i}")));
        }
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
            "drover_jobs_total{outcome=\"success\",reason=\"\"} 1",
            "drover_jobs_total{outcome=\"failed\",reason=\"script_failure\"} 1",
            "drover_jobs_total{outcome=\"failed\",reason=\"other\"} 4",
            "drover_job_duration_seconds_count 69",
            "drover_job_duration_seconds_bucket{le=\"120.0\"} 69",
            "drover_job_queue_wait_seconds_count 1",
            "drover_job_queue_wait_seconds_bucket{le=\"2.5\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
    }
}
