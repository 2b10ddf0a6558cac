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

pub(crate) fn ts(t: &Option<prost_types::Timestamp>) -> Option<String> {
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
        "target_generation": a.target_generation,
        "last_heartbeat": ts(&a.last_heartbeat),
        "draining": a.draining,
        "upgrade": (a.upgrade_step != 0).then(|| serde_json::json!({
            "step": drover_proto::names::name_of::<v1::UpgradeStep>(a.upgrade_step, ""),
            "detail": a.upgrade_detail,
        })),
        "drain_requested_at": ts(&a.drain_requested_at),
        "drain_deadline_at": ts(&a.drain_deadline_at),
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
        .agents
        .into_iter()
        .map(super::read::agent)
        .collect::<Vec<_>>();
    match args.output {
        Format::Json => {
            let arr: Vec<serde_json::Value> = agents.iter().map(agent_json).collect();
            drover_proto::stdout::line(&serde_json::to_string_pretty(&arr)?)?;
        }
        Format::Table => {
            let colour = output::colour();
            output::print(&agents_table(&agents, colour), colour)?
        }
    }
    Ok(())
}

/// `5s ago`, `3m ago`, or `never`.
pub(crate) fn ago(t: &Option<prost_types::Timestamp>) -> String {
    match t.as_ref().and_then(timefmt::from_proto) {
        Some(t) => format!(
            "{} ago",
            crate::health::evaluate::short_duration(time::OffsetDateTime::now_utc() - t)
        ),
        None => "never".into(),
    }
}

/// One line per agent, fitting 80 columns: the first reason is cut to what is left
/// (`-o json` and `drover describe agent` have everything).
pub fn agents_table(agents: &[v1::AgentInfo], colour: bool) -> String {
    let mut rows: Vec<Vec<String>> = agents
        .iter()
        .map(|a| {
            let f = a.facts.clone().unwrap_or_default();
            let reason = match a.reasons.len() {
                0 => String::new(),
                1 => a.reasons[0].clone(),
                n => format!("{} (+{})", a.reasons[0], n - 1),
            };
            vec![
                a.id.clone(),
                output::clip(&f.hostname, 14),
                a.state.clone(),
                output::clip(&output::labels(&a.labels), 20),
                reason,
            ]
        })
        .collect();
    let header = ["ID", "HOSTNAME", "STATE", "LABELS", "REASON"];
    let used: usize = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
                + 2
        })
        .sum();
    let room = 80usize.saturating_sub(used).max(10);
    for r in &mut rows {
        r[4] = output::clip(&r[4], room);
    }
    output::table_coloured(&header, &rows, 2, colour)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_fits_80_columns() {
        let a = v1::AgentInfo {
            id: "0123456789abcdef".into(),
            facts: Some(v1::AgentFacts {
                hostname: "a-very-long-hostname.example.internal".into(),
                ..Default::default()
            }),
            state: "degraded".into(),
            reasons: vec![
                "runner lab-docker in backoff (verify: 500 internal server error from gitlab)"
                    .into(),
                "docker unreachable".into(),
            ],
            connected: true,
            labels: [("site".to_string(), "lab".to_string())].into(),
            ..Default::default()
        };
        let t = agents_table(&[a], false);
        for line in t.lines() {
            assert!(line.chars().count() <= 80, "{line:?} is too wide");
        }
        assert!(t.contains("degraded"));
        assert!(t.contains("runner lab"), "{t}");
        assert!(t.contains("site=lab"));
    }

    #[test]
    fn json_says_whether_the_agent_is_draining() {
        let mut a = v1::AgentInfo {
            id: "a1".into(),
            ..Default::default()
        };
        assert_eq!(agent_json(&a)["draining"], serde_json::json!(false));
        a.draining = true;
        assert_eq!(agent_json(&a)["draining"], serde_json::json!(true));
    }
}
