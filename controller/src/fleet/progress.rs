//! Where the newest generation's rollout stands, per agent: what `drover rollout status`,
//! `drover status` and the status pages show.

use time::OffsetDateTime;

use crate::store::{RolloutState, Strategy};

/// The rollout of the newest generation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutStatus {
    /// The newest generation (0 = none).
    pub generation: u64,
    /// Where it stands; `None` when there is no generation.
    pub state: Option<RolloutState>,
    /// Why it halted.
    pub reason: String,
    /// How it reaches the agents.
    pub strategy: Option<Strategy>,
    /// Every agent that is not revoked.
    pub agents: Vec<AgentProgress>,
    /// When the generation was made.
    pub created_at: Option<OffsetDateTime>,
}

impl RolloutStatus {
    /// The state's name: `progressing`, `complete`, `halted`, or `none`.
    pub fn state_name(&self) -> &'static str {
        self.state.map_or("none", RolloutState::as_str)
    }
}

/// One agent in a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentProgress {
    /// The agent.
    pub agent_id: String,
    /// Its hostname.
    pub hostname: String,
    /// The generation pushed to it.
    pub target_generation: u64,
    /// The generation it runs.
    pub applied_generation: u64,
    /// Where it stands.
    pub state: AgentRolloutState,
    /// Why it refused or failed.
    pub error: String,
    /// A session is open.
    pub connected: bool,
}

/// Where one agent stands in a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentRolloutState {
    /// Not pushed yet.
    Waiting,
    /// Pushed, not acknowledged.
    Pushed,
    /// Runs the generation.
    Applied,
    /// Refused the generation.
    Refused,
    /// Not connected.
    Offline,
    /// Registering its runners with GitLab failed.
    Failed,
}

impl AgentRolloutState {
    /// Every state.
    pub const ALL: [AgentRolloutState; 6] = [
        AgentRolloutState::Waiting,
        AgentRolloutState::Pushed,
        AgentRolloutState::Applied,
        AgentRolloutState::Refused,
        AgentRolloutState::Offline,
        AgentRolloutState::Failed,
    ];

    /// The name `drover rollout status` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            AgentRolloutState::Waiting => "waiting",
            AgentRolloutState::Pushed => "pushed",
            AgentRolloutState::Applied => "applied",
            AgentRolloutState::Refused => "refused",
            AgentRolloutState::Offline => "offline",
            AgentRolloutState::Failed => "failed",
        }
    }
}
