//! Signals to the real agent: SIGTERM cancels running jobs (reported failed, containers
//! gone); SIGQUIT lets them finish, then exits 0.

mod standalone_support;

use std::time::Duration;

use drover_tests::fake_gitlab::JobState;
use standalone_support::start;

const JOB_WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_job_reports_failure_and_leaves_nothing() {
    let Some(mut e) = start("sigterm", 1, "").await else {
        return;
    };
    let id = e.gitlab.enqueue_job(e.long_job("long")).id;
    e.wait_for_tick(id, "tick-1").await;
    let agent_id = e.agent_id().await;
    e.agent.signal("TERM");
    let status = e
        .agent
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("agent did not exit after SIGTERM:\n{}", e.agent.stderr()));
    assert!(status.success(), "exit {status}:\n{}", e.agent.stderr());
    let f = e.finished(id, Duration::from_secs(5)).await;
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Failed, "{t}");
    assert_eq!(
        f.failure_reason.as_deref(),
        Some("runner_system_failure"),
        "{t}"
    );
    assert!(t.contains("aborted: shutting down"), "{t}");
    let left = e.containers().await;
    assert!(left.is_empty(), "containers of {agent_id} left: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigquit_finishes_the_running_job_then_exits() {
    let Some(mut e) = start("sigquit", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(
            e.job("short")
                .script(["echo started-job", "sleep 4", "echo finished-job"]),
        )
        .id;
    assert!(
        e.wait_trace_contains(id, "started-job", JOB_WAIT).await,
        "job never ran; stderr:\n{}",
        e.agent.stderr()
    );
    e.agent.signal("QUIT");
    let status = e
        .agent
        .wait_exit(Duration::from_secs(90))
        .unwrap_or_else(|| panic!("agent did not exit after SIGQUIT:\n{}", e.agent.stderr()));
    assert!(status.success(), "exit {status}:\n{}", e.agent.stderr());
    let f = e.finished(id, Duration::from_secs(5)).await;
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Success, "{t}");
    assert!(t.contains("finished-job"), "{t}");
    // Nothing new is taken after SIGQUIT.
    let later = e.gitlab.enqueue_job(e.job("later").script(["true"])).id;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(e.gitlab.job_state(later), Some(JobState::Pending));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_broken_file_keeps_the_running_config() {
    let Some(e) = start("sighup", 1, "").await else {
        return;
    };
    let first = e.gitlab.enqueue_job(e.job("first").script(["echo one"])).id;
    assert_eq!(e.finished(first, JOB_WAIT).await.state, JobState::Success);
    let good = std::fs::read_to_string(&e.agent.config).unwrap();
    std::fs::write(&e.agent.config, "concurrent = [\n").unwrap();
    e.agent.signal("HUP");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !e
        .agent
        .stderr()
        .contains("keeping the running configuration")
    {
        assert!(
            std::time::Instant::now() < end,
            "no reload error:\n{}",
            e.agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let expected = format!("{}:1:", e.agent.config.display());
    assert!(e.agent.stderr().contains(&expected), "{}", e.agent.stderr());
    let second = e
        .gitlab
        .enqueue_job(e.job("second").script(["echo two"]))
        .id;
    assert_eq!(e.finished(second, JOB_WAIT).await.state, JobState::Success);
    // A valid file is applied.
    std::fs::write(
        &e.agent.config,
        good.replace("concurrent = 1", "concurrent = 2"),
    )
    .unwrap();
    e.agent.signal("HUP");
    let end = std::time::Instant::now() + Duration::from_secs(30);
    while !e.agent.stderr().contains("configuration reloaded") {
        assert!(
            std::time::Instant::now() < end,
            "no reload:\n{}",
            e.agent.stderr()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
