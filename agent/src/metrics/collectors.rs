//! Families computed on each scrape from shared state: jobs started (typed `unknown`, see
//! the module doc of [`super`]), GitLab API request counters, runner unit states, host
//! values that are absent until known, and logged errors.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::errors_layer::{ERRORS, WARNINGS};
use super::{LabelText, RunnerLabels, lock, unix_seconds};
use crate::health::Memory;
use drover_gitlab::stats::{ApiStats, NO_RESPONSE};

/// One runner unit as a scrape sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct UnitStatus {
    pub runner_name: String,
    /// Unit state as the fleet protocol names it (`starting`, `running`, `backoff`, ...).
    pub state: String,
    pub last_gitlab_contact: Option<SystemTime>,
}

/// Where the runner units are read on each scrape (the engine in standalone and fleet
/// mode; a fake in tests).
pub trait UnitSource: Send + Sync + std::fmt::Debug {
    fn units(&self) -> Vec<UnitStatus>;
}

/// Host values with no natural "absent" in a registered gauge.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct HostValues {
    pub docker_up: bool,
    pub memory: Option<Memory>,
    pub load1: Option<f64>,
    pub clock_skew_seconds: Option<f64>,
}

#[derive(Debug, Default)]
struct State {
    jobs_total: BTreeMap<RunnerLabels, u64>,
    api: Vec<Arc<ApiStats>>,
    units: Option<Arc<dyn UnitSource>>,
    host: Option<HostValues>,
}

/// The scrape-time collector; clones share state.
#[derive(Debug, Clone, Default)]
pub(super) struct Scraped {
    state: Arc<Mutex<State>>,
}

impl Scraped {
    pub fn job_started(&self, l: &RunnerLabels) {
        *lock(&self.state).jobs_total.entry(l.clone()).or_default() += 1;
    }

    pub fn add_api_stats(&self, stats: Arc<ApiStats>) {
        let mut st = lock(&self.state);
        if !st.api.iter().any(|s| Arc::ptr_eq(s, &stats)) {
            st.api.push(stats);
        }
    }

    pub fn set_unit_source(&self, source: Arc<dyn UnitSource>) {
        lock(&self.state).units = Some(source);
    }

    pub fn set_host_values(&self, v: HostValues) {
        lock(&self.state).host = Some(v);
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&str, LabelText)>, f64)],
) -> Result<(), std::fmt::Error> {
    let mut m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, v) in rows {
        ConstGauge::new(*v).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (jobs_total, api, units, host) = {
            let st = lock(&self.state);
            (
                st.jobs_total.clone(),
                st.api.clone(),
                st.units.clone(),
                st.host,
            )
        };

        {
            let mut m = encoder.encode_descriptor(
                "gitlab_runner_jobs_total",
                "Total number of handled jobs",
                None,
                MetricType::Unknown,
            )?;
            for (l, n) in &jobs_total {
                let labels = [
                    ("runner", &l.runner),
                    ("runner_name", &l.runner_name),
                    ("system_id", &l.system_id),
                ];
                m.encode_family(&labels)?.encode_gauge(&(*n as i64))?;
            }
        }

        // Summed over clients: (endpoint, status) → count.
        let mut statuses: BTreeMap<(&'static str, u16), u64> = BTreeMap::new();
        for s in &api {
            for stat in s.snapshot() {
                *statuses.entry((stat.endpoint, stat.status)).or_default() += stat.count;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "gitlab_runner_api_request_statuses",
                "The total number of api requests, partitioned by endpoint and status.",
                None,
                MetricType::Counter,
            )?;
            for ((endpoint, status), n) in statuses.iter().filter(|((_, s), _)| *s != NO_RESPONSE) {
                let labels = [
                    ("endpoint", endpoint.to_string()),
                    ("status", status.to_string()),
                ];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }
        {
            let mut m = encoder.encode_descriptor(
                "drover_agent_gitlab_request_failures",
                "GitLab API requests that got no HTTP answer (connection, TLS, timeout), by endpoint.",
                None,
                MetricType::Counter,
            )?;
            for ((endpoint, _), n) in statuses.iter().filter(|((_, s), _)| *s == NO_RESPONSE) {
                let labels = [("endpoint", endpoint.to_string())];
                ConstCounter::new(*n).encode(m.encode_family(&labels)?)?;
            }
        }

        {
            let mut m = encoder.encode_descriptor(
                "gitlab_runner_errors",
                "The number of caught errors.",
                None,
                MetricType::Counter,
            )?;
            for (level, n) in [
                ("error", ERRORS.load(Ordering::Relaxed)),
                ("warning", WARNINGS.load(Ordering::Relaxed)),
            ] {
                ConstCounter::new(n).encode(m.encode_family(&[("level", level)])?)?;
            }
        }

        if let Some(src) = units {
            let units = src.units();
            let mut by_state: BTreeMap<String, u32> = BTreeMap::new();
            for u in &units {
                *by_state.entry(u.state.clone()).or_default() += 1;
            }
            let rows: Vec<_> = by_state
                .into_iter()
                .map(|(s, n)| (vec![("state", LabelText::from(s))], f64::from(n)))
                .collect();
            gauge(
                &mut encoder,
                "drover_agent_runner_units",
                "Runner units by state.",
                &rows,
            )?;
            let rows: Vec<_> = units
                .iter()
                .filter_map(|u| {
                    let t = u.last_gitlab_contact?;
                    Some((
                        vec![("runner_name", LabelText::from(u.runner_name.as_str()))],
                        unix_seconds(t) as f64,
                    ))
                })
                .collect();
            gauge(
                &mut encoder,
                "drover_agent_runner_last_gitlab_contact_seconds",
                "Unix time of the runner's last answer from GitLab.",
                &rows,
            )?;
        }

        if let Some(h) = host {
            gauge(
                &mut encoder,
                "drover_agent_docker_up",
                "1 when the Docker engine answered the last ping, else 0.",
                &[(vec![], if h.docker_up { 1.0 } else { 0.0 })],
            )?;
            if let Some(m) = h.memory {
                gauge(
                    &mut encoder,
                    "drover_agent_host_memory_available_bytes",
                    "MemAvailable of the host.",
                    &[(vec![], m.available_bytes as f64)],
                )?;
                gauge(
                    &mut encoder,
                    "drover_agent_host_memory_total_bytes",
                    "MemTotal of the host.",
                    &[(vec![], m.total_bytes as f64)],
                )?;
            }
            if let Some(l) = h.load1 {
                gauge(
                    &mut encoder,
                    "drover_agent_host_load1",
                    "1-minute load average of the host.",
                    &[(vec![], l)],
                )?;
            }
            if let Some(s) = h.clock_skew_seconds {
                gauge(
                    &mut encoder,
                    "drover_agent_clock_skew_seconds",
                    "Local clock minus the controller's/GitLab's (Date header), median of recent answers.",
                    &[(vec![], s)],
                )?;
            }
        }
        Ok(())
    }
}
