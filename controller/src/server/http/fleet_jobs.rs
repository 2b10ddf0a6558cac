//! The fleet page's jobs panel and charts, as pure functions of the jobs and samples the
//! store holds: running now, failures of the last hour with their reasons, busiest and idle
//! agents, agent versions, and three SVG charts (jobs per hour by outcome, duration and
//! queue wait percentiles, agents per state over time).

use std::collections::BTreeMap;
use std::fmt::Write;

use time::{Duration, OffsetDateTime};

use super::html::{esc, table, url_enc};
use super::svg::{self, Series};
use crate::health::{AgentView, State};
use crate::store::{FleetSample, JobRecord};

/// What the page reads from the store for the panel.
#[derive(Debug, Clone, Default)]
pub struct FleetJobs {
    /// Jobs updated within [`WINDOW`], newest first.
    pub recent: Vec<JobRecord>,
    /// Jobs running now (whenever they started), newest first.
    pub running: Vec<JobRecord>,
    /// Agents per state over [`WINDOW`], oldest first.
    pub samples: Vec<FleetSample>,
}

/// How far back the panel and charts look.
pub const WINDOW: Duration = Duration::hours(24);
/// Jobs read for the panel at most.
pub const MAX_JOBS: usize = 5000;
/// Running jobs listed at most.
pub const MAX_RUNNING: usize = 200;

const OUTCOMES: [(&str, &str); 3] = [
    ("success", "#2e9d57"),
    ("failed", "#c63b3b"),
    ("canceled", "#888"),
];

fn hour_label(t: OffsetDateTime) -> String {
    format!("{:02}:00", t.hour())
}

/// The start of the hour `t` is in.
fn hour_of(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_minute(0)
        .and_then(|t| t.replace_second(0))
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(t)
}

/// Nearest-rank percentile of sorted `v` (`p` in 0..=100).
pub fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v.get(rank.clamp(1, v.len()) - 1).copied()
}

/// Jobs that ended per hour over the last 24 hours (the current hour last), by outcome.
pub fn jobs_chart(jobs: &[JobRecord], now: OffsetDateTime) -> String {
    let first = hour_of(now) - Duration::hours(23);
    let labels: Vec<String> = (0..24)
        .map(|i| hour_label(first + Duration::hours(i)))
        .collect();
    let mut series: Vec<Series> = OUTCOMES
        .iter()
        .map(|(name, colour)| Series {
            name: (*name).into(),
            colour,
            values: vec![0.0; 24],
        })
        .collect();
    for j in jobs.iter().filter(|j| j.finished()) {
        let Some(slot) = usize::try_from((j.updated_at - first).whole_hours())
            .ok()
            .filter(|s| *s < 24 && j.updated_at >= first)
        else {
            continue;
        };
        if let Some(s) = series.iter_mut().find(|s| s.name == j.state) {
            s.values[slot] += 1.0;
        }
    }
    let total = |n: usize| series[n].values.iter().sum::<f64>();
    let summary = format!(
        "Jobs per hour by outcome, last 24 h: {} success, {} failed, {} canceled",
        total(0),
        total(1),
        total(2)
    );
    svg::stacked_bars("chart-jobs", &summary, &labels, 3, &series)
}

/// p50, p90 and p99 of job duration and queue wait over the jobs given.
pub fn percentiles_chart(jobs: &[JobRecord]) -> String {
    let sorted = |f: fn(&JobRecord) -> Option<i64>| {
        let mut v: Vec<f64> = jobs
            .iter()
            .filter_map(f)
            .map(|ms| ms as f64 / 1000.0)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    };
    let durations = sorted(|j| j.duration_ms);
    let waits = sorted(|j| j.queue_wait_ms);
    let mut bars = Vec::new();
    for (what, v, colour) in [
        ("duration", &durations, "#3b6fc6"),
        ("queue wait", &waits, "#d99a00"),
    ] {
        for p in [50.0, 90.0, 99.0] {
            bars.push((
                format!("{what} p{p}"),
                percentile(v, p).unwrap_or(0.0),
                colour,
            ));
        }
    }
    let summary = format!(
        "Job duration ({} jobs) and queue wait ({} jobs) percentiles, last 24 h, seconds",
        durations.len(),
        waits.len()
    );
    svg::hbars("chart-percentiles", &summary, " s", &bars)
}

/// Agents per state over the samples given (oldest first).
pub fn agents_chart(samples: &[FleetSample]) -> String {
    let labels: Vec<String> = samples
        .iter()
        .map(|s| format!("{:02}:{:02}", s.at.hour(), s.at.minute()))
        .collect();
    let pick = |f: fn(&FleetSample) -> u32| samples.iter().map(|s| f64::from(f(s))).collect();
    let series = vec![
        Series {
            name: "healthy".into(),
            colour: "#2e9d57",
            values: pick(|s| s.healthy),
        },
        Series {
            name: "degraded".into(),
            colour: "#d99a00",
            values: pick(|s| s.degraded),
        },
        Series {
            name: "lost".into(),
            colour: "#c63b3b",
            values: pick(|s| s.lost),
        },
        Series {
            name: "revoked".into(),
            colour: "#777",
            values: pick(|s| s.revoked),
        },
    ];
    let summary = format!("Agents per state, {} samples", samples.len());
    let every = (samples.len() / 6).max(1);
    svg::lines("chart-agents", &summary, &labels, every, &series)
}

fn agent_link(id: &str, token: &str) -> String {
    format!(
        "<a class=\"mono\" href=\"/agents/{}{token}\">{}</a>",
        url_enc(id),
        esc(id)
    )
}

fn secs(ms: Option<i64>) -> String {
    ms.map_or_else(|| "-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0))
}

/// The jobs panel: lists and charts. `token` is the `?token=...` to keep on links.
pub fn panel(views: &[AgentView], data: &FleetJobs, token: &str, now: OffsetDateTime) -> String {
    let ago = |t: Option<OffsetDateTime>| {
        t.map_or_else(
            || "-".into(),
            |t| format!("{} ago", crate::health::evaluate::short_duration(now - t)),
        )
    };
    let mut out = String::from("<section id=\"fleet-jobs\"><h2>Jobs</h2><div class=\"charts\">");
    out.push_str(&jobs_chart(&data.recent, now));
    out.push_str(&percentiles_chart(&data.recent));
    out.push_str(&agents_chart(&data.samples));
    out.push_str("</div>");

    let _ = write!(out, "<h2>Running now ({})</h2>", data.running.len());
    let rows: Vec<Vec<String>> = data
        .running
        .iter()
        .map(|j| {
            vec![
                agent_link(&j.agent_id, token),
                esc(&j.runner),
                j.job_id.to_string(),
                esc(&ago(j.started_at)),
                esc(&secs(j.queue_wait_ms)),
            ]
        })
        .collect();
    out.push_str(&table(
        "running-jobs",
        &["Agent", "Runner", "Job", "Started", "Queued"],
        &rows,
        "no job running",
    ));

    let hour_ago = now - Duration::hours(1);
    let failed: Vec<&JobRecord> = data
        .recent
        .iter()
        .filter(|j| j.state == "failed" && j.updated_at >= hour_ago)
        .collect();
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for j in &failed {
        *reasons.entry(j.failure_reason.as_str()).or_default() += 1;
    }
    let mut by_count: Vec<(&str, usize)> = reasons.into_iter().collect();
    by_count.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let _ = write!(out, "<h2>Failed in the last hour ({})</h2>", failed.len());
    if !by_count.is_empty() {
        out.push_str("<p id=\"failure-reasons\">");
        let parts: Vec<String> = by_count
            .iter()
            .map(|(r, n)| {
                let r = if r.is_empty() { "unknown" } else { r };
                format!("<span class=\"mono\">{}</span> {n}", esc(r))
            })
            .collect();
        out.push_str(&parts.join(" · "));
        out.push_str("</p>");
    }
    let rows: Vec<Vec<String>> = failed
        .iter()
        .map(|j| {
            vec![
                esc(&ago(j.finished_at.or(Some(j.updated_at)))),
                agent_link(&j.agent_id, token),
                esc(&j.runner),
                j.job_id.to_string(),
                format!("<span class=\"mono\">{}</span>", esc(&j.failure_reason)),
                esc(&secs(j.duration_ms)),
            ]
        })
        .collect();
    out.push_str(&table(
        "failed-jobs",
        &["When", "Agent", "Runner", "Job", "Reason", "Duration"],
        &rows,
        "no failed job in the last hour",
    ));

    // Busiest: most jobs in the window; idle: agents not revoked with no job in the last
    // hour and none running.
    let mut per_agent: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for j in &data.recent {
        let e = per_agent.entry(j.agent_id.as_str()).or_default();
        e.0 += 1;
        if j.state == "failed" {
            e.1 += 1;
        }
    }
    let mut busiest: Vec<(&str, (usize, usize))> = per_agent.into_iter().collect();
    busiest.sort_by(|a, b| b.1.0.cmp(&a.1.0).then(a.0.cmp(b.0)));
    busiest.truncate(5);
    out.push_str("<h2>Busiest agents (last 24 h)</h2>");
    let rows: Vec<Vec<String>> = busiest
        .iter()
        .map(|(id, (n, f))| vec![agent_link(id, token), n.to_string(), f.to_string()])
        .collect();
    out.push_str(&table(
        "busiest-agents",
        &["Agent", "Jobs", "Failed"],
        &rows,
        "no jobs in the last 24 h",
    ));
    let idle: Vec<&AgentView> = views
        .iter()
        .filter(|v| v.eval.state != State::Revoked)
        .filter(|v| {
            !data
                .recent
                .iter()
                .any(|j| j.agent_id == v.record.id && j.updated_at >= hour_ago)
                && !data.running.iter().any(|j| j.agent_id == v.record.id)
        })
        .collect();
    let _ = write!(
        out,
        "<h2>Idle agents (no job in the last hour: {})</h2><p id=\"idle-agents\">",
        idle.len()
    );
    if idle.is_empty() {
        out.push_str("<span class=\"muted\">none</span>");
    }
    let links: Vec<String> = idle
        .iter()
        .map(|v| agent_link(&v.record.id, token))
        .collect();
    out.push_str(&links.join(" "));
    out.push_str("</p>");

    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for v in views.iter().filter(|v| v.eval.state != State::Revoked) {
        versions
            .entry(v.record.facts.agent_version.as_str())
            .or_default()
            .push(v.record.id.as_str());
    }
    let skew = if versions.len() > 1 {
        " <span class=\"state degraded\">version skew</span>"
    } else {
        ""
    };
    let _ = write!(out, "<h2>Agent versions ({}){skew}</h2>", versions.len());
    let rows: Vec<Vec<String>> = versions
        .iter()
        .map(|(ver, ids)| {
            let ver = if ver.is_empty() { "unknown" } else { ver };
            vec![
                format!("<span class=\"mono\">{}</span>", esc(ver)),
                ids.len().to_string(),
                ids.iter()
                    .take(20)
                    .map(|id| agent_link(id, token))
                    .collect::<Vec<_>>()
                    .join(" "),
            ]
        })
        .collect();
    out.push_str(&table(
        "versions",
        &["Version", "Agents", "Which"],
        &rows,
        "no agents",
    ));
    out.push_str("</section>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t0() -> OffsetDateTime {
        // 2023-11-14 22:13:20 UTC
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn job(agent: &str, id: i64, state: &str, ago_min: i64, dur_s: i64, wait_s: i64) -> JobRecord {
        JobRecord {
            agent_id: agent.into(),
            job_id: id,
            runner: "r".into(),
            state: state.into(),
            failure_reason: if state == "failed" {
                "script_failure".into()
            } else {
                String::new()
            },
            started_at: Some(t0() - Duration::minutes(ago_min) - Duration::seconds(dur_s)),
            finished_at: (state != "running").then(|| t0() - Duration::minutes(ago_min)),
            duration_ms: (state != "running").then_some(dur_s * 1000),
            queue_wait_ms: Some(wait_s * 1000),
            updated_at: t0() - Duration::minutes(ago_min),
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(5.0));
        assert_eq!(percentile(&v, 90.0), Some(9.0));
        assert_eq!(percentile(&v, 99.0), Some(10.0));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn charts_count_jobs_per_hour_and_outcome() {
        let jobs = vec![
            job("a1", 1, "success", 5, 10, 1),
            job("a1", 2, "success", 10, 20, 2),
            job("a2", 3, "failed", 70, 30, 3),
            job("a2", 4, "canceled", 3, 40, 4),
            job("a2", 5, "running", 1, 0, 5),
            // Older than 24 hours: not drawn.
            job("a2", 6, "success", 25 * 60, 50, 6),
        ];
        let c = jobs_chart(&jobs, t0());
        assert!(
            c.contains("last 24 h: 2 success, 1 failed, 1 canceled</title>"),
            "{c}"
        );
        assert!(c.contains("<title>22:00: 2 success</title>"), "{c}");
        assert!(c.contains("<title>22:00: 1 canceled</title>"), "{c}");
        assert!(c.contains("<title>21:00: 1 failed</title>"), "{c}");
        let p = percentiles_chart(&jobs);
        assert!(
            p.contains("Job duration (5 jobs) and queue wait (6 jobs)"),
            "{p}"
        );
        assert!(p.contains("<title>duration p50 30 s</title>"), "{p}");
        assert!(p.contains("<title>queue wait p90 6 s</title>"), "{p}");
    }

    #[test]
    fn panel_lists_running_failed_busiest_idle_and_versions() {
        use crate::health::Evaluation;
        use crate::store::{AgentRecord, Facts};
        let view = |id: &str, version: &str| AgentView {
            record: AgentRecord {
                id: id.into(),
                labels: Default::default(),
                facts: Facts {
                    agent_version: version.into(),
                    ..Facts::default()
                },
                enrolled_at: t0(),
                last_seen: None,
                cert_serial: String::new(),
                cert_not_after: t0(),
                revoked_at: None,
                applied_generation: 0,
            },
            eval: Evaluation {
                state: State::Healthy,
                reasons: vec![],
            },
            connected: true,
            last_seen: None,
            last_heartbeat: None,
            applied_generation: 0,
            target_generation: 0,
            ips: vec![],
            host: None,
            draining: false,
            drain: None,
            heartbeat_draining: false,
        };
        let views = vec![
            view("a1", "0.1.0"),
            view("a2", "0.2.0"),
            view("a3", "0.2.0"),
        ];
        let mut failed = job("a2", 3, "failed", 20, 30, 3);
        failed.failure_reason = "<b>x</b>".into();
        let data = FleetJobs {
            recent: vec![
                job("a1", 1, "success", 5, 10, 1),
                job("a1", 2, "success", 10, 20, 2),
                failed,
            ],
            running: vec![job("a2", 5, "running", 1, 0, 5)],
            samples: vec![FleetSample {
                at: t0(),
                healthy: 3,
                degraded: 0,
                lost: 0,
                revoked: 0,
            }],
        };
        let html = panel(&views, &data, "", t0());
        assert!(html.contains("Running now (1)"), "{html}");
        assert!(html.contains("Failed in the last hour (1)"), "{html}");
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;</span> 1"), "{html}");
        assert!(!html.contains("<b>x"), "{html}");
        assert!(
            html.contains("Idle agents (no job in the last hour: 1)"),
            "{html}"
        );
        assert!(
            html.contains("<p id=\"idle-agents\"><a class=\"mono\" href=\"/agents/a3\">a3</a></p>"),
            "{html}"
        );
        assert!(
            html.contains("Agent versions (2) <span class=\"state degraded\">version skew"),
            "{html}"
        );
        assert!(
            html.contains("<title>healthy: 3 now, max 3</title>"),
            "{html}"
        );
    }
}
