//! `DockerExecutor` against the real engine with the local busybox image.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions, RemoveVolumeOptions};
use drover_gitlab::types::JobResponse;
use drover_job::executor::{
    ConnectOptions, DockerExecutor, Executor, FailureReason, JobContext, JobOutcome,
};
use drover_job::trace::TraceSink;
use drover_proto::spec::RunnerConfig;
use tokio_util::sync::CancellationToken;

/// The engine, an executor on it, and the local busybox image.
struct Engine {
    docker: Docker,
    exec: DockerExecutor,
    image: String,
}

/// Connects to Docker and builds the busybox image, or says why the test is skipped.
async fn setup() -> Option<Engine> {
    let (docker, image) = drover_tests::images::docker_and_busybox("executor_docker").await?;
    let exec = DockerExecutor::connect(ConnectOptions::default())
        .await
        .expect("connect executor");
    Some(Engine {
        docker,
        exec,
        image,
    })
}

fn unique_agent(test: &str) -> String {
    format!(
        "drover-exec-test-{test}-{}-{}",
        std::process::id(),
        rand::random::<u32>()
    )
}

fn job(
    image: &str,
    script: &[&str],
    after: &[&str],
    timeout: u64,
    extra: serde_json::Value,
) -> JobResponse {
    let mut v = serde_json::json!({
        "id": rand::random::<u32>() as i64,
        "token": "job-token",
        "job_info": {"id": 1, "name": "test", "stage": "test", "project_id": 42, "project_name": "demo"},
        "git_info": {"repo_url": "https://gitlab.example.com/group/demo.git", "ref": "main", "sha": "abc"},
        "runner_info": {"timeout": timeout},
        "variables": [{"key": "GIT_STRATEGY", "value": "none", "public": true}],
        "steps": [
            {"name": "script", "script": script, "timeout": timeout, "when": "on_success"},
            {"name": "after_script", "script": after, "timeout": 60, "when": "always"}
        ],
        "image": {"name": image},
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    serde_json::from_value(v).expect("job payload")
}

/// A job on `image` running `script` with nothing after it, a 60 s timeout and git skipped.
fn script_job(image: &str, script: &[&str]) -> JobResponse {
    job(image, script, &[], 60, serde_json::json!({}))
}

fn runner(docker_toml: &str) -> RunnerConfig {
    // No registry is reachable: tests use local images unless they set a policy.
    let policy = if docker_toml.contains("pull_policy") {
        ""
    } else {
        "pull_policy = \"never\"\n"
    };
    let text =
        format!("name = \"exec-test\"\nexecutor = \"docker\"\n[docker]\n{policy}{docker_toml}");
    toml::from_str(&text).expect("runner config")
}

fn ctx(job: JobResponse, runner: RunnerConfig, agent: &str) -> JobContext {
    JobContext {
        job,
        runner: Arc::new(runner),
        agent_id: agent.to_string(),
        runner_short_token: format!("t{:07x}", rand::random::<u32>() & 0xfffffff),
        slot: 0,
        gitlab: Arc::new(drover_gitlab::fake::FakeGitLab::new()),
    }
}

/// The `label=com.drover.agent=<agent>` filter of the engine's list calls.
fn agent_filter(agent: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([(
        "label".to_string(),
        vec![format!("com.drover.agent={agent}")],
    )])
}

async fn containers_of(docker: &Docker, agent: &str) -> Vec<HashMap<String, String>> {
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(agent_filter(agent)),
            ..Default::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| c.labels.unwrap_or_default())
        .collect()
}

/// Asserts nothing of `agent` is left but its builds volume, then removes that; `trace`
/// (the job's) is shown when something is left.
async fn assert_clean(docker: &Docker, agent: &str, trace: &str) {
    assert!(
        containers_of(docker, agent).await.is_empty(),
        "containers left for {agent}; trace:\n{trace}"
    );
    let vols = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(agent_filter(agent)),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default();
    for v in vols {
        assert_eq!(
            v.labels.get("com.drover.kind").map(String::as_str),
            Some("builds"),
            "volume {} left; trace:\n{trace}",
            v.name
        );
        let _ = docker
            .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
            .await;
    }
}

/// Whether the engine can start a privileged container at all.
async fn engine_runs_privileged(docker: &Docker, image: &str) -> bool {
    use bollard::models::{ContainerCreateBody, HostConfig};
    use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
    let name = format!("drover-exec-test-probe-{}", rand::random::<u32>());
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["true".to_string()]),
        host_config: Some(HostConfig {
            privileged: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    };
    let created = docker
        .create_container(
            Some(CreateContainerOptions {
                name: Some(name.clone()),
                ..Default::default()
            }),
            body,
        )
        .await
        .expect("create probe container");
    let ok = docker.start_container(&created.id, None).await.is_ok();
    let _ = docker
        .remove_container(
            &created.id,
            Some(RemoveContainerOptions {
                force: true,
                ..Default::default()
            }),
        )
        .await;
    ok
}

/// A finished job: its outcome and trace, with assertions that show the trace.
struct Ran {
    outcome: JobOutcome,
    trace: String,
}

impl Ran {
    fn succeeded(&self) -> &Self {
        assert_eq!(self.outcome, JobOutcome::Success, "{}", self.trace);
        self
    }

    fn failed(&self, reason: FailureReason, exit_code: Option<i32>) -> &Self {
        assert_eq!(
            self.outcome,
            JobOutcome::Failed { reason, exit_code },
            "{}",
            self.trace
        );
        self
    }

    fn shows(&self, text: &str) -> &Self {
        assert!(self.trace.contains(text), "{}", self.trace);
        self
    }

    fn lacks(&self, text: &str) -> &Self {
        assert!(!self.trace.contains(text), "{}", self.trace);
        self
    }
}

async fn run(exec: &DockerExecutor, c: &JobContext) -> Ran {
    let trace = TraceSink::new();
    let outcome = exec.run(c, &trace, CancellationToken::new()).await;
    Ran {
        outcome,
        trace: String::from_utf8_lossy(&trace.snapshot()).into_owned(),
    }
}

impl Engine {
    /// Runs `job` for a fresh agent named after `test` on a runner with `docker_toml`, then
    /// asserts the job left nothing but its builds volume.
    async fn run_clean(&self, test: &str, job: JobResponse, docker_toml: &str) -> Ran {
        let agent = unique_agent(test);
        let ran = run(&self.exec, &ctx(job, runner(docker_toml), &agent)).await;
        assert_clean(&self.docker, &agent, &ran.trace).await;
        ran
    }
}

#[tokio::test]
async fn success_echoes_and_runs_commands() {
    let Some(e) = setup().await else {
        return;
    };
    e.run_clean("ok", script_job(&e.image, &["echo hi", "pwd"]), "")
        .await
        .succeeded()
        .shows("\x1b[32;1m$ echo hi\x1b[0;m\nhi\n")
        .shows("/builds/group/demo\n")
        .shows("Using docker image sha256:")
        .shows("Job succeeded");
}

#[tokio::test]
async fn failure_stops_at_the_failing_command_and_runs_after_script() {
    let Some(e) = setup().await else {
        return;
    };
    let job = job(
        &e.image,
        &["echo before", "exit 3", "echo never-runs"],
        &["echo after-ran $CI_JOB_STATUS"],
        60,
        serde_json::json!({}),
    );
    e.run_clean("fail", job, "")
        .await
        .failed(FailureReason::ScriptFailure, Some(3))
        .shows("before\n")
        .lacks("never-runs\n")
        .shows("after-ran failed\n")
        .shows("ERROR: Job failed: exit code 3");
}

#[tokio::test]
async fn job_timeout_kills_the_script_and_runs_after_script() {
    let Some(e) = setup().await else {
        return;
    };
    let job = job(
        &e.image,
        &["sleep 30"],
        &["echo after-timeout"],
        2,
        serde_json::json!({}),
    );
    e.run_clean("timeout", job, "")
        .await
        .failed(FailureReason::JobExecutionTimeout, None)
        .shows("after-timeout\n")
        .shows("ERROR: Job failed: execution took longer than 2 seconds");
}

#[tokio::test]
async fn cancel_kills_the_job_with_labelled_containers() {
    let Some(e) = setup().await else {
        return;
    };
    let agent = unique_agent("cancel");
    let c = ctx(
        job(
            &e.image,
            &["echo started", "sleep 30"],
            &["echo after-cancel"],
            60,
            serde_json::json!({}),
        ),
        runner(""),
        &agent,
    );
    let trace = TraceSink::new();
    let cancel = CancellationToken::new();
    let run = {
        let exec = e.exec.clone();
        let (c, trace, cancel) = (c.clone(), trace.clone(), cancel.clone());
        tokio::spawn(async move { exec.run(&c, &trace, cancel).await })
    };
    // Wait until the script runs, then look at the container's labels and cancel.
    let mut labels = Vec::new();
    for _ in 0..200 {
        if String::from_utf8_lossy(&trace.snapshot()).contains("started\n") {
            labels = containers_of(&e.docker, &agent).await;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(labels.len(), 1, "one build container while running");
    assert_eq!(labels[0]["com.drover.agent"], agent);
    assert_eq!(labels[0]["com.drover.runner"], "exec-test");
    assert_eq!(labels[0]["com.drover.job"], c.job.id.to_string());
    assert_eq!(labels[0]["com.drover.project"], "42");
    assert_eq!(labels[0]["com.drover.kind"], "build");
    cancel.cancel();
    let outcome = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("run returns soon after cancel")
        .expect("join");
    let text = String::from_utf8_lossy(&trace.snapshot()).into_owned();
    assert_eq!(outcome, JobOutcome::Canceled, "{text}");
    assert!(!text.contains("after-cancel\n"), "{text}");
    assert_clean(&e.docker, &agent, &text).await;
}

#[tokio::test]
async fn missing_image_with_pull_policy_never_fails_clearly() {
    let Some(e) = setup().await else {
        return;
    };
    e.run_clean(
        "noimage",
        script_job("drover-test/does-not-exist:1", &["true"]),
        "",
    )
    .await
    .failed(FailureReason::ImagePullFailure, None)
    .shows("ERROR: Job failed: image \"drover-test/does-not-exist:1\" is not present locally and pull_policy is \"never\"");
}

#[tokio::test]
async fn file_variables_are_readable_and_expanded() {
    let Some(e) = setup().await else {
        return;
    };
    let extra = serde_json::json!({"variables": [
        {"key": "GIT_STRATEGY", "value": "none"},
        {"key": "MY_FILE", "value": "file-content-123", "file": true, "raw": true},
        {"key": "GREETING", "value": "hello-$NAME", "raw": false},
        {"key": "NAME", "value": "drover"}
    ]});
    let job = job(
        &e.image,
        &[
            "cat $MY_FILE",
            "echo \"$GREETING\"",
            "echo \"path=$MY_FILE\"",
        ],
        &["cat $MY_FILE"],
        60,
        extra,
    );
    let ran = e.run_clean("filevar", job, "").await;
    ran.succeeded();
    assert_eq!(
        ran.trace.matches("file-content-123").count(),
        2,
        "{}",
        ran.trace
    );
    ran.shows("hello-drover\n")
        .shows("path=/builds/group/demo.tmp/MY_FILE\n");
}

#[tokio::test]
async fn runner_docker_settings_are_visible_inside() {
    let Some(e) = setup().await else {
        return;
    };
    let hostdir = tempfile::tempdir().expect("tempdir");
    std::fs::write(hostdir.path().join("marker"), "from-host").expect("write marker");
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(hostdir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod dir");
        std::fs::set_permissions(
            hostdir.path().join("marker"),
            std::fs::Permissions::from_mode(0o644),
        )
        .expect("chmod file");
    }
    let cfg = format!(
        "volumes = [\"{}:/hostdir:ro\", \"/anon\"]\nextra_hosts = [\"drover-db:10.9.8.7\"]\nuser = \"nobody\"\n",
        hostdir.path().display()
    );
    let job = script_job(
        &e.image,
        &[
            "cat /hostdir/marker; echo",
            "cat /etc/hosts",
            "id -u",
            "test -d /anon && echo anon-ok",
            "touch $CI_PROJECT_DIR/w && echo writable-ok",
        ],
    );
    e.run_clean("settings", job, &cfg)
        .await
        .succeeded()
        .shows("from-host\n")
        .shows("10.9.8.7\tdrover-db")
        .shows("65534\n")
        .shows("anon-ok\n")
        .shows("writable-ok\n");

    let privileged = e
        .run_clean(
            "privileged",
            script_job(&e.image, &["ip link set lo down && echo privileged-ok"]),
            "privileged = true",
        )
        .await;
    if engine_runs_privileged(&e.docker, &e.image).await {
        privileged.succeeded().shows("privileged-ok\n");
    } else {
        // This engine (itself sandboxed) refuses privileged containers: the refusal proves
        // the flag reached it, since the same job starts fine without it.
        eprintln!("engine refuses privileged containers; checking the refusal instead");
        privileged
            .failed(FailureReason::RunnerSystemFailure, None)
            .shows("ERROR: Job failed (system failure): start container");
    }

    e.run_clean(
        "capadd",
        script_job(&e.image, &["ip link set lo down && echo cap-ok"]),
        "cap_add = [\"NET_ADMIN\"]",
    )
    .await
    .succeeded()
    .shows("cap-ok\n");

    let unprivileged = e
        .run_clean(
            "unprivileged",
            script_job(&e.image, &["ip link set lo down"]),
            "",
        )
        .await;
    assert!(
        matches!(
            unprivileged.outcome,
            JobOutcome::Failed {
                reason: FailureReason::ScriptFailure,
                ..
            }
        ),
        "{}",
        unprivileged.trace
    );
}

#[tokio::test]
async fn pull_policy_always_fails_without_a_registry_and_lists_fall_back() {
    let Some(e) = setup().await else {
        return;
    };
    e.run_clean(
        "always",
        script_job("drover-test/not-in-any-registry:1", &["true"]),
        "pull_policy = \"always\"",
    )
    .await
    .failed(FailureReason::ImagePullFailure, None)
    .shows("Pulling docker image drover-test/not-in-any-registry:1 ...")
    .shows("ERROR: Job failed: failed to pull image \"drover-test/not-in-any-registry:1\" with specified policies [always]: pull image drover-test/not-in-any-registry:1:");

    e.run_clean(
        "fallback",
        script_job(&e.image, &["echo fell-back"]),
        "pull_policy = [\"always\", \"if-not-present\"]",
    )
    .await
    .succeeded()
    .shows("WARNING: Failed to pull image with policy \"always\"")
    .shows("fell-back\n");
}

#[tokio::test]
async fn builds_volume_persists_between_jobs_and_git_strategy_empty_clears_it() {
    let Some(e) = setup().await else {
        return;
    };
    let agent = unique_agent("persist");
    let job_with_strategy = |script: &[&str], strategy: &str| {
        let vars = serde_json::json!({"variables": [{"key": "GIT_STRATEGY", "value": strategy}]});
        job(&e.image, script, &[], 60, vars)
    };
    let mut first = ctx(
        job_with_strategy(&["echo kept > left-by-job-1"], "none"),
        runner(""),
        &agent,
    );
    first.slot = 3;
    run(&e.exec, &first).await.succeeded();

    let mut second = first.clone();
    second.job = job_with_strategy(&["cat left-by-job-1"], "none");
    run(&e.exec, &second).await.succeeded().shows("kept\n");

    let mut third = first.clone();
    third.job = job_with_strategy(&["ls -A; test ! -e left-by-job-1 && echo emptied"], "empty");
    let ran = run(&e.exec, &third).await;
    ran.succeeded().shows("emptied\n");
    assert_clean(&e.docker, &agent, &ran.trace).await;
}
#[tokio::test]
async fn cleanup_orphans_removes_only_this_agents_leftovers() {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
    let Some(e) = setup().await else {
        return;
    };
    let me = unique_agent("orphans");
    let other = unique_agent("orphans-other");
    let mut ids = Vec::new();
    for (agent, job_id) in [(&me, "1"), (&me, "2"), (&other, "1")] {
        let labels = HashMap::from([
            ("com.drover.agent".to_string(), agent.clone()),
            ("com.drover.job".to_string(), job_id.to_string()),
            ("com.drover.kind".to_string(), "build".to_string()),
        ]);
        let body = ContainerCreateBody {
            image: Some(e.image.clone()),
            cmd: Some(vec!["sleep".to_string(), "60".to_string()]),
            labels: Some(labels),
            ..Default::default()
        };
        let name = format!("{agent}-{job_id}");
        let c = e
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .expect("create leftover");
        e.docker
            .start_container(&c.id, None)
            .await
            .expect("start leftover");
        ids.push(c.id);
    }
    let report = e.exec.cleanup_orphans(&me, &[2]).await.expect("cleanup");
    assert_eq!(report.containers_removed, vec![format!("{me}-1")]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let left = containers_of(&e.docker, &me).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["com.drover.job"], "2");
    assert_eq!(containers_of(&e.docker, &other).await.len(), 1);
    for id in ids {
        let _ = e
            .docker
            .remove_container(
                &id,
                Some(RemoveContainerOptions {
                    force: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}
