//! The complete Docker executor against the real engine: sources from a local git server
//! over HTTP, services on the per-job network, caches between jobs, artifacts uploaded to
//! and dependencies downloaded from the fake GitLab (over HTTP, through `HttpGitLab`).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::sync::Arc;

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptions, ListNetworksOptions, ListVolumesOptions, RemoveVolumeOptions,
    TagImageOptions,
};
use drover_gitlab::{ClientOptions, GitLab, HttpGitLab, JobRequest, RunnerAuth};
use drover_job::executor::{
    ConnectOptions, DockerExecutor, Executor, FailureReason, JobContext, JobOutcome, StorageOptions,
};
use drover_job::trace::TraceSink;
use drover_proto::spec::RunnerConfig;
use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, StoredArtifact};
use drover_tests::git_server::GitServer;
use drover_tests::images::{busybox_web_image, docker_cli_image};
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "glcbt-64_exec2S3cr3tJobTok3n";
const RUNNER_TOKEN: &str = "glrt-exec2-runner-token";
const LABEL_AGENT: &str = "com.drover.agent";
const DEAD_IMAGE: &str = "drover-test/busybox-dead:1";

/// One test's world: fake GitLab, executor with its own data dir, a unique agent id.
struct World {
    fake: FakeGitLab,
    client: Arc<dyn GitLab>,
    exec: DockerExecutor,
    docker: Docker,
    image: String,
    agent: String,
    short: String,
    _data: tempfile::TempDir,
}

async fn world(test: &str) -> Option<World> {
    let (docker, image) = drover_tests::images::docker_and_busybox(test).await?;
    let fake = FakeGitLab::start().await;
    fake.add_runner(RUNNER_TOKEN);
    let client: Arc<dyn GitLab> =
        Arc::new(HttpGitLab::new(fake.url(), ClientOptions::default()).expect("client"));
    let data = tempfile::tempdir().expect("data dir");
    let exec = DockerExecutor::connect(ConnectOptions::default())
        .await
        .expect("connect executor")
        .with_storage(StorageOptions::new(data.path()));
    Some(World {
        fake,
        client,
        exec,
        docker,
        image,
        agent: format!(
            "drover-exec2-{test}-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ),
        short: format!("e{:07x}", rand::random::<u32>() & 0xfffffff),
        _data: data,
    })
}

impl Drop for World {
    /// Even when a test fails half-way: nothing of this test's agent stays in Docker.
    fn drop(&mut self) {
        let filter = format!("label={LABEL_AGENT}={}", self.agent);
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg(
                "docker ps -aq --filter \"$1\" | xargs -r docker rm -f; \
                 docker network ls -q --filter \"$1\" | xargs -r docker network rm; \
                 docker volume ls -q --filter \"$1\" | xargs -r docker volume rm -f",
            )
            .arg("sh")
            .arg(&filter)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn script(lines: &[&str]) -> Vec<serde_json::Value> {
    vec![
        json!({"name": "script", "script": lines, "timeout": 600, "when": "on_success", "allow_failure": false}),
    ]
}

fn spec(w: &World, name: &str, lines: &[&str], vars: &[(&str, &str)]) -> JobSpec {
    let mut s = JobSpec::new(name);
    s.token = Some(TOKEN.to_string());
    s.image = Some(json!({"name": w.image}));
    s.steps = script(lines);
    s.timeout = 600;
    s.variables = vars
        .iter()
        .map(|(k, v)| json!({"key": k, "value": v, "public": true}))
        .collect();
    s
}

fn runner(w: &World, docker_toml: &str) -> RunnerConfig {
    toml::from_str(&format!(
        "name = \"exec2\"\nurl = \"{}\"\n[docker]\npull_policy = \"never\"\n{docker_toml}",
        w.fake.url()
    ))
    .expect("runner config")
}

impl World {
    /// Enqueues `spec`, takes it as the runner would and runs it; returns the job id, the
    /// outcome and the trace.
    async fn run(&self, spec: JobSpec, docker_toml: &str) -> (i64, JobOutcome, String) {
        let queued = self.fake.enqueue_job(spec);
        let auth = RunnerAuth {
            token: SecretString::from(RUNNER_TOKEN.to_string()),
            system_id: "s_0123456789ab".into(),
        };
        let job = match self.client.request_job(&auth, None).await.expect("request") {
            JobRequest::Job(j) => *j,
            other => panic!("the fake handed out no runnable job: {other:?}"),
        };
        assert_eq!(job.id, queued.id);
        let ctx = JobContext {
            job,
            runner: Arc::new(runner(self, docker_toml)),
            agent_id: self.agent.clone(),
            runner_short_token: self.short.clone(),
            slot: 0,
            gitlab: self.client.clone(),
        };
        let trace = TraceSink::new();
        let outcome = self.exec.run(&ctx, &trace, CancellationToken::new()).await;
        let text = String::from_utf8_lossy(&trace.snapshot()).to_string();
        (queued.id, outcome, text)
    }

    /// Asserts nothing of this agent is left but builds volumes, then removes those.
    async fn finish(self) {
        let mut filters = HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("{LABEL_AGENT}={}", self.agent)],
        );
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters.clone()),
                ..Default::default()
            }))
            .await
            .expect("list containers");
        assert!(containers.is_empty(), "containers left: {containers:?}");
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .expect("list networks");
        assert!(networks.is_empty(), "networks left: {networks:?}");
        let kept = self
            .exec
            .list_kept_volumes(&self.agent)
            .await
            .expect("kept");
        let volumes = self
            .docker
            .list_volumes(Some(ListVolumesOptions {
                filters: Some(filters),
            }))
            .await
            .expect("list volumes")
            .volumes
            .unwrap_or_default();
        assert_eq!(
            volumes.len(),
            kept.len(),
            "only builds volumes are left: {volumes:?}"
        );
        for v in volumes {
            let _ = self
                .docker
                .remove_volume(&v.name, Some(RemoveVolumeOptions { force: true }))
                .await;
        }
    }
}

fn git_info(
    server: &GitServer,
    path: &str,
    sha: &str,
) -> serde_json::Map<String, serde_json::Value> {
    let v = json!({
        "repo_url": server.url_with_token(path, TOKEN),
        "ref": "main",
        "sha": sha,
        "ref_type": "branch",
        "refspecs": ["+refs/heads/*:refs/remotes/origin/*"],
        "depth": 0
    });
    v.as_object().cloned().unwrap_or_default()
}

#[tokio::test]
async fn sources_clone_shallow_full_fetch_reuse_and_submodules() {
    let Some(w) = world("sources").await else {
        return;
    };
    let server = GitServer::start(TOKEN).await.expect("git server");
    let lib = server.create_repo("group/lib").expect("lib");
    lib.commit(&[("lib.txt", "lib-content\n")], "lib")
        .expect("commit");
    let repo = server.create_repo("group/proj").expect("repo");
    repo.commit(&[("README.md", "one\n")], "first")
        .expect("commit");
    repo.commit(&[("src/main.c", "int main(){}\n")], "second")
        .expect("commit");
    let sha = repo.add_submodule("../lib.git", "lib").expect("submodule");

    // Shallow clone with submodules.
    let mut s = spec(
        &w,
        "shallow",
        &[
            "test \"$(pwd)\" = /builds/group/proj",
            "cat README.md src/main.c lib/lib.txt",
            "test -f .git/shallow && echo SHALLOW-YES",
            "echo junk > untracked.tmp",
        ],
        &[
            ("GIT_STRATEGY", "clone"),
            ("GIT_DEPTH", "1"),
            ("GIT_SUBMODULE_STRATEGY", "normal"),
        ],
    );
    s.git_info = git_info(&server, "group/proj", &sha);
    let (_, out, t) = w.run(s, "").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert!(t.contains("lib-content"), "{t}");
    assert!(t.contains("SHALLOW-YES"), "{t}");
    assert!(t.contains("Created fresh repository."), "{t}");
    assert!(
        !t.contains(TOKEN),
        "the job token leaked into the trace: {t}"
    );

    // Full history: fetch reuses the work dir (no fresh repository), untracked files gone.
    let next = repo
        .commit(&[("README.md", "two\n")], "third")
        .expect("commit");
    let mut s = spec(
        &w,
        "fetch",
        &[
            "cat README.md",
            "test ! -e untracked.tmp && echo CLEANED",
            "test ! -f .git/shallow && echo FULL-HISTORY",
        ],
        &[("GIT_STRATEGY", "fetch"), ("GIT_DEPTH", "0")],
    );
    s.git_info = git_info(&server, "group/proj", &next);
    let (_, out, t) = w.run(s, "").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert!(t.contains("Fetching changes..."), "{t}");
    assert!(
        !t.contains("Created fresh repository."),
        "fetch reuses: {t}"
    );
    assert!(t.contains("two\n"), "{t}");
    assert!(t.contains("CLEANED"), "{t}");
    assert!(!t.contains(TOKEN), "{t}");
    w.finish().await;
}

#[tokio::test]
async fn wrong_sha_fails_the_job_as_a_script_failure() {
    let Some(w) = world("badsha").await else {
        return;
    };
    let server = GitServer::start(TOKEN).await.expect("git server");
    let repo = server.create_repo("group/proj").expect("repo");
    repo.commit(&[("README.md", "one\n")], "first")
        .expect("commit");
    let mut s = spec(&w, "badsha", &["true"], &[("GIT_STRATEGY", "clone")]);
    s.git_info = git_info(&server, "group/proj", &"0".repeat(40));
    let (_, out, t) = w.run(s, "").await;
    assert!(
        matches!(
            out,
            JobOutcome::Failed {
                reason: FailureReason::ScriptFailure,
                ..
            }
        ),
        "{out:?} {t}"
    );
    assert!(!t.contains(TOKEN), "{t}");
    w.finish().await;
}

#[tokio::test]
async fn services_reached_by_alias_and_derived_name_and_a_dead_one_warns_with_logs() {
    let Some(w) = world("services").await else {
        return;
    };
    let web = match busybox_web_image().await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("skipping: {e:#}");
            return;
        }
    };
    // The dead service gets an image of its own so derived names stay unique.
    w.docker
        .tag_image(
            &web,
            Some(TagImageOptions {
                repo: Some(DEAD_IMAGE.split(':').next().unwrap_or_default().to_string()),
                tag: Some("1".to_string()),
            }),
        )
        .await
        .expect("tag dead service image");
    let mut s = spec(
        &w,
        "services",
        &[
            "wget -q -O- http://web:8080/drover-web.txt",
            "wget -q -O- http://drover-test-busybox-web:8080/drover-web.txt",
            "wget -q -O- http://drover-test__busybox-web:8080/drover-web.txt",
            "echo \"SVC_VAR in build=${SVC_ONLY:-unset}\"",
        ],
        &[("GIT_STRATEGY", "empty")],
    );
    s.services = vec![
        json!({"name": web, "alias": "web",
               "command": ["sh", "-c", "echo \"hello-from-web $SVC_ONLY\" > /tmp/drover-web.txt && exec httpd -f -p 8080 -h /tmp"],
               "variables": [{"key": "SVC_ONLY", "value": "svc-value"}]}),
        json!({"name": DEAD_IMAGE, "alias": "dead",
               "command": ["sh", "-c", "echo never-listening-here; sleep 600"]}),
    ];
    let (_, out, t) = w.run(s, "wait_for_services_timeout = 3").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert_eq!(
        t.matches("hello-from-web svc-value").count(),
        3,
        "reached by alias and by both derived names: {t}"
    );
    assert!(t.contains("SVC_VAR in build=unset"), "{t}");
    assert!(t.contains("probably didn't start properly"), "{t}");
    assert!(t.contains("never-listening-here"), "{t}");
    w.finish().await;
}

fn zip_entries(bytes: &[u8]) -> Vec<(String, String)> {
    let mut z = zip::ZipArchive::new(std::io::Cursor::new(bytes.to_vec())).expect("zip");
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).expect("entry");
        let mut s = String::new();
        if f.is_file() {
            f.read_to_string(&mut s).expect("read");
        }
        out.push((f.name().expect("entry name").to_string(), s));
    }
    out.sort();
    out
}

#[tokio::test]
async fn cache_round_trip_between_two_jobs() {
    let Some(w) = world("cache").await else {
        return;
    };
    let cache = json!({"key": "deps-$CI_JOB_STAGE", "paths": ["vendor/"], "policy": "pull-push", "untracked": false, "when": "on_success"});
    let mut first = spec(
        &w,
        "cache-1",
        &["mkdir -p vendor", "echo cached-bytes > vendor/lib.txt"],
        &[("GIT_STRATEGY", "empty")],
    );
    first.cache = vec![cache.clone()];
    let (_, out, t) = w.run(first, "").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert!(t.contains("Created cache"), "{t}");

    let mut second = spec(
        &w,
        "cache-2",
        &["cat vendor/lib.txt"],
        &[("GIT_STRATEGY", "empty")],
    );
    second.cache = vec![cache];
    let (_, out, t) = w.run(second, "").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert!(t.contains("Successfully extracted cache"), "{t}");
    assert!(t.contains("cached-bytes"), "{t}");

    // disable_cache: neither restored nor saved.
    let mut third = spec(
        &w,
        "cache-3",
        &["test ! -e vendor/lib.txt && echo NO-CACHE"],
        &[("GIT_STRATEGY", "empty")],
    );
    third.cache = vec![json!({"key": "deps-test", "paths": ["vendor/"], "policy": "pull"})];
    let (_, out, t) = w.run(third, "disable_cache = true").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert!(t.contains("NO-CACHE"), "{t}");
    assert!(t.contains("Cache is disabled"), "{t}");
    w.finish().await;
}

#[tokio::test]
async fn artifacts_upload_then_dependency_download_and_zip_slip_refused() {
    let Some(w) = world("artifacts").await else {
        return;
    };
    let mut build = spec(
        &w,
        "build",
        &[
            "mkdir -p out",
            "echo app-binary > out/app",
            "echo noise > out/debug.log",
        ],
        &[("GIT_STRATEGY", "empty")],
    );
    build.artifacts = vec![
        json!({"name": "", "paths": ["out/"], "exclude": ["out/*.log"],
        "when": "on_success", "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 day"}),
    ];
    let (build_id, out, t) = w.run(build, "").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    let stored = w.fake.artifacts(build_id);
    assert_eq!(stored.len(), 1, "{t}");
    assert_eq!(stored[0].filename, "artifacts.zip");
    assert_eq!(
        zip_entries(&stored[0].content),
        vec![
            ("out/".to_string(), String::new()),
            ("out/app".to_string(), "app-binary\n".to_string())
        ]
    );

    // The next job gets them in CI_PROJECT_DIR.
    let mut test = spec(&w, "test", &["cat out/app"], &[("GIT_STRATEGY", "empty")]);
    test.depends_on = vec![build_id];
    let (_, out, t) = w.run(test, "").await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert!(t.contains("app-binary"), "{t}");

    // A dependency whose zip escapes the project directory is refused.
    let evil = w.fake.enqueue_job(spec(&w, "evil-source", &["true"], &[]));
    let mut z = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    z.start_file(
        "../../escaped.txt",
        zip::write::SimpleFileOptions::default(),
    )
    .expect("zip entry");
    z.write_all(b"evil").expect("zip write");
    let bytes = z.finish().expect("zip").into_inner();
    assert!(w.fake.put_artifact(
        evil.id,
        StoredArtifact {
            filename: "artifacts.zip".into(),
            artifact_format: Some("zip".into()),
            artifact_type: Some("archive".into()),
            expire_in: None,
            content: bytes.into(),
        }
    ));
    // Take the evil job out of the queue so the next request gets the consumer.
    assert!(w.fake.cancel_job(evil.id));
    let mut victim = spec(
        &w,
        "victim",
        &["echo SHOULD-NOT-RUN"],
        &[("GIT_STRATEGY", "empty")],
    );
    victim.depends_on = vec![evil.id];
    let (_, out, t) = w.run(victim, "").await;
    assert!(
        matches!(out, JobOutcome::Failed { .. }),
        "zip-slip must fail the job: {out:?} {t}"
    );
    assert!(t.contains("refused"), "{t}");
    assert!(!t.contains("SHOULD-NOT-RUN\n"), "{t}");
    w.finish().await;
}

#[tokio::test]
async fn missing_dependency_and_too_large_artifacts() {
    let Some(w) = world("missing").await else {
        return;
    };
    // A dependency that announces an archive GitLab then does not have.
    let mut s = spec(
        &w,
        "needs-missing",
        &["echo SHOULD-NOT-RUN"],
        &[("GIT_STRATEGY", "empty")],
    );
    s.overrides.insert(
        "dependencies".into(),
        json!([{"id": 999_999, "name": "gone", "token": "glcbt-gone",
                "artifacts_file": {"filename": "artifacts.zip", "size": 10}}]),
    );
    let (_, out, t) = w.run(s, "").await;
    assert_eq!(
        out,
        JobOutcome::Failed {
            reason: FailureReason::MissingDependencyFailure,
            exit_code: None
        },
        "{t}"
    );

    // 413 from GitLab is reported in the trace and fails the job.
    w.fake.set_max_artifact_size(16);
    let mut big = spec(
        &w,
        "big",
        &["mkdir -p out", "head -c 4096 /dev/urandom > out/blob"],
        &[("GIT_STRATEGY", "empty")],
    );
    big.artifacts = vec![json!({"name": "", "paths": ["out/"], "when": "on_success",
        "artifact_type": "archive", "artifact_format": "zip"})];
    let (_, out, t) = w.run(big, "").await;
    assert!(matches!(out, JobOutcome::Failed { .. }), "{out:?} {t}");
    assert!(t.contains("413"), "{t}");
    w.finish().await;
}

#[tokio::test]
async fn docker_socket_mount_runs_docker_commands_and_dind_with_socket_warns() {
    let Some(w) = world("socket").await else {
        return;
    };
    let cli = match docker_cli_image().await {
        Ok(i) => i,
        Err(e) => {
            eprintln!("skipping: {e:#}");
            return;
        }
    };
    let mut s = spec(
        &w,
        "docker-build",
        &[
            "docker info --format 'server={{.ServerVersion}}'",
            "docker ps --format '{{.Names}}' | grep -c -- '-build$' && echo SEES-ITS-OWN-CONTAINER",
        ],
        &[("GIT_STRATEGY", "empty")],
    );
    s.image = Some(json!({"name": cli}));
    // A dind service next to the socket is reported (it must not be combined); its image is
    // a local stand-in that listens on nothing and exposes nothing.
    w.docker
        .tag_image(
            &w.image,
            Some(TagImageOptions {
                repo: Some("drover-test/docker".to_string()),
                tag: Some("dind".to_string()),
            }),
        )
        .await
        .expect("tag dind stand-in");
    s.services = vec![json!({"name": "drover-test/docker:dind", "alias": "docker",
        "command": ["sh", "-c", "sleep 600"]})];
    let (_, out, t) = w
        .run(
            s,
            "volumes = [\"/var/run/docker.sock:/var/run/docker.sock\"]",
        )
        .await;
    assert_eq!(out, JobOutcome::Success, "{t}");
    assert!(t.contains("server="), "{t}");
    assert!(t.contains("SEES-ITS-OWN-CONTAINER"), "{t}");
    assert!(t.contains("must not be combined"), "{t}");
    w.finish().await;
}
