//! The fleet's jobs as the controller keeps them: a job event an agent sent, bounded, as
//! the store row it updates.
//!
//! Untrusted input: the agent id comes from the session (its certificate), so an agent
//! only ever writes its own rows; a job id that is not positive is dropped; the runner
//! and failure reason are clipped; durations were bounded at the edge
//! ([`crate::fleet::messages::job_seconds`]); rows per agent are bounded by the store's
//! retention and the buffer between two writes by [`MAX_PENDING_JOBS`].

use time::OffsetDateTime;

use crate::fleet::messages::{JobEvent, JobState};
use crate::store::JobRecord;

/// Job updates buffered between two store writes (one second); more are dropped (and
/// logged), so a flood from an agent cannot grow the controller's memory.
pub const MAX_PENDING_JOBS: usize = 10_000;

/// The longest runner name kept (as gitlab-runner allows).
const MAX_RUNNER_CHARS: usize = 255;

/// GitLab's failure reasons are short snake_case names; anything else is cut to them.
fn clean_reason(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect::<String>()
        .to_ascii_lowercase()
}

fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The row `ev` from `agent_id` writes, or `None` when it cannot name a job.
pub fn job_record(agent_id: &str, ev: &JobEvent, now: OffsetDateTime) -> Option<JobRecord> {
    if ev.job_id <= 0 || agent_id.is_empty() {
        return None;
    }
    let finished = ev.state != JobState::Running;
    let started_at = match (ev.started_at, finished) {
        (Some(t), _) => Some(t),
        (None, false) => ev.at,
        (None, true) => None,
    };
    Some(JobRecord {
        agent_id: agent_id.to_string(),
        job_id: ev.job_id,
        runner: ev.runner.chars().take(MAX_RUNNER_CHARS).collect(),
        state: ev.state.as_str().to_string(),
        failure_reason: if ev.state == JobState::Failed {
            clean_reason(&ev.failure_reason)
        } else {
            String::new()
        },
        started_at,
        finished_at: if finished { ev.at.or(Some(now)) } else { None },
        duration_ms: if finished {
            ev.duration.map(millis)
        } else {
            None
        },
        queue_wait_ms: ev.queue_wait.map(millis),
        updated_at: now,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000 + s).unwrap()
    }

    fn ev(job_id: i64, state: JobState) -> JobEvent {
        JobEvent {
            runner: "r".into(),
            job_id,
            state,
            failure_reason: String::new(),
            at: Some(t(10)),
            queue_wait: Some(Duration::from_millis(2500)),
            started_at: None,
            duration: Some(Duration::from_secs(9)),
        }
    }

    #[test]
    fn a_running_job_starts_when_its_event_says() {
        let r = job_record("a1", &ev(5, JobState::Running), t(11)).unwrap();
        assert_eq!(r.state, "running");
        assert_eq!(r.started_at, Some(t(10)));
        assert_eq!(r.finished_at, None);
        assert_eq!(r.duration_ms, None, "no duration while running");
        assert_eq!(r.queue_wait_ms, Some(2500));
        assert_eq!(r.updated_at, t(11));
    }

    #[test]
    fn a_failed_job_keeps_a_clean_reason_and_its_duration() {
        let mut e = ev(5, JobState::Failed);
        e.failure_reason = "Script_Failure<script>\n".into();
        e.started_at = Some(t(1));
        let r = job_record("a1", &e, t(11)).unwrap();
        assert_eq!(r.failure_reason, "script_failurescript");
        assert_eq!(r.started_at, Some(t(1)));
        assert_eq!(r.finished_at, Some(t(10)));
        assert_eq!(r.duration_ms, Some(9000));
        let mut ok = ev(6, JobState::Success);
        ok.failure_reason = "script_failure".into();
        assert_eq!(job_record("a1", &ok, t(11)).unwrap().failure_reason, "");
    }

    #[test]
    fn what_names_no_job_is_dropped_and_long_text_clipped() {
        assert!(job_record("a1", &ev(0, JobState::Running), t(0)).is_none());
        assert!(job_record("a1", &ev(-3, JobState::Running), t(0)).is_none());
        assert!(job_record("", &ev(3, JobState::Running), t(0)).is_none());
        let mut e = ev(3, JobState::Failed);
        e.runner = "x".repeat(10_000);
        e.failure_reason = "y".repeat(10_000);
        let r = job_record("a1", &e, t(0)).unwrap();
        assert_eq!(r.runner.len(), 255);
        assert_eq!(r.failure_reason.len(), 64);
    }
}
