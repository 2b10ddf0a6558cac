//! `drover rollout status [--wait] [-o json]` and `drover rollout undo`.

use std::time::Duration;

use drover_proto::names::Named;
use drover_proto::v1;

use super::output::{self, Format};
use super::runner::{StrategyArgs, print_outcome};
use crate::timefmt;
use crate::tokens::parse_duration;

/// `drover rollout ...`
#[derive(Debug, clap::Subcommand)]
pub enum RolloutCommand {
    /// Per-agent progress of the newest generation.
    Status(StatusArgs),
    /// Roll back: a new generation with the runners of the one before the newest.
    Undo(UndoArgs),
}

/// Arguments of `drover rollout status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Wait until the rollout is complete (exit 0) or halted (exit 1).
    #[arg(long)]
    pub wait: bool,
    /// Give up waiting after this long.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: time::Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// Arguments of `drover rollout undo`.
#[derive(Debug, clap::Args)]
pub struct UndoArgs {
    #[command(flatten)]
    pub strategy: StrategyArgs,
}

/// The status as `-o json` prints it.
pub fn status_json(s: &v1::RolloutStatusResponse) -> serde_json::Value {
    let strategy = s.strategy.clone().unwrap_or_default();
    serde_json::json!({
        "generation": s.generation,
        "state": s.state,
        "reason": s.reason,
        "strategy": {
            "kind": strategy.kind,
            "max_unavailable": strategy.max_unavailable,
            "gate": strategy.gated.then(|| serde_json::json!({
                "canary": strategy.canary,
                "window_seconds": strategy.gate_window_seconds,
                "max_failure_ratio": strategy.max_failure_ratio,
                "auto_rollback": strategy.auto_rollback,
            })),
        },
        "created_at": s.created_at.as_ref().and_then(timefmt::from_proto).map(timefmt::rfc3339),
        "agents": s.agents.iter().map(|a| serde_json::json!({
            "id": a.agent_id,
            "hostname": a.hostname,
            "target_generation": a.target_generation,
            "applied_generation": a.applied_generation,
            "state": a.state,
            "error": a.error,
            "connected": a.connected,
        })).collect::<Vec<_>>(),
    })
}

fn print_status(s: &v1::RolloutStatusResponse, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            drover_proto::stdout::line(&serde_json::to_string_pretty(&status_json(s))?)?
        }
        Format::Table => {
            let mut text = format!(
                "generation {}: {}{}\n",
                s.generation,
                output::clean(&s.state),
                if s.reason.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", output::clean(&s.reason))
                }
            );
            if let Some(g) = s.strategy.as_ref().filter(|g| g.gated) {
                text.push_str(&format!(
                    "gated: canary {}, window {}s, max failure ratio {}{}\n",
                    g.canary,
                    g.gate_window_seconds,
                    g.max_failure_ratio,
                    if g.auto_rollback {
                        ", auto-rollback"
                    } else {
                        ""
                    }
                ));
            }
            let rows: Vec<Vec<String>> = s
                .agents
                .iter()
                .map(|a| {
                    vec![
                        a.agent_id.clone(),
                        a.hostname.clone(),
                        a.target_generation.to_string(),
                        a.applied_generation.to_string(),
                        a.state.clone(),
                        a.error.clone(),
                    ]
                })
                .collect();
            text.push_str(&output::table(
                &["AGENT", "HOSTNAME", "TARGET", "APPLIED", "STATE", "ERROR"],
                &rows,
            ));
            output::print(&text, false)?;
        }
    }
    Ok(())
}

/// Runs a rollout subcommand.
pub async fn run(cli: &super::Cli, cmd: &RolloutCommand) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    match cmd {
        RolloutCommand::Status(a) => {
            let timeout =
                Duration::from_secs(u64::try_from(a.timeout.whole_seconds()).unwrap_or(600));
            let deadline = std::time::Instant::now()
                .checked_add(timeout)
                .ok_or_else(|| anyhow::anyhow!("--timeout {}: too long", a.timeout))?;
            loop {
                let s = client
                    .rollout_status(v1::RolloutStatusRequest {})
                    .await
                    .map_err(|e| super::status_error("rollout status", e))?
                    .into_inner();
                let s = super::read::rollout(s);
                let state = v1::RolloutState::from_name(&s.state);
                let done = matches!(
                    state,
                    Some(
                        v1::RolloutState::Complete
                            | v1::RolloutState::Halted
                            | v1::RolloutState::None
                    )
                );
                if !a.wait || done || std::time::Instant::now() >= deadline {
                    print_status(&s, a.output)?;
                    if a.wait && state == Some(v1::RolloutState::Halted) {
                        anyhow::bail!(
                            "rollout of generation {} halted: {}",
                            s.generation,
                            s.reason
                        );
                    }
                    if a.wait && !done {
                        anyhow::bail!(
                            "rollout of generation {} still {} after the timeout",
                            s.generation,
                            s.state
                        );
                    }
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        RolloutCommand::Undo(a) => {
            let resp = client
                .rollout_undo(v1::RolloutUndoRequest {
                    strategy: a.strategy.to_proto(),
                })
                .await
                .map_err(|s| super::change_error("rollout undo", s, super::CHECK_RUNNERS))?
                .into_inner();
            print_outcome(&resp, false)?;
            Ok(())
        }
    }
}
