//! The distributed cache (`[runners.cache] Type = "s3"`) end to end: real `drover-agent run
//! --config` processes, real Docker, and a real S3-compatible server (moto, see
//! `drover_tests::s3_server`). Object names are gitlab-runner's
//! (`<Path>/runner/<short token>/project/<id>/<key>`, no `runner/...` when `Shared`).

mod standalone_support;

use std::io::Write;
use std::time::{Duration, Instant};

use drover_tests::fake_gitlab::{FakeGitLab, JobSpec, JobState, NewRunner};
use drover_tests::flaky_proxy::FlakyProxy;
use drover_tests::s3_server::S3Server;
use serde_json::json;
use standalone_support::{Agent, run_to_exit};

const BUCKET: &str = "s3cache-e2e";
const JOB_WAIT: Duration = Duration::from_secs(50);

/// One `[[runners]]` table with the S3 cache at `addr`.
fn runner_toml(name: &str, url: &str, token: &str, image: &str, cache: &str) -> String {
    format!(
        "[[runners]]\n  name = \"{name}\"\n  url = \"{url}\"\n  token = \"{token}\"\n  \
         executor = \"docker\"\n  [runners.cache]\n{cache}\n  \
         [runners.docker]\n    image = \"{image}\"\n    pull_policy = \"never\"\n"
    )
}

fn s3_cache(addr: &str, path: &str, shared: bool, max_upload: u64) -> String {
    format!(
        "    Type = \"s3\"\n    Path = \"{path}\"\n    Shared = {shared}\n    \
         MaxUploadedArchiveSize = {max_upload}\n    [runners.cache.s3]\n      \
         ServerAddress = \"{addr}\"\n      AccessKey = \"AKIAS3CACHETEST\"\n      \
         SecretKey = \"s3cache-test-secret\"\n      BucketName = \"{BUCKET}\"\n      \
         Insecure = true\n"
    )
}

fn config(runners: &[String]) -> String {
    format!(
        "concurrent = 2\ncheck_interval = 1\n\n{}",
        runners.join("\n")
    )
}

/// gitlab-runner's short token: 8 characters after `glrt-`.
fn short(token: &str) -> String {
    token.trim_start_matches("glrt-").chars().take(8).collect()
}

fn job(image: &str, name: &str, key: &str, policy: &str, script: &[String]) -> JobSpec {
    JobSpec::new(name)
        .image(image)
        .variable("GIT_STRATEGY", "none")
        .script(script.to_vec())
        .cache_json(json!({"key": key, "paths": ["vendor/"], "policy": policy,
            "when": "on_success", "untracked": false}))
}

/// A job that only restores the cache `key` and prints the marker a saving job wrote.
fn restore_job(image: &str, key: &str) -> JobSpec {
    job(image, "restore", key, "pull", &["cat vendor/marker".into()])
}

fn trace(gitlab: &FakeGitLab, id: i64) -> String {
    String::from_utf8_lossy(&gitlab.trace(id)).into_owned()
}

async fn succeeded(gitlab: &FakeGitLab, agent: &Agent, id: i64) -> String {
    let f = gitlab.wait_for_job_finished(id, JOB_WAIT).await;
    let t = trace(gitlab, id);
    assert_eq!(
        f.map(|f| f.state),
        Some(JobState::Success),
        "trace:\n{t}\nagent:\n{}",
        agent.stderr()
    );
    t
}

async fn wait_trace(gitlab: &FakeGitLab, id: i64, text: &str) {
    let end = Instant::now() + JOB_WAIT;
    while !trace(gitlab, id).contains(text) {
        assert!(
            Instant::now() < end,
            "{text:?} never in trace:\n{}",
            trace(gitlab, id)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn token(tag: &str) -> String {
    format!("glrt-{tag}{:08x}", rand::random::<u32>())
}

/// A zip as gitlab-runner's cache archiver writes one: entries relative to the project dir.
fn gitlab_runner_zip(file: &str, text: &str) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut out);
    let opts = zip::write::SimpleFileOptions::default();
    z.add_directory("vendor/", opts).unwrap();
    z.start_file(format!("vendor/{file}"), opts).unwrap();
    z.write_all(text.as_bytes()).unwrap();
    z.finish().unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_travels_through_s3_between_boxes_and_gitlab_runner_objects_are_found() {
    let Some(s3) = S3Server::start("s3cache_travel").await else {
        return;
    };
    let Some((_docker, image)) = drover_tests::images::docker_and_busybox("s3cache_travel").await
    else {
        return;
    };
    s3.create_bucket(BUCKET).await;
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    let tok = token("s3ct");
    gitlab.add_runner(&tok);
    let addr = s3.addr.to_string();
    let cfg = config(&[runner_toml(
        "s3c-travel",
        gitlab.url(),
        &tok,
        &image,
        &s3_cache(&addr, "ci", false, 1_000_000),
    )]);
    let marker = format!("marker-{:08x}", rand::random::<u32>());

    // Box A saves the cache; it lands at gitlab-runner's object name.
    let a = Agent::start(&cfg);
    let id = gitlab
        .enqueue_job(job(
            &image,
            "save",
            "deps",
            "pull-push",
            &[
                "mkdir -p vendor".into(),
                format!("echo {marker} > vendor/marker"),
            ],
        ))
        .id;
    let t = succeeded(&gitlab, &a, id).await;
    let object = format!("ci/runner/{}/project/1/deps", short(&tok));
    assert!(
        t.contains(&format!("Uploaded cache\x1b[0;m to s3://{BUCKET}/{object}")),
        "{t}"
    );
    let zip = s3
        .get(BUCKET, &object)
        .await
        .expect("object at gitlab-runner's name");
    assert!(zip.starts_with(b"PK"), "not a zip");
    drop(a);

    // Box B (another state dir, empty local cache) restores it from S3.
    // Its first job: with `GIT_STRATEGY=none` the project directory is made for the cache.
    let b = Agent::start(&cfg);
    let id = gitlab.enqueue_job(restore_job(&image, "deps")).id;
    let t = succeeded(&gitlab, &b, id).await;
    assert!(t.contains("Successfully downloaded cache deps"), "{t}");
    assert!(
        t.contains(&format!("\n{marker}")),
        "marker not restored:\n{t}"
    );

    // An archive gitlab-runner wrote (placed by hand at its object name) is found.
    let hand = format!("ci/runner/{}/project/1/handmade", short(&tok));
    s3.put(
        BUCKET,
        &hand,
        &gitlab_runner_zip("hand.txt", "written-by-gitlab-runner"),
    )
    .await;
    let id = gitlab
        .enqueue_job(job(
            &image,
            "hand",
            "handmade",
            "pull",
            &["cat vendor/hand.txt".into()],
        ))
        .id;
    let t = succeeded(&gitlab, &b, id).await;
    assert!(t.contains("\nwritten-by-gitlab-runner"), "{t}");

    // Over MaxUploadedArchiveSize (1 MB): kept on the box, not uploaded, with a warning.
    let id = gitlab
        .enqueue_job(job(
            &image,
            "big",
            "big",
            "pull-push",
            &[
                "mkdir -p vendor".into(),
                "dd if=/dev/urandom of=vendor/blob bs=1024 count=2048 2>/dev/null".into(),
            ],
        ))
        .id;
    let t = succeeded(&gitlab, &b, id).await;
    assert!(
        t.contains("more than MaxUploadedArchiveSize = 1000000; not uploaded"),
        "{t}"
    );
    let big = format!("ci/runner/{}/project/1/big", short(&tok));
    assert_eq!(s3.get(BUCKET, &big).await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_mid_upload_job_succeeds_with_warning() {
    let Some(mut s3) = S3Server::start("s3cache_kill").await else {
        return;
    };
    let Some((_docker, image)) = drover_tests::images::docker_and_busybox("s3cache_kill").await
    else {
        return;
    };
    s3.create_bucket(BUCKET).await;
    let proxy = FlakyProxy::start(s3.addr).await.expect("proxy");
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    let tok = token("s3ck");
    gitlab.add_runner(&tok);
    let cfg = config(&[runner_toml(
        "s3c-kill",
        gitlab.url(),
        &tok,
        &image,
        &s3_cache(&proxy.addr().to_string(), "", false, 0),
    )]);
    let agent = Agent::start(&cfg);
    let id = gitlab
        .enqueue_job(job(
            &image,
            "save",
            "deps",
            "pull-push",
            &[
                "echo job-started".into(),
                "sleep 2".into(),
                "mkdir -p vendor".into(),
                "echo kept-locally > vendor/marker".into(),
                "dd if=/dev/urandom of=vendor/blob bs=1024 count=8192 2>/dev/null".into(),
            ],
        ))
        .id;
    // Past the restore (a 404): hold every byte, so the upload is surely in flight when the
    // server dies.
    wait_trace(&gitlab, id, "job-started").await;
    proxy.stall(true);
    wait_trace(&gitlab, id, "Uploading cache to").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s3.kill();
    proxy.reset_all();
    proxy.stall(false);
    let started = Instant::now();
    let t = succeeded(&gitlab, &agent, id).await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        t.contains("WARNING: Failed to upload cache \"deps\" to the distributed cache"),
        "{t}"
    );

    // With the server gone, the next job restores from this box, with a warning.
    let id = gitlab.enqueue_job(restore_job(&image, "deps")).id;
    let t = succeeded(&gitlab, &agent, id).await;
    assert!(t.contains("could not download cache \"deps\""), "{t}");
    assert!(t.contains("\nkept-locally"), "{t}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_cache_between_two_runners_of_a_box() {
    let Some(mut s3) = S3Server::start("s3cache_shared").await else {
        return;
    };
    let Some((_docker, image)) = drover_tests::images::docker_and_busybox("s3cache_shared").await
    else {
        return;
    };
    s3.create_bucket(BUCKET).await;
    let gitlab = FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    let (t1, t2) = (token("s3s1"), token("s3s2"));
    for (t, tag) in [(&t1, "one"), (&t2, "two")] {
        gitlab.add_runner_with(NewRunner {
            tag_list: vec![tag.into()],
            run_untagged: false,
            ..NewRunner::new(t)
        });
    }
    let addr = s3.addr.to_string();
    let cache = s3_cache(&addr, "", true, 0);
    let cfg = config(&[
        runner_toml("s3c-one", gitlab.url(), &t1, &image, &cache),
        runner_toml("s3c-two", gitlab.url(), &t2, &image, &cache),
    ]);
    let agent = Agent::start(&cfg);
    let id = gitlab
        .enqueue_job(
            job(
                &image,
                "save",
                "shared-deps",
                "pull-push",
                &[
                    "mkdir -p vendor".into(),
                    "echo shared-by-both > vendor/marker".into(),
                ],
            )
            .tags(["one"]),
        )
        .id;
    succeeded(&gitlab, &agent, id).await;
    // Shared: no runner namespace in the object name.
    assert!(s3.get(BUCKET, "project/1/shared-deps").await.is_some());

    // The other runner finds it on the box itself, even with the server gone.
    s3.kill();
    let id = gitlab
        .enqueue_job(restore_job(&image, "shared-deps").tags(["two"]))
        .id;
    let t = succeeded(&gitlab, &agent, id).await;
    assert!(t.contains("could not download cache"), "{t}");
    assert!(t.contains("\nshared-by-both"), "{t}");
}

#[test]
fn bad_s3_keys_are_refused_naming_file_line_and_key() {
    let cache = s3_cache("127.0.0.1:9", "", false, 0);
    let cases = [
        (
            cache.replace("Type = \"s3\"", "Type = \"s4\""),
            "runners[0].cache.Type: runner \"bad\": cache Type \"s4\" is not known",
        ),
        (
            cache.replace("Insecure = true", "Insecure = \"yes\""),
            "runners[0].cache.s3.Insecure: invalid type",
        ),
        (
            cache.replace("127.0.0.1:9", "http://127.0.0.1:9"),
            "runners[0].cache.s3.ServerAddress: runner \"bad\": ServerAddress \"http://127.0.0.1:9\": expected host[:port]",
        ),
        (
            cache.replace(&format!("BucketName = \"{BUCKET}\""), ""),
            "runners[0].cache.s3.BucketName: runner \"bad\": [runners.cache.s3] BucketName missing",
        ),
    ];
    for (cache, expected) in cases {
        let cfg = config(&[runner_toml(
            "bad",
            "https://gitlab.example.com",
            "glrt-bad",
            "busybox",
            &cache,
        )]);
        let (status, stderr, path) = run_to_exit(&cfg, Duration::from_secs(30));
        assert!(!status.success(), "{stderr}");
        let line = stderr
            .lines()
            .find(|l| l.contains(expected))
            .unwrap_or_else(|| panic!("{expected:?} not in:\n{stderr}"));
        // file:line:col before the key.
        let prefix = format!("{}:", path.display());
        let at = &line[line.find(&prefix).unwrap_or_else(|| panic!("{line}")) + prefix.len()..];
        let mut pos = at.splitn(3, ':');
        assert!(
            pos.next().unwrap().parse::<u32>().is_ok()
                && pos.next().unwrap().parse::<u32>().is_ok(),
            "{line}"
        );
    }
}
