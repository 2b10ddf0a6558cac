//! GitLab runner API payloads (`/api/v4/jobs/request` and friends), as GitLab sends them.
//!
//! Every field that GitLab may omit or send as `null` is defaulted, so a payload from an
//! older or newer GitLab still parses. Secrets are `SecretString`.

use secrecy::SecretString;
use serde::{Deserialize, Deserializer, Serialize};

/// A job as returned by `POST /jobs/request` with `201`.
#[derive(Debug, Clone, Deserialize)]
pub struct JobResponse {
    pub id: i64,
    /// Job token: `JOB-TOKEN` header for trace/artifacts, `token` in update bodies,
    /// `gitlab-ci-token:<token>` for git.
    pub token: SecretString,
    #[serde(default)]
    pub allow_git_fetch: bool,
    #[serde(default)]
    pub job_info: JobInfo,
    #[serde(default)]
    pub git_info: GitInfo,
    #[serde(default)]
    pub runner_info: RunnerInfo,
    #[serde(default, deserialize_with = "null_default")]
    pub variables: Vec<JobVariable>,
    #[serde(default, deserialize_with = "null_default")]
    pub steps: Vec<Step>,
    #[serde(default)]
    pub image: Option<Image>,
    #[serde(default, deserialize_with = "null_default")]
    pub services: Vec<Service>,
    #[serde(default, deserialize_with = "null_default")]
    pub artifacts: Vec<Artifact>,
    #[serde(default, deserialize_with = "null_default")]
    pub cache: Vec<Cache>,
    #[serde(default, deserialize_with = "null_default")]
    pub credentials: Vec<Credentials>,
    #[serde(default, deserialize_with = "null_default")]
    pub dependencies: Vec<Dependency>,
    #[serde(default)]
    pub features: JobFeatures,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct JobInfo {
    #[serde(default)]
    pub id: i64,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub stage: String,
    #[serde(default)]
    pub project_id: i64,
    #[serde(default)]
    pub project_name: String,
}

/// `Debug` redacts the credentials GitLab embeds in `repo_url`
/// (`https://gitlab-ci-token:<job token>@host/...`).
#[derive(Clone, Default, Deserialize)]
pub struct GitInfo {
    #[serde(default)]
    pub repo_url: String,
    #[serde(default, rename = "ref")]
    pub ref_name: String,
    #[serde(default)]
    pub sha: String,
    #[serde(default)]
    pub before_sha: String,
    #[serde(default)]
    pub ref_type: String,
    #[serde(default, deserialize_with = "null_default")]
    pub refspecs: Vec<String>,
    #[serde(default)]
    pub depth: u32,
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
pub struct RunnerInfo {
    /// Job timeout in seconds.
    #[serde(default)]
    pub timeout: u64,
    #[serde(default)]
    pub runner_session_url: Option<String>,
}

/// One job variable. `value` is a `SecretString`: masked or not, it is never logged.
#[derive(Debug, Clone, Deserialize)]
pub struct JobVariable {
    pub key: String,
    #[serde(default, deserialize_with = "secret_or_empty")]
    pub value: SecretString,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub masked: bool,
    /// `true`: write the value to a file and set the variable to its path.
    #[serde(default)]
    pub file: bool,
    /// `false`: `$VAR` expansion applies.
    #[serde(default)]
    pub raw: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepWhen {
    #[default]
    OnSuccess,
    OnFailure,
    Always,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Step {
    /// `script`, `after_script` or `release`.
    pub name: String,
    #[serde(default, deserialize_with = "null_default")]
    pub script: Vec<String>,
    /// Seconds.
    #[serde(default)]
    pub timeout: Option<u64>,
    #[serde(default)]
    pub when: StepWhen,
    #[serde(default)]
    pub allow_failure: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Image {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub ports: Vec<serde_json::Value>,
    #[serde(default, deserialize_with = "null_default")]
    pub pull_policy: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Service {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub alias: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub entrypoint: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub command: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub variables: Vec<JobVariable>,
    #[serde(default, deserialize_with = "null_default")]
    pub pull_policy: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Artifact {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub untracked: bool,
    #[serde(default, deserialize_with = "null_default")]
    pub paths: Vec<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub exclude: Vec<String>,
    /// `on_success`, `on_failure`, `always`.
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub artifact_format: Option<String>,
    #[serde(default)]
    pub expire_in: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Cache {
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub untracked: bool,
    /// `pull`, `push`, `pull-push`.
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub paths: Vec<String>,
    #[serde(default)]
    pub when: Option<String>,
    #[serde(default, deserialize_with = "null_default")]
    pub fallback_keys: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Credentials {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub url: String,
    #[serde(default)]
    pub username: String,
    #[serde(default, deserialize_with = "secret_or_empty")]
    pub password: SecretString,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Dependency {
    pub id: i64,
    #[serde(default)]
    pub name: String,
    #[serde(deserialize_with = "secret_or_empty", default)]
    pub token: SecretString,
    #[serde(default)]
    pub artifacts_file: Option<ArtifactsFile>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ArtifactsFile {
    #[serde(default)]
    pub filename: String,
    #[serde(default)]
    pub size: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobFeatures {
    #[serde(default)]
    pub trace_sections: bool,
    /// The failure reasons this GitLab accepts in `PUT /jobs/:id`.
    #[serde(default, deserialize_with = "null_default")]
    pub failure_reasons: Vec<String>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn secret_or_empty<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
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
}
