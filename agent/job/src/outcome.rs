//! What a job ended with, in GitLab's terms.

/// GitLab's `failure_reason` values that Drover sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureReason {
    ScriptFailure,
    RunnerSystemFailure,
    JobExecutionTimeout,
    StuckOrTimeoutFailure,
    ImagePullFailure,
    MissingDependencyFailure,
    UnknownFailure,
    ApiFailure,
}

impl FailureReason {
    /// The wire value (`script_failure`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            FailureReason::ScriptFailure => "script_failure",
            FailureReason::RunnerSystemFailure => "runner_system_failure",
            FailureReason::JobExecutionTimeout => "job_execution_timeout",
            FailureReason::StuckOrTimeoutFailure => "stuck_or_timeout_failure",
            FailureReason::ImagePullFailure => "image_pull_failure",
            FailureReason::MissingDependencyFailure => "missing_dependency_failure",
            FailureReason::UnknownFailure => "unknown_failure",
            FailureReason::ApiFailure => "api_failure",
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobOutcome {
    Success,
    Failed {
        reason: FailureReason,
        /// The script's exit code, when a script ran and exited.
        exit_code: Option<i32>,
    },
    /// GitLab canceled the job (or the agent is stopping at once): containers were killed,
    /// nothing more ran but cleanup.
    Canceled,
}
