//! The real `drover-agent run --config` against the fake GitLab and the real Docker engine:
//! how jobs end and what their traces hold.

mod standalone_support;

use std::time::Duration;

use drover_tests::fake_gitlab::JobState;
use standalone_support::start;

const JOB_WAIT: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success() {
    let Some(e) = start("success", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(e.job("ok").script(["echo hello-from-job"]))
        .id;
    let f = e.finished(id, JOB_WAIT).await;
    let t = f.trace_text();
    assert_eq!(
        f.state,
        JobState::Success,
        "trace:\n{t}\nstderr:\n{}",
        e.agent.stderr()
    );
    assert!(t.contains("hello-from-job"), "{t}");
    assert!(t.contains("Job succeeded"), "{t}");
    assert!(
        e.wait_no_containers(Duration::from_secs(30))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn script_failure_records_exit_code_and_after_script_runs() {
    let Some(e) = start("failure", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(
            e.job("fails")
                .script(["echo before-failure", "exit 3", "echo never-printed"])
                .after_script(["echo after-script-ran"]),
        )
        .id;
    let f = e.finished(id, JOB_WAIT).await;
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Failed, "{t}");
    assert_eq!(f.failure_reason.as_deref(), Some("script_failure"), "{t}");
    assert_eq!(f.exit_code, Some(3), "{t}");
    assert!(
        t.contains("before-failure") && !t.contains("\nnever-printed"),
        "{t}"
    );
    assert!(t.contains("after-script-ran"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_value_split_across_chunks() {
    let Some(e) = start("masked", 1, "").await else {
        return;
    };
    let secret = format!("s3cr3t-{:08x}-value", rand::random::<u32>());
    let (a, b) = secret.split_at(9);
    let id = e
        .gitlab
        .enqueue_job(
            e.job("masked")
                .masked_variable("MY_SECRET", &secret)
                .script([
                    format!("printf '%s' '{a}'; sleep 1; printf '%s\\n' '{b}'"),
                    "echo \"whole: $MY_SECRET\"".to_string(),
                ]),
        )
        .id;
    let f = e.finished(id, JOB_WAIT).await;
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Success, "{t}");
    assert!(!t.contains(&secret), "secret in trace:\n{t}");
    assert!(t.matches("[MASKED]").count() >= 2, "{t}");
    assert!(t.contains("whole: [MASKED]"), "{t}");
    assert!(!e.agent.stderr().contains(&secret), "secret in agent logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_fails_the_job() {
    let Some(e) = start("timeout", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(
            e.job("slow")
                .timeout(3)
                .script(["echo started", "sleep 60"]),
        )
        .id;
    let f = e.finished(id, JOB_WAIT).await;
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Failed, "{t}");
    assert_eq!(
        f.failure_reason.as_deref(),
        Some("job_execution_timeout"),
        "{t}"
    );
    assert!(
        e.wait_no_containers(Duration::from_secs(30))
            .await
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_with_pull_policy_never() {
    let Some(e) = start("noimage", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(
            e.job("noimage")
                .image("drover-test/does-not-exist:1")
                .script(["echo never"]),
        )
        .id;
    let f = e.finished(id, JOB_WAIT).await;
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Failed, "{t}");
    assert!(
        t.contains("drover-test/does-not-exist:1") && t.contains("never"),
        "no clear message in trace:\n{t}"
    );
}

/// Issue 14 point 2 with the real binary: `artifacts: paths: [out/]` alone, as GitLab sends
/// it (`name`, `when`, `expire_in` all `null`), runs and uploads `artifacts.zip` with no
/// expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_with_only_paths_as_gitlab_sends_them() {
    let Some(e) = start("artifacts-nulls", 1, "").await else {
        return;
    };
    let id = e
        .gitlab
        .enqueue_job(
            e.job("artifacts")
                .script(["mkdir -p out", "echo built > out/a.txt"])
                .artifact_paths(["out/"]),
        )
        .id;
    let payload = e.gitlab.job(id).expect("enqueued").payload;
    let artifact = &payload["artifacts"][0];
    assert!(artifact["name"].is_null() && artifact["when"].is_null());
    assert!(artifact["expire_in"].is_null());
    let f = e.finished(id, JOB_WAIT).await;
    assert_eq!(f.state, JobState::Success, "{}", f.trace_text());
    let stored = e.gitlab.artifacts(id);
    assert_eq!(stored.len(), 1, "{}", f.trace_text());
    assert_eq!(stored[0].filename, "artifacts.zip");
    assert_eq!(stored[0].expire_in, None);
}
