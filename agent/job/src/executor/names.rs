//! Names and labels of the Docker objects a job creates.
//!
//! Invariant: every object carries `com.drover.agent=<agent id>`, so an agent only ever
//! cleans up its own objects; container names include the job id, so a restarted agent
//! never collides with a leftover of its previous life.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

/// Label: the agent that created the object.
pub const LABEL_AGENT: &str = "com.drover.agent";
/// Label: the runner (`[[runners]] name`).
pub const LABEL_RUNNER: &str = "com.drover.runner";
/// Label: the GitLab job id.
pub const LABEL_JOB: &str = "com.drover.job";
/// Label: the GitLab project id.
pub const LABEL_PROJECT: &str = "com.drover.project";
/// Label: what the object is for: `build`, `after-script`, `get-sources`, `tmp` (per-job
/// volume for file variables), `builds` (builds volume kept between jobs), `service`,
/// `network` (the per-job network).
pub const LABEL_KIND: &str = "com.drover.kind";

/// Naming for one job.
#[derive(Debug, Clone)]
pub struct JobNames {
    pub agent_id: String,
    pub runner_name: String,
    pub short_token: String,
    pub project_id: i64,
    pub slot: u32,
    pub job_id: i64,
}

impl JobNames {
    fn prefix(&self) -> String {
        format!(
            "runner-{}-project-{}-concurrent-{}",
            sanitize(&self.short_token),
            self.project_id,
            self.slot
        )
    }

    /// `runner-<short>-project-<pid>-concurrent-<slot>-<jobid>-<kind>`.
    pub fn container(&self, kind: &str) -> String {
        format!("{}-{}-{}", self.prefix(), self.job_id, sanitize(kind))
    }

    /// The builds volume, kept between jobs of this runner, project and slot:
    /// `runner-<short>-project-<pid>-concurrent-<slot>-cache-<hash of builds_dir>`.
    pub fn builds_volume(&self, builds_dir: &str) -> String {
        let hash = hex::encode(Sha256::digest(builds_dir.as_bytes()));
        format!("{}-cache-{}", self.prefix(), &hash[..16])
    }

    /// The per-job network for services: `runner-<short>-project-<pid>-concurrent-<slot>-<jobid>-network`.
    pub fn network(&self) -> String {
        format!("{}-{}-network", self.prefix(), self.job_id)
    }

    /// The per-job volume holding file variables, removed when the job ends.
    pub fn tmp_volume(&self) -> String {
        format!("{}-{}-tmp", self.prefix(), self.job_id)
    }

    /// Labels for an object of `kind`. `job` is false for objects outliving the job.
    pub fn labels(&self, kind: &str, job: bool) -> HashMap<String, String> {
        let mut l = HashMap::new();
        l.insert(LABEL_AGENT.to_string(), self.agent_id.clone());
        l.insert(LABEL_RUNNER.to_string(), self.runner_name.clone());
        l.insert(LABEL_PROJECT.to_string(), self.project_id.to_string());
        l.insert(LABEL_KIND.to_string(), kind.to_string());
        if job {
            l.insert(LABEL_JOB.to_string(), self.job_id.to_string());
        }
        l
    }
}

/// Longest name [`dir_name`] keeps as it is.
const MAX_KEPT_DIR_NAME: usize = 63;
/// Longest readable part of a derived directory name.
const MAX_SLUG: usize = 40;

/// The directory name for a runner on the host (caches `<root>/<dir>/project-<id>/...`, git
/// work dirs `<root>/<dir>/project-<id>/slot-<n>`), from its name or short token. Runner
/// names are any text (gitlab-runner's `name` is a free description): a name that is
/// already safe (1 to 63 of `[A-Za-z0-9_-]`) is kept as it is; any other becomes
/// `<slug>.<12 hex of its SHA-256>`: the slug (other characters as `_`, at most 40) keeps it
/// readable, the hash keeps two names apart, and the dot, which a kept name never holds,
/// keeps a derived name from equalling a kept one. Deterministic, so a restarted agent
/// finds its caches again; never `.`, `..`, empty, or holding a `/`.
pub fn dir_name(name: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
    if !name.is_empty() && name.len() <= MAX_KEPT_DIR_NAME && name.chars().all(safe) {
        return name.to_string();
    }
    let slug: String = name
        .chars()
        .take(MAX_SLUG)
        .map(|c| if safe(c) { c } else { '_' })
        .collect();
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    let slug = if slug.is_empty() { "runner" } else { &slug };
    format!("{slug}.{}", &hash[..12])
}

/// Keeps characters Docker accepts in names (`[a-zA-Z0-9_.-]`).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> JobNames {
        JobNames {
            agent_id: "agent-1".into(),
            runner_name: "r1".into(),
            short_token: "glrt-abc".into(),
            project_id: 7,
            slot: 2,
            job_id: 99,
        }
    }

    #[test]
    fn names_follow_gitlab_runner_with_the_job_id() {
        let n = names();
        assert_eq!(
            n.container("build"),
            "runner-glrt-abc-project-7-concurrent-2-99-build"
        );
        assert_eq!(
            n.tmp_volume(),
            "runner-glrt-abc-project-7-concurrent-2-99-tmp"
        );
        let v = n.builds_volume("/builds");
        assert!(
            v.starts_with("runner-glrt-abc-project-7-concurrent-2-cache-"),
            "{v}"
        );
        assert_ne!(v, n.builds_volume("/other"));
        assert_eq!(
            n.container("after_script/x"),
            "runner-glrt-abc-project-7-concurrent-2-99-after_script-x"
        );
    }

    #[test]
    fn dir_names_are_safe_distinct_and_stable() {
        // Safe names stay as they were (existing caches are found again).
        assert_eq!(dir_name("lab-docker"), "lab-docker");
        assert_eq!(dir_name("glrt-abc_1"), "glrt-abc_1");
        let names = [
            "gitlab runner for ci",
            "gitlab_runner_for_ci.",
            "gitlab/runner/for/ci",
            "Bob's runner: build/test (prod) #2 — 本番 🚀",
            "本番",
            "日本",
            "..",
            ".",
            "",
            "../../etc/passwd",
            "a.b",
            &"x".repeat(64),
            &"x".repeat(255),
        ];
        let mut seen = std::collections::HashSet::new();
        for n in names {
            let d = dir_name(n);
            assert!(seen.insert(d.clone()), "{n:?} and another name give {d:?}");
            assert_eq!(d, dir_name(n), "stable");
            assert!(
                d.len() <= 53
                    && !d.starts_with('.')
                    && d.chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "{n:?} -> {d:?}"
            );
            assert!(d.contains('.'), "derived names hold a dot: {d:?}");
        }
        assert!(dir_name("gitlab runner for ci").starts_with("gitlab_runner_for_ci."));
        // A kept name never equals a derived one: it holds no dot.
        assert!(!seen.contains(&dir_name("gitlab_runner_for_ci")));
    }

    #[test]
    fn labels_name_agent_runner_job_project_kind() {
        let l = names().labels("build", true);
        assert_eq!(l[LABEL_AGENT], "agent-1");
        assert_eq!(l[LABEL_RUNNER], "r1");
        assert_eq!(l[LABEL_JOB], "99");
        assert_eq!(l[LABEL_PROJECT], "7");
        assert_eq!(l[LABEL_KIND], "build");
        assert!(!names().labels("builds", false).contains_key(LABEL_JOB));
    }
}
