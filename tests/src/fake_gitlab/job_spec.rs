//! [`JobSpec`]: what a test enqueues; the fake turns it into the payload GitLab sends with
//! `201` from `POST /jobs/request`.
//!
//! Payloads are shaped as GitLab shapes them, `null`s included: they start from the agent's
//! `gitlab::fixtures::FULL` (every key GitLab's `JobRequest` entities expose; see
//! `agent/gitlab/src/fixtures/README.md` for the GitLab source of each), and the builders
//! emit what GitLab emits for the `.gitlab-ci.yml` they stand for (`artifact_paths` is
//! `artifacts: paths:` alone, so `name`, `when` and `expire_in` are `null`). So the fake
//! cannot accept a payload shape GitLab would not send, nor miss one it would.

use serde_json::{Map, Value, json};

/// GitLab's failure reasons (`Ci::Build.failure_reasons.keys`), sent in
/// `features.failure_reasons` of every job payload.
pub const FAILURE_REASONS: &[&str] = &[
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "missing_dependency_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
    "forward_deployment_failure",
    "user_blocked",
    "project_deleted",
    "ci_quota_exceeded",
    "pipeline_loop_detected",
    "no_matching_runner",
    "trace_size_exceeded",
    "builds_disabled",
    "environment_creation_failure",
    "deployment_rejected",
    "failed_outdated_deployment_job",
    "protected_environment_failure",
    "insufficient_bridge_permissions",
    "downstream_bridge_project_not_found",
    "invalid_bridge_trigger",
    "upstream_bridge_project_not_found",
    "insufficient_upstream_permissions",
    "bridge_pipeline_is_child_pipeline",
    "downstream_pipeline_creation_failed",
    "secrets_provider_not_found",
    "reached_max_descendant_pipelines_depth",
    "ip_restriction_failure",
    "reached_max_pipeline_hierarchy_size",
    "reached_downstream_pipeline_trigger_rate_limit",
    "image_pull_failure",
];

/// A job to enqueue. Every field is public and JSON-valued where GitLab's payload is, so a
/// test can send anything GitLab could; the builder methods cover the common cases.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub name: String,
    pub stage: String,
    pub project_id: i64,
    pub project_name: String,
    /// `image` object; `None` sends `null` (the runner's default image).
    pub image: Option<Value>,
    /// `steps[]` as sent.
    pub steps: Vec<Value>,
    /// User variables, appended after the predefined `CI_*` variables.
    pub variables: Vec<Value>,
    pub services: Vec<Value>,
    pub artifacts: Vec<Value>,
    pub cache: Vec<Value>,
    pub credentials: Vec<Value>,
    /// Job ids this job depends on; resolved into `dependencies[]` (with the dependency's
    /// token and artifacts file) when the job is enqueued.
    pub depends_on: Vec<i64>,
    /// `runner_info.timeout`, seconds.
    pub timeout: u64,
    /// Tags a runner must all have to get this job; empty = needs `run_untagged`.
    pub tags: Vec<String>,
    /// `git_info` overrides, merged over the fake's defaults (`repo_url`, `ref`, `sha`, ...).
    pub git_info: Map<String, Value>,
    /// Top-level payload fields set last, over everything the fake generates.
    pub overrides: Map<String, Value>,
    /// Job token; `None` = generated (`glcbt-...`).
    pub token: Option<String>,
    /// The `201` body sent instead of the payload (hostile tests): `{id}` and `{token}` are
    /// replaced by the job's id and token.
    pub raw_body: Option<String>,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec::new("test-job")
    }
}

impl JobSpec {
    /// A job named `name` in stage `test` of project 1 (`group/project`), image
    /// `busybox:latest`, no steps yet, 1 hour timeout.
    pub fn new(name: &str) -> Self {
        JobSpec {
            name: name.to_owned(),
            stage: "test".into(),
            project_id: 1,
            project_name: "project".into(),
            image: Some(
                json!({"name": "busybox:latest", "entrypoint": null, "ports": [], "pull_policy": null}),
            ),
            steps: Vec::new(),
            variables: Vec::new(),
            services: Vec::new(),
            artifacts: Vec::new(),
            cache: Vec::new(),
            credentials: Vec::new(),
            depends_on: Vec::new(),
            timeout: 3600,
            tags: Vec::new(),
            git_info: Map::new(),
            overrides: Map::new(),
            token: None,
            raw_body: None,
        }
    }

    /// Adds the `script` step (`when: on_success`, the job timeout).
    pub fn script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, lines: I) -> Self {
        let lines: Vec<String> = lines.into_iter().map(Into::into).collect();
        self.steps.push(json!({
            "name": "script", "script": lines, "timeout": self.timeout,
            "when": "on_success", "allow_failure": false,
        }));
        self
    }

    /// Adds the `after_script` step (`when: always`, `allow_failure: true`, 300 s).
    pub fn after_script<I: IntoIterator<Item = S>, S: Into<String>>(mut self, lines: I) -> Self {
        let lines: Vec<String> = lines.into_iter().map(Into::into).collect();
        self.steps.push(json!({
            "name": "after_script", "script": lines, "timeout": 300,
            "when": "always", "allow_failure": true,
        }));
        self
    }

    /// Adds a step as raw JSON.
    pub fn step(mut self, step: Value) -> Self {
        self.steps.push(step);
        self
    }

    /// `image.name`.
    pub fn image(mut self, name: &str) -> Self {
        self.image =
            Some(json!({"name": name, "entrypoint": null, "ports": [], "pull_policy": null}));
        self
    }

    /// `image` as raw JSON (`Value::Null` for no image).
    pub fn image_json(mut self, image: Value) -> Self {
        self.image = (!image.is_null()).then_some(image);
        self
    }

    /// A plain variable (`public: true`, expanded).
    pub fn variable(self, key: &str, value: &str) -> Self {
        self.variable_json(json!({"key": key, "value": value, "public": true, "masked": false}))
    }

    /// A masked variable: must show as `[MASKED]` in the trace.
    pub fn masked_variable(self, key: &str, value: &str) -> Self {
        self.variable_json(json!({"key": key, "value": value, "public": false, "masked": true}))
    }

    /// A file variable: the runner writes `value` to a file and sets `key` to its path.
    pub fn file_variable(self, key: &str, value: &str) -> Self {
        self.variable_json(
            json!({"key": key, "value": value, "public": false, "masked": false, "file": true}),
        )
    }

    /// A raw variable: no `$VAR` expansion.
    pub fn raw_variable(self, key: &str, value: &str) -> Self {
        self.variable_json(
            json!({"key": key, "value": value, "public": false, "masked": false, "raw": true}),
        )
    }

    /// A variable as raw JSON.
    pub fn variable_json(mut self, variable: Value) -> Self {
        self.variables.push(variable);
        self
    }

    /// A service by image name, as GitLab sends `services: [name]` (the `Service` entity:
    /// `null` for every field not set).
    pub fn service(self, name: &str) -> Self {
        self.service_json(json!({"name": name, "entrypoint": null, "alias": null, "command": null, "ports": [], "variables": null, "pull_policy": null}))
    }

    pub fn service_json(mut self, service: Value) -> Self {
        self.services.push(service);
        self
    }

    /// `artifacts: paths: [...]` and nothing else, as `Ci::BuildRunnerPresenter` sends it:
    /// `name`, `when`, `expire_in` `null`, no `untracked` nor `exclude`, an `archive` zip.
    pub fn artifact_paths<I: IntoIterator<Item = S>, S: Into<String>>(self, paths: I) -> Self {
        let paths: Vec<String> = paths.into_iter().map(Into::into).collect();
        self.artifact_json(json!({
            "name": null, "paths": paths, "when": null, "expire_in": null,
            "artifact_type": "archive", "artifact_format": "zip",
        }))
    }

    pub fn artifact_json(mut self, artifact: Value) -> Self {
        self.artifacts.push(artifact);
        self
    }

    pub fn cache_json(mut self, cache: Value) -> Self {
        self.cache.push(cache);
        self
    }

    pub fn credentials_json(mut self, credentials: Value) -> Self {
        self.credentials.push(credentials);
        self
    }

    /// Depend on an enqueued job (its artifacts are offered in `dependencies[]`).
    pub fn depends_on(mut self, job_id: i64) -> Self {
        self.depends_on.push(job_id);
        self
    }

    /// `runner_info.timeout` in seconds (also the default timeout of steps added later).
    pub fn timeout(mut self, secs: u64) -> Self {
        self.timeout = secs;
        self
    }

    pub fn tags<I: IntoIterator<Item = S>, S: Into<String>>(mut self, tags: I) -> Self {
        self.tags = tags.into_iter().map(Into::into).collect();
        self
    }

    /// Sets one `git_info` field.
    pub fn git(mut self, key: &str, value: Value) -> Self {
        self.git_info.insert(key.to_owned(), value);
        self
    }

    /// Sets one top-level payload field, over whatever the fake generates.
    pub fn set(mut self, key: &str, value: Value) -> Self {
        self.overrides.insert(key.to_owned(), value);
        self
    }

    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Sends `body` as the `201` body instead of a payload; `{id}` and `{token}` in it are
    /// replaced by the job's id and token.
    pub fn raw_body(mut self, body: &str) -> Self {
        self.raw_body = Some(body.to_owned());
        self
    }
}

/// What the fake knows of an enqueued job's dependency when building the payload.
pub(crate) struct DependencyInfo {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub artifacts_file: Option<(String, u64)>,
}

/// The `201` payload for `spec`, as GitLab's `JobRequest::Response` entity shapes it.
pub(crate) fn build_payload(
    spec: &JobSpec,
    id: i64,
    token: &str,
    server_url: &str,
    dependencies: &[DependencyInfo],
) -> Value {
    let project_path = format!("group/{}", spec.project_name);
    let host = server_url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(server_url);
    let scheme = server_url
        .split_once("://")
        .map(|(s, _)| s)
        .unwrap_or("http");
    let repo_url = format!("{scheme}://gitlab-ci-token:{token}@{host}/{project_path}.git");
    let mut payload: Value = serde_json::from_str(drover_gitlab::fixtures::FULL)
        .expect("the agent's GitLab fixture is JSON");
    let mut git_info = payload["git_info"].take();
    for (k, v) in [
        ("repo_url", json!(repo_url)),
        ("ref", json!("main")),
        ("sha", json!("0123456789abcdef0123456789abcdef01234567")),
        (
            "before_sha",
            json!("0000000000000000000000000000000000000000"),
        ),
        ("ref_type", json!("branch")),
        (
            "refspecs",
            json!([
                "+refs/heads/main:refs/remotes/origin/main",
                "+refs/tags/*:refs/tags/*"
            ]),
        ),
        ("depth", json!(20)),
    ] {
        git_info[k] = v;
    }
    for (k, v) in &spec.git_info {
        git_info[k] = v.clone();
    }
    let sha = git_info["sha"].as_str().unwrap_or_default().to_owned();
    let ref_name = git_info["ref"].as_str().unwrap_or_default().to_owned();
    let predefined = |key: &str, value: String, public: bool, masked: bool| json!({"key": key, "value": value, "public": public, "masked": masked});
    let mut variables = vec![
        predefined("CI_JOB_ID", id.to_string(), true, false),
        predefined("CI_JOB_NAME", spec.name.clone(), true, false),
        predefined("CI_JOB_STAGE", spec.stage.clone(), true, false),
        predefined("CI_JOB_TOKEN", token.to_owned(), false, true),
        predefined("CI_PROJECT_ID", spec.project_id.to_string(), true, false),
        predefined("CI_PROJECT_NAME", spec.project_name.clone(), true, false),
        predefined("CI_PROJECT_PATH", project_path.clone(), true, false),
        predefined("CI_COMMIT_SHA", sha, true, false),
        predefined("CI_COMMIT_REF_NAME", ref_name, true, false),
        predefined(
            "CI_SERVER_URL",
            server_url.trim_end_matches('/').to_owned(),
            true,
            false,
        ),
        predefined(
            "CI_REPOSITORY_URL",
            git_info["repo_url"].as_str().unwrap_or_default().to_owned(),
            false,
            false,
        ),
    ];
    variables.extend(spec.variables.iter().cloned());
    let dependencies: Vec<Value> = dependencies
        .iter()
        .map(|d| {
            // `artifacts_file` only when the dependency has artifacts (`if:` in the
            // `Dependency` entity).
            let mut dep = json!({"id": d.id, "name": d.name, "token": d.token});
            if let Some((filename, size)) = &d.artifacts_file {
                dep["artifacts_file"] = json!({"filename": filename, "size": size});
            }
            dep
        })
        .collect();
    let mut job_info = payload["job_info"].take();
    for (k, v) in [
        ("id", json!(id)),
        ("name", json!(spec.name)),
        ("stage", json!(spec.stage)),
        ("project_id", json!(spec.project_id)),
        ("project_name", json!(spec.project_name)),
        ("project_full_path", json!(project_path)),
    ] {
        job_info[k] = v;
    }
    let mut runner_info = payload["runner_info"].take();
    runner_info["timeout"] = json!(spec.timeout);
    for (k, v) in [
        ("id", json!(id)),
        ("token", json!(token)),
        ("allow_git_fetch", json!(true)),
        ("job_info", job_info),
        ("git_info", git_info),
        ("runner_info", runner_info),
        ("variables", json!(variables)),
        ("steps", json!(spec.steps)),
        ("hooks", json!([])),
        ("image", spec.image.clone().unwrap_or(Value::Null)),
        ("services", json!(spec.services)),
        // `BuildRunnerPresenter#artifacts` is nil without `artifacts:`.
        (
            "artifacts",
            if spec.artifacts.is_empty() {
                Value::Null
            } else {
                json!(spec.artifacts)
            },
        ),
        ("cache", json!(spec.cache)),
        ("credentials", json!(spec.credentials)),
        ("dependencies", json!(dependencies)),
        (
            "features",
            json!({"trace_sections": true, "failure_reasons": FAILURE_REASONS}),
        ),
    ] {
        payload[k] = v;
    }
    for (k, v) in &spec.overrides {
        payload[k] = v.clone();
    }
    payload
}

/// The `201` body for a job: the payload as JSON, or the spec's raw body.
pub(crate) fn body(spec: &JobSpec, id: i64, token: &str, payload: &Value) -> bytes::Bytes {
    match &spec.raw_body {
        Some(raw) => bytes::Bytes::from(
            raw.replace("{id}", &id.to_string())
                .replace("{token}", token),
        ),
        None => bytes::Bytes::from(payload.to_string()),
    }
}
