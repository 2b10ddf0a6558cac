//! GitLab runner API payloads (`/api/v4/jobs/request` and friends), as GitLab sends them and
//! as gitlab-runner's Go structs read them (`common/network.go` in gitlab-runner; the
//! field list of each struct below follows it).
//!
//! Go semantics, applied to every field:
//! - a missing field and a `null` field both leave the zero value (`""`, `0`, `false`, an
//!   empty list, a zero struct); a `null` inside a list is a zero element;
//! - unknown fields are ignored;
//! - a value of the wrong type (a number where a string is expected, `1.5` for an integer,
//!   an object for a list, ...) is an error of the whole payload, as `json.Unmarshal` fails:
//!   see [`super::decode`] for what the agent then does (the job is reported failed);
//! - string "enums" (`when`, `policy`, `artifact_format`, `pull_policy`, ...) are kept as
//!   the raw string and interpreted where they are used, as gitlab-runner does; each such
//!   field says how an unknown value is treated.
//!
//! Not mirrored (GitLab never sends these): Go matches keys case-insensitively as a
//! fallback, keeps the last of duplicate keys and replaces invalid UTF-8 with U+FFFD; here
//! only the lower-case names are read, and duplicate keys or invalid UTF-8 are an error of
//! the payload (the job is then reported failed, see [`super::decode`]).
//!
//! Secrets are `SecretString`.

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

/// A job as returned by `POST /jobs/request` with `201`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobResponse {
    #[serde(deserialize_with = "go")]
    pub id: i64,
    /// Job token: `JOB-TOKEN` header for trace/artifacts, `token` in update bodies,
    /// `gitlab-ci-token:<token>` for git.
    #[serde(deserialize_with = "go_secret")]
    pub token: SecretString,
    #[serde(deserialize_with = "go")]
    pub allow_git_fetch: bool,
    #[serde(deserialize_with = "go")]
    pub job_info: JobInfo,
    #[serde(deserialize_with = "go")]
    pub git_info: GitInfo,
    #[serde(deserialize_with = "go")]
    pub runner_info: RunnerInfo,
    #[serde(deserialize_with = "go_vec")]
    pub variables: Vec<JobVariable>,
    #[serde(deserialize_with = "go_vec")]
    pub steps: Vec<Step>,
    /// `None` when absent or `null`; Go's zero `Image` (empty name) is treated the same way
    /// everywhere it is read (the runner's `[runners.docker] image` is used).
    pub image: Option<Image>,
    #[serde(deserialize_with = "go_vec")]
    pub services: Vec<Service>,
    #[serde(deserialize_with = "go_vec")]
    pub artifacts: Vec<Artifact>,
    #[serde(deserialize_with = "go_vec")]
    pub cache: Vec<Cache>,
    #[serde(deserialize_with = "go_vec")]
    pub credentials: Vec<Credentials>,
    #[serde(deserialize_with = "go_vec")]
    pub dependencies: Vec<Dependency>,
    #[serde(deserialize_with = "go")]
    pub features: JobFeatures,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct JobInfo {
    #[serde(deserialize_with = "go")]
    pub id: i64,
    #[serde(deserialize_with = "go")]
    pub name: String,
    #[serde(deserialize_with = "go")]
    pub stage: String,
    #[serde(deserialize_with = "go")]
    pub project_id: i64,
    #[serde(deserialize_with = "go")]
    pub project_name: String,
    /// Seconds the job waited in GitLab's queue (`lib/api/entities/ci/job_request/
    /// job_info.rb`; Go `float64`, so `null` or missing is 0: unknown).
    #[serde(deserialize_with = "go")]
    pub time_in_queue_seconds: f64,
}

/// `Debug` redacts the credentials GitLab embeds in `repo_url`
/// (`https://gitlab-ci-token:<job token>@host/...`).
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct GitInfo {
    #[serde(deserialize_with = "go")]
    pub repo_url: String,
    #[serde(rename = "ref", deserialize_with = "go")]
    pub ref_name: String,
    #[serde(deserialize_with = "go")]
    pub sha: String,
    #[serde(deserialize_with = "go")]
    pub before_sha: String,
    /// `branch` or `tag`; kept raw (Go `GitInfoRefType`), compared with `"tag"` where used.
    #[serde(deserialize_with = "go")]
    pub ref_type: String,
    #[serde(deserialize_with = "go_vec")]
    pub refspecs: Vec<String>,
    /// Go `int`: `0` or less means the whole history (gitlab-runner only passes `--depth`
    /// when it is positive).
    #[serde(deserialize_with = "go")]
    pub depth: i64,
}

impl std::fmt::Debug for GitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GitInfo")
            .field("repo_url", &redact_url_credentials(&self.repo_url))
            .field("ref_name", &self.ref_name)
            .field("sha", &self.sha)
            .field("before_sha", &self.before_sha)
            .field("ref_type", &self.ref_type)
            .field("refspecs", &self.refspecs)
            .field("depth", &self.depth)
            .finish()
    }
}

/// `scheme://[REDACTED]@host/...` when the URL carries user info; unchanged otherwise.
pub fn redact_url_credentials(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://[REDACTED]@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RunnerInfo {
    /// Job timeout in seconds (Go `int`). `0` means gitlab-runner's default (2 h); a
    /// negative value is refused before the job runs ([`super::decode`]).
    #[serde(deserialize_with = "go")]
    pub timeout: i64,
    pub runner_session_url: Option<String>,
}

/// One job variable. `value` is a `SecretString`: masked or not, it is never logged.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobVariable {
    /// An empty key (absent or `null`) is refused before the job runs ([`super::decode`]):
    /// no shell can export it.
    #[serde(deserialize_with = "go")]
    pub key: String,
    #[serde(deserialize_with = "go_secret")]
    pub value: SecretString,
    #[serde(deserialize_with = "go")]
    pub public: bool,
    #[serde(deserialize_with = "go")]
    pub masked: bool,
    /// `true`: write the value to a file and set the variable to its path.
    #[serde(deserialize_with = "go")]
    pub file: bool,
    /// `false`: `$VAR` expansion applies.
    #[serde(deserialize_with = "go")]
    pub raw: bool,
}

/// A step's `when`, kept as GitLab sent it (Go `StepWhen`). As gitlab-runner's
/// `StepWhen.OnSuccess`/`OnFailure`: empty runs on success only, `on_success` likewise,
/// `on_failure` on failure only, `always` both; any other value never runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct StepWhen(#[serde(deserialize_with = "go")] pub String);

impl StepWhen {
    /// Runs when the job has succeeded so far.
    pub fn on_success(&self) -> bool {
        matches!(self.0.as_str(), "" | "on_success" | "always")
    }

    /// Runs when the job has failed.
    pub fn on_failure(&self) -> bool {
        matches!(self.0.as_str(), "on_failure" | "always")
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Step {
    /// `script`, `after_script`, `release`, ...: any other name runs as its own stage
    /// (`step_<name>`), as in gitlab-runner. An empty name is refused before the job runs
    /// ([`super::decode`]).
    #[serde(deserialize_with = "go")]
    pub name: String,
    #[serde(deserialize_with = "go_vec")]
    pub script: Vec<String>,
    /// Seconds (Go `int`); `0` or less means the job's timeout alone applies.
    #[serde(deserialize_with = "go")]
    pub timeout: i64,
    #[serde(deserialize_with = "go")]
    pub when: StepWhen,
    #[serde(deserialize_with = "go")]
    pub allow_failure: bool,
}

/// One exposed port of an image or service (Go `Port`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Port {
    #[serde(deserialize_with = "go")]
    pub number: i64,
    #[serde(deserialize_with = "go")]
    pub protocol: String,
    #[serde(deserialize_with = "go")]
    pub name: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Image {
    #[serde(deserialize_with = "go")]
    pub name: String,
    /// `None` and `Some("")` mean the same (Go `string`).
    pub alias: Option<String>,
    #[serde(deserialize_with = "go_vec")]
    pub entrypoint: Vec<String>,
    #[serde(deserialize_with = "go_vec")]
    pub ports: Vec<Port>,
    /// Raw strings (Go `[]DockerPullPolicy`); `always`, `if-not-present`, `never` are known
    /// and anything else fails the job with a message naming it when the image is pulled
    /// (gitlab-runner fails such a job too).
    #[serde(deserialize_with = "go_vec")]
    pub pull_policy: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Service {
    #[serde(deserialize_with = "go")]
    pub name: String,
    /// `None` and `Some("")` mean the same (Go `string`); may hold several aliases.
    pub alias: Option<String>,
    #[serde(deserialize_with = "go_vec")]
    pub entrypoint: Vec<String>,
    #[serde(deserialize_with = "go_vec")]
    pub command: Vec<String>,
    #[serde(deserialize_with = "go_vec")]
    pub ports: Vec<Port>,
    #[serde(deserialize_with = "go_vec")]
    pub variables: Vec<JobVariable>,
    /// As [`Image::pull_policy`].
    #[serde(deserialize_with = "go_vec")]
    pub pull_policy: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Artifact {
    /// Archive name without extension; empty means `artifacts` (gitlab-runner's default).
    #[serde(deserialize_with = "go")]
    pub name: String,
    #[serde(deserialize_with = "go")]
    pub untracked: bool,
    #[serde(deserialize_with = "go_vec")]
    pub paths: Vec<String>,
    #[serde(deserialize_with = "go_vec")]
    pub exclude: Vec<String>,
    /// Raw (Go `ArtifactWhen`): `None`/empty/`on_success`, `on_failure`, `always`; any other
    /// value applies to no job result, so the entry is never uploaded, as in gitlab-runner
    /// (with a warning line in the trace; `artifacts::When`).
    pub when: Option<String>,
    /// Raw; sent to GitLab as is (`archive` when empty).
    pub artifact_type: Option<String>,
    /// Raw (Go `ArtifactFormat`): `None`/empty/`zip`, `gzip`, `raw`; any other value fails
    /// the upload naming it, as gitlab-runner's helper does ("unsupported archive format").
    pub artifact_format: Option<String>,
    /// Raw; sent to GitLab as is, none when empty.
    pub expire_in: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Cache {
    /// Empty means `default`.
    #[serde(deserialize_with = "go")]
    pub key: String,
    #[serde(deserialize_with = "go")]
    pub untracked: bool,
    /// Raw (Go `CachePolicy`), `$VAR`-expanded: `None`/empty/`pull-push`, `pull`, `push`; any
    /// other value fails the job naming it, as gitlab-runner's `CheckPolicy` error does
    /// (`cache::CachePolicy::parse`).
    pub policy: Option<String>,
    #[serde(deserialize_with = "go_vec")]
    pub paths: Vec<String>,
    /// Raw (Go `CacheWhen`): as [`Artifact::when`]; an unknown value never saves, restoring
    /// still follows `policy`.
    pub when: Option<String>,
    #[serde(deserialize_with = "go_vec")]
    pub fallback_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Credentials {
    /// `registry` is the only type used; others are ignored.
    #[serde(rename = "type", deserialize_with = "go")]
    pub kind: String,
    #[serde(deserialize_with = "go")]
    pub url: String,
    #[serde(deserialize_with = "go")]
    pub username: String,
    #[serde(deserialize_with = "go_secret")]
    pub password: SecretString,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Dependency {
    #[serde(deserialize_with = "go")]
    pub id: i64,
    #[serde(deserialize_with = "go")]
    pub name: String,
    /// May be `null` (GitLab sends `options[:running_job]&.token`): then empty.
    #[serde(deserialize_with = "go_secret")]
    pub token: SecretString,
    /// Absent when the dependency has no artifacts (Grape's `if: available_artifacts?`);
    /// as in gitlab-runner, only a non-empty `filename` means there is something to fetch.
    #[serde(deserialize_with = "go")]
    pub artifacts_file: ArtifactsFile,
}

impl Dependency {
    /// Whether GitLab holds artifacts to download for this dependency.
    pub fn has_artifacts(&self) -> bool {
        !self.artifacts_file.filename.is_empty()
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ArtifactsFile {
    #[serde(deserialize_with = "go")]
    pub filename: String,
    #[serde(deserialize_with = "go")]
    pub size: i64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct JobFeatures {
    #[serde(deserialize_with = "go")]
    pub trace_sections: bool,
    /// The failure reasons this GitLab accepts in `PUT /jobs/:id`.
    #[serde(deserialize_with = "go_vec")]
    pub failure_reasons: Vec<String>,
}

/// Go's reading of a field: `null` leaves the zero value.
pub(crate) fn go<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go's reading of a slice: `null` is empty, a `null` element is a zero element.
pub(crate) fn go_vec<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<Vec<Option<T>>>::deserialize(d)?
        .unwrap_or_default()
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// A Go `string` holding a secret: `null` is empty.
pub(crate) fn go_secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    Ok(SecretString::from(
        Option::<String>::deserialize(d)?.unwrap_or_default(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_url_credentials_are_redacted() {
        assert_eq!(
            redact_url_credentials("https://gitlab-ci-token:glcbt-secret@gitlab.example/g/p.git"),
            "https://[REDACTED]@gitlab.example/g/p.git"
        );
        assert_eq!(
            redact_url_credentials("https://gitlab.example/g/p.git"),
            "https://gitlab.example/g/p.git"
        );
        assert_eq!(redact_url_credentials("https://h/a@b"), "https://h/a@b");
        let info = GitInfo {
            repo_url: "http://gitlab-ci-token:tok123@h/p.git".into(),
            ..GitInfo::default()
        };
        assert!(!format!("{info:?}").contains("tok123"));
    }

    #[test]
    fn step_when_as_gitlab_runner() {
        let w = |s: &str| StepWhen(s.to_string());
        assert!(w("").on_success() && !w("").on_failure());
        assert!(w("on_success").on_success() && !w("on_success").on_failure());
        assert!(!w("on_failure").on_success() && w("on_failure").on_failure());
        assert!(w("always").on_success() && w("always").on_failure());
        assert!(!w("sometimes").on_success() && !w("sometimes").on_failure());
    }

    #[test]
    fn nulls_are_zero_values_everywhere() {
        let j: JobResponse = serde_json::from_value(serde_json::json!({
            "id": 1, "token": null, "allow_git_fetch": null, "job_info": null,
            "git_info": {"repo_url": null, "depth": null, "refspecs": [null, "+refs/x:refs/x"]},
            "runner_info": {"timeout": null},
            "variables": [null, {"key": "A", "value": null, "masked": null}],
            "steps": [{"name": "script", "script": null, "timeout": null, "when": null}],
            "services": [{"name": "pg", "alias": null, "entrypoint": null, "command": null,
                          "ports": [], "variables": null, "pull_policy": null}],
            "artifacts": [{"name": null, "untracked": null, "paths": ["out/"], "when": null,
                           "expire_in": null, "artifact_type": "archive", "artifact_format": "zip"}],
            "cache": [{"key": null, "policy": null, "when": null, "paths": null}],
            "dependencies": [{"id": null, "name": "b", "token": null, "artifacts_file": null}],
            "features": {"failure_reasons": null},
            "image": null, "credentials": null, "unknown_field": {"x": [1]}
        }))
        .expect("decodes");
        assert_eq!(j.git_info.refspecs, vec!["", "+refs/x:refs/x"]);
        assert_eq!(j.variables.len(), 2);
        assert_eq!(j.variables[0].key, "");
        assert_eq!(j.steps[0].when, StepWhen::default());
        assert_eq!(j.artifacts[0].name, "");
        assert!(!j.dependencies[0].has_artifacts());
        assert!(j.image.is_none());
    }

    #[test]
    fn wrong_types_are_errors_not_zero_values() {
        for bad in [
            serde_json::json!({"id": 1, "token": "t", "variables": [{"key": 5}]}),
            serde_json::json!({"id": 1, "token": "t", "runner_info": {"timeout": 1.5}}),
            serde_json::json!({"id": 1, "token": "t", "steps": {"name": "script"}}),
            serde_json::json!({"id": 1, "token": "t", "image": {"entrypoint": "/bin/sh"}}),
        ] {
            assert!(
                serde_json::from_value::<JobResponse>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }
}
