//! The fake's JSON control API under `/fake/`, for the `fake-gitlab` binary (the demo, manual
//! tests). **Not part of GitLab's API**: GitLab creates jobs from pipelines; these routes are
//! the out-of-process twin of [`FakeGitLab::enqueue_job`](super::FakeGitLab::enqueue_job) and
//! [`FakeGitLab::job`](super::FakeGitLab::job). They are only mounted by
//! [`FakeGitLab::start_with_control_api`](super::FakeGitLab::start_with_control_api), so the
//! runner API routes stay exactly as GitLab's specs describe them.
//!
//! - `POST /fake/jobs` `{name, image, script: [..], variables?: {K: V}, tags?: [..],
//!   timeout?: secs}` → `201 {"id": N}`; `400 {"error": ...}` naming the bad field.
//! - `GET /fake/jobs` → `200 [job, ...]`; `GET /fake/jobs/N` → `200 job` or `404`, where job
//!   is `{id, name, status, runner_id, failure_reason, exit_code, trace}` and `status` is one
//!   of `pending`, `running`, `canceling`, `canceled`, `success`, `failed`.
//! - `GET /fake/runners` → `200 [{id, description, tag_list, run_untagged, managers}]`
//!   (tokens are not shown).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Value, json};

use super::job_spec::JobSpec;
use super::respond::json_status;
use super::state::{JobRecord, Shared};

/// The control routes, with their state.
pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/fake/jobs", get(list_jobs).post(create_job))
        .route("/fake/jobs/{id}", get(get_job))
        .route("/fake/runners", get(list_runners))
        .with_state(shared)
}

/// The body of `POST /fake/jobs`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJob {
    name: String,
    /// `image.name` of the payload; the runner's default image when absent.
    #[serde(default)]
    image: Option<String>,
    /// The `script` step's lines.
    script: Vec<String>,
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    tags: Vec<String>,
    /// Job timeout in seconds (default: one hour, as [`JobSpec::new`]).
    #[serde(default)]
    timeout: Option<u64>,
}

impl NewJob {
    fn into_spec(self) -> Result<JobSpec, String> {
        if self.name.trim().is_empty() {
            return Err("field `name` is empty".into());
        }
        if self.script.is_empty() {
            return Err("field `script` has no lines".into());
        }
        if self.timeout == Some(0) {
            return Err("field `timeout` is 0".into());
        }
        let mut spec = JobSpec::new(&self.name);
        if let Some(timeout) = self.timeout {
            spec.timeout = timeout;
        }
        spec = match self.image.as_deref() {
            Some("") => return Err("field `image` is empty".into()),
            Some(image) => spec.image(image),
            None => spec.image_json(Value::Null),
        };
        spec = spec.script(self.script);
        for (key, value) in &self.variables {
            spec = spec.variable(key, value);
        }
        spec.tags = self.tags;
        Ok(spec)
    }
}

async fn create_job(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let spec = match serde_json::from_slice::<NewJob>(&body)
        .map_err(|e| format!("job body: {e}"))
        .and_then(NewJob::into_spec)
    {
        Ok(spec) => spec,
        Err(error) => return json_status(StatusCode::BAD_REQUEST, json!({ "error": error })),
    };
    let job = super::enqueue(&shared, spec);
    json_status(StatusCode::CREATED, json!({ "id": job.id }))
}

async fn list_jobs(State(shared): State<Arc<Shared>>) -> Response {
    let jobs: Vec<Value> = shared.lock().jobs.values().map(job_json).collect();
    json_status(StatusCode::OK, Value::Array(jobs))
}

async fn get_job(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let found = id
        .parse::<i64>()
        .ok()
        .and_then(|id| shared.lock().jobs.get(&id).map(job_json));
    match found {
        Some(job) => json_status(StatusCode::OK, job),
        None => json_status(
            StatusCode::NOT_FOUND,
            json!({ "error": format!("no job with id `{id}`") }),
        ),
    }
}

async fn list_runners(State(shared): State<Arc<Shared>>) -> Response {
    let runners: Vec<Value> = shared
        .lock()
        .runners
        .values()
        .map(|r| {
            json!({
                "id": r.id,
                "description": r.description,
                "tag_list": r.tag_list,
                "run_untagged": r.run_untagged,
                "revoked": r.revoked,
                "managers": r.managers,
            })
        })
        .collect();
    json_status(StatusCode::OK, Value::Array(runners))
}

fn job_json(job: &JobRecord) -> Value {
    json!({
        "id": job.id,
        "name": job.name,
        "status": job.state.as_str(),
        "runner_id": job.runner_id,
        "failure_reason": job.failure_reason,
        "exit_code": job.exit_code,
        "trace": String::from_utf8_lossy(&job.trace),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: Value) -> Result<JobSpec, String> {
        serde_json::from_value::<NewJob>(body)
            .map_err(|e| e.to_string())
            .and_then(NewJob::into_spec)
    }

    #[test]
    fn job_body_becomes_a_spec_with_image_script_and_variables() {
        let spec = parse(json!({
            "name": "hello", "image": "img:1", "script": ["echo hi"],
            "variables": {"GIT_STRATEGY": "none"}, "tags": ["demo"], "timeout": 60,
        }))
        .expect("valid body");
        assert_eq!(spec.name, "hello");
        assert_eq!(
            spec.image.as_ref().map(|i| &i["name"]),
            Some(&json!("img:1"))
        );
        assert_eq!(spec.steps[0]["script"], json!(["echo hi"]));
        assert_eq!(spec.variables[0]["key"], "GIT_STRATEGY");
        assert_eq!(spec.tags, ["demo"]);
        assert_eq!(spec.timeout, 60);
    }

    #[test]
    fn bad_job_bodies_name_the_field() {
        let no_script = parse(json!({"name": "a", "script": []})).unwrap_err();
        assert!(no_script.contains("script"), "{no_script}");
        let unknown = parse(json!({"name": "a", "script": ["x"], "imgae": "b"})).unwrap_err();
        assert!(unknown.contains("imgae"), "{unknown}");
        let empty = parse(json!({"name": " ", "script": ["x"]})).unwrap_err();
        assert!(empty.contains("name"), "{empty}");
    }
}
