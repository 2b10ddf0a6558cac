//! Issue 15 item 5, end to end: the real `drover-agent run --config` against the fake
//! GitLab serving job payloads no job can run with. Each job the agent took is reported
//! `failed` (`runner_system_failure`) with a trace line saying why, soon, and the agent
//! goes on taking jobs. A body without a readable id and token cannot be reported: the
//! agent logs it as lost and goes on.

mod standalone_support;

use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::{JobSpec, JobState};
use serde_json::json;
use standalone_support::start;

/// Generous for two loaded cores; the report itself takes well under a second.
const REPORT_WAIT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_payloads_are_reported_failed_and_the_agent_goes_on() {
    let Some(e) = start("hostile", 1, "").await else {
        return;
    };
    let base = |name: &str| e.job(name).script(["echo must-not-run"]);
    let cases: Vec<(&str, JobSpec, &str)> = vec![
        (
            "negative timeout",
            base("neg-timeout").set("runner_info", json!({"timeout": -30, "runner_session_url": null})),
            "runner_info.timeout: -30 is negative",
        ),
        (
            "variable key null",
            base("var-null").variable_json(json!({"key": null, "value": "v", "public": true, "masked": false})),
            "].key: empty",
        ),
        (
            "variable key a number",
            base("var-number").variable_json(json!({"key": 12, "value": "v", "public": true})),
            "].key: invalid type: integer, expected a string",
        ),
        (
            "step without a name",
            e.job("no-name").step(json!({"script": ["echo must-not-run"], "timeout": 60, "when": "on_success", "allow_failure": false})),
            "steps[0].name: empty",
        ),
        (
            "not JSON after the token",
            e.job("broken").raw_body(r#"{"id": {id}, "token": "{token}", "steps": [<html>oops</html>"#),
            "job payload does not decode",
        ),
    ];
    let mut ids = Vec::new();
    for (what, spec, why) in cases {
        ids.push((what, e.gitlab.enqueue_job(spec).id, why));
    }
    // Not JSON at all: no id, no token, nothing to report; the agent must go on.
    let lost = e
        .gitlab
        .enqueue_job(e.job("lost").raw_body("<html>no job here</html>"))
        .id;
    let next = e
        .gitlab
        .enqueue_job(e.job("next").script(["echo next-job-ran"]))
        .id;

    let started = Instant::now();
    for (what, id, why) in ids {
        let f = e.finished(id, REPORT_WAIT).await;
        let t = f.trace_text();
        assert_eq!(f.state, JobState::Failed, "{what}: {t}");
        assert_eq!(
            f.failure_reason.as_deref(),
            Some("runner_system_failure"),
            "{what}: {t}"
        );
        assert!(
            t.contains("ERROR: Job failed (system failure): ") && t.contains(why),
            "{what}: trace does not say {why:?}:\n{t}"
        );
        assert!(!t.contains("must-not-run\n"), "{what} ran: {t}");
        eprintln!(
            "{what}: reported failed {:?} after the start",
            started.elapsed()
        );
    }
    let f = e.finished(next, Duration::from_secs(120)).await;
    assert_eq!(f.state, JobState::Success, "{}", f.trace_text());
    assert!(f.trace_text().contains("next-job-ran"));
    // GitLab would show the lost job running; the agent said why in its log.
    assert_eq!(e.gitlab.job_state(lost), Some(JobState::Running));
    let log = e.agent.stderr();
    assert!(
        log.contains("job lost") && log.contains("no readable job id"),
        "{log}"
    );
}
