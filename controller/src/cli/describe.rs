//! `drover describe agent ID [-o json]`: every fact, host health, units, recent events and
//! jobs of one agent.

use std::fmt::Write;

use drover_proto::v1;

use super::agents::{agent_json, ago, ts};
use super::events::{event_json, event_line};
use super::output::{self, Format};

/// `drover describe ...`
#[derive(Debug, clap::Subcommand)]
pub enum DescribeCommand {
    /// One agent.
    Agent(DescribeAgentArgs),
}

/// Arguments of `drover describe agent`.
#[derive(Debug, clap::Args)]
pub struct DescribeAgentArgs {
    /// The agent id.
    pub id: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

fn bytes_pair(free: u64, total: u64) -> String {
    if total == 0 {
        return "not reported".into();
    }
    format!(
        "{} free of {}",
        crate::health::evaluate::bytes(free),
        crate::health::evaluate::bytes(total)
    )
}

/// An event of this agent: time, kind, runner and message (no agent id).
fn short_line(e: &v1::Event) -> String {
    let line = event_line(e);
    // `event_line` is `time  agent  kind ...`; drop the agent column.
    match line.split_once("  ") {
        Some((at, rest)) => match rest.split_once("  ") {
            Some((_agent, tail)) => format!("{at}  {tail}"),
            None => line.clone(),
        },
        None => line.clone(),
    }
}

/// The description for people.
pub fn describe_text(
    a: &v1::AgentInfo,
    events: &[v1::Event],
    jobs: &[v1::Event],
    colour: bool,
) -> String {
    let f = a.facts.clone().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "{:<18}{}", "ID:", output::clean(&a.id));
    let _ = writeln!(out, "{:<18}{}", "Hostname:", output::clean(&f.hostname));
    let state = output::clean(&a.state);
    let _ = writeln!(
        out,
        "{:<18}{}",
        "State:",
        output::paint_state(&state, &state, colour)
    );
    // Values an agent reports are shown, never obeyed, by the terminal.
    let mut kv = |k: &str, v: String| {
        let _ = writeln!(out, "{:<18}{}", format!("{k}:"), output::clean(&v));
    };
    kv("Labels", output::labels(&a.labels));
    kv("Connected", if a.connected { "yes" } else { "no" }.into());
    kv(
        "Last seen",
        format!(
            "{} ({})",
            ts(&a.last_seen).unwrap_or_else(|| "never".into()),
            ago(&a.last_seen)
        ),
    );
    kv("Last heartbeat", ago(&a.last_heartbeat));
    kv(
        "Draining",
        if a.draining {
            "yes (takes no new jobs)"
        } else {
            "no"
        }
        .to_string(),
    );
    if a.drain_requested_at.is_some() {
        let deadline = ts(&a.drain_deadline_at).map_or_else(
            || "running jobs finish".to_string(),
            |d| format!("jobs canceled at {d}"),
        );
        kv(
            "Drain",
            format!(
                "asked at {} ({deadline})",
                ts(&a.drain_requested_at).unwrap_or_default()
            ),
        );
    }
    kv(
        "Generation",
        format!("{} (target {})", a.applied_generation, a.target_generation),
    );
    kv("IPs", f.ips.join(", "));
    kv("Arch/OS", format!("{} / {} {}", f.arch, f.os, f.kernel));
    kv("Agent version", f.agent_version.clone());
    kv("System id", f.system_id.clone());
    kv("Enrolled", ts(&a.enrolled_at).unwrap_or_default());
    kv("Cert expires", ts(&a.cert_not_after).unwrap_or_default());
    match &a.host {
        Some(h) => {
            kv(
                "Docker",
                if h.docker_reachable {
                    format!("reachable {}", h.docker_version)
                } else {
                    "unreachable".into()
                },
            );
            kv(
                "Disk (docker)",
                bytes_pair(h.disk_free_bytes, h.disk_total_bytes),
            );
            kv(
                "Disk (builds)",
                bytes_pair(h.builds_disk_free_bytes, h.builds_disk_total_bytes),
            );
            kv(
                "Disk budgets",
                h.disk_budgets
                    .as_ref()
                    .map(|b| crate::wire::report::disk_budgets_in(b).summary())
                    .unwrap_or_else(|| "not reported".into()),
            );
            kv(
                "Memory",
                bytes_pair(h.memory_available_bytes, h.memory_total_bytes),
            );
            // Probes report memory with load and skew; without it they were not sent.
            let probed = h.memory_total_bytes > 0;
            kv(
                "Load (1 min)",
                if probed {
                    format!("{:.2}", h.load1)
                } else {
                    "not reported".into()
                },
            );
            kv(
                "Clock skew",
                if probed {
                    format!("{:.1} s", h.clock_skew_seconds)
                } else {
                    "not reported".into()
                },
            );
        }
        None => kv("Host", "no heartbeat since the controller started".into()),
    }
    if a.reasons.is_empty() {
        let _ = writeln!(out, "Reasons:          none");
    } else {
        let _ = writeln!(out, "Reasons:");
        for r in &a.reasons {
            let _ = writeln!(out, "  - {}", output::clip(r, 76));
        }
    }
    let _ = writeln!(out, "\nRunner units:");
    if a.runners.is_empty() {
        let _ = writeln!(out, "  none");
    } else {
        let rows: Vec<Vec<String>> = a
            .runners
            .iter()
            .map(|r| {
                vec![
                    output::clip(&r.name, 20),
                    if r.state.is_empty() {
                        "unknown".into()
                    } else {
                        r.state.clone()
                    },
                    format!("{}/{}/{}", r.jobs_running, r.jobs_succeeded, r.jobs_failed),
                    output::clip(&r.last_error, 30),
                ]
            })
            .collect();
        for line in output::table(&["NAME", "STATE", "JOBS R/OK/F", "LAST ERROR"], &rows).lines() {
            let _ = writeln!(out, "  {line}");
        }
    }
    let _ = writeln!(out, "\nRecent jobs:");
    if jobs.is_empty() {
        let _ = writeln!(out, "  none reported");
    }
    for j in jobs {
        let _ = writeln!(out, "  {}", output::clip(&short_line(j), 78));
    }
    let _ = writeln!(out, "\nRecent events:");
    if events.is_empty() {
        let _ = writeln!(out, "  none");
    }
    for e in events {
        let _ = writeln!(out, "  {}", output::clip(&short_line(e), 78));
    }
    out
}

/// Describes one agent.
pub async fn run(cli: &super::Cli, cmd: &DescribeCommand) -> anyhow::Result<()> {
    let DescribeCommand::Agent(args) = cmd;
    let mut client = super::admin_client(cli).await?;
    let agent = client
        .get_agent(v1::GetAgentRequest {
            id: args.id.clone(),
        })
        .await
        .map_err(|s| super::status_error(&format!("describe agent {}", args.id), s))?
        .into_inner();
    let agent = super::read::agent(agent);
    let list = |kind: &str, limit| v1::ListEventsRequest {
        agent_id: args.id.clone(),
        kind: kind.into(),
        limit,
        ..Default::default()
    };
    let events = client
        .list_events(list("", 20))
        .await
        .map_err(|s| super::status_error("list events", s))?
        .into_inner()
        .events
        .into_iter()
        .map(super::read::event)
        .collect::<Vec<_>>();
    let jobs = client
        .list_events(list("job", 10))
        .await
        .map_err(|s| super::status_error("list jobs", s))?
        .into_inner()
        .events
        .into_iter()
        .map(super::read::event)
        .collect::<Vec<_>>();
    match args.output {
        Format::Json => {
            let mut v = agent_json(&agent);
            let host = agent.host.clone().unwrap_or_default();
            v["host"] = match &agent.host {
                Some(_) => serde_json::json!({
                    "docker_reachable": host.docker_reachable,
                    "docker_version": host.docker_version,
                    "disk_free_bytes": host.disk_free_bytes,
                    "disk_total_bytes": host.disk_total_bytes,
                    "builds_disk_free_bytes": host.builds_disk_free_bytes,
                    "builds_disk_total_bytes": host.builds_disk_total_bytes,
                    "memory_available_bytes": host.memory_available_bytes,
                    "memory_total_bytes": host.memory_total_bytes,
                    "load1": host.load1,
                    "clock_skew_seconds": host.clock_skew_seconds,
                    "disk_budgets": host
                        .disk_budgets
                        .as_ref()
                        .map(|b| crate::wire::report::disk_budgets_in(b).to_json()),
                }),
                None => serde_json::Value::Null,
            };
            v["units"] = agent
                .runners
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "name": r.name,
                        "state": r.state,
                        "last_error": r.last_error,
                        "jobs_running": r.jobs_running,
                        "jobs_succeeded": r.jobs_succeeded,
                        "jobs_failed": r.jobs_failed,
                        "last_gitlab_contact": ts(&r.last_gitlab_contact),
                    })
                })
                .collect::<Vec<_>>()
                .into();
            v["events"] = events.iter().map(event_json).collect::<Vec<_>>().into();
            v["jobs"] = jobs.iter().map(event_json).collect::<Vec<_>>().into();
            drover_proto::stdout::line(&serde_json::to_string_pretty(&v)?)?;
        }
        Format::Table => {
            let colour = output::colour();
            output::print(&describe_text(&agent, &events, &jobs, colour), colour)?
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_fits_80_columns_and_drops_the_agent_column() {
        let a = v1::AgentInfo {
            id: "0123456789abcdef".into(),
            state: "degraded".into(),
            reasons: vec!["docker unreachable".into()],
            host: Some(v1::HostHealth::default()),
            ..Default::default()
        };
        let ev = v1::Event {
            id: 1,
            at: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            agent_id: "0123456789abcdef".into(),
            kind: "agent-state".into(),
            message: "healthy -> degraded: docker unreachable, and a long tail of words".into(),
            ..Default::default()
        };
        let t = describe_text(&a, std::slice::from_ref(&ev), &[], false);
        for line in t.lines() {
            assert!(line.chars().count() <= 80, "{line:?}");
        }
        assert!(t.contains("  11-14 22:13:20  agent-state"), "{t}");
        assert!(t.contains("Load (1 min):     not reported"), "{t}");
        assert!(t.contains("Draining:         no"), "{t}");
        let drained = v1::AgentInfo {
            draining: true,
            ..a
        };
        let t = describe_text(&drained, &[], &[], false);
        assert!(
            t.contains("Draining:         yes (takes no new jobs)"),
            "{t}"
        );
    }
}
