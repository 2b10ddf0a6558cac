//! The status pages as pure functions of what they show (tested without a server).

use std::fmt::Write;

use time::OffsetDateTime;

use super::fleet_jobs::FleetJobs;
use super::html::{badge, esc, page, table, url_enc};
use crate::fleet::progress::{AgentRolloutState, RolloutStatus};
use crate::health::report::{RunnerStatus, UnitState};
use crate::health::{AgentView, State};
use crate::store::EventRecord;
use crate::timefmt;

/// Seconds between refreshes of every page.
pub const REFRESH_SECS: u32 = 10;

/// The agents filter of the fleet page (`?state=lost&label=site=lab`).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Filter {
    /// Only this state (empty = all).
    #[serde(default)]
    pub state: String,
    /// Only agents with this label, `key=value` or just `key` (empty = all).
    #[serde(default)]
    pub label: String,
    /// The access token, when given in the query (kept on links).
    #[serde(default)]
    pub token: Option<String>,
}

impl Filter {
    /// Whether `v` passes.
    pub fn matches(&self, v: &AgentView) -> bool {
        let state_ok = self.state.is_empty() || v.eval.state.as_str() == self.state;
        let label_ok = match self.label.trim().split_once('=') {
            _ if self.label.trim().is_empty() => true,
            Some((k, val)) => v.record.labels.get(k.trim()) == Some(&val.trim().to_string()),
            None => v.record.labels.contains_key(self.label.trim()),
        };
        state_ok && label_ok
    }
}

/// `?token=...` (or `&token=...` when `more`) for links, when the token came in the query.
fn token_param(token: Option<&str>, first: bool) -> String {
    match token {
        Some(t) => format!("{}token={}", if first { "?" } else { "&" }, url_enc(t)),
        None => String::new(),
    }
}

fn when(t: Option<OffsetDateTime>, now: OffsetDateTime) -> String {
    match t {
        Some(t) => format!(
            "<span title=\"{}\">{} ago</span>",
            esc(&timefmt::rfc3339(t)),
            esc(&crate::health::evaluate::short_duration(now - t))
        ),
        None => "<span class=\"muted\">never</span>".into(),
    }
}

fn reasons(v: &[String]) -> String {
    if v.is_empty() {
        return String::new();
    }
    let mut out = String::from("<ul class=\"reasons\">");
    for r in v {
        let _ = write!(out, "<li>{}</li>", esc(r));
    }
    out.push_str("</ul>");
    out
}

fn labels(v: &AgentView) -> String {
    v.record
        .labels
        .iter()
        .map(|(k, val)| format!("<span class=\"mono\">{}={}</span>", esc(k), esc(val)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The fleet page: summary cards, the filter form, the agents table and the jobs panel
/// with its charts.
pub fn fleet(
    views: &[AgentView],
    rollout: &RolloutStatus,
    jobs: &FleetJobs,
    filter: &Filter,
    now: OffsetDateTime,
) -> String {
    let tok = filter.token.as_deref();
    let mut body = String::from("<div class=\"cards\" id=\"summary\">");
    let _ = write!(
        body,
        "<a class=\"card\" href=\"/{}\"><div class=\"n\">{}</div><div class=\"l\">agents</div></a>",
        token_param(tok, true),
        views.len()
    );
    for s in State::ALL {
        let n = views.iter().filter(|v| v.eval.state == s).count();
        let _ = write!(
            body,
            "<a class=\"card\" href=\"/?state={s}{}\" id=\"count-{s}\"><div class=\"n\">{n}</div><div class=\"l\">{}</div></a>",
            token_param(tok, false),
            badge(s.as_str())
        );
    }
    let connected = views.iter().filter(|v| v.connected).count();
    let _ = write!(
        body,
        "<div class=\"card\"><div class=\"n\">{connected}</div><div class=\"l\">connected</div></div>"
    );
    let rollout_text = if rollout.generation == 0 {
        "none".to_string()
    } else {
        let applied = rollout
            .agents
            .iter()
            .filter(|a| a.state == AgentRolloutState::Applied)
            .count();
        format!(
            "generation {} {} ({applied}/{} applied)",
            rollout.generation,
            rollout.state_name(),
            rollout.agents.len()
        )
    };
    let _ = write!(
        body,
        "<div class=\"card\"><div class=\"n\" style=\"font-size:16px;padding-top:6px\">{}</div><div class=\"l\">rollout</div></div></div>",
        esc(&rollout_text)
    );

    body.push_str("<form method=\"get\" action=\"/\">State <select name=\"state\"><option value=\"\">all</option>");
    for s in State::ALL {
        let sel = if filter.state == s.as_str() {
            " selected"
        } else {
            ""
        };
        let _ = write!(body, "<option value=\"{s}\"{sel}>{s}</option>");
    }
    let _ = write!(
        body,
        "</select> Label <input name=\"label\" placeholder=\"key=value\" value=\"{}\">",
        esc(&filter.label)
    );
    if let Some(t) = tok {
        let _ = write!(
            body,
            "<input type=\"hidden\" name=\"token\" value=\"{}\">",
            esc(t)
        );
    }
    body.push_str("<button type=\"submit\">Filter</button></form>");

    let shown: Vec<&AgentView> = views.iter().filter(|v| filter.matches(v)).collect();
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|v| {
            vec![
                format!(
                    "<a class=\"mono\" href=\"/agents/{}{}\">{}</a>",
                    url_enc(&v.record.id),
                    token_param(tok, true),
                    esc(&v.record.id)
                ),
                esc(&v.record.facts.hostname),
                state_cell(v),
                reasons(&v.eval.reasons),
                labels(v),
                format!("{}", v.applied_generation),
                esc(&v.record.facts.agent_version),
                when(v.last_seen, now),
            ]
        })
        .collect();
    let _ = write!(body, "<h2>Agents ({} of {})</h2>", shown.len(), views.len());
    body.push_str(&table(
        "agents",
        &[
            "Agent",
            "Hostname",
            "State",
            "Reasons",
            "Labels",
            "Gen",
            "Version",
            "Last seen",
        ],
        &rows,
        "no agents match",
    ));
    body.push_str(&super::fleet_jobs::panel(
        views,
        jobs,
        &token_param(tok, true),
        now,
    ));
    page(
        "Fleet status",
        REFRESH_SECS,
        &timefmt::rfc3339(now),
        &format!("/{}", token_param(tok, true)),
        &body,
    )
}

fn bytes_pair(free: u64, total: u64) -> String {
    if total == 0 {
        return "<span class=\"muted\">not reported</span>".into();
    }
    esc(&format!(
        "{} free of {}",
        crate::health::evaluate::bytes(free),
        crate::health::evaluate::bytes(total)
    ))
}

/// One agent: facts, host health, runner units, recent events and jobs.
pub fn agent(
    v: &AgentView,
    runners: &[RunnerStatus],
    events: &[EventRecord],
    jobs: &[EventRecord],
    token: Option<&str>,
    now: OffsetDateTime,
) -> String {
    let a = &v.record;
    let f = &a.facts;
    let mut body = format!(
        "<h2>Agent <span class=\"mono\">{}</span> {}</h2>",
        esc(&a.id),
        state_cell(v)
    );
    body.push_str(&reasons(&v.eval.reasons));
    let facts: Vec<(&str, String)> = vec![
        ("Hostname", esc(&f.hostname)),
        ("Labels", labels(v)),
        ("Connected", if v.connected { "yes" } else { "no" }.into()),
        ("Last seen", when(v.last_seen, now)),
        ("Last heartbeat", when(v.last_heartbeat, now)),
        (
            "Generation",
            format!("{} (target {})", v.applied_generation, v.target_generation),
        ),
        ("IPs", esc(&v.ips.join(", "))),
        (
            "Arch / OS / kernel",
            esc(&format!("{} / {} / {}", f.arch, f.os, f.kernel)),
        ),
        ("Agent version", esc(&f.agent_version)),
        ("System id", esc(&f.system_id)),
        ("Enrolled", esc(&timefmt::rfc3339(a.enrolled_at))),
        (
            "Certificate expires",
            esc(&timefmt::rfc3339(a.cert_not_after)),
        ),
    ];
    let mut host: Vec<(&str, String)> = Vec::new();
    match &v.host {
        Some(h) => {
            host.push((
                "Docker",
                if h.docker_reachable {
                    esc(&format!("reachable {}", h.docker_version))
                } else {
                    "<strong>unreachable</strong>".into()
                },
            ));
            host.push((
                "Disk (docker)",
                bytes_pair(h.disk_free_bytes, h.disk_total_bytes),
            ));
            host.push((
                "Disk (builds)",
                bytes_pair(h.builds_disk_free_bytes, h.builds_disk_total_bytes),
            ));
            host.push((
                "Disk budgets",
                match &h.disk_budgets {
                    Some(b) => esc(&b.summary()),
                    None => "<span class=\"muted\">not reported</span>".into(),
                },
            ));
            host.push((
                "Memory",
                bytes_pair(h.memory_available_bytes, h.memory_total_bytes),
            ));
            if h.memory_total_bytes > 0 {
                host.push(("Load (1 min)", format!("{:.2}", h.load1)));
                host.push(("Clock skew", format!("{:.1} s", h.clock_skew_seconds)));
            }
        }
        None => host.push((
            "Host",
            "<span class=\"muted\">no heartbeat yet</span>".into(),
        )),
    }
    let kv = |rows: Vec<(&str, String)>| -> Vec<Vec<String>> {
        rows.into_iter().map(|(k, v)| vec![esc(k), v]).collect()
    };
    body.push_str(&table("facts", &["Fact", "Value"], &kv(facts), ""));
    body.push_str("<h2>Host</h2>");
    body.push_str(&table("host", &["Check", "Value"], &kv(host), ""));
    body.push_str("<h2>Runner units</h2>");
    let unit_rows: Vec<Vec<String>> = runners
        .iter()
        .map(|r| {
            vec![
                esc(&r.name),
                badge_unit(r.state.as_ref()),
                r.gitlab_runner_id.to_string(),
                format!(
                    "{} running, {} ok, {} failed",
                    r.jobs_running, r.jobs_succeeded, r.jobs_failed
                ),
                r.token_expires_at
                    .map(|t| esc(&timefmt::rfc3339(t)))
                    .unwrap_or_else(|| "never".into()),
                esc(&r.last_error),
            ]
        })
        .collect();
    body.push_str(&table(
        "units",
        &[
            "Runner",
            "State",
            "GitLab id",
            "Jobs",
            "Token expires",
            "Last error",
        ],
        &unit_rows,
        "no runner units",
    ));
    body.push_str("<h2>Recent jobs</h2>");
    let job_rows: Vec<Vec<String>> = jobs
        .iter()
        .rev()
        .map(|e| {
            vec![
                when(e.at, now),
                esc(&e.runner),
                e.job_id.to_string(),
                esc(&e.job_state),
            ]
        })
        .collect();
    body.push_str(&table(
        "jobs",
        &["When", "Runner", "Job", "State"],
        &job_rows,
        "no job events",
    ));
    body.push_str("<h2>Recent events</h2>");
    let ev_rows: Vec<Vec<String>> = events
        .iter()
        .rev()
        .map(|e| {
            vec![
                when(e.at, now),
                format!("<span class=\"mono\">{}</span>", esc(&e.kind)),
                esc(&e.runner),
                esc(&e.message),
            ]
        })
        .collect();
    body.push_str(&table(
        "events",
        &["When", "Kind", "Runner", "Message"],
        &ev_rows,
        "no events",
    ));
    page(
        &format!("Agent {} ({})", a.id, f.hostname),
        REFRESH_SECS,
        &timefmt::rfc3339(now),
        &format!("/{}", token_param(token, true)),
        &body,
    )
}

/// The agent's state badge, with `draining` beside it while it drains.
fn state_cell(v: &AgentView) -> String {
    let mut s = badge(v.eval.state.as_str());
    if v.draining {
        s.push_str(" <span class=\"state degraded\">draining</span>");
    }
    s
}

fn badge_unit(state: Option<&UnitState>) -> String {
    let class = match state {
        Some(UnitState::Running) => "healthy",
        Some(
            UnitState::Backoff
            | UnitState::Degraded
            | UnitState::WaitingForDocker
            | UnitState::Starting,
        ) => "degraded",
        Some(UnitState::Stopped) => "revoked",
        _ => "unknown",
    };
    format!(
        "<span class=\"state {class}\">{}</span>",
        esc(state.map_or("", UnitState::as_str))
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Evaluation;
    use crate::store::{AgentRecord, Facts};

    fn view(id: &str, host: &str, state: State) -> AgentView {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        AgentView {
            record: AgentRecord {
                id: id.into(),
                labels: [("site".to_string(), "<lab>".to_string())].into(),
                facts: Facts {
                    hostname: host.into(),
                    ..Facts::default()
                },
                enrolled_at: t,
                last_seen: Some(t),
                cert_serial: String::new(),
                cert_not_after: t,
                revoked_at: None,
                applied_generation: 0,
            },
            eval: Evaluation {
                state,
                reasons: if state == State::Healthy {
                    vec![]
                } else {
                    vec!["docker unreachable <now>".into()]
                },
            },
            connected: true,
            last_seen: Some(t),
            last_heartbeat: Some(t),
            applied_generation: 0,
            target_generation: 0,
            ips: vec![],
            host: None,
            draining: false,
            drain: None,
            heartbeat_draining: false,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_010).unwrap()
    }

    #[test]
    fn fleet_page_escapes_agent_text_and_filters() {
        let views = vec![
            view("a1", "<script>alert(1)</script>", State::Degraded),
            view("a2", "box2", State::Healthy),
        ];
        let html = fleet(
            &views,
            &Default::default(),
            &FleetJobs::default(),
            &Filter::default(),
            now(),
        );
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        assert!(html.contains("site=&lt;lab&gt;"));
        assert!(html.contains("docker unreachable &lt;now&gt;"));
        assert!(html.contains("http-equiv=\"refresh\""));
        assert!(!html.contains(">draining<"), "{html}");
        let mut drained = views.clone();
        drained[1].draining = true;
        let html = fleet(
            &drained,
            &Default::default(),
            &FleetJobs::default(),
            &Filter::default(),
            now(),
        );
        assert!(html.contains("<span class=\"state degraded\">draining</span>"));
        let only = fleet(
            &views,
            &Default::default(),
            &FleetJobs::default(),
            &Filter {
                state: "healthy".into(),
                ..Filter::default()
            },
            now(),
        );
        assert!(only.contains("Agents (1 of 2)"));
        assert!(only.contains("box2"));
        // The agents table follows the filter; the jobs panel below it is fleet-wide.
        let (agents_part, panel) = only.split_once("id=\"fleet-jobs\"").unwrap();
        assert!(!agents_part.contains("href=\"/agents/a1\""));
        assert!(panel.contains("Agent versions"));
        let by_label = Filter {
            label: "site=<lab>".into(),
            ..Filter::default()
        };
        assert!(by_label.matches(&views[0]));
        let other = Filter {
            label: "site=x".into(),
            ..Filter::default()
        };
        assert!(!other.matches(&views[0]));
    }

    #[test]
    fn token_from_the_query_stays_on_links() {
        let views = vec![view("a1", "box", State::Healthy)];
        let f = Filter {
            token: Some("t&k".into()),
            ..Filter::default()
        };
        let html = fleet(
            &views,
            &Default::default(),
            &FleetJobs::default(),
            &f,
            now(),
        );
        assert!(html.contains("href=\"/agents/a1?token=t%26k\""), "{html}");
        assert!(html.contains("name=\"token\" value=\"t&amp;k\""));
    }

    #[test]
    fn agent_page_escapes_events_and_units() {
        let v = view("a1", "box", State::Degraded);
        let units = vec![RunnerStatus {
            name: "<r>".into(),
            state: Some(UnitState::Backoff),
            last_error: "\"quoted\"".into(),
            ..Default::default()
        }];
        let events = vec![EventRecord {
            id: 1,
            at: Some(now()),
            agent_id: "a1".into(),
            kind: "runner-backoff".into(),
            runner: "<r>".into(),
            message: "<b>bad</b>".into(),
            ..EventRecord::default()
        }];
        let html = agent(&v, &units, &events, &[], None, now());
        assert!(html.contains("&lt;b&gt;bad&lt;/b&gt;"));
        assert!(html.contains("&quot;quoted&quot;"));
        assert!(!html.contains("<r>"));
        assert!(html.contains("no job events"));
    }
}
