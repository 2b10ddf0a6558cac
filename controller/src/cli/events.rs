//! `drover events [--follow] [--agent ID] [--since DURATION] [-o json]`.

use std::time::Duration;

use drover_proto::v1;

use super::output::{self, Format};
use crate::timefmt;
use crate::tokens::parse_duration;

/// Arguments of `drover events`.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Only this agent's events.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only events newer than this (`10m`, `2h`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<time::Duration>,
    /// At most this many (the newest).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Output format (`json` with --follow: one object per line).
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

/// One event as `-o json` prints it.
pub fn event_json(e: &v1::Event) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": e.id,
        "at": e.at.as_ref().and_then(timefmt::from_proto).map(timefmt::rfc3339),
        "agent_id": e.agent_id,
        "kind": e.kind,
        "runner": e.runner,
        "message": e.message,
    });
    if e.kind == "job" {
        v["job_id"] = e.job_id.into();
        v["job_state"] = e.job_state.clone().into();
    }
    v
}

/// One event as a line for people (time, agent, kind, runner and message).
pub fn event_line(e: &v1::Event) -> String {
    let at =
        e.at.as_ref()
            .and_then(timefmt::from_proto)
            .map(|t| {
                let s = timefmt::rfc3339(t);
                s.get(5..19).map(|x| x.replace('T', " ")).unwrap_or(s)
            })
            .unwrap_or_default();
    let who = if e.agent_id.is_empty() {
        "fleet".to_string()
    } else {
        e.agent_id.clone()
    };
    let runner = if e.runner.is_empty() {
        String::new()
    } else {
        format!("[{}] ", e.runner)
    };
    output::clip(
        &format!("{at}  {who:<16}  {:<18} {runner}{}", e.kind, e.message),
        200,
    )
}

/// Prints events, and with --follow keeps polling for new ones.
pub async fn run(cli: &super::Cli, args: &EventsArgs) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    let since = match args.since {
        None => None,
        Some(d) => Some(timefmt::to_proto(
            time::OffsetDateTime::now_utc()
                .checked_sub(d)
                .ok_or_else(|| anyhow::anyhow!("--since {d}: reaches before the year -9999"))?,
        )),
    };
    let mut req = v1::ListEventsRequest {
        agent_id: args.agent.clone().unwrap_or_default(),
        since,
        after_id: 0,
        limit: args.limit,
        kind: String::new(),
    };
    let mut first = true;
    loop {
        let events = client
            .list_events(req.clone())
            .await
            .map_err(|s| super::status_error("list events", s))?
            .into_inner()
            .events
            .into_iter()
            .map(super::read::event)
            .collect::<Vec<_>>();
        if let Some(last) = events.last() {
            req.after_id = last.id;
        }
        match (args.output, args.follow) {
            (Format::Json, false) => {
                let arr: Vec<serde_json::Value> = events.iter().map(event_json).collect();
                drover_proto::stdout::line(&serde_json::to_string_pretty(&arr)?)?;
            }
            (Format::Json, true) => {
                for e in &events {
                    drover_proto::stdout::line(&event_json(e).to_string())?;
                }
            }
            (Format::Table, _) => {
                if first && events.is_empty() && !args.follow {
                    eprintln!("no events");
                }
                for e in &events {
                    output::print(&format!("{}\n", event_line(e)), false)?;
                }
            }
        }
        if !args.follow {
            return Ok(());
        }
        first = false;
        req.limit = 1000;
        use std::io::Write;
        let _ = std::io::stdout().flush();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
    }
}
