//! Standalone mode: the runners of a gitlab-runner `config.toml`, no controller.
//!
//! - [`load`]: reads and validates the file; the system id (`.runner_system_id` next to the
//!   config, as gitlab-runner keeps it, else `<state-dir>/system_id`) and the agent id.
//! - the runners are served by [`crate::engine`], which fleet mode uses too.
//! - [`observe`]: metrics (`--metrics-listen`, else `listen_address` of the file; read at
//!   start only) fed by runner events, engine stats, GitLab client counters, a host probe.
//!
//! Signals: `SIGTERM`/`SIGINT` stop at once (running jobs are canceled and reported failed);
//! `SIGQUIT` stops taking jobs and exits when running jobs finished (a second
//! `SIGTERM`/`SIGINT` then cancels them); `SIGHUP` re-reads the file: if it is invalid the
//! error is logged and the old configuration keeps running, else changed runners restart.

pub mod load;
pub mod observe;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

use crate::disk::{DiskKeeper, GC_INTERVAL, KeeperOptions};
use crate::engine::{Engine, GitLabFactory};
use crate::health::{ProcProbe, Thresholds};
use crate::inflight::{InflightStore, JobTracking, Recovered};
use crate::janitor::{DEFAULT_JANITOR_INTERVAL, Janitor, RunningJobs};
use crate::metrics::Metrics;
use crate::shutdown::{TASKS_WAIT, Tree};
use crate::stop_signals::{Stop, StopSignals};
use drover_gitlab::{ClientOptions, GitLab, HttpGitLab};
use drover_job::executor::{ConnectOptions, DockerExecutor, StorageOptions};

/// What standalone mode runs with (from `drover-agent run --config`).
#[derive(Debug, Clone)]
pub struct StandaloneOptions {
    /// The gitlab-runner `config.toml` whose runners are served.
    pub config: PathBuf,
    /// Job data, in-flight records and (without a `.runner_system_id` beside the config)
    /// the system id.
    pub state_dir: PathBuf,
    /// Where to serve `/metrics` and `/healthz`; `None` falls back to the file's
    /// `listen_address`.
    pub metrics_listen: Option<SocketAddr>,
}

/// Serves every docker runner in `opts.config` until a signal says stop, or until
/// `shutdown` (the root token: SIGTERM/SIGINT cancel it, a caller may too) is cancelled,
/// which stops at once like SIGTERM. Returns once every task it started ended (see
/// [`crate::shutdown`]): the engine drains, then the services stop.
pub async fn run(opts: StandaloneOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tree = Tree::new(shutdown);
    let result = run_in(opts, &tree).await;
    tree.close(TASKS_WAIT).await;
    result
}

/// [`run`] on `tree`; the services stop when the caller closes the tree.
async fn run_in(opts: StandaloneOptions, tree: &Tree) -> anyhow::Result<()> {
    let config = opts.config.clone();
    let parsed = load::load(&config)?;
    for w in &parsed.warnings {
        tracing::warn!("{w}");
    }
    if let Some(level) = &parsed.config.log_level
        && level != "info"
    {
        tracing::warn!(
            "{}: log_level = {level:?} is not applied; set DROVER_LOG={level} instead",
            config.display()
        );
    }
    let metrics_addr =
        observe::metrics_address(opts.metrics_listen, parsed.config.listen_address.as_deref())?;
    let system_id = load::system_id(&config, &opts.state_dir)?;
    let agent_id = load::agent_id(&system_id, &config);
    tracing::info!(
        config = %config.display(),
        %system_id,
        %agent_id,
        runners = parsed.config.runners.len(),
        "standalone mode"
    );

    let storage = StorageOptions::in_state_dir(&opts.state_dir);
    let docker = DockerExecutor::connect(ConnectOptions::default())
        .await
        .context("connect to the docker engine")?
        .with_storage(storage.clone());
    let metrics = Metrics::new();
    // Disk budgets: the keeper collects with the plain executor; jobs record their uses in
    // its ledger and collect first when the disk is low.
    let keeper = DiskKeeper::new(KeeperOptions {
        agent_id: agent_id.clone(),
        state_dir: opts.state_dir.clone(),
        data_dir: storage.data_dir.clone(),
        cache_max_bytes: storage.cache_max_bytes,
        probe: Arc::new(ProcProbe::default()),
        thresholds: Thresholds::default(),
        metrics: Some(metrics.clone()),
        docker: Some(docker.clone()),
        runners_source: None,
        publish: true,
    });
    keeper.set_runners(&parsed.config.runners);
    let docker = docker.with_disk(keeper.ledger(), Some(Arc::new(keeper.clone())));

    // Jobs a previous run left unfinished (kill -9, crash): report them failed.
    let inflight = InflightStore::new(&opts.state_dir);
    // Recovery talks to GitLab before the metrics registry exists; its counters are not kept.
    let factory = http_factory(Metrics::new());
    let gitlab_for = move |job: &crate::inflight::InflightJob| {
        let rc = drover_proto::spec::RunnerConfig {
            url: job.url.clone(),
            tls_ca_file: job.tls_ca_file.clone(),
            ..Default::default()
        };
        factory(&rc)
    };
    for r in inflight
        .recover(&gitlab_for, &crate::inflight::now_rfc3339())
        .await
    {
        match r {
            Recovered::Kept { job_id, error } => {
                tracing::warn!(job = job_id, %error, "could not report an unfinished job; will retry at next start")
            }
            other => {
                tracing::info!(result = ?other, "reported a job the previous run did not finish")
            }
        }
    }

    // Leftover containers/networks/volumes now, then every few minutes.
    let tasks = tree.tasks();
    let running = RunningJobs::default();
    let janitor = Janitor::new(docker.clone(), agent_id.clone(), running.clone());
    janitor.sweep().await;
    tasks.spawn(
        "janitor",
        janitor.run(DEFAULT_JANITOR_INTERVAL, tree.service()),
    );

    tasks.spawn(
        "disk collector",
        keeper.clone().run(GC_INTERVAL, tree.service()),
    );

    let docker = Arc::new(docker);
    let observed = observe::Observed::new(metrics, system_id.clone()).with_disk(keeper.clone());
    if let Some(addr) = metrics_addr {
        observe::start_server(tasks, addr, observed.metrics.clone(), tree.service()).await?;
    }
    // The host probe feeds the metrics and, when the disk is low, collects first.
    observe::spawn_host_probe(
        tasks,
        docker.clone(),
        observed.metrics.clone(),
        opts.state_dir.clone(),
        Some(keeper),
        tree.service(),
    );
    let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
    observe::spawn_event_feed(tasks, events_rx, observed.metrics.clone(), tree.service());

    let mut engine = Engine::new(
        docker,
        http_factory(observed.metrics.clone()),
        system_id,
        agent_id,
    )
    .with_events(events)
    .with_tracking(JobTracking {
        inflight: Some(inflight),
        running,
    })
    .with_tasks(tasks.clone());
    engine.apply(&parsed.config)?;
    observed.applied(&engine, &parsed.config);
    let shutdown_timeout = match parsed.config.shutdown_timeout {
        None | Some(0) => DEFAULT_SHUTDOWN_TIMEOUT,
        Some(s) => Duration::from_secs(s),
    };
    serve(
        &mut engine,
        &config,
        shutdown_timeout,
        &observed,
        tree.root(),
        tree.engine(),
    )
    .await
}

/// gitlab-runner's default `shutdown_timeout`: how long a forceful stop may take to cancel
/// and report running jobs before the process exits anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// One shared [`HttpGitLab`] per (url, tls-ca-file).
/// Each new client's request counters go to `metrics`.
fn http_factory(metrics: Metrics) -> GitLabFactory {
    type Key = (String, Option<String>);
    let cache: Mutex<HashMap<Key, Arc<HttpGitLab>>> = Mutex::new(HashMap::new());
    Box::new(move |rc| {
        let key = (rc.url.clone(), rc.tls_ca_file.clone());
        let mut cache = cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone() as Arc<dyn GitLab>);
        }
        let client = HttpGitLab::new(
            &rc.url,
            ClientOptions {
                tls_ca_file: rc.tls_ca_file.clone().map(PathBuf::from),
                ..ClientOptions::default()
            },
        )?;
        let client = Arc::new(client);
        metrics.add_api_stats(client.stats());
        cache.insert(key, client.clone());
        Ok(client as Arc<dyn GitLab>)
    })
}

/// Waits for signals and for runner loops until every loop has ended. SIGTERM and SIGINT
/// cancel `root`; `stop` (the engine's child of it) stops at once; SIGQUIT stops
/// gracefully (see [`crate::stop_signals`]).
async fn serve(
    engine: &mut Engine,
    config: &std::path::Path,
    shutdown_timeout: Duration,
    observed: &observe::Observed,
    root: &CancellationToken,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut stops = StopSignals::install()?;
    let mut hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let mut failures: Vec<String> = Vec::new();
    // Set by the first forceful stop: the process exits by then whatever is left.
    let mut deadline: Option<tokio::time::Instant> = None;
    while engine.running() > 0 {
        tokio::select! {
            stop = stops.next() => match stop {
                Stop::Now(name) => {
                    tracing::info!("{name}: canceling running jobs and stopping");
                    root.cancel();
                    engine.stop_now();
                    deadline.get_or_insert(tokio::time::Instant::now() + shutdown_timeout);
                }
                Stop::Graceful => {
                    tracing::info!("SIGQUIT: taking no new jobs; stopping when running jobs finish");
                    engine.stop_graceful();
                }
            },
            // The root cancelled by the caller (not by a signal above): stop at once too.
            _ = stop.cancelled(), if deadline.is_none() => {
                tracing::info!("stop requested: canceling running jobs and stopping");
                engine.stop_now();
                deadline.get_or_insert(tokio::time::Instant::now() + shutdown_timeout);
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap_or_else(tokio::time::Instant::now)).await }, if deadline.is_some() => {
                anyhow::bail!(
                    "shutdown_timeout ({}s) passed with {} runner(s) still stopping; exiting",
                    shutdown_timeout.as_secs(),
                    engine.running()
                );
            }
            _ = hup.recv() => {
                if engine.stopping() {
                    continue;
                }
                match load::load(config) {
                    Ok(parsed) => {
                        for w in &parsed.warnings {
                            tracing::warn!("{w}");
                        }
                        match engine.apply(&parsed.config) {
                            Ok(()) => tracing::info!(config = %config.display(), "SIGHUP: configuration reloaded"),
                            Err(e) => tracing::error!("SIGHUP: reload partly failed: {e:#}"),
                        }
                        observed.applied(engine, &parsed.config);
                    }
                    Err(e) => tracing::error!("SIGHUP: keeping the running configuration: {e:#}"),
                }
            }
            ended = engine.join_next() => {
                let Some(ended) = ended else { break };
                match ended.result {
                    Ok(()) => tracing::info!(runner = %ended.runner, "runner stopped"),
                    Err(e) => {
                        tracing::error!(runner = %ended.runner, "{e}");
                        if ended.current {
                            failures.push(e.to_string());
                        }
                    }
                }
            }
        }
    }
    if !engine.stopping() && !failures.is_empty() {
        anyhow::bail!("every runner stopped: {}", failures.join("; "));
    }
    Ok(())
}
