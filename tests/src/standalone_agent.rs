//! The real `drover-agent run --config` on a `config.toml` in its own temp dir: started,
//! signalled, restarted, and on drop killed with every Docker object it labelled removed.
//!
//! Used by the standalone end-to-end tests and the job benchmarks (`src/bin/bench-jobs.rs`).

use std::fs::OpenOptions;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// How a standalone agent is started besides its config.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// `DROVER_LOG`.
    pub log_filter: String,
    /// Arguments after `run --config FILE --state-dir DIR` (e.g. `--metrics-listen`).
    pub args: Vec<String>,
    /// `--state-dir`; `None`: `state` in the agent's temp dir.
    pub state_dir: Option<PathBuf>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            log_filter: "info".to_string(),
            args: Vec::new(),
            state_dir: None,
        }
    }
}

/// A running (or exited) `drover-agent run --config`; its stderr goes to `agent.log` in
/// `dir`, appended to across restarts.
pub struct StandaloneAgent {
    child: Option<Child>,
    options: AgentOptions,
    /// Holds `config.toml`, the state dir, the log and the system id the agent writes.
    pub dir: TempDir,
    /// The `config.toml` the agent runs on.
    pub config: PathBuf,
}

impl StandaloneAgent {
    /// Writes `config_toml` to a fresh temp dir and starts the agent on it.
    pub fn start(config_toml: &str, options: AgentOptions) -> io::Result<StandaloneAgent> {
        let dir = tempfile::tempdir().map_err(|e| context(e, "create agent temp dir"))?;
        let config = dir.path().join("config.toml");
        std::fs::write(&config, config_toml)
            .map_err(|e| context(e, &format!("write {}", config.display())))?;
        let mut agent = StandaloneAgent {
            child: None,
            options,
            dir,
            config,
        };
        agent.respawn()?;
        Ok(agent)
    }

    /// Starts the agent (again) on the same config and state dir, killing a running one
    /// first; its stderr is appended to the log.
    pub fn respawn(&mut self) -> io::Result<()> {
        self.kill();
        let log = self.log_path();
        let stderr = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| context(e, &format!("open {}", log.display())))?;
        let child = Command::new(crate::harness::agent_bin())
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(&self.options.args)
            .env("DROVER_LOG", &self.options.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .map_err(|e| context(e, "start drover-agent"))?;
        self.child = Some(child);
        Ok(())
    }

    /// The agent's `--state-dir`.
    pub fn state_dir(&self) -> PathBuf {
        self.options
            .state_dir
            .clone()
            .unwrap_or_else(|| self.dir.path().join("state"))
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Everything the agent wrote to stderr so far (empty when there is no log yet).
    pub fn stderr(&self) -> String {
        std::fs::read(self.log_path())
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process id while the agent has not been killed.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends signal `name` ("TERM", "QUIT", "HUP", "KILL") with `kill`.
    pub fn signal(&self, name: &str) -> io::Result<()> {
        let pid = self
            .pid()
            .ok_or_else(|| io::Error::other(format!("kill -{name}: the agent is not running")))?;
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(pid.to_string())
            .status()
            .map_err(|e| context(e, "run kill"))?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -{name} {pid}: {status}")))
        }
    }

    /// Waits for the process to exit; `None` on timeout or when it was killed.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + timeout;
        let child = self.child.as_mut()?;
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the process (if still running) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The agent id its Docker objects carry, once the agent wrote its system id next to
    /// its config.
    pub fn agent_id(&self) -> Option<String> {
        let system_id = std::fs::read_to_string(self.dir.path().join(".runner_system_id")).ok()?;
        Some(drover_agent::standalone::load::agent_id(
            system_id.trim(),
            &self.config,
        ))
    }
}

impl Drop for StandaloneAgent {
    /// Kills the agent, then removes every container and volume carrying its agent id (the
    /// executor keeps a builds volume per project on purpose; tests must not leave them).
    fn drop(&mut self) {
        self.kill();
        if let Some(id) = self.agent_id() {
            remove_labelled(&format!("label=com.drover.agent={id}"));
        }
    }
}

/// Removes containers, then volumes, matching a `docker ... --filter` expression; what
/// cannot be listed or removed is left.
pub fn remove_labelled(filter: &str) {
    for (list, rm) in [
        (&["ps", "-aq", "--filter"][..], &["rm", "-f"][..]),
        (
            &["volume", "ls", "-q", "--filter"][..],
            &["volume", "rm", "-f"][..],
        ),
    ] {
        let Ok(out) = Command::new("docker").args(list).arg(filter).output() else {
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

fn context(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
