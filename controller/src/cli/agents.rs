//! `drover agents [-o table|json]`.

use drover_proto::v1;

use super::output::{self, Format};
use crate::timefmt;

/// Arguments of `drover agents`.
#[derive(Debug, clap::Args)]
pub struct AgentsArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

fn ts(t: &Option<prost_types::Timestamp>) -> Option<String> {
    t.as_ref()
        .and_then(timefmt::from_proto)
        .map(timefmt::rfc3339)
}

/// One agent as `drover agents -o json` prints it.
pub fn agent_json(a: &v1::AgentInfo) -> serde_json::Value {
    let facts = a.facts.clone().unwrap_or_default();
    serde_json::json!({
        "id": a.id,
        "hostname": facts.hostname,
        "labels": a.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
        "state": a.state,
        "reasons": a.reasons,
        "connected": a.connected,
        "applied_generation": a.applied_generation,
        "ips": facts.ips,
        "arch": facts.arch,
        "os": facts.os,
        "kernel": facts.kernel,
        "version": facts.agent_version,
        "last_seen": ts(&a.last_seen),
        "enrolled_at": ts(&a.enrolled_at),
        "cert_not_after": ts(&a.cert_not_after),
        "runners": a.runners.iter().map(|r| serde_json::json!({
            "name": r.name,
            "state": r.state,
            "gitlab_runner_id": r.gitlab_runner_id,
            "token_expires_at": ts(&r.token_expires_at),
        })).collect::<Vec<_>>(),
    })
}

/// Lists agents.
pub async fn run(cli: &super::Cli, args: &AgentsArgs) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    let agents = client
        .list_agents(v1::ListAgentsRequest {})
        .await
        .map_err(|s| super::status_error("list agents", s))?
        .into_inner()
        .agents;
    match args.output {
        Format::Json => {
            let arr: Vec<serde_json::Value> = agents.iter().map(agent_json).collect();
            println!("{}", serde_json::to_string_pretty(&arr)?);
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    let f = a.facts.clone().unwrap_or_default();
                    vec![
                        a.id.clone(),
                        f.hostname,
                        a.state.clone(),
                        output::labels(&a.labels),
                        f.arch,
                        f.ips.join(","),
                        f.agent_version,
                        if a.connected {
                            "connected".to_string()
                        } else {
                            ts(&a.last_seen).unwrap_or_else(|| "never".into())
                        },
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &[
                        "ID",
                        "HOSTNAME",
                        "STATE",
                        "LABELS",
                        "ARCH",
                        "IPS",
                        "VERSION",
                        "LAST SEEN"
                    ],
                    &rows
                )
            );
        }
    }
    Ok(())
}
