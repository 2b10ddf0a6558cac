//! The real `HttpGitLab` against the fake GitLab over loopback HTTP.

use std::path::Path;
use std::time::Duration;

use drover_gitlab::features::features_json;
use drover_gitlab::stats::endpoint;
use drover_gitlab::types::{JobResponse, StepWhen};
use drover_gitlab::{
    ArtifactUpload, ClientOptions, GitLab, GitLabError, HttpGitLab, JobRequest, JobUpdate,
    RegisterOptions, RunnerAuth, TraceAnswer,
};
use drover_tests::fake_gitlab::{
    Endpoint, FakeGitLab, JobSpec, JobState, NewRunner, StoredArtifact,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

const SYSTEM_ID: &str = "s_0123456789ab";

fn client(fake: &FakeGitLab) -> HttpGitLab {
    let _ = rustls::crypto::ring::default_provider().install_default();
    HttpGitLab::new(fake.url(), ClientOptions::default()).expect("client")
}

fn auth(token: &str) -> RunnerAuth {
    RunnerAuth {
        token: SecretString::from(token.to_owned()),
        system_id: SYSTEM_ID.into(),
    }
}

fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

async fn take_job(gl: &HttpGitLab, token: &str) -> Box<JobResponse> {
    match gl
        .request_job(&auth(token), None)
        .await
        .expect("request job")
    {
        JobRequest::Job(job) => job,
        other => panic!("expected a job: {other:?}"),
    }
}

/// A fake with runner `glrt-r`, a client, and one job per name in `names`, taken by that
/// runner in order.
async fn runner_with_jobs(names: &[&str]) -> (FakeGitLab, HttpGitLab, Vec<Box<JobResponse>>) {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-r");
    for name in names {
        fake.enqueue_job(JobSpec::new(name));
    }
    let mut jobs = Vec::new();
    for _ in names {
        jobs.push(take_job(&gl, "glrt-r").await);
    }
    (fake, gl, jobs)
}

/// A zip archive upload of `content` written to `dir/name`, kept until GitLab's default.
fn archive_upload(dir: &Path, name: &str, content: &[u8]) -> ArtifactUpload {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    ArtifactUpload {
        filename: name.into(),
        artifact_format: "zip".into(),
        artifact_type: "archive".into(),
        expire_in: None,
        path,
    }
}

/// Asserts GitLab refused a call because the job was canceled.
fn assert_canceled(err: &GitLabError) {
    assert!(
        matches!(err, GitLabError::Forbidden { job_status: Some(s), .. } if s == "canceled"),
        "{err}"
    );
}

fn update(state: &'static str) -> JobUpdate {
    JobUpdate {
        state,
        failure_reason: None,
        exit_code: None,
        checksum: None,
        bytesize: None,
    }
}

#[tokio::test]
async fn register_verify_reset_unregister() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_registration_token("reg-token");

    let bad = gl
        .register(&secret("wrong"), &RegisterOptions::default())
        .await
        .expect_err("bad registration token");
    assert!(
        matches!(
            bad,
            GitLabError::Forbidden {
                job_status: None,
                ..
            }
        ),
        "{bad}"
    );

    let opts = RegisterOptions {
        description: "edge box".into(),
        tag_list: vec!["docker".into(), "arm".into()],
        run_untagged: false,
        ..RegisterOptions::default()
    };
    let creds = gl
        .register(&secret("reg-token"), &opts)
        .await
        .expect("register");
    let id = creds.id.expect("id");
    assert!(creds.token.expose_secret().starts_with("glrt-"));
    assert_eq!(creds.token_expires_at, None);
    let runner = fake.runner(id).expect("runner on fake");
    assert_eq!(runner.tag_list, vec!["docker", "arm"]);
    assert!(!runner.run_untagged);
    assert_eq!(runner.description, "edge box");
    assert_eq!(fake.recorded_infos()[0]["name"], "drover-agent");

    let token = creds.token.expose_secret().to_owned();
    let verified = gl.verify(&auth(&token)).await.expect("verify");
    assert_eq!(verified.id, Some(id));
    assert_eq!(verified.token.expose_secret(), token);
    assert_eq!(fake.managers(id), vec![SYSTEM_ID]);

    fake.set_token_lifetime(Some(Duration::from_secs(86400)));
    let reset = gl.reset_token(&secret(&token)).await.expect("reset");
    let new_token = reset.token.expose_secret().to_owned();
    assert_ne!(new_token, token);
    assert_eq!(reset.id, None, "reset answers without id");
    let expires = reset.token_expires_at.expect("expiry after reset");
    assert!(
        time::OffsetDateTime::parse(&expires, &time::format_description::well_known::Rfc3339)
            .is_ok(),
        "{expires}"
    );
    let old = gl
        .verify(&auth(&token))
        .await
        .expect_err("old token refused");
    assert!(matches!(old, GitLabError::Forbidden { .. }), "{old}");
    gl.verify(&auth(&new_token)).await.expect("new token works");

    gl.unregister(&secret(&new_token))
        .await
        .expect("unregister");
    assert!(fake.runners().is_empty());
    let gone = gl.unregister(&secret(&new_token)).await.expect_err("gone");
    assert!(matches!(gone, GitLabError::Forbidden { .. }), "{gone}");
    assert_eq!(fake.request_count(Endpoint::UnregisterRunner, 204), 1);
    assert_eq!(gl.stats().get(endpoint::UNREGISTER_RUNNER, 403), 1);
}

#[tokio::test]
async fn expired_and_revoked_tokens_are_forbidden() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-expiring");
    fake.add_runner("glrt-revoked");
    gl.verify(&auth("glrt-expiring")).await.expect("valid");
    assert!(fake.expire_token("glrt-expiring"));
    assert!(fake.revoke_token("glrt-revoked"));
    for token in ["glrt-expiring", "glrt-revoked", "glrt-unknown"] {
        let err = gl.verify(&auth(token)).await.expect_err(token);
        assert!(
            matches!(err, GitLabError::Forbidden { .. }),
            "{token}: {err}"
        );
        assert!(!err.is_retryable());
        let err = gl.request_job(&auth(token), None).await.expect_err(token);
        assert!(
            matches!(err, GitLabError::Forbidden { .. }),
            "{token}: {err}"
        );
        let err = gl.reset_token(&secret(token)).await.expect_err(token);
        assert!(
            matches!(err, GitLabError::Forbidden { .. }),
            "{token}: {err}"
        );
    }
}

#[tokio::test]
async fn verify_reports_expiry_and_manager_can_be_removed() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    let at = time::OffsetDateTime::now_utc() + Duration::from_secs(3600);
    let id = fake.add_runner_with(NewRunner {
        token_expires_at: Some(at),
        ..NewRunner::new("glrt-a")
    });
    let creds = gl.verify(&auth("glrt-a")).await.expect("verify");
    let expires = creds.token_expires_at.expect("expiry");
    assert!(expires.ends_with('Z') && expires.contains('.'), "{expires}");
    assert_eq!(fake.managers(id), vec![SYSTEM_ID]);
    gl.unregister_manager(&auth("glrt-a"))
        .await
        .expect("remove manager");
    assert!(fake.managers(id).is_empty());
    assert!(fake.runner(id).is_some(), "runner itself stays");
}

#[tokio::test]
async fn no_job_round_trips_last_update_and_long_poll_wakes() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-r");
    let JobRequest::NoJob { last_update } = gl.request_job(&auth("glrt-r"), None).await.unwrap()
    else {
        panic!("expected no job");
    };
    let cursor = last_update.expect("X-GitLab-Last-Update");
    let JobRequest::NoJob { last_update } = gl
        .request_job(&auth("glrt-r"), Some(&cursor))
        .await
        .unwrap()
    else {
        panic!("expected no job");
    };
    assert_eq!(
        last_update.as_deref(),
        Some(cursor.as_str()),
        "unchanged queue, same cursor"
    );
    assert_eq!(fake.recorded_features().last(), Some(&features_json()));
    assert_eq!(fake.recorded_infos()[0]["executor"], "docker");

    // Long poll: held with the current cursor, woken by an enqueue.
    fake.set_long_poll(Duration::from_secs(30));
    let poll = {
        let gl = gl.clone();
        let cursor = cursor.clone();
        tokio::spawn(async move { gl.request_job(&auth("glrt-r"), Some(&cursor)).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let queued = fake.enqueue_job(JobSpec::new("woken").script(["true"]));
    match poll.await.unwrap().expect("request") {
        JobRequest::Job(job) => assert_eq!(job.id, queued.id),
        other => panic!("long poll did not wake: {other:?}"),
    }
    // Without a cursor the request is answered at once even with long polling on.
    let JobRequest::NoJob { last_update } = gl.request_job(&auth("glrt-r"), None).await.unwrap()
    else {
        panic!("expected no job");
    };
    assert_ne!(
        last_update.as_deref(),
        Some(cursor.as_str()),
        "queue changed"
    );
    assert_eq!(gl.stats().get(endpoint::REQUEST_JOB, 204), 3);
    assert_eq!(gl.stats().get(endpoint::REQUEST_JOB, 201), 1);
}

#[tokio::test]
async fn job_payload_parses_every_field() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-r");
    let dep = fake.enqueue_job(JobSpec::new("build"));
    fake.put_artifact(
        dep.id,
        StoredArtifact {
            filename: "artifacts.zip".into(),
            artifact_format: Some("zip".into()),
            artifact_type: Some("archive".into()),
            expire_in: None,
            content: bytes::Bytes::from_static(b"PK\x05\x06zip"),
        },
    );
    let _ = take_job(&gl, "glrt-r").await; // the dependency itself
    let spec = JobSpec::new("test")
        .image("alpine:3.20")
        .script(["echo one", "echo two"])
        .after_script(["echo after"])
        .variable("PLAIN", "p")
        .masked_variable("SECRET", "hunter2hunter2")
        .file_variable("KUBECONFIG", "apiVersion: v1")
        .raw_variable("RAW", "$NOT_EXPANDED")
        .service_json(json!({"name": "postgres:16", "alias": "db", "variables": [{"key": "POSTGRES_PASSWORD", "value": "pw"}]}))
        .artifact_paths(["out/"])
        .cache_json(json!({"key": "deps", "paths": ["vendor/"], "policy": "pull-push", "when": "on_success", "untracked": false, "fallback_keys": ["main"]}))
        .credentials_json(json!({"type": "registry", "url": "registry.example", "username": "u", "password": "pw"}))
        .depends_on(dep.id)
        .timeout(600)
        .git("depth", json!(5));
    let queued = fake.enqueue_job(spec);
    let job = take_job(&gl, "glrt-r").await;

    assert_eq!(job.id, queued.id);
    assert_eq!(job.token.expose_secret(), queued.token);
    assert!(job.allow_git_fetch);
    assert_eq!(job.job_info.name, "test");
    assert_eq!(job.job_info.stage, "test");
    assert_eq!(job.job_info.project_id, 1);
    assert!(job.git_info.repo_url.contains("gitlab-ci-token:"));
    assert_eq!(job.git_info.ref_name, "main");
    assert_eq!(job.git_info.sha.len(), 40);
    assert_eq!(job.git_info.depth, 5);
    assert!(!job.git_info.refspecs.is_empty());
    assert_eq!(job.runner_info.timeout, 600);
    let var = |k: &str| job.variables.iter().find(|v| v.key == k).expect(k);
    assert!(var("SECRET").masked);
    assert_eq!(var("SECRET").value.expose_secret(), "hunter2hunter2");
    assert!(var("KUBECONFIG").file);
    assert!(var("RAW").raw);
    assert!(var("PLAIN").public);
    assert_eq!(var("CI_JOB_TOKEN").value.expose_secret(), queued.token);
    assert_eq!(job.steps.len(), 2);
    assert_eq!(job.steps[0].name, "script");
    assert_eq!(job.steps[0].script, vec!["echo one", "echo two"]);
    assert_eq!(job.steps[0].when, StepWhen("on_success".into()));
    assert_eq!(job.steps[1].name, "after_script");
    assert_eq!(job.steps[1].when, StepWhen("always".into()));
    assert_eq!(
        job.image.as_ref().map(|i| i.name.as_str()),
        Some("alpine:3.20")
    );
    assert_eq!(job.services[0].alias.as_deref(), Some("db"));
    assert_eq!(job.services[0].variables[0].key, "POSTGRES_PASSWORD");
    assert_eq!(job.artifacts[0].paths, vec!["out/"]);
    assert_eq!(job.artifacts[0].artifact_format.as_deref(), Some("zip"));
    assert_eq!(job.cache[0].policy.as_deref(), Some("pull-push"));
    assert_eq!(job.cache[0].fallback_keys, vec!["main"]);
    assert_eq!(job.credentials[0].kind, "registry");
    assert_eq!(job.dependencies[0].id, dep.id);
    assert_eq!(job.dependencies[0].token.expose_secret(), dep.token);
    let file = &job.dependencies[0].artifacts_file;
    assert_eq!((file.filename.as_str(), file.size), ("artifacts.zip", 7));
    assert!(job.features.trace_sections);
    assert!(
        job.features
            .failure_reasons
            .iter()
            .any(|r| r == "script_failure")
    );

    // Secrets never reach Debug output.
    let debug = format!("{job:?}");
    assert!(!debug.contains("hunter2hunter2"), "masked value in Debug");
    assert!(!debug.contains(&queued.token), "job token in Debug");
}

#[tokio::test]
async fn jobs_go_only_to_runners_with_matching_tags() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-plain");
    fake.add_runner_with(NewRunner {
        tag_list: vec!["gpu".into(), "docker".into()],
        run_untagged: false,
        ..NewRunner::new("glrt-gpu")
    });
    let gpu_job = fake.enqueue_job(JobSpec::new("train").tags(["gpu"]));
    let plain_job = fake.enqueue_job(JobSpec::new("lint"));
    assert_eq!(take_job(&gl, "glrt-plain").await.id, plain_job.id);
    assert!(matches!(
        gl.request_job(&auth("glrt-plain"), None).await.unwrap(),
        JobRequest::NoJob { .. }
    ));
    assert_eq!(take_job(&gl, "glrt-gpu").await.id, gpu_job.id);
}

#[tokio::test]
async fn update_job_statuses() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-r");
    let queued = fake.enqueue_job(JobSpec::new("j").script(["true"]));
    let job = take_job(&gl, "glrt-r").await;
    let tok = job.token.clone();

    let running = gl
        .update_job(job.id, &tok, &update("running"))
        .await
        .expect("running");
    assert!(running.accepted);
    assert_eq!(running.job_status.as_deref(), Some("running"));

    let trace = b"hello\n";
    gl.patch_trace(job.id, &tok, 0, trace).await.expect("patch");
    let wrong = JobUpdate {
        checksum: Some("crc32:deadbeef".into()),
        bytesize: Some(6),
        exit_code: Some(1),
        failure_reason: Some("script_failure"),
        ..update("failed")
    };
    let answer = gl.update_job(job.id, &tok, &wrong).await.expect("202");
    assert!(!answer.accepted);
    assert_eq!(answer.retry_after, Some(Duration::from_secs(3)));
    assert_eq!(answer.job_status.as_deref(), Some("running"));
    assert_eq!(fake.job_state(job.id), Some(JobState::Running));

    let right = JobUpdate {
        checksum: Some(format!("crc32:{:08x}", crc32fast::hash(trace))),
        ..wrong
    };
    let answer = gl.update_job(job.id, &tok, &right).await.expect("200");
    assert!(answer.accepted);
    assert_eq!(answer.job_status.as_deref(), Some("failed"));
    let done = fake
        .wait_for_job_finished(queued.id, Duration::from_secs(5))
        .await
        .expect("finished");
    assert_eq!(done.state, JobState::Failed);
    assert_eq!(done.failure_reason.as_deref(), Some("script_failure"));
    assert_eq!(done.exit_code, Some(1));
    assert_eq!(done.trace, trace);
    let body = &fake.job(job.id).unwrap().updates[2];
    assert_eq!(body["output"]["bytesize"], 6);
    assert_eq!(body["state"], "failed");

    let after = gl
        .update_job(job.id, &tok, &update("success"))
        .await
        .expect_err("finished");
    assert!(
        matches!(&after, GitLabError::Forbidden { job_status: Some(s), .. } if s == "failed"),
        "{after}"
    );
    let wrong_token = gl
        .update_job(job.id, &secret("nope"), &update("running"))
        .await
        .expect_err("wrong token");
    assert!(matches!(
        wrong_token,
        GitLabError::Forbidden {
            job_status: None,
            ..
        }
    ));
    let unknown = gl
        .update_job(9999, &tok, &update("running"))
        .await
        .expect_err("unknown");
    assert!(
        matches!(unknown, GitLabError::Forbidden { .. }),
        "{unknown}"
    );
}

#[tokio::test]
async fn forced_202_then_200_and_cancel() {
    let (fake, gl, jobs) = runner_with_jobs(&["a", "b"]).await;
    let (a, b) = (&jobs[0], &jobs[1]);

    fake.force_update_202(a.id, 1);
    let first = gl
        .update_job(a.id, &a.token, &update("success"))
        .await
        .unwrap();
    assert!(!first.accepted);
    let second = gl
        .update_job(a.id, &a.token, &update("success"))
        .await
        .unwrap();
    assert!(second.accepted);
    assert_eq!(fake.job_state(a.id), Some(JobState::Success));

    assert!(fake.cancel_job(b.id));
    let err = gl
        .update_job(b.id, &b.token, &update("running"))
        .await
        .expect_err("canceled");
    assert_canceled(&err);
    let err = gl
        .patch_trace(b.id, &b.token, 0, b"x")
        .await
        .expect_err("canceled");
    assert_canceled(&err);
}

#[tokio::test]
async fn graceful_cancel_reports_canceling() {
    let (fake, gl, jobs) = runner_with_jobs(&["a"]).await;
    let job = &jobs[0];
    assert!(fake.cancel_job_gracefully(job.id));
    let TraceAnswer::Accepted { job_status, .. } =
        gl.patch_trace(job.id, &job.token, 0, b"log").await.unwrap()
    else {
        panic!("expected accepted");
    };
    assert_eq!(job_status.as_deref(), Some("canceling"));
    let answer = gl
        .update_job(job.id, &job.token, &update("running"))
        .await
        .unwrap();
    assert_eq!(answer.job_status.as_deref(), Some("canceling"));
    gl.update_job(job.id, &job.token, &update("failed"))
        .await
        .unwrap();
    assert_eq!(fake.job_state(job.id), Some(JobState::Canceled));
}

#[tokio::test]
async fn trace_patches_with_exact_content_range() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-r");
    fake.set_trace_update_interval(7);
    fake.enqueue_job(JobSpec::new("a"));
    let job = take_job(&gl, "glrt-r").await;
    let tok = &job.token;

    let first = gl.patch_trace(job.id, tok, 0, b"hello ").await.unwrap();
    let TraceAnswer::Accepted {
        job_status,
        update_interval,
    } = first
    else {
        panic!("expected accepted: {first:?}");
    };
    assert_eq!(job_status.as_deref(), Some("running"));
    assert_eq!(update_interval, Some(Duration::from_secs(7)));
    gl.patch_trace(job.id, tok, 6, b"world").await.unwrap();
    assert_eq!(fake.trace(job.id), b"hello world");

    // A gap and an overlap both get 416 with what GitLab holds.
    for offset in [20, 3] {
        let answer = gl.patch_trace(job.id, tok, offset, b"zzz").await.unwrap();
        assert!(
            matches!(answer, TraceAnswer::RangeMismatch { remote_size: 11 }),
            "{offset}: {answer:?}"
        );
    }
    // GitLab lost the tail: resend from its size.
    assert!(fake.drop_trace_tail(job.id, 5));
    let answer = gl.patch_trace(job.id, tok, 11, b"!").await.unwrap();
    let TraceAnswer::RangeMismatch { remote_size } = answer else {
        panic!("expected 416: {answer:?}");
    };
    assert_eq!(remote_size, 6);
    gl.patch_trace(job.id, tok, remote_size, b"world!")
        .await
        .unwrap();
    assert_eq!(fake.trace(job.id), b"hello world!");

    let record = fake.job(job.id).unwrap();
    assert!(
        record
            .trace_content_types
            .iter()
            .all(|ct| ct.as_deref() == Some("text/plain")),
        "{:?}",
        record.trace_content_types
    );
    let err = gl
        .patch_trace(job.id, &secret("bad"), 12, b"x")
        .await
        .expect_err("bad job token");
    assert!(matches!(err, GitLabError::Forbidden { .. }), "{err}");
    assert_eq!(fake.request_count(Endpoint::PatchTrace, 416), 3);
    assert_eq!(gl.stats().get(endpoint::PATCH_TRACE, 202), 3);
}

#[tokio::test]
async fn server_errors_are_retryable_and_counted() {
    let (fake, gl, jobs) = runner_with_jobs(&["a"]).await;
    let job = &jobs[0];

    fake.fail_next(Endpoint::PatchTrace, 500, 2);
    for _ in 0..2 {
        let err = gl
            .patch_trace(job.id, &job.token, 0, b"x")
            .await
            .expect_err("500");
        assert!(
            matches!(err, GitLabError::Status { status: 500, .. }),
            "{err}"
        );
        assert!(err.is_retryable());
        assert!(
            err.to_string().contains("500 Internal Server Error"),
            "{err}"
        );
    }
    gl.patch_trace(job.id, &job.token, 0, b"x")
        .await
        .expect("recovered");

    fake.fail_next(Endpoint::RequestJob, 409, 1);
    let err = gl
        .request_job(&auth("glrt-r"), None)
        .await
        .expect_err("409");
    assert!(matches!(err, GitLabError::Conflict { .. }) && err.is_retryable());
    fake.fail_next(Endpoint::UpdateJob, 422, 1);
    let err = gl
        .update_job(job.id, &job.token, &update("running"))
        .await
        .expect_err("422");
    assert!(matches!(err, GitLabError::Status { status: 422, .. }) && !err.is_retryable());

    assert_eq!(gl.stats().get(endpoint::PATCH_TRACE, 500), 2);
    assert_eq!(fake.request_count(Endpoint::PatchTrace, 500), 2);
    assert_eq!(fake.request_count(Endpoint::PatchTrace, 202), 1);
}

#[tokio::test]
async fn connection_refused_is_a_retryable_transport_error() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.shutdown();
    drop(fake);
    let mut err = None;
    // The server stops asynchronously; a few attempts see it gone.
    for _ in 0..50 {
        match gl.verify(&auth("glrt-x")).await {
            Err(e @ GitLabError::Transport { .. }) => {
                err = Some(e);
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let err = err.expect("transport error once the server is gone");
    assert!(err.is_retryable());
    assert!(gl.stats().get(endpoint::VERIFY_RUNNER, 0) >= 1);
}

/// Through HTTP: a body that does not decode is a job to report (`Unrunnable`, with its id
/// and token) or, without a readable id and token, `Lost`; never an error that would make
/// the loop request again and leave the job running in GitLab.
#[tokio::test]
async fn undecodable_jobs_are_unrunnable_or_lost() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_runner("glrt-r");
    let bad_var =
        fake.enqueue_job(JobSpec::new("a").variable_json(json!({"key": 42, "value": "v"})));
    match gl.request_job(&auth("glrt-r"), None).await.expect("answer") {
        JobRequest::Unrunnable(u) => {
            assert_eq!(u.id, bad_var.id);
            assert_eq!(u.token.expose_secret(), bad_var.token);
            assert!(
                u.reason
                    .contains("variables[11].key: invalid type: integer"),
                "{}",
                u.reason
            );
            assert!(
                u.failure_reasons
                    .iter()
                    .any(|r| r == "runner_system_failure")
            );
        }
        other => panic!("not unrunnable: {other:?}"),
    }
    let truncated = fake.enqueue_job(
        JobSpec::new("b").raw_body(r#"{"id": {id}, "token": "{token}", "steps": [{"name": "scr"#),
    );
    match gl.request_job(&auth("glrt-r"), None).await.expect("answer") {
        JobRequest::Unrunnable(u) => assert_eq!(u.id, truncated.id),
        other => panic!("not unrunnable: {other:?}"),
    }
    fake.enqueue_job(JobSpec::new("c").set("token", serde_json::Value::Null));
    match gl.request_job(&auth("glrt-r"), None).await.expect("answer") {
        JobRequest::Lost { reason } => assert!(reason.contains("no readable token"), "{reason}"),
        other => panic!("not lost: {other:?}"),
    }
}

#[tokio::test]
async fn artifacts_upload_download_and_limits() {
    let (fake, gl, jobs) = runner_with_jobs(&["build", "test"]).await;
    let (build, test) = (&jobs[0], &jobs[1]);

    let dir = tempfile::tempdir().unwrap();
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let upload = ArtifactUpload {
        expire_in: Some("1 week".into()),
        ..archive_upload(dir.path(), "artifacts.zip", &content)
    };
    gl.upload_artifacts(build.id, &build.token, &upload)
        .await
        .expect("upload");
    let stored = fake.artifacts(build.id);
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].filename, "artifacts.zip");
    assert_eq!(stored[0].artifact_format.as_deref(), Some("zip"));
    assert_eq!(stored[0].artifact_type.as_deref(), Some("archive"));
    assert_eq!(stored[0].expire_in.as_deref(), Some("1 week"));
    assert_eq!(stored[0].content.as_ref(), content.as_slice());

    // Downloaded with another job's token (the dependent job).
    let dest = dir.path().join("dep.zip");
    let size = gl
        .download_artifacts(build.id, &test.token, &dest)
        .await
        .expect("download");
    assert_eq!(size, content.len() as u64);
    assert_eq!(std::fs::read(&dest).unwrap(), content);

    let none = gl
        .download_artifacts(test.id, &test.token, &dir.path().join("none.zip"))
        .await
        .expect_err("no artifacts");
    assert!(matches!(none, GitLabError::NotFound { .. }), "{none}");
    assert!(!dir.path().join("none.zip").exists());
    let bad = gl
        .download_artifacts(build.id, &secret("nope"), &dir.path().join("x.zip"))
        .await
        .expect_err("bad token");
    assert!(matches!(bad, GitLabError::Forbidden { .. }), "{bad}");

    fake.set_max_artifact_size(1000);
    let err = gl
        .upload_artifacts(test.id, &test.token, &upload)
        .await
        .expect_err("too large");
    assert!(
        matches!(err, GitLabError::TooLarge { .. }) && !err.is_retryable(),
        "{err}"
    );

    let missing = ArtifactUpload {
        path: dir.path().join("missing.zip"),
        ..upload
    };
    let err = gl
        .upload_artifacts(test.id, &test.token, &missing)
        .await
        .expect_err("missing file");
    assert!(err.to_string().contains("missing.zip"), "{err}");
}

#[tokio::test]
async fn tokens_never_show_in_debug_output() {
    let fake = FakeGitLab::start().await;
    let gl = client(&fake);
    fake.add_registration_token("reg-secret-token");
    let creds = gl
        .register(&secret("reg-secret-token"), &RegisterOptions::default())
        .await
        .unwrap();
    let token = creds.token.expose_secret().to_owned();
    for debug in [
        format!("{gl:?}"),
        format!("{creds:?}"),
        format!("{:?}", auth(&token)),
        format!("{:?}", gl.verify(&auth("glrt-wrong")).await),
    ] {
        assert!(!debug.contains(&token), "{debug}");
        assert!(!debug.contains("reg-secret-token"), "{debug}");
    }
}

#[tokio::test]
async fn artifact_redirects_never_forward_the_job_token_to_another_origin() {
    let (fake, gl, jobs) = runner_with_jobs(&["build"]).await;
    let build = &jobs[0];
    let dir = tempfile::tempdir().unwrap();
    let upload = archive_upload(dir.path(), "a.zip", b"zip bytes");
    gl.upload_artifacts(build.id, &build.token, &upload)
        .await
        .unwrap();

    // Same server, other host name: a different origin for the client.
    let port = fake.url().rsplit(':').next().unwrap().to_owned();
    let other_origin = format!("http://localhost:{port}");
    for (base, expect_token) in [(fake.url().to_owned(), true), (other_origin, false)] {
        fake.set_artifact_redirect(Some(&base));
        let dest = dir.path().join("dl.zip");
        let size = gl
            .download_artifacts(build.id, &build.token, &dest)
            .await
            .expect("download via redirect");
        assert_eq!(size, 9);
        assert_eq!(std::fs::read(&dest).unwrap(), b"zip bytes");
        let seen = fake.storage_tokens().last().cloned().expect("storage hit");
        assert_eq!(seen.is_some(), expect_token, "{base}: {seen:?}");
    }
    assert_eq!(gl.stats().get(endpoint::DOWNLOAD_ARTIFACTS, 302), 2);
}

/// A CA and a server certificate for `127.0.0.1` signed by it: (CA PEM, server config).
fn tls_identity() -> (String, std::sync::Arc<rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_cert.pem(), std::sync::Arc::new(config))
}

#[tokio::test]
async fn https_with_tls_ca_file() {
    let (ca_pem, config) = tls_identity();
    let fake = FakeGitLab::start_tls(config).await;
    assert!(fake.url().starts_with("https://127.0.0.1:"));
    fake.add_runner("glrt-tls");

    // Without the CA the handshake fails: a transport error, nothing reaches the API.
    let untrusting = HttpGitLab::new(fake.url(), ClientOptions::default()).unwrap();
    let err = untrusting
        .verify(&auth("glrt-tls"))
        .await
        .expect_err("untrusted");
    assert!(matches!(err, GitLabError::Transport { .. }), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let gl = HttpGitLab::new(
        fake.url(),
        ClientOptions {
            tls_ca_file: Some(ca_file),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let creds = gl
        .verify(&auth("glrt-tls"))
        .await
        .expect("verify over https");
    assert_eq!(creds.token.expose_secret(), "glrt-tls");
    fake.enqueue_job(JobSpec::new("tls").script(["true"]));
    let job = take_job(&gl, "glrt-tls").await;
    gl.patch_trace(job.id, &job.token, 0, b"over tls")
        .await
        .unwrap();
    assert_eq!(fake.trace(job.id), b"over tls");
}

#[tokio::test]
async fn api_timeout_does_not_cut_artifact_transfers() {
    let fake = FakeGitLab::start().await;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let gl = HttpGitLab::new(
        fake.url(),
        ClientOptions {
            request_timeout: Duration::from_millis(300),
            transfer_timeout: Duration::from_secs(30),
            ..ClientOptions::default()
        },
    )
    .unwrap();
    fake.add_runner("glrt-r");
    fake.enqueue_job(JobSpec::new("a"));
    let job = take_job(&gl, "glrt-r").await;
    fake.delay(Endpoint::UploadArtifacts, Some(Duration::from_millis(600)));
    fake.delay(Endpoint::UpdateJob, Some(Duration::from_millis(600)));
    let dir = tempfile::tempdir().unwrap();
    let upload = archive_upload(dir.path(), "a.zip", b"zip");
    gl.upload_artifacts(job.id, &job.token, &upload)
        .await
        .expect("slow upload within the transfer timeout");
    let err = gl
        .update_job(job.id, &job.token, &update("running"))
        .await
        .expect_err("slow api call hits the request timeout");
    assert!(
        matches!(err, GitLabError::Transport { .. }) && err.is_retryable(),
        "{err}"
    );
}

/// The client half of `agent/gitlab/src/STATUS.md`: one case per (endpoint, status,
/// headers) row, answered by the fake with fault injection, and the error it becomes:
/// its kind, whether it is retried, and the wait GitLab asked for.
#[tokio::test]
async fn status_table_rows_map_to_errors() {
    let (fake, gl, jobs) = runner_with_jobs(&["a"]).await;
    let job = &jobs[0];
    let dir = tempfile::tempdir().unwrap();
    let upload = archive_upload(dir.path(), "artifacts.zip", b"zip");
    let reset_in_30s = {
        let at = time::OffsetDateTime::now_utc() + time::Duration::seconds(30);
        at.format(time::macros::format_description!(
            "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
        ))
        .unwrap()
    };
    let secs = |s: u64| Some(Duration::from_secs(s));
    type Row<'a> = (
        Endpoint,
        u16,
        Vec<(&'a str, &'a str)>,
        &'a str,
        bool,
        Option<Duration>,
    );
    let rows: Vec<Row> = vec![
        (Endpoint::RequestJob, 403, vec![], "forbidden", false, None),
        (Endpoint::RequestJob, 404, vec![], "not_found", false, None),
        (
            Endpoint::RequestJob,
            404,
            vec![("Retry-After", "5")],
            "not_found",
            false,
            None,
        ),
        (Endpoint::RequestJob, 409, vec![], "conflict", true, None),
        (Endpoint::RequestJob, 401, vec![], "status", false, None),
        (Endpoint::RequestJob, 408, vec![], "status", true, None),
        (Endpoint::RequestJob, 422, vec![], "status", false, None),
        (Endpoint::RequestJob, 429, vec![], "status", true, None),
        (
            Endpoint::RequestJob,
            429,
            vec![("Retry-After", "7")],
            "retry_later",
            true,
            secs(7),
        ),
        (
            Endpoint::RequestJob,
            429,
            vec![
                ("Retry-After", "7"),
                ("RateLimit-ResetTime", reset_in_30s.as_str()),
            ],
            "retry_later",
            true,
            secs(30),
        ),
        (Endpoint::RequestJob, 500, vec![], "status", true, None),
        (Endpoint::RequestJob, 501, vec![], "status", false, None),
        (Endpoint::RequestJob, 502, vec![], "status", true, None),
        (
            Endpoint::RequestJob,
            503,
            vec![("Retry-After", "3")],
            "retry_later",
            true,
            secs(3),
        ),
        (Endpoint::RequestJob, 504, vec![], "status", true, None),
        (Endpoint::RequestJob, 512, vec![], "status", true, None),
        (
            Endpoint::VerifyRunner,
            403,
            vec![],
            "forbidden",
            false,
            None,
        ),
        (
            Endpoint::VerifyRunner,
            404,
            vec![],
            "not_found",
            false,
            None,
        ),
        (Endpoint::VerifyRunner, 500, vec![], "status", true, None),
        (Endpoint::UpdateJob, 403, vec![], "forbidden", false, None),
        (Endpoint::UpdateJob, 404, vec![], "not_found", false, None),
        (Endpoint::UpdateJob, 412, vec![], "status", false, None),
        (Endpoint::UpdateJob, 502, vec![], "status", true, None),
        (
            Endpoint::UpdateJob,
            429,
            vec![("Retry-After", "2")],
            "retry_later",
            true,
            secs(2),
        ),
        (Endpoint::PatchTrace, 403, vec![], "forbidden", false, None),
        (Endpoint::PatchTrace, 404, vec![], "not_found", false, None),
        (
            Endpoint::PatchTrace,
            503,
            vec![("Retry-After", "4")],
            "retry_later",
            true,
            secs(4),
        ),
        (
            Endpoint::UploadArtifacts,
            403,
            vec![],
            "forbidden",
            false,
            None,
        ),
        (
            Endpoint::UploadArtifacts,
            413,
            vec![],
            "too_large",
            false,
            None,
        ),
        (Endpoint::UploadArtifacts, 502, vec![], "status", true, None),
        (
            Endpoint::DownloadArtifacts,
            403,
            vec![],
            "forbidden",
            false,
            None,
        ),
        (
            Endpoint::DownloadArtifacts,
            404,
            vec![],
            "not_found",
            false,
            None,
        ),
        (
            Endpoint::DownloadArtifacts,
            503,
            vec![],
            "status",
            true,
            None,
        ),
    ];
    for (ep, status, headers, want_kind, want_retry, want_after) in rows {
        fake.fail_next_with(ep, status, 1, &headers);
        let err = match ep {
            Endpoint::RequestJob => gl.request_job(&auth("glrt-r"), None).await.map(drop),
            Endpoint::VerifyRunner => gl.verify(&auth("glrt-r")).await.map(drop),
            Endpoint::UpdateJob => gl
                .update_job(job.id, &job.token, &update("running"))
                .await
                .map(drop),
            Endpoint::PatchTrace => gl.patch_trace(job.id, &job.token, 0, b"x").await.map(drop),
            Endpoint::UploadArtifacts => gl.upload_artifacts(job.id, &job.token, &upload).await,
            Endpoint::DownloadArtifacts => gl
                .download_artifacts(job.id, &job.token, &dir.path().join("dl.zip"))
                .await
                .map(drop),
            other => unreachable!("{other:?}"),
        }
        .expect_err("injected failure");
        let case = format!("{ep:?} {status} {headers:?}: {err}");
        let kind = match &err {
            GitLabError::Forbidden { .. } => "forbidden",
            GitLabError::NotFound { .. } => "not_found",
            GitLabError::Conflict { .. } => "conflict",
            GitLabError::TooLarge { .. } => "too_large",
            GitLabError::Status { .. } => "status",
            GitLabError::RetryLater { .. } => "retry_later",
            GitLabError::Transport { .. } => "transport",
            GitLabError::Decode { .. } => "decode",
        };
        assert_eq!(kind, want_kind, "{case}");
        assert_eq!(err.is_retryable(), want_retry, "{case}");
        assert_eq!(err.status(), Some(status), "{case}");
        match (err.retry_after(), want_after) {
            (None, None) => {}
            // A reset time is a wall-clock instant: allow the seconds this case took.
            (Some(got), Some(want)) => assert!(
                got <= want && got + Duration::from_secs(3) >= want,
                "{case}: waited {got:?}, want {want:?}"
            ),
            (got, want) => panic!("{case}: retry_after {got:?}, want {want:?}"),
        }
    }
}
