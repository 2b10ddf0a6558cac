//! `drover-agent run`: fleet mode (`--state-dir`) or standalone mode (`--config`).

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::stop_signals::Stop;
use crate::upgrade::Switch;
use crate::upgrade::launcher::Outcome;

/// Arguments of `drover-agent run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Standalone mode: serve the runners of this gitlab-runner `config.toml`, no controller.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Fleet mode: the state dir written by `drover-agent enroll`.
    #[arg(
        long,
        default_value = "/var/lib/drover-agent",
        env = "DROVER_AGENT_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// Serve Prometheus metrics on this address (off by default).
    #[arg(long)]
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// Runs the mode the arguments select under one root token. Both modes stop on the same
/// signals ([`crate::stop_signals`]): fleet mode here (SIGINT/SIGTERM cancel the root and
/// the mode stops everything under it; SIGQUIT asks it to stop gracefully), standalone
/// mode in its own loop (which also reloads on HUP).
///
/// Fleet mode starts with the launcher ([`crate::upgrade::launcher`]): when an upgraded
/// binary is selected it runs as this process's child and this process exits with its
/// exit code. When the upgrader asks for a switch, fleet mode stops gracefully (at most the
/// order's health timeout, then running jobs are canceled), selects the new binary and
/// restarts: this binary re-executes itself, a launched one exits with
/// [`crate::upgrade::launcher::EXIT_SWITCH`]. A stop signal during that drain still
/// selects the binary, for the next start, and stops.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    match args.config {
        Some(config) => {
            crate::standalone::run(
                crate::standalone::StandaloneOptions {
                    config,
                    state_dir: args.state_dir,
                    metrics_listen: args.metrics_listen,
                },
                shutdown,
            )
            .await
        }
        None => {
            match crate::upgrade::launcher::launch(&args.state_dir).await? {
                Outcome::Exit(code) => std::process::exit(code),
                Outcome::RunHere => {}
            }
            let switch = Switch::new();
            let graceful = CancellationToken::new();
            let fleet = crate::fleet::run(
                crate::fleet::FleetOptions {
                    state_dir: args.state_dir.clone(),
                    metrics_listen: args.metrics_listen,
                    stop_gracefully: graceful.clone(),
                    upgrade_switch: switch.clone(),
                },
                shutdown.clone(),
            );
            tokio::pin!(fleet);
            let mut stops = crate::stop_signals::StopSignals::install()?;
            let requested = switch.requested();
            // Armed once a switch is requested: running jobs are canceled at it.
            let drain_deadline = tokio::time::sleep(Duration::MAX);
            tokio::pin!(drain_deadline);
            let mut switching = false;
            let mut stopped = false;
            let result = loop {
                tokio::select! {
                    result = &mut fleet => break result,
                    stop = stops.next() => match stop {
                        Stop::Now(name) => {
                            tracing::info!("{name}: canceling running jobs and stopping");
                            stopped = true;
                            shutdown.cancel();
                        }
                        Stop::Graceful => {
                            tracing::info!("SIGQUIT: taking no new jobs; stopping when running jobs finish");
                            stopped = true;
                            graceful.cancel();
                        }
                    },
                    _ = requested.cancelled(), if !switching => {
                        switching = true;
                        let within = switch.order().map_or(Duration::ZERO, |o| o.health_timeout());
                        tracing::info!(deadline_s = within.as_secs(), "agent upgrade: draining (no new jobs; running jobs finish) before the switch");
                        drain_deadline.as_mut().reset(tokio::time::Instant::now() + within);
                        graceful.cancel();
                    }
                    _ = &mut drain_deadline, if switching && !shutdown.is_cancelled() => {
                        tracing::warn!("agent upgrade: the drain deadline passed; canceling the jobs still running");
                        shutdown.cancel();
                    }
                }
            };
            let Some(order) = switch.order().filter(|_| switching) else {
                return result;
            };
            // Fleet mode ended by itself (a refusal): no switch.
            result?;
            Switch::select(&args.state_dir, &order)?;
            if stopped {
                // Asked to stop: the next start runs the selected binary.
                tracing::info!(version = %order.version, "agent upgrade: selected; it runs at the next start");
                return Ok(());
            }
            tracing::info!(version = %order.version, "agent upgrade: selected; restarting on it");
            if crate::upgrade::launcher::running_slot().is_some() {
                std::process::exit(crate::upgrade::launcher::EXIT_SWITCH);
            }
            Err(crate::upgrade::launcher::reexec())
        }
    }
}
