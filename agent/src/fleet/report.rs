//! What fleet mode reports about its units: to the controller in heartbeats (converted in
//! `crate::control::wire`) and to `drover-agent status` through `<state dir>/status.json`.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::identity::write_atomic;

/// One unit as `drover-agent status` shows it. Times are RFC 3339.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct UnitReport {
    pub name: String,
    /// `starting`, `running`, `degraded`, `backoff`, `waiting-for-docker`, `draining`,
    /// `stopped`.
    pub state: String,
    /// When the unit entered `state`.
    pub since: String,
    pub last_error: Option<String>,
    pub gitlab_runner_id: i64,
    pub token_expires_at: Option<String>,
    /// When the agent rotates the token (75 % of its lifetime); `None` = never expires.
    #[serde(default)]
    pub token_rotate_at: Option<String>,
    /// Why the last rotation attempt failed (cleared by a successful one).
    #[serde(default)]
    pub token_rotation_error: Option<String>,
    pub jobs_running: u32,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    pub jobs_canceled: u64,
    pub last_gitlab_contact: Option<String>,
    /// The unit's last log lines, oldest first.
    pub log: Vec<String>,
}

/// The whole agent: what heartbeats carry and what `status.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Report {
    pub agent_id: String,
    /// The process that wrote the file (to tell a stale file).
    pub pid: u32,
    /// When the file was written (RFC 3339); the agent rewrites it every few seconds.
    pub written_at: String,
    /// The generation the agent runs (0 = none).
    pub applied_generation: u64,
    /// Why the last pushed generation was refused, if it was.
    pub last_refusal: Option<String>,
    pub docker_reachable: bool,
    /// Engine version as the last successful ping said (`None` while unreachable).
    #[serde(default)]
    pub docker_version: Option<String>,
    /// `DockerRootDir` of the engine: its filesystem is the "docker" disk in health.
    #[serde(default)]
    pub docker_root_dir: Option<String>,
    /// The controller said drain: units take no new jobs until it says undrain.
    #[serde(default)]
    pub draining: bool,
    pub units: Vec<UnitReport>,
}

/// `<state dir>/status.json`.
pub fn status_file(state_dir: &Path) -> PathBuf {
    state_dir.join("status.json")
}

/// Writes `report` to `path` atomically (0644: it holds no secret).
pub fn write(path: &Path, report: &Report) -> anyhow::Result<()> {
    let bytes = serde_json::to_vec_pretty(report)?;
    write_atomic(path, &bytes, 0o644)?;
    Ok(())
}
