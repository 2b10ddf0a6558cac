//! `drover agent delete ID`; `drover agent drain` and `undrain` are in `drain.rs`,
//! `drover agent upgrade` in `upgrade.rs`.

use drover_proto::v1;

/// `drover agent ...`
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Revoke an agent: its stream is closed at once and its certificate refused from then on.
    Delete(DeleteArgs),
    /// Stop an agent (or every agent matching --selector) taking new jobs; running jobs
    /// finish, or are canceled at --deadline. Kept across restarts until `undrain`.
    Drain(super::drain::DrainArgs),
    /// Let drained agents take jobs again.
    Undrain(super::drain::UndrainArgs),
    /// Upgrade agents to a new binary (a canary, then batches), or show the newest
    /// upgrade's progress (`drover agent upgrade status`).
    Upgrade(super::upgrade::UpgradeArgs),
}

/// Arguments of `drover agent delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The agent id (from `drover agents`).
    pub id: String,
}

/// Runs an agent subcommand.
pub async fn run(cli: &super::Cli, cmd: &AgentCommand) -> anyhow::Result<()> {
    match cmd {
        AgentCommand::Delete(a) => delete(cli, a).await,
        AgentCommand::Drain(a) => super::drain::drain(cli, a).await,
        AgentCommand::Undrain(a) => super::drain::undrain(cli, a).await,
        AgentCommand::Upgrade(a) => super::upgrade::run(cli, a).await,
    }
}

async fn delete(cli: &super::Cli, a: &DeleteArgs) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    client
        .delete_agent(v1::DeleteAgentRequest { id: a.id.clone() })
        .await
        .map_err(|s| {
            super::change_error(&format!("delete agent {}", a.id), s, "`drover agents`")
        })?;
    eprintln!("agent {} revoked", a.id);
    Ok(())
}
