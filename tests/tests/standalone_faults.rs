//! The real agent against a GitLab that cancels, loses trace bytes, or fails for a while.

mod standalone_support;

use std::time::Duration;

use drover_tests::fake_gitlab::{Endpoint, JobState};
use standalone_support::start;

const JOB_WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_kills_the_containers() {
    let Some(e) = start("cancel", 1, "").await else {
        return;
    };
    let id = e.gitlab.enqueue_job(e.long_job("long")).id;
    e.wait_for_tick(id, "tick-2").await;
    assert!(e.gitlab.cancel_job(id));
    let left = e.wait_no_containers(Duration::from_secs(30)).await;
    assert!(
        left.is_empty(),
        "containers left: {left:?}\n{}",
        e.agent.stderr()
    );
    assert_eq!(e.gitlab.job_state(id), Some(JobState::Canceled));
    // The agent keeps serving: a next job runs.
    let next = e
        .gitlab
        .enqueue_job(e.job("next").script(["echo next-ok"]))
        .id;
    assert_eq!(e.finished(next, JOB_WAIT).await.state, JobState::Success);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_mismatch_is_recovered() {
    let Some(e) = start("range", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(e.job("range").script([
            "echo first-line-of-output",
            "sleep 3",
            "echo second-line-of-output",
            "sleep 2",
            "echo last-line-of-output",
        ]))
        .id;
    assert!(
        e.wait_trace_contains(id, "first-line-of-output", JOB_WAIT)
            .await
    );
    assert!(e.gitlab.drop_trace_tail(id, 10));
    let f = e.finished(id, JOB_WAIT).await;
    let t = f.trace_text();
    // The fake accepts the final update only when checksum and size match its trace.
    assert_eq!(f.state, JobState::Success, "{t}");
    assert_eq!(t.matches("first-line-of-output\n").count(), 1, "{t}");
    assert!(
        t.contains("second-line-of-output") && t.contains("last-line-of-output"),
        "{t}"
    );
    assert!(e.gitlab.request_count(Endpoint::PatchTrace, 416) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_answering_500_for_a_while() {
    let Some(e) = start("outage", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(e.job("outage").script([
            "echo before-outage",
            "sleep 2",
            "echo during-outage",
            "sleep 4",
            "echo after-outage",
        ]))
        .id;
    assert!(e.wait_trace_contains(id, "before-outage", JOB_WAIT).await);
    e.gitlab
        .fail_for(Endpoint::PatchTrace, 500, Duration::from_secs(8));
    e.gitlab
        .fail_for(Endpoint::UpdateJob, 500, Duration::from_secs(8));
    e.gitlab
        .fail_for(Endpoint::RequestJob, 500, Duration::from_secs(8));
    let f = e.finished(id, JOB_WAIT).await;
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Success, "{t}");
    for line in [
        "before-outage",
        "during-outage",
        "after-outage",
        "Job succeeded",
    ] {
        assert!(t.contains(line), "{line} missing:\n{t}");
    }
    assert!(e.gitlab.request_count(Endpoint::PatchTrace, 500) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_token_exits_naming_the_runner() {
    let gitlab = drover_tests::fake_gitlab::FakeGitLab::start().await;
    let token = format!("glrt-unknown-{:08x}", rand::random::<u32>());
    let config = format!(
        "[[runners]]\n  name = \"refused\"\n  url = \"{}\"\n  token = \"{token}\"\n  \
         executor = \"docker\"\n",
        gitlab.url()
    );
    let mut agent = standalone_support::Agent::start(&config);
    let status = agent
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("agent kept running:\n{}", agent.stderr()));
    let stderr = agent.stderr();
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("runner refused: gitlab refused the token"),
        "{stderr}"
    );
    assert!(!stderr.contains(&token), "token in logs:\n{stderr}");
}
