//! What to do about sources for one job, decided from the payload and the job variables
//! alone (pure functions, no IO): `GIT_STRATEGY`, `GIT_DEPTH`, `GIT_CHECKOUT`,
//! `GIT_CLEAN_FLAGS`, `GIT_FETCH_EXTRA_FLAGS`, `GIT_SUBMODULE_STRATEGY`, refspecs and the
//! runner's `clone_url`.

use secrecy::ExposeSecret;

use drover_gitlab::types::{JobResponse, JobVariable};

/// `GIT_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GitStrategy {
    /// Fresh repository every job.
    Clone,
    /// Reuse the previous job's repository of the same runner, project and slot.
    Fetch,
    /// Leave the project directory as it is; no git at all.
    None,
    /// An empty project directory; no git at all.
    Empty,
}

/// `GIT_SUBMODULE_STRATEGY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmoduleStrategy {
    None,
    Normal,
    Recursive,
}

/// Everything [`super::GitSource`] needs, decided up front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourcesPlan {
    pub strategy: GitStrategy,
    /// `--depth` for fetch; `0` = full history.
    pub depth: u32,
    /// `GIT_CHECKOUT` (default `true`).
    pub checkout: bool,
    /// `git clean` arguments; empty = no clean (`GIT_CLEAN_FLAGS: none`).
    pub clean_flags: Vec<String>,
    /// Extra `git fetch` arguments (`GIT_FETCH_EXTRA_FLAGS`, default `--prune --quiet`).
    pub fetch_extra_flags: Vec<String>,
    pub submodules: SubmoduleStrategy,
    /// Remote URL without any credentials (the token goes through a credential helper).
    pub repo_url: String,
    pub refspecs: Vec<String>,
    pub sha: String,
    pub ref_name: String,
}

/// A variable or payload field with a value we cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("variable {key}: invalid value {value:?} (expected {expected})")]
    InvalidVariable {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("git_info.repo_url {0:?} is not an http(s) URL")]
    InvalidRepoUrl(String),
    #[error("runner clone_url {0:?} is not an http(s) URL")]
    InvalidCloneUrl(String),
    #[error("git_info.sha is empty")]
    MissingSha,
}

/// Looks up a variable (the last definition wins, like GitLab's variable precedence).
pub fn variable<'a>(vars: &'a [JobVariable], key: &str) -> Option<&'a str> {
    vars.iter()
        .rev()
        .find(|v| v.key == key)
        .map(|v| v.value.expose_secret())
}

fn split_flags(value: &str) -> Vec<String> {
    value.split_whitespace().map(str::to_string).collect()
}

/// Decides the plan. `vars` are the job's variables (payload variables plus the runner's
/// `environment`, later entries winning); `clone_url` is the runner's `clone_url` option.
pub fn plan(
    job: &JobResponse,
    vars: &[JobVariable],
    clone_url: Option<&str>,
) -> Result<SourcesPlan, PlanError> {
    let var = |k: &str| variable(vars, k).map(str::trim).filter(|v| !v.is_empty());
    let strategy = match var("GIT_STRATEGY") {
        None if job.allow_git_fetch => GitStrategy::Fetch,
        None => GitStrategy::Clone,
        Some("clone") => GitStrategy::Clone,
        Some("fetch") => GitStrategy::Fetch,
        Some("none") => GitStrategy::None,
        Some("empty") => GitStrategy::Empty,
        Some(other) => {
            return Err(PlanError::InvalidVariable {
                key: "GIT_STRATEGY",
                value: other.to_string(),
                expected: "clone, fetch, none or empty",
            });
        }
    };
    let depth = match var("GIT_DEPTH") {
        // Go `int`: `0` or less is the whole history.
        None => u32::try_from(job.git_info.depth.max(0)).unwrap_or(u32::MAX),
        Some(v) => v.parse::<u32>().map_err(|_| PlanError::InvalidVariable {
            key: "GIT_DEPTH",
            value: v.to_string(),
            expected: "a whole number, 0 for full history",
        })?,
    };
    let checkout = match var("GIT_CHECKOUT") {
        None => true,
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
        Some(other) => {
            return Err(PlanError::InvalidVariable {
                key: "GIT_CHECKOUT",
                value: other.to_string(),
                expected: "true or false",
            });
        }
    };
    let clean_flags = match var("GIT_CLEAN_FLAGS") {
        None => vec!["-ffdx".to_string()],
        Some("none") => Vec::new(),
        Some(v) => split_flags(v),
    };
    let fetch_extra_flags = match var("GIT_FETCH_EXTRA_FLAGS") {
        None => vec!["--prune".to_string(), "--quiet".to_string()],
        Some("none") => Vec::new(),
        Some(v) => split_flags(v),
    };
    let submodules = match var("GIT_SUBMODULE_STRATEGY") {
        None | Some("none") => SubmoduleStrategy::None,
        Some("normal") => SubmoduleStrategy::Normal,
        Some("recursive") => SubmoduleStrategy::Recursive,
        Some(other) => {
            return Err(PlanError::InvalidVariable {
                key: "GIT_SUBMODULE_STRATEGY",
                value: other.to_string(),
                expected: "none, normal or recursive",
            });
        }
    };

    let info = &job.git_info;
    let needs_git = matches!(strategy, GitStrategy::Clone | GitStrategy::Fetch);
    let mut repo_url = strip_url_credentials(&info.repo_url);
    if needs_git {
        if split_url(&repo_url).is_none() {
            return Err(PlanError::InvalidRepoUrl(repo_url));
        }
        if let Some(base) = clone_url.map(str::trim).filter(|c| !c.is_empty()) {
            let project_path = variable(vars, "CI_PROJECT_PATH").map(str::to_string);
            repo_url = with_clone_url(&repo_url, base, project_path.as_deref())?;
        }
        if info.sha.is_empty() {
            return Err(PlanError::MissingSha);
        }
    }
    let refspecs = if info.refspecs.is_empty() {
        default_refspecs(&info.ref_name, &info.ref_type)
    } else {
        info.refspecs.clone()
    };
    Ok(SourcesPlan {
        strategy,
        depth,
        checkout,
        clean_flags,
        fetch_extra_flags,
        submodules,
        repo_url,
        refspecs,
        sha: info.sha.clone(),
        ref_name: info.ref_name.clone(),
    })
}

/// Refspecs when GitLab sends none (older GitLab): the job's branch or tag.
pub fn default_refspecs(ref_name: &str, ref_type: &str) -> Vec<String> {
    if ref_name.is_empty() {
        return Vec::new();
    }
    if ref_type == "tag" {
        vec![format!("+refs/tags/{ref_name}:refs/tags/{ref_name}")]
    } else {
        vec![format!(
            "+refs/heads/{ref_name}:refs/remotes/origin/{ref_name}"
        )]
    }
}

/// Splits `scheme://authority/path` into its parts (authority without credentials).
pub(crate) fn split_url(url: &str) -> Option<(&str, &str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return None;
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if host.is_empty() {
        return None;
    }
    Some((scheme, host, path))
}

/// `scheme://host[:port]` of an http(s) URL: the scope of the git credential helper.
pub fn url_origin(url: &str) -> Option<String> {
    split_url(url).map(|(scheme, host, _)| format!("{scheme}://{host}"))
}

/// Replaces scheme, host and base path of `repo_url` with the runner's `clone_url`, keeping
/// the project path (`CI_PROJECT_PATH` when known), like gitlab-runner.
pub fn with_clone_url(
    repo_url: &str,
    clone_url: &str,
    project_path: Option<&str>,
) -> Result<String, PlanError> {
    let (scheme, host, base_path) = split_url(clone_url)
        .ok_or_else(|| PlanError::InvalidCloneUrl(strip_url_credentials(clone_url)))?;
    let project = match project_path {
        Some(p) => format!("{}.git", p.trim_matches('/')),
        None => {
            let (_, _, path) =
                split_url(repo_url).ok_or_else(|| PlanError::InvalidRepoUrl(repo_url.into()))?;
            path.trim_matches('/').to_string()
        }
    };
    let base = base_path.trim_end_matches('/');
    Ok(format!("{scheme}://{host}{base}/{project}"))
}

/// Removes `user:password@` from every URL in `text`.
pub fn strip_url_credentials(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '\'' || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => out.push_str(&authority[at + 1..]),
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;

    use super::*;
    use drover_gitlab::types::GitInfo;

    fn job(allow_fetch: bool) -> JobResponse {
        let mut job: JobResponse = serde_json::from_value(serde_json::json!({
            "id": 1, "token": "tok", "allow_git_fetch": allow_fetch,
        }))
        .unwrap();
        job.git_info = GitInfo {
            repo_url: "https://gitlab-ci-token:tok@gitlab.example.com/group/proj.git".into(),
            ref_name: "main".into(),
            sha: "0123456789abcdef0123456789abcdef01234567".into(),
            ref_type: "branch".into(),
            depth: 20,
            ..GitInfo::default()
        };
        job
    }

    fn vars(pairs: &[(&str, &str)]) -> Vec<JobVariable> {
        pairs
            .iter()
            .map(|(k, v)| JobVariable {
                key: k.to_string(),
                value: SecretString::from(v.to_string()),
                public: true,
                masked: false,
                file: false,
                raw: false,
            })
            .collect()
    }

    #[test]
    fn defaults_follow_gitlab_runner() {
        let p = plan(&job(true), &[], None).unwrap();
        assert_eq!(p.strategy, GitStrategy::Fetch);
        assert_eq!(p.depth, 20);
        assert!(p.checkout);
        assert_eq!(p.clean_flags, vec!["-ffdx"]);
        assert_eq!(p.fetch_extra_flags, vec!["--prune", "--quiet"]);
        assert_eq!(p.submodules, SubmoduleStrategy::None);
        assert_eq!(p.repo_url, "https://gitlab.example.com/group/proj.git");
        assert_eq!(
            p.refspecs,
            vec!["+refs/heads/main:refs/remotes/origin/main"]
        );
        assert_eq!(
            plan(&job(false), &[], None).unwrap().strategy,
            GitStrategy::Clone
        );
    }

    #[test]
    fn variables_override() {
        let v = vars(&[
            ("GIT_STRATEGY", "clone"),
            ("GIT_DEPTH", "1"),
            ("GIT_CHECKOUT", "false"),
            ("GIT_CLEAN_FLAGS", "none"),
            ("GIT_FETCH_EXTRA_FLAGS", "--no-tags"),
            ("GIT_SUBMODULE_STRATEGY", "recursive"),
        ]);
        let p = plan(&job(true), &v, None).unwrap();
        assert_eq!(p.strategy, GitStrategy::Clone);
        assert_eq!(p.depth, 1);
        assert!(!p.checkout);
        assert!(p.clean_flags.is_empty());
        assert_eq!(p.fetch_extra_flags, vec!["--no-tags"]);
        assert_eq!(p.submodules, SubmoduleStrategy::Recursive);
        let none = plan(&job(true), &vars(&[("GIT_STRATEGY", "none")]), None).unwrap();
        assert_eq!(none.strategy, GitStrategy::None);
        let empty = plan(&job(true), &vars(&[("GIT_STRATEGY", "empty")]), None).unwrap();
        assert_eq!(empty.strategy, GitStrategy::Empty);
        // The last definition wins.
        let later = vars(&[("GIT_DEPTH", "5"), ("GIT_DEPTH", "0")]);
        assert_eq!(plan(&job(true), &later, None).unwrap().depth, 0);
    }

    #[test]
    fn bad_values_are_named() {
        for (k, v) in [
            ("GIT_STRATEGY", "rsync"),
            ("GIT_DEPTH", "-1"),
            ("GIT_CHECKOUT", "maybe"),
            ("GIT_SUBMODULE_STRATEGY", "deep"),
        ] {
            let err = plan(&job(true), &vars(&[(k, v)]), None).unwrap_err();
            assert!(err.to_string().contains(k), "{err}");
            assert!(err.to_string().contains(v), "{err}");
        }
    }

    #[test]
    fn clone_url_replaces_the_host() {
        let p = plan(
            &job(true),
            &vars(&[("CI_PROJECT_PATH", "group/proj")]),
            Some("http://gitlab.internal:8080/prefix/"),
        )
        .unwrap();
        assert_eq!(
            p.repo_url,
            "http://gitlab.internal:8080/prefix/group/proj.git"
        );
        let p = plan(&job(true), &[], Some("http://10.0.0.1")).unwrap();
        assert_eq!(p.repo_url, "http://10.0.0.1/group/proj.git");
        assert!(matches!(
            plan(&job(true), &[], Some("ssh://x")),
            Err(PlanError::InvalidCloneUrl(_))
        ));
    }

    #[test]
    fn tag_refspecs_and_payload_refspecs() {
        assert_eq!(
            default_refspecs("v1", "tag"),
            vec!["+refs/tags/v1:refs/tags/v1"]
        );
        let mut j = job(true);
        j.git_info.refspecs = vec!["+refs/pipelines/7:refs/pipelines/7".into()];
        assert_eq!(
            plan(&j, &[], None).unwrap().refspecs,
            vec!["+refs/pipelines/7:refs/pipelines/7"]
        );
    }

    #[test]
    fn credentials_are_stripped_from_text() {
        assert_eq!(
            strip_url_credentials(
                "fatal: unable to access 'https://gitlab-ci-token:s3cret@host/x.git/': 401"
            ),
            "fatal: unable to access 'https://host/x.git/': 401"
        );
        assert_eq!(
            strip_url_credentials("http://a@b:1 and https://u:p@c/d"),
            "http://b:1 and https://c/d"
        );
        assert_eq!(
            url_origin("https://u:p@h:3/x").as_deref(),
            Some("https://h:3")
        );
    }
}
