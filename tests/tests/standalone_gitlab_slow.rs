//! The real agent against a GitLab that answers slowly (20 s per answer) or in 5xx storms:
//! jobs complete with byte-exact traces, and the requests the agent makes stay bounded by
//! its backoff (no retry storm). Figures: `RELIABILITY.md`, "GitLab slow or failing".

mod standalone_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::{Endpoint, FinalState, JobSpec, JobState, Storm};
use standalone_support::{E2e, start};

const JOB_WAIT: Duration = Duration::from_secs(240);

/// Lines the job prints, in bursts of [`BURST`] with a pause between bursts.
const LINES: usize = 120;
const BURST: usize = 30;
const PAD: &str = "0123456789abcdef0123456789abcdef0123456789abcdef";

/// A job printing `LINES` lines (about 7 KB) in bursts `pause` seconds apart, then saving
/// them to `out.txt` as its artifact; with the exact bytes it prints.
fn noisy_job(e: &E2e, name: &str, pause: u32) -> (JobSpec, Vec<u8>) {
    let script = format!(
        "i=0; while [ $i -lt {LINES} ]; do printf 'out-%04d-{PAD}\\n' $i; i=$((i+1)); \
         if [ $((i % {BURST})) -eq 0 ]; then sleep {pause}; fi; done | tee out.txt"
    );
    let expected: String = (0..LINES).map(|i| format!("out-{i:04}-{PAD}\n")).collect();
    let spec = e.job(name).script([script]).artifact_paths(["out.txt"]);
    (spec, expected.into_bytes())
}

/// The job succeeded, printed every byte exactly once and in order, and its artifact was
/// stored. (The fake accepts the final update only when the checksum and size the agent
/// sends match the trace it holds, so the agent's trace and GitLab's are the same bytes.)
fn assert_complete(e: &E2e, id: i64, f: &FinalState, expected: &[u8]) {
    let t = f.trace_text();
    let stderr = e.agent.stderr();
    assert_eq!(f.state, JobState::Success, "{t}\n{stderr}");
    let expected = String::from_utf8_lossy(expected);
    assert_eq!(
        t.matches(expected.as_ref()).count(),
        1,
        "output not exactly once:\n{t}"
    );
    assert_eq!(
        t.matches("\nout-").count(),
        LINES,
        "duplicated output lines:\n{t}"
    );
    assert_eq!(t.matches("Job succeeded").count(), 1, "{t}");
    let stored = e.gitlab.artifacts(id);
    assert_eq!(stored.len(), 1, "artifacts stored: {}\n{t}", stored.len());
    assert_eq!(stored[0].filename, "artifacts.zip");
}

/// The fake counts an answer once its handler returned, just after it marked the job
/// finished: wait a moment before reading the counters.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// Requests per endpoint (all statuses) made since `before`.
fn requests_since(
    e: &E2e,
    before: &BTreeMap<(Endpoint, u16), u64>,
) -> BTreeMap<Endpoint, (u64, u64)> {
    let mut out: BTreeMap<Endpoint, (u64, u64)> = BTreeMap::new();
    for ((ep, status), n) in e.gitlab.request_counts() {
        let n = n - before.get(&(ep, status)).copied().unwrap_or(0);
        let entry = out.entry(ep).or_default();
        entry.0 += n;
        if status >= 500 {
            entry.1 += n;
        }
    }
    out
}

fn total(counts: &BTreeMap<Endpoint, (u64, u64)>, ep: Endpoint) -> u64 {
    counts.get(&ep).map_or(0, |c| c.0)
}

fn failed(counts: &BTreeMap<Endpoint, (u64, u64)>, ep: Endpoint) -> u64 {
    counts.get(&ep).map_or(0, |c| c.1)
}

/// Job requests, job updates and artifact uploads answered after `secs`, trace patches
/// after `patch_secs`.
fn answers_after(secs: u64, patch_secs: u64) -> [(Endpoint, u64); 4] {
    [
        (Endpoint::RequestJob, secs),
        (Endpoint::UpdateJob, secs),
        (Endpoint::UploadArtifacts, secs),
        (Endpoint::PatchTrace, patch_secs),
    ]
}

/// Runs one noisy job with every endpoint's answers held per `delays`; returns the job's
/// wall time from enqueue to the accepted final update.
async fn slow_job(e: &E2e, name: &str, delays: &[(Endpoint, u64)]) -> Duration {
    for (ep, secs) in delays {
        e.gitlab.delay(*ep, Some(Duration::from_secs(*secs)));
    }
    let (spec, expected) = noisy_job(e, name, 1);
    let queued = Instant::now();
    let id = e.gitlab.enqueue_job(spec).id;
    let f = e.finished(id, JOB_WAIT).await;
    let took = queued.elapsed();
    assert_complete(e, id, &f, &expected);
    for (ep, _) in delays {
        e.gitlab.delay(*ep, None);
    }
    took
}

/// Every answer held 20 s, except trace patches (10 s), so the test stays within CI's
/// time: the job completes, its trace byte-exact. The longer variant with every endpoint
/// at 20 s is `slow_gitlab_every_endpoint_20s`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_gitlab_job_completes_with_an_exact_trace() {
    let Some(e) = start("slow", 1, "").await else {
        return;
    };
    let took = slow_job(&e, "slow", &answers_after(20, 10)).await;
    println!("slow gitlab (20 s answers, 10 s trace patches): job took {took:?}");
    let stderr = e.agent.stderr();
    assert!(!stderr.contains("gave up"), "{stderr}");
}

/// The figure in RELIABILITY.md: the same job on a fast GitLab, then with every answer of
/// every endpoint held 20 s; prints both wall times.
///
/// ```text
/// cargo test -p drover-tests --test standalone_gitlab_slow -- --ignored --nocapture slow_gitlab_every_endpoint_20s
/// ```
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "about 3 minutes"]
async fn slow_gitlab_every_endpoint_20s() {
    let Some(e) = start("slow-all", 1, "").await else {
        return;
    };
    let fast = slow_job(&e, "fast", &[]).await;
    let slow = slow_job(&e, "slow-all", &answers_after(20, 20)).await;
    println!(
        "job wall time: fast gitlab {:.1} s, every answer after 20 s {:.1} s",
        fast.as_secs_f64(),
        slow.as_secs_f64()
    );
}

/// 30 s in which 70% of the requests of every endpoint the job uses answer `500`, `502` or
/// `503`, while a job runs and a second slot keeps requesting jobs: the job completes with
/// an exact trace and its artifact, and the agent's requests stay within what its backoff
/// allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_5xx_job_completes_and_requests_stay_bounded() {
    // `concurrent = 2`: one slot runs the job, the other keeps requesting jobs.
    let Some(e) = start("storm", 2, "").await else {
        return;
    };
    let storm_secs = 30;
    let window = Duration::from_secs(storm_secs);
    let (spec, expected) = noisy_job(&e, "storm", 1);
    let before = e.gitlab.request_counts();
    let started = Instant::now();
    // Seeds whose draws start with failures where they hurt: the artifact upload meets
    // three 5xx in a row (`FFF..FFF`), the final update four (`FFFF..FF`).
    for (ep, seed) in [
        (Endpoint::RequestJob, 20),
        (Endpoint::PatchTrace, 21),
        (Endpoint::UpdateJob, 22),
        (Endpoint::UploadArtifacts, 24),
    ] {
        e.gitlab.storm(ep, &Storm::new(0.7, window, seed));
    }
    let id = e.gitlab.enqueue_job(spec).id;
    let f = e.finished(id, JOB_WAIT).await;
    let took = started.elapsed();
    assert_complete(&e, id, &f, &expected);
    settle().await;
    // Counts over the storm and what followed until the job ended.
    let counts = requests_since(&e, &before);
    let span = took.as_secs_f64();
    println!(
        "storm: 70% 5xx for {storm_secs} s; job done after {span:.1} s; requests (all, 5xx): {counts:?}"
    );

    // Job requests: after a `204` the next comes `check_interval` (1 s) later; after a
    // failure the backoff waits at least 0.5 s, then at least 1 s, 2 s, 2.5 s. At worst
    // (success and failure alternating) one request per 0.75 s.
    let bound = (span / 0.75).ceil() as u64 + 2;
    let requests = total(&counts, Endpoint::RequestJob);
    assert!(
        requests <= bound,
        "{requests} job requests in {span:.1} s (bound {bound})"
    );
    // Failed trace patches and updates: each failure waits at least half the backoff's
    // first delay (0.5 s), doubling while failures continue; a client retrying at once
    // would make thousands.
    for ep in [Endpoint::PatchTrace, Endpoint::UpdateJob] {
        let bound = (span / 0.5).ceil() as u64 + 1;
        let n = failed(&counts, ep);
        assert!(
            n <= bound,
            "{n} failed {ep:?} in {span:.1} s (bound {bound})"
        );
    }
    // Artifacts: a handful of attempts, not a loop.
    assert!(total(&counts, Endpoint::UploadArtifacts) <= 8, "{counts:?}");
}

/// A storm of `503` with `Retry-After: 10` on job requests and trace patches (every
/// request fails for 30 s): the agent waits what GitLab asks instead of its backoff, so it
/// makes fewer requests than without the header, and the job's trace is still complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_with_retry_after_is_honoured() {
    let Some(e) = start("storm-ra", 2, "").await else {
        return;
    };
    let (spec, expected) = noisy_job(&e, "storm-ra", 4);
    let id = e.gitlab.enqueue_job(spec).id;
    assert!(e.gitlab.wait_for_job_running(id, JOB_WAIT).await);
    let storm_secs = 30;
    let storm = Storm {
        statuses: vec![503],
        ..Storm::new(1.0, Duration::from_secs(storm_secs), 3)
    }
    .header("Retry-After", "10");
    let before = e.gitlab.request_counts();
    let ends = e.gitlab.storm(Endpoint::RequestJob, &storm);
    e.gitlab.storm(Endpoint::PatchTrace, &storm);
    let f = e.finished(id, JOB_WAIT).await;
    assert!(Instant::now() >= ends, "job finished during the storm");
    assert_complete(&e, id, &f, &expected);
    settle().await;
    let counts = requests_since(&e, &before);
    println!("storm with Retry-After: 10 for {storm_secs} s: requests (all, 5xx): {counts:?}");
    // One request at the start, then one per 10 s: 4 in 30 s. Without the header the
    // backoff (1, 2, 4, 5, 5, ... s, each drawn from [d/2, d]) makes 8 or more.
    for ep in [Endpoint::RequestJob, Endpoint::PatchTrace] {
        let n = failed(&counts, ep);
        assert!(
            n <= 4,
            "{n} failed {ep:?} with Retry-After: 10 over {storm_secs} s"
        );
        assert!(n >= 2, "{n} failed {ep:?}: the storm was not met");
    }
}

/// A storm whose failed requests GitLab applied before answering `502` (a proxy timing out
/// on a slow backend): the agent resends trace patches GitLab already holds and the final
/// update it already took. GitLab answers the resent patch `416` with its size and the
/// agent goes on from there: the output is in the trace once, nothing duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_of_applied_502s_duplicates_nothing() {
    let Some(e) = start("storm-applied", 1, "").await else {
        return;
    };
    let (spec, expected) = noisy_job(&e, "storm-applied", 1);
    let storm = Storm {
        statuses: vec![502],
        applied: true,
        ..Storm::new(0.5, Duration::from_secs(30), 5)
    };
    let before = e.gitlab.request_counts();
    e.gitlab.storm(Endpoint::PatchTrace, &storm);
    e.gitlab.storm(Endpoint::UpdateJob, &storm);
    let id = e.gitlab.enqueue_job(spec).id;
    let f = e.finished(id, JOB_WAIT).await;
    assert_complete(&e, id, &f, &expected);
    settle().await;
    let counts = requests_since(&e, &before);
    println!("storm of applied 502s: requests (all, 5xx): {counts:?}");
    assert!(failed(&counts, Endpoint::PatchTrace) >= 1, "{counts:?}");
    assert!(
        e.gitlab.request_count(Endpoint::PatchTrace, 416) >= 1,
        "{counts:?}"
    );
    // The final update GitLab took behind a 502 is, once retried (403, `Job-Status:
    // success`), known as accepted.
    let end = Instant::now() + Duration::from_secs(60);
    let line = loop {
        let stderr = e.agent.stderr();
        if let Some(l) = stderr.lines().find(|l| l.contains("job finished")) {
            break l.to_owned();
        }
        assert!(Instant::now() < end, "no job finished line:\n{stderr}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(line.contains("update_accepted=true"), "{line}");
}
