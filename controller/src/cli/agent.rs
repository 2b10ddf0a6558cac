//! `drover agent delete ID`.

use drover_proto::v1;

/// `drover agent ...`
#[derive(Debug, clap::Subcommand)]
pub enum AgentCommand {
    /// Revoke an agent: its stream is closed at once and its certificate refused from then on.
    Delete(DeleteArgs),
}

/// Arguments of `drover agent delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The agent id (from `drover agents`).
    pub id: String,
}

/// Runs an agent subcommand.
pub async fn run(cli: &super::Cli, cmd: &AgentCommand) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    match cmd {
        AgentCommand::Delete(a) => {
            client
                .delete_agent(v1::DeleteAgentRequest { id: a.id.clone() })
                .await
                .map_err(|s| {
                    super::change_error(&format!("delete agent {}", a.id), s, "`drover agents`")
                })?;
            eprintln!("agent {} revoked", a.id);
        }
    }
    Ok(())
}
