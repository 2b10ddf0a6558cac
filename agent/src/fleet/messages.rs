//! What fleet mode receives from the controller and sends to it, as domain types. The
//! session (`crate::control`) converts them from and to the wire in `control/wire/`.

use secrecy::SecretString;
use time::OffsetDateTime;

use super::desired::Raw;

/// A generation pushed by the controller, before validation ([`super::desired`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    /// The generation.
    pub generation: u64,
    /// Its runners as pushed (`token_obtained_at` unset).
    pub runners: Vec<Raw>,
}

/// A command from the controller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Stop taking jobs; running jobs finish, or are canceled once `deadline` passed.
    Drain { deadline: Option<DrainDeadline> },
    /// Take jobs again after a drain.
    Undrain,
}

/// When a drain cancels the jobs still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainDeadline {
    /// At this time (set by the controller when the drain was asked for).
    At(OffsetDateTime),
    /// This long after the agent received the command.
    After(std::time::Duration),
}

/// What the supervisor tells the controller (heartbeats are the session's own).
#[derive(Debug, Clone)]
pub enum ToController {
    /// The answer to a pushed generation.
    Ack {
        generation: u64,
        /// Why it was refused; `None` when applied.
        refused: Option<String>,
    },
    /// Something happened to a runner unit.
    Event {
        runner: String,
        kind: RunnerEventKind,
        message: String,
        at: OffsetDateTime,
    },
    /// A job started or ended.
    Job {
        runner: String,
        job_id: i64,
        state: JobState,
        /// GitLab's failure reason (`script_failure`, ...), empty unless failed.
        failure_reason: String,
        at: OffsetDateTime,
        /// How long GitLab queued it, when GitLab said.
        queue_wait: Option<std::time::Duration>,
        /// When it started (wall clock); `None` when out of range.
        started_at: Option<OffsetDateTime>,
        /// How long it ran; `None` while running.
        duration: Option<std::time::Duration>,
    },
    /// A runner token was rotated and persisted.
    TokenRotated {
        runner: String,
        token: SecretString,
        /// RFC 3339, as persisted.
        token_expires_at: Option<String>,
        gitlab_runner_id: i64,
    },
    /// The image fetcher's progress or result (`crate::images`).
    Image(crate::images::ImageReport),
}

/// What happened to a runner unit. Its name on the wire and in the controller's events is
/// `drover_proto::names`' (mapped in `crate::control::wire`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunnerEventKind {
    Started,
    Stopped,
    Backoff,
    WaitingForDocker,
    Draining,
    /// GitLab answered 403 to verify or a job request: the controller re-registers.
    TokenInvalid,
    VerifyFailed,
    IpsChanged,
}

/// A job's state in a job event (named on the wire as [`RunnerEventKind`] is).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobState {
    Running,
    Success,
    Failed,
    Canceled,
}
