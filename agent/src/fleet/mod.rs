//! Fleet mode: an enrolled agent runs the runners its controller pushes, as units.
//!
//! - [`desired`]: validation of pushed generations and the persisted `applied.json`.
//! - [`supervisor`]: units on the shared runner engine; apply, restart policy, watchdog,
//!   token rotation, IP watch, reports.
//! - [`report`]: unit reports for heartbeats and `status.json` (`drover-agent status`).
//! - [`observe`]: `--metrics-listen`, the host health snapshot heartbeats carry, and the
//!   systemd lifecycle (`READY=1` once the persisted generation's units are started, a
//!   watchdog gated on the supervisor's loop, `STOPPING=1`).
//!
//! At start the persisted generation runs before (and without) the controller; the control
//! stream ([`crate::control`]) then says Hello with that generation and the controller
//! reconciles by pushing what it wants.

pub mod desired;
pub mod drain_file;
pub mod messages;
pub mod observe;
pub mod report;
pub mod supervisor;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use drover_gitlab::{ClientOptions, GitLab, HttpGitLab};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::clock::{Clock, SystemClock};
use crate::disk::{DiskKeeper, KeeperOptions};
use crate::health::{ClockSkew, DockerStatus, HostHealth, ProcProbe};
use crate::identity::StateDir;
use crate::identity::system_id;
use crate::metrics::Metrics;
use crate::shutdown::{TASKS_WAIT, Tree};
use crate::systemd::{self, Heartbeat, Notifier};
use drover_job::executor::{ConnectOptions, DockerExecutor, Executor, StorageOptions};
use supervisor::{Deps, DockerDep, SharedGitLabFactory, Supervisor, Timings};

/// How long a stop may take to cancel and report running jobs.
pub const SHUTDOWN_DRAIN: Duration = Duration::from_secs(30);

/// What fleet mode runs with (from `drover-agent run`).
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The state dir written by `drover-agent enroll`; also holds job data.
    pub state_dir: PathBuf,
    /// Where to serve `/metrics` and `/healthz`, if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// Cancelled to stop gracefully (SIGQUIT): no new jobs, the heartbeats say draining,
    /// and `run` returns once the running jobs finished. Cancelling the root then
    /// cancels the jobs still running.
    pub stop_gracefully: CancellationToken,
    /// Where the upgrader asks `drover-agent run` to switch binaries.
    pub upgrade_switch: Arc<crate::upgrade::Switch>,
}

/// Runs the agent in fleet mode from `opts.state_dir` until `shutdown` (the root token,
/// cancelled on SIGINT/SIGTERM by `drover-agent run`), until a graceful stop
/// (`opts.stop_gracefully`, SIGQUIT) saw the running jobs finish, or until the controller
/// refuses this agent. Returns once every task it started ended (see [`crate::shutdown`]): the session
/// ends, the supervisor drains (at most [`SHUTDOWN_DRAIN`]), then the services stop.
pub async fn run(opts: FleetOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_on(opts, &Tree::new(shutdown)).await
}

/// [`run`] on `tree` (a test's, to see that no task is left).
async fn run_on(opts: FleetOptions, tree: &Tree) -> anyhow::Result<()> {
    let result = run_in(opts, tree).await;
    tree.close(TASKS_WAIT).await;
    result
}

/// [`run`] on `tree`; the services stop when the caller closes the tree.
async fn run_in(opts: FleetOptions, tree: &Tree) -> anyhow::Result<()> {
    let state = StateDir::new(&opts.state_dir);
    let identity = state.load()?;
    tracing::info!(agent = %identity.agent_id, controllers = ?identity.controllers, "starting in fleet mode");
    let system_id = system_id::load_or_create(
        &opts.state_dir.join("system_id"),
        system_id::Salt::StateDir(&opts.state_dir),
    )
    .context("system id")?;
    let tasks = tree.tasks();

    let (out_tx, out_rx) = mpsc::channel(256);
    let (report_tx, report_rx) = watch::channel(report::Report::default());
    let (desired_tx, desired_rx) = mpsc::unbounded_channel();
    let (command_tx, command_rx) = mpsc::unbounded_channel();
    let (health_tx, health_rx) = watch::channel(HostHealth::default());
    let metrics = Metrics::new();
    metrics.set_unit_source(Arc::new(observe::ReportUnits::new(report_rx.clone())));
    if let Some(addr) = opts.metrics_listen {
        crate::standalone::observe::start_server(tasks, addr, metrics.clone(), tree.service())
            .await?;
    }
    let skew = Arc::new(ClockSkew::default());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    // Disk budgets of the applied generation's runners (read at each collection).
    let storage = StorageOptions::in_state_dir(&opts.state_dir);
    let applied = desired::Store::new(state.root());
    let keeper = DiskKeeper::new(KeeperOptions {
        agent_id: identity.agent_id.clone(),
        state_dir: opts.state_dir.clone(),
        data_dir: storage.data_dir.clone(),
        cache_max_bytes: storage.cache_max_bytes,
        probe: Arc::new(ProcProbe::default()),
        thresholds: crate::health::Thresholds::default(),
        metrics: Some(metrics.clone()),
        docker: None,
        runners_source: Some(Box::new(move || {
            let a = applied.load().ok()??;
            let d = desired::validate_all(a.generation, &a.runners).ok()?;
            Some(d.runners.into_iter().map(|r| r.config).collect())
        })),
        publish: true,
    });
    tasks.spawn(
        "disk collector",
        keeper.clone().run(crate::disk::GC_INTERVAL, tree.service()),
    );
    let (gitlab, forget_clients) = http_factory(metrics.clone());
    let deps = Deps {
        gitlab,
        docker: Arc::new(RealDocker {
            agent_id: identity.agent_id.clone(),
            client: tokio::sync::Mutex::new(None),
            keeper: keeper.clone(),
            storage: storage.clone(),
        }),
        store: desired::Store::new(state.root()),
        status_path: Some(report::status_file(state.root())),
        system_id,
        agent_id: identity.agent_id.clone(),
        outbound: out_tx.clone(),
        report: report_tx,
        ips: Arc::new(crate::host_facts::ips),
        on_ips_changed: Some(forget_clients),
        timings: Timings::default(),
        clock: clock.clone(),
    };
    let liveness = Heartbeat::new();
    let mut sup = Supervisor::new(deps)
        .with_commands(command_rx)
        .with_graceful_stop(opts.stop_gracefully.clone())
        .with_metrics(metrics.clone())
        .with_liveness(liveness.clone());
    if let Err(e) = sup.restore().await {
        // Still connect: the controller pushes a fresh generation (Hello says 0).
        tracing::error!(error = %format!("{e:#}"), "cannot run the persisted generation; waiting for the controller");
    }
    sup.publish();
    // Cancelled when the supervisor ended by itself (a graceful stop completed).
    let sup_done = CancellationToken::new();
    let done = sup_done.clone();
    let sup_run = sup.run(desired_rx, tree.engine(), SHUTDOWN_DRAIN);
    let sup_task = tasks.spawn("fleet supervisor", async move {
        sup_run.await;
        done.cancel();
    });
    observe::HostProbeTask {
        probe: Arc::new(ProcProbe::default()),
        report: report_rx.clone(),
        skew: skew.clone(),
        builds_dir: opts.state_dir.clone(),
        out: health_tx,
        metrics: Some(metrics.clone()),
        every: observe::HOST_PROBE_INTERVAL,
        disk: Some(keeper),
    }
    .spawn(tasks, tree.service());
    let lifecycle = observe::Lifecycle::new(Notifier::from_env().unwrap_or_else(|e| {
        tracing::warn!(error = %e, "systemd notifications off");
        Notifier::disabled()
    }));
    lifecycle.ready(&report_rx.borrow());
    if let Some(interval) = systemd::watchdog_interval() {
        lifecycle.spawn_watchdog(tasks, interval, liveness, tree.service());
    }
    // Images the controller delivers: fetched over the session's channel, one at a time.
    let (images_tx, images_rx) = mpsc::unbounded_channel();
    let (channel_tx, channel_rx) = watch::channel(None);
    let fetcher = crate::images::worker::Worker {
        dir: crate::images::blobs::BlobDir::in_state_dir(&opts.state_dir),
        source: Arc::new(crate::control::blobs::SessionBlobs {
            channel: channel_rx,
        }),
        engine: Arc::new(crate::images::worker::DockerImages::default()),
        ledger: drover_job::disk::ledger::Ledger::in_state_dir(&opts.state_dir),
        out: out_tx,
        retry: Duration::from_secs(5),
        metrics: metrics.clone(),
    };
    tasks.spawn("image fetcher", fetcher.run(images_rx, tree.service()));
    let link = crate::control::Link {
        desired: desired_tx,
        commands: command_tx,
        images: images_tx,
        channel: channel_tx,
        outbound: out_rx,
        report: report_rx,
        health: health_rx,
        skew,
        clock,
        upgrader: crate::upgrade::Upgrader::new(
            state.root().to_path_buf(),
            tasks.clone(),
            opts.upgrade_switch.clone(),
        ),
    };
    let control = crate::control::run(state, link, tree.session());
    tokio::pin!(control);
    let control = tokio::select! {
        r = &mut control => r,
        _ = sup_done.cancelled() => {
            tracing::info!("running jobs finished; stopping");
            tree.root().cancel();
            control.await
        }
    };
    // A switch to an upgraded binary restarts the agent in the same unit: RELOADING=1, which
    // the new binary's READY=1 ends. STOPPING=1 would leave systemd waiting for the main
    // process to exit (the unit "deactivating" while the new binary runs, until
    // TimeoutStopSec kills it). (A stop signal during the switch's drain: systemd is
    // already stopping the unit and ignores RELOADING=1.)
    if opts.upgrade_switch.order().is_some() {
        lifecycle.reloading();
    } else {
        lifecycle.stopping();
    }
    // However the session ended (a signal, a refusal), the supervisor stops and drains.
    tree.root().cancel();
    if let Err(e) = sup_task.await {
        tracing::error!(error = %e, "fleet supervisor task failed");
    }
    control
}

/// One shared [`HttpGitLab`] per (url, tls-ca-file); each new client's request counters go
/// to `metrics`. The second value empties the cache (after an address change the pooled
/// connections are dead: later users get new clients).
fn http_factory(metrics: Metrics) -> (SharedGitLabFactory, Arc<dyn Fn() + Send + Sync>) {
    type Key = (String, Option<String>);
    let cache: Arc<Mutex<HashMap<Key, Arc<HttpGitLab>>>> = Arc::new(Mutex::new(HashMap::new()));
    let forget = cache.clone();
    let forget: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
        forget.lock().unwrap_or_else(|p| p.into_inner()).clear();
    });
    let factory: SharedGitLabFactory = Arc::new(move |rc| {
        let key = (rc.url.clone(), rc.tls_ca_file.clone());
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone() as Arc<dyn GitLab>);
        }
        let client = Arc::new(HttpGitLab::new(
            &rc.url,
            ClientOptions {
                tls_ca_file: rc.tls_ca_file.clone().map(PathBuf::from),
                ..ClientOptions::default()
            },
        )?);
        metrics.add_api_stats(client.stats());
        cache.insert(key, client.clone());
        Ok(client as Arc<dyn GitLab>)
    });
    (factory, forget)
}

/// The local Docker engine (`DOCKER_HOST` or the unix socket).
struct RealDocker {
    agent_id: String,
    /// The client pings go through, kept once connected.
    client: tokio::sync::Mutex<Option<Arc<DockerExecutor>>>,
    /// Jobs record their uses in its ledger and collect first when the disk is low.
    keeper: DiskKeeper,
    /// Where jobs keep their host-side files (`STATE_DIR/data`).
    storage: StorageOptions,
}

impl RealDocker {
    /// The client pings and pre-flights go through, connected on first use and kept.
    async fn client(&self) -> Result<Arc<DockerExecutor>, String> {
        let mut client = self.client.lock().await;
        if let Some(d) = client.as_ref() {
            return Ok(d.clone());
        }
        let d = Arc::new(
            DockerExecutor::connect(ConnectOptions::default())
                .await
                .map_err(|e| e.to_string())?,
        );
        *client = Some(d.clone());
        Ok(d)
    }
}

#[async_trait]
impl DockerDep for RealDocker {
    /// Version and root dir through the executor's own client (the executor stays the
    /// only module talking to Docker); bounded by 10 s.
    async fn ping(&self) -> Result<DockerStatus, String> {
        let attempt = async {
            let info = self
                .client()
                .await?
                .ping()
                .await
                .map_err(|e| e.to_string())?;
            Ok(DockerStatus {
                version: info.version,
                root_dir: info.root_dir,
            })
        };
        tokio::time::timeout(Duration::from_secs(10), attempt)
            .await
            .map_err(|_| "docker engine did not answer within 10s".to_string())?
    }

    /// Bounded by 20 s in all (the engine's answers, then registry checks of 3 s each, in
    /// parallel).
    async fn preflight(
        &self,
        runners: &[drover_proto::spec::RunnerConfig],
    ) -> Result<Vec<String>, String> {
        let Some(first) = runners.first() else {
            return Ok(Vec::new());
        };
        let attempt = async {
            let client = self.client().await.map_err(|e| {
                format!(
                    "runner {:?}: docker engine does not answer: {e}",
                    first.name
                )
            })?;
            client.preflight(runners).await
        };
        tokio::time::timeout(Duration::from_secs(20), attempt)
            .await
            .map_err(|_| "pre-flight of the runners did not finish within 20s".to_string())?
    }

    async fn executor(&self) -> anyhow::Result<Arc<dyn Executor>> {
        let docker = DockerExecutor::connect(ConnectOptions::default())
            .await
            .context("connect to the docker engine")?
            .with_storage(self.storage.clone());
        match docker.cleanup_orphans(&self.agent_id, &[]).await {
            Ok(r) => {
                if !r.containers_removed.is_empty() || !r.volumes_removed.is_empty() {
                    tracing::info!(
                        containers = ?r.containers_removed,
                        volumes = ?r.volumes_removed,
                        "removed containers left by an earlier run"
                    );
                }
                for e in r.errors {
                    tracing::warn!(error = %e, "orphan cleanup");
                }
            }
            Err(e) => tracing::warn!(error = %e, "orphan cleanup failed"),
        }
        let docker = docker.with_disk(
            self.keeper.ledger(),
            Some(Arc::new(self.keeper.clone()) as Arc<dyn drover_job::disk::DiskHook>),
        );
        Ok(Arc::new(docker))
    }
}
