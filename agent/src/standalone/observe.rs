//! Standalone mode's metrics: which address to serve them on (`--metrics-listen`, else the
//! file's top-level `listen_address`, as gitlab-runner), and what feeds them — runner events
//! (jobs), the engine's runner stats (unit states), the GitLab clients' request counters and
//! a periodic host probe.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use drover_proto::spec::Config;
use secrecy::SecretString;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::disk::DiskKeeper;
use crate::engine::Engine;
use crate::health::{self, ClockSkew, DockerStatus, HostProbe, ProcProbe};
use crate::metrics::{Metrics, RunnerInfo, RunnerLabels, UnitSource, UnitStatus};
use crate::runner::{RunnerEvent, RunnerState, RunnerStats, short_token};
use crate::shutdown::Tasks;
use drover_job::executor::DockerExecutor;

/// How often the host is probed for the metrics.
pub const HOST_PROBE_INTERVAL: Duration = Duration::from_secs(15);

/// The address to serve metrics on: `flag` if given, else `listen_address` of the file
/// (`host:port`, `:port` = every interface, `localhost:port`); `None` = off.
pub fn metrics_address(
    flag: Option<SocketAddr>,
    listen_address: Option<&str>,
) -> anyhow::Result<Option<SocketAddr>> {
    if flag.is_some() {
        return Ok(flag);
    }
    let Some(raw) = listen_address.map(str::trim).filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let bad = || format!("listen_address = {raw:?}: expected host:port, :port or [v6]:port");
    let (host, port) = raw.rsplit_once(':').with_context(bad)?;
    let port: u16 = port.parse().with_context(bad)?;
    let ip: IpAddr = match host.trim_start_matches('[').trim_end_matches(']') {
        "" => Ipv4Addr::UNSPECIFIED.into(),
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        h => h.parse().with_context(bad)?,
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

/// Binds `addr` and serves `metrics` on `tasks` (task `metrics server`) until `stop`; logs
/// `metrics listening on ADDR` with the bound address (tests bind port 0 and read it from
/// the log).
pub async fn start_server(
    tasks: &Tasks,
    addr: SocketAddr,
    metrics: Metrics,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind metrics address {addr}"))?;
    let bound = listener.local_addr().context("metrics listener address")?;
    tracing::info!("metrics listening on {bound}");
    tasks.spawn("metrics server", async move {
        if let Err(e) = crate::metrics::serve(listener, metrics, stop).await {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok(())
}

/// The metric identity of each runner of `config`, named as the engine names them.
pub fn runner_infos(config: &Config, system_id: &str) -> Vec<RunnerInfo> {
    let mut seen: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for (i, rc) in config.runners.iter().enumerate() {
        let mut name = if rc.name.is_empty() {
            format!("runners[{i}]")
        } else {
            rc.name.clone()
        };
        if seen.contains(&name) {
            name = format!("{name}#{i}");
        }
        seen.push(name.clone());
        let token = rc
            .token
            .clone()
            .unwrap_or_else(|| SecretString::from(String::new()));
        out.push(RunnerInfo {
            labels: RunnerLabels {
                runner: short_token(&token).into(),
                runner_name: name.into(),
                system_id: system_id.into(),
            },
            limit: rc.limit.filter(|l| *l > 0),
            token_expires_at: rc.token_expires_at.as_deref().and_then(parse_expiry),
        });
    }
    out
}

/// gitlab-runner's `token_expires_at` (RFC 3339); its "never" (`0001-01-01...`) is `None`.
fn parse_expiry(s: &str) -> Option<SystemTime> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    (t.year() > 1).then(|| t.into())
}

/// What the standalone loop keeps to update metrics after each (re)load.
#[derive(Debug)]
pub struct Observed {
    pub metrics: Metrics,
    units: Arc<EngineUnits>,
    system_id: String,
    disk: Option<DiskKeeper>,
}

impl Observed {
    /// Metrics reading runner units from an [`EngineUnits`] (filled by [`Observed::applied`]).
    pub fn new(metrics: Metrics, system_id: String) -> Self {
        let units = Arc::new(EngineUnits::default());
        metrics.set_unit_source(units.clone());
        Observed {
            metrics,
            units,
            system_id,
            disk: None,
        }
    }

    /// The disk keeper whose budget follows each applied configuration.
    pub fn with_disk(mut self, keeper: DiskKeeper) -> Self {
        self.disk = Some(keeper);
        self
    }

    /// After `engine` applied `config`: runner labels, `concurrent`, the unit list.
    pub fn applied(&self, engine: &Engine, config: &Config) {
        self.metrics
            .set_runners(&runner_infos(config, &self.system_id));
        self.metrics
            .set_concurrent(config.concurrent.unwrap_or(1).max(1));
        self.units.refresh(engine);
        if let Some(k) = &self.disk {
            k.set_runners(&config.runners);
        }
    }
}

/// The engine's current runners, read on each scrape.
#[derive(Debug, Default)]
pub struct EngineUnits {
    units: Mutex<Vec<(String, Arc<RunnerStats>)>>,
}

impl EngineUnits {
    /// Takes the runner list of `engine` (after every apply).
    pub fn refresh(&self, engine: &Engine) {
        *self.units.lock().unwrap_or_else(|p| p.into_inner()) = engine.stats();
    }
}

impl UnitSource for EngineUnits {
    fn units(&self) -> Vec<UnitStatus> {
        let units = self.units.lock().unwrap_or_else(|p| p.into_inner());
        units
            .iter()
            .map(|(name, stats)| {
                let s = stats.snapshot();
                UnitStatus {
                    runner_name: name.clone(),
                    state: unit_state(&s.state).to_string(),
                    last_gitlab_contact: s.last_contact,
                }
            })
            .collect()
    }
}

/// A runner loop's state in the fleet protocol's words.
pub fn unit_state(s: &RunnerState) -> &'static str {
    match s {
        RunnerState::Starting => "starting",
        RunnerState::Running => "running",
        RunnerState::Draining => "draining",
        RunnerState::NeedsRegistration => "token-invalid",
        RunnerState::Stopped => "stopped",
        RunnerState::Failed(_) => "failed",
    }
}

/// Feeds runner events into `metrics` on `tasks` (task `event feed`) until the channel
/// closes or `stop`.
pub fn spawn_event_feed(
    tasks: &Tasks,
    mut rx: mpsc::UnboundedReceiver<RunnerEvent>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    tasks.spawn("event feed", async move {
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(e) => metrics.observe_event(&e),
                    None => return,
                },
                _ = stop.cancelled() => return,
            }
        }
    });
}

/// Probes Docker and the host every [`HOST_PROBE_INTERVAL`] on `tasks` (task `host probe`)
/// until `stop`. `state_dir` (caches, in-flight records, archives in transit) is reported as
/// the `builds` disk.
pub fn spawn_host_probe(
    tasks: &Tasks,
    docker: Arc<DockerExecutor>,
    metrics: Metrics,
    state_dir: PathBuf,
    disk: Option<DiskKeeper>,
    stop: CancellationToken,
) {
    tasks.spawn("host probe", async move {
        let probe = ProcProbe::default();
        let skew = ClockSkew::default();
        let thresholds = health::Thresholds::default();
        let mut last_kinds = Vec::new();
        loop {
            let mut h = snapshot(&docker, &probe, &skew, &state_dir).await;
            // Disk low: collect first, then report what was freed and what remains.
            if let Some(k) = &disk
                && is_disk_low(&health::degraded_reasons(&h, &thresholds))
                && k.on_disk_low().await.is_some()
            {
                h = snapshot(&docker, &probe, &skew, &state_dir).await;
            }
            h.disk_budgets = disk
                .as_ref()
                .and_then(DiskKeeper::report)
                .map(|r| health::DiskBudgets::from_report(&r));
            metrics.set_host(&h);
            let reasons = health::degraded_reasons(&h, &thresholds);
            match degraded_change(&mut last_kinds, &reasons) {
                Some(DegradedChange::Degraded(why)) => tracing::warn!("host degraded: {why}"),
                Some(DegradedChange::Healthy) => tracing::info!("host healthy again"),
                None => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(HOST_PROBE_INTERVAL) => {}
            }
        }
    });
}

/// Whether one of `reasons` is a low disk.
pub fn is_disk_low(reasons: &[String]) -> bool {
    reasons.iter().any(|r| r.starts_with("disk low"))
}

/// What changed in the host's degraded reasons since the last snapshot.
#[derive(Debug, Clone, PartialEq)]
enum DegradedChange {
    /// Degraded now, or for other reasons than before: every reason, `; `-joined.
    Degraded(String),
    /// No reason left.
    Healthy,
}

/// Compares `reasons` with the kinds of the last ones (the text before the first `:`, digit
/// or sign, so changing figures like `3 MiB free` or `-90s` do not repeat the log line) and
/// keeps the new kinds.
fn degraded_change(last_kinds: &mut Vec<String>, reasons: &[String]) -> Option<DegradedChange> {
    let kinds: Vec<String> = reasons
        .iter()
        .map(|r| {
            r.split(|c: char| c == ':' || c == '+' || c == '-' || c.is_ascii_digit())
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    if kinds == *last_kinds {
        return None;
    }
    *last_kinds = kinds;
    Some(if reasons.is_empty() {
        DegradedChange::Healthy
    } else {
        DegradedChange::Degraded(reasons.join("; "))
    })
}

async fn snapshot(
    docker: &DockerExecutor,
    probe: &dyn HostProbe,
    skew: &ClockSkew,
    state_dir: &Path,
) -> health::HostHealth {
    let status = match docker.ping().await {
        Ok(i) => Some(DockerStatus {
            version: i.version,
            root_dir: i.root_dir,
        }),
        Err(e) => {
            tracing::warn!(error = %e, "docker engine unreachable");
            None
        }
    };
    let opts = health::CollectOptions {
        builds_dir: Some(state_dir.to_path_buf()),
    };
    health::collect(probe, status, skew, &opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_change_logs_each_new_kind_once_and_the_recovery() {
        let mut last = Vec::new();
        assert_eq!(degraded_change(&mut last, &[]), None);
        let low = |free: &str| vec![format!("disk low on builds dir: {free} free of 8 MiB")];
        assert_eq!(
            degraded_change(&mut last, &low("1 MiB")),
            Some(DegradedChange::Degraded(
                "disk low on builds dir: 1 MiB free of 8 MiB".into()
            ))
        );
        // Same reason, other figures: nothing new.
        assert_eq!(degraded_change(&mut last, &low("0 MiB")), None);
        let two = vec![low("0 MiB")[0].clone(), "docker engine unreachable".into()];
        assert_eq!(
            degraded_change(&mut last, &two),
            Some(DegradedChange::Degraded(
                "disk low on builds dir: 0 MiB free of 8 MiB; docker engine unreachable".into()
            ))
        );
        assert_eq!(
            degraded_change(&mut last, &[]),
            Some(DegradedChange::Healthy)
        );
        assert_eq!(degraded_change(&mut last, &[]), None);
        let skew = |s: &str| vec![format!("clock skewed by {s}s")];
        assert!(degraded_change(&mut last, &skew("-90")).is_some());
        assert_eq!(degraded_change(&mut last, &skew("-95")), None);
    }

    #[test]
    fn flag_wins_then_listen_address_forms() {
        let flag: SocketAddr = "127.0.0.1:9999".parse().unwrap();
        assert_eq!(
            metrics_address(Some(flag), Some(":9252")).unwrap(),
            Some(flag)
        );
        assert_eq!(metrics_address(None, None).unwrap(), None);
        assert_eq!(metrics_address(None, Some("")).unwrap(), None);
        assert_eq!(
            metrics_address(None, Some(":9252")).unwrap(),
            Some("0.0.0.0:9252".parse().unwrap())
        );
        assert_eq!(
            metrics_address(None, Some("localhost:9252")).unwrap(),
            Some("127.0.0.1:9252".parse().unwrap())
        );
        assert_eq!(
            metrics_address(None, Some("[::]:9252")).unwrap(),
            Some("[::]:9252".parse().unwrap())
        );
        let e = metrics_address(None, Some("gitlab:port")).unwrap_err();
        assert!(
            format!("{e:#}").contains("listen_address = \"gitlab:port\""),
            "{e:#}"
        );
        assert!(metrics_address(None, Some("9252")).is_err());
    }

    #[test]
    fn runner_infos_name_runners_like_the_engine() {
        let cfg: Config = toml::from_str(
            r#"
            [[runners]]
              name = "a"
              url = "https://gitlab.example.com"
              token = "glrt-abcdefghijk"
              executor = "docker"
              limit = 2
              token_expires_at = "2030-01-02T03:04:05Z"
            [[runners]]
              name = "a"
              url = "https://gitlab.example.com"
              token = "glrt-zzzzzzzzzz"
              executor = "docker"
              token_expires_at = "0001-01-01T00:00:00Z"
            [[runners]]
              url = "https://gitlab.example.com"
              token = "glrt-yyyyyyyyyy"
              executor = "docker"
            "#,
        )
        .unwrap();
        let infos = runner_infos(&cfg, "s_1");
        let names: Vec<_> = infos
            .iter()
            .map(|i| i.labels.runner_name.as_str())
            .collect();
        assert_eq!(names, ["a", "a#1", "runners[2]"]);
        assert_eq!(infos[0].labels.runner.as_str(), "abcdefgh");
        assert_eq!(infos[0].limit, Some(2));
        assert_eq!(
            infos[0].token_expires_at.map(crate::metrics::unix_seconds),
            Some(1893553445)
        );
        assert_eq!(infos[1].token_expires_at, None);
        assert_eq!(infos[2].limit, None);
    }
}
