//! `drover jobs [--agent ID] [--runner NAME] [--state STATE] [--since DURATION] [-o json]`:
//! the fleet's recent jobs, newest first.

use drover_proto::v1;

use super::output::{self, Format};
use crate::timefmt;
use crate::tokens::parse_duration;

/// A job state to filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateArg {
    /// Running now.
    Running,
    /// Succeeded.
    Success,
    /// Failed (see the reason).
    Failed,
    /// Canceled.
    Canceled,
}

impl StateArg {
    fn wire(self) -> v1::JobState {
        match self {
            StateArg::Running => v1::JobState::Running,
            StateArg::Success => v1::JobState::Success,
            StateArg::Failed => v1::JobState::Failed,
            StateArg::Canceled => v1::JobState::Canceled,
        }
    }
}

/// Arguments of `drover jobs`.
#[derive(Debug, clap::Args)]
pub struct JobsArgs {
    /// Only this agent's jobs.
    #[arg(long)]
    pub agent: Option<String>,
    /// Only this runner's jobs.
    #[arg(long)]
    pub runner: Option<String>,
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Only jobs the controller heard of within this long (`10m`, `2h`, `7d`).
    #[arg(long, value_parser = parse_duration)]
    pub since: Option<time::Duration>,
    /// At most this many (the newest; the controller answers at most 1000).
    #[arg(long, default_value_t = 100)]
    pub limit: u32,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Format::Table)]
    pub output: Format,
}

fn time_json(t: Option<&prost_types::Timestamp>) -> serde_json::Value {
    t.and_then(timefmt::from_proto)
        .map(timefmt::rfc3339)
        .map_or(serde_json::Value::Null, Into::into)
}

/// One job as `-o json` prints it.
pub fn job_json(j: &v1::Job) -> serde_json::Value {
    serde_json::json!({
        "agent_id": j.agent_id,
        "runner": j.runner,
        "job_id": j.job_id,
        "state": j.state,
        "failure_reason": j.failure_reason,
        "started_at": time_json(j.started_at.as_ref()),
        "finished_at": time_json(j.finished_at.as_ref()),
        "duration_seconds": j.duration_seconds,
        "queue_wait_seconds": j.queue_wait_seconds,
        "updated_at": time_json(j.updated_at.as_ref()),
    })
}

/// Seconds for people (`42s`, `3m05s`, `1h02m`); `-` when unknown.
fn seconds(v: Option<f64>) -> String {
    let Some(v) = v.filter(|v| v.is_finite() && *v >= 0.0) else {
        return "-".into();
    };
    if v < 10.0 {
        return format!("{v:.1}s");
    }
    let s = v.round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// The jobs as a table for people.
pub fn jobs_table(jobs: &[v1::Job], colour: bool) -> String {
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let started = j
                .started_at
                .as_ref()
                .and_then(timefmt::from_proto)
                .map(timefmt::rfc3339)
                .unwrap_or_else(|| "-".into());
            vec![
                output::clip(&j.agent_id, 20),
                output::clip(&j.runner, 24),
                j.job_id.to_string(),
                j.state.clone(),
                if j.failure_reason.is_empty() {
                    "-".into()
                } else {
                    output::clip(&j.failure_reason, 28)
                },
                seconds(j.duration_seconds),
                seconds(j.queue_wait_seconds),
                started,
            ]
        })
        .collect();
    output::table_coloured(
        &[
            "AGENT", "RUNNER", "JOB", "STATE", "REASON", "DURATION", "QUEUED", "STARTED",
        ],
        &rows,
        3,
        colour,
    )
}

/// Prints the jobs.
pub async fn run(cli: &super::Cli, args: &JobsArgs) -> anyhow::Result<()> {
    let mut client = super::admin_client(cli).await?;
    let since = match args.since {
        None => None,
        Some(d) => Some(timefmt::to_proto(
            time::OffsetDateTime::now_utc()
                .checked_sub(d)
                .ok_or_else(|| anyhow::anyhow!("--since {d}: reaches before the year -9999"))?,
        )),
    };
    let jobs: Vec<v1::Job> = client
        .list_jobs(v1::ListJobsRequest {
            agent_id: args.agent.clone().unwrap_or_default(),
            runner: args.runner.clone().unwrap_or_default(),
            job_state: args.state.map_or(0, |s| s.wire().into()),
            since,
            limit: args.limit,
        })
        .await
        .map_err(|s| super::status_error("list jobs", s))?
        .into_inner()
        .jobs
        .into_iter()
        .map(super::read::job)
        .collect();
    match args.output {
        Format::Json => {
            let arr: Vec<serde_json::Value> = jobs.iter().map(job_json).collect();
            drover_proto::stdout::line(&serde_json::to_string_pretty(&arr)?)?;
        }
        Format::Table if jobs.is_empty() => eprintln!("no jobs"),
        Format::Table => {
            let colour = output::colour();
            output::print(&jobs_table(&jobs, colour), colour)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_and_table_show_each_field() {
        let j = v1::Job {
            agent_id: "a1".into(),
            runner: "r\u{1b}]0;x".into(),
            job_id: 42,
            job_state: v1::JobState::Failed.into(),
            state: "failed".into(),
            failure_reason: "script_failure".into(),
            started_at: Some(timefmt::to_proto(
                time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(),
            )),
            finished_at: None,
            duration_seconds: Some(125.4),
            queue_wait_seconds: None,
            updated_at: None,
        };
        let v = job_json(&j);
        assert_eq!(v["job_id"], 42);
        assert_eq!(v["state"], "failed");
        assert_eq!(v["duration_seconds"], 125.4);
        assert!(v["queue_wait_seconds"].is_null());
        assert_eq!(v["started_at"], "2023-11-14T22:13:20Z");
        let t = jobs_table(&[j], false);
        assert!(t.contains("2m05s"), "{t}");
        assert!(t.contains("script_failure"), "{t}");
        assert!(!t.contains('\u{1b}'), "{t}");
        assert_eq!(seconds(Some(3.3)), "3.3s");
        assert_eq!(seconds(Some(3700.0)), "1h01m");
        assert_eq!(seconds(Some(f64::NAN)), "-");
    }
}
