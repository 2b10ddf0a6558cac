//! Running the host `git` CLI for a job's sources.
//!
//! Credentials: the job token reaches git only through the environment variable
//! [`TOKEN_ENV`] of the git process, read by an inline credential helper scoped to the
//! repository's origin (`-c credential.<origin>.helper=!f() {...}` holds no secret). Remote
//! URLs never carry credentials, git runs with `GIT_TERMINAL_PROMPT=0` and without the
//! user's or system's git config, and every line of git output is stripped of URL
//! credentials and of the token before it reaches the trace or an error.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use secrecy::{ExposeSecret, SecretString};
use tokio::process::Command;

use super::SourcesError;
use super::plan::{GitStrategy, SourcesPlan, SubmoduleStrategy, strip_url_credentials, url_origin};
use super::tracked::TrackedFiles;
use crate::trace::TraceSink;

/// The environment variable holding the job token for the credential helper.
pub const TOKEN_ENV: &str = "DROVER_GIT_TOKEN";

/// Trace section name gitlab-runner uses for this phase.
pub const SECTION: &str = "get_sources";

/// What [`GitSource::get_sources`] left in the work dir.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SourcesOutcome {
    /// `GIT_STRATEGY=none`: nothing was touched; the executor must not replace the project
    /// directory.
    Untouched,
    /// `GIT_STRATEGY=empty`: the work dir is empty.
    Empty,
    /// The work dir holds the repository at the job's commit (unless `GIT_CHECKOUT=false`).
    Repository,
}

/// Runs the host `git` binary.
#[derive(Debug, Clone)]
pub struct GitSource {
    git: PathBuf,
    /// PEM bundle trusted for https remotes (the runner's `tls-ca-file`).
    ca_file: Option<PathBuf>,
}

impl Default for GitSource {
    fn default() -> Self {
        GitSource {
            git: PathBuf::from("git"),
            ca_file: None,
        }
    }
}

/// Colored lines as gitlab-runner prints them.
fn green(text: &str) -> String {
    format!("\x1b[32;1m{text}\x1b[0;m")
}

fn sanitize(text: &str, token: &str) -> String {
    let stripped = strip_url_credentials(text);
    if token.is_empty() {
        stripped
    } else {
        stripped.replace(token, "[MASKED]")
    }
}

impl GitSource {
    /// Uses `git` at `binary` (a path, or a name looked up in `PATH`).
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        GitSource {
            git: binary.into(),
            ca_file: None,
        }
    }

    /// Trusts the CA certificates in `ca_file` (PEM) for https remotes, like gitlab-runner
    /// does with the runner's `tls-ca-file`.
    pub fn with_ca_file(mut self, ca_file: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(ca_file.into());
        self
    }

    /// Brings `work_dir` (kept per runner, project and slot, see [`super::host_work_dir`]) to
    /// the state `plan` asks for, writing gitlab-runner-like progress to `trace` inside a
    /// `get_sources` section; host paths in git's output are shown as `project_dir`
    /// (`CI_PROJECT_DIR`). Dropping the future kills a running git.
    pub async fn get_sources(
        &self,
        plan: &SourcesPlan,
        token: &SecretString,
        work_dir: &Path,
        project_dir: &str,
        trace: &TraceSink,
    ) -> Result<SourcesOutcome, SourcesError> {
        trace.section_start(SECTION, "Getting source from Git repository");
        let result = self
            .run_plan(plan, token, work_dir, project_dir, trace)
            .await;
        if let Err(e) = &result {
            trace.write_line(&format!("\x1b[31;1mERROR: {e}\x1b[0;m"));
        }
        trace.section_end(SECTION);
        result
    }

    async fn run_plan(
        &self,
        plan: &SourcesPlan,
        token: &SecretString,
        work_dir: &Path,
        project_dir: &str,
        trace: &TraceSink,
    ) -> Result<SourcesOutcome, SourcesError> {
        match plan.strategy {
            GitStrategy::None => {
                trace.write_line(&green("Skipping Git repository setup"));
                return Ok(SourcesOutcome::Untouched);
            }
            GitStrategy::Empty => {
                trace.write_line(&green(
                    "Skipping Git repository setup and creating an empty build directory",
                ));
                remove_dir(work_dir).await?;
                create_dir(work_dir).await?;
                return Ok(SourcesOutcome::Empty);
            }
            GitStrategy::Clone => remove_dir(work_dir).await?,
            GitStrategy::Fetch => {}
        }
        create_dir(work_dir).await?;
        let origin = url_origin(&plan.repo_url).ok_or_else(|| {
            SourcesError::Plan(super::PlanError::InvalidRepoUrl(plan.repo_url.clone()))
        })?;
        let git = GitRun {
            git: &self.git,
            ca_file: self.ca_file.as_deref(),
            dir: work_dir,
            display_dir: project_dir,
            token,
            origin: &origin,
            trace,
        };

        if plan.depth > 0 {
            trace.write_line(&green(&format!(
                "Fetching changes with git depth set to {}...",
                plan.depth
            )));
        } else {
            trace.write_line(&green("Fetching changes..."));
        }
        let git_dir = work_dir.join(".git");
        for lock in [
            "index.lock",
            "shallow.lock",
            "HEAD.lock",
            "hooks/post-checkout",
        ] {
            let path = git_dir.join(lock);
            if tokio::fs::symlink_metadata(&path).await.is_ok() {
                tokio::fs::remove_file(&path)
                    .await
                    .map_err(|e| SourcesError::io(&path, e))?;
            }
        }
        if tokio::fs::metadata(&git_dir).await.is_ok() {
            trace.write_line("Reusing existing Git repository");
            git.run(
                "set remote",
                &["remote", "set-url", "origin", &plan.repo_url],
            )
            .await?;
        } else {
            git.run("init", &["-c", "init.defaultBranch=main", "init", "-q"])
                .await?;
            trace.write_line("Created fresh repository.");
            git.run("add remote", &["remote", "add", "origin", &plan.repo_url])
                .await?;
        }

        let mut fetch: Vec<String> = vec!["fetch".into(), "origin".into()];
        fetch.extend(plan.refspecs.iter().cloned());
        if plan.depth > 0 {
            fetch.push("--depth".into());
            fetch.push(plan.depth.to_string());
        } else if tokio::fs::metadata(git_dir.join("shallow")).await.is_ok() {
            fetch.push("--unshallow".into());
        }
        fetch.extend(plan.fetch_extra_flags.iter().cloned());
        git.run_owned("fetch", &fetch).await?;

        if plan.checkout {
            let short: String = plan.sha.chars().take(8).collect();
            trace.write_line(&green(&format!(
                "Checking out {short} as detached HEAD (ref is {})...",
                plan.ref_name
            )));
            git.run(
                "checkout",
                &[
                    "-c",
                    "advice.detachedHead=false",
                    "checkout",
                    "-f",
                    "-q",
                    &plan.sha,
                ],
            )
            .await?;
            if !plan.clean_flags.is_empty() {
                let mut clean = vec!["clean".to_string()];
                clean.extend(plan.clean_flags.iter().cloned());
                git.run_owned("clean", &clean).await?;
            }
        } else {
            trace.write_line(&green("Skipping Git checkout"));
        }

        match plan.submodules {
            SubmoduleStrategy::None => trace.write_line(&green("Skipping Git submodules setup")),
            strategy => {
                let recursive = strategy == SubmoduleStrategy::Recursive;
                trace.write_line(&green(if recursive {
                    "Updating/initializing submodules recursively..."
                } else {
                    "Updating/initializing submodules..."
                }));
                let rec: &[&str] = if recursive { &["--recursive"] } else { &[] };
                let with = |base: &[&str]| -> Vec<String> {
                    base.iter().chain(rec).map(|s| s.to_string()).collect()
                };
                git.run_owned("submodule sync", &with(&["submodule", "sync"]))
                    .await?;
                git.run_owned(
                    "submodule update",
                    &with(&["submodule", "update", "--init", "--force"]),
                )
                .await?;
                if !plan.clean_flags.is_empty() {
                    let mut clean = with(&["submodule", "foreach"]);
                    clean.push("git".into());
                    clean.push("clean".into());
                    clean.extend(plan.clean_flags.iter().cloned());
                    git.run_owned("submodule clean", &clean).await?;
                }
            }
        }
        Ok(SourcesOutcome::Repository)
    }

    /// The tracked files of the checkout in `work_dir` (for `untracked: true`).
    pub async fn tracked_files(&self, work_dir: &Path) -> Result<TrackedFiles, SourcesError> {
        let output = Command::new(&self.git)
            .args(["ls-files", "--stage", "-z"])
            .current_dir(work_dir)
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| SourcesError::Spawn {
                git: self.git.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(SourcesError::Git {
                step: "ls-files".to_string(),
                status: output.status.to_string(),
                output: String::from_utf8_lossy(&output.stderr).trim().to_string(),
            });
        }
        Ok(TrackedFiles::parse_ls_files_stage(&output.stdout))
    }
}

/// One job's git invocations share these.
struct GitRun<'a> {
    git: &'a Path,
    ca_file: Option<&'a Path>,
    dir: &'a Path,
    /// What the job calls `dir` (`CI_PROJECT_DIR`): host paths in git's output are shown so.
    display_dir: &'a str,
    token: &'a SecretString,
    origin: &'a str,
    trace: &'a TraceSink,
}

impl GitRun<'_> {
    async fn run(&self, step: &str, args: &[&str]) -> Result<(), SourcesError> {
        let owned: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        self.run_owned(step, &owned).await
    }

    async fn run_owned(&self, step: &str, args: &[String]) -> Result<(), SourcesError> {
        let helper = format!(
            "credential.{}.helper=!f() {{ test \"$1\" = get || exit 0; echo username=gitlab-ci-token; echo \"password=${TOKEN_ENV}\"; }}; f",
            self.origin
        );
        // stdout and stderr share one pipe so git's lines keep their order.
        let spawn_err = |source| SourcesError::Spawn {
            git: self.git.display().to_string(),
            source,
        };
        let (mut reader, writer) = std::io::pipe().map_err(spawn_err)?;
        let writer_err = writer.try_clone().map_err(spawn_err)?;
        let mut cmd = Command::new(self.git);
        cmd.arg("-c")
            .arg("credential.helper=")
            .arg("-c")
            .arg(helper)
            // Background gc would hold the output pipe open after git exits.
            .args([
                "-c",
                "gc.autoDetach=false",
                "-c",
                "maintenance.autoDetach=false",
            ]);
        if let Some(ca) = self.ca_file {
            cmd.arg("-c")
                .arg(format!("http.sslCAInfo={}", ca.display()));
        }
        cmd.args(args)
            .current_dir(self.dir)
            .env(TOKEN_ENV, self.token.expose_secret())
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("LC_ALL", "C")
            .env_remove("GIT_ASKPASS")
            .env_remove("SSH_ASKPASS")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .stdin(Stdio::null())
            .stdout(writer)
            .stderr(writer_err)
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(spawn_err)?;
        // Drop our copies of the write end, or the reader never sees EOF.
        drop(cmd);
        let read = tokio::task::spawn_blocking(move || {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut buf).map(|_| buf)
        });
        let status = child.wait().await.map_err(spawn_err)?;
        let bytes = read
            .await
            .map_err(|e| SourcesError::Task(e.to_string()))?
            .map_err(spawn_err)?;
        let token = self.token.expose_secret();
        let text = String::from_utf8_lossy(&bytes);
        let mut clean = sanitize(&text, token);
        if let Some(host_dir) = self.dir.to_str().filter(|d| !d.is_empty()) {
            clean = clean.replace(host_dir, self.display_dir);
        }
        for line in clean.lines().filter(|l| !l.trim().is_empty()) {
            self.trace.write_line(line);
        }
        if status.success() {
            return Ok(());
        }
        let tail: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
        let start = tail.len().saturating_sub(5);
        Err(SourcesError::Git {
            step: step.to_string(),
            status: status.to_string(),
            output: tail[start..].join("; "),
        })
    }
}

async fn remove_dir(dir: &Path) -> Result<(), SourcesError> {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(SourcesError::io(dir, e)),
    }
}

async fn create_dir(dir: &Path) -> Result<(), SourcesError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| SourcesError::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_removes_token_and_url_credentials() {
        let s = sanitize(
            "remote: https://gitlab-ci-token:abc123@h/x.git failed; token abc123",
            "abc123",
        );
        assert_eq!(s, "remote: https://h/x.git failed; token [MASKED]");
    }
}
