//! The real `drover-agent run --config` at `DROVER_LOG=trace` runs a job with a masked
//! variable and a job token: no secret reaches the agent's log (bollard, for one, logs a
//! container's whole create request, `Env` included, at debug).

mod standalone_support;

use std::time::Duration;

use drover_tests::fake_gitlab::JobState;
use standalone_support::start_logged;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_level_logs_hold_no_secret() {
    let Some(e) = start_logged("log-secrets", 1, "", "trace").await else {
        return;
    };
    let masked = format!("masked-{:016x}", rand::random::<u64>());
    let job_token = format!("glcbt-{:016x}", rand::random::<u64>());
    let id = e
        .gitlab
        .enqueue_job(
            e.job("secrets")
                .masked_variable("DEPLOY_PASSWORD", &masked)
                .token(&job_token)
                .script(["test -n \"$DEPLOY_PASSWORD\" && test -n \"$CI_JOB_TOKEN\""]),
        )
        .id;
    let f = e.finished(id, Duration::from_secs(120)).await;
    let log = e.agent.stderr();
    assert_eq!(f.state, JobState::Success, "{}\n{log}", f.trace_text());
    assert!(log.contains("job started"), "{log}");
    for (what, secret) in [
        ("masked variable", masked.as_str()),
        ("job token", job_token.as_str()),
        ("runner token", e.token.as_str()),
    ] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(secret)).collect();
        assert!(
            lines.is_empty(),
            "the {what} is in the agent log:\n{lines:#?}"
        );
    }
}
