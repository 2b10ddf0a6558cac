//! `drover-agent status`: the fleet-mode runner units, like `systemctl status`, from the
//! `status.json` the running agent rewrites every few seconds, and the disk budgets (builds
//! volumes, pulled images, local cache) from `disk.json`, which agents of both modes
//! rewrite after each collection (a standalone agent has only the latter).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::control::connection::{self, Connection};
use crate::disk::DiskReport;
use crate::fleet::report::{self, Report, UnitReport};

/// A file older than this is stale (the agent rewrites it every 5 s).
pub const STALE_AFTER: Duration = Duration::from_secs(30);

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// Arguments of `drover-agent status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// The state dir of the agent to show.
    #[arg(
        long,
        default_value = "/var/lib/drover-agent",
        env = "DROVER_AGENT_STATE_DIR"
    )]
    pub state_dir: PathBuf,
    /// `text` (like systemctl status) or `json`.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: Format,
}

/// The report with what the reader concluded about it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shown {
    #[serde(flatten)]
    pub report: Report,
    /// Why the file cannot be current (the agent is not running), if so.
    pub stale: Option<String>,
    /// The disk budgets as of the agent's last collection.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskReport>,
    /// The controller the agent is connected to (`controller.json` of the same process).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection: Option<Connection>,
}

/// Reads `<state_dir>/status.json` and says whether it is stale.
pub fn read(state_dir: &Path, now: OffsetDateTime) -> anyhow::Result<Shown> {
    let path = report::status_file(state_dir);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "read {} (is drover-agent running in fleet mode with this state dir?)",
            path.display()
        )
    })?;
    let report: Report =
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
    let stale = staleness(&report, now, pid_alive(report.pid));
    let disk = crate::disk::report::read(state_dir)?;
    // A file another process wrote (an earlier run) says nothing about this one.
    let connection = connection::read(state_dir)?.filter(|c| c.pid == report.pid);
    Ok(Shown {
        report,
        stale,
        disk,
        connection,
    })
}

fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

/// `Some(why)` when the report cannot describe a running agent.
pub fn staleness(report: &Report, now: OffsetDateTime, pid_alive: bool) -> Option<String> {
    let written = OffsetDateTime::parse(&report.written_at, &Rfc3339).ok();
    let age = written.map(|w| now - w);
    if !pid_alive {
        return Some(format!(
            "the agent (pid {}) is not running; last status from {}",
            report.pid, report.written_at
        ));
    }
    match age {
        None => Some(format!("unreadable written_at {:?}", report.written_at)),
        Some(a) if a > time::Duration::try_from(STALE_AFTER).unwrap_or(time::Duration::ZERO) => {
            Some(format!(
                "status not updated for {}s (last {}); the agent may be hung",
                a.whole_seconds(),
                report.written_at
            ))
        }
        Some(_) => None,
    }
}

/// Runs the subcommand.
pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let shown = match read(&args.state_dir, OffsetDateTime::now_utc()) {
        Ok(s) => s,
        // A standalone agent writes no status.json, only disk.json.
        Err(e) => match crate::disk::report::read(&args.state_dir)? {
            Some(disk) => {
                match args.output {
                    Format::Json => drover_proto::stdout::line(&serde_json::to_string_pretty(
                        &serde_json::json!({ "disk": disk }),
                    )?)?,
                    Format::Text => {
                        let mut out = String::new();
                        if !pid_alive(disk.pid) {
                            out.push_str(&format!(
                                "WARNING: stale status: the agent (pid {}) is not running\n",
                                disk.pid
                            ));
                        }
                        out.push_str(&crate::disk::report::render(&disk));
                        drover_proto::stdout::write(&out)?
                    }
                }
                return Ok(());
            }
            None => return Err(e),
        },
    };
    match args.output {
        Format::Json => drover_proto::stdout::line(&serde_json::to_string_pretty(&shown)?)?,
        Format::Text => {
            let color = std::io::IsTerminal::is_terminal(&std::io::stdout());
            drover_proto::stdout::write(&render(&shown, OffsetDateTime::now_utc(), color))?;
        }
    }
    Ok(())
}

fn ago(t: &str, now: OffsetDateTime) -> String {
    let Ok(at) = OffsetDateTime::parse(t, &Rfc3339) else {
        return t.to_string();
    };
    let s = (now - at).whole_seconds().max(0);
    let rel = match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}min ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{} days ago", s / 86_400),
    };
    format!("{t}; {rel}")
}

fn dot(u: &UnitReport, color: bool) -> String {
    if !color {
        return "●".into();
    }
    let code = match u.state.as_str() {
        "running" => "32",
        "starting" | "backoff" | "waiting-for-docker" | "draining" => "33",
        "stopped" if u.last_error.is_none() => "0",
        _ => "31",
    };
    format!("\x1b[{code}m●\x1b[0m")
}

/// The text form: a header, then a `●` block per unit.
pub fn render(shown: &Shown, now: OffsetDateTime, color: bool) -> String {
    let r = &shown.report;
    let mut out = String::new();
    out.push_str(&format!(
        "agent {}: generation {}, docker {}{}\n",
        r.agent_id,
        r.applied_generation,
        match (r.docker_reachable, &r.docker_version) {
            (true, Some(v)) => format!("{v} reachable"),
            (true, None) => "reachable".to_string(),
            (false, _) => "unreachable".to_string(),
        },
        if r.draining { ", draining" } else { "" }
    ));
    if let Some(s) = &shown.stale {
        out.push_str(&format!("WARNING: stale status: {s}\n"));
    }
    if let Some(c) = &shown.connection {
        out.push_str(&render_connection(c, now));
    }
    if let Some(x) = &r.last_refusal {
        out.push_str(&format!("last refused: {x}\n"));
    }
    if r.units.is_empty() {
        out.push_str("no runner units (no generation applied yet)\n");
    }
    for u in &r.units {
        out.push('\n');
        out.push_str(&format!("{} {} - runner unit\n", dot(u, color), u.name));
        out.push_str(&format!(
            "       State: {} since {}\n",
            u.state,
            ago(&u.since, now)
        ));
        if let Some(e) = &u.last_error {
            out.push_str(&format!("  Last error: {e}\n"));
        }
        out.push_str(&format!(
            "       Token: gitlab runner {}, expires {}\n",
            u.gitlab_runner_id,
            u.token_expires_at.as_deref().unwrap_or("never")
        ));
        out.push_str(&format!(
            "        Jobs: {} running, {} succeeded, {} failed, {} canceled\n",
            u.jobs_running, u.jobs_succeeded, u.jobs_failed, u.jobs_canceled
        ));
        if let Some(c) = &u.last_gitlab_contact {
            out.push_str(&format!("     Contact: {}\n", ago(c, now)));
        }
        if !u.log.is_empty() {
            out.push('\n');
            for l in &u.log {
                out.push_str(&format!("  {l}\n"));
            }
        }
    }
    if let Some(d) = &shown.disk {
        out.push('\n');
        out.push_str(&crate::disk::report::render(d));
    }
    out
}

/// `controller: URL (ADDR), connected since ...` or `controller: disconnected since ...`.
fn render_connection(c: &Connection, now: OffsetDateTime) -> String {
    match (&c.controller, &c.address) {
        (Some(url), address) => format!(
            "controller: {url}{}{}, connected since {}\n",
            address
                .as_ref()
                .map(|a| format!(" ({a})"))
                .unwrap_or_default(),
            if c.preferred {
                ""
            } else {
                ", failed over from the preferred controller"
            },
            ago(&c.since, now)
        ),
        (None, _) => format!(
            "controller: disconnected since {}{}\n",
            ago(&c.since, now),
            c.last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> OffsetDateTime {
        OffsetDateTime::parse(s, &Rfc3339).unwrap()
    }

    fn sample() -> Report {
        Report {
            agent_id: "ag-1".into(),
            pid: 42,
            written_at: "2026-11-25T17:00:00Z".into(),
            applied_generation: 3,
            last_refusal: None,
            docker_reachable: true,
            docker_version: Some("20.10.24".into()),
            docker_root_dir: None,
            draining: false,
            units: vec![UnitReport {
                name: "lab".into(),
                state: "degraded".into(),
                since: "2026-11-25T16:55:00Z".into(),
                last_error: Some("gitlab answered 403 on request job".into()),
                gitlab_runner_id: 11,
                token_expires_at: Some("2026-12-01T00:00:00Z".into()),
                token_rotate_at: None,
                token_rotation_error: None,
                jobs_running: 0,
                jobs_succeeded: 4,
                jobs_failed: 1,
                jobs_canceled: 0,
                last_gitlab_contact: Some("2026-11-25T16:54:30Z".into()),
                log: vec!["2026-11-25T16:55:00Z running -> degraded".into()],
            }],
        }
    }

    #[test]
    fn renders_like_systemctl_status() {
        let shown = Shown {
            report: sample(),
            stale: None,
            disk: None,
            connection: None,
        };
        let text = render(&shown, t("2026-11-25T17:00:05Z"), false);
        let want = "\
agent ag-1: generation 3, docker 20.10.24 reachable

● lab - runner unit
       State: degraded since 2026-11-25T16:55:00Z; 5min ago
  Last error: gitlab answered 403 on request job
       Token: gitlab runner 11, expires 2026-12-01T00:00:00Z
        Jobs: 0 running, 4 succeeded, 1 failed, 0 canceled
     Contact: 2026-11-25T16:54:30Z; 5min ago

  2026-11-25T16:55:00Z running -> degraded
";
        assert_eq!(text, want);
        assert!(!text.contains('\x1b'));
        assert!(render(&shown, t("2026-11-25T17:00:05Z"), true).contains("\x1b[31m●"));
    }

    #[test]
    fn stale_when_the_agent_is_gone_or_silent() {
        let r = sample();
        assert_eq!(staleness(&r, t("2026-11-25T17:00:10Z"), true), None);
        let s = staleness(&r, t("2026-11-25T17:05:00Z"), true).unwrap();
        assert!(s.contains("not updated for 300s"), "{s}");
        let s = staleness(&r, t("2026-11-25T17:00:10Z"), false).unwrap();
        assert!(s.contains("pid 42") && s.contains("not running"), "{s}");
        let text = render(
            &Shown {
                report: r,
                stale: Some(s),
                disk: None,
                connection: None,
            },
            t("2026-11-25T17:00:10Z"),
            false,
        );
        assert!(text.contains("WARNING: stale status"), "{text}");
    }

    #[test]
    fn shows_the_connected_controller_or_why_it_is_not() {
        let mut c = Connection {
            pid: 42,
            controller: Some("https://c2:7443".into()),
            address: Some("10.0.0.2:7443".into()),
            preferred: false,
            since: "2026-11-25T16:59:00Z".into(),
            last_error: None,
        };
        let mut shown = Shown {
            report: sample(),
            stale: None,
            disk: None,
            connection: Some(c.clone()),
        };
        let text = render(&shown, t("2026-11-25T17:00:00Z"), false);
        assert!(
            text.contains(
                "controller: https://c2:7443 (10.0.0.2:7443), failed over from the preferred \
                 controller, connected since 2026-11-25T16:59:00Z; 60s ago\n"
            ),
            "{text}"
        );
        c.controller = None;
        c.address = None;
        c.last_error = Some("connection refused".into());
        shown.connection = Some(c);
        let text = render(&shown, t("2026-11-25T17:00:00Z"), false);
        assert!(
            text.contains("controller: disconnected since 2026-11-25T16:59:00Z; 60s ago; last error: connection refused"),
            "{text}"
        );
        // The JSON form carries it too.
        let json = serde_json::to_value(&shown).unwrap();
        assert_eq!(json["connection"]["last_error"], "connection refused");

        // A controller.json of another process is not shown.
        let dir = tempfile::tempdir().unwrap();
        let mut report = sample();
        report.pid = std::process::id();
        report::write(&report::status_file(dir.path()), &report).unwrap();
        let mut other = shown.connection.clone().unwrap();
        other.pid = 1;
        connection::write(dir.path(), &other).unwrap();
        assert_eq!(
            read(dir.path(), t("2026-11-25T17:00:00Z"))
                .unwrap()
                .connection,
            None
        );
        other.pid = std::process::id();
        connection::write(dir.path(), &other).unwrap();
        assert_eq!(
            read(dir.path(), t("2026-11-25T17:00:00Z"))
                .unwrap()
                .connection,
            Some(other)
        );
    }

    #[test]
    fn missing_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let e = format!(
            "{:#}",
            read(dir.path(), OffsetDateTime::now_utc()).unwrap_err()
        );
        assert!(e.contains("status.json") && e.contains("fleet mode"), "{e}");
    }
}
