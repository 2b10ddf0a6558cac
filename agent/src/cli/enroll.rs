//! `drover-agent enroll --controller https://HOST:PORT --token TOKEN [--state-dir DIR]`.

use std::path::PathBuf;

/// Arguments of `drover-agent enroll`.
#[derive(Debug, clap::Args)]
pub struct EnrollArgs {
    /// The controller's gRPC address, `https://HOST:PORT`.
    #[arg(long)]
    pub controller: String,
    /// A one-time enrollment token from `drover token create`.
    #[arg(long, env = "DROVER_ENROLL_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Where the agent keeps its key, certificates and state.
    #[arg(
        long,
        default_value = "/var/lib/drover-agent",
        env = "DROVER_AGENT_STATE_DIR"
    )]
    pub state_dir: PathBuf,
}

pub async fn run(args: EnrollArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "enroll with {} into {} is not built yet",
        args.controller,
        args.state_dir.display()
    )
}
