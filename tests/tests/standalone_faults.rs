//! The real agent against a GitLab that cancels, loses trace bytes, or fails for a while.

mod standalone_support;

use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::{Endpoint, JobState};
use standalone_support::{E2e, start};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_never_verifies_a_gitlab_without_verify_still_runs_jobs() {
    let Some(e) = start("noverify", 1, "").await else {
        return;
    };
    // A GitLab (or proxy) that does not know `POST /runners/verify`.
    e.gitlab
        .fail_for(Endpoint::VerifyRunner, 404, Duration::from_secs(600));
    let id = e
        .gitlab
        .enqueue_job(e.job("noverify").script(["echo ran-without-verify"]))
        .id;
    let f = e.finished(id, JOB_WAIT).await;
    assert_eq!(f.state, JobState::Success, "{}", f.trace_text());
    let verifies: u64 = e
        .gitlab
        .request_counts()
        .iter()
        .filter(|((ep, _), _)| *ep == Endpoint::VerifyRunner)
        .map(|(_, n)| n)
        .sum();
    assert_eq!(verifies, 0, "gitlab-runner's run never verifies");
    let stderr = e.agent.stderr();
    assert!(!stderr.contains("every runner stopped"), "{stderr}");
}

/// Makes `POST /jobs/request` answer `502` for `outage`, queues a job once the agent has
/// seen the outage, and returns how long after GitLab's return the job was handed out.
async fn job_pickup_after_outage(e: &E2e, outage: Duration, n: usize) -> Duration {
    let before = e.gitlab.request_count(Endpoint::RequestJob, 502);
    let back_at = e.gitlab.fail_for(Endpoint::RequestJob, 502, outage);
    // Queue the job only once a request failed, so no request already in flight takes it.
    let end = Instant::now() + Duration::from_secs(60);
    while e.gitlab.request_count(Endpoint::RequestJob, 502) == before {
        assert!(Instant::now() < end, "no job request during the outage");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let id = e
        .gitlab
        .enqueue_job(e.job(&format!("after-outage-{n}")).script(["true"]))
        .id;
    let f = e.finished(id, JOB_WAIT).await;
    assert_eq!(f.state, JobState::Success, "{}", f.trace_text());
    let picked = e
        .gitlab
        .job(id)
        .and_then(|j| j.picked_at)
        .expect("picked_at of a finished job");
    assert!(picked >= back_at, "job {id} handed out during the outage");
    picked - back_at
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_taken_within_seconds_after_an_outage() {
    let Some(e) = start("recovery", 1, "").await else {
        return;
    };
    // 20 s of 502s: long enough for the backoff to reach its cap.
    let took = job_pickup_after_outage(&e, Duration::from_secs(20), 0).await;
    // Drover's target is 10 s (the backoff cap is 5 s); generous for loaded machines.
    assert!(
        took < Duration::from_secs(15),
        "job taken {took:?} after gitlab returned\n{}",
        e.agent.stderr()
    );
}

/// The figure in BENCHMARKS.md: `OUTAGE_RUNS` outages of `OUTAGE_SECS` seconds of `502`
/// (defaults 5 and 90) against one agent, each followed by a job; prints how long after
/// GitLab's return each job was handed out.
///
/// ```text
/// cargo test -p drover-tests --test standalone_faults -- --ignored --nocapture outage_recovery_figures
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: several minutes"]
async fn outage_recovery_figures() {
    let Some(e) = start("recovery-bench", 1, "").await else {
        return;
    };
    let env = |k: &str, d: u64| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let secs = env("OUTAGE_SECS", 90);
    let runs = env("OUTAGE_RUNS", 5) as usize;
    let mut took = Vec::new();
    for n in 0..runs {
        let t = job_pickup_after_outage(&e, Duration::from_secs(secs), n).await;
        println!(
            "outage {n}: {secs} s of 502, job taken {:.2} s after gitlab returned",
            t.as_secs_f64()
        );
        took.push(t);
    }
    took.sort();
    println!(
        "job pickup after {secs} s of 502 ({runs} runs): min {:.2} s, median {:.2} s, max {:.2} s",
        took[0].as_secs_f64(),
        took[took.len() / 2].as_secs_f64(),
        took[took.len() - 1].as_secs_f64()
    );
}
