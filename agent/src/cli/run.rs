//! `drover-agent run`: fleet mode (`--state-dir`) or standalone mode (`--config`).

use std::path::PathBuf;

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

pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    match args.config {
        Some(config) => {
            crate::standalone::run(crate::standalone::StandaloneOptions {
                config,
                state_dir: args.state_dir,
                metrics_listen: args.metrics_listen,
            })
            .await
        }
        None => {
            crate::fleet::run(crate::fleet::FleetOptions {
                state_dir: args.state_dir,
                metrics_listen: args.metrics_listen,
            })
            .await
        }
    }
}
