//! Exponential backoff with jitter, for every retry towards GitLab.

use std::time::Duration;

use rand::Rng;

use crate::GitLabError;

/// Largest wait taken from a `RateLimit-ResetTime` or `Retry-After` header (gitlab-runner's
/// `backOffMaxDelay`, `network/retry_requester.go`): a GitLab asking for an hour does not
/// park a runner for an hour.
pub const RETRY_AFTER_MAX: Duration = Duration::from_secs(60);

/// What GitLab asked to wait after `e` (`RateLimit-ResetTime`, `Retry-After`), bounded by
/// [`RETRY_AFTER_MAX`]; `None` when it asked nothing.
pub fn asked_wait(e: &GitLabError) -> Option<Duration> {
    e.retry_after().map(|after| after.min(RETRY_AFTER_MAX))
}

/// The wait before retrying after `e`: [`asked_wait`], else the backoff's next delay
/// (gitlab-runner's `calculateWaitTime`: the header wins and the backoff does not advance).
pub fn retry_delay(e: &GitLabError, backoff: &mut Backoff) -> Duration {
    asked_wait(e).unwrap_or_else(|| backoff.next_delay())
}

/// Doubles from `min` to `max`; each delay is drawn from `[d/2, d]` so many runners that
/// failed together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// A backoff starting at `min`, never above `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let min = min.min(max);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let half = d / 2;
        let jitter_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
        half + Duration::from_millis(if jitter_ms == 0 {
            0
        } else {
            rand::rng().random_range(0..=jitter_ms)
        })
    }

    /// Back to `min` after a success.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let d: Vec<Duration> = (0..6).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(50) && d[0] <= Duration::from_millis(100));
        assert!(d[5] >= Duration::from_millis(400) && d[5] <= Duration::from_millis(800));
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn retry_after_wins_within_its_bound() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(800));
        let later = |after| GitLabError::RetryLater {
            endpoint: "request_job",
            status: 429,
            after,
            body: String::new(),
        };
        assert_eq!(
            retry_delay(&later(Duration::from_secs(7)), &mut b),
            Duration::from_secs(7)
        );
        assert_eq!(
            retry_delay(&later(Duration::from_secs(3600)), &mut b),
            RETRY_AFTER_MAX
        );
        // The backoff did not advance meanwhile.
        let plain = GitLabError::Status {
            endpoint: "request_job",
            status: 502,
            body: String::new(),
        };
        assert!(retry_delay(&plain, &mut b) <= Duration::from_millis(100));
    }
}
