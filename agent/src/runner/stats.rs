//! Per-runner counters and state, shared with whoever reports them (logs, fleet mode,
//! metrics), and the events a runner emits.

use std::sync::Mutex;
use std::time::SystemTime;

use drover_job::executor::JobOutcome;

/// Where a runner's loop is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerState {
    /// Requesting jobs; GitLab has not answered one yet.
    Starting,
    /// Requesting and running jobs.
    Running,
    /// Not requesting any more (shutdown); running jobs finish or are canceled.
    Draining,
    /// GitLab refused the token (`403`): register again. No more requests.
    NeedsRegistration,
    /// The loop ended.
    Stopped,
    /// The loop ended on an error it cannot recover from.
    Failed(String),
}

/// A snapshot of [`RunnerStats`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunnerStatsSnapshot {
    pub state: RunnerState,
    pub jobs_running: u32,
    pub jobs_succeeded: u64,
    pub jobs_failed: u64,
    pub jobs_canceled: u64,
    /// Jobs GitLab handed out whose payload did not even hold a readable `id` and `token`,
    /// so they could not be reported (they stay running in GitLab until their timeout).
    pub jobs_lost: u64,
    /// The last error talking to GitLab (cleared by nothing: it is history).
    pub last_error: Option<String>,
    /// Last answer from GitLab of any kind.
    pub last_contact: Option<SystemTime>,
    /// Signs of life of the job-request loop so far (an answer or an error, before waiting
    /// for a slot): fleet mode's watchdog restarts a loop whose count has not moved for too
    /// long (timed on its own monotonic clock) while it has a free slot.
    pub beats: u64,
}

/// Live counters of one runner.
#[derive(Debug)]
pub struct RunnerStats {
    inner: Mutex<RunnerStatsSnapshot>,
}

impl Default for RunnerStats {
    fn default() -> Self {
        RunnerStats {
            inner: Mutex::new(RunnerStatsSnapshot {
                state: RunnerState::Starting,
                jobs_running: 0,
                jobs_succeeded: 0,
                jobs_failed: 0,
                jobs_canceled: 0,
                jobs_lost: 0,
                last_error: None,
                last_contact: None,
                beats: 0,
            }),
        }
    }
}

impl RunnerStats {
    /// A copy of the current values.
    pub fn snapshot(&self) -> RunnerStatsSnapshot {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RunnerStatsSnapshot> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_state(&self, s: RunnerState) {
        self.lock().state = s;
    }

    pub(crate) fn contact(&self) {
        self.lock().last_contact = Some(SystemTime::now());
    }

    pub(crate) fn beat(&self) {
        let mut s = self.lock();
        s.beats = s.beats.wrapping_add(1);
    }

    pub(crate) fn error(&self, e: String) {
        self.lock().last_error = Some(e);
    }

    pub(crate) fn job_started(&self) {
        self.lock().jobs_running += 1;
    }

    pub(crate) fn job_lost(&self) {
        self.lock().jobs_lost += 1;
    }

    pub(crate) fn job_finished(&self, outcome: &JobOutcome) {
        let mut g = self.lock();
        g.jobs_running = g.jobs_running.saturating_sub(1);
        match outcome {
            JobOutcome::Success => g.jobs_succeeded += 1,
            JobOutcome::Failed { .. } => g.jobs_failed += 1,
            JobOutcome::Canceled => g.jobs_canceled += 1,
        }
    }
}

/// What a runner tells the rest of the agent (fleet mode forwards these to the controller).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunnerEvent {
    /// GitLab answered the loop's first job request (`201`/`204`): the token works.
    Connected { runner: String },
    /// GitLab refused the token: the runner stopped requesting jobs.
    NeedsRegistration { runner: String, endpoint: String },
    JobStarted {
        runner: String,
        job_id: i64,
        /// How long GitLab queued it (`job_info.time_in_queue_seconds`); `None` when
        /// GitLab did not say.
        queue_wait: Option<std::time::Duration>,
    },
    JobFinished {
        runner: String,
        job_id: i64,
        outcome: JobOutcome,
        /// How long it ran (monotonic clock).
        duration: std::time::Duration,
        /// How long GitLab queued it, as in `JobStarted`.
        queue_wait: Option<std::time::Duration>,
    },
    /// The loop ended (all its jobs are done).
    Stopped { runner: String },
}
