//! `drover agent upgrade --binary FILE... [--selector k=v]... [--max-unavailable N]
//! [--health-timeout DUR] [-o json]` and `drover agent upgrade status [-o json]`.
//!
//! Each file's architecture (ELF header) and version (its stamp) are read here first, so a
//! wrong file is refused naming it before anything is sent; the controller reads them
//! again, stores and signs each binary and rolls the upgrade out: a canary agent, then
//! batches of `--max-unavailable`; a rollback, a refusal or the health timeout halts it.

use std::path::PathBuf;

use drover_proto::v1;

use super::output::{self, Format};
use crate::timefmt;
use crate::tokens::{parse_duration, parse_label};

/// Bytes of a binary per message (well under the 4 MiB message limit).
const PART_BYTES: usize = 1024 * 1024;

/// Arguments of `drover agent upgrade`.
#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UpgradeArgs {
    #[command(subcommand)]
    pub status: Option<UpgradeStatusCommand>,
    /// An agent binary (`drover-agent`); one per architecture, repeatable.
    #[arg(long = "binary", value_name = "FILE")]
    pub binaries: Vec<PathBuf>,
    /// Only agents with this label, `key=value`; repeatable (every one must match).
    #[arg(long = "selector", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
    /// Agents upgraded at once after the canary.
    #[arg(long, default_value_t = 1)]
    pub max_unavailable: u32,
    /// How long an agent has to come back healthy on the new binary before it rolls
    /// back by itself.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    pub health_timeout: time::Duration,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `drover agent upgrade status`.
#[derive(Debug, clap::Subcommand)]
pub enum UpgradeStatusCommand {
    /// The newest upgrade and each agent's step (pending, draining, downloading,
    /// switching, healthy, rolled-back, refused, timed-out).
    Status(StatusArgs),
}

/// Arguments of `drover agent upgrade status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// The status as `-o json` prints it.
pub fn status_json(s: &v1::UpgradeStatusResponse) -> serde_json::Value {
    serde_json::json!({
        "id": s.id,
        "state": s.state,
        "reason": s.reason,
        "created_at": s.created_at.as_ref().and_then(timefmt::from_proto).map(timefmt::rfc3339),
        "selector": s.selector.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "max_unavailable": s.max_unavailable,
        "health_timeout_seconds": s.health_timeout_seconds,
        "binaries": s.binaries.iter().map(|b| serde_json::json!({
            "arch": b.arch,
            "version": b.version,
            "sha256": b.sha256,
            "size": b.size,
        })).collect::<Vec<_>>(),
        "agents": s.agents.iter().map(|a| serde_json::json!({
            "id": a.agent_id,
            "hostname": a.hostname,
            "step": step_name(a.step),
            "detail": a.detail,
            "version": a.version,
        })).collect::<Vec<_>>(),
    })
}

fn step_name(step: i32) -> String {
    drover_proto::names::name_of::<v1::UpgradeStep>(step, "")
}

/// One line: `upgrade 3 running to 1.2.0: 2/5 healthy (reason)`.
pub fn summary(s: &v1::UpgradeStatusResponse) -> String {
    if s.id == 0 {
        return "none".to_string();
    }
    let healthy = s
        .agents
        .iter()
        .filter(|a| a.step == i32::from(v1::UpgradeStep::Healthy))
        .count();
    let versions: Vec<&str> = s.binaries.iter().map(|b| b.version.as_str()).collect();
    format!(
        "upgrade {} {} to {}: {healthy}/{} healthy{}",
        s.id,
        output::clean(&s.state),
        output::clip(&versions.join(","), 24),
        s.agents.len(),
        if s.reason.is_empty() {
            String::new()
        } else {
            format!(" ({})", output::clip(&s.reason, 40))
        }
    )
}

fn print_status(s: &v1::UpgradeStatusResponse, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => {
            drover_proto::stdout::line(&serde_json::to_string_pretty(&status_json(s))?)?
        }
        Format::Table => {
            let mut text = format!("{}\n", summary(s));
            let rows: Vec<Vec<String>> = s
                .agents
                .iter()
                .map(|a| {
                    let step = step_name(a.step);
                    let step = if a.detail.is_empty() {
                        step
                    } else {
                        format!("{step}: {}", a.detail)
                    };
                    vec![
                        a.agent_id.clone(),
                        output::clip(&a.hostname, 16),
                        output::clip(&a.version, 12),
                        output::clip(&step, 40),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                text.push_str(&output::table(
                    &["ID", "HOSTNAME", "VERSION", "STEP"],
                    &rows,
                ));
            }
            output::print(&text, false)?;
        }
    }
    Ok(())
}

/// Runs `drover agent upgrade`.
pub async fn run(cli: &super::Cli, args: &UpgradeArgs) -> anyhow::Result<()> {
    if let Some(UpgradeStatusCommand::Status(s)) = &args.status {
        let mut client = super::admin_client(cli).await?;
        let status = client
            .upgrade_status(v1::UpgradeStatusRequest {})
            .await
            .map_err(|s| super::status_error("upgrade status", s))?
            .into_inner();
        return print_status(&status, s.output);
    }
    if args.binaries.is_empty() {
        anyhow::bail!("give at least one --binary FILE (or `drover agent upgrade status`)");
    }
    let mut contents = Vec::new();
    for file in &args.binaries {
        let (bytes, info) = drover_runtime::binary_file::inspect(file)?;
        if bytes.len() > crate::upgrade::MAX_BINARY_BYTES {
            anyhow::bail!(
                "{} is larger than {} MiB",
                file.display(),
                crate::upgrade::MAX_BINARY_BYTES >> 20
            );
        }
        eprintln!(
            "{}: {} {}, {} bytes",
            file.display(),
            info.arch,
            info.version,
            bytes.len()
        );
        contents.push(bytes);
    }
    let timeout = u64::try_from(args.health_timeout.whole_seconds()).unwrap_or(0);
    let mut messages = vec![v1::UpgradeAgentsRequest {
        kind: Some(v1::upgrade_agents_request::Kind::Plan(v1::UpgradePlan {
            selector: args.selector.iter().cloned().collect(),
            max_unavailable: args.max_unavailable,
            health_timeout_seconds: timeout,
            binaries: u32::try_from(contents.len()).unwrap_or(u32::MAX),
        })),
    }];
    for (index, bytes) in contents.iter().enumerate() {
        for part in bytes.chunks(PART_BYTES) {
            messages.push(v1::UpgradeAgentsRequest {
                kind: Some(v1::upgrade_agents_request::Kind::Part(v1::BinaryPart {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    data: part.to_vec(),
                })),
            });
        }
    }
    let mut client = super::admin_client(cli).await?;
    let status = client
        .upgrade_agents(tokio_stream::iter(messages))
        .await
        .map_err(|s| super::change_error("upgrade agents", s, "`drover agent upgrade status`"))?
        .into_inner();
    print_status(&status, args.output)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_proto::names::Named;

    #[test]
    fn parses_an_upgrade_and_its_status_subcommand() {
        use clap::Parser;
        let cli = crate::cli::Cli::try_parse_from([
            "drover",
            "agent",
            "upgrade",
            "--binary",
            "a",
            "--binary",
            "b",
            "--selector",
            "site=lab",
            "--max-unavailable",
            "3",
            "--health-timeout",
            "90s",
        ])
        .unwrap();
        let crate::cli::Command::Agent(crate::cli::agent::AgentCommand::Upgrade(u)) = cli.command
        else {
            panic!("not an upgrade");
        };
        assert_eq!(u.binaries.len(), 2);
        assert_eq!(u.selector, vec![("site".to_string(), "lab".to_string())]);
        assert_eq!(
            (u.max_unavailable, u.health_timeout.whole_seconds()),
            (3, 90)
        );
        assert!(u.status.is_none());
        let cli =
            crate::cli::Cli::try_parse_from(["drover", "agent", "upgrade", "status", "-o", "json"])
                .unwrap();
        let crate::cli::Command::Agent(crate::cli::agent::AgentCommand::Upgrade(u)) = cli.command
        else {
            panic!("not an upgrade");
        };
        assert!(matches!(
            u.status,
            Some(UpgradeStatusCommand::Status(StatusArgs {
                output: Format::Json
            }))
        ));
    }

    #[test]
    fn status_names_each_step_and_the_summary_counts_healthy_agents() {
        let s = v1::UpgradeStatusResponse {
            id: 2,
            state: "halted".into(),
            reason: "agent a1 rolled-back: exited".into(),
            binaries: vec![v1::UpgradeBinary {
                arch: "x86_64".into(),
                version: "2.0".into(),
                sha256: "ab".into(),
                size: 3,
            }],
            agents: vec![
                v1::AgentUpgradeStatus {
                    agent_id: "a0".into(),
                    step: v1::UpgradeStep::Healthy.into(),
                    detail: "2.0".into(),
                    ..Default::default()
                },
                v1::AgentUpgradeStatus {
                    agent_id: "a1".into(),
                    step: v1::UpgradeStep::RolledBack.into(),
                    detail: "exited".into(),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let j = status_json(&s);
        assert_eq!(j["agents"][1]["step"], "rolled-back");
        assert_eq!(j["binaries"][0]["version"], "2.0");
        let line = summary(&s);
        assert!(
            line.starts_with("upgrade 2 halted to 2.0: 1/2 healthy"),
            "{line}"
        );
        assert_eq!(summary(&v1::UpgradeStatusResponse::default()), "none");
        assert!(v1::UpgradeStep::from_name("timed-out").is_some());
    }
}
