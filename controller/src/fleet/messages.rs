//! What the fleet sends to agents and reads from them, as domain types. Converted from and
//! to the wire only in [`crate::wire`].

use secrecy::SecretString;
use time::OffsetDateTime;

/// The full desired state of one agent at one generation.
#[derive(Debug, Clone)]
pub struct DesiredState {
    /// The generation.
    pub generation: u64,
    /// The runners of that generation that select the agent.
    pub runners: Vec<RunnerAssignment>,
}

/// One runner of a desired state, with the agent's own token.
#[derive(Debug, Clone)]
pub struct RunnerAssignment {
    /// The runner name.
    pub name: String,
    /// The runner spec as the agent reads it (never a token).
    pub spec_json: String,
    /// The GitLab runner authentication token for this agent.
    pub runner_token: SecretString,
    /// The GitLab runner id (0 = unknown).
    pub gitlab_runner_id: i64,
    /// When the token expires.
    pub token_expires_at: Option<OffsetDateTime>,
    /// The `[runners.cache.s3]` secrets, which `spec_json` never carries.
    pub cache_secrets: drover_proto::spec::CacheSecrets,
}

/// An agent's answer to a desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The generation answered.
    pub generation: u64,
    /// Why it was refused; `None` when applied.
    pub refused: Option<String>,
}

/// The agent's claim that it rotated a runner token.
#[derive(Debug, Clone)]
pub struct TokenRotated {
    /// The runner.
    pub runner: String,
    /// The new token.
    pub token: SecretString,
    /// Its expiry as the agent says.
    pub token_expires_at: Option<OffsetDateTime>,
    /// The GitLab runner id the agent names (0 = none named).
    pub gitlab_runner_id: i64,
}

/// Something happened to a runner unit.
#[derive(Debug, Clone, PartialEq)]
pub struct RunnerEvent {
    /// The runner.
    pub runner: String,
    /// What happened.
    pub kind: RunnerEventKind,
    /// Free text from the agent.
    pub message: String,
    /// When (agent clock).
    pub at: Option<OffsetDateTime>,
}

/// What happened to a runner unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerEventKind {
    /// The unit started.
    Started,
    /// The unit stopped.
    Stopped,
    /// The unit failed and waits to restart.
    Backoff,
    /// The unit waits for the Docker engine.
    WaitingForDocker,
    /// The unit finishes its jobs before it stops (drain).
    Draining,
    /// GitLab answered 403 to verify or a job request: the controller re-registers.
    TokenInvalid,
    /// Verifying the runner failed.
    VerifyFailed,
    /// The host's addresses changed.
    IpsChanged,
    /// A kind this controller does not know (a newer agent), kept (cleaned) for the event
    /// log and otherwise ignored.
    Other(String),
}

impl RunnerEventKind {
    /// The known kinds.
    pub const KNOWN: [RunnerEventKind; 8] = [
        RunnerEventKind::Started,
        RunnerEventKind::Stopped,
        RunnerEventKind::Backoff,
        RunnerEventKind::WaitingForDocker,
        RunnerEventKind::Draining,
        RunnerEventKind::TokenInvalid,
        RunnerEventKind::VerifyFailed,
        RunnerEventKind::IpsChanged,
    ];

    /// The name on the wire; stored events are `runner-<name>`.
    pub fn as_str(&self) -> &str {
        match self {
            RunnerEventKind::Started => "started",
            RunnerEventKind::Stopped => "stopped",
            RunnerEventKind::Backoff => "backoff",
            RunnerEventKind::WaitingForDocker => "waiting-for-docker",
            RunnerEventKind::Draining => "draining",
            RunnerEventKind::TokenInvalid => "token-invalid",
            RunnerEventKind::VerifyFailed => "verify-failed",
            RunnerEventKind::IpsChanged => "ips-changed",
            RunnerEventKind::Other(s) => s,
        }
    }

    /// A kind this controller does not know, named `raw` by a newer agent: reduced to at
    /// most 40 ASCII letters, digits and `-` (it becomes part of an event kind).
    pub fn other(raw: &str) -> RunnerEventKind {
        RunnerEventKind::Other(
            raw.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(40)
                .collect(),
        )
    }
}

impl std::fmt::Display for RunnerEventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job started or ended on an agent.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEvent {
    /// The runner.
    pub runner: String,
    /// The GitLab job id.
    pub job_id: i64,
    /// Its state.
    pub state: JobState,
    /// GitLab's failure reason (`script_failure`, ...), free text; empty unless failed.
    pub failure_reason: String,
    /// When (agent clock); `None` when absent or out of range.
    pub at: Option<OffsetDateTime>,
    /// How long GitLab queued it; `None` when GitLab did not say or the value is out of
    /// range.
    pub queue_wait: Option<std::time::Duration>,
    /// When it started (agent clock); `None` when absent or out of range.
    pub started_at: Option<OffsetDateTime>,
    /// How long it ran (a finished job); `None` when absent or out of range.
    pub duration: Option<std::time::Duration>,
}

/// The longest job duration or queue wait taken from an agent (GitLab's longest job
/// timeout is a month); a longer or unreadable one is read as unknown.
pub const MAX_JOB_SECONDS: f64 = 31.0 * 86_400.0;

/// A duration an agent sent, in seconds: finite, not negative, at most
/// [`MAX_JOB_SECONDS`]; anything else is unknown.
pub fn job_seconds(v: Option<f64>) -> Option<std::time::Duration> {
    let v = v?;
    (v.is_finite() && (0.0..=MAX_JOB_SECONDS).contains(&v))
        .then(|| std::time::Duration::from_secs_f64(v))
}

/// A job's state in a job event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Picked up and running.
    Running,
    /// Succeeded.
    Success,
    /// Failed.
    Failed,
    /// Canceled.
    Canceled,
    /// A state this controller does not know (a newer agent), kept (at most 40
    /// characters) for the event log.
    Other(String),
}

impl JobState {
    /// The known states.
    pub const KNOWN: [JobState; 4] = [
        JobState::Running,
        JobState::Success,
        JobState::Failed,
        JobState::Canceled,
    ];

    /// The name in the event log (`drover events`).
    pub fn as_str(&self) -> &str {
        match self {
            JobState::Running => "running",
            JobState::Success => "success",
            JobState::Failed => "failed",
            JobState::Canceled => "canceled",
            JobState::Other(s) => s,
        }
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
