//! The distributed cache in a fleet: a runner spec with `[runners.cache.s3]` keys applied
//! through the real `drover serve`; the keys are sealed at rest (not in the SQLite file in
//! clear), redacted in `drover runner get -o json`, delivered to the real agent beside the
//! spec (RunnerAssignment fields 10-12), and its job's cache goes to a real S3-compatible
//! server (moto, see `drover_tests::s3_server`).

use std::time::Duration;

use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use drover_tests::fleet_support::{
    agents_connected, apply, docker_image, init_crypto, registration_spec, rollout_complete,
    wait_until,
};
use drover_tests::harness::{Agent, Controller, stderr};
use drover_tests::s3_server::S3Server;
use serde_json::json;

const BUCKET: &str = "s3cache-fleet";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_s3_keys_are_sealed_redacted_and_used_by_the_agent() {
    init_crypto();
    let Some(s3) = S3Server::start("fleet_s3_cache").await else {
        return;
    };
    let Some(image) = docker_image().await else {
        return;
    };
    s3.create_bucket(BUCKET).await;
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    gitlab.add_registration_token("GR1348941-s3cache");
    let c = Controller::start();
    let token = c.create_token(&["--label", "site=s3c"]);
    let mut a = Agent::new();
    let id = a.enroll_ok(&c.url(), &token);
    a.run();
    let logs = || {
        let mut s = format!("----- controller -----\n{}", c.proc.log_text());
        if let Some(p) = &a.proc {
            s.push_str(&format!("\n----- agent -----\n{}", p.log_text()));
        }
        s
    };
    agents_connected(&c, &[&id], logs).await;

    let access = format!("AKIAFLEET{:08X}", rand::random::<u32>());
    let secret = format!("fleet-secret-{:016x}", rand::random::<u64>());
    let cache = format!(
        "[runners.cache]\nType = \"s3\"\n[runners.cache.s3]\nServerAddress = \"{}\"\n\
         AccessKey = \"{access}\"\nSecretKey = \"{secret}\"\nBucketName = \"{BUCKET}\"\n\
         Insecure = true\n[runners.selector]",
        s3.addr
    );
    let spec = registration_spec(
        "s3c-fleet",
        gitlab.url(),
        "GR1348941-s3cache",
        "s3c",
        &image,
    )
    .replace("[runners.selector]", &cache);
    let dir = tempfile::tempdir().unwrap();
    apply(&c, dir.path(), &spec);
    rollout_complete(&c, 1, logs).await;
    let runner = wait_until(
        Duration::from_secs(40),
        "runner registered",
        || gitlab.runners().into_iter().next(),
        logs,
    )
    .await;

    // Redacted where people see the spec.
    let out = c.drover(&["runner", "get", "s3c-fleet", "-o", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains(&secret) && !text.contains(&access), "{text}");
    assert!(text.contains("\"SecretKey\": \"<redacted>\""), "{text}");

    // The agent's job uses them: its cache lands at gitlab-runner's object name.
    let job = JobSpec::new("fleet-cache")
        .image(&image)
        .variable("GIT_STRATEGY", "none")
        .script(["mkdir -p vendor", "echo fleet-cached > vendor/marker"])
        .cache_json(
            json!({"key": "deps", "paths": ["vendor/"], "policy": "pull-push",
            "when": "on_success", "untracked": false}),
        );
    let jid = gitlab.enqueue_job(job).id;
    let f = gitlab
        .wait_for_job_finished(jid, Duration::from_secs(60))
        .await
        .unwrap_or_else(|| panic!("job did not finish\n{}", logs()));
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Success, "{t}");
    assert!(t.contains("Uploaded cache"), "{t}\n{}", logs());
    let short: String = runner
        .token
        .trim_start_matches("glrt-")
        .chars()
        .take(8)
        .collect();
    let object = format!("runner/{short}/project/1/deps");
    assert!(s3.get(BUCKET, &object).await.is_some(), "no {object}");

    // Sealed at rest: neither key is in the database files in clear.
    for entry in std::fs::read_dir(c.data_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if !name.starts_with("drover.db") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        for needle in [&secret, &access] {
            assert!(
                !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
                "{needle} in clear in {name}"
            );
        }
    }
    // Nor in the controller's or the agent's log.
    assert!(!logs().contains(&secret));
}
