//! Sources, cache and artifacts on the host side: real `git` against a smart-HTTP git server
//! with job-token auth, real zip/tar files, and a recording fake of the GitLab API.

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use drover_gitlab::api::{JobRequest, RunnerAuth, TraceAnswer};
use drover_gitlab::types::JobResponse;
use drover_gitlab::{
    ArtifactUpload, GitLab, GitLabError, JobUpdate, RegisterOptions, RunnerCredentials,
    UpdateAnswer,
};
use drover_job::artifacts::{
    ArtifactsError, DependencyArchive, DependencyError, Owner, ProjectTar, Retry,
    download_dependencies, upload_job_artifacts,
};
use drover_job::cache::{
    CachePlan, CacheStore, RestoredCache, SaveOutcome, cache_plans, restore_caches, save_caches,
};
use drover_job::executor::FailureReason;
use drover_job::sources::{
    GitSource, SourcesError, SourcesOutcome, host_work_dir, plan, tar_work_dir, write_dir_tar,
};
use drover_job::trace::TraceSink;
use drover_tests::git_server::{GitServer, WorkRepo, git};
use secrecy::SecretString;

const TOKEN: &str = "glcbt-64_s3cr3tJobTok3n";
const PROJECT_DIR: &str = "/builds/group/proj";

fn job_json(server: &GitServer, sha: &str, vars: &[(&str, &str)]) -> serde_json::Value {
    let variables: Vec<serde_json::Value> = vars
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v, "public": true}))
        .collect();
    serde_json::json!({
        "id": 77,
        "token": TOKEN,
        "allow_git_fetch": true,
        "job_info": {"id": 77, "name": "build", "project_id": 5, "project_name": "proj"},
        "git_info": {
            "repo_url": server.url_with_token("group/proj", TOKEN),
            "ref": "main",
            "sha": sha,
            "ref_type": "branch",
            "refspecs": ["+refs/heads/*:refs/remotes/origin/*"],
            "depth": 20
        },
        "variables": variables,
    })
}

fn job(server: &GitServer, sha: &str, vars: &[(&str, &str)]) -> JobResponse {
    serde_json::from_value(job_json(server, sha, vars)).expect("job payload")
}

/// `job` with its `cache` entries.
fn job_with_cache(
    server: &GitServer,
    sha: &str,
    vars: &[(&str, &str)],
    cache: serde_json::Value,
) -> JobResponse {
    let mut payload = job_json(server, sha, vars);
    payload["cache"] = cache;
    serde_json::from_value(payload).expect("job payload")
}

/// A git server with an empty `group/proj` repository.
async fn project_server() -> (GitServer, WorkRepo) {
    let server = GitServer::start(TOKEN).await.unwrap();
    let repo = server.create_repo("group/proj").unwrap();
    (server, repo)
}

async fn get_sources(
    job: &JobResponse,
    work_dir: &Path,
    trace: &TraceSink,
) -> Result<SourcesOutcome, SourcesError> {
    let p = plan(job, &job.variables, None)?;
    assert!(!p.repo_url.contains(TOKEN), "plan URL carries no token");
    GitSource::default()
        .get_sources(&p, &job.token, work_dir, PROJECT_DIR, trace)
        .await
}

/// Gets `job`'s sources into `work_dir`, which must succeed; returns the outcome and trace.
async fn sources_ok(job: &JobResponse, work_dir: &Path) -> (SourcesOutcome, TraceSink) {
    let trace = TraceSink::new();
    let outcome = get_sources(job, work_dir, &trace).await.unwrap();
    (outcome, trace)
}

fn text(trace: &TraceSink) -> String {
    String::from_utf8_lossy(&trace.snapshot()).into_owned()
}

fn assert_no_token(trace: &TraceSink) {
    let t = text(trace);
    assert!(!t.contains(TOKEN), "token leaked into the trace:\n{t}");
}

fn head(dir: &Path) -> String {
    git(dir, &["rev-parse", "HEAD"]).unwrap().trim().to_string()
}

fn commit_count(dir: &Path) -> u32 {
    git(dir, &["rev-list", "--count", "HEAD"])
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn clone_full_and_shallow() {
    let (server, repo) = project_server().await;
    repo.commit(&[("README.md", "one\n")], "first").unwrap();
    repo.commit(&[("src/main.c", "int main(){}\n")], "second")
        .unwrap();
    let sha = repo
        .commit(&[("run.sh", "#!/bin/sh\necho hi\n")], "third")
        .unwrap();
    let builds = tempfile::tempdir().unwrap();

    let full_dir = host_work_dir(builds.path(), "runner-a", 5, 0);
    let j = job(
        &server,
        &sha,
        &[("GIT_STRATEGY", "clone"), ("GIT_DEPTH", "0")],
    );
    let (outcome, trace) = sources_ok(&j, &full_dir).await;
    assert_eq!(outcome, SourcesOutcome::Repository);
    assert_eq!(head(&full_dir), sha);
    assert_eq!(commit_count(&full_dir), 3);
    let t = text(&trace);
    assert!(t.contains("section_start:"), "{t}");
    assert!(t.contains(":get_sources\r\x1b[0K"), "{t}");
    assert!(t.contains("Fetching changes..."), "{t}");
    assert!(
        t.contains(&format!(
            "Checking out {} as detached HEAD (ref is main)...",
            &sha[..8]
        )),
        "{t}"
    );
    assert!(t.contains("section_end:"), "{t}");
    assert_no_token(&trace);

    let shallow_dir = host_work_dir(builds.path(), "runner-a", 5, 1);
    let j = job(
        &server,
        &sha,
        &[("GIT_STRATEGY", "clone"), ("GIT_DEPTH", "1")],
    );
    let (_, trace) = sources_ok(&j, &shallow_dir).await;
    assert_eq!(head(&shallow_dir), sha);
    assert_eq!(commit_count(&shallow_dir), 1, "depth 1 fetches one commit");
    assert!(text(&trace).contains("Fetching changes with git depth set to 1..."));
    assert_no_token(&trace);
    // The server saw only authenticated git requests after the first challenge.
    let seen = server.seen.lock().unwrap().clone();
    assert!(
        seen.iter()
            .any(|r| r.authorized && r.uri.contains("git-upload-pack"))
    );

    // The work dir as a tar keeps .git, modes and content.
    let tmp = tempfile::tempdir().unwrap();
    let tar = tar_work_dir(
        &shallow_dir,
        "builds/group/proj",
        Owner::default(),
        tmp.path(),
    )
    .await
    .unwrap();
    let mut archive = tar::Archive::new(std::fs::File::open(tar.path()).unwrap());
    let mut names = HashMap::new();
    for e in archive.entries().unwrap() {
        let e = e.unwrap();
        names.insert(
            e.path().unwrap().to_string_lossy().into_owned(),
            e.header().mode().unwrap(),
        );
    }
    assert!(
        names.contains_key("builds/group/proj/.git/HEAD"),
        "{names:?}"
    );
    assert!(names.contains_key("builds/group/proj/src/main.c"));
    assert_eq!(
        names["builds/group/proj/run.sh"] & 0o111,
        0,
        "mode kept (not executable)"
    );
}

#[tokio::test]
async fn fetch_reuses_the_work_dir_and_cleans_it() {
    let (server, repo) = project_server().await;
    let first = repo.commit(&[("a.txt", "a\n")], "first").unwrap();
    let builds = tempfile::tempdir().unwrap();
    let dir = host_work_dir(builds.path(), "runner-a", 5, 0);

    let (_, trace) = sources_ok(&job(&server, &first, &[("GIT_STRATEGY", "fetch")]), &dir).await;
    assert_eq!(head(&dir), first);
    assert!(text(&trace).contains("Created fresh repository."));
    std::fs::write(dir.join("leftover.o"), "junk").unwrap();
    let marker = dir.join(".git/drover-marker");
    std::fs::write(&marker, "kept").unwrap();

    let second = repo.commit(&[("b.txt", "b\n")], "second").unwrap();
    let (_, trace) = sources_ok(&job(&server, &second, &[("GIT_STRATEGY", "fetch")]), &dir).await;
    assert_eq!(head(&dir), second, "the new commit appears");
    assert!(dir.join("b.txt").is_file());
    assert!(marker.is_file(), "fetch reused the repository");
    assert!(!dir.join("leftover.o").exists(), "git clean -ffdx ran");
    let t = text(&trace);
    assert!(t.contains("Reusing existing Git repository"), "{t}");
    assert!(t.contains("Removing leftover.o"), "{t}");
    assert_no_token(&trace);

    // clone starts over: the marker in .git is gone.
    sources_ok(&job(&server, &second, &[("GIT_STRATEGY", "clone")]), &dir).await;
    assert!(!marker.exists());
    assert_eq!(head(&dir), second);

    // none leaves the dir alone; empty empties it.
    let (outcome, _) = sources_ok(&job(&server, &second, &[("GIT_STRATEGY", "none")]), &dir).await;
    assert_eq!(outcome, SourcesOutcome::Untouched);
    assert!(dir.join("b.txt").is_file());
    let (outcome, _) = sources_ok(&job(&server, &second, &[("GIT_STRATEGY", "empty")]), &dir).await;
    assert_eq!(outcome, SourcesOutcome::Empty);
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
}

#[tokio::test]
async fn submodules_normal_and_recursive() {
    let server = GitServer::start(TOKEN).await.unwrap();
    let inner = server.create_repo("group/inner").unwrap();
    inner.commit(&[("inner.txt", "inner\n")], "inner").unwrap();
    let lib = server.create_repo("group/lib").unwrap();
    lib.commit(&[("lib.txt", "lib\n")], "lib").unwrap();
    lib.add_submodule("../inner.git", "deps/inner").unwrap();
    let repo = server.create_repo("group/proj").unwrap();
    repo.commit(&[("main.txt", "main\n")], "main").unwrap();
    let sha = repo.add_submodule("../lib.git", "lib").unwrap();
    let builds = tempfile::tempdir().unwrap();

    let normal = host_work_dir(builds.path(), "r", 5, 0);
    let j = job(&server, &sha, &[("GIT_SUBMODULE_STRATEGY", "normal")]);
    let (_, trace) = sources_ok(&j, &normal).await;
    assert!(normal.join("lib/lib.txt").is_file());
    assert!(
        !normal.join("lib/deps/inner/inner.txt").exists(),
        "normal does not recurse"
    );
    assert!(text(&trace).contains("Updating/initializing submodules..."));
    assert_no_token(&trace);

    let recursive = host_work_dir(builds.path(), "r", 5, 1);
    let j = job(&server, &sha, &[("GIT_SUBMODULE_STRATEGY", "recursive")]);
    let (_, trace) = sources_ok(&j, &recursive).await;
    assert!(recursive.join("lib/deps/inner/inner.txt").is_file());
    let t = text(&trace);
    assert!(
        t.contains("Updating/initializing submodules recursively..."),
        "{t}"
    );
    // git's lines keep their order and show the job's path, not the host work dir.
    let cloning = t
        .find("Cloning into '/builds/group/proj/lib'...")
        .expect("submodule clone line with CI_PROJECT_DIR");
    let inner = t
        .find("Cloning into '/builds/group/proj/lib/deps/inner'...")
        .expect("nested submodule clone line");
    assert!(cloning < inner, "{t}");
    assert!(!t.contains(&*recursive.to_string_lossy()), "{t}");
    assert_no_token(&trace);
}

#[tokio::test]
async fn wrong_token_fails_clearly_without_leaking_it() {
    let (server, repo) = project_server().await;
    let sha = repo.commit(&[("a", "a")], "a").unwrap();
    let builds = tempfile::tempdir().unwrap();
    let wrong = "glcbt-wrong-token-value";
    let mut payload = job_json(&server, &sha, &[]);
    payload["token"] = serde_json::json!(wrong);
    payload["git_info"]["repo_url"] = serde_json::json!(server.url_with_token("group/proj", wrong));
    let j: JobResponse = serde_json::from_value(payload).unwrap();
    let trace = TraceSink::new();
    let err = get_sources(&j, &host_work_dir(builds.path(), "r", 5, 0), &trace)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("git fetch failed"), "{msg}");
    assert!(msg.contains("Authentication failed"), "{msg}");
    assert!(!msg.contains(wrong), "{msg}");
    assert_eq!(err.failure_reason(), FailureReason::ScriptFailure);
    let t = text(&trace);
    assert!(!t.contains(wrong), "{t}");
    assert!(t.contains("ERROR: git fetch failed"), "{t}");
    assert!(
        server.seen.lock().unwrap().iter().all(|r| !r.authorized),
        "no request was accepted"
    );
}

/// Writes `dir` as a tar shaped like Docker's archive of `PROJECT_DIR` (entries `proj/...`).
fn project_tar(dir: &Path, tmp: &Path) -> ProjectTar {
    let path = tmp.join(format!("project-{}.tar", rand::random::<u32>()));
    let f = std::fs::File::create(&path).unwrap();
    write_dir_tar(dir, "proj", Owner::default(), f).unwrap();
    ProjectTar::new(path, "proj")
}

fn tar_entries(path: &Path) -> HashMap<String, Vec<u8>> {
    let mut archive = tar::Archive::new(std::fs::File::open(path).unwrap());
    let mut out = HashMap::new();
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(e.path().unwrap().to_string_lossy().into_owned(), data);
    }
    out
}

/// Restores `plans` of `project` from `store` into tars in `tmp`, owned by root.
async fn restore(
    store: &CacheStore,
    plans: &[CachePlan],
    project: i64,
    disable_cache: bool,
    tmp: &Path,
    trace: &TraceSink,
) -> Vec<RestoredCache> {
    restore_caches(
        store,
        plans,
        project,
        disable_cache,
        Owner::default(),
        tmp,
        trace,
    )
    .await
}

#[tokio::test]
async fn cache_round_trip_with_fallback_key_and_untracked() {
    let (server, repo) = project_server().await;
    let sha = repo
        .commit(&[("README.md", "r\n"), ("vendor/tracked.txt", "t\n")], "c")
        .unwrap();
    let builds = tempfile::tempdir().unwrap();
    let dir = host_work_dir(builds.path(), "r", 5, 0);
    sources_ok(&job(&server, &sha, &[]), &dir).await;
    // The "job" produces files.
    std::fs::create_dir_all(dir.join("vendor/pkg")).unwrap();
    std::fs::write(dir.join("vendor/pkg/lib.so"), "lib").unwrap();
    std::fs::write(dir.join("build.log"), "log").unwrap();
    let tracked = Arc::new(GitSource::default().tracked_files(&dir).await.unwrap());

    let tmp = tempfile::tempdir().unwrap();
    let store_root = tempfile::tempdir().unwrap();
    let store = CacheStore::new(store_root.path(), "runner-a", 10 * 1024 * 1024);
    let tar = project_tar(&dir, tmp.path());

    let save_job = job_with_cache(
        &server,
        &sha,
        &[("CI_COMMIT_REF_NAME", "main")],
        serde_json::json!([
            {"key": "$CI_COMMIT_REF_NAME", "paths": ["vendor/"], "policy": "pull-push"},
            {"key": "untracked", "untracked": true, "policy": "push"},
            {"key": "failed-only", "paths": ["vendor/"], "when": "on_failure"}
        ]),
    );
    let trace = TraceSink::new();
    let plans = cache_plans(&save_job, &save_job.variables, &trace).expect("cache plans");
    let saved = save_caches(
        &store,
        &plans,
        5,
        false,
        &tar,
        PROJECT_DIR,
        Some(tracked.clone()),
        true,
        &trace,
    )
    .await;
    assert_eq!(
        saved.len(),
        2,
        "on_failure cache not saved for a successful job"
    );
    assert!(saved.iter().all(|s| matches!(s, SaveOutcome::Saved { .. })));
    let t = text(&trace);
    assert!(t.contains("Creating cache main..."), "{t}");
    assert!(
        t.contains("vendor/: found 4 matching artifact files and directories"),
        "{t}"
    );
    assert!(store.archive_path(5, "main").unwrap().is_file());
    assert!(!store.archive_path(5, "failed-only").unwrap().exists());

    // The untracked cache holds exactly the files git does not track.
    let mut zip = zip::ZipArchive::new(
        std::fs::File::open(store.archive_path(5, "untracked").unwrap()).unwrap(),
    )
    .unwrap();
    let mut names: Vec<String> = (0..zip.len())
        .map(|i| zip.by_index(i).unwrap().name().unwrap().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, vec!["build.log", "vendor/pkg/lib.so"]);

    // A job on another branch restores through its fallback key.
    let restore_job = job_with_cache(
        &server,
        &sha,
        &[],
        serde_json::json!([
            {"key": "feature-x", "fallback_keys": ["nope", "main"], "paths": ["vendor/"]}
        ]),
    );
    let trace = TraceSink::new();
    let plans = cache_plans(&restore_job, &restore_job.variables, &trace).expect("cache plans");
    let restored = restore(&store, &plans, 5, false, tmp.path(), &trace).await;
    assert_eq!(restored.len(), 1);
    assert_eq!(restored[0].key, "main");
    let entries = tar_entries(restored[0].tar.path());
    assert_eq!(entries["vendor/pkg/lib.so"], b"lib");
    assert_eq!(entries["vendor/tracked.txt"], b"t\n");
    let t = text(&trace);
    assert!(t.contains("Checking cache for feature-x..."), "{t}");
    assert!(t.contains("Successfully extracted cache main"), "{t}");

    // disable_cache: nothing restored.
    let trace = TraceSink::new();
    let none = restore(&store, &plans, 5, true, tmp.path(), &trace).await;
    assert!(none.is_empty());
    assert!(text(&trace).contains("disable_cache"));

    // CACHE_FALLBACK_KEY is tried last; another project's caches are not visible.
    let var_job = job_with_cache(
        &server,
        &sha,
        &[("CACHE_FALLBACK_KEY", "main")],
        serde_json::json!([{"key": "other", "paths": ["x"]}]),
    );
    let trace = TraceSink::new();
    let plans = cache_plans(&var_job, &var_job.variables, &trace).expect("cache plans");
    let restored = restore(&store, &plans, 5, false, tmp.path(), &trace).await;
    assert_eq!(restored[0].key, "main");
    let restored = restore(&store, &plans, 6, false, tmp.path(), &trace).await;
    assert!(restored.is_empty());
}

/// A fake GitLab that records uploads (with the archive bytes) and serves dependency
/// archives; upload answers are scripted.
#[derive(Default)]
struct RecordingGitLab {
    uploads: Mutex<Vec<(ArtifactUpload, Vec<u8>)>>,
    upload_answers: Mutex<VecDeque<Result<(), GitLabError>>>,
    /// job id → zip bytes; missing = 404.
    artifacts: HashMap<i64, Vec<u8>>,
    /// job id → the token it expects.
    tokens: HashMap<i64, String>,
}

fn unused(endpoint: &'static str) -> GitLabError {
    GitLabError::Status {
        endpoint,
        status: 501,
        body: "not used by these tests".into(),
    }
}

#[async_trait]
impl GitLab for RecordingGitLab {
    async fn register(
        &self,
        _: &SecretString,
        _: &RegisterOptions,
    ) -> Result<RunnerCredentials, GitLabError> {
        Err(unused("register"))
    }
    async fn verify(&self, _: &RunnerAuth) -> Result<RunnerCredentials, GitLabError> {
        Err(unused("verify"))
    }
    async fn reset_token(&self, _: &SecretString) -> Result<RunnerCredentials, GitLabError> {
        Err(unused("reset_token"))
    }
    async fn unregister(&self, _: &SecretString) -> Result<(), GitLabError> {
        Err(unused("unregister"))
    }
    async fn request_job(
        &self,
        _: &RunnerAuth,
        _: Option<&str>,
    ) -> Result<JobRequest, GitLabError> {
        Err(unused("request_job"))
    }
    async fn update_job(
        &self,
        _: i64,
        _: &SecretString,
        _: &JobUpdate,
    ) -> Result<UpdateAnswer, GitLabError> {
        Err(unused("update_job"))
    }
    async fn patch_trace(
        &self,
        _: i64,
        _: &SecretString,
        _: u64,
        _: &[u8],
    ) -> Result<TraceAnswer, GitLabError> {
        Err(unused("patch_trace"))
    }
    async fn upload_artifacts(
        &self,
        _job_id: i64,
        _job_token: &SecretString,
        upload: &ArtifactUpload,
    ) -> Result<(), GitLabError> {
        let bytes = std::fs::read(&upload.path).expect("archive file exists during upload");
        self.uploads.lock().unwrap().push((upload.clone(), bytes));
        self.upload_answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Ok(()))
    }
    async fn download_artifacts(
        &self,
        job_id: i64,
        job_token: &SecretString,
        dest: &Path,
    ) -> Result<u64, GitLabError> {
        use secrecy::ExposeSecret;
        if self.tokens.get(&job_id).map(String::as_str) != Some(job_token.expose_secret()) {
            return Err(GitLabError::Forbidden {
                endpoint: "download_artifacts",
                job_status: None,
            });
        }
        let Some(bytes) = self.artifacts.get(&job_id) else {
            return Err(GitLabError::NotFound {
                endpoint: "download_artifacts",
            });
        };
        std::fs::write(dest, bytes).unwrap();
        Ok(bytes.len() as u64)
    }
}

fn zip_names_and_content(bytes: &[u8]) -> Vec<(String, String)> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    (0..zip.len())
        .map(|i| {
            let mut f = zip.by_index(i).unwrap();
            let name = f.name().unwrap().into_owned();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            (name, s)
        })
        .collect()
}

fn artifacts_job(artifacts: serde_json::Value) -> JobResponse {
    serde_json::from_value(serde_json::json!({
        "id": 91, "token": TOKEN, "artifacts": artifacts,
        "variables": [{"key": "CI_PROJECT_DIR", "value": PROJECT_DIR, "public": true}],
    }))
    .unwrap()
}

fn fast_retry() -> Retry {
    Retry {
        attempts: 3,
        backoff: Duration::from_millis(1),
    }
}

/// A job's project dir with build output, a temp dir, and the project as a tar.
struct BuiltProject {
    _dir: tempfile::TempDir,
    tmp: tempfile::TempDir,
    tar: ProjectTar,
}

fn built_project() -> BuiltProject {
    let dir = build_dir();
    let tmp = tempfile::tempdir().unwrap();
    let tar = project_tar(dir.path(), tmp.path());
    BuiltProject {
        _dir: dir,
        tmp,
        tar,
    }
}

/// Uploads `job`'s artifacts from `project` for a successful job, retrying fast.
async fn upload(
    gitlab: &RecordingGitLab,
    job: &JobResponse,
    project: &BuiltProject,
    trace: &TraceSink,
) -> Result<(), ArtifactsError> {
    upload_job_artifacts(
        gitlab,
        job,
        &job.variables,
        &project.tar,
        PROJECT_DIR,
        None,
        true,
        project.tmp.path(),
        fast_retry(),
        trace,
    )
    .await
}

fn build_dir() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    std::fs::create_dir_all(p.join("out/obj")).unwrap();
    std::fs::write(p.join("out/app"), "app").unwrap();
    std::fs::write(p.join("out/obj/a.o"), "obj").unwrap();
    std::fs::write(p.join("out/notes.txt"), "notes").unwrap();
    std::fs::create_dir_all(p.join("reports")).unwrap();
    std::fs::write(p.join("reports/junit-1.xml"), "<testsuite name=\"1\"/>").unwrap();
    std::fs::write(p.join("reports/junit-2.xml"), "<testsuite name=\"2\"/>").unwrap();
    std::fs::write(p.join("src.c"), "src").unwrap();
    d
}

#[tokio::test]
async fn artifacts_zip_exact_with_exclude_and_junit_gzip() {
    let project = built_project();
    let gitlab = RecordingGitLab::default();
    let job = artifacts_job(serde_json::json!([
        {"name": "", "paths": ["out/", "${CI_PROJECT_DIR}/src.c"], "exclude": ["out/**/*.o"],
         "artifact_type": "archive", "artifact_format": "zip", "expire_in": "1 week"},
        {"name": "junit", "paths": ["reports/junit-*.xml"], "artifact_type": "junit",
         "artifact_format": "gzip", "when": "always"},
        {"name": "on-failure", "paths": ["out/"], "when": "on_failure"},
        // gitlab-runner's `ArtifactWhen`: an unknown value is never uploaded.
        {"name": "sometimes", "paths": ["out/"], "when": "sometimes"}
    ]));
    let trace = TraceSink::new();
    upload(&gitlab, &job, &project, &trace).await.unwrap();
    let uploads = gitlab.uploads.lock().unwrap();
    assert_eq!(
        uploads.len(),
        2,
        "on_failure and unknown-when artifacts skipped for a successful job"
    );
    let warned = text(&trace);
    assert!(
        warned.contains("artifacts \"sometimes\": unknown when \"sometimes\": not uploaded"),
        "{warned}"
    );

    let (archive, bytes) = &uploads[0];
    assert_eq!(archive.filename, "artifacts.zip");
    assert_eq!(archive.artifact_format, "zip");
    assert_eq!(archive.artifact_type, "archive");
    assert_eq!(archive.expire_in.as_deref(), Some("1 week"));
    assert_eq!(
        zip_names_and_content(bytes),
        vec![
            ("out/".to_string(), String::new()),
            ("out/app".to_string(), "app".to_string()),
            ("out/notes.txt".to_string(), "notes".to_string()),
            ("out/obj/".to_string(), String::new()),
            ("src.c".to_string(), "src".to_string()),
        ]
    );

    let (junit, bytes) = &uploads[1];
    assert_eq!(junit.filename, "junit.gz");
    assert_eq!(junit.artifact_format, "gzip");
    assert_eq!(junit.artifact_type, "junit");
    let mut all = String::new();
    flate2::read::MultiGzDecoder::new(bytes.as_slice())
        .read_to_string(&mut all)
        .unwrap();
    assert_eq!(all, "<testsuite name=\"1\"/><testsuite name=\"2\"/>");
    let t = text(&trace);
    assert!(t.contains("Uploading artifacts for successful job"), "{t}");
    assert!(
        t.contains("out/: found 5 matching artifact files and directories"),
        "{t}"
    );
    assert!(
        t.contains("Uploading artifacts as \"archive\" to coordinator... 201 Created"),
        "{t}"
    );
    assert_no_token(&trace);
}

#[tokio::test]
async fn artifacts_too_large_is_reported_and_not_retried() {
    let project = built_project();
    let gitlab = RecordingGitLab::default();
    gitlab
        .upload_answers
        .lock()
        .unwrap()
        .push_back(Err(GitLabError::TooLarge {
            endpoint: "upload_artifacts",
        }));
    let job = artifacts_job(serde_json::json!([{"paths": ["out/"]}]));
    let trace = TraceSink::new();
    let err = upload(&gitlab, &job, &project, &trace).await.unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    assert_eq!(
        gitlab.uploads.lock().unwrap().len(),
        1,
        "413 is not retried"
    );
    let t = text(&trace);
    assert!(
        t.contains("ERROR: Uploading artifacts as \"archive\" to coordinator... too large archive"),
        "{t}"
    );
}

#[tokio::test]
async fn artifacts_retry_retryable_errors() {
    let project = built_project();
    let gitlab = RecordingGitLab::default();
    {
        let mut answers = gitlab.upload_answers.lock().unwrap();
        answers.push_back(Err(GitLabError::Status {
            endpoint: "upload_artifacts",
            status: 502,
            body: "bad gateway".into(),
        }));
        answers.push_back(Ok(()));
    }
    let job = artifacts_job(
        serde_json::json!([{"name": "metrics.txt", "paths": ["src.c"], "artifact_format": "raw",
        "artifact_type": "dotenv"}]),
    );
    let trace = TraceSink::new();
    upload(&gitlab, &job, &project, &trace).await.unwrap();
    let uploads = gitlab.uploads.lock().unwrap();
    assert_eq!(uploads.len(), 2);
    assert_eq!(uploads[1].0.filename, "metrics.txt");
    assert_eq!(uploads[1].0.artifact_format, "raw");
    assert_eq!(uploads[1].1, b"src");
    assert!(text(&trace).contains("retrying"));
}

fn zip_bytes(entries: &[(&str, &[u8])], symlinks: &[(&str, &str)]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default();
    for (name, data) in entries {
        w.start_file(*name, opts).unwrap();
        w.write_all(data).unwrap();
    }
    for (name, target) in symlinks {
        w.add_symlink(*name, *target, opts).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn deps_job(deps: serde_json::Value) -> JobResponse {
    serde_json::from_value(serde_json::json!({"id": 92, "token": TOKEN, "dependencies": deps}))
        .unwrap()
}

/// Downloads `job`'s dependencies into tars in `tmp`, owned by root, retrying fast.
async fn download(
    gitlab: &RecordingGitLab,
    job: &JobResponse,
    tmp: &Path,
    trace: &TraceSink,
) -> Result<Vec<DependencyArchive>, DependencyError> {
    download_dependencies(gitlab, job, tmp, Owner::default(), fast_retry(), trace).await
}

#[tokio::test]
async fn dependencies_are_extracted_and_zip_slip_refused() {
    let mut gitlab = RecordingGitLab::default();
    gitlab.artifacts.insert(
        10,
        zip_bytes(
            &[("out/app", b"app"), ("out/lib/x.so", b"x")],
            &[("out/current", "app")],
        ),
    );
    gitlab.tokens.insert(10, "dep-token-10".into());
    gitlab.artifacts.insert(
        11,
        zip_bytes(&[("ok.txt", b"ok"), ("../evil", b"evil")], &[]),
    );
    gitlab.tokens.insert(11, "dep-token-11".into());
    gitlab
        .artifacts
        .insert(12, zip_bytes(&[], &[("escape", "../../etc/passwd")]));
    gitlab.tokens.insert(12, "dep-token-12".into());
    gitlab.tokens.insert(13, "dep-token-13".into());
    let tmp = tempfile::tempdir().unwrap();
    let dep = |id: i64| {
        serde_json::json!({"id": id, "name": format!("job{id}"), "token": format!("dep-token-{id}"),
            "artifacts_file": {"filename": "artifacts.zip", "size": 10}})
    };

    // A good dependency, plus one without artifacts (skipped).
    let job = deps_job(serde_json::json!([
        dep(10),
        {"id": 14, "name": "no-artifacts", "token": "t"}
    ]));
    let trace = TraceSink::new();
    let archives = download(&gitlab, &job, tmp.path(), &trace).await.unwrap();
    assert_eq!(archives.len(), 1);
    let entries = tar_entries(archives[0].path());
    assert_eq!(entries["out/app"], b"app");
    assert_eq!(entries["out/lib/x.so"], b"x");
    assert!(entries.contains_key("out/current"));
    assert!(text(&trace).contains("Downloading artifacts for job10 (10)..."));

    // Zip-slip: `../evil` and a symlink out of the project are refused, naming the entry.
    for (id, entry) in [(11, "../evil"), (12, "escape")] {
        let trace = TraceSink::new();
        let job = deps_job(serde_json::json!([dep(id)]));
        let err = download(&gitlab, &job, tmp.path(), &trace)
            .await
            .unwrap_err();
        assert!(matches!(err, DependencyError::Archive { .. }), "{err}");
        assert!(err.to_string().contains(&format!("{entry:?}")), "{err}");
        assert!(text(&trace).contains("refused"));
    }

    // Missing artifacts (404) and a refused token (403) are missing dependencies.
    for id in [13, 99] {
        let trace = TraceSink::new();
        let job = deps_job(serde_json::json!([dep(id)]));
        let err = download(&gitlab, &job, tmp.path(), &trace)
            .await
            .unwrap_err();
        assert!(matches!(err, DependencyError::Missing { .. }), "{err}");
        assert_eq!(
            err.failure_reason(),
            FailureReason::MissingDependencyFailure
        );
    }
}

#[tokio::test]
async fn token_never_in_git_arguments() {
    use std::os::unix::fs::PermissionsExt;
    let server = GitServer::start(TOKEN).await.unwrap();
    let lib = server.create_repo("group/lib").unwrap();
    lib.commit(&[("lib.txt", "lib\n")], "lib").unwrap();
    let repo = server.create_repo("group/proj").unwrap();
    repo.commit(&[("a.txt", "a\n")], "a").unwrap();
    let sha = repo.add_submodule("../lib.git", "lib").unwrap();

    // A git that records its arguments, then runs the real git.
    let bin = tempfile::tempdir().unwrap();
    let log = bin.path().join("argv.log");
    let wrapper = bin.path().join("git");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\nexec git \"$@\"\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();

    let builds = tempfile::tempdir().unwrap();
    let j = job(&server, &sha, &[("GIT_SUBMODULE_STRATEGY", "recursive")]);
    let p = plan(&j, &j.variables, None).unwrap();
    let trace = TraceSink::new();
    GitSource::new(&wrapper)
        .get_sources(
            &p,
            &j.token,
            &host_work_dir(builds.path(), "r", 5, 0),
            PROJECT_DIR,
            &trace,
        )
        .await
        .unwrap();
    let argv = std::fs::read_to_string(&log).unwrap();
    assert!(argv.contains("fetch origin"), "{argv}");
    assert!(argv.contains("credential."), "{argv}");
    assert!(!argv.contains(TOKEN), "token in git arguments:\n{argv}");
    assert_no_token(&trace);
}

#[tokio::test]
async fn clone_url_overrides_the_host_and_clean_flags_none_keeps_files() {
    let (server, repo) = project_server().await;
    let sha = repo.commit(&[("a.txt", "a\n")], "a").unwrap();
    let builds = tempfile::tempdir().unwrap();
    let dir = host_work_dir(builds.path(), "r", 5, 0);

    // GitLab's repo_url names a host the agent cannot reach; clone_url points at the server.
    let mut payload = job_json(&server, &sha, &[("CI_PROJECT_PATH", "group/proj")]);
    payload["git_info"]["repo_url"] = serde_json::json!(format!(
        "http://gitlab-ci-token:{TOKEN}@gitlab.invalid/group/proj.git"
    ));
    let j: JobResponse = serde_json::from_value(payload).unwrap();
    let clone_url = format!("http://{}", server.addr);
    let p = plan(&j, &j.variables, Some(&clone_url)).unwrap();
    assert_eq!(p.repo_url, server.url("group/proj"));
    let trace = TraceSink::new();
    GitSource::default()
        .get_sources(&p, &j.token, &dir, PROJECT_DIR, &trace)
        .await
        .unwrap();
    assert_eq!(head(&dir), sha);

    // GIT_CLEAN_FLAGS=none keeps untracked files between fetches.
    std::fs::write(dir.join("kept.o"), "x").unwrap();
    let j = job(
        &server,
        &sha,
        &[("GIT_STRATEGY", "fetch"), ("GIT_CLEAN_FLAGS", "none")],
    );
    get_sources(&j, &dir, &TraceSink::new()).await.unwrap();
    assert!(dir.join("kept.o").exists());
    // GIT_CHECKOUT=false skips checkout (and therefore clean).
    let trace = TraceSink::new();
    let j = job(&server, &sha, &[("GIT_CHECKOUT", "false")]);
    get_sources(&j, &dir, &trace).await.unwrap();
    assert!(text(&trace).contains("Skipping Git checkout"));
    assert!(dir.join("kept.o").exists());
}
