//! Shared by the `standalone_*` end-to-end tests: starts the real `drover-agent run
//! --config` process and kills it on drop.

#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The real `drover-agent` binary (built on first use; `DROVER_AGENT_BIN` overrides).
pub fn agent_binary() -> PathBuf {
    drover_tests::harness::agent_bin()
}

/// A running `drover-agent run --config`; killed on drop.
pub struct Agent {
    child: Option<Child>,
    stderr: Arc<Mutex<Vec<u8>>>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Agent {
    /// Writes `config_toml` to a fresh temp dir and starts the agent on it.
    pub fn start(config_toml: &str) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml).expect("write config.toml");
        let (child, stderr) = Self::spawn(&config, dir.path());
        Agent {
            child: Some(child),
            stderr,
            dir,
            config,
        }
    }

    /// Starts the agent again on the same config and state dir (after it died); stderr is
    /// appended to what was collected before.
    pub fn respawn(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let (child, stderr) = Self::spawn(&self.config, self.dir.path());
        let before = std::mem::take(&mut *self.stderr.lock().unwrap());
        stderr.lock().unwrap().splice(0..0, before);
        self.child = Some(child);
        self.stderr = stderr;
    }

    fn spawn(config: &Path, dir: &Path) -> (Child, Arc<Mutex<Vec<u8>>>) {
        let mut child = Command::new(agent_binary())
            .arg("run")
            .arg("--config")
            .arg(config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .env("DROVER_LOG", "info,drover_agent=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start drover-agent");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let mut pipe = child.stderr.take().expect("stderr piped");
        let sink = stderr.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        (child, stderr)
    }

    /// Everything the agent wrote to stderr so far.
    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().map(|c| c.id() as i32).unwrap_or(0)
    }

    /// Sends `signal` (e.g. `libc`-free: "TERM", "QUIT", "HUP") with `kill`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits for the process to exit; `None` on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                // Let the reader thread drain the pipe.
                std::thread::sleep(Duration::from_millis(100));
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Agent {
    /// Kills the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `drover-agent run --config` on `config_toml` to completion (for configs that must be
/// refused); returns (exit status, stderr).
pub fn run_to_exit(
    config_toml: &str,
    timeout: Duration,
) -> (std::process::ExitStatus, String, PathBuf) {
    let mut a = Agent::start(config_toml);
    let status = a
        .wait_exit(timeout)
        .unwrap_or_else(|| panic!("drover-agent did not exit; stderr:\n{}", a.stderr()));
    let config = a.config.clone();
    (status, a.stderr(), config)
}

/// One end-to-end setup: a fake GitLab with one runner token, the busybox image, and a
/// running agent serving a config.toml that points at the fake.
pub struct E2e {
    pub gitlab: drover_tests::fake_gitlab::FakeGitLab,
    pub agent: Agent,
    pub image: String,
    pub docker: bollard::Docker,
    pub token: String,
}

/// Starts everything for test `name`; `None` (with the reason printed) when Docker or the
/// busybox image is unavailable. `docker_toml` is appended to `[runners.docker]`.
pub async fn start(name: &str, concurrent: u32, docker_toml: &str) -> Option<E2e> {
    let (docker, image) = drover_tests::images::docker_and_busybox(name).await?;
    let gitlab = drover_tests::fake_gitlab::FakeGitLab::start().await;
    gitlab.set_trace_update_interval(1);
    let token = format!("glrt-{name}-{:08x}", rand::random::<u32>());
    gitlab.add_runner(&token);
    let config = format!(
        "concurrent = {concurrent}\ncheck_interval = 1\nlog_level = \"info\"\n\n\
         [[runners]]\n  name = \"e2e-{name}\"\n  url = \"{url}\"\n  token = \"{token}\"\n  \
         executor = \"docker\"\n  [runners.cache]\n    [runners.cache.s3]\n  \
         [runners.docker]\n    image = \"{image}\"\n    pull_policy = \"never\"\n    \
         tls_verify = false\n    privileged = false\n    volumes = [\"/cache\"]\n{docker_toml}\n",
        url = gitlab.url(),
    );
    let agent = Agent::start(&config);
    Some(E2e {
        gitlab,
        agent,
        image,
        docker,
        token,
    })
}

impl Drop for E2e {
    /// Kills the agent, then removes every container and volume carrying its agent id (the
    /// executor keeps a builds volume per project on purpose; tests must not leave them).
    fn drop(&mut self) {
        self.agent.kill();
        let Ok(system_id) =
            std::fs::read_to_string(self.agent.dir.path().join(".runner_system_id"))
        else {
            return;
        };
        let id = drover_agent::standalone::load::agent_id(system_id.trim(), &self.agent.config);
        let filter = format!("label=com.drover.agent={id}");
        for (list, rm) in [
            (&["ps", "-aq", "--filter"][..], &["rm", "-f"][..]),
            (
                &["volume", "ls", "-q", "--filter"][..],
                &["volume", "rm", "-f"][..],
            ),
        ] {
            let Ok(out) = Command::new("docker").args(list).arg(&filter).output() else {
                continue;
            };
            let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string)
                .collect();
            if !names.is_empty() {
                let _ = Command::new("docker")
                    .args(rm)
                    .args(&names)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
    }
}

impl E2e {
    /// A job on the busybox image that skips git (no repository to clone).
    pub fn job(&self, name: &str) -> drover_tests::fake_gitlab::JobSpec {
        drover_tests::fake_gitlab::JobSpec::new(name)
            .image(&self.image)
            .variable("GIT_STRATEGY", "none")
    }

    /// The agent id the agent labels its containers with (from the system id it wrote
    /// next to its config).
    pub async fn agent_id(&self) -> String {
        let f = self.agent.dir.path().join(".runner_system_id");
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(s) = std::fs::read_to_string(&f) {
                return drover_agent::standalone::load::agent_id(s.trim(), &self.agent.config);
            }
            assert!(Instant::now() < end, "agent never wrote {}", f.display());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Names of the agent's containers that exist now.
    pub async fn containers(&self) -> Vec<String> {
        let agent = self.agent_id().await;
        let mut filters = std::collections::HashMap::new();
        filters.insert(
            "label".to_string(),
            vec![format!("com.drover.agent={agent}")],
        );
        self.docker
            .list_containers(Some(bollard::query_parameters::ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .expect("list containers")
            .into_iter()
            .flat_map(|c| c.names.unwrap_or_default())
            .collect()
    }

    /// Waits until the agent has no container left; returns what is left on timeout.
    pub async fn wait_no_containers(&self, timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout;
        loop {
            let c = self.containers().await;
            if c.is_empty() || Instant::now() >= end {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the job's trace (as GitLab holds it) contains `text`.
    pub async fn wait_trace_contains(&self, id: i64, text: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        loop {
            if String::from_utf8_lossy(&self.gitlab.trace(id)).contains(text) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the job's end; panics with the agent's stderr on timeout.
    pub async fn finished(
        &self,
        id: i64,
        timeout: Duration,
    ) -> drover_tests::fake_gitlab::FinalState {
        match self.gitlab.wait_for_job_finished(id, timeout).await {
            Some(f) => f,
            None => panic!(
                "job {id} did not finish; trace:\n{}\nagent stderr:\n{}",
                String::from_utf8_lossy(&self.gitlab.trace(id)),
                self.agent.stderr()
            ),
        }
    }
}
