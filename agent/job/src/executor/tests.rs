//! The job flow of [`DockerExecutor`] against the fake engine.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use drover_proto::spec::RunnerConfig;
use tokio_util::sync::CancellationToken;

use super::fake::{Behavior, FakeApi, FakeContainer};
use super::names::{LABEL_AGENT, LABEL_JOB, LABEL_KIND};
use super::*;
use crate::trace::TraceSink;
use drover_gitlab::types::JobResponse;

const IMAGE: &str = "busybox:test";

fn job_json(steps: serde_json::Value, extra: serde_json::Value) -> JobResponse {
    let mut v = serde_json::json!({
        "id": 77,
        "token": "tok",
        "job_info": {"project_id": 5, "project_name": "demo"},
        "git_info": {"repo_url": "https://gitlab.example.com/g/demo.git"},
        "runner_info": {"timeout": 30},
        "variables": [{"key": "GIT_STRATEGY", "value": "none"}],
        "steps": steps,
        "image": {"name": IMAGE},
    });
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("job")
}

fn steps(script: &[&str], after: &[&str]) -> serde_json::Value {
    serde_json::json!([
        {"name": "script", "script": script, "when": "on_success"},
        {"name": "after_script", "script": after, "when": "always"}
    ])
}

/// A job running `script`, then `after`, with nothing else set.
fn script_job(script: &[&str], after: &[&str]) -> JobResponse {
    job_json(steps(script, after), serde_json::json!({}))
}

fn failed(reason: FailureReason, exit_code: Option<i32>) -> JobOutcome {
    JobOutcome::Failed { reason, exit_code }
}

fn ctx(job: JobResponse, docker_toml: &str) -> JobContext {
    let runner: RunnerConfig = toml::from_str(&format!(
        "name = \"r\"\n[docker]\npull_policy = \"never\"\n{docker_toml}"
    ))
    .expect("runner");
    JobContext {
        job,
        runner: Arc::new(runner),
        agent_id: "agent-x".into(),
        runner_short_token: "short123".into(),
        slot: 1,
        gitlab: Arc::new(drover_gitlab::fake::FakeGitLab::new()),
    }
}

fn fake() -> FakeApi {
    let api = FakeApi::default();
    api.add_image(IMAGE, "sha256:feed");
    api
}

async fn run_with(
    api: &FakeApi,
    exec: DockerExecutor,
    c: &JobContext,
    cancel: CancellationToken,
) -> (JobOutcome, String) {
    let trace = TraceSink::new();
    let out = exec.run(c, &trace, cancel).await;
    assert!(
        api.with_containers(|cs| cs.iter().all(|c| c.removed)),
        "every container is removed"
    );
    (out, String::from_utf8_lossy(&trace.snapshot()).into_owned())
}

async fn run(api: &FakeApi, c: &JobContext) -> (JobOutcome, String) {
    run_with(
        api,
        DockerExecutor::with_api(Arc::new(api.clone())),
        c,
        CancellationToken::new(),
    )
    .await
}

/// A container's kind label (`build`, `after-script`, ...).
fn kind_of(c: &FakeContainer) -> Option<&str> {
    c.body.labels.get(LABEL_KIND).map(String::as_str)
}

fn kinds(api: &FakeApi) -> Vec<String> {
    api.with_containers(|cs| {
        cs.iter()
            .map(|c| kind_of(c).unwrap_or_default().to_string())
            .collect()
    })
}

/// Runs `f` on the first container of `kind`.
fn with_kind<T>(api: &FakeApi, kind: &str, f: impl FnOnce(&FakeContainer) -> T) -> T {
    api.with_containers(|cs| {
        f(cs.iter()
            .find(|c| kind_of(c) == Some(kind))
            .expect("container of kind"))
    })
}

fn stdin_of(api: &FakeApi, kind: &str) -> String {
    with_kind(api, kind, |c| {
        String::from_utf8_lossy(&c.stdin.lock().expect("stdin")).into_owned()
    })
}

fn env_of(api: &FakeApi, kind: &str) -> Vec<String> {
    with_kind(api, kind, |c| c.body.env.clone())
}

#[tokio::test]
async fn success_runs_the_script_in_a_labelled_build_container() {
    let api = fake();
    api.behave("build", Behavior::exits("hi\n", 0));
    let (out, trace) = run(&api, &ctx(script_job(&["echo hi"], &[]), "")).await;
    assert_eq!(out, JobOutcome::Success);
    assert!(
        trace.contains("Preparing the \"docker\" executor"),
        "{trace}"
    );
    assert!(
        trace.contains("Using docker image sha256:feed for busybox:test ..."),
        "{trace}"
    );
    assert!(
        trace.contains("Executing \"step_script\" stage of the job script"),
        "{trace}"
    );
    assert!(trace.contains("hi\n"));
    assert!(
        trace.ends_with("\x1b[32;1mJob succeeded\x1b[0;m\n"),
        "{trace}"
    );
    assert_eq!(kinds(&api), vec!["build"]);
    assert!(stdin_of(&api, "build").contains("echo hi"));
    api.with_containers(|cs| {
        let c = &cs[0];
        assert_eq!(c.name, "runner-short123-project-5-concurrent-1-77-build");
        let l = &c.body.labels;
        assert_eq!(l[LABEL_AGENT], "agent-x");
        assert_eq!(l[LABEL_JOB], "77");
        assert_eq!(c.body.image, "sha256:feed");
        assert!(c.body.stdin);
        assert_eq!(c.body.entrypoint, None);
        let env = &c.body.env;
        assert!(env.contains(&"CI_PROJECT_DIR=/builds/g/demo".to_string()));
        let targets: Vec<_> = c
            .body
            .host
            .mounts
            .iter()
            .map(|m| m.target.clone())
            .collect();
        assert_eq!(
            targets,
            vec!["/builds".to_string(), "/builds/g/demo.tmp".to_string()]
        );
        // Root creates the dirs itself: no layout archive for a job without file variables.
        assert!(c.archives.is_empty(), "{:?}", c.archives.len());
    });
    assert_eq!(
        api.removed_volumes(),
        vec!["runner-short123-project-5-concurrent-1-77-tmp".to_string()]
    );
}

#[tokio::test]
async fn script_failure_reports_the_exit_code_and_runs_after_script() {
    let api = fake();
    api.behave("build", Behavior::exits("", 3));
    api.behave("after-script", Behavior::exits("after\n", 0));
    let (out, trace) = run(&api, &ctx(script_job(&["exit 3"], &["echo after"]), "")).await;
    assert_eq!(out, failed(FailureReason::ScriptFailure, Some(3)));
    assert_eq!(kinds(&api), vec!["build", "after-script"]);
    assert!(env_of(&api, "after-script").contains(&"CI_JOB_STATUS=failed".to_string()));
    assert!(trace.contains("Running after_script"), "{trace}");
    assert!(
        trace.ends_with("\x1b[31;1mERROR: Job failed: exit code 3\x1b[0;m\n"),
        "{trace}"
    );
}

#[tokio::test]
async fn after_script_failure_does_not_change_the_result() {
    let api = fake();
    api.behave("after-script", Behavior::exits("", 9));
    let (out, trace) = run(&api, &ctx(script_job(&["true"], &["exit 9"]), "")).await;
    assert_eq!(out, JobOutcome::Success);
    assert!(
        trace.contains(
            "WARNING: after_script failed, but job will continue unaffected: exit code 9"
        ),
        "{trace}"
    );
    assert!(env_of(&api, "after-script").contains(&"CI_JOB_STATUS=success".to_string()));
}

#[tokio::test]
async fn job_timeout_kills_the_build_and_still_runs_after_script() {
    let api = fake();
    api.behave("build", Behavior::hangs("working\n"));
    let job = job_json(
        steps(&["sleep 30"], &["echo after"]),
        serde_json::json!({"runner_info": {"timeout": 1}}),
    );
    let (out, trace) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, failed(FailureReason::JobExecutionTimeout, None));
    assert!(api.with_containers(|cs| cs[0].killed));
    assert_eq!(kinds(&api), vec!["build", "after-script"]);
    assert!(
        trace.ends_with("ERROR: Job failed: execution took longer than 1 seconds\x1b[0;m\n"),
        "{trace}"
    );
}

#[tokio::test]
async fn after_script_has_its_own_timeout() {
    let api = fake();
    api.behave("after-script", Behavior::hangs(""));
    let job = job_json(
        serde_json::json!([
            {"name": "script", "script": ["true"], "when": "on_success"},
            {"name": "after_script", "script": ["sleep 99"], "when": "always", "timeout": 1}
        ]),
        serde_json::json!({}),
    );
    let (out, trace) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, JobOutcome::Success);
    assert!(trace.contains("after_script failed, but job will continue unaffected: execution took longer than 1 seconds"), "{trace}");
}

#[tokio::test]
async fn cancel_kills_at_once_and_runs_nothing_more() {
    let api = fake();
    api.behave("build", Behavior::hangs(""));
    let cancel = CancellationToken::new();
    let c2 = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        c2.cancel();
    });
    let exec = DockerExecutor::with_api(Arc::new(api.clone()));
    let c = ctx(script_job(&["sleep 30"], &["echo after"]), "");
    let (out, trace) =
        tokio::time::timeout(Duration::from_secs(5), run_with(&api, exec, &c, cancel))
            .await
            .expect("returns promptly");
    assert_eq!(out, JobOutcome::Canceled);
    assert_eq!(kinds(&api), vec!["build"], "no after_script after cancel");
    assert!(api.with_containers(|cs| cs[0].killed));
    assert!(
        trace.ends_with("ERROR: Job failed: canceled\x1b[0;m\n"),
        "{trace}"
    );
}

#[tokio::test]
async fn when_semantics_pick_steps_by_the_job_state() {
    let api = fake();
    api.behave("build", Behavior::exits("", 1));
    let job = job_json(
        serde_json::json!([
            {"name": "script", "script": ["false"], "when": "on_success"},
            {"name": "release", "script": ["echo release"], "when": "on_success"},
            {"name": "notify_failure", "script": ["echo notify"], "when": "on_failure"},
            {"name": "always_step", "script": ["echo always"], "when": "always"},
            {"name": "after_script", "script": ["echo after"], "when": "on_success"}
        ]),
        serde_json::json!({}),
    );
    let (out, _) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, failed(FailureReason::ScriptFailure, Some(1)));
    assert_eq!(kinds(&api), vec!["build", "notify-failure", "always-step"]);
}

#[tokio::test]
async fn allow_failure_steps_do_not_fail_the_job() {
    let api = fake();
    api.behave("build", Behavior::exits("", 2));
    let job = job_json(
        serde_json::json!([{"name": "script", "script": ["exit 2"], "when": "on_success", "allow_failure": true}]),
        serde_json::json!({}),
    );
    let (out, trace) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, JobOutcome::Success, "{trace}");
}

#[tokio::test]
async fn docker_errors_mid_job_are_system_failures_in_the_trace() {
    let api = fake();
    api.fail_create("build");
    let (out, trace) = run(&api, &ctx(script_job(&["true"], &["echo after"]), "")).await;
    assert_eq!(out, failed(FailureReason::RunnerSystemFailure, None));
    assert!(
        trace.contains("ERROR: Job failed (system failure): create container runner-short123-project-5-concurrent-1-77-build:"),
        "{trace}"
    );
    // after_script still runs after a failure.
    assert_eq!(kinds(&api), vec!["after-script"]);
}

#[tokio::test]
async fn bad_runner_config_fails_before_any_container() {
    let api = fake();
    let (out, trace) = run(&api, &ctx(script_job(&["true"], &[]), "memory = \"lots\"")).await;
    assert_eq!(out, failed(FailureReason::RunnerSystemFailure, None));
    assert!(
        trace.contains("invalid [runners.docker] memory = \"lots\""),
        "{trace}"
    );
    assert!(kinds(&api).is_empty());
}

#[tokio::test]
async fn image_problems_are_image_pull_failures() {
    let api = fake();
    let job = job_json(
        steps(&["true"], &[]),
        serde_json::json!({"image": {"name": "missing:1"}}),
    );
    let (out, trace) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, failed(FailureReason::ImagePullFailure, None));
    assert!(trace.contains("ERROR: Job failed: image \"missing:1\" is not present locally and pull_policy is \"never\""), "{trace}");

    let api = fake();
    let job = script_job(&["true"], &[]);
    let (out, trace) = run(&api, &ctx(job, "allowed_images = [\"alpine:*\"]")).await;
    assert_eq!(out, failed(FailureReason::ImagePullFailure, None));
    assert!(
        trace.contains("not present on list of allowed images: alpine:*"),
        "{trace}"
    );

    let api = fake();
    let job = job_json(steps(&["true"], &[]), serde_json::json!({"image": null}));
    let (out, trace) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, failed(FailureReason::RunnerSystemFailure, None));
    assert!(trace.contains("no image"), "{trace}");
}

#[tokio::test]
async fn file_variables_go_into_the_first_container() {
    let api = fake();
    let job = job_json(
        steps(&["cat $F"], &[]),
        serde_json::json!({"variables": [
            {"key": "GIT_STRATEGY", "value": "none"},
            {"key": "F", "value": "s3cr3t", "file": true}
        ]}),
    );
    let (out, _) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, JobOutcome::Success);
    assert!(env_of(&api, "build").contains(&"F=/builds/g/demo.tmp/F".to_string()));
    let archive = api.with_containers(|cs| cs[0].archives[0].1.clone());
    let mut ar = tar::Archive::new(archive.as_slice());
    let mut found = HashMap::new();
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = e.path().expect("path").display().to_string();
        let mut s = String::new();
        std::io::Read::read_to_string(&mut e, &mut s).expect("read");
        found.insert(path, s);
    }
    assert_eq!(
        found.get("builds/g/demo.tmp/F").map(String::as_str),
        Some("s3cr3t")
    );
    assert!(found.contains_key("builds/g/demo/"));
}

#[tokio::test]
async fn a_non_root_user_gets_the_layout_archive_before_start() {
    for (image_user, runner_user) in [("node", ""), ("", "1000:1000"), ("", "nobody")] {
        let api = fake();
        api.set_image_user("sha256:feed", image_user);
        let job = script_job(&["true"], &[]);
        let toml = if runner_user.is_empty() {
            String::new()
        } else {
            format!("user = \"{runner_user}\"")
        };
        let (out, _) = run(&api, &ctx(job, &toml)).await;
        assert_eq!(out, JobOutcome::Success);
        let first = api.with_containers(|cs| cs[0].archives.first().map(|a| a.0.clone()));
        assert_eq!(
            first.as_deref(),
            Some("/"),
            "image user {image_user:?}, runner user {runner_user:?}"
        );
    }
    let api = fake();
    api.set_image_user("sha256:feed", "root");
    let job = script_job(&["true"], &[]);
    run(&api, &ctx(job, "user = \"0:0\"")).await;
    assert!(api.with_containers(|cs| cs[0].archives.is_empty()));
}

#[tokio::test]
async fn entrypoint_follows_the_job_unless_disabled() {
    let api = fake();
    let job = job_json(
        steps(&["true"], &[]),
        serde_json::json!({"image": {"name": IMAGE, "entrypoint": [""]}}),
    );
    run(&api, &ctx(job, "")).await;
    assert_eq!(
        api.with_containers(|cs| cs[0].body.entrypoint.clone()),
        Some(vec![])
    );

    let api = fake();
    let job = job_json(
        steps(&["true"], &[]),
        serde_json::json!({"image": {"name": IMAGE, "entrypoint": ["/init"]}}),
    );
    run(&api, &ctx(job, "disable_entrypoint_overwrite = true")).await;
    assert_eq!(
        api.with_containers(|cs| cs[0].body.entrypoint.clone()),
        None
    );
}

#[tokio::test]
async fn git_strategy_empty_empties_the_dir_and_puts_an_empty_tree() {
    let api = fake();
    let data = tempfile::tempdir().expect("tempdir");
    let exec = DockerExecutor::with_api(Arc::new(api.clone()))
        .with_storage(StorageOptions::new(data.path()));
    let job = job_json(
        steps(&["true"], &[]),
        serde_json::json!({"variables": [{"key": "GIT_STRATEGY", "value": "empty"}]}),
    );
    let (out, trace) = run_with(&api, exec, &ctx(job, ""), CancellationToken::new()).await;
    assert_eq!(out, JobOutcome::Success, "{trace}");
    assert_eq!(kinds(&api), vec!["get-sources", "build"]);
    assert!(stdin_of(&api, "get-sources").contains("rm -rf --"));
    let paths: Vec<String> =
        api.with_containers(|cs| cs[1].archives.iter().map(|(p, _)| p.clone()).collect());
    assert_eq!(paths, vec!["/builds/g/demo".to_string()]);
}

/// `GIT_STRATEGY=none` with a cache to restore (or artifacts to download): the project dir
/// may not exist yet, and the engine copies archives only into a directory that does, so a
/// `get-sources` container makes it (keeping what is there) before the build container.
#[tokio::test]
async fn git_strategy_none_makes_the_project_dir_for_restored_archives() {
    let api = fake();
    let data = tempfile::tempdir().expect("tempdir");
    let storage = StorageOptions::new(data.path());
    let store = crate::cache::CacheStore::new(&storage.cache_root(), "r", 1 << 20);
    let zip = store.archive_path(5, "deps").expect("archive path");
    std::fs::create_dir_all(zip.parent().expect("parent")).expect("mkdir");
    // An empty zip: the end-of-central-directory record alone.
    let mut empty = b"PK\x05\x06".to_vec();
    empty.extend([0u8; 18]);
    std::fs::write(&zip, empty).expect("write zip");
    let exec = DockerExecutor::with_api(Arc::new(api.clone())).with_storage(storage);
    let job = job_json(
        steps(&["true"], &[]),
        serde_json::json!({"cache": [{"key": "deps", "paths": ["vendor/"], "policy": "pull"}]}),
    );
    let (out, trace) = run_with(&api, exec, &ctx(job, ""), CancellationToken::new()).await;
    assert_eq!(out, JobOutcome::Success, "{trace}");
    assert!(
        trace.contains("Successfully extracted cache deps"),
        "{trace}"
    );
    assert_eq!(kinds(&api), vec!["get-sources", "build"]);
    let made = stdin_of(&api, "get-sources");
    assert!(
        made.contains("mkdir -p") && !made.contains("rm -rf"),
        "{made}"
    );
    let paths: Vec<String> =
        api.with_containers(|cs| cs[1].archives.iter().map(|(p, _)| p.clone()).collect());
    assert_eq!(paths, vec!["/builds/g/demo".to_string()]);

    // Nothing to copy: no extra container.
    let api = fake();
    let (out, _) = run(&api, &ctx(script_job(&["true"], &[]), "")).await;
    assert_eq!(out, JobOutcome::Success);
    assert_eq!(kinds(&api), vec!["build"]);
}

#[tokio::test]
async fn services_get_a_network_aliases_and_a_warning_with_logs_when_not_up() {
    let api = fake();
    api.add_image("postgres:15", "sha256:pg");
    api.set_ports("sha256:pg", &[5432]);
    api.behave("service", Behavior::hangs("database system is starting\n"));
    let job = job_json(
        steps(&["true"], &[]),
        serde_json::json!({"services": [{"name": "postgres:15", "alias": "db",
            "variables": [{"key": "POSTGRES_PASSWORD", "value": "pw"}]}]}),
    );
    let (out, trace) = run(&api, &ctx(job, "wait_for_services_timeout = 1")).await;
    assert_eq!(out, JobOutcome::Success, "{trace}");
    let (svc, build) = api.with_containers(|cs| {
        let svc = cs
            .iter()
            .find(|c| c.name.contains("svc-0-db"))
            .expect("service")
            .body
            .clone();
        let build = cs
            .iter()
            .find(|c| c.name.ends_with("-build"))
            .expect("build")
            .body
            .clone();
        (svc, build)
    });
    let net = "runner-short123-project-5-concurrent-1-77-network";
    assert_eq!(
        svc.network_aliases,
        Some((
            net.to_string(),
            vec!["db".to_string(), "postgres".to_string()]
        ))
    );
    assert!(svc.env.contains(&"POSTGRES_PASSWORD=pw".to_string()));
    assert_eq!(build.host.network_mode, Some(net.to_string()));
    assert!(trace.contains("probably didn't start properly"), "{trace}");
    assert!(trace.contains("database system is starting"), "{trace}");
    assert!(api.networks().is_empty(), "network removed");
    assert_eq!(api.removed_networks(), vec![format!("net-{net}")]);
}

#[tokio::test]
async fn services_outside_allowed_services_are_refused() {
    let api = fake();
    let job = job_json(
        steps(&["true"], &[]),
        serde_json::json!({"services": [{"name": "redis:7"}]}),
    );
    let (out, trace) = run(&api, &ctx(job, "allowed_services = [\"postgres:*\"]")).await;
    assert_eq!(out, failed(FailureReason::ImagePullFailure, None));
    assert!(
        trace.contains("not present on list of allowed services"),
        "{trace}"
    );
    assert!(api.networks().is_empty());
}

#[tokio::test]
async fn cleanup_orphans_touches_only_this_agents_finished_jobs() {
    let api = fake();
    let labels = |agent: &str, job: &str, kind: &str| {
        HashMap::from([
            (LABEL_AGENT.to_string(), agent.to_string()),
            (LABEL_JOB.to_string(), job.to_string()),
            (LABEL_KIND.to_string(), kind.to_string()),
        ])
    };
    api.add_stopped_container("old-build", labels("me", "1", "build"));
    api.add_stopped_container("running-build", labels("me", "2", "build"));
    api.add_stopped_container("other-agent", labels("someone-else", "1", "build"));
    api.add_volume("old-tmp", labels("me", "1", "tmp"));
    api.add_volume("running-tmp", labels("me", "2", "tmp"));
    let mut builds = labels("me", "", "builds");
    builds.remove(LABEL_JOB);
    api.add_volume("builds-vol", builds);
    let exec = DockerExecutor::with_api(Arc::new(api.clone()));
    api.add_network("old-net", labels("me", "1", "network"));
    api.add_network("running-net", labels("me", "2", "network"));
    let report = exec.cleanup_orphans("me", &[2]).await.expect("cleanup");
    assert_eq!(report.networks_removed, vec!["old-net".to_string()]);
    assert_eq!(
        api.networks()
            .iter()
            .map(|n| n.name.clone())
            .collect::<Vec<_>>(),
        vec!["running-net".to_string()]
    );
    assert_eq!(report.containers_removed, vec!["old-build".to_string()]);
    assert_eq!(report.volumes_removed, vec!["old-tmp".to_string()]);
    assert!(report.errors.is_empty());
    let alive: Vec<String> = api.with_containers(|cs| {
        cs.iter()
            .filter(|c| !c.removed)
            .map(|c| c.name.clone())
            .collect()
    });
    assert_eq!(
        alive,
        vec!["running-build".to_string(), "other-agent".to_string()]
    );
}

#[tokio::test]
async fn pre_and_post_build_scripts_wrap_the_script_step() {
    let api = fake();
    let mut c = ctx(script_job(&["echo main"], &["echo after"]), "");
    let mut runner = (*c.runner).clone();
    runner.pre_build_script = Some("echo pre-build".to_string());
    runner.post_build_script = Some("echo post-build".to_string());
    c.runner = Arc::new(runner);
    let (out, _) = run(&api, &c).await;
    assert_eq!(out, JobOutcome::Success);
    let build = stdin_of(&api, "build");
    let (pre, main, post) = (
        build.find("echo pre-build").expect("pre"),
        build.find("echo main").expect("main"),
        build.find("echo post-build").expect("post"),
    );
    assert!(pre < main && main < post, "{build}");
    assert!(!stdin_of(&api, "after-script").contains("pre-build"));
}

#[tokio::test]
async fn huge_timeouts_do_not_overflow() {
    let api = fake();
    let job = job_json(
        serde_json::json!([
            {"name": "script", "script": ["true"], "when": "on_success", "timeout": i64::MAX},
            {"name": "after_script", "script": ["true"], "when": "always", "timeout": i64::MAX}
        ]),
        serde_json::json!({"runner_info": {"timeout": i64::MAX}}),
    );
    let (out, _) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, JobOutcome::Success);
}

/// Runs a hanging `sleep 600` job and does `lose` to the engine 300 ms in.
async fn run_losing_the_daemon(lose: fn(&FakeApi)) -> (JobOutcome, String) {
    let api = fake();
    api.behave("build", Behavior::hangs("started\n"));
    let c = ctx(script_job(&["sleep 600"], &[]), "");
    let stopper = api.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        lose(&stopper);
    });
    run(&api, &c).await
}

#[tokio::test]
async fn losing_the_daemon_mid_step_is_a_system_failure_that_says_so() {
    let (out, trace) = run_losing_the_daemon(FakeApi::stop_daemon).await;
    assert_eq!(out, failed(FailureReason::RunnerSystemFailure, None));
    assert!(
        trace.contains("the Docker daemon stopped or restarted during the job"),
        "{trace}"
    );
}

#[tokio::test]
async fn a_daemon_shutdown_that_stops_the_script_is_a_system_failure() {
    let (out, trace) = run_losing_the_daemon(FakeApi::shutdown_daemon).await;
    assert_eq!(out, failed(FailureReason::RunnerSystemFailure, None));
    assert!(
        trace.contains("exit code 143; the Docker daemon stopped or restarted during the job"),
        "{trace}"
    );
}

#[tokio::test]
async fn a_script_killed_by_a_signal_with_the_daemon_up_is_a_script_failure() {
    let api = fake();
    api.behave("build", Behavior::exits("", 143));
    let job = script_job(&["kill -TERM $$"], &[]);
    let (out, _) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, failed(FailureReason::ScriptFailure, Some(143)));
}

/// An unknown cache `policy` fails the job, as gitlab-runner's `CheckPolicy` error does.
#[tokio::test]
async fn unknown_cache_policy_fails_the_job_naming_it() {
    let api = fake();
    let job = job_json(
        steps(&["echo hi"], &[]),
        serde_json::json!({"cache": [{"key": "deps", "paths": ["vendor/"], "policy": "fetch"}]}),
    );
    let (out, trace) = run(&api, &ctx(job, "")).await;
    assert_eq!(out, failed(FailureReason::RunnerSystemFailure, None));
    assert!(
        trace.contains("cache \"deps\": unknown cache policy \"fetch\""),
        "{trace}"
    );
}

// ---- disk hygiene: the ledger the job flow keeps and the collector on the fake engine ----

mod disk {
    use super::*;
    use crate::disk::{DiskBudget, ImageOrigin, ItemKind, Ledger};
    use crate::executor::docker::GcRequest;

    const GIB: u64 = 1 << 30;

    fn gc_req<'a>(
        budget: DiskBudget,
        required: &'a [String],
        dry_run: bool,
        now: i64,
    ) -> GcRequest<'a> {
        GcRequest {
            agent_id: "agent-x",
            budget,
            required_images: required,
            need_bytes: 0,
            dry_run,
            now,
        }
    }

    /// A context whose runner pulls (`always`), so the job's image is the agent's.
    fn ctx_pulling(job: JobResponse) -> JobContext {
        let mut c = ctx(job, "");
        let mut r = (*c.runner).clone();
        if let Some(d) = r.docker.as_mut() {
            d.pull_policy = None;
        }
        c.runner = Arc::new(r);
        c
    }

    fn small_budget() -> DiskBudget {
        let mut b = DiskBudget::default();
        b.volumes.max_bytes = 2 * GIB;
        b.images.max_bytes = 2 * GIB;
        b
    }

    fn job_in(project: i64, id: i64) -> JobResponse {
        job_json(
            steps(&["true"], &[]),
            serde_json::json!({"id": id, "job_info": {"project_id": project, "project_name": "p"}}),
        )
    }

    #[tokio::test]
    async fn jobs_record_their_volume_and_pulled_image_and_release_them() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::in_state_dir(dir.path());
        let api = fake();
        let exec = DockerExecutor::with_api(Arc::new(api.clone())).with_disk(ledger.clone(), None);
        let c = ctx_pulling(script_job(&["true"], &[]));
        let (out, _) = run_with(&api, exec, &c, CancellationToken::new()).await;
        assert_eq!(out, JobOutcome::Success);
        let d = ledger.read().unwrap();
        assert_eq!(d.volumes.len(), 1, "{d:?}");
        let (id, e) = d.images.iter().next().unwrap();
        assert_eq!(id, &format!("sha256:pulled-{IMAGE}"));
        assert_eq!(e.origin, ImageOrigin::Pulled);
        assert!(e.refs.contains(IMAGE));
        assert!(d.jobs.is_empty(), "released at the end: {d:?}");
    }

    #[tokio::test]
    async fn over_budget_the_least_recently_used_volumes_and_pulled_images_go() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::in_state_dir(dir.path());
        let api = fake();
        let exec = DockerExecutor::with_api(Arc::new(api.clone())).with_disk(ledger.clone(), None);
        // Three projects, one job each, in order; each builds volume takes 1 GiB.
        for (p, id) in [(1, 11), (2, 12), (3, 13)] {
            let c = ctx(job_in(p, id), "");
            assert_eq!(run(&api, &c).await.0, JobOutcome::Success);
            let (out, _) = run_with(&api, exec.clone(), &c, CancellationToken::new()).await;
            assert_eq!(out, JobOutcome::Success);
            ledger
                .update(|d| {
                    for (n, v) in d.volumes.iter_mut() {
                        if n.contains(&format!("project-{p}-")) {
                            v.last_used = p;
                        }
                    }
                })
                .unwrap();
        }
        let vols = api.volume_names();
        assert_eq!(vols.len(), 3, "{vols:?}");
        for v in &vols {
            api.set_volume_size(v, GIB);
        }
        // A volume of another agent and one of ours without the builds kind are left.
        let mut other = HashMap::new();
        other.insert(LABEL_AGENT.to_string(), "agent-other".to_string());
        other.insert(LABEL_KIND.to_string(), "builds".to_string());
        api.add_volume("theirs", other);
        api.set_volume_size("theirs", 50 * GIB);
        // Images: one pulled long ago, one pulled recently, one foreign, one required.
        for (name, id, at, bytes) in [
            ("old:1", "sha256:old", 1, GIB),
            ("new:1", "sha256:new", 5, GIB),
            ("req:1", "sha256:req", 0, 3 * GIB),
        ] {
            api.add_image(name, id);
            api.set_image_size(id, bytes);
            ledger.image_used(1000, name, id, true, at).unwrap();
        }
        ledger.job_ended(1000).unwrap();
        api.add_image("foreign:1", "sha256:foreign");
        api.set_image_size("sha256:foreign", 10 * GIB);
        let required = vec!["req:1".to_string()];

        // A dry run says what would go and changes nothing.
        let before = ledger.read().unwrap();
        let dry = exec
            .collect_garbage(&ledger, &gc_req(small_budget(), &required, true, 10))
            .await
            .unwrap();
        assert!(dry.dry_run);
        assert_eq!(api.volume_names().len(), 4);
        assert!(api.removed_images().is_empty());
        assert_eq!(ledger.read().unwrap(), before, "a dry run writes nothing");

        let r = exec
            .collect_garbage(&ledger, &gc_req(small_budget(), &required, false, 10))
            .await
            .unwrap();
        assert_eq!(r.removed, dry.removed, "the dry run said exactly this");
        let gone: Vec<(ItemKind, &str)> = r
            .removed
            .iter()
            .map(|x| (x.kind, x.name.as_str()))
            .collect();
        // Volumes: 3 GiB against 2: project 1's (least recently used) goes.
        assert!(gone.contains(&(
            ItemKind::Volume,
            vols.iter().find(|v| v.contains("project-1-")).unwrap()
        )));
        // Images: the required one (3 GiB) counts, so both pulled ones go, oldest first;
        // the foreign one is not counted nor touched.
        let images: Vec<&str> = gone
            .iter()
            .filter(|g| g.0 == ItemKind::Image)
            .map(|g| g.1)
            .collect();
        assert_eq!(images, vec!["old:1", "new:1"]);
        assert_eq!(api.removed_images(), vec!["old:1", "new:1"]);
        assert!(api.image_names().contains(&"req:1".to_string()));
        assert!(api.image_names().contains(&"foreign:1".to_string()));
        assert!(api.volume_names().contains(&"theirs".to_string()));
        assert_eq!(r.volumes.count, 2);
        assert_eq!(r.volumes.bytes, 2 * GIB);
        assert_eq!(r.images.count, 1);
        assert_eq!(r.images.protected, 1);
        assert_eq!(r.freed_bytes, 3 * GIB);

        // The next job on the removed volume says what it costs.
        let c = ctx(job_in(1, 21), "");
        let (out, trace) = run_with(&api, exec.clone(), &c, CancellationToken::new()).await;
        assert_eq!(out, JobOutcome::Success);
        assert!(
            trace.contains("was removed by Drover's disk collector (over budget")
                && trace.contains("fresh copy of the sources"),
            "{trace}"
        );
        let (_, again) = run_with(&api, exec.clone(), &c, CancellationToken::new()).await;
        assert!(!again.contains("disk collector"), "said once: {again}");
    }

    #[tokio::test]
    async fn a_running_jobs_volume_and_image_are_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::in_state_dir(dir.path());
        let api = fake();
        api.behave("build", Behavior::hangs("working\n"));
        let exec = DockerExecutor::with_api(Arc::new(api.clone())).with_disk(ledger.clone(), None);
        let c = ctx_pulling(script_job(&["sleep 1000"], &[]));
        let cancel = CancellationToken::new();
        let job = {
            let (api, exec, c, cancel) = (api.clone(), exec.clone(), c.clone(), cancel.clone());
            tokio::spawn(async move { run_with(&api, exec, &c, cancel).await })
        };
        // Wait until the build container runs.
        for _ in 0..200 {
            if api.with_containers(|cs| cs.iter().any(|c| c.started && !c.removed)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let vols = api.volume_names();
        for v in &vols {
            api.set_volume_size(v, 5 * GIB);
        }
        api.set_image_size(&format!("sha256:pulled-{IMAGE}"), 5 * GIB);
        let mut b = DiskBudget::default();
        b.volumes.max_bytes = 0;
        b.images.max_bytes = 0;
        let mut req = gc_req(b, &[], false, i64::MAX / 2);
        req.need_bytes = u64::MAX;
        let r = exec.collect_garbage(&ledger, &req).await.unwrap();
        assert!(r.removed.is_empty(), "{:?}", r.removed);
        assert_eq!(api.volume_names(), vols);
        cancel.cancel();
        let (out, _) = job.await.unwrap();
        assert_eq!(out, JobOutcome::Canceled);
        // Once it ended, the same collection takes them.
        let r = exec.collect_garbage(&ledger, &req).await.unwrap();
        assert!(
            r.removed
                .iter()
                .any(|x| x.kind == ItemKind::Volume && x.why == "idle"),
            "{:?}",
            r.removed
        );
        assert!(
            r.removed.iter().any(|x| x.kind == ItemKind::Image),
            "{:?}",
            r.removed
        );
    }

    #[tokio::test]
    async fn foreign_images_go_only_when_the_operator_opts_in() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::in_state_dir(dir.path());
        let api = fake();
        api.set_image_size("sha256:feed", 3 * GIB);
        let exec = DockerExecutor::with_api(Arc::new(api.clone())).with_disk(ledger.clone(), None);
        let mut b = small_budget();
        let r = exec
            .collect_garbage(&ledger, &gc_req(b, &[], false, 10))
            .await
            .unwrap();
        assert!(r.removed.is_empty());
        assert_eq!(r.images.count, 0);
        b.remove_foreign_images = true;
        let r = exec
            .collect_garbage(&ledger, &gc_req(b, &[], false, 10))
            .await
            .unwrap();
        assert_eq!(r.removed.len(), 1, "{r:?}");
        assert_eq!(api.removed_images(), vec![IMAGE.to_string()]);
        // Delivered images never go.
        api.add_image("app:1", "sha256:app");
        api.set_image_size("sha256:app", 9 * GIB);
        ledger.record_delivered("app:1", "sha256:app", 1).unwrap();
        let r = exec
            .collect_garbage(&ledger, &gc_req(b, &[], false, 10))
            .await
            .unwrap();
        assert!(r.removed.is_empty(), "{r:?}");
        assert_eq!(r.images.protected, 1);
    }
}
