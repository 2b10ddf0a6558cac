//! Where an agent stands in an upgrade, and what it reports.

use std::fmt;

/// An agent's step (the names are the wire's, `drover_proto::names`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Sent (or not yet sent, when no progress row exists).
    Pending,
    Draining,
    Downloading,
    Switching,
    Healthy,
    RolledBack,
    Refused,
    TimedOut,
}

const NAMES: &[(Step, &str)] = &[
    (Step::Pending, "pending"),
    (Step::Draining, "draining"),
    (Step::Downloading, "downloading"),
    (Step::Switching, "switching"),
    (Step::Healthy, "healthy"),
    (Step::RolledBack, "rolled-back"),
    (Step::Refused, "refused"),
    (Step::TimedOut, "timed-out"),
];

impl Step {
    pub fn as_str(self) -> &'static str {
        NAMES
            .iter()
            .find(|(s, _)| *s == self)
            .map_or("", |(_, n)| n)
    }

    /// A stored or reported name.
    pub fn parse(name: &str) -> Option<Step> {
        NAMES.iter().find(|(_, n)| *n == name).map(|(s, _)| *s)
    }

    /// The agent is still on its way (the upgrade counts it as unavailable).
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            Step::Pending | Step::Draining | Step::Downloading | Step::Switching
        )
    }

    /// The agent failed this upgrade: the upgrade halts.
    pub fn failed(self) -> bool {
        matches!(self, Step::RolledBack | Step::Refused | Step::TimedOut)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an agent said of an upgrade (Hello or heartbeat). A claim about itself only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub upgrade_id: u64,
    pub step: Step,
    /// Clipped to [`MAX_DETAIL`] bytes at the edge.
    pub detail: String,
}

/// Longest detail kept from an agent.
pub const MAX_DETAIL: usize = 1024;

/// What the controller sends an agent to upgrade it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeCommand {
    pub upgrade_id: u64,
    pub sha256: String,
    pub size: u64,
    pub signature: Vec<u8>,
    pub version: String,
    pub health_timeout_seconds: u64,
}
