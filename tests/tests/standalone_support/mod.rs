//! Shared by the `standalone_*` end-to-end tests: the real `drover-agent run --config`
//! process (killed on drop, its Docker objects removed) and a fake GitLab it serves.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use drover_tests::standalone_agent::{AgentOptions, StandaloneAgent};

/// `DROVER_LOG` of the agents these tests start: debug for Drover.
pub const DEFAULT_LOG: &str = "info,drover_agent=debug,drover_job=debug,drover_gitlab=debug";

/// A running `drover-agent run --config` at debug level for Drover; killed on drop.
pub struct Agent(StandaloneAgent);

impl Agent {
    /// Writes `config_toml` to a fresh temp dir and starts the agent on it.
    pub fn start(config_toml: &str) -> Agent {
        Agent::start_logged(config_toml, DEFAULT_LOG)
    }

    /// [`Agent::start`] with `DROVER_LOG=log_filter`.
    pub fn start_logged(config_toml: &str, log_filter: &str) -> Agent {
        let options = AgentOptions {
            log_filter: log_filter.to_string(),
            ..AgentOptions::default()
        };
        Agent::start_with(config_toml, options)
    }

    /// Starts the agent with `options` (its state dir, extra arguments).
    pub fn start_with(config_toml: &str, options: AgentOptions) -> Agent {
        Agent(StandaloneAgent::start(config_toml, options).expect("start drover-agent"))
    }

    /// Starts the agent again on the same config and state dir (after it died); stderr is
    /// appended to what was collected before.
    pub fn respawn(&mut self) {
        self.0.respawn().expect("restart drover-agent");
    }

    /// Sends `signal` ("TERM", "QUIT", "HUP", "KILL") with `kill`.
    pub fn signal(&self, name: &str) {
        self.0.signal(name).expect("signal drover-agent");
    }
}

impl std::ops::Deref for Agent {
    type Target = StandaloneAgent;
    fn deref(&self) -> &StandaloneAgent {
        &self.0
    }
}

impl std::ops::DerefMut for Agent {
    fn deref_mut(&mut self) -> &mut StandaloneAgent {
        &mut self.0
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
    start_logged(name, concurrent, docker_toml, DEFAULT_LOG).await
}

/// [`start`] with the agent at `DROVER_LOG=log_filter`.
pub async fn start_logged(
    name: &str,
    concurrent: u32,
    docker_toml: &str,
    log_filter: &str,
) -> Option<E2e> {
    let options = AgentOptions {
        log_filter: log_filter.to_string(),
        ..AgentOptions::default()
    };
    start_with(name, concurrent, docker_toml, options).await
}

/// [`start`] with the agent started with `options`.
pub async fn start_with(
    name: &str,
    concurrent: u32,
    docker_toml: &str,
    options: AgentOptions,
) -> Option<E2e> {
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
    let agent = Agent::start_with(&config, options);
    Some(E2e {
        gitlab,
        agent,
        image,
        docker,
        token,
    })
}

impl E2e {
    /// A job on the busybox image that skips git (no repository to clone).
    pub fn job(&self, name: &str) -> drover_tests::fake_gitlab::JobSpec {
        drover_tests::fake_gitlab::JobSpec::new(name)
            .image(&self.image)
            .variable("GIT_STRATEGY", "none")
    }

    /// A job that prints `tick-0`, `tick-1`, ... every half second for five minutes.
    pub fn long_job(&self, name: &str) -> drover_tests::fake_gitlab::JobSpec {
        self.job(name)
            .script(["i=0; while [ $i -lt 600 ]; do echo tick-$i; i=$((i+1)); sleep 0.5; done"])
    }

    /// Waits up to two minutes until job `id` (a `long_job`) has printed `tick`; panics with
    /// the agent's stderr if it never does.
    pub async fn wait_for_tick(&self, id: i64, tick: &str) {
        assert!(
            self.wait_trace_contains(id, tick, Duration::from_secs(120))
                .await,
            "job never ran; stderr:\n{}",
            self.agent.stderr()
        );
    }

    /// The agent id the agent labels its containers with (from the system id it wrote
    /// next to its config).
    pub async fn agent_id(&self) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(id) = self.agent.agent_id() {
                return id;
            }
            assert!(
                Instant::now() < end,
                "agent never wrote its system id next to {}",
                self.agent.config.display()
            );
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
