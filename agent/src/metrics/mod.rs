//! The agent's Prometheus metrics: gitlab-runner's names where they mean the same thing, so
//! existing dashboards and alerts keep working, plus Drover's own `drover_agent_*`.
//!
//! - [`Metrics`]: the registry and the handle the runner loop, the GitLab client and the
//!   health task report through.
//! - `collectors`: families computed on each scrape (`gitlab_runner_jobs_total`, API
//!   request statuses from [`drover_gitlab::stats::ApiStats`], runner unit states, errors).
//! - [`server`]: `GET /metrics` (OpenMetrics text) and `GET /healthz`.
//! - [`ErrorCountLayer`]: a `tracing` layer counting warnings and errors
//!   (`gitlab_runner_errors_total{level}`), as gitlab-runner's log hook does.
//!
//! Exported families (labels `runner` = short token, `runner_name` = the runner's name,
//! `system_id` as sent to GitLab — gitlab-runner's label sets):
//! - `gitlab_runner_jobs{runner,runner_name,system_id,state,stage,executor_stage}`: jobs now;
//!   one `idle` row per runner is always there (value 0), as in gitlab-runner. Drover does
//!   not track job stages: running jobs have `state="running"` and empty stages.
//! - `gitlab_runner_jobs_total{runner,runner_name,system_id}`: jobs started. Typed
//!   `unknown`: OpenMetrics cannot hold a counter family `gitlab_runner_jobs` next to the
//!   gauge of the same name; the sample name is gitlab-runner's.
//! - `gitlab_runner_failed_jobs_total{runner,runner_name,failure_reason}`,
//!   `gitlab_runner_job_duration_seconds{runner,runner_name,system_id}` (gitlab-runner's
//!   buckets), `gitlab_runner_concurrent`, `gitlab_runner_limit{runner,runner_name,system_id}`,
//!   `gitlab_runner_errors_total{level}`, `gitlab_runner_version_info{name,version,revision,os,architecture}`.
//! - `gitlab_runner_api_request_statuses_total{endpoint,status}`: summed over the agent's
//!   GitLab clients (no `runner` label: a client is shared by runners of one GitLab).
//!   Requests that got no HTTP answer are not in it (gitlab-runner leaves them out too);
//!   they are `drover_agent_gitlab_request_failures_total{endpoint}`.
//! - `drover_agent_runner_units{state}`, `drover_agent_runner_last_gitlab_contact_seconds{runner_name}`,
//!   `drover_agent_runner_token_expires_at_seconds{runner,runner_name}` (Unix time),
//!   `drover_agent_docker_up`, `drover_agent_host_disk_free_bytes{disk}` and
//!   `drover_agent_host_disk_total_bytes{disk}` (`disk` = `docker` | `builds`),
//!   `drover_agent_host_memory_available_bytes`, `drover_agent_host_memory_total_bytes`,
//!   `drover_agent_host_load1`, `drover_agent_clock_skew_seconds`, `drover_agent_build_info{version,revision}`.
//! - `drover_agent_image_*`: images the controller delivers, listed in [`images`].
//!
//! Invariant: a value that is not known is absent, never a made-up 0 (host values appear
//! after the first [`Metrics::set_host`]).

mod collectors;
mod errors_layer;
pub mod images;
mod label_text;
pub mod server;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::health::HostHealth;
use crate::runner::RunnerEvent;
use drover_gitlab::stats::ApiStats;
use drover_job::executor::JobOutcome;

pub use collectors::{UnitSource, UnitStatus};
pub use errors_layer::ErrorCountLayer;
pub use label_text::LabelText;
pub use server::serve;

/// gitlab-runner's job duration buckets, in seconds.
pub const JOB_DURATION_BUCKETS: [f64; 10] = [
    30.0, 60.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 10800.0, 18000.0, 36000.0,
];

/// The identity of one runner in metric labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
pub struct RunnerLabels {
    /// Short token (first 8 characters after `glrt-`), gitlab-runner's `runner` label.
    pub runner: LabelText,
    pub runner_name: LabelText,
    pub system_id: LabelText,
}

/// What [`Metrics::set_runners`] needs to know about one configured runner.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerInfo {
    pub labels: RunnerLabels,
    /// `limit` of the runner; `None` = unlimited (exported as 0, like gitlab-runner).
    pub limit: Option<u32>,
    pub token_expires_at: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct JobsLabels {
    runner: LabelText,
    runner_name: LabelText,
    system_id: LabelText,
    state: String,
    stage: String,
    executor_stage: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct FailedLabels {
    runner: LabelText,
    runner_name: LabelText,
    failure_reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TokenLabels {
    runner: LabelText,
    runner_name: LabelText,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DiskLabels {
    disk: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    name: String,
    version: String,
    revision: String,
    os: String,
    architecture: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    revision: String,
}

type HistogramFamily = Family<RunnerLabels, Histogram, fn() -> Histogram>;

fn duration_histogram() -> Histogram {
    Histogram::new(JOB_DURATION_BUCKETS)
}

struct Inner {
    registry: Registry,
    jobs: Family<JobsLabels, Gauge>,
    failed: Family<FailedLabels, Counter>,
    durations: HistogramFamily,
    concurrent: Gauge,
    limit: Family<RunnerLabels, Gauge>,
    token_expires: Family<TokenLabels, Gauge>,
    disk_free: Family<DiskLabels, Gauge>,
    disk_total: Family<DiskLabels, Gauge>,
    kept_bytes: Family<KindLabels, Gauge>,
    kept_budget: Family<KindLabels, Gauge>,
    kept_count: Family<KindLabels, Gauge>,
    gc_removed: Family<KindLabels, Counter>,
    gc_freed: Counter,
    images: images::ImageMetrics,
    scraped: collectors::Scraped,
    /// Runner name → labels, from the last [`Metrics::set_runners`].
    runners: Mutex<HashMap<String, RunnerLabels>>,
    /// Start of each running job by (runner name, job id), for durations from events.
    started: Mutex<HashMap<(String, i64), Instant>>,
}

/// The agent's metrics. Cheap to clone; every clone updates the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Git revision the binary was built from, when the build set `DROVER_REVISION`.
fn revision() -> String {
    option_env!("DROVER_REVISION").unwrap_or("").to_string()
}

impl Metrics {
    /// A registry with every family registered and build info set.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let jobs = Family::<JobsLabels, Gauge>::default();
        registry.register(
            "gitlab_runner_jobs",
            "The current number of running builds.",
            jobs.clone(),
        );
        let failed = Family::<FailedLabels, Counter>::default();
        registry.register(
            "gitlab_runner_failed_jobs",
            "Total number of failed jobs",
            failed.clone(),
        );
        let durations: HistogramFamily = Family::new_with_constructor(duration_histogram);
        registry.register(
            "gitlab_runner_job_duration_seconds",
            "Histogram of job durations",
            durations.clone(),
        );
        let concurrent = Gauge::default();
        registry.register(
            "gitlab_runner_concurrent",
            "The current value of concurrent setting",
            concurrent.clone(),
        );
        let limit = Family::<RunnerLabels, Gauge>::default();
        registry.register(
            "gitlab_runner_limit",
            "The current value of limit setting",
            limit.clone(),
        );
        registry.register(
            "gitlab_runner_version",
            "A metric with a constant '1' value labeled by different build stats fields.",
            Info::new(VersionLabels {
                name: "drover-agent".into(),
                version: drover_runtime::version().into(),
                revision: revision(),
                os: std::env::consts::OS.into(),
                architecture: std::env::consts::ARCH.into(),
            }),
        );
        registry.register(
            "drover_agent_build",
            "Drover agent build: constant 1 labeled by version and revision.",
            Info::new(BuildLabels {
                version: drover_runtime::version().into(),
                revision: revision(),
            }),
        );
        let token_expires = Family::<TokenLabels, Gauge>::default();
        registry.register(
            "drover_agent_runner_token_expires_at_seconds",
            "Unix time the runner's GitLab token expires (absent: no expiry known).",
            token_expires.clone(),
        );
        let disk_free = Family::<DiskLabels, Gauge>::default();
        registry.register(
            "drover_agent_host_disk_free_bytes",
            "Bytes free to unprivileged writers on the Docker root (disk=docker) and builds dir (disk=builds) filesystems.",
            disk_free.clone(),
        );
        let disk_total = Family::<DiskLabels, Gauge>::default();
        registry.register(
            "drover_agent_host_disk_total_bytes",
            "Size of the Docker root (disk=docker) and builds dir (disk=builds) filesystems.",
            disk_total.clone(),
        );
        let kept_bytes = Family::<KindLabels, Gauge>::default();
        registry.register(
            "drover_agent_disk_kept_bytes",
            "Bytes this agent keeps between jobs: builds volumes (kind=volumes), pulled images (kind=images), the local cache dir (kind=cache), as of the last collection.",
            kept_bytes.clone(),
        );
        let kept_budget = Family::<KindLabels, Gauge>::default();
        registry.register(
            "drover_agent_disk_budget_bytes",
            "The size bound of each kind (volumes and images: [runners.drover_gc]; cache: per-runner bound times runners).",
            kept_budget.clone(),
        );
        let kept_count = Family::<KindLabels, Gauge>::default();
        registry.register(
            "drover_agent_disk_kept_objects",
            "Builds volumes (kind=volumes) and images (kind=images) counted against the budget.",
            kept_count.clone(),
        );
        let gc_removed = Family::<KindLabels, Counter>::default();
        registry.register(
            "drover_agent_disk_gc_removed",
            "Volumes (kind=volume) and images (kind=image) the disk collector removed.",
            gc_removed.clone(),
        );
        let gc_freed = Counter::default();
        registry.register(
            "drover_agent_disk_gc_freed_bytes",
            "Bytes the disk collector freed.",
            gc_freed.clone(),
        );
        let images = images::ImageMetrics::register(&mut registry);
        let scraped = collectors::Scraped::default();
        registry.register_collector(Box::new(scraped.clone()));
        Metrics {
            inner: Arc::new(Inner {
                registry,
                jobs,
                failed,
                durations,
                concurrent,
                limit,
                token_expires,
                disk_free,
                disk_total,
                kept_bytes,
                kept_budget,
                kept_count,
                gc_removed,
                gc_freed,
                images,
                scraped,
                runners: Mutex::new(HashMap::new()),
                started: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The image-delivery families.
    pub fn images(&self) -> &images::ImageMetrics {
        &self.inner.images
    }

    /// The registry as OpenMetrics text (what `GET /metrics` answers).
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.inner.registry)?;
        Ok(out)
    }

    /// The configured runners (after every start and reload): labels used by the job
    /// methods, `limit` and token expiry. Runners no longer listed lose their `limit`,
    /// token and `idle` rows; their counters stay (counters never go back).
    pub fn set_runners(&self, runners: &[RunnerInfo]) {
        let mut map = lock(&self.inner.runners);
        for old in map.values() {
            self.inner.limit.remove(old);
            self.inner.token_expires.remove(&token_labels(old));
            self.inner.jobs.remove(&jobs_labels(old, "idle", "idle"));
        }
        map.clear();
        for r in runners {
            let l = &r.labels;
            self.inner
                .limit
                .get_or_create(l)
                .set(i64::from(r.limit.unwrap_or(0)));
            if let Some(t) = r.token_expires_at {
                self.inner
                    .token_expires
                    .get_or_create(&token_labels(l))
                    .set(unix_seconds(t));
            }
            self.inner
                .jobs
                .get_or_create(&jobs_labels(l, "idle", "idle"))
                .set(0);
            map.insert(l.runner_name.0.clone(), l.clone());
        }
    }

    /// `concurrent` of the configuration.
    pub fn set_concurrent(&self, n: u32) {
        self.inner.concurrent.set(i64::from(n));
    }

    /// A job of `runner_name` started.
    pub fn job_started(&self, runner_name: &str) {
        let l = self.labels(runner_name);
        self.inner
            .jobs
            .get_or_create(&jobs_labels(&l, "running", ""))
            .inc();
        self.inner.scraped.job_started(&l);
    }

    /// A job of `runner_name` ended after `duration`.
    pub fn job_finished(&self, runner_name: &str, outcome: &JobOutcome, duration: Duration) {
        let l = self.labels(runner_name);
        self.inner
            .jobs
            .get_or_create(&jobs_labels(&l, "running", ""))
            .dec();
        self.inner
            .durations
            .get_or_create(&l)
            .observe(duration.as_secs_f64());
        if let JobOutcome::Failed { reason, .. } = outcome {
            self.inner
                .failed
                .get_or_create(&FailedLabels {
                    runner: l.runner.clone(),
                    runner_name: l.runner_name.clone(),
                    failure_reason: reason.as_str().to_string(),
                })
                .inc();
        }
    }

    /// Feeds a runner event: job start and end (the duration is measured between the two).
    pub fn observe_event(&self, event: &RunnerEvent) {
        match event {
            RunnerEvent::JobStarted { runner, job_id, .. } => {
                lock(&self.inner.started).insert((runner.clone(), *job_id), Instant::now());
                self.job_started(runner);
            }
            RunnerEvent::JobFinished {
                runner,
                job_id,
                outcome,
                ..
            } => {
                let began = lock(&self.inner.started).remove(&(runner.clone(), *job_id));
                let duration = began.map(|t| t.elapsed()).unwrap_or_default();
                self.job_finished(runner, outcome, duration);
            }
            _ => {}
        }
    }

    /// Exports the request counters of one GitLab client (each client once).
    pub fn add_api_stats(&self, stats: Arc<ApiStats>) {
        self.inner.scraped.add_api_stats(stats);
    }

    /// Where runner unit states and last GitLab contacts are read on each scrape.
    pub fn set_unit_source(&self, source: Arc<dyn UnitSource>) {
        self.inner.scraped.set_unit_source(source);
    }

    /// The latest host snapshot.
    pub fn set_host(&self, h: &HostHealth) {
        let i = &self.inner;
        for (name, disk) in [("docker", h.docker_disk), ("builds", h.builds_disk)] {
            let key = DiskLabels { disk: name.into() };
            match disk {
                Some(d) => {
                    i.disk_free.get_or_create(&key).set(clamp(d.free_bytes));
                    i.disk_total.get_or_create(&key).set(clamp(d.total_bytes));
                }
                None => {
                    i.disk_free.remove(&key);
                    i.disk_total.remove(&key);
                }
            }
        }
        i.scraped.set_host_values(collectors::HostValues {
            docker_up: h.docker.is_some(),
            memory: h.memory,
            load1: h.load.map(|l| l.one),
            clock_skew_seconds: h.clock_skew_seconds,
        });
    }

    /// The budgets after a collection, and what it removed.
    pub fn set_disk(&self, r: &crate::disk::DiskReport, gc: &drover_job::executor::GcReport) {
        let i = &self.inner;
        let k = |s: &str| KindLabels { kind: s.into() };
        for (name, used, max, count) in [
            (
                "volumes",
                r.volumes.bytes,
                r.volumes.max_bytes,
                Some(r.volumes.count),
            ),
            (
                "images",
                r.images.bytes,
                r.images.max_bytes,
                Some(r.images.count),
            ),
            ("cache", r.cache.bytes, r.cache.max_bytes(), None),
        ] {
            i.kept_bytes.get_or_create(&k(name)).set(clamp(used));
            i.kept_budget.get_or_create(&k(name)).set(clamp(max));
            if let Some(c) = count {
                i.kept_count.get_or_create(&k(name)).set(clamp(c));
            }
        }
        for x in &gc.removed {
            i.gc_removed.get_or_create(&k(x.kind.as_str())).inc();
        }
        i.gc_freed.inc_by(gc.freed_bytes);
    }

    fn labels(&self, runner_name: &str) -> RunnerLabels {
        lock(&self.inner.runners)
            .get(runner_name)
            .cloned()
            .unwrap_or_else(|| RunnerLabels {
                runner: LabelText::default(),
                runner_name: runner_name.into(),
                system_id: LabelText::default(),
            })
    }
}

fn jobs_labels(l: &RunnerLabels, state: &str, stage: &str) -> JobsLabels {
    JobsLabels {
        runner: l.runner.clone(),
        runner_name: l.runner_name.clone(),
        system_id: l.system_id.clone(),
        state: state.into(),
        stage: stage.into(),
        executor_stage: stage.into(),
    }
}

fn token_labels(l: &RunnerLabels) -> TokenLabels {
    TokenLabels {
        runner: l.runner.clone(),
        runner_name: l.runner_name.clone(),
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch (negative before it).
pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => clamp(d.as_secs()),
        Err(e) => -clamp(e.duration().as_secs()),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests;
