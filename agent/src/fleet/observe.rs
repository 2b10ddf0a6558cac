//! What fleet mode shows outside the control stream: Prometheus metrics (`--metrics-listen`,
//! the same registry and names as standalone mode, fed by the supervisor), the host health
//! snapshot heartbeats carry, and the systemd lifecycle (`READY=1`, a watchdog gated on the
//! supervisor's loop, `STOPPING=1`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::report::Report;
use crate::disk::DiskKeeper;
use crate::health::{self, ClockSkew, DockerStatus, HostHealth, HostProbe};
use crate::metrics::{Metrics, UnitSource, UnitStatus};
use crate::shutdown::Tasks;
use crate::systemd::{Heartbeat, Notifier};

/// How often the host is probed (memory, load, disks) for heartbeats and metrics.
pub const HOST_PROBE_INTERVAL: Duration = Duration::from_secs(10);

/// The supervisor's units as a scrape sees them: read from the latest [`Report`].
#[derive(Debug)]
pub struct ReportUnits {
    report: watch::Receiver<Report>,
}

impl ReportUnits {
    pub fn new(report: watch::Receiver<Report>) -> Self {
        ReportUnits { report }
    }
}

impl UnitSource for ReportUnits {
    fn units(&self) -> Vec<UnitStatus> {
        self.report
            .borrow()
            .units
            .iter()
            .map(|u| UnitStatus {
                runner_name: u.name.clone(),
                state: u.state.clone(),
                last_gitlab_contact: u.last_gitlab_contact.as_deref().and_then(parse_rfc3339),
            })
            .collect()
    }
}

fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(SystemTime::from)
}

/// One host snapshot: the Docker status as the supervisor's last ping saw it (from
/// `report`), memory, load and disks through `probe`, the clock skew from `skew`.
pub fn host_snapshot(
    report: &Report,
    probe: &dyn HostProbe,
    skew: &ClockSkew,
    builds_dir: &std::path::Path,
) -> HostHealth {
    let docker = match (report.docker_reachable, &report.docker_version) {
        (true, Some(version)) => Some(DockerStatus {
            version: version.clone(),
            root_dir: report
                .docker_root_dir
                .as_deref()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/lib/docker")),
        }),
        _ => None,
    };
    health::collect(
        probe,
        docker,
        skew,
        &health::CollectOptions {
            builds_dir: Some(builds_dir.to_path_buf()),
        },
    )
}

/// The periodic host probe: each snapshot goes to `out` (heartbeats) and, when given, to
/// `metrics`.
pub struct HostProbeTask {
    pub probe: Arc<dyn HostProbe>,
    /// The supervisor's report (Docker status).
    pub report: watch::Receiver<Report>,
    pub skew: Arc<ClockSkew>,
    /// The filesystem reported as the builds disk.
    pub builds_dir: PathBuf,
    pub out: watch::Sender<HostHealth>,
    pub metrics: Option<Metrics>,
    pub every: Duration,
    /// Collects when a disk is low, and gives the budgets heartbeats carry.
    pub disk: Option<DiskKeeper>,
}

impl HostProbeTask {
    /// Probes at once, then every `every` and whenever the Docker status in the report
    /// changes (so the Docker disk follows the engine coming up), until `stop`; on `tasks`
    /// (task `host probe`).
    pub fn spawn(mut self, tasks: &Tasks, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tasks.spawn("host probe", async move {
            let docker_key = |r: &Report| {
                (
                    r.docker_reachable,
                    r.docker_version.clone(),
                    r.docker_root_dir.clone(),
                )
            };
            loop {
                let r = self.report.borrow_and_update().clone();
                let probed = docker_key(&r);
                let mut snap = host_snapshot(&r, self.probe.as_ref(), &self.skew, &self.builds_dir);
                // Disk low: collect first, then report what was freed and what remains.
                if let Some(k) = &self.disk
                    && crate::standalone::observe::is_disk_low(&crate::health::degraded_reasons(
                        &snap,
                        &crate::health::Thresholds::default(),
                    ))
                    && k.on_disk_low().await.is_some()
                {
                    snap = host_snapshot(&r, self.probe.as_ref(), &self.skew, &self.builds_dir);
                }
                snap.disk_budgets = self
                    .disk
                    .as_ref()
                    .and_then(DiskKeeper::report)
                    .map(|d| crate::health::DiskBudgets::from_report(&d));
                for e in &snap.errors {
                    tracing::debug!(error = %e, "host probe");
                }
                if let Some(m) = &self.metrics {
                    m.set_host(&snap);
                }
                self.out.send_replace(snap);
                let next = tokio::time::sleep(self.every);
                tokio::pin!(next);
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = &mut next => break,
                        changed = self.report.changed() => {
                            if changed.is_err() {
                                return;
                            }
                            if docker_key(&self.report.borrow_and_update()) != probed {
                                break;
                            }
                        }
                    }
                }
            }
        })
    }
}

/// The systemd side of the agent's life.
#[derive(Debug, Clone)]
pub struct Lifecycle {
    notifier: Notifier,
}

impl Lifecycle {
    pub fn new(notifier: Notifier) -> Self {
        Lifecycle { notifier }
    }

    /// `READY=1` plus a `STATUS=` line saying what runs.
    pub fn ready(&self, report: &Report) {
        let status = format!(
            "generation {}, {} runner unit(s)",
            report.applied_generation,
            report.units.len()
        );
        if let Err(e) = self.notifier.notify(&format!("READY=1\nSTATUS={status}")) {
            tracing::warn!(error = %e, "sd_notify READY");
        }
    }

    /// Pings `WATCHDOG=1` every `interval / 2` while `liveness` beat within `interval`
    /// (the supervisor's loop beats it on every turn, at least once per tick).
    pub fn spawn_watchdog(
        &self,
        tasks: &Tasks,
        interval: Duration,
        liveness: Heartbeat,
        stop: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.notifier
            .spawn_watchdog(tasks, interval, move || liveness.is_fresh(interval), stop)
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        if let Err(e) = self.notifier.stopping() {
            tracing::warn!(error = %e, "sd_notify STOPPING");
        }
    }

    /// `RELOADING=1`: the agent restarts on an upgraded binary in the same unit.
    pub fn reloading(&self) {
        if let Err(e) = self.notifier.reloading() {
            tracing::warn!(error = %e, "sd_notify RELOADING");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::report::UnitReport;
    use crate::health::{DiskSpace, FakeProbe, Memory};

    /// The next datagram within `within` (virtual time), if any.
    async fn recv(socket: &tokio::net::UnixDatagram, within: Duration) -> Option<String> {
        let mut buf = [0u8; 512];
        match tokio::time::timeout(within, socket.recv(&mut buf)).await {
            Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
            _ => None,
        }
    }

    // Paused time: the watchdog's ticks and the liveness heartbeat run on tokio's clock, so
    // "no ping for a second" is ten of its ticks, however slow the machine.
    #[tokio::test(start_paused = true)]
    async fn lifecycle_sends_ready_watchdog_while_alive_and_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = tokio::net::UnixDatagram::bind(&path).unwrap();
        let wait = Duration::from_secs(5);
        let life = Lifecycle::new(Notifier::for_socket(path.to_str().unwrap()).unwrap());
        let report = Report {
            applied_generation: 3,
            units: vec![UnitReport::default()],
            ..Report::default()
        };
        life.ready(&report);
        let ready = recv(&socket, wait).await.unwrap();
        assert!(ready.starts_with("READY=1\n"), "{ready}");
        assert!(ready.contains("generation 3, 1 runner unit(s)"), "{ready}");

        let liveness = Heartbeat::new();
        let stop = CancellationToken::new();
        let task = life.spawn_watchdog(
            &Tasks::new(),
            Duration::from_millis(200),
            liveness.clone(),
            stop.clone(),
        );
        // Alive: pings arrive.
        for _ in 0..3 {
            liveness.beat();
            assert_eq!(recv(&socket, wait).await.as_deref(), Some("WATCHDOG=1"));
        }
        // The loop stops beating: pings until the last beat is too old, then a status line
        // says why, then no more pings.
        let mut before = Vec::new();
        loop {
            let m = recv(&socket, wait).await.expect("a status line");
            if m.starts_with("STATUS=unhealthy") {
                break;
            }
            before.push(m);
        }
        assert!(before.iter().all(|m| m == "WATCHDOG=1"), "{before:?}");
        assert_eq!(
            recv(&socket, Duration::from_secs(1)).await,
            None,
            "no ping while the loop is stuck"
        );
        stop.cancel();
        task.await.unwrap();
        life.stopping();
        assert_eq!(recv(&socket, wait).await.as_deref(), Some("STOPPING=1"));
        life.reloading();
        assert_eq!(recv(&socket, wait).await.as_deref(), Some("RELOADING=1"));
    }

    #[test]
    fn host_snapshot_takes_docker_from_the_report_and_probes_the_rest() {
        let probe = FakeProbe::default()
            .with_memory(Memory {
                total_bytes: 8 << 30,
                available_bytes: 3 << 30,
            })
            .with_disk(
                "/srv/docker",
                DiskSpace {
                    total_bytes: 100,
                    free_bytes: 60,
                },
            )
            .with_disk(
                "/var/lib/drover-agent",
                DiskSpace {
                    total_bytes: 50,
                    free_bytes: 5,
                },
            );
        let skew = ClockSkew::default();
        skew.observe(
            SystemTime::UNIX_EPOCH + Duration::from_secs(1002),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1000),
        );
        let report = Report {
            docker_reachable: true,
            docker_version: Some("20.10.24".into()),
            docker_root_dir: Some("/srv/docker".into()),
            ..Report::default()
        };
        let h = host_snapshot(
            &report,
            &probe,
            &skew,
            std::path::Path::new("/var/lib/drover-agent"),
        );
        assert_eq!(
            h.docker.as_ref().map(|d| d.version.as_str()),
            Some("20.10.24")
        );
        assert_eq!(h.docker_disk.map(|d| d.free_bytes), Some(60));
        assert_eq!(h.builds_disk.map(|d| d.free_bytes), Some(5));
        assert_eq!(h.memory.map(|m| m.available_bytes), Some(3 << 30));
        assert_eq!(h.clock_skew_seconds, Some(2.0));
        // Docker down: no docker disk, no version.
        let down = host_snapshot(
            &Report::default(),
            &probe,
            &skew,
            std::path::Path::new("/var/lib/drover-agent"),
        );
        assert!(down.docker.is_none() && down.docker_disk.is_none());
    }

    #[tokio::test]
    async fn probe_follows_docker_coming_up_without_waiting_for_the_interval() {
        let probe = FakeProbe::default().with_disk(
            "/var/lib/docker",
            DiskSpace {
                total_bytes: 100,
                free_bytes: 10,
            },
        );
        let (report_tx, report_rx) = watch::channel(Report::default());
        let (out_tx, mut out_rx) = watch::channel(HostHealth::default());
        let stop = CancellationToken::new();
        let task = HostProbeTask {
            probe: Arc::new(probe),
            report: report_rx,
            skew: Arc::new(ClockSkew::default()),
            builds_dir: "/nowhere".into(),
            out: out_tx,
            metrics: None,
            every: Duration::from_secs(3600),
            disk: None,
        }
        .spawn(&Tasks::new(), stop.clone());
        out_rx.changed().await.unwrap();
        assert!(out_rx.borrow_and_update().docker_disk.is_none());
        report_tx.send_replace(Report {
            docker_reachable: true,
            docker_version: Some("20.10.24".into()),
            docker_root_dir: Some("/var/lib/docker".into()),
            ..Report::default()
        });
        tokio::time::timeout(Duration::from_secs(5), out_rx.changed())
            .await
            .expect("a new snapshot at once")
            .unwrap();
        assert_eq!(out_rx.borrow().docker_disk.map(|d| d.free_bytes), Some(10));
        stop.cancel();
        task.await.unwrap();
    }
}
