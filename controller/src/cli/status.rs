//! `drover status [-o json]`: the fleet at a glance.

use std::fmt::Write;

use drover_proto::v1;

use super::output::{self, Format};

/// Arguments of `drover status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// The summary as `-o json` prints it.
pub fn status_json(s: &v1::FleetStatusResponse) -> serde_json::Value {
    let counts: serde_json::Map<String, serde_json::Value> = s
        .counts
        .iter()
        .map(|c| (c.state.clone(), c.agents.into()))
        .collect();
    let rollout = s.rollout.clone().unwrap_or_default();
    let count = |st: &str| rollout.agents.iter().filter(|a| a.state == st).count();
    serde_json::json!({
        "agents": counts,
        "total": s.counts.iter().map(|c| c.agents).sum::<u32>(),
        "connected": s.connected,
        "rollout": {
            "generation": rollout.generation,
            "state": rollout.state,
            "reason": rollout.reason,
            "applied": count("applied"),
            "refused": count("refused"),
            "pending": rollout.agents.len() - count("applied") - count("refused"),
        },
        "problems": s.problems.iter().map(|p| serde_json::json!({
            "id": p.agent_id,
            "hostname": p.hostname,
            "state": p.state,
            "reasons": p.reasons,
        })).collect::<Vec<_>>(),
        "top_reasons": s.top_reasons.iter().map(|r| serde_json::json!({
            "reason": r.state,
            "agents": r.agents,
        })).collect::<Vec<_>>(),
        "disk": s.disk.as_ref().map(|d| crate::wire::report::disk_budgets_in(d).to_json()),
        "versions": s.versions.iter().map(|v| serde_json::json!({
            "version": v.state,
            "agents": v.agents,
        })).collect::<Vec<_>>(),
        "upgrade": s.upgrade.as_ref().map(super::upgrade::status_json),
    })
}

/// The summary for people, within 80 columns.
pub fn status_text(s: &v1::FleetStatusResponse, colour: bool) -> String {
    let mut out = String::new();
    let total: u32 = s.counts.iter().map(|c| c.agents).sum();
    let parts: Vec<String> = s
        .counts
        .iter()
        .map(|c| output::paint_state(&c.state, &format!("{} {}", c.agents, c.state), colour))
        .collect();
    let _ = writeln!(
        out,
        "Agents:   {total} ({}), {} connected",
        parts.join(", "),
        s.connected
    );
    let r = s.rollout.clone().unwrap_or_default();
    if r.generation == 0 {
        let _ = writeln!(out, "Rollout:  none (no runner specs applied)");
    } else {
        let applied = r.agents.iter().filter(|a| a.state == "applied").count();
        let refused = r.agents.iter().filter(|a| a.state == "refused").count();
        let _ = writeln!(
            out,
            "Rollout:  generation {} {}: {applied}/{} applied{}{}",
            r.generation,
            output::paint_state(&r.state, &r.state, colour),
            r.agents.len(),
            if refused > 0 {
                format!(", {refused} refused")
            } else {
                String::new()
            },
            if r.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", output::clip(&r.reason, 30))
            }
        );
    }
    if s.versions.len() > 1 {
        let parts: Vec<String> = s
            .versions
            .iter()
            .map(|v| format!("{} {}", v.agents, output::clip(&v.state, 20)))
            .collect();
        let _ = writeln!(out, "Versions: {} (skew)", parts.join(", "));
    } else if let Some(v) = s.versions.first() {
        let _ = writeln!(out, "Versions: all {}", output::clip(&v.state, 40));
    }
    if let Some(u) = &s.upgrade {
        let _ = writeln!(out, "Upgrade:  {}", super::upgrade::summary(u));
    }
    if let Some(d) = &s.disk {
        let d = crate::wire::report::disk_budgets_in(d);
        let _ = writeln!(
            out,
            "Disk:     {} agent{}: {}",
            d.agents,
            if d.agents == 1 { "" } else { "s" },
            d.summary()
        );
    }
    if s.problems.is_empty() {
        let _ = writeln!(out, "Problems: none");
        return out;
    }
    let _ = writeln!(out, "\nTop problems:");
    for t in &s.top_reasons {
        let _ = writeln!(
            out,
            "  {:>4} agent{} {}",
            t.agents,
            if t.agents == 1 { ": " } else { "s:" },
            output::clip(&t.state, 62)
        );
    }
    let _ = writeln!(out);
    let rows: Vec<Vec<String>> = s
        .problems
        .iter()
        .map(|p| {
            vec![
                p.agent_id.clone(),
                output::clip(&p.hostname, 16),
                p.state.clone(),
                output::clip(p.reasons.first().map(String::as_str).unwrap_or(""), 28),
            ]
        })
        .collect();
    out.push_str(&output::table_coloured(
        &["ID", "HOSTNAME", "STATE", "REASON"],
        &rows,
        2,
        colour,
    ));
    out
}

/// Prints the fleet summary.
pub async fn run(cli: &super::Cli, args: &StatusArgs) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    let s = client
        .fleet_status(v1::FleetStatusRequest {})
        .await
        .map_err(|s| super::status_error("fleet status", s))?
        .into_inner();
    let s = super::read::fleet_status(s);
    match args.output {
        Format::Json => {
            drover_proto::stdout::line(&serde_json::to_string_pretty(&status_json(&s))?)?
        }
        Format::Table => {
            let colour = output::colour();
            output::print(&status_text(&s, colour), colour)?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fits_80_columns() {
        let s = v1::FleetStatusResponse {
            counts: vec![
                v1::StateCount {
                    state: "healthy".into(),
                    agents: 198,
                    ..Default::default()
                },
                v1::StateCount {
                    state: "lost".into(),
                    agents: 2,
                    ..Default::default()
                },
            ],
            connected: 198,
            problems: vec![v1::Problem {
                agent_id: "0123456789abcdef".into(),
                hostname: "edge-box-with-a-long-name-17".into(),
                state: "lost".into(),
                reasons: vec!["no heartbeat: last contact 14m ago and more words".into()],
                ..Default::default()
            }],
            top_reasons: vec![v1::StateCount {
                state: "no heartbeat".into(),
                agents: 2,
                ..Default::default()
            }],
            ..Default::default()
        };
        let t = status_text(&s, false);
        assert!(
            t.contains("200 (198 healthy, 2 lost), 198 connected"),
            "{t}"
        );
        for line in t.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        let j = status_json(&s);
        assert_eq!(j["agents"]["lost"], 2);
        assert_eq!(j["problems"][0]["state"], "lost");
    }
}
