use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use drover_proto::spec::RunnerConfig;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use super::fake_executor::FakeExecutor;
use super::*;
use drover_gitlab::fake::{Call, Endpoint, FakeGitLab, job};
use drover_job::executor::{FailureReason, JobOutcome};

fn settings(limit: Option<u32>) -> RunnerSettings {
    let mut s = RunnerSettings::from_config(
        Arc::new(RunnerConfig {
            name: "unit".into(),
            executor: "docker".into(),
            limit,
            ..RunnerConfig::default()
        }),
        0,
        SecretString::from("glrt-abcdefghijkl".to_string()),
        "s_0123456789ab".into(),
        "agent-test".into(),
        Duration::from_millis(10),
    );
    s.upload.interval = Duration::from_millis(20);
    s.upload.keepalive = Duration::from_millis(100);
    s.upload.backoff_min = Duration::from_millis(5);
    s.upload.backoff_max = Duration::from_millis(20);
    s.upload.final_deadline = Duration::from_secs(10);
    s.backoff_min = Duration::from_millis(5);
    s.backoff_max = Duration::from_millis(40);
    s
}

struct Harness {
    gl: Arc<FakeGitLab>,
    ex: Arc<FakeExecutor>,
    stats: Arc<RunnerStats>,
    shutdown: Shutdown,
    events: tokio::sync::mpsc::UnboundedReceiver<RunnerEvent>,
    task: tokio::task::JoinHandle<Result<(), RunnerError>>,
}

fn start(limit: Option<u32>, concurrent: usize, ex: FakeExecutor, gl: Arc<FakeGitLab>) -> Harness {
    start_with(settings(limit), concurrent, ex, gl)
}

fn start_with(
    settings: RunnerSettings,
    concurrent: usize,
    ex: FakeExecutor,
    gl: Arc<FakeGitLab>,
) -> Harness {
    let ex = Arc::new(ex);
    let stats = Arc::new(RunnerStats::default());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let shutdown = Shutdown::default();
    let deps = RunnerDeps {
        gitlab: gl.clone(),
        executor: ex.clone(),
        concurrent: Arc::new(Semaphore::new(concurrent)),
        stats: stats.clone(),
        events: Some(tx),
        tracking: Default::default(),
    };
    let task = tokio::spawn(run(settings, deps, shutdown.clone()));
    Harness {
        gl,
        ex,
        stats,
        shutdown,
        events: rx,
        task,
    }
}

fn finished(gl: &FakeGitLab, ids: &[i64]) -> bool {
    ids.iter()
        .all(|id| gl.job(*id).is_some_and(|j| j.state != "running"))
}

#[tokio::test]
async fn runs_a_job_and_reports_success() {
    let gl = Arc::new(FakeGitLab::new());
    gl.push_job(job(1, &["echo hi"]));
    let h = start(None, 1, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(5), |g| finished(g, &[1]))
            .await
    );
    let j = h.gl.job(1).unwrap();
    assert_eq!(j.state, "success");
    let t = String::from_utf8(j.trace).unwrap();
    assert!(
        t.contains("$ echo hi") && t.contains("Job succeeded"),
        "{t}"
    );
    assert!(t.contains("Running with drover-agent"), "{t}");
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
    let st = h.stats.snapshot();
    assert_eq!((st.jobs_succeeded, st.jobs_running), (1, 0));
    assert_eq!(st.state, RunnerState::Stopped);
}

#[tokio::test]
async fn concurrent_bounds_parallel_jobs() {
    let gl = Arc::new(FakeGitLab::new());
    for id in 1..=5 {
        gl.push_job(job(id, &["sleep"]));
    }
    let ex = FakeExecutor {
        hold: Duration::from_millis(150),
        ..Default::default()
    };
    let h = start(None, 2, ex, gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(10), |g| finished(g, &[1, 2, 3, 4, 5]))
            .await
    );
    assert_eq!(h.ex.max_running.load(Ordering::SeqCst), 2);
    let mut slots = h.ex.slots.lock().unwrap().clone();
    slots.sort_unstable();
    slots.dedup();
    assert_eq!(slots, vec![0, 1]);
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn runner_limit_bounds_below_concurrent() {
    let gl = Arc::new(FakeGitLab::new());
    for id in 1..=4 {
        gl.push_job(job(id, &["sleep"]));
    }
    let ex = FakeExecutor {
        hold: Duration::from_millis(100),
        ..Default::default()
    };
    let h = start(Some(1), 10, ex, gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(10), |g| finished(g, &[1, 2, 3, 4]))
            .await
    );
    assert_eq!(h.ex.max_running.load(Ordering::SeqCst), 1);
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn no_job_loop_sends_last_update_back() {
    let gl = Arc::new(FakeGitLab::new());
    let h = start(None, 1, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(5), |g| g.calls().len() >= 5)
            .await
    );
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
    let lus: Vec<Option<String>> =
        h.gl.calls()
            .into_iter()
            .filter_map(|c| match c {
                Call::RequestJob { last_update } => Some(last_update),
                _ => None,
            })
            .collect();
    assert_eq!(lus[0], None);
    for (i, lu) in lus.iter().enumerate().skip(1) {
        assert_eq!(lu.as_deref(), Some(format!("cursor-{i}").as_str()));
    }
}

#[tokio::test]
async fn starts_with_a_job_request_and_never_verifies() {
    // gitlab-runner's `run` never calls `POST /runners/verify` (`commands/multi.go`): a
    // GitLab that refuses (or does not know) verify must not stop the runner.
    let gl = Arc::new(FakeGitLab::new());
    gl.set_verify_forbidden(true);
    gl.fail_next(Endpoint::Verify, 10, 404);
    gl.push_job(job(2, &["echo hi"]));
    let mut h = start(None, 1, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(5), |g| finished(g, &[2]))
            .await
    );
    assert!(matches!(h.gl.calls()[0], Call::RequestJob { .. }));
    assert!(
        !h.gl
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Verify { .. })),
        "no verify"
    );
    assert!(matches!(
        h.events.recv().await,
        Some(RunnerEvent::Connected { .. })
    ));
    assert_eq!(h.stats.snapshot().state, RunnerState::Running);
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn forbidden_on_request_fails_naming_the_runner() {
    let gl = Arc::new(FakeGitLab::new());
    gl.set_request_forbidden(true);
    let mut h = start(None, 1, FakeExecutor::default(), gl);
    let e = h.task.await.unwrap().unwrap_err();
    assert!(e.to_string().contains("runner unit"), "{e}");
    assert!(e.to_string().contains("register the runner again"), "{e}");
    assert!(matches!(
        h.events.recv().await,
        Some(RunnerEvent::NeedsRegistration { .. })
    ));
}

#[tokio::test]
async fn forbidden_on_request_stops_requesting() {
    let gl = Arc::new(FakeGitLab::new());
    gl.set_request_forbidden(true);
    let h = start(None, 1, FakeExecutor::default(), gl);
    let e = tokio::time::timeout(Duration::from_secs(5), h.task)
        .await
        .expect("runner stops by itself")
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, RunnerError::Forbidden { .. }), "{e}");
    let requests =
        h.gl.calls()
            .iter()
            .filter(|c| matches!(c, Call::RequestJob { .. }))
            .count();
    assert_eq!(requests, 1);
    assert_eq!(h.stats.snapshot().state, RunnerState::NeedsRegistration);
}

#[tokio::test]
async fn server_errors_back_off_then_recover() {
    let gl = Arc::new(FakeGitLab::new());
    gl.fail_next(Endpoint::RequestJob, 4, 500);
    gl.push_job(job(9, &["echo after outage"]));
    let h = start(None, 1, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(10), |g| finished(g, &[9]))
            .await
    );
    assert_eq!(h.gl.job(9).unwrap().state, "success");
    assert!(h.stats.snapshot().last_error.unwrap().contains("500"));
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

/// One row per non-403 failure of `POST /jobs/request` in `agent/gitlab/src/STATUS.md`
/// (`0` = no answer): the runner never stops, keeps polling with backoff, and takes the job
/// that is queued behind the failures.
#[tokio::test]
async fn every_failed_job_request_but_403_keeps_polling() {
    for status in [
        0u16, 401, 404, 408, 409, 422, 429, 500, 501, 502, 503, 504, 512,
    ] {
        let gl = Arc::new(FakeGitLab::new());
        gl.fail_next(Endpoint::RequestJob, 3, status);
        gl.push_job(job(10, &["echo after failures"]));
        let h = start(None, 1, FakeExecutor::default(), gl);
        assert!(
            h.gl.wait_until(Duration::from_secs(10), |g| finished(g, &[10]))
                .await,
            "status {status}: the job behind the failures was not taken"
        );
        assert_eq!(h.gl.job(10).unwrap().state, "success", "status {status}");
        assert!(!h.task.is_finished(), "status {status}: the runner stopped");
        h.shutdown.graceful.cancel();
        h.task.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn retry_after_is_honoured_on_job_requests() {
    let gl = Arc::new(FakeGitLab::new());
    gl.fail_next_retry_after(Endpoint::RequestJob, 1, 429, Duration::from_millis(600));
    gl.push_job(job(11, &["echo"]));
    let t0 = tokio::time::Instant::now();
    let h = start(None, 1, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(10), |g| g.job(11).is_some())
            .await
    );
    // The backoff alone (5..40 ms here) would have retried at once.
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn unhealthy_settings_pause_only_when_set() {
    let run_with = |policy: Option<unhealthy::UnhealthyPolicy>| async move {
        let gl = Arc::new(FakeGitLab::new());
        gl.fail_next(Endpoint::RequestJob, 2, 502);
        gl.push_job(job(12, &["echo"]));
        let mut s = settings(None);
        s.unhealthy = policy;
        let t0 = tokio::time::Instant::now();
        let h = start_with(s, 1, FakeExecutor::default(), gl);
        assert!(
            h.gl.wait_until(Duration::from_secs(10), |g| g.job(12).is_some())
                .await
        );
        let took = t0.elapsed();
        h.shutdown.graceful.cancel();
        h.task.await.unwrap().unwrap();
        took
    };
    let pause = Duration::from_millis(800);
    let unset = run_with(None).await;
    assert!(unset < pause, "no keys, no pause: {unset:?}");
    let set = run_with(Some(unhealthy::UnhealthyPolicy {
        requests_limit: 2,
        interval: pause,
    }))
    .await;
    assert!(set >= pause, "two failures pause for the interval: {set:?}");
}

#[tokio::test]
async fn request_concurrency_sends_that_many_requests_at_once() {
    let count = |n: usize| async move {
        let gl = Arc::new(FakeGitLab::new());
        // Long polls: every request is held 2 s.
        gl.set_request_delay(Duration::from_secs(2));
        let mut s = settings(None);
        s.request_concurrency = n;
        let h = start_with(s, 10, FakeExecutor::default(), gl);
        tokio::time::sleep(Duration::from_millis(500)).await;
        let requests =
            h.gl.calls()
                .iter()
                .filter(|c| matches!(c, Call::RequestJob { .. }))
                .count();
        h.shutdown.graceful.cancel();
        h.task.await.unwrap().unwrap();
        requests
    };
    assert_eq!(count(1).await, 1);
    assert_eq!(count(3).await, 3);
}

#[test]
fn settings_take_request_concurrency_and_unhealthy_keys() {
    let cfg = |text: &str| {
        let parsed = drover_proto::spec::parse_config(
            &format!("[[runners]]\nurl = \"http://g\"\ntoken = \"glrt-x\"\nexecutor = \"docker\"\n[runners.docker]\nimage = \"alpine\"\n[[runners]]\nurl = \"http://g\"\ntoken = \"glrt-y\"\nexecutor = \"docker\"\n{text}\n[runners.docker]\nimage = \"alpine\"\n"),
            "config.toml",
        )
        .unwrap();
        parsed.config.runners
    };
    let rs =
        cfg("request_concurrency = 4\nunhealthy_requests_limit = 5\nunhealthy_interval = \"90s\"");
    let s = |r: &RunnerConfig| {
        RunnerSettings::from_config(
            Arc::new(r.clone()),
            0,
            SecretString::from("glrt-x".to_string()),
            "s_0123456789ab".into(),
            "a".into(),
            DEFAULT_CHECK_INTERVAL,
        )
    };
    let plain = s(&rs[0]);
    assert_eq!(plain.request_concurrency, 1);
    assert_eq!(plain.unhealthy, None);
    assert_eq!(plain.backoff_max, JOB_REQUEST_BACKOFF_MAX);
    let set = s(&rs[1]);
    assert_eq!(set.request_concurrency, 4);
    assert_eq!(
        set.unhealthy,
        Some(unhealthy::UnhealthyPolicy {
            requests_limit: 5,
            interval: Duration::from_secs(90)
        })
    );
}

/// A runner whose executor holds job `id` for a minute; returns once the job has a trace.
async fn start_long_job(id: i64) -> Harness {
    let gl = Arc::new(FakeGitLab::new());
    gl.push_job(job(id, &["long"]));
    let ex = FakeExecutor {
        hold: Duration::from_secs(60),
        ..Default::default()
    };
    let h = start(None, 1, ex, gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(5), |g| g
            .job(id)
            .is_some_and(|j| !j.trace.is_empty()))
            .await
    );
    h
}

#[tokio::test]
async fn gitlab_cancel_stops_the_job() {
    let h = start_long_job(3).await;
    h.gl.cancel(3);
    assert!(h.stats.snapshot().jobs_running.eq(&1));
    let st = h.stats.clone();
    let done = async {
        while st.snapshot().jobs_canceled == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), done)
        .await
        .expect("job canceled");
    assert_eq!(h.gl.job(3).unwrap().state, "canceled");
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

#[tokio::test]
async fn stop_now_reports_running_jobs_failed_with_trace() {
    let h = start_long_job(4).await;
    h.shutdown.now.cancel();
    tokio::time::timeout(Duration::from_secs(10), h.task)
        .await
        .expect("runner stops")
        .unwrap()
        .unwrap();
    let j = h.gl.job(4).unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.failure_reason.as_deref(), Some("runner_system_failure"));
    let t = String::from_utf8(j.trace).unwrap();
    assert!(
        t.contains("ERROR: Job failed: aborted: shutting down"),
        "{t}"
    );
}

#[tokio::test]
async fn graceful_stop_lets_the_job_finish() {
    let gl = Arc::new(FakeGitLab::new());
    gl.push_job(job(5, &["medium"]));
    gl.push_job(job(6, &["never taken"]));
    let ex = FakeExecutor {
        hold: Duration::from_millis(300),
        ..Default::default()
    };
    let h = start(Some(1), 1, ex, gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(5), |g| g.job(5).is_some())
            .await
    );
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
    assert_eq!(h.gl.job(5).unwrap().state, "success");
    assert!(h.gl.job(6).is_none());
    assert_eq!(h.gl.queued(), 1);
}

#[tokio::test]
async fn script_failure_reports_exit_code_and_masks_secrets() {
    let gl = Arc::new(FakeGitLab::new());
    let mut j = job(7, &["echo topsecret-value"]);
    j.variables.push(
        serde_json::from_value(serde_json::json!({
            "key": "PASSWORD", "value": "topsecret-value", "masked": true, "public": false
        }))
        .unwrap(),
    );
    gl.push_job(j);
    let ex = FakeExecutor {
        outcome: Mutex::new(Some(JobOutcome::Failed {
            reason: FailureReason::ScriptFailure,
            exit_code: Some(2),
        })),
        ..Default::default()
    };
    let h = start(None, 1, ex, gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(5), |g| finished(g, &[7]))
            .await
    );
    let j = h.gl.job(7).unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.exit_code, Some(2));
    assert_eq!(j.failure_reason.as_deref(), Some("script_failure"));
    let t = String::from_utf8(j.trace).unwrap();
    assert!(
        t.contains("$ echo [MASKED]") && !t.contains("topsecret"),
        "{t}"
    );
    assert!(t.contains("ERROR: Job failed: exit code 2"), "{t}");
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

#[test]
fn short_token_strips_prefix() {
    assert_eq!(
        short_token(&SecretString::from("glrt-abcdefghijkl".to_string())),
        "abcdefgh"
    );
    assert_eq!(short_token(&SecretString::from("xyz".to_string())), "xyz");
}

#[test]
fn error_chain_names_the_cause_once() {
    let e = GitLabError::Transport {
        endpoint: "request job",
        source: "connection refused".into(),
    };
    assert_eq!(error_chain(&e), "request job: connection refused");
    let io = std::io::Error::other(e);
    assert_eq!(error_chain(&io), "request job: connection refused");
}

/// Each fixture (GitLab's own payload shapes, `gitlab/fixtures/`) runs through the loop.
#[tokio::test]
async fn gitlab_fixtures_run() {
    let gl = Arc::new(FakeGitLab::new());
    let mut ids = Vec::new();
    for (_, body) in drover_gitlab::fixtures::ALL {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        ids.push(v["id"].as_i64().unwrap());
        gl.push_raw(body.as_bytes());
    }
    let h = start(None, 3, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(10), |g| finished(g, &ids))
            .await
    );
    for id in &ids {
        assert_eq!(h.gl.job(*id).unwrap().state, "success", "job {id}");
    }
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

/// Every optional field of every fixture, alone absent or `null`: the job still runs.
#[tokio::test]
async fn every_optional_field_absent_or_null_still_runs() {
    use drover_gitlab::fixtures::{optional_paths, unset};
    let gl = Arc::new(FakeGitLab::new());
    let mut ids = Vec::new();
    let mut next = 10_000;
    for (_, body) in drover_gitlab::fixtures::ALL {
        let base: serde_json::Value = serde_json::from_str(body).unwrap();
        for path in optional_paths(&base) {
            for remove in [false, true] {
                let mut v = base.clone();
                unset(&mut v, &path, remove);
                next += 1;
                v["id"] = serde_json::json!(next);
                v["token"] = serde_json::json!(format!("tok-{next}"));
                ids.push(next);
                gl.push_raw(serde_json::to_vec(&v).unwrap());
            }
        }
    }
    let h = start(None, 16, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(120), |g| finished(g, &ids))
            .await,
        "{} jobs did not all finish",
        ids.len()
    );
    let failed: Vec<i64> = ids
        .iter()
        .copied()
        .filter(|id| h.gl.job(*id).unwrap().state != "success")
        .collect();
    assert!(failed.is_empty(), "failed: {failed:?}");
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}

/// A job taken but not runnable is reported failed (`runner_system_failure`) with a trace
/// line saying why, and the loop goes on to the next job.
#[tokio::test]
async fn unrunnable_jobs_are_reported_failed_with_why() {
    let gl = Arc::new(FakeGitLab::new());
    let base: serde_json::Value =
        serde_json::from_str(drover_gitlab::fixtures::ARTIFACTS_UNSET).unwrap();
    let hostile = [
        (
            21,
            serde_json::json!({"runner_info": {"timeout": -30}}),
            "runner_info.timeout: -30 is negative",
        ),
        (
            22,
            serde_json::json!({"variables": [{"key": null, "value": "v"}]}),
            "variables[0].key: empty",
        ),
        (
            23,
            serde_json::json!({"variables": [{"key": 5, "value": "v"}]}),
            "variables[0].key: invalid type: integer, expected a string",
        ),
        (
            24,
            serde_json::json!({"steps": [{"script": ["echo"]}]}),
            "steps[0].name: empty",
        ),
    ];
    for (id, patch, _) in &hostile {
        let mut v = base.clone();
        v["id"] = serde_json::json!(id);
        v["token"] = serde_json::json!(format!("tok-{id}"));
        for (k, val) in patch.as_object().unwrap() {
            v[k] = val.clone();
        }
        gl.push_raw(serde_json::to_vec(&v).unwrap());
    }
    gl.push_raw(br#"{"id": 25, "token": "tok-25", "steps": [{"name": "#.to_vec());
    gl.push_raw(b"<html>not json at all</html>".to_vec());
    gl.push_job(job(26, &["echo next"]));
    let h = start(None, 1, FakeExecutor::default(), gl);
    let ids = [21, 22, 23, 24, 25, 26];
    assert!(
        h.gl.wait_until(Duration::from_secs(10), |g| finished(g, &ids))
            .await
    );
    for (id, _, why) in &hostile {
        let j = h.gl.job(*id).unwrap();
        assert_eq!(j.state, "failed", "job {id}");
        assert_eq!(j.failure_reason.as_deref(), Some("runner_system_failure"));
        let t = String::from_utf8(j.trace).unwrap();
        assert!(
            t.contains("ERROR: Job failed (system failure): ") && t.contains(why),
            "job {id}: {t}"
        );
    }
    let j = h.gl.job(25).unwrap();
    assert_eq!(j.state, "failed");
    // No `features` read: the reason is sent as is.
    assert_eq!(j.failure_reason.as_deref(), Some("runner_system_failure"));
    assert!(
        String::from_utf8(j.trace)
            .unwrap()
            .contains("job payload does not decode")
    );
    assert_eq!(h.gl.job(26).unwrap().state, "success");
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
    let st = h.stats.snapshot();
    assert_eq!((st.jobs_failed, st.jobs_succeeded, st.jobs_lost), (5, 1, 1));
    assert!(st.last_error.is_some());
}

/// `features.failure_reasons` without `runner_system_failure`: it is sent all the same, as
/// gitlab-runner does (every GitLab accepts it: `alwaysSupportedFailureReasons`).
#[tokio::test]
async fn unrunnable_job_reason_is_always_accepted() {
    let gl = Arc::new(FakeGitLab::new());
    gl.push_raw(
        serde_json::to_vec(&serde_json::json!({
            "id": 31, "token": "tok-31", "runner_info": {"timeout": -1},
            "features": {"failure_reasons": ["unknown_failure", "script_failure"]}
        }))
        .unwrap(),
    );
    let h = start(None, 1, FakeExecutor::default(), gl);
    assert!(
        h.gl.wait_until(Duration::from_secs(10), |g| finished(g, &[31]))
            .await
    );
    let j = h.gl.job(31).unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.failure_reason.as_deref(), Some("runner_system_failure"));
    h.shutdown.graceful.cancel();
    h.task.await.unwrap().unwrap();
}
