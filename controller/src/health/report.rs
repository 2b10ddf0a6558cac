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
    /// The agent is draining: it takes no new jobs.
    pub draining: bool,
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
    /// What the agent keeps between jobs against its disk budgets (`None`: not reported).
    pub disk_budgets: Option<DiskBudgets>,
}

/// Use of one disk budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BudgetUse {
    pub used_bytes: u64,
    pub max_bytes: u64,
    pub count: u64,
}

/// An agent's disk budgets (builds volumes, pulled images, local cache) and its last
/// collection; summed over agents for the fleet.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskBudgets {
    pub volumes: BudgetUse,
    pub images: BudgetUse,
    pub cache: BudgetUse,
    /// Unix seconds of the last collection (0: unknown).
    pub collected_at: i64,
    pub last_freed_bytes: u64,
    pub last_removed: u64,
    /// Fleet sums: agents counted.
    pub agents: u32,
}

impl DiskBudgets {
    /// One line: `volumes 1.0 GiB of 4.0 GiB (3), images ..., cache ...; last collection
    /// freed 512 MiB (2 removed)`.
    pub fn summary(&self) -> String {
        let b = crate::health::evaluate::bytes;
        let part = |name: &str, u: &BudgetUse, count: bool| {
            format!(
                "{name} {} of {}{}",
                b(u.used_bytes),
                b(u.max_bytes),
                if count {
                    format!(" ({})", u.count)
                } else {
                    String::new()
                }
            )
        };
        format!(
            "{}, {}, {}; last collection freed {} ({} removed)",
            part("volumes", &self.volumes, true),
            part("images", &self.images, true),
            part("cache", &self.cache, false),
            b(self.last_freed_bytes),
            self.last_removed
        )
    }

    /// The JSON form `drover describe agent -o json` (under `host`) and `drover status -o
    /// json` print.
    pub fn to_json(&self) -> serde_json::Value {
        let u = |u: &BudgetUse| {
            serde_json::json!({
                "used_bytes": u.used_bytes,
                "max_bytes": u.max_bytes,
                "count": u.count,
            })
        };
        serde_json::json!({
            "volumes": u(&self.volumes),
            "images": u(&self.images),
            "cache": u(&self.cache),
            "collected_at": self.collected_at,
            "last_freed_bytes": self.last_freed_bytes,
            "last_removed": self.last_removed,
            "agents": self.agents,
        })
    }

    /// Adds `o` (fleet totals).
    pub fn add(&mut self, o: &DiskBudgets) {
        for (a, b) in [
            (&mut self.volumes, &o.volumes),
            (&mut self.images, &o.images),
            (&mut self.cache, &o.cache),
        ] {
            a.used_bytes = a.used_bytes.saturating_add(b.used_bytes);
            a.max_bytes = a.max_bytes.saturating_add(b.max_bytes);
            a.count = a.count.saturating_add(b.count);
        }
        self.last_freed_bytes = self.last_freed_bytes.saturating_add(o.last_freed_bytes);
        self.last_removed = self.last_removed.saturating_add(o.last_removed);
        self.collected_at = self.collected_at.max(o.collected_at);
        self.agents = self.agents.saturating_add(1);
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_sums_add_budgets_and_count_agents() {
        let one = DiskBudgets {
            volumes: BudgetUse {
                used_bytes: 1 << 30,
                max_bytes: 4 << 30,
                count: 3,
            },
            last_freed_bytes: 1 << 20,
            last_removed: 1,
            collected_at: 10,
            ..Default::default()
        };
        let mut sum = DiskBudgets::default();
        sum.add(&one);
        sum.add(&DiskBudgets {
            collected_at: 20,
            ..one
        });
        assert_eq!(sum.agents, 2);
        assert_eq!(sum.volumes.used_bytes, 2 << 30);
        assert_eq!(sum.volumes.count, 6);
        assert_eq!(sum.collected_at, 20);
        assert_eq!(
            sum.summary(),
            "volumes 2.0 GiB of 8.0 GiB (6), images 0 B of 0 B (0), cache 0 B of 0 B; last collection freed 2.0 MiB (2 removed)"
        );
        assert_eq!(sum.to_json()["volumes"]["max_bytes"], 8u64 << 30);
    }
}
