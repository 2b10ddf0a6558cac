//! `drover agent drain ID|--selector k=v... [--deadline DUR]` and
//! `drover agent undrain ID|--selector k=v...`.

use std::collections::HashMap;

use drover_proto::v1;

use super::output::{self, Format};
use crate::timefmt;
use crate::tokens::{parse_duration, parse_label};

/// Which agents: one id, or every agent whose labels match all selectors (one of the two).
#[derive(Debug, clap::Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// The agent id (from `drover agents`); or give `--selector`.
    pub id: Option<String>,
    /// Every agent with this label, `key=value`; repeatable (all must match).
    #[arg(long = "selector", value_parser = parse_label)]
    pub selector: Vec<(String, String)>,
}

impl Which {
    fn wire(&self) -> v1::AgentSelection {
        v1::AgentSelection {
            id: self.id.clone().unwrap_or_default(),
            selector: self.selector.iter().cloned().collect::<HashMap<_, _>>(),
        }
    }

    fn describe(&self) -> String {
        match &self.id {
            Some(id) => format!("agent {id}"),
            None => {
                let s: Vec<String> = self
                    .selector
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                format!("agents matching {}", s.join(","))
            }
        }
    }
}

/// Arguments of `drover agent drain`.
#[derive(Debug, clap::Args)]
pub struct DrainArgs {
    #[command(flatten)]
    pub which: Which,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Cancel the jobs still running after this long, e.g. `90s`, `30m`, `2h` (their
    /// traces say the agent is draining); without it running jobs finish.
    #[arg(long)]
    pub deadline: Option<String>,
}

/// Arguments of `drover agent undrain`.
#[derive(Debug, clap::Args)]
pub struct UndrainArgs {
    #[command(flatten)]
    pub which: Which,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// `--deadline` in seconds (0 = none); an error names the flag and the value.
pub fn deadline_seconds(deadline: Option<&str>) -> anyhow::Result<u64> {
    match deadline {
        None => Ok(0),
        Some(s) => {
            let d = parse_duration(s).map_err(|e| anyhow::anyhow!("--deadline {s}: {e}"))?;
            Ok(u64::try_from(d.whole_seconds()).unwrap_or(0))
        }
    }
}

/// `drover agent drain`.
pub async fn drain(cli: &super::Cli, a: &DrainArgs) -> anyhow::Result<()> {
    let deadline_seconds = deadline_seconds(a.deadline.as_deref())?;
    let mut client = super::admin_client(cli).await?;
    let what = format!("drain {}", a.which.describe());
    let out = client
        .drain_agents(v1::DrainAgentsRequest {
            agents: Some(a.which.wire()),
            deadline_seconds,
        })
        .await
        .map_err(|s| super::change_error(&what, s, "`drover agents`"))?
        .into_inner();
    print(&out.agents, a.output, "drained")
}

/// `drover agent undrain`.
pub async fn undrain(cli: &super::Cli, a: &UndrainArgs) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    let what = format!("undrain {}", a.which.describe());
    let out = client
        .undrain_agents(v1::UndrainAgentsRequest {
            agents: Some(a.which.wire()),
        })
        .await
        .map_err(|s| super::change_error(&what, s, "`drover agents`"))?
        .into_inner();
    print(&out.agents, a.output, "undrained")
}

fn deadline_text(a: &v1::DrainedAgent) -> String {
    a.deadline_at
        .as_ref()
        .and_then(timefmt::from_proto)
        .map(timefmt::rfc3339)
        .unwrap_or_default()
}

/// One JSON object per agent: `id`, `hostname`, `connected`, `changed`, `deadline_at`
/// (RFC 3339 or null).
fn json(agents: &[v1::DrainedAgent]) -> serde_json::Value {
    serde_json::Value::Array(
        agents
            .iter()
            .map(|a| {
                let deadline = deadline_text(a);
                serde_json::json!({
                    "id": a.agent_id,
                    "hostname": a.hostname,
                    "connected": a.connected,
                    "changed": a.changed,
                    "deadline_at": (!deadline.is_empty()).then_some(deadline),
                })
            })
            .collect(),
    )
}

fn print(agents: &[v1::DrainedAgent], format: Format, done: &str) -> anyhow::Result<()> {
    match format {
        Format::Json => drover_proto::stdout::line(&serde_json::to_string_pretty(&json(agents))?)?,
        Format::Table => {
            let rows: Vec<Vec<String>> = agents
                .iter()
                .map(|a| {
                    let result = match (a.changed, done) {
                        (false, _) => "not drained (unchanged)".to_string(),
                        (true, "drained") => match deadline_text(a) {
                            d if d.is_empty() => "drained (running jobs finish)".to_string(),
                            d => format!("drained (jobs canceled at {d})"),
                        },
                        (true, _) => "undrained".to_string(),
                    };
                    let sent = if a.connected {
                        "now"
                    } else {
                        "on next connection"
                    };
                    vec![
                        a.agent_id.clone(),
                        a.hostname.clone(),
                        result,
                        sent.to_string(),
                    ]
                })
                .collect();
            output::print(
                &output::table(&["ID", "HOSTNAME", "RESULT", "AGENT TOLD"], &rows),
                false,
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_or_selectors_but_not_both_nor_none() {
        use clap::Parser;
        #[derive(Debug, clap::Parser)]
        struct T {
            #[command(flatten)]
            which: Which,
        }
        assert!(T::try_parse_from(["t", "a1"]).is_ok());
        assert!(T::try_parse_from(["t", "--selector", "a=b", "--selector", "c=d"]).is_ok());
        let none = T::try_parse_from(["t"]).unwrap_err().to_string();
        assert!(none.contains("<ID|--selector <SELECTOR>>"), "{none}");
        let both = T::try_parse_from(["t", "a1", "--selector", "a=b"])
            .unwrap_err()
            .to_string();
        assert!(both.contains("cannot be used with"), "{both}");
    }

    #[test]
    fn a_bad_deadline_names_the_flag_and_value() {
        assert_eq!(deadline_seconds(None).unwrap(), 0);
        assert_eq!(deadline_seconds(Some("2m")).unwrap(), 120);
        let e = deadline_seconds(Some("2x")).unwrap_err().to_string();
        assert!(e.starts_with("--deadline 2x: "), "{e}");
        assert!(deadline_seconds(Some("0s")).is_err());
    }

    #[test]
    fn json_lists_what_was_done() {
        let v = json(&[v1::DrainedAgent {
            agent_id: "a1".into(),
            hostname: "box".into(),
            connected: true,
            deadline_at: Some(timefmt::to_proto(
                time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            )),
            changed: true,
        }]);
        assert_eq!(v[0]["id"], "a1");
        assert_eq!(v[0]["deadline_at"], "2023-11-14T22:13:20Z");
        assert_eq!(v[0]["changed"], true);
    }
}
