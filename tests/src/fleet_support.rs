//! Shared pieces of the fleet end-to-end tests (`fleet_controller`, `fleet_agent`,
//! `fleet_real_agents`): Docker and image checks, runner spec files, jobs that must
//! succeed, `drover-agent status` polling, JSON of CLI output.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use crate::fake_gitlab::{FakeGitLab, JobSpec, JobState};
use crate::harness::{self, Controller, stderr, stdout};

/// Installs rustls' ring provider (the test process talks gRPC itself).
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The local busybox image when Docker answers; `None` (after saying why) when it does not,
/// so tests on a box without Docker skip instead of failing.
pub async fn docker_image() -> Option<String> {
    crate::images::docker_and_busybox("this test")
        .await
        .map(|(_, image)| image)
}

/// A CSR (DER) for a fresh key, as an agent sends at enrollment.
pub fn csr_der() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().expect("generate a key");
    rcgen::CertificateParams::default()
        .serialize_request(&key)
        .expect("serialize a CSR")
        .der()
        .to_vec()
}

/// The parsed stdout of a successful CLI call.
pub fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", stderr(out));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(out)))
}

/// A runner spec file for `drover runner apply`: one runner `name` on `url`, registered
/// with `registration_token`, on the agents labelled `site=<site>`, running `image` with
/// `pull_policy = "never"`, one job at a time.
pub fn registration_spec(
    name: &str,
    url: &str,
    registration_token: &str,
    site: &str,
    image: &str,
) -> String {
    format!(
        "[[runners]]\nname = \"{name}\"\nurl = \"{url}\"\n\
         registration_token = \"{registration_token}\"\n\
         description = \"{{name}} on {{hostname}}\"\nlimit = 1\nexecutor = \"docker\"\n\
         [runners.selector]\nsite = \"{site}\"\n\
         [runners.docker]\nimage = \"{image}\"\npull_policy = \"never\"\n"
    )
}

/// Writes `spec` into `dir` and runs `drover runner apply -f FILE --strategy all`.
pub fn apply(c: &Controller, dir: &Path, spec: &str) {
    let file = dir.join("runners.toml");
    std::fs::write(&file, spec).expect("write spec file");
    let out = c.drover(&[
        "runner",
        "apply",
        "-f",
        file.to_str().expect("utf-8 path"),
        "--strategy",
        "all",
    ]);
    assert!(out.status.success(), "runner apply: {}", stderr(&out));
}

/// Polls `f` every 200 ms (without blocking the runtime) until it returns `Some`; panics
/// after `timeout` with `what` and `context()` (e.g. a process log).
pub async fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut f: impl FnMut() -> Option<T>,
    context: impl Fn() -> String,
) -> T {
    let end = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out waiting for {what}\n{}",
            context()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until every agent of `ids` has a live session (`connected` in `drover agents -o
/// json`). A rollout does not wait for offline agents, so a test that applies before its
/// agents connected could see the rollout complete with nothing pushed.
pub async fn agents_connected(c: &Controller, ids: &[&str], context: impl Fn() -> String) {
    wait_until(
        Duration::from_secs(40),
        &format!("agents {ids:?} connected"),
        || {
            ids.iter()
                .all(|id| c.agent(id).is_some_and(|a| a["connected"] == true))
                .then_some(())
        },
        context,
    )
    .await;
}

/// Waits until `drover rollout status` says `complete` for `generation`.
pub async fn rollout_complete(c: &Controller, generation: u64, context: impl Fn() -> String) {
    wait_until(
        Duration::from_secs(40),
        &format!("rollout of generation {generation} complete"),
        || {
            let out = c.drover(&["rollout", "status", "-o", "json"]);
            let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            (s["state"] == "complete" && s["generation"] == generation).then_some(())
        },
        context,
    )
    .await;
}

/// Enqueues a busybox job printing `fleet-<name>` and waits for its success; returns the
/// GitLab runner id that ran it.
pub async fn job_ok(
    gitlab: &FakeGitLab,
    image: &str,
    name: &str,
    tags: &[&str],
    context: impl Fn() -> String,
) -> i64 {
    let mut spec = JobSpec::new(name)
        .image(image)
        .variable("GIT_STRATEGY", "none")
        .script([format!("echo fleet-{name}")]);
    if !tags.is_empty() {
        spec = spec.tags(tags.iter().map(|t| t.to_string()));
    }
    let id = gitlab.enqueue_job(spec).id;
    let Some(f) = gitlab
        .wait_for_job_finished(id, Duration::from_secs(60))
        .await
    else {
        panic!("job {name} did not finish\n{}", context());
    };
    let t = f.trace_text();
    assert_eq!(f.state, JobState::Success, "{t}");
    assert!(t.contains(&format!("fleet-{name}")), "{t}");
    gitlab
        .job(id)
        .and_then(|j| j.runner_id)
        .expect("a finished job has a runner")
}

/// `drover-agent status -o json --state-dir DIR`.
pub fn status_json(state_dir: &Path) -> serde_json::Value {
    let out = Command::new(harness::agent_bin())
        .args(["status", "-o", "json", "--state-dir"])
        .arg(state_dir)
        .output()
        .expect("run drover-agent status");
    assert!(out.status.success(), "status failed: {}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("status json")
}

/// Polls `drover-agent status -o json` until `f` holds (30 s).
pub async fn status_until(
    state_dir: &Path,
    f: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let end = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let s = status_json(state_dir);
        if f(&s) {
            return s;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "status never matched: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
