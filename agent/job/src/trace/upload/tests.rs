use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use super::*;
use drover_gitlab::fake::{Call, Endpoint, FakeGitLab, job};

fn fast() -> UploadOptions {
    UploadOptions {
        interval: Duration::from_millis(20),
        keepalive: Duration::from_millis(200),
        max_patch: 1024,
        backoff_min: Duration::from_millis(5),
        backoff_max: Duration::from_millis(20),
        final_deadline: Duration::from_secs(10),
    }
}

struct Setup {
    gl: Arc<FakeGitLab>,
    sink: TraceSink,
    cancel: CancellationToken,
    up: TraceUploader,
}

async fn setup(id: i64, opts: UploadOptions) -> Setup {
    let gl = Arc::new(FakeGitLab::new());
    let j = job(id, &["true"]);
    let reasons = j.features.failure_reasons.clone();
    gl.push_job(j);
    // Hand the job out so the fake knows it.
    let auth = drover_gitlab::RunnerAuth {
        token: SecretString::from("glrt-x".to_string()),
        system_id: "s_0123456789ab".into(),
    };
    let sink = TraceSink::new();
    let cancel = CancellationToken::new();
    gl.request_job(&auth, None).await.unwrap();
    let up = TraceUploader::start(
        gl.clone(),
        id,
        SecretString::from(format!("job-token-{id}")),
        sink.clone(),
        cancel.clone(),
        reasons,
        opts,
    );
    Setup {
        gl,
        sink,
        cancel,
        up,
    }
}

fn patches(gl: &FakeGitLab) -> Vec<(u64, usize)> {
    gl.calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::PatchTrace { offset, len, .. } => Some((offset, len)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn ships_increments_with_exact_ranges_and_final_update() {
    let s = setup(1, fast()).await;
    s.sink.write(b"hello ");
    assert!(
        s.gl.wait_until(Duration::from_secs(5), |g| g.job(1).unwrap().trace
            == b"hello ")
            .await
    );
    s.sink.write(b"world\n");
    let report = s.up.finish(FinalState::Success).await;
    assert!(
        report.trace_complete && report.update_accepted,
        "{report:?}"
    );
    let j = s.gl.job(1).unwrap();
    assert_eq!(j.trace, b"hello world\n");
    assert_eq!(j.state, "success");
    assert_eq!(
        j.checksum.as_deref(),
        Some(format!("crc32:{:08x}", crc32fast::hash(b"hello world\n")).as_str())
    );
    let p = patches(&s.gl);
    assert_eq!(p, vec![(0, 6), (6, 6)]);
}

#[tokio::test]
async fn range_mismatch_resends_from_remote_size() {
    let s = setup(2, fast()).await;
    s.sink.write(b"0123456789");
    assert!(
        s.gl.wait_until(Duration::from_secs(5), |g| g.job(2).unwrap().trace.len()
            == 10)
            .await
    );
    // GitLab lost everything after byte 4.
    s.gl.force_range_mismatch(2, 4);
    s.sink.write(b"abc");
    let report = s.up.finish(FinalState::Success).await;
    assert!(report.trace_complete, "{report:?}");
    assert_eq!(s.gl.job(2).unwrap().trace, b"0123456789abc");
    // Resent from byte 4: the accepted part comes back from the spool file.
    let p = patches(&s.gl);
    assert!(p.contains(&(4, 6)) && p.contains(&(10, 3)), "{p:?}");
}

#[tokio::test]
async fn server_errors_are_retried_without_losing_bytes() {
    let s = setup(3, fast()).await;
    s.gl.fail_next(Endpoint::PatchTrace, 5, 500);
    s.gl.fail_next(Endpoint::UpdateJob, 2, 502);
    s.sink.write(b"first ");
    tokio::time::sleep(Duration::from_millis(50)).await;
    s.sink.write(b"second");
    let report = s.up.finish(FinalState::Success).await;
    assert!(
        report.trace_complete && report.update_accepted,
        "{report:?}"
    );
    assert_eq!(s.gl.job(3).unwrap().trace, b"first second");
    assert_eq!(s.gl.job(3).unwrap().state, "success");
}

#[tokio::test]
async fn not_accepted_final_update_is_retried() {
    let s = setup(4, fast()).await;
    s.gl.answer_not_accepted(3);
    s.sink.write(b"x");
    let report = s.up.finish(FinalState::Success).await;
    assert!(report.update_accepted);
    let finals =
        s.gl.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::UpdateJob { state, .. } if state == "success"))
            .count();
    assert_eq!(finals, 4);
}

#[tokio::test]
async fn job_status_canceled_fires_the_cancel_token() {
    let s = setup(5, fast()).await;
    s.gl.cancel(5);
    s.sink.write(b"running...");
    tokio::time::timeout(Duration::from_secs(5), s.cancel.cancelled())
        .await
        .expect("job canceled");
    let report = s.up.finish(FinalState::from(&JobOutcome::Canceled)).await;
    assert!(!report.update_accepted);
    assert_eq!(s.gl.job(5).unwrap().state, "canceled");
}

#[tokio::test]
async fn keepalive_update_sees_cancellation_without_output() {
    let s = setup(6, fast()).await;
    s.gl.cancel(6);
    tokio::time::timeout(Duration::from_secs(5), s.cancel.cancelled())
        .await
        .expect("job canceled by keepalive");
    let _ = s.up.finish(FinalState::Success).await;
}

/// A quiet job on a GitLab failing its updates: keepalives back off (at least 100, 200,
/// 200 ms apart here) instead of coming once per interval (20 ms).
#[tokio::test]
async fn failing_keepalives_back_off() {
    let opts = UploadOptions {
        keepalive: Duration::from_millis(100),
        backoff_min: Duration::from_millis(200),
        backoff_max: Duration::from_millis(400),
        ..fast()
    };
    let s = setup(12, opts).await;
    s.gl.fail_next(Endpoint::UpdateJob, 8, 502);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let updates =
        s.gl.calls()
            .iter()
            .filter(|c| matches!(c, Call::UpdateJob { .. }))
            .count();
    assert!((1..=5).contains(&updates), "{updates} keepalives in 800 ms");
    let report = s.up.finish(FinalState::Success).await;
    assert!(report.update_accepted);
}

/// A final update GitLab applied but whose answer was lost: the retry meets `403` with
/// `Job-Status` equal to the state sent, which is an accepted update; another state is not.
#[tokio::test]
async fn final_state_gitlab_already_holds_counts_as_accepted() {
    let s = setup(13, fast()).await;
    s.sink.write(b"done\n");
    while s.gl.job(13).unwrap().trace.len() < 5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // GitLab took a final `success` whose answer never arrived.
    s.gl.set_state(13, "success");
    let report = s.up.finish(FinalState::Success).await;
    assert!(report.update_accepted, "{report:?}");
    assert!(report.trace_complete);
    assert!(!s.cancel.is_cancelled());

    let s = setup(14, fast()).await;
    s.gl.set_state(14, "failed");
    let report = s.up.finish(FinalState::Success).await;
    assert!(!report.update_accepted, "{report:?}");
}

#[tokio::test]
async fn failure_reason_and_exit_code_are_reported() {
    let s = setup(7, fast()).await;
    s.sink.write(b"boom\n");
    let report =
        s.up.finish(FinalState::Failed {
            reason: FailureReason::ScriptFailure,
            exit_code: Some(3),
        })
        .await;
    assert!(report.update_accepted);
    let j = s.gl.job(7).unwrap();
    assert_eq!(j.state, "failed");
    assert_eq!(j.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(j.exit_code, Some(3));
}

#[tokio::test]
async fn large_trace_is_sent_in_bounded_patches() {
    let s = setup(8, fast()).await;
    let data: Vec<u8> = (0..5000u32).map(|i| b'a' + (i % 26) as u8).collect();
    s.sink.write(&data);
    let report = s.up.finish(FinalState::Success).await;
    assert!(report.trace_complete);
    assert_eq!(s.gl.job(8).unwrap().trace, data);
    assert!(patches(&s.gl).iter().all(|(_, len)| *len <= 1024));
}

#[test]
fn unsupported_failure_reasons_fall_back_as_gitlab_runner() {
    let listed = vec!["script_failure".to_string(), "unknown_failure".to_string()];
    let sent = |r, l: &[String]| supported_reason(r, l);
    assert_eq!(
        sent(FailureReason::ScriptFailure, &listed),
        Some("script_failure")
    );
    // Always accepted, listed or not (`alwaysSupportedFailureReasons`).
    for r in [
        FailureReason::RunnerSystemFailure,
        FailureReason::JobExecutionTimeout,
        FailureReason::ScriptFailure,
    ] {
        assert_eq!(sent(r, &[]), Some(r.as_str()));
        assert_eq!(sent(r, &["unknown_failure".into()]), Some(r.as_str()));
    }
    // `failureReasonsCompatibilityMap`: image_pull_failure → runner_system_failure.
    assert_eq!(
        sent(FailureReason::ImagePullFailure, &listed),
        Some("runner_system_failure")
    );
    assert_eq!(
        sent(
            FailureReason::ImagePullFailure,
            &["image_pull_failure".into()]
        ),
        Some("image_pull_failure")
    );
    assert_eq!(
        sent(FailureReason::MissingDependencyFailure, &listed),
        Some("unknown_failure")
    );
    assert_eq!(
        sent(
            FailureReason::MissingDependencyFailure,
            &["missing_dependency_failure".into()]
        ),
        Some("missing_dependency_failure")
    );
}

#[tokio::test]
async fn update_interval_header_sets_the_pace_and_finish_flushes_at_once() {
    let s = setup(9, fast()).await;
    s.gl.set_update_interval(Some(Duration::from_secs(60)));
    s.sink.write(b"a");
    assert!(
        s.gl.wait_until(Duration::from_secs(5), |g| g.job(9).unwrap().trace == b"a")
            .await
    );
    s.sink.write(b"b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // GitLab asked for 60 s between patches: nothing more went out meanwhile.
    assert_eq!(s.gl.job(9).unwrap().trace, b"a");
    let report = s.up.finish(FinalState::Success).await;
    assert!(report.trace_complete);
    assert_eq!(s.gl.job(9).unwrap().trace, b"ab");
}
