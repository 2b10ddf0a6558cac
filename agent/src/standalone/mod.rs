//! Standalone mode: the runners of a gitlab-runner `config.toml`, no controller.
//!
//! - [`load`]: reads and validates the file; the system id (`.runner_system_id` next to the
//!   config, as gitlab-runner keeps it, else `<state-dir>/system_id`) and the agent id.
//! - [`engine`]: serves the runners; fleet mode reuses it.
//!
//! Signals: `SIGTERM`/`SIGINT` stop at once (running jobs are canceled and reported failed);
//! `SIGQUIT` stops taking jobs and exits when running jobs finished (a second
//! `SIGTERM`/`SIGINT` then cancels them); `SIGHUP` re-reads the file: if it is invalid the
//! error is logged and the old configuration keeps running, else changed runners restart.

pub mod engine;
pub mod load;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use crate::executor::{ConnectOptions, DockerExecutor};
use crate::gitlab::{ClientOptions, GitLab, HttpGitLab};
pub use engine::{Engine, GitLabFactory};

/// Serves every docker runner in `config` until a signal says stop.
pub async fn run(config: PathBuf, args: crate::cli::run::RunArgs) -> anyhow::Result<()> {
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
    if args.metrics_listen.is_some() {
        tracing::warn!("--metrics-listen is not served in standalone mode yet; ignored");
    }
    let system_id = load::system_id(&config, &args.state_dir)?;
    let agent_id = load::agent_id(&system_id, &config);
    tracing::info!(
        config = %config.display(),
        %system_id,
        %agent_id,
        runners = parsed.config.runners.len(),
        "standalone mode"
    );

    let docker = DockerExecutor::connect(ConnectOptions::default())
        .await
        .context("connect to the docker engine")?;
    match docker.cleanup_orphans(&agent_id, &[]).await {
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

    let mut engine = Engine::new(Arc::new(docker), http_factory(), system_id, agent_id);
    engine.apply(&parsed.config)?;
    let shutdown_timeout = match parsed.config.shutdown_timeout {
        None | Some(0) => DEFAULT_SHUTDOWN_TIMEOUT,
        Some(s) => Duration::from_secs(s),
    };
    serve(&mut engine, &config, shutdown_timeout).await
}

/// gitlab-runner's default `shutdown_timeout`: how long a forceful stop may take to cancel
/// and report running jobs before the process exits anyway.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// One shared [`HttpGitLab`] per (url, tls-ca-file).
fn http_factory() -> GitLabFactory {
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
        cache.insert(key, client.clone());
        Ok(client as Arc<dyn GitLab>)
    })
}

/// Waits for signals and for runner loops until every loop has ended.
async fn serve(
    engine: &mut Engine,
    config: &std::path::Path,
    shutdown_timeout: Duration,
) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate()).context("install SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("install SIGINT handler")?;
    let mut quit = signal(SignalKind::quit()).context("install SIGQUIT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("install SIGHUP handler")?;
    let mut failures: Vec<String> = Vec::new();
    // Set by the first forceful stop: the process exits by then whatever is left.
    let mut deadline: Option<tokio::time::Instant> = None;
    while engine.running() > 0 {
        tokio::select! {
            _ = term.recv() => {
                tracing::info!("SIGTERM: canceling running jobs and stopping");
                engine.stop_now();
                deadline.get_or_insert(tokio::time::Instant::now() + shutdown_timeout);
            }
            _ = int.recv() => {
                tracing::info!("SIGINT: canceling running jobs and stopping");
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
            _ = quit.recv() => {
                tracing::info!("SIGQUIT: taking no new jobs; stopping when running jobs finish");
                engine.stop_graceful();
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
