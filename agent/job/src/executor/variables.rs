//! The job's environment: job variables, the runner's `environment`, and the variables the
//! runner defines (`CI_PROJECT_DIR`...), with `raw: false` expansion and file variables.
//!
//! Invariant: values never reach logs; only the trace (which masks) and the container.

use secrecy::ExposeSecret;

use super::ExecutorError;
use super::JobContext;
use crate::expand::expand;

/// Default `builds_dir` inside containers.
pub const DEFAULT_BUILDS_DIR: &str = "/builds";

/// A `file: true` variable: `content` goes to `path` in the container.
#[derive(Clone)]
pub struct FileVariable {
    pub path: String,
    pub content: Vec<u8>,
}

/// The resolved environment of a job.
#[derive(Clone)]
pub struct JobEnv {
    /// `KEY=value` pairs, last definition wins, in definition order.
    pub vars: Vec<(String, String)>,
    pub files: Vec<FileVariable>,
    /// `<builds_dir>/<namespace>/<project>`.
    pub project_dir: String,
    pub builds_dir: String,
    /// `<project_dir>.tmp`: holds file variables (a per-job volume).
    pub tmp_dir: String,
}

impl std::fmt::Debug for JobEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobEnv")
            .field(
                "keys",
                &self.vars.iter().map(|(k, _)| k).collect::<Vec<_>>(),
            )
            .field("project_dir", &self.project_dir)
            .finish_non_exhaustive()
    }
}

impl JobEnv {
    /// The value of `key`, if set.
    #[cfg(test)]
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `KEY=value` strings for the container's `Env`, with `extra` appended.
    pub fn docker_env(&self, extra: &[(&str, &str)]) -> Vec<String> {
        self.vars
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .chain(extra.iter().map(|(k, v)| format!("{k}={v}")))
            .collect()
    }
}

/// The project path below `builds_dir`: the repo URL's path (`group/sub/project`), else
/// the project name, else `project-<id>`. Only safe path characters are kept.
pub fn project_path(repo_url: &str, project_name: &str, project_id: i64) -> String {
    let without_scheme = repo_url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(repo_url);
    let path = without_scheme.split_once('/').map(|(_, p)| p).unwrap_or("");
    let path = path.trim_end_matches('/').trim_end_matches(".git");
    let clean: Vec<String> = path
        .split('/')
        .map(|seg| {
            seg.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                        c
                    } else {
                        '_'
                    }
                })
                .collect::<String>()
        })
        .filter(|s| !s.is_empty() && s != "." && s != "..")
        .collect();
    if !clean.is_empty() {
        return clean.join("/");
    }
    let name: String = project_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name == "." || name == ".." {
        format!("project-{project_id}")
    } else {
        name
    }
}

/// Resolves the job's environment. `timeout_secs` is the effective job timeout.
pub fn job_env(ctx: &JobContext, timeout_secs: u64) -> Result<JobEnv, ExecutorError> {
    let job = &ctx.job;
    let builds_dir = ctx
        .runner
        .builds_dir
        .clone()
        .filter(|d| !d.trim().is_empty())
        .map(|d| d.trim_end_matches('/').to_string())
        .unwrap_or_else(|| DEFAULT_BUILDS_DIR.to_string());
    if !builds_dir.starts_with('/') {
        return Err(ExecutorError::Runner {
            key: "builds_dir",
            value: builds_dir,
            reason: "must be an absolute path".to_string(),
        });
    }
    let project_dir = format!(
        "{builds_dir}/{}",
        project_path(
            &job.git_info.repo_url,
            &job.job_info.project_name,
            job.job_info.project_id
        )
    );
    let tmp_dir = format!("{project_dir}.tmp");

    // (key, value, raw, file); later definitions win.
    let mut defs: Vec<(String, String, bool, bool)> = Vec::new();
    for v in &job.variables {
        defs.push((
            v.key.clone(),
            v.value.expose_secret().to_string(),
            v.raw,
            v.file,
        ));
    }
    for e in &ctx.runner.environment {
        let Some((k, v)) = e.split_once('=') else {
            return Err(ExecutorError::Runner {
                key: "environment",
                value: e.split('=').next().unwrap_or_default().to_string(),
                reason: "expected KEY=value".to_string(),
            });
        };
        defs.push((k.to_string(), v.to_string(), false, false));
    }
    let predefined = [
        ("CI_PROJECT_DIR", project_dir.clone()),
        ("CI_BUILDS_DIR", builds_dir.clone()),
        ("CI_SERVER", "yes".to_string()),
        ("CI_DISPOSABLE_ENVIRONMENT", "true".to_string()),
        ("CI_RUNNER_SHORT_TOKEN", ctx.runner_short_token.clone()),
        ("CI_CONCURRENT_ID", ctx.slot.to_string()),
        // Drover keeps no per-project slot numbering: the slot is unique per runner, which
        // is what the variable is used for (unique paths).
        ("CI_CONCURRENT_PROJECT_ID", ctx.slot.to_string()),
        ("CI_JOB_TIMEOUT", timeout_secs.to_string()),
        ("GITLAB_CI", "true".to_string()),
    ];
    for (k, v) in predefined {
        defs.push((k.to_string(), v, true, false));
    }
    if !defs.iter().any(|(k, ..)| k == "CI") {
        defs.push(("CI".to_string(), "true".to_string(), true, false));
    }
    // Last definition wins, keeping its position.
    let mut dedup: Vec<(String, String, bool, bool)> = Vec::new();
    for d in defs {
        dedup.retain(|(k, ..)| *k != d.0);
        dedup.push(d);
    }

    // File variables: the variable becomes the file's path.
    let mut files = Vec::new();
    let lookup_values: Vec<(String, String)> = dedup
        .iter()
        .map(|(k, v, _, file)| {
            if *file {
                (k.clone(), format!("{tmp_dir}/{k}"))
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let lookup = |name: &str| {
        lookup_values
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    let mut vars = Vec::new();
    for (k, v, raw, file) in &dedup {
        let value = if *raw { v.clone() } else { expand(v, &lookup) };
        if *file {
            if !is_file_name(k) {
                return Err(ExecutorError::Variable {
                    key: k.clone(),
                    reason: "a file variable's name must be a valid file name".to_string(),
                });
            }
            let path = format!("{tmp_dir}/{k}");
            files.push(FileVariable {
                path: path.clone(),
                content: value.into_bytes(),
            });
            vars.push((k.clone(), path));
        } else {
            vars.push((k.clone(), value));
        }
    }
    Ok(JobEnv {
        vars,
        files,
        project_dir,
        builds_dir,
        tmp_dir,
    })
}

fn is_file_name(k: &str) -> bool {
    !k.is_empty() && k != "." && k != ".." && !k.contains('/') && !k.contains('\0')
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use drover_proto::spec::RunnerConfig;

    use super::*;
    use drover_gitlab::types::JobResponse;

    fn ctx(vars: serde_json::Value, environment: &[&str]) -> JobContext {
        let job: JobResponse = serde_json::from_value(serde_json::json!({
            "id": 42,
            "token": "t",
            "job_info": {"project_id": 7, "project_name": "proj"},
            "git_info": {"repo_url": "https://gitlab-ci-token:x@gitlab.example.com/group/sub/proj.git"},
            "variables": vars,
        }))
        .expect("job");
        let runner = RunnerConfig {
            environment: environment.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        JobContext {
            job,
            runner: Arc::new(runner),
            agent_id: "a".into(),
            runner_short_token: "abcd1234".into(),
            slot: 3,
            gitlab: Arc::new(drover_gitlab::fake::FakeGitLab::new()),
        }
    }

    #[test]
    fn defines_the_runner_variables() {
        let env = job_env(&ctx(serde_json::json!([]), &[]), 600).expect("env");
        assert_eq!(env.project_dir, "/builds/group/sub/proj");
        assert_eq!(env.get("CI_PROJECT_DIR"), Some("/builds/group/sub/proj"));
        assert_eq!(env.get("CI_BUILDS_DIR"), Some("/builds"));
        assert_eq!(env.get("CI_SERVER"), Some("yes"));
        assert_eq!(env.get("CI_DISPOSABLE_ENVIRONMENT"), Some("true"));
        assert_eq!(env.get("CI_RUNNER_SHORT_TOKEN"), Some("abcd1234"));
        assert_eq!(env.get("CI_CONCURRENT_ID"), Some("3"));
        assert_eq!(env.get("CI_CONCURRENT_PROJECT_ID"), Some("3"));
        assert_eq!(env.get("CI_JOB_TIMEOUT"), Some("600"));
        assert_eq!(env.get("GITLAB_CI"), Some("true"));
        assert_eq!(env.get("CI"), Some("true"));
    }

    #[test]
    fn expands_non_raw_values_only() {
        let env = job_env(
            &ctx(
                serde_json::json!([
                    {"key": "BASE", "value": "b"},
                    {"key": "X", "value": "$BASE/${CI_PROJECT_DIR}", "raw": false},
                    {"key": "R", "value": "$BASE", "raw": true}
                ]),
                &["FROM_RUNNER=$BASE-r"],
            ),
            1,
        )
        .expect("env");
        assert_eq!(env.get("X"), Some("b//builds/group/sub/proj"));
        assert_eq!(env.get("R"), Some("$BASE"));
        assert_eq!(env.get("FROM_RUNNER"), Some("b-r"));
    }

    #[test]
    fn file_variables_become_paths_with_their_content() {
        let env = job_env(
            &ctx(
                serde_json::json!([
                    {"key": "KUBECONFIG", "value": "secret-content", "file": true, "raw": true},
                    {"key": "USE", "value": "cat $KUBECONFIG"}
                ]),
                &[],
            ),
            1,
        )
        .expect("env");
        let path = "/builds/group/sub/proj.tmp/KUBECONFIG";
        assert_eq!(env.get("KUBECONFIG"), Some(path));
        assert_eq!(env.get("USE"), Some(format!("cat {path}").as_str()));
        assert_eq!(env.files.len(), 1);
        assert_eq!(env.files[0].path, path);
        assert_eq!(env.files[0].content, b"secret-content");
    }

    #[test]
    fn later_definitions_win_and_runner_variables_cannot_be_overridden() {
        let env = job_env(
            &ctx(
                serde_json::json!([
                    {"key": "A", "value": "job"},
                    {"key": "CI_PROJECT_DIR", "value": "/elsewhere"},
                    {"key": "CI", "value": "custom"}
                ]),
                &["A=runner"],
            ),
            1,
        )
        .expect("env");
        assert_eq!(env.get("A"), Some("runner"));
        assert_eq!(env.get("CI_PROJECT_DIR"), Some("/builds/group/sub/proj"));
        assert_eq!(env.get("CI"), Some("custom"));
        assert_eq!(env.vars.iter().filter(|(k, _)| k == "A").count(), 1);
    }

    #[test]
    fn bad_runner_environment_is_rejected() {
        let e = job_env(&ctx(serde_json::json!([]), &["NOEQUALS"]), 1)
            .expect_err("bad")
            .to_string();
        assert!(e.contains("environment") && e.contains("NOEQUALS"), "{e}");
    }

    #[test]
    fn project_path_from_repo_url_or_name() {
        assert_eq!(project_path("https://h.example/g/p.git", "x", 1), "g/p");
        assert_eq!(
            project_path("https://u:pw@h.example:8443/g/s/p.git", "x", 1),
            "g/s/p"
        );
        assert_eq!(project_path("", "my proj", 1), "my_proj");
        assert_eq!(project_path("", "", 5), "project-5");
        assert_eq!(project_path("https://h/../../etc", "", 5), "etc");
    }
}
