//! `DockerExecutor` against the real engine with the local busybox image.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{ListContainersOptions, ListVolumesOptions, RemoveVolumeOptions};
use drover_agent::executor::{
    ConnectOptions, DockerExecutor, Executor, FailureReason, JobContext, JobOutcome,
};
use drover_agent::gitlab::types::JobResponse;
use drover_agent::trace::TraceSink;
use drover_proto::spec::RunnerConfig;
use tokio_util::sync::CancellationToken;

/// Connects to Docker and builds the busybox image, or says why the test is skipped.
async fn setup() -> Option<(Docker, DockerExecutor, String)> {
    let (docker, image) = drover_tests::images::docker_and_busybox("executor_docker").await?;
    let exec = DockerExecutor::connect(ConnectOptions::default())
        .await
        .expect("connect executor");
    Some((docker, exec, image))
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
        gitlab: Arc::new(drover_agent::gitlab::fake::FakeGitLab::new()),
    }
}

async fn containers_of(docker: &Docker, agent: &str) -> Vec<HashMap<String, String>> {
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("com.drover.agent={agent}")],
    );
    docker
        .list_containers(Some(ListContainersOptions {
            all: true,
            filters: Some(filters),
            ..Default::default()
        }))
        .await
        .expect("list containers")
        .into_iter()
        .map(|c| c.labels.unwrap_or_default())
        .collect()
}

/// Asserts nothing of `agent` is left but its builds volume, then removes that.
async fn assert_clean(docker: &Docker, agent: &str) {
    assert!(
        containers_of(docker, agent).await.is_empty(),
        "containers left for {agent}"
    );
    let mut filters = HashMap::new();
    filters.insert(
        "label".to_string(),
        vec![format!("com.drover.agent={agent}")],
    );
    let vols = docker
        .list_volumes(Some(ListVolumesOptions {
            filters: Some(filters),
        }))
        .await
        .expect("list volumes")
        .volumes
        .unwrap_or_default();
    for v in vols {
        assert_eq!(
            v.labels.get("com.drover.kind").map(String::as_str),
            Some("builds"),
            "volume {} left",
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

async fn run(exec: &DockerExecutor, c: &JobContext) -> (JobOutcome, String) {
    let trace = TraceSink::new();
    let outcome = exec.run(c, &trace, CancellationToken::new()).await;
    (
        outcome,
        String::from_utf8_lossy(&trace.snapshot()).into_owned(),
    )
}

#[tokio::test]
async fn success_echoes_and_runs_commands() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("ok");
    let c = ctx(
        job(&image, &["echo hi", "pwd"], &[], 60, serde_json::json!({})),
        runner(""),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    assert!(
        trace.contains("\x1b[32;1m$ echo hi\x1b[0;m\nhi\n"),
        "{trace}"
    );
    assert!(trace.contains("/builds/group/demo\n"), "{trace}");
    assert!(trace.contains("Using docker image sha256:"), "{trace}");
    assert!(trace.contains("Job succeeded"), "{trace}");
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn failure_stops_at_the_failing_command_and_runs_after_script() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("fail");
    let c = ctx(
        job(
            &image,
            &["echo before", "exit 3", "echo never-runs"],
            &["echo after-ran $CI_JOB_STATUS"],
            60,
            serde_json::json!({}),
        ),
        runner(""),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(
        outcome,
        JobOutcome::Failed {
            reason: FailureReason::ScriptFailure,
            exit_code: Some(3)
        },
        "{trace}"
    );
    assert!(trace.contains("before\n"), "{trace}");
    assert!(!trace.contains("never-runs\n"), "{trace}");
    assert!(trace.contains("after-ran failed\n"), "{trace}");
    assert!(trace.contains("ERROR: Job failed: exit code 3"), "{trace}");
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn job_timeout_kills_the_script_and_runs_after_script() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("timeout");
    let c = ctx(
        job(
            &image,
            &["sleep 30"],
            &["echo after-timeout"],
            2,
            serde_json::json!({}),
        ),
        runner(""),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(
        outcome,
        JobOutcome::Failed {
            reason: FailureReason::JobExecutionTimeout,
            exit_code: None
        },
        "{trace}"
    );
    assert!(trace.contains("after-timeout\n"), "{trace}");
    assert!(
        trace.contains("ERROR: Job failed: execution took longer than 2 seconds"),
        "{trace}"
    );
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn cancel_kills_the_job_with_labelled_containers() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("cancel");
    let c = ctx(
        job(
            &image,
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
        let exec = exec.clone();
        let (c, trace, cancel) = (c.clone(), trace.clone(), cancel.clone());
        tokio::spawn(async move { exec.run(&c, &trace, cancel).await })
    };
    // Wait until the script runs, then look at the container's labels and cancel.
    let mut labels = Vec::new();
    for _ in 0..200 {
        if String::from_utf8_lossy(&trace.snapshot()).contains("started\n") {
            labels = containers_of(&docker, &agent).await;
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
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn missing_image_with_pull_policy_never_fails_clearly() {
    let Some((docker, exec, _image)) = setup().await else {
        return;
    };
    let agent = unique_agent("noimage");
    let c = ctx(
        job(
            "drover-test/does-not-exist:1",
            &["true"],
            &[],
            60,
            serde_json::json!({}),
        ),
        runner(""),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(
        outcome,
        JobOutcome::Failed {
            reason: FailureReason::ImagePullFailure,
            exit_code: None
        },
        "{trace}"
    );
    assert!(
        trace.contains("ERROR: Job failed: image \"drover-test/does-not-exist:1\" is not present locally and pull_policy is \"never\""),
        "{trace}"
    );
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn file_variables_are_readable_and_expanded() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("filevar");
    let extra = serde_json::json!({"variables": [
        {"key": "GIT_STRATEGY", "value": "none"},
        {"key": "MY_FILE", "value": "file-content-123", "file": true, "raw": true},
        {"key": "GREETING", "value": "hello-$NAME", "raw": false},
        {"key": "NAME", "value": "drover"}
    ]});
    let c = ctx(
        job(
            &image,
            &[
                "cat $MY_FILE",
                "echo \"$GREETING\"",
                "echo \"path=$MY_FILE\"",
            ],
            &["cat $MY_FILE"],
            60,
            extra,
        ),
        runner(""),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    assert_eq!(trace.matches("file-content-123").count(), 2, "{trace}");
    assert!(trace.contains("hello-drover\n"), "{trace}");
    assert!(
        trace.contains("path=/builds/group/demo.tmp/MY_FILE\n"),
        "{trace}"
    );
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn runner_docker_settings_are_visible_inside() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("settings");
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
    let c = ctx(
        job(
            &image,
            &[
                "cat /hostdir/marker; echo",
                "cat /etc/hosts",
                "id -u",
                "test -d /anon && echo anon-ok",
                "touch $CI_PROJECT_DIR/w && echo writable-ok",
            ],
            &[],
            60,
            serde_json::json!({}),
        ),
        runner(&cfg),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    assert!(trace.contains("from-host\n"), "{trace}");
    assert!(trace.contains("10.9.8.7\tdrover-db"), "{trace}");
    assert!(trace.contains("65534\n"), "{trace}");
    assert!(trace.contains("anon-ok\n"), "{trace}");
    assert!(trace.contains("writable-ok\n"), "{trace}");
    assert_clean(&docker, &agent).await;

    let agent = unique_agent("privileged");
    let c = ctx(
        job(
            &image,
            &["ip link set lo down && echo privileged-ok"],
            &[],
            60,
            serde_json::json!({}),
        ),
        runner("privileged = true"),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    if engine_runs_privileged(&docker, &image).await {
        assert_eq!(outcome, JobOutcome::Success, "{trace}");
        assert!(trace.contains("privileged-ok\n"), "{trace}");
    } else {
        // This engine (itself sandboxed) refuses privileged containers: the refusal proves
        // the flag reached it, since the same job starts fine without it.
        eprintln!("engine refuses privileged containers; checking the refusal instead");
        assert_eq!(
            outcome,
            JobOutcome::Failed {
                reason: FailureReason::RunnerSystemFailure,
                exit_code: None
            },
            "{trace}"
        );
        assert!(
            trace.contains("ERROR: Job failed (system failure): start container"),
            "{trace}"
        );
    }
    assert_clean(&docker, &agent).await;

    let agent = unique_agent("capadd");
    let c = ctx(
        job(
            &image,
            &["ip link set lo down && echo cap-ok"],
            &[],
            60,
            serde_json::json!({}),
        ),
        runner("cap_add = [\"NET_ADMIN\"]"),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    assert!(trace.contains("cap-ok\n"), "{trace}");
    assert_clean(&docker, &agent).await;

    let agent = unique_agent("unprivileged");
    let c = ctx(
        job(
            &image,
            &["ip link set lo down"],
            &[],
            60,
            serde_json::json!({}),
        ),
        runner(""),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert!(
        matches!(
            outcome,
            JobOutcome::Failed {
                reason: FailureReason::ScriptFailure,
                ..
            }
        ),
        "{trace}"
    );
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn pull_policy_always_fails_without_a_registry_and_lists_fall_back() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("always");
    let c = ctx(
        job(
            "drover-test/not-in-any-registry:1",
            &["true"],
            &[],
            60,
            serde_json::json!({}),
        ),
        runner("pull_policy = \"always\""),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(
        outcome,
        JobOutcome::Failed {
            reason: FailureReason::ImagePullFailure,
            exit_code: None
        },
        "{trace}"
    );
    assert!(
        trace.contains("Pulling docker image drover-test/not-in-any-registry:1 ..."),
        "{trace}"
    );
    assert!(
        trace.contains("ERROR: Job failed: failed to pull image \"drover-test/not-in-any-registry:1\" with specified policies [always]: pull image drover-test/not-in-any-registry:1:"),
        "{trace}"
    );
    assert_clean(&docker, &agent).await;

    let agent = unique_agent("fallback");
    let c = ctx(
        job(&image, &["echo fell-back"], &[], 60, serde_json::json!({})),
        runner("pull_policy = [\"always\", \"if-not-present\"]"),
        &agent,
    );
    let (outcome, trace) = run(&exec, &c).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    assert!(
        trace.contains("WARNING: Failed to pull image with policy \"always\""),
        "{trace}"
    );
    assert!(trace.contains("fell-back\n"), "{trace}");
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn builds_volume_persists_between_jobs_and_git_strategy_empty_clears_it() {
    let Some((docker, exec, image)) = setup().await else {
        return;
    };
    let agent = unique_agent("persist");
    let strategy =
        |s: &str| serde_json::json!({"variables": [{"key": "GIT_STRATEGY", "value": s}]});
    let mut first = ctx(
        job(
            &image,
            &["echo kept > left-by-job-1"],
            &[],
            60,
            strategy("none"),
        ),
        runner(""),
        &agent,
    );
    first.slot = 3;
    let (outcome, trace) = run(&exec, &first).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");

    let mut second = first.clone();
    second.job = job(&image, &["cat left-by-job-1"], &[], 60, strategy("none"));
    let (outcome, trace) = run(&exec, &second).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    assert!(trace.contains("kept\n"), "{trace}");

    let mut third = first.clone();
    third.job = job(
        &image,
        &["ls -A; test ! -e left-by-job-1 && echo emptied"],
        &[],
        60,
        strategy("empty"),
    );
    let (outcome, trace) = run(&exec, &third).await;
    assert_eq!(outcome, JobOutcome::Success, "{trace}");
    assert!(trace.contains("emptied\n"), "{trace}");
    assert_clean(&docker, &agent).await;
}

#[tokio::test]
async fn cleanup_orphans_removes_only_this_agents_leftovers() {
    use bollard::models::ContainerCreateBody;
    use bollard::query_parameters::{CreateContainerOptions, RemoveContainerOptions};
    let Some((docker, exec, image)) = setup().await else {
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
            image: Some(image.clone()),
            cmd: Some(vec!["sleep".to_string(), "60".to_string()]),
            labels: Some(labels),
            ..Default::default()
        };
        let name = format!("{agent}-{job_id}");
        let c = docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(name),
                    ..Default::default()
                }),
                body,
            )
            .await
            .expect("create leftover");
        docker
            .start_container(&c.id, None)
            .await
            .expect("start leftover");
        ids.push(c.id);
    }
    let report = exec.cleanup_orphans(&me, &[2]).await.expect("cleanup");
    assert_eq!(report.containers_removed, vec![format!("{me}-1")]);
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    let left = containers_of(&docker, &me).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["com.drover.job"], "2");
    assert_eq!(containers_of(&docker, &other).await.len(), 1);
    for id in ids {
        let _ = docker
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
