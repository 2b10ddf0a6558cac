//! Which image a job runs in and how it gets there: `allowed_images`, pull policies
//! (`always`, `if-not-present`, `never`, a list tried in order) and registry credentials.

use drover_proto::spec::{DockerConfig, PullPolicy};

use super::ExecutorError;
use super::api::ContainerApi;
use super::spec::RegistryAuth;
use crate::trace::TraceSink;
use drover_gitlab::types::{Credentials, JobResponse};

/// The image name for the job: the job's `image.name`, else `[runners.docker] image`.
pub fn image_name(job: &JobResponse, docker: &DockerConfig) -> Result<String, ExecutorError> {
    job.image
        .as_ref()
        .map(|i| i.name.trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| docker.image.clone().filter(|n| !n.trim().is_empty()))
        .ok_or_else(|| {
            ExecutorError::Image(
                "no image: the job names none and [runners.docker] image is not set".to_string(),
            )
        })
}

/// Checks `image` against `allowed_images` (empty = all allowed).
pub fn check_allowed(image: &str, allowed: &[String]) -> Result<(), ExecutorError> {
    if allowed.is_empty() || allowed.iter().any(|pat| glob_match(pat, image)) {
        return Ok(());
    }
    Err(ExecutorError::Image(format!(
        "the \"{image}\" image is not present on list of allowed images: {}",
        allowed.join(", ")
    )))
}

/// Glob as gitlab-runner's `allowed_images`: `*` matches within a path segment, `**` across
/// segments, `?` one non-`/` character.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match p {
            [] => t.is_empty(),
            [b'*', b'*', rest @ ..] => (0..=t.len()).any(|i| go(rest, &t[i..])),
            [b'*', rest @ ..] => {
                let max = t.iter().position(|c| *c == b'/').unwrap_or(t.len());
                (0..=max).any(|i| go(rest, &t[i..]))
            }
            [b'?', rest @ ..] => matches!(t, [c, ..] if *c != b'/') && go(rest, &t[1..]),
            [c, rest @ ..] => matches!(t, [d, ..] if d == c) && go(rest, &t[1..]),
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

/// A pull policy's name in `config.toml`.
pub fn policy_name(p: PullPolicy) -> &'static str {
    match p {
        PullPolicy::Always => "always",
        PullPolicy::IfNotPresent => "if-not-present",
        PullPolicy::Never => "never",
    }
}

/// Formats policies as gitlab-runner does: `[always if-not-present]`.
pub fn policies_text(p: &[PullPolicy]) -> String {
    format!(
        "[{}]",
        p.iter()
            .map(|p| policy_name(*p))
            .collect::<Vec<_>>()
            .join(" ")
    )
}

/// The pull policies to try, in order. The runner's `pull_policy` defaults to `always`
/// (gitlab-runner's default). A job's `image.pull_policy` overrides it but must be within
/// `allowed_pull_policies` (which default to the runner's policies).
pub fn pull_policies(
    docker: &DockerConfig,
    job_policies: &[String],
) -> Result<Vec<PullPolicy>, ExecutorError> {
    let runner = docker
        .pull_policy
        .as_ref()
        .map(|p| p.policies())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| vec![PullPolicy::Always]);
    if job_policies.is_empty() {
        return Ok(runner);
    }
    let mut job = Vec::new();
    for s in job_policies {
        let p = match s.as_str() {
            "always" => PullPolicy::Always,
            "if-not-present" => PullPolicy::IfNotPresent,
            "never" => PullPolicy::Never,
            other => {
                return Err(ExecutorError::Image(format!(
                    "unknown pull_policy {other:?} in the job (use always, if-not-present or never)"
                )));
            }
        };
        job.push(p);
    }
    let allowed = if docker.allowed_pull_policies.is_empty() {
        runner
    } else {
        docker.allowed_pull_policies.clone()
    };
    if let Some(bad) = job.iter().find(|p| !allowed.contains(p)) {
        return Err(ExecutorError::Image(format!(
            "pull_policy ({}) defined in GitLab pipeline config is not one of the allowed_pull_policies ({})",
            policy_name(*bad),
            policies_text(&allowed)
        )));
    }
    Ok(job)
}

/// The registry host of an image reference (`docker.io` when it names none).
pub fn registry_host(image: &str) -> &str {
    match image.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            first
        }
        _ => "docker.io",
    }
}

/// Registry credentials from the job payload for `image`'s registry.
pub fn credentials_for(image: &str, creds: &[Credentials]) -> Option<RegistryAuth> {
    let host = registry_host(image);
    let same = |url: &str| {
        let u = url
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .trim_end_matches('/');
        u == host
            || (host == "docker.io"
                && matches!(
                    u,
                    "index.docker.io" | "registry-1.docker.io" | "index.docker.io/v1"
                ))
    };
    creds
        .iter()
        .find(|c| c.kind == "registry" && same(&c.url))
        .map(|c| RegistryAuth {
            username: c.username.clone(),
            password: c.password.clone(),
            server: c.url.clone(),
        })
}

/// Makes `image` available by trying `policies` in order; returns its id. Writes what it
/// does to `trace`. The error text is the trace line users see.
#[cfg(test)]
pub async fn ensure_image(
    api: &dyn ContainerApi,
    image: &str,
    policies: &[PullPolicy],
    credentials: Option<RegistryAuth>,
    trace: &TraceSink,
) -> Result<String, ExecutorError> {
    ensure_image_pulled(api, image, policies, credentials, trace)
        .await
        .map(|(id, _)| id)
}

/// [`ensure_image`], also saying whether the image was pulled (for the disk ledger: only
/// images the agent pulled are collected).
pub async fn ensure_image_pulled(
    api: &dyn ContainerApi,
    image: &str,
    policies: &[PullPolicy],
    credentials: Option<RegistryAuth>,
    trace: &TraceSink,
) -> Result<(String, bool), ExecutorError> {
    let mut last_err = String::new();
    for (i, policy) in policies.iter().enumerate() {
        let pulled = |r: Result<String, String>| r.map(|id| (id, true));
        let attempt: Result<(String, bool), String> = match policy {
            PullPolicy::Never | PullPolicy::IfNotPresent => match api.image_id(image).await? {
                Some(id) => {
                    trace.write_line(&format!(
                        "Using locally found image version due to \"{}\" pull policy",
                        policy_name(*policy)
                    ));
                    Ok((id, false))
                }
                None if *policy == PullPolicy::Never => Err(format!(
                    "image \"{image}\" is not present locally and pull_policy is \"never\""
                )),
                None => pulled(pull(api, image, credentials.clone(), trace).await),
            },
            PullPolicy::Always => pulled(pull(api, image, credentials.clone(), trace).await),
        };
        match attempt {
            Ok(found) => return Ok(found),
            Err(e) => {
                if i + 1 < policies.len() {
                    trace.write_line(&format!(
                        "\x1b[0;33mWARNING: Failed to pull image with policy \"{}\": {e}\x1b[0;m",
                        policy_name(*policy)
                    ));
                }
                last_err = e;
            }
        }
    }
    if policies.len() == 1 && policies[0] == PullPolicy::Never {
        return Err(ExecutorError::Image(last_err));
    }
    Err(ExecutorError::Image(format!(
        "failed to pull image \"{image}\" with specified policies {}: {last_err}",
        policies_text(policies)
    )))
}

async fn pull(
    api: &dyn ContainerApi,
    image: &str,
    credentials: Option<RegistryAuth>,
    trace: &TraceSink,
) -> Result<String, String> {
    trace.write_line(&format!("Pulling docker image {image} ..."));
    let progress = |line: String| tracing::debug!(image, "pull: {line}");
    api.pull(image, credentials, &progress)
        .await
        .map_err(|e| e.to_string())?;
    match api.image_id(image).await {
        Ok(Some(id)) => Ok(id),
        Ok(None) => Err(format!("image \"{image}\" is not present after pulling it")),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::executor::fake::FakeApi;

    fn docker(t: &str) -> DockerConfig {
        toml::from_str(t).expect("docker config")
    }

    #[test]
    fn glob_matches_like_gitlab_runner() {
        assert!(glob_match("busybox:*", "busybox:latest"));
        assert!(glob_match("ruby:*", "ruby:3.3"));
        assert!(!glob_match("ruby:*", "python:3"));
        assert!(glob_match(
            "registry.example.com/*/*",
            "registry.example.com/group/img:1"
        ));
        assert!(!glob_match(
            "registry.example.com/*",
            "registry.example.com/group/img:1"
        ));
        assert!(glob_match(
            "registry.example.com/**",
            "registry.example.com/group/sub/img:1"
        ));
        assert!(glob_match("alpine:3.1?", "alpine:3.19"));
        assert!(!glob_match("alpine:3.1?", "alpine:3.1"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
    }

    #[test]
    fn allowed_images_gives_a_clear_message() {
        assert!(check_allowed("anything", &[]).is_ok());
        let e = check_allowed("python:3", &["ruby:*".to_string(), "alpine:*".to_string()])
            .expect_err("not allowed")
            .to_string();
        assert!(
            e.contains("\"python:3\"") && e.contains("ruby:*, alpine:*"),
            "{e}"
        );
    }

    #[test]
    fn image_name_falls_back_to_the_runner_default() {
        let job: JobResponse =
            serde_json::from_value(serde_json::json!({"id": 1, "token": "t"})).expect("job");
        assert_eq!(
            image_name(&job, &docker(r#"image = "alpine:3""#)).expect("img"),
            "alpine:3"
        );
        assert!(image_name(&job, &docker("")).is_err());
        let job: JobResponse = serde_json::from_value(
            serde_json::json!({"id": 1, "token": "t", "image": {"name": "busybox"}}),
        )
        .expect("job");
        assert_eq!(
            image_name(&job, &docker(r#"image = "alpine:3""#)).expect("img"),
            "busybox"
        );
    }

    #[test]
    fn pull_policy_defaults_and_job_overrides() {
        use PullPolicy::*;
        assert_eq!(pull_policies(&docker(""), &[]).expect("p"), vec![Always]);
        assert_eq!(
            pull_policies(&docker(r#"pull_policy = "never""#), &[]).expect("p"),
            vec![Never]
        );
        assert_eq!(
            pull_policies(
                &docker(r#"pull_policy = ["always", "if-not-present"]"#),
                &[]
            )
            .expect("p"),
            vec![Always, IfNotPresent]
        );
        // The job may pick among the runner's own policies...
        assert_eq!(
            pull_policies(
                &docker(r#"pull_policy = ["always", "if-not-present"]"#),
                &["if-not-present".to_string()]
            )
            .expect("p"),
            vec![IfNotPresent]
        );
        // ...or among allowed_pull_policies when set.
        assert_eq!(
            pull_policies(
                &docker(
                    r#"pull_policy = "always"
                    allowed_pull_policies = ["never"]"#
                ),
                &["never".to_string()]
            )
            .expect("p"),
            vec![Never]
        );
        let e = pull_policies(
            &docker(r#"pull_policy = "if-not-present""#),
            &["always".to_string()],
        )
        .expect_err("not allowed")
        .to_string();
        assert!(
            e.contains("pull_policy (always)") && e.contains("[if-not-present]"),
            "{e}"
        );
        assert!(pull_policies(&docker(""), &["sometimes".to_string()]).is_err());
    }

    #[test]
    fn credentials_match_the_image_registry() {
        let creds: Vec<Credentials> = serde_json::from_value(serde_json::json!([
            {"type": "registry", "url": "registry.example.com", "username": "u", "password": "p"},
            {"type": "registry", "url": "https://index.docker.io/v1/", "username": "hub", "password": "h"}
        ]))
        .expect("creds");
        let c = credentials_for("registry.example.com/g/img:1", &creds).expect("creds");
        assert_eq!(c.username, "u");
        assert_eq!(secrecy::ExposeSecret::expose_secret(&c.password), "p");
        assert_eq!(
            credentials_for("busybox", &creds).expect("hub").username,
            "hub"
        );
        assert!(credentials_for("other.example.com/x", &creds).is_none());
        assert_eq!(registry_host("localhost:5000/x"), "localhost:5000");
        assert_eq!(registry_host("group/x"), "docker.io");
    }

    #[tokio::test]
    async fn never_uses_a_local_image_or_fails_clearly() {
        let api = FakeApi::default();
        api.add_image("local:1", "sha256:abc");
        let trace = TraceSink::new();
        let id = ensure_image(&api, "local:1", &[PullPolicy::Never], None, &trace)
            .await
            .expect("id");
        assert_eq!(id, "sha256:abc");
        let e = ensure_image(&api, "missing:1", &[PullPolicy::Never], None, &trace)
            .await
            .expect_err("missing")
            .to_string();
        assert_eq!(
            e,
            "image \"missing:1\" is not present locally and pull_policy is \"never\""
        );
        assert_eq!(api.pulls(), Vec::<String>::new());
    }

    #[tokio::test]
    async fn always_pulls_and_a_list_falls_back_in_order() {
        let api = FakeApi::default();
        api.add_image("local:1", "sha256:abc");
        api.fail_pulls(true);
        let trace = TraceSink::new();
        let e = ensure_image(&api, "local:1", &[PullPolicy::Always], None, &trace)
            .await
            .expect_err("pull fails")
            .to_string();
        assert!(
            e.starts_with("failed to pull image \"local:1\" with specified policies [always]:"),
            "{e}"
        );
        let id = ensure_image(
            &api,
            "local:1",
            &[PullPolicy::Always, PullPolicy::IfNotPresent],
            None,
            &trace,
        )
        .await
        .expect("falls back");
        assert_eq!(id, "sha256:abc");
        let t = String::from_utf8_lossy(&trace.snapshot()).into_owned();
        assert!(
            t.contains("WARNING: Failed to pull image with policy \"always\""),
            "{t}"
        );
        assert_eq!(api.pulls().len(), 2);
    }

    #[tokio::test]
    async fn if_not_present_pulls_only_when_missing() {
        let api = FakeApi::default();
        api.add_image("local:1", "sha256:abc");
        let trace = TraceSink::new();
        ensure_image(&api, "local:1", &[PullPolicy::IfNotPresent], None, &trace)
            .await
            .expect("local");
        assert!(api.pulls().is_empty());
        let id = ensure_image(&api, "remote:1", &[PullPolicy::IfNotPresent], None, &trace)
            .await
            .expect("pulled");
        assert_eq!(api.pulls(), vec!["remote:1".to_string()]);
        assert!(id.starts_with("sha256:"));
    }
}
