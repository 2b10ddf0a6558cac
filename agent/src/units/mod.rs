//! Runner units: the systemd-style state machine fleet mode keeps for every runner.
//!
//! A [`Unit`] is pure: it takes events with the time they happened ([`Now`], read from the
//! injectable [`Clock`] so tests pass a fake one) and answers what the supervisor must do
//! ([`Action`]). It never sleeps nor does IO. Restart delays and the start-limit window run
//! on the monotonic clock, so a wall-clock jump (NTP stepping the box, an operator setting
//! the date) neither delays a restart by an hour nor makes one early; only `since`, which
//! is shown, is wall time.
//!
//! States: `starting` (loop started, no answer from GitLab yet) → `running` (GitLab answered
//! a job request: the token works);
//! `degraded` (GitLab refused the token: waits for a new token from the controller, never
//! restarts on its own); `backoff` (the loop failed or stalled; restarts at `retry_at`);
//! `waiting-for-docker` (the Docker engine is unreachable: the unit waits instead of
//! crash-looping); `draining` (the controller said drain: no new jobs, running ones finish,
//! then `stopped`); `stopped` (removed, shut down, or the start limit was hit — then
//! `last_error` says so).
//!
//! Invariants:
//! - A start is counted only when a loop is really started ([`Action::Start`]); more than
//!   `start_limit_burst` starts within `start_limit_interval` stop the unit for good
//!   (until a new assignment for it arrives), like systemd's `StartLimitBurst`.
//! - Restart delays double from `backoff_min` up to `backoff_max`; a loop GitLab answered
//!   resets them.
//! - `degraded` and `stopped` units never start on a timer.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use crate::clock::Clock;

/// A moment on both clocks: `mono` ([`Clock::monotonic`]) times restarts and the start
/// limit; `wall` is only shown (`since`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall: SystemTime,
    pub mono: Duration,
}

impl Now {
    /// `clock` as it stands.
    pub fn of(clock: &dyn Clock) -> Now {
        Now {
            wall: SystemTime::from(clock.now()),
            mono: clock.monotonic(),
        }
    }
}

impl std::ops::Add<Duration> for Now {
    type Output = Now;
    /// Time passes: both clocks move.
    fn add(self, d: Duration) -> Now {
        Now {
            wall: self.wall + d,
            mono: self.mono + d,
        }
    }
}

impl std::ops::AddAssign<Duration> for Now {
    fn add_assign(&mut self, d: Duration) {
        *self = *self + d;
    }
}

/// Where a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UnitState {
    Starting,
    Running,
    Degraded,
    Backoff,
    WaitingForDocker,
    Draining,
    Stopped,
}

impl UnitState {
    /// The name on the wire (`RunnerStatus.state`) and in `drover-agent status`.
    pub fn as_str(self) -> &'static str {
        match self {
            UnitState::Starting => "starting",
            UnitState::Running => "running",
            UnitState::Degraded => "degraded",
            UnitState::Backoff => "backoff",
            UnitState::WaitingForDocker => "waiting-for-docker",
            UnitState::Draining => "draining",
            UnitState::Stopped => "stopped",
        }
    }

    /// `true` when a job loop should exist for the unit.
    pub fn wants_loop(self) -> bool {
        matches!(self, UnitState::Starting | UnitState::Running)
    }
}

impl std::fmt::Display for UnitState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Restart=on-failure` with exponential backoff, a start limit and a watchdog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// First restart delay.
    pub backoff_min: Duration,
    /// Largest restart delay.
    pub backoff_max: Duration,
    /// At most this many starts within `start_limit_interval`...
    pub start_limit_burst: u32,
    /// ...else the unit stops with a start-limit error.
    pub start_limit_interval: Duration,
    /// A live loop (starting or running) that shows no job-request activity for this long
    /// (while it has a free slot) is restarted.
    pub watchdog: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            backoff_min: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            start_limit_burst: 5,
            start_limit_interval: Duration::from_secs(600),
            watchdog: Duration::from_secs(300),
        }
    }
}

/// What happened to a unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The supervisor wants the unit running with its current settings (new assignment, new
    /// token, agent start). Resets the start limit and the backoff.
    Start,
    /// GitLab answered the loop's first job request (`201`/`204`): the token works.
    Connected,
    /// GitLab refused the token (`403` on a job request, or on the verify of a new token).
    TokenInvalid(String),
    /// The job loop ended; `Some` = with this error.
    LoopEnded(Option<String>),
    /// The watchdog saw no job-request activity.
    Stalled(String),
    /// Time passed (restarts that are due happen).
    Tick,
    /// The Docker engine stopped answering.
    DockerDown(String),
    /// The unit is removed or the agent shuts down.
    Stop,
    /// Take no new jobs; running jobs finish, then the unit is `stopped` (until the next
    /// [`Event::Start`]).
    Drain,
}

/// What the supervisor must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Run a job loop with the unit's current settings (replacing a live one).
    StartLoop,
    /// Stop the unit's job loop (it is reported back with [`Event::LoopEnded`]).
    StopLoop,
}

/// One runner unit. See the module doc.
#[derive(Debug, Clone)]
pub struct Unit {
    pub state: UnitState,
    /// When `state` was entered (wall clock, shown).
    pub since: SystemTime,
    pub last_error: Option<String>,
    /// When the next restart is due (`backoff`), on the monotonic clock ([`Now::mono`]).
    pub retry_at: Option<Duration>,
    policy: RestartPolicy,
    /// Monotonic times of recent starts, for the start limit.
    starts: VecDeque<Duration>,
    /// Restarts since the last loop GitLab answered (sets the next delay).
    failures: u32,
    /// A loop is running (started and not yet reported ended).
    loop_alive: bool,
    /// The loop ended because GitLab refused the token: stay degraded.
    token_invalid: bool,
    /// Stop was requested: the loop's end is not a failure.
    stopping: bool,
}

impl Unit {
    /// A unit that has not started yet (`stopped` until [`Event::Start`]).
    pub fn new(policy: RestartPolicy, now: Now) -> Unit {
        Unit {
            state: UnitState::Stopped,
            since: now.wall,
            last_error: None,
            retry_at: None,
            policy,
            starts: VecDeque::new(),
            failures: 0,
            loop_alive: false,
            token_invalid: false,
            stopping: false,
        }
    }

    /// `true` while a job loop runs for the unit.
    pub fn loop_alive(&self) -> bool {
        self.loop_alive
    }

    fn enter(&mut self, s: UnitState, now: Now) {
        if self.state != s {
            self.state = s;
            self.since = now.wall;
        }
    }

    /// Feeds `event` at `now`; `docker_up` says whether the engine answered its last ping.
    /// Returns what to do.
    pub fn handle(&mut self, event: Event, now: Now, docker_up: bool) -> Action {
        match event {
            Event::Start => {
                self.token_invalid = false;
                self.stopping = false;
                self.starts.clear();
                self.failures = 0;
                // With a loop still alive (new settings for a running unit, or a new token
                // while the refused loop drains) the supervisor replaces it.
                self.try_start(now, docker_up)
            }
            Event::Connected => {
                if self.loop_alive && !self.stopping {
                    self.failures = 0;
                    self.retry_at = None;
                    self.enter(UnitState::Running, now);
                }
                Action::Nothing
            }
            Event::TokenInvalid(msg) => {
                self.token_invalid = true;
                self.last_error = Some(msg);
                self.retry_at = None;
                self.enter(UnitState::Degraded, now);
                if self.loop_alive {
                    Action::StopLoop
                } else {
                    Action::Nothing
                }
            }
            Event::LoopEnded(err) => {
                if !self.loop_alive {
                    return Action::Nothing;
                }
                self.loop_alive = false;
                if let Some(e) = err {
                    self.last_error = Some(e);
                }
                if self.stopping {
                    self.enter(UnitState::Stopped, now);
                    return Action::Nothing;
                }
                if self.token_invalid {
                    self.enter(UnitState::Degraded, now);
                    return Action::Nothing;
                }
                // Restart=on-failure: a loop only ends on its own on an error (or after the
                // watchdog stopped it).
                self.schedule_restart(now);
                Action::Nothing
            }
            Event::Stalled(msg) => {
                if !self.loop_alive || self.stopping {
                    return Action::Nothing;
                }
                self.last_error = Some(msg);
                Action::StopLoop
            }
            Event::Tick => match self.state {
                UnitState::Backoff if self.retry_at.is_none_or(|t| now.mono >= t) => {
                    self.try_start(now, docker_up)
                }
                UnitState::WaitingForDocker if docker_up => self.try_start(now, docker_up),
                _ => Action::Nothing,
            },
            Event::DockerDown(msg) => {
                if !self.loop_alive && self.state == UnitState::Backoff {
                    self.last_error = Some(msg);
                    self.retry_at = None;
                    self.enter(UnitState::WaitingForDocker, now);
                }
                Action::Nothing
            }
            Event::Drain => {
                self.stopping = true;
                self.retry_at = None;
                if self.loop_alive {
                    self.enter(UnitState::Draining, now);
                    Action::StopLoop
                } else {
                    self.enter(UnitState::Stopped, now);
                    Action::Nothing
                }
            }
            Event::Stop => {
                self.stopping = true;
                self.retry_at = None;
                if self.loop_alive {
                    Action::StopLoop
                } else {
                    self.enter(UnitState::Stopped, now);
                    Action::Nothing
                }
            }
        }
    }

    fn try_start(&mut self, now: Now, docker_up: bool) -> Action {
        // Docker gates new loops; a live loop (new settings) is replaced whatever Docker does,
        // so a unit never waits for Docker with a loop still running.
        if !docker_up && !self.loop_alive {
            self.retry_at = None;
            self.enter(UnitState::WaitingForDocker, now);
            return Action::Nothing;
        }
        while let Some(t) = self.starts.front() {
            if now.mono.saturating_sub(*t) >= self.policy.start_limit_interval {
                self.starts.pop_front();
            } else {
                break;
            }
        }
        if self.starts.len() >= self.policy.start_limit_burst as usize {
            let why = format!(
                "start limit hit: {} starts within {}s; waiting for a new assignment{}",
                self.starts.len(),
                self.policy.start_limit_interval.as_secs(),
                self.last_error
                    .as_deref()
                    .map(|e| format!(" (last error: {e})"))
                    .unwrap_or_default()
            );
            self.last_error = Some(why);
            self.retry_at = None;
            self.enter(UnitState::Stopped, now);
            return Action::Nothing;
        }
        self.starts.push_back(now.mono);
        self.loop_alive = true;
        self.retry_at = None;
        self.enter(UnitState::Starting, now);
        Action::StartLoop
    }

    fn schedule_restart(&mut self, now: Now) {
        let shift = self.failures.min(20);
        let delay = self
            .policy
            .backoff_min
            .saturating_mul(1u32 << shift)
            .min(self.policy.backoff_max);
        self.failures = self.failures.saturating_add(1);
        self.retry_at = Some(now.mono + delay);
        self.enter(UnitState::Backoff, now);
    }
}

#[cfg(test)]
mod tests;
