//! What an agent reports in a heartbeat, as the controller reads it. Built from the wire
//! only in [`crate::wire`]; nothing here names a protobuf type.

use time::OffsetDateTime;

/// One heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Heartbeat {
    /// When the agent sent it (agent clock).
    pub sent_at: Option<OffsetDateTime>,
    /// The generation it runs.
    pub applied_generation: u64,
    /// The host snapshot, when the agent sent one.
    pub host: Option<HostHealth>,
    /// Its runner units.
    pub runners: Vec<RunnerStatus>,
    /// Its IP addresses, as reported (cleaned by the wire conversion).
    pub ips: Vec<String>,
    /// The agent's version.
    pub agent_version: String,
}

/// The host snapshot of a heartbeat. A total of 0 means "not reported".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostHealth {
    /// The Docker engine answered.
    pub docker_reachable: bool,
    /// Its version, empty when unreachable.
    pub docker_version: String,
    /// Free bytes of the Docker root dir's filesystem.
    pub disk_free_bytes: u64,
    /// Size of that filesystem.
    pub disk_total_bytes: u64,
    /// Available memory.
    pub memory_available_bytes: u64,
    /// Total memory.
    pub memory_total_bytes: u64,
    /// One-minute load average.
    pub load1: f64,
    /// Free bytes of the builds/cache dir's filesystem.
    pub builds_disk_free_bytes: u64,
    /// Size of that filesystem.
    pub builds_disk_total_bytes: u64,
    /// Agent clock minus its peers' `Date` headers (0 = not measured).
    pub clock_skew_seconds: f64,
}

/// One runner unit of an agent.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunnerStatus {
    /// The runner name.
    pub name: String,
    /// The unit state; `None` when the agent has not reported this runner.
    pub state: Option<UnitState>,
    /// The unit's last error.
    pub last_error: String,
    /// The GitLab runner id (0 = unknown).
    pub gitlab_runner_id: i64,
    /// When its token expires.
    pub token_expires_at: Option<OffsetDateTime>,
    /// Jobs running now.
    pub jobs_running: u32,
    /// Jobs that succeeded since the unit started.
    pub jobs_succeeded: u64,
    /// Jobs that failed since the unit started.
    pub jobs_failed: u64,
    /// The last answer from GitLab.
    pub last_gitlab_contact: Option<OffsetDateTime>,
    /// When the agent rotates the token (agent clock); `None` when it does not.
    pub token_rotate_at: Option<OffsetDateTime>,
    /// Why the last rotation failed; empty when none failed since the last success.
    pub token_rotation_error: String,
}

impl RunnerStatus {
    /// The unit state's name, empty when not reported.
    pub fn state_name(&self) -> &str {
        self.state.as_ref().map_or("", UnitState::as_str)
    }
}

/// A runner unit's state as the agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitState {
    /// Starting its loop.
    Starting,
    /// Taking jobs.
    Running,
    /// Running with a problem (e.g. `token-invalid`).
    Degraded,
    /// Waiting to restart after a failure.
    Backoff,
    /// Waiting for the Docker engine.
    WaitingForDocker,
    /// Finishing its jobs before it stops.
    Draining,
    /// Stopped.
    Stopped,
    /// A state this controller does not know (a newer agent), kept for display.
    Unknown(String),
}

impl UnitState {
    /// The known states.
    pub const KNOWN: [UnitState; 7] = [
        UnitState::Starting,
        UnitState::Running,
        UnitState::Degraded,
        UnitState::Backoff,
        UnitState::WaitingForDocker,
        UnitState::Draining,
        UnitState::Stopped,
    ];

    /// The name on the wire and in `drover agents`.
    pub fn as_str(&self) -> &str {
        match self {
            UnitState::Starting => "starting",
            UnitState::Running => "running",
            UnitState::Degraded => "degraded",
            UnitState::Backoff => "backoff",
            UnitState::WaitingForDocker => "waiting-for-docker",
            UnitState::Draining => "draining",
            UnitState::Stopped => "stopped",
            UnitState::Unknown(s) => s,
        }
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
